"""utils/shapes.py: determinism, exact labels, variety, safe generation."""
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from utils import shapes
from utils.datasets import LoadImagesAndLabels, parse_data_cfg
from utils.errors import UserError


def files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path):
    a = shapes.make_shapes(tmp_path / "a", 5, 3, 96, seed=7).parent
    b = shapes.make_shapes(tmp_path / "b", 5, 3, 96, seed=7).parent
    fa, fb = files(a), files(b)
    assert len([f for f in fa if f.suffix == ".jpg"]) == 8 and fa == fb
    c = shapes.make_shapes(tmp_path / "c", 5, 3, 96, seed=8).parent
    assert files(c)[Path("images/train/000000.jpg")] != fa[Path("images/train/000000.jpg")]


def test_labels_are_the_visible_pixels_and_match_files(shapes_tiny):
    root = shapes_tiny.parent
    for i in range(16):
        img, labels, idmap, objects = shapes.render_image(0, "train", i, 128)
        h, w = idmap.shape
        assert img.shape == (h, w, 3) and 96 <= min(h, w) and max(h, w) <= 128
        assert len(labels) == len(objects) == idmap.max()
        for k, (c, x, y, bw, bh) in enumerate(labels):
            ys, xs = np.nonzero(idmap == k + 1)
            assert c == objects[k][0]
            np.testing.assert_allclose([x * w, y * h, bw * w, bh * h],
                                       [(xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2,
                                        xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()], atol=1e-4)
        on_disk = np.loadtxt(root / "labels" / "train" / f"{i:06d}.txt", ndmin=2).reshape(-1, 5)
        np.testing.assert_allclose(on_disk, labels, atol=1e-6)


def test_variety_classes_sizes_overlaps():
    classes, sides, overlaps, n_img = set(), [], 0, 60
    for i in range(n_img):
        _, labels, idmap, objects = shapes.render_image(0, "train", i, 320)
        h, w = idmap.shape
        classes |= {int(c) for c in labels[:, 0]}
        sides += list(np.maximum(labels[:, 3] * w, labels[:, 4] * h))
        for k, (cls, cx, cy, r, a) in enumerate(objects):  # visible pixels vs the full shape
            full = shapes._fill(np.zeros((h, w), np.uint8), shapes.shape_polygon(cls, cx, cy, r, a)).sum()
            vis = (idmap == k + 1).sum()
            assert vis >= shapes.MIN_VISIBLE * full - 1
            overlaps += vis < full
    assert classes == set(range(len(shapes.CLASSES))) and len(shapes.CLASSES) >= 5
    sides = np.array(sides)
    assert sides.min() <= 14 and sides.max() >= 120  # small to large (px at 320)
    assert (sides < 24).mean() > 0.1 and overlaps > 10


def test_generator_data_key_builds_once(tmp_path, capsys):
    (tmp_path / "s.names").write_text("\n".join(shapes.CLASSES) + "\n")
    data = tmp_path / "s.data"
    data.write_text("classes=6\ntrain=gen/images/train\nvalid=gen/images/val\nnames=s.names\n"
                    "generator=shapes\nn_train=4\nn_val=2\nimg_size=64\nseed=0\n")
    d = parse_data_cfg(data)
    assert "generating the shapes set" in capsys.readouterr().out
    assert len(list(Path(d["train"]).iterdir())) == 4 and len(list(Path(d["valid"]).iterdir())) == 2
    parse_data_cfg(data)
    assert "generating" not in capsys.readouterr().out  # second start: already complete
    ds = LoadImagesAndLabels(d["train"], 64, nc=6, verbose=False)
    assert ds.n == 4 and ds.counts["bad_lines"] == 0


def _ensure(root):
    shapes.ensure(root, 6, 2, 64, 0, workers=1, verbose=False)
    return (Path(root) / ".complete.json").read_text()


def test_concurrent_ensure(tmp_path):
    root = tmp_path / "shp"
    with mp.get_context("fork").Pool(3) as pool:
        res = pool.map(_ensure, [str(root)] * 3)
    assert len(set(res)) == 1
    assert len(list((root / "images" / "train").iterdir())) == 6
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_ensure_refuses_foreign_folder_and_replaces_other_params(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="not a generated shapes set"):
        shapes.ensure(tmp_path / "mine", 2, 1, 64)
    assert (tmp_path / "mine" / "thesis.tex").exists()
    shapes.ensure(tmp_path / "s", 2, 1, 64, verbose=False)
    shapes.ensure(tmp_path / "s", 3, 1, 64, verbose=False)
    assert len(list((tmp_path / "s" / "images" / "train").iterdir())) == 3

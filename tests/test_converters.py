"""data/voc2yolo.py, data/coco2yolo.py, data/exdark2yolo.py on the handmade fixtures in tests/fixtures/."""
import importlib.util
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.datasets import LoadImagesAndLabels, parse_data_cfg

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).resolve().parent / "fixtures"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "data" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def blank(path, w, h):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 90, np.uint8))


def read_labels(path):
    text = Path(path).read_text().split("\n")
    return np.array([[float(v) for v in ln.split()] for ln in text if ln.strip()]).reshape(-1, 5)


@pytest.fixture()
def voc(tmp_path):
    root = tmp_path / "VOCdevkit"
    shutil.copytree(FIX / "voc", root)
    blank(root / "VOC2007" / "JPEGImages" / "000001.jpg", 200, 100)
    blank(root / "VOC2007" / "JPEGImages" / "000002.jpg", 64, 48)
    return root


@pytest.mark.parametrize("difficult", ["ignore", "keep", "drop"])
def test_voc2yolo(voc, tmp_path, capsys, difficult):
    m = load_script("voc2yolo")
    out = tmp_path / "out"
    args = ["--voc-root", str(voc), "--out", str(out), "--train", "VOC2007/trainval", "--valid", "VOC2007/test",
            "--test", ""]
    m.main(args + (["--keep-difficult"] if difficult == "keep" else ["--difficult", difficult]))
    keep = difficult == "keep"
    err = capsys.readouterr().err
    assert "unknown class 'unicorn'" in err
    lab = read_labels(out / "labels" / "train" / "VOC2007_000001.txt")
    dog = [m.VOC_CLASSES.index("dog"), 50 / 200, 25 / 100, 100 / 200, 50 / 100]  # 1-based inclusive corners
    person = [m.VOC_CLASSES.index("person"), 175 / 200, 75 / 100, 50 / 200, 50 / 100]
    np.testing.assert_allclose(lab, [dog, person] if keep else [dog], atol=1e-6)
    ignore = out / "labels" / "train" / "VOC2007_000001.ignore.txt"  # the difficult person: an ignore region
    assert ignore.is_file() == (difficult == "ignore")
    if difficult == "ignore":
        np.testing.assert_allclose(read_labels(ignore), [person], atol=1e-6)
    # no <size>: read from the image (64 x 48)
    tv = read_labels(out / "labels" / "val" / "VOC2007_000002.txt")
    np.testing.assert_allclose(tv, [[19, (16 + 48) / 2 / 64, (12 + 36) / 2 / 48, 32 / 64, 24 / 48]], atol=1e-6)
    d = parse_data_cfg(out / "voc.data")
    assert d["classes"] == 20 and d["names"][14] == "person" and "test" not in d  # --test given empty below
    ds = LoadImagesAndLabels(d["train"], 64, nc=20, verbose=False)
    assert ds.n == 1 and ds.counts["bad_lines"] == 0 and (out / "images" / "train" / "VOC2007_000001.jpg").is_symlink()


def test_coco2yolo(tmp_path, capsys):
    m = load_script("coco2yolo")
    assert len(m.COCO80_IDS) == 80 and m.COCO91_TO_80[1] == 0 and m.COCO91_TO_80[18] == 16 and m.COCO91_TO_80[90] == 79
    assert 12 not in m.COCO91_TO_80 and 26 not in m.COCO91_TO_80
    imgs = tmp_path / "train2017"
    for name, w, h in [("000000000010.jpg", 200, 100), ("000000000011.jpg", 64, 48), ("000000000012.jpg", 80, 80)]:
        blank(imgs / name, w, h)
    out = tmp_path / "coco"
    m.main(["--annotations", str(FIX / "coco" / "instances_mini.json"), "--images", str(imgs), "--out", str(out),
            "--split", "train2017", "--copy"])
    err = capsys.readouterr().err
    assert "unknown category_id 12" in err
    np.testing.assert_allclose(read_labels(out / "labels" / "train2017" / "000000000010.txt"),
                               [[0, 0.25, 0.25, 0.5, 0.5], [79, 0.875, 0.75, 0.25, 0.5]], atol=1e-6)  # crowd skipped
    # zero-area skipped; box past the image edge clipped (50..64 x 40..48)
    np.testing.assert_allclose(read_labels(out / "labels" / "train2017" / "000000000011.txt"),
                               [[16, 0.5, 0.5, 0.5, 0.5], [16, 57 / 64, 44 / 48, 14 / 64, 8 / 48]], atol=1e-6)
    assert not (out / "labels" / "train2017" / "000000000012.txt").exists()  # background
    d = parse_data_cfg(out / "coco.data")
    assert d["classes"] == 80 and d["names"][79] == "toothbrush" and d["train"] == d["valid"]
    ds = LoadImagesAndLabels(d["train"], 64, nc=80, verbose=False)
    assert ds.counts["found"] == 3 and ds.counts["background"] == 1 and ds.counts["bad_lines"] == 0
    # the JSON's own categories, numbered by id
    out2 = tmp_path / "custom"
    m.main(["--annotations", str(FIX / "coco" / "instances_mini.json"), "--images", str(imgs), "--out", str(out2),
            "--split", "val", "--categories-from-json"])
    assert read_labels(out2 / "labels" / "val" / "000000000010.txt")[:, 0].tolist() == [0, 2]
    assert (out2 / "coco.names").read_text().split("\n")[:3] == ["person", "dog", "toothbrush"]


@pytest.fixture()
def exdark(tmp_path):
    ann = tmp_path / "ExDark_Annno"
    shutil.copytree(FIX / "exdark" / "ExDark_Annno", ann)
    blank(tmp_path / "ExDark" / "People" / "2015_00001.jpg", 200, 100)
    blank(tmp_path / "ExDark" / "Car" / "2015_00002.png", 64, 48)
    blank(tmp_path / "ExDark" / "Cup" / "2015_00003.jpg", 32, 32)  # no annotation file
    return tmp_path / "ExDark", ann


def test_exdark2yolo_split_file(exdark, tmp_path, capsys):
    m = load_script("exdark2yolo")
    assert len(m.EXDARK_CLASSES) == 12
    out = tmp_path / "out"
    with open(exdark[1] / "People" / "2015_00001.jpg.txt", "a") as f:
        f.write("Cat 1 x 3 4 0 0 0 0 0 0 0\n")  # a broken line: reported and skipped, the file's others kept
    m.main(["--images", str(exdark[0]), "--annotations", str(exdark[1]), "--out", str(out),
            "--split-file", str(FIX / "exdark" / "imageclasslist.txt")])
    err = capsys.readouterr().err
    assert "unknown class 'Dragon'" in err and "2015_00001.jpg.txt:4" in err
    assert "2015_00001.jpg.txt:5: non-numeric box '1 x 3 4', line skipped" in err
    people, dog = m.EXDARK_CLASSES.index("People"), m.EXDARK_CLASSES.index("Dog")
    np.testing.assert_allclose(read_labels(out / "labels" / "train" / "2015_00001.txt"),
                               [[people, 30 / 200, 50 / 100, 40 / 200, 60 / 100], [dog, 0.75, 0.5, 0.5, 1.0]],
                               atol=1e-6)
    np.testing.assert_allclose(read_labels(out / "labels" / "val" / "2015_00002.txt"),
                               [[m.EXDARK_CLASSES.index("Car"), 0.5, 0.5, 1, 1]], atol=1e-6)  # .PNG.txt matched
    assert read_labels(out / "labels" / "test" / "2015_00003.txt").shape == (0, 5)
    d = parse_data_cfg(out / "exdark.data")
    assert d["classes"] == 12 and d["names"][10] == "People" and d["valid"].endswith("images/val")


def test_exdark2yolo_random_split(exdark, tmp_path):
    m = load_script("exdark2yolo")
    out = tmp_path / "out"
    m.convert(exdark[0], exdark[1], out, val_fraction=0.34, seed=0)
    tr, va = list((out / "images" / "train").iterdir()), list((out / "images" / "val").iterdir())
    assert len(tr) == 2 and len(va) == 1
    again = tmp_path / "again"
    m.convert(exdark[0], exdark[1], again, val_fraction=0.34, seed=0)
    assert [p.name for p in (again / "images" / "val").iterdir()] == [p.name for p in va]


def test_voc2yolo_holds_out_a_validation_split_and_keeps_the_test_split_apart(voc, tmp_path):
    """The defaults' shape on the fixture's two image sets: selection on `valid`, the test split scored once
    (test.py --split test), never trained on; the .data file names all three."""
    m = load_script("voc2yolo")
    out = tmp_path / "split"
    m.main(["--voc-root", str(voc), "--out", str(out), "--train", "VOC2007/trainval", "--valid", "VOC2007/trainval",
            "--test", "VOC2007/test"])
    d = parse_data_cfg(out / "voc.data")
    assert Path(d["test"]) == out / "images" / "test" and (out / "images" / "test" / "VOC2007_000002.jpg").exists()
    assert not (out / "images" / "train" / "VOC2007_000002.jpg").exists()
    train, valid, *_, test = m.convert.__defaults__  # the defaults: 07 trainval + 12 train / 12 val / 07 test
    assert (train, valid, test) == (("VOC2007/trainval", "VOC2012/train"), ("VOC2012/val",), ("VOC2007/test",))


def test_voc2yolo_skips_and_counts_images_whose_annotation_cannot_be_read(voc, tmp_path, capsys):
    """Not XML (its line named), a box without its corners, a missing file: each image is skipped (unlabelled, it
    would train as background) and counted; the rest converts. Nothing convertible is a one-line error."""
    m = load_script("voc2yolo")
    ann, main_sets = voc / "VOC2007" / "Annotations", voc / "VOC2007" / "ImageSets" / "Main"
    (ann / "000003.xml").write_text("<annotation>\n<size><width>64</width>\n")
    (ann / "000004.xml").write_text("<annotation><size><width>64</width><height>48</height></size><object>"
                                    "<name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax></bndbox>"
                                    "</object></annotation>")
    for i in (3, 4, 5):
        blank(voc / "VOC2007" / "JPEGImages" / f"00000{i}.jpg", 64, 48)
    (main_sets / "trainval.txt").write_text("000001\n000003\n000004\n000005\n")
    out = tmp_path / "out"
    m.main(["--voc-root", str(voc), "--out", str(out), "--train", "VOC2007/trainval", "--valid", "VOC2007/test",
            "--test", ""])
    cap = capsys.readouterr()
    assert f"{ann / '000003.xml'}:3: not valid XML" in cap.err
    assert f"{ann / '000004.xml'}: object 'dog' has no <bndbox> with numeric xmin, ymin, xmax, ymax" in cap.err
    assert f"{ann / '000005.xml'}: No such file or directory; image skipped" in cap.err
    assert "3 images skipped for unreadable annotations" in cap.out
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["VOC2007_000001.jpg"]
    (main_sets / "trainval.txt").write_text("000003\n")
    with pytest.raises(SystemExit, match=r"no image converted \(1 skipped for unreadable annotations, 0 missing\)"):
        m.main(["--voc-root", str(voc), "--out", str(tmp_path / "none"), "--train", "VOC2007/trainval", "--valid",
                "", "--test", ""])


def test_voc2yolo_skips_and_counts_an_annotated_image_missing_on_disk(voc, tmp_path, capsys):
    """An annotation whose JPEG is gone is skipped with its path named, counted in the summary, and leaves no link
    to nothing behind (the loader would count it as a corrupt image every epoch)."""
    m = load_script("voc2yolo")
    (voc / "VOC2007" / "JPEGImages" / "000001.jpg").unlink()
    out = tmp_path / "out"
    m.main(["--voc-root", str(voc), "--out", str(out), "--train", "VOC2007/trainval,VOC2007/test", "--valid", "",
            "--test", ""])
    cap = capsys.readouterr()
    assert f"{voc / 'VOC2007' / 'JPEGImages' / '000001.jpg'}: image not found, skipped" in cap.err
    assert cap.out.startswith("1 images, ") and "; 1 images missing ->" in cap.out
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["VOC2007_000002.jpg"]
    assert not (out / "labels" / "train" / "VOC2007_000001.txt").exists()


def test_coco2yolo_names_a_broken_json_and_skips_malformed_entries(tmp_path, capsys):
    m = load_script("coco2yolo")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [\n  {"id": 1,\n')
    with pytest.raises(SystemExit, match=rf"^error: {bad}:3: not valid JSON"):
        m.main(["--annotations", str(bad), "--images", str(tmp_path), "--out", str(tmp_path / "o"), "--split", "t"])
    blank(tmp_path / "imgs" / "a.jpg", 64, 64)
    (tmp_path / "odd.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 64}, {"id": 2, "file_name": "b.jpg"},
                   {"id": 3, "file_name": "gone.jpg", "width": 64, "height": 64}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 2]},
                        {"id": 8, "image_id": 1, "category_id": 1, "bbox": [0, 0, 32, 32]}],
        "categories": [{"id": 1, "name": "person"}]}))
    m.main(["--annotations", str(tmp_path / "odd.json"), "--images", str(tmp_path / "imgs"), "--out",
            str(tmp_path / "o"), "--split", "t"])
    cap = capsys.readouterr()
    assert "annotation 7: needs bbox, category_id, image_id (bbox: 4 numbers); skipped" in cap.err
    assert "image 2: needs file_name, height, id, width; skipped" in cap.err
    assert f"{tmp_path / 'imgs' / 'gone.jpg'}: image not found, skipped" in cap.err
    assert "1 images, 1 boxes written" in cap.out and "2 malformed entries, 1 missing images skipped" in cap.out
    assert sorted(p.name for p in (tmp_path / "o" / "images" / "t").iterdir()) == ["a.jpg"]
    np.testing.assert_allclose(read_labels(tmp_path / "o" / "labels" / "t" / "a.txt"), [[0, 0.25, 0.25, 0.5, 0.5]])

"""utils/datasets.py: .data parsing, bad data, label cache, alignment under augmentation, rect batches, loaders."""
import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils import datasets as D
from utils.datasets import (LoadImages, LoadImagesAndLabels, cache_candidates, create_dataloader, img2label_paths,
                            parse_data_cfg, resized_shape)
from utils.errors import UserError
from utils.shapes import render_image

ROOT = Path(__file__).resolve().parents[1]
NO_ROT = dict(degrees=0.0, shear=0.0, perspective=0.0, translate=0.1, scale=0.5, fliplr=0.5, flipud=0.5,
              hsv_h=0.015, hsv_s=0.7, hsv_v=0.4)


def write_img(path, w=64, h=48, color=(40, 80, 120)):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = color
    cv2.imwrite(str(path), img)
    return path


def write_label(img_path, text):
    p = Path(img2label_paths([img_path])[0])
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Fallback label caches go to a per-test folder, not ~/.cache."""
    monkeypatch.setenv("YOLO_COMPRESSION_CACHE", str(tmp_path / "usercache"))


# ------------------------------------------------------------------------------------------- .data files
def test_parse_data_cfg_resolves_paths(shapes_tiny):
    d = parse_data_cfg(shapes_tiny)
    assert d["classes"] == 6 and d["names"][:3] == ["circle", "square", "triangle"]
    assert Path(d["train"]) == shapes_tiny.parent / "images" / "train" and Path(d["valid"]).is_dir()


def test_parse_data_cfg_coco128(coco128):
    d = parse_data_cfg(ROOT / "data" / "coco128.data")
    assert d["classes"] == 80 and len(d["names"]) == 80 and d["names"][0] == "person"
    assert Path(d["train"]).resolve() == (coco128 / "images" / "train2017").resolve()


@pytest.mark.parametrize("text, needle", [
    ("classes=2\nvalid=imgs\nnames=n.names\n", "missing field 'train'"),
    ("classes=2\ntrain=imgs\nnames=n.names\n", "missing field 'valid'"),
    ("train=imgs\nvalid=imgs\nnames=n.names\n", "missing field 'classes'"),
    ("classes=2\ntrain=nowhere\nvalid=imgs\nnames=n.names\n", "field 'train': path not found"),
    ("classes=2\ntrain=imgs\nvalid=imgs\nnames=missing.names\n", "field 'names': path not found"),
    ("classes=3\ntrain=imgs\nvalid=imgs\nnames=n.names\n", "has 2 names but classes=3"),
    ("classes=two\ntrain=imgs\nvalid=imgs\nnames=n.names\n", "field 'classes' must be a positive integer"),
])
def test_parse_data_cfg_errors_name_field_and_file(tmp_path, text, needle):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "n.names").write_text("a\nb\n")
    f = tmp_path / "x.data"
    f.write_text(text)
    with pytest.raises(UserError) as e:
        parse_data_cfg(f)
    assert needle in str(e.value) and str(f) in str(e.value) and "\n" not in str(e.value)


def test_img2label_paths_and_list_file(tmp_path):
    assert img2label_paths(["/a/images/b/images/c.jpg"]) == ["/a/images/b/labels/c.txt"]
    a = write_img(tmp_path / "images" / "a.jpg")
    write_img(tmp_path / "images" / "b.png")
    lst = tmp_path / "list.txt"
    lst.write_text("images/b.png\n\n" + str(a) + "\n")
    assert D.list_image_files(lst) == sorted([str(a), str(tmp_path / "images" / "b.png")])
    assert D.list_image_files(tmp_path / "images") == D.list_image_files(str(tmp_path / "images" / "*.*"))


# ------------------------------------------------------------------------------------------- bad data
def make_bad_set(root):
    im = root / "images"
    good = write_img(im / "good.jpg")
    write_label(good, "0 0.5 0.5 0.2 0.2\n1 0.25 0.25 0.1 0.1\n")
    bad = write_img(im / "badlines.jpg")
    write_label(bad, "\n".join([
        "0 0.5 0.5 0.2 0.2",          # 1 ok
        "0 0.5 0.5 0.2",              # 2 wrong field count
        "7 0.5 0.5 0.2 0.2",          # 3 class out of range (nc=2)
        "0 1.5 0.5 0.2 0.2",          # 4 coordinate outside 0..1
        "0 0.5 0.5 0.2 0.2",          # 5 duplicate of 1
        "1 1.0005 0.5 0.2 0.2",       # 6 within tolerance: kept, clipped
        "-1 0.5 0.5 0.2 0.2",         # 7 negative class
        "0 abc 0.5 0.2 0.2",          # 8 non-numeric
        "0.5 0.5 0.5 0.2 0.2",        # 9 non-integer class
    ]) + "\n")
    write_img(im / "background.jpg")
    empty = write_img(im / "empty.jpg")
    write_label(empty, "\n")
    (im / "corrupt.jpg").write_bytes(b"this is not an image at all" * 10)
    write_label(im / "corrupt.jpg", "0 0.5 0.5 0.2 0.2\n")
    trunc = write_img(im / "truncated.jpg", 200, 200)
    data = trunc.read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    return im


def test_an_image_deleted_after_the_scan_is_skipped_and_counted(tmp_path, capsys):
    im = tmp_path / "images"
    paths = [write_img(im / f"{k}.jpg", color=(20 * k, 40, 60)) for k in range(3)]
    for p in paths:
        write_label(p, "0 0.5 0.5 0.2 0.2\n")
    ds = LoadImagesAndLabels(im, img_size=64, batch_size=1, nc=1, augment=False)
    paths[1].unlink()
    img, labels, path, _ = ds[1]
    assert Path(path) == paths[2] and img.shape == (3, 64, 64) and labels.shape == (1, 6)
    assert ds.unreadable == 1 and f"{paths[1]}" in capsys.readouterr().err
    assert torch.equal(img, ds[2][0])  # the item of the next image, as it is on its own
    for p in (paths[0], paths[2]):
        p.unlink()
    with pytest.raises(UserError, match="none of the 3 images can be read"):
        ds[0]


def test_bad_data_is_counted_reported_and_skipped(tmp_path, capsys):
    im = make_bad_set(tmp_path)
    ds = LoadImagesAndLabels(im, img_size=64, batch_size=2, nc=2)
    out = capsys.readouterr()
    assert ds.counts == dict(found=6, labelled=2, background=2, corrupt=2, bad_lines=6, duplicates=1)
    summary = [ln for ln in out.out.splitlines() if "images found" in ln]
    assert len(summary) == 1
    assert "6 images found, 2 labelled, 2 background, 2 corrupt, 6 bad label lines, 1 duplicates" in summary[0]
    lbl = str(tmp_path / "labels" / "badlines.txt")
    for line, reason in [(2, "expected 5 fields"), (3, "class id 7 outside 0..1"), (4, "coordinates outside 0..1"),
                         (5, "duplicate of line 1"), (7, "class id -1"), (8, "non-numeric"), (9, "class id 0.5")]:
        assert f"{lbl}:{line}: {reason}" in out.err, (line, reason)
    assert f"{lbl}:6:" not in out.err and f"{lbl}:1:" not in out.err
    assert str(im / "corrupt.jpg") in out.err and str(im / "truncated.jpg") in out.err
    names = [Path(f).name for f in ds.img_files]
    assert names == ["background.jpg", "badlines.jpg", "empty.jpg", "good.jpg"]
    lab = ds.labels[1]
    assert lab.shape == (2, 5) and lab[1, 0] == 1 and abs(lab[1, 1] + lab[1, 3] / 2 - 1) < 1e-6  # clipped to 1
    loader, _ = create_dataloader(im, 64, 2, workers=0, nc=2)
    n = sum(len(b[0]) for b in loader)  # the run goes on over the readable images
    assert n == 4


def test_no_images_is_user_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(UserError, match="no images found"):
        LoadImagesAndLabels(tmp_path / "images")


# ------------------------------------------------------------------------------------------- label cache
def test_cache_second_start_reads_and_change_invalidates(tmp_path, capsys):
    im = make_bad_set(tmp_path)
    a = LoadImagesAndLabels(im, 64, nc=2)
    assert a.cache_status == "written" and Path(a.cache_path) == tmp_path / "labels.cache"
    capsys.readouterr()
    b = LoadImagesAndLabels(im, 64, nc=2)
    out = capsys.readouterr()
    assert b.cache_status == "read" and b.counts == a.counts and b.img_files == a.img_files
    assert all((x == y).all() for x, y in zip(a.labels, b.labels)) and (a.shapes == b.shapes).all()
    assert "bad label lines" in out.out and "duplicate of line 1" in out.err  # still reported on a cached start
    lbl = tmp_path / "labels" / "good.txt"
    lbl.write_text(lbl.read_text() + "1 0.7 0.7 0.1 0.1\n")
    c = LoadImagesAndLabels(im, 64, nc=2)
    assert c.cache_status == "written" and sum(len(x) for x in c.labels) == sum(len(x) for x in a.labels) + 1
    d = LoadImagesAndLabels(im, 64, nc=3)  # the class range is part of the key
    assert d.cache_status == "written" and d.counts["bad_lines"] == 6


def test_cache_falls_back_when_folder_read_only(tmp_path):
    root = tmp_path / "ro"
    im = root / "images"
    for i in range(3):
        write_label(write_img(im / f"{i}.jpg"), "0 0.5 0.5 0.3 0.3\n")
    os.chmod(root, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        a = LoadImagesAndLabels(im, 64, nc=1)
        assert a.cache_status == "written" and Path(a.cache_path).parent == tmp_path / "usercache"
        assert not (root / "labels.cache").exists()
        b = LoadImagesAndLabels(im, 64, nc=1)
        assert b.cache_status == "read" and b.cache_path == a.cache_path
    finally:
        os.chmod(root, 0o755)


def test_a_list_file_keeps_its_cache_beside_it_never_at_the_filesystem_root(tmp_path):
    """Issue 30: a list naming /nonexistent/x.jpg once put the cache at /nonexistent.cache."""
    imgs = [write_img(tmp_path / "images" / f"{i}.jpg") for i in range(2)]
    for p in imgs:
        write_label(p, "0 0.5 0.5 0.3 0.3\n")
    listing = tmp_path / "lists" / "train.txt"
    listing.parent.mkdir()
    listing.write_text("\n".join([*map(str, imgs), "/nonexistent/x.jpg"]) + "\n")
    a = LoadImagesAndLabels(listing, 64, nc=1)
    assert a.cache_status == "written" and Path(a.cache_path) == tmp_path / "lists" / "train.cache"
    assert not Path("/nonexistent.cache").exists() and not (tmp_path / "labels.cache").exists()
    assert LoadImagesAndLabels(listing, 64, nc=1).cache_status == "read"
    assert cache_candidates(["/nonexistent/y.txt"], "/nonexistent/images")[0].parent == tmp_path / "usercache"


def test_damaged_cache_is_rebuilt(tmp_path):
    im = tmp_path / "images"
    write_label(write_img(im / "a.jpg"), "0 0.5 0.5 0.3 0.3\n")
    a = LoadImagesAndLabels(im, 64, nc=1)
    Path(a.cache_path).write_bytes(b"garbage")
    b = LoadImagesAndLabels(im, 64, nc=1)
    assert b.cache_status == "written" and len(b.labels[0]) == 1


# ------------------------------------------------------------------------------------------- alignment
class MaskDataset(LoadImagesAndLabels):
    """Instead of real pixels, shows one known object (image ``j``, object ``k``) as a saturated red mask on black.

    ``object_mask(j, k)`` returns that object's boolean mask at the original resolution. Augmentation draws the
    same random numbers whatever the pixels and labels are, so each object can be followed through the same
    transform alone.
    """

    target = None
    used = None

    def object_mask(self, j, k):
        raise NotImplementedError

    def load_image(self, i):
        if self.used is not None:
            self.used.append(i)
        w0, h0 = (int(v) for v in self.shapes[i])
        img = np.zeros((h0, w0, 3), np.uint8)
        if self.target is not None and self.target[0] == i:
            img[self.object_mask(*self.target)] = (0, 0, 255)
        h, w = resized_shape(h0, w0, self.img_size)
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR), (h0, w0), (h, w)


class ShapesMasks(MaskDataset):
    def object_mask(self, j, k):
        return render_image(0, "train", int(Path(self.img_files[j]).stem), 128)[2] == k + 1


class BoxMasks(MaskDataset):
    """Each labelled box of the real images drawn as a filled rectangle (its known pixels)."""

    def object_mask(self, j, k):
        w0, h0 = (int(v) for v in self.shapes[j])
        _, x, y, w, h = self.labels_px[j][k]
        m = np.zeros((h0, w0), bool)
        m[int(y):int(h), int(x):int(w)] = True
        return m


def object_extent(img):
    """Box ``x1 y1 x2 y2`` around the red pixels of an RGB ``(3, H, W)`` output (None when there are none)."""
    rgb = np.ascontiguousarray(img.numpy().transpose(1, 2, 0))
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    red = rgb[..., 0].astype(np.float32)
    if red.max() < 40:
        return None
    ys, xs = np.nonzero((red > 0.5 * red.max()) & (hsv[..., 1] > 60))
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64) if len(xs) else None


def is_cropped(img, box, m=2):
    """Whether the object under ``box`` was cut: by the output's edge, or by the mosaic canvas's edge (grey pad
    next to it; the test images are black)."""
    H, W = img.shape[1:]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    if x1 <= m or y1 <= m or x2 >= W - m or y2 >= H - m:
        return True
    rgb = np.ascontiguousarray(img.numpy().transpose(1, 2, 0)[max(y1 - m, 0):y2 + m, max(x1 - m, 0):x2 + m])
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    return bool(((hsv[..., 1] < 40) & (hsv[..., 2] > 30)).any())


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def follow_objects(ds, items, epochs=(0, 1)):
    """For every item and every object of its source images: ``(label box px, object box px)`` pairs.

    Only the object is drawn, so its extent is the box around all red pixels (an occluded object may be in
    pieces); source images that a mosaic happens to use twice are skipped."""
    true_labels = [lb.copy() for lb in ds.labels]
    pairs, seen = [], 0
    for e in epochs:
        for i in items:
            ds.used, ds.target = [], None
            ds.labels = [np.zeros((0, 5), np.float32)] * ds.n
            ds[(i, e)]
            sources = sorted(set(ds.used))
            ds.used_all, ds.used = ds.used, None
            for j in sources:
                if ds.used_all.count(j) > 1:
                    continue
                for k in range(len(true_labels[j])):
                    ds.labels = [np.zeros((0, 5), np.float32)] * ds.n
                    ds.labels[j] = true_labels[j][k:k + 1]
                    ds.target = (j, k)
                    img, lab, _, _ = ds[(i, e)]
                    seen += 1
                    H, W = img.shape[1:]
                    ext = object_extent(img)
                    assert len(lab) <= 1
                    for _, _, x, y, w, h in lab.numpy().astype(np.float64):
                        box = np.array([(x - w / 2) * W, (y - h / 2) * H, (x + w / 2) * W, (y + h / 2) * H])
                        pairs.append((box, ext, is_cropped(img, box)))
    ds.labels, ds.target = true_labels, None
    return pairs, seen


def shapes_mask_dataset(shapes_tiny, hyp, img_size=256, rect=False, augment=True):
    d = parse_data_cfg(shapes_tiny)
    return ShapesMasks(d["train"], img_size, 4, augment=augment, hyp=hyp, rect=rect, nc=6, verbose=False)


def coco_mask_dataset(coco128, hyp, img_size=256, rect=False, augment=True):
    """coco128's real image sizes and boxes, each box snapped to whole pixels and drawn as a filled rectangle."""
    ds = BoxMasks(coco128 / "images" / "train2017", img_size, 4, augment=augment, hyp=hyp, rect=rect, nc=80,
                  verbose=False)
    labels, px = [], []
    for (w0, h0), lab in zip(ds.shapes, ds.labels):
        rows, boxes = [], []
        for c, x, y, w, h in lab:
            x1, y1 = int(round((x - w / 2) * w0)), int(round((y - h / 2) * h0))
            x2, y2 = max(x1 + 1, int(round((x + w / 2) * w0))), max(y1 + 1, int(round((y + h / 2) * h0)))
            boxes.append((c, x1, y1, x2, y2))
            rows.append([c, (x1 + x2) / 2 / w0, (y1 + y2) / 2 / h0, (x2 - x1) / w0, (y2 - y1) / h0])
        labels.append(np.array(rows, np.float32).reshape(-1, 5))
        px.append(boxes)
    ds.labels, ds.labels_px = labels, px
    return ds


def check_iou(pairs, seen, min_side=16, thr=0.9, cropped_iou=False):
    """Every label has its object under it and encloses it (1.5 px for resampling); labels of whole objects
    (and, with ``cropped_iou``, of cut ones: rectangles stay exact when cut) have IoU > ``thr`` with it."""
    assert len(pairs) >= seen * 0.3, "most objects should survive augmentation"
    checked = 0
    for box, ext, cropped in pairs:
        assert ext is not None, f"label {box} has no object under it"
        assert (ext[:2] >= box[:2] - 1.5).all() and (ext[2:] <= box[2:] + 1.5).all(), (box, ext)
        if min(box[2] - box[0], box[3] - box[1]) < min_side or (cropped and not cropped_iou):
            continue  # a pixel of resampling is too much of a tiny box; a cut shape's box cannot shrink to it
        checked += 1
        assert iou(box, ext) > thr, (box, ext, iou(box, ext))
    assert checked >= 10
    return checked


@pytest.mark.parametrize("mosaic", [1.0, 0.0])
def test_alignment_shapes(shapes_tiny, mosaic):
    ds = shapes_mask_dataset(shapes_tiny, {**NO_ROT, "mosaic": mosaic})
    check_iou(*follow_objects(ds, range(4)))


@pytest.mark.parametrize("mosaic", [1.0, 0.0])
def test_alignment_coco128(coco128, mosaic):
    ds = coco_mask_dataset(coco128, {**NO_ROT, "mosaic": mosaic})
    check_iou(*follow_objects(ds, range(0, 128, 40), epochs=(0,)), cropped_iou=True)


@pytest.mark.parametrize("mosaic", [1.0, 0.0])
def test_set_img_size_builds_smaller_aligned_items(shapes_tiny, mosaic):
    """Progressive resizing: a 256-px training set told 128 builds 128-px items whose labels still sit on their
    objects."""
    ds = shapes_mask_dataset(shapes_tiny, {**NO_ROT, "mosaic": mosaic})
    ds.set_img_size(128)
    assert ds[0][0].shape == (3, 128, 128)
    # thr 0.85, not 0.9: thin triangle tips fade below the red threshold when 128-px sources are warped smaller
    check_iou(*follow_objects(ds, range(6) if mosaic else range(16)), min_side=16, thr=0.85)


def test_set_img_size_cached_and_rect(shapes_tiny):
    """Cached images are resized from their cached size (the same as reading the file at the new size, to a
    grey level or two); rect sets refuse a new size."""
    d = parse_data_cfg(shapes_tiny)
    a = LoadImagesAndLabels(d["train"], 64, augment=True, nc=6, verbose=False, cache_images=True)
    b = LoadImagesAndLabels(d["train"], 32, augment=True, nc=6, verbose=False)
    a.set_img_size(32)
    for i in range(3):
        img_a, hw0_a, hw_a = a.load_image(i)
        img_b, hw0_b, hw_b = b.load_image(i)
        assert (hw0_a, hw_a) == (hw0_b, hw_b) and img_a.shape == img_b.shape
        assert np.abs(img_a.astype(int) - img_b.astype(int)).mean() < 8
        assert a[i][0].shape == (3, 32, 32)
    rect = LoadImagesAndLabels(d["train"], 64, rect=True, nc=6, verbose=False)
    with pytest.raises(ValueError, match="rect batches keep the shapes of img_size 64"):
        rect.set_img_size(32)


def test_alignment_eval_rect_exact(shapes_tiny):
    ds = shapes_mask_dataset(shapes_tiny, None, rect=True, augment=False)
    check_iou(*follow_objects(ds, range(0, 16, 3), epochs=(0,)), min_side=8, thr=0.9)


def test_rotated_boxes_contain_objects(shapes_tiny):
    ds = shapes_mask_dataset(shapes_tiny, {**NO_ROT, "degrees": 30.0, "shear": 5.0, "perspective": 0.0005})
    pairs, seen = follow_objects(ds, range(4))
    assert len(pairs) >= 0.3 * seen
    for box, ext, cropped in pairs:
        if ext is None:  # a rotated box is larger than its object: at the edge it can outlive it
            assert cropped, box
            continue
        # the box around the 4 rotated corners encloses the object (1.5 px for resampling)
        assert (ext[:2] >= box[:2] - 1.5).all() and (ext[2:] <= box[2:] + 1.5).all(), (box, ext)


# ------------------------------------------------------------------------------------------- rect / eval shapes
def test_rect_batches_minimal_and_sorted(coco128):
    ds = LoadImagesAndLabels(coco128 / "images" / "train2017", 320, 16, rect=True, nc=80, verbose=False)
    ar = ds.shapes[:, 1] / ds.shapes[:, 0]
    assert (np.diff(ar) >= 0).all()
    for b, (bh, bw) in enumerate(ds.batch_shapes):
        hw = np.array([resized_shape(int(h), int(w), 320) for w, h in ds.shapes[ds.batch == b]])
        assert bh % 32 == 0 and bw % 32 == 0
        assert bh - 32 < hw[:, 0].max() <= bh and bw - 32 < hw[:, 1].max() <= bw
    loader, _ = create_dataloader(coco128 / "images" / "train2017", 320, 16, rect=True, workers=0, nc=80,
                                  verbose=False)
    for b, (imgs, targets, paths, shapes) in enumerate(loader):
        assert tuple(imgs.shape[2:]) == tuple(ds.batch_shapes[b])
        assert list(paths) == ds.img_files[b * 16:(b + 1) * 16]  # eval order: no shuffle


@pytest.mark.parametrize("rect", [True, False])
def test_eval_shapes_map_boxes_back_exactly(shapes_tiny, rect):
    d = parse_data_cfg(shapes_tiny)
    ds = LoadImagesAndLabels(d["valid"], 160, 4, rect=rect, nc=6, verbose=False)
    for i in range(ds.n):
        img, lab, path, ((h0, w0), ((rh, rw), (pw, ph))) = ds[i]
        H, W = img.shape[1:]
        assert (w0, h0) == tuple(ds.shapes[i]) and path == ds.img_files[i]
        assert (H, W) == ((160, 160) if not rect else tuple(ds.batch_shapes[ds.batch[i]]))
        x = lab[:, 2].numpy() * W
        w = lab[:, 4].numpy() * W
        y = lab[:, 3].numpy() * H
        orig = ds.labels[i]
        np.testing.assert_allclose((x - pw) / rw, orig[:, 1] * w0, atol=1e-3)
        np.testing.assert_allclose(w / rw, orig[:, 3] * w0, atol=1e-3)
        np.testing.assert_allclose((y - ph) / rh, orig[:, 2] * h0, atol=1e-3)
        # the image content sits where the shapes say: padding around it is grey
        a = img.numpy()
        h, wd = round(h0 * rh), round(w0 * rw)
        assert abs(h - h0 * rh) < 1e-6 and abs(wd - w0 * rw) < 1e-6
        if pw >= 1:
            assert (a[:, :, : int(pw)] == D.PAD_VALUE).all()
        if ph >= 1:
            assert (a[:, : int(ph)] == D.PAD_VALUE).all()
        assert (a[:, int(ph) + h:] == D.PAD_VALUE).all() and (a[:, :, int(pw) + wd:] == D.PAD_VALUE).all()


# ------------------------------------------------------------------------------------------- loaders
def test_collate(shapes_tiny):
    d = parse_data_cfg(shapes_tiny)
    ds = LoadImagesAndLabels(d["train"], 96, 4, augment=True, nc=6, verbose=False)
    batch = [ds[i] for i in range(3)]
    imgs, targets, paths, shapes = LoadImagesAndLabels.collate_fn(batch)
    assert imgs.shape == (3, 3, 96, 96) and imgs.dtype == torch.uint8
    assert targets.shape == (sum(len(b[1]) for b in batch), 6)
    assert targets[:, 0].tolist() == [float(i) for i, b in enumerate(batch) for _ in range(len(b[1]))]
    assert (targets[:, 2:] >= 0).all() and (targets[:, 2:] <= 1).all() and len(paths) == 3 and len(shapes) == 3
    assert batch[0][1][:, 0].eq(0).all()  # the dataset's own column 0 is untouched


def epoch_batches(loader, epoch=None):
    if epoch is not None:
        loader.sampler.set_epoch(epoch)
    return [(imgs.clone(), targets.clone(), list(paths)) for imgs, targets, paths, _ in loader]


def test_train_loader_shuffles_each_epoch_reproducibly(shapes_tiny):
    d = parse_data_cfg(shapes_tiny)
    kw = dict(augment=True, shuffle=True, workers=0, seed=3, nc=6, verbose=False)
    loader, ds = create_dataloader(d["train"], 64, 4, **kw)
    e0, e1 = epoch_batches(loader, 0), epoch_batches(loader, 1)
    p0 = [p for b in e0 for p in b[2]]
    p1 = [p for b in e1 for p in b[2]]
    assert sorted(p0) == sorted(ds.img_files) == sorted(p1)  # every image once per epoch
    assert p0 != p1 and p0 != ds.img_files
    # a fresh loader jumping straight to epoch 1 (as after a resume) gives identical batches
    fresh, _ = create_dataloader(d["train"], 64, 4, **kw)
    again = epoch_batches(fresh, 1)
    for (a, ta, pa), (b, tb, pb) in zip(e1, again):
        assert pa == pb and torch.equal(a, b) and torch.equal(ta, tb)
    # without set_epoch each iteration advances the epoch
    auto, _ = create_dataloader(d["train"], 64, 4, **kw)
    epoch_batches(auto)
    assert [p for b in epoch_batches(auto) for p in b[2]] == p1
    other, _ = create_dataloader(d["train"], 64, 4, **{**kw, "seed": 4})
    assert [p for b in epoch_batches(other, 1) for p in b[2]] != p1


def test_workers_give_the_same_batches(shapes_tiny):
    d = parse_data_cfg(shapes_tiny)
    kw = dict(augment=True, shuffle=True, seed=1, nc=6, verbose=False)
    l0, _ = create_dataloader(d["train"], 64, 8, workers=0, **kw)
    l2, _ = create_dataloader(d["train"], 64, 8, workers=2, **kw)
    for (a, ta, pa), (b, tb, pb) in zip(epoch_batches(l0, 2), epoch_batches(l2, 2)):
        assert pa == pb and torch.equal(a, b) and torch.equal(ta, tb)


def test_eval_loader_does_not_shuffle(shapes_tiny):
    d = parse_data_cfg(shapes_tiny)
    loader, ds = create_dataloader(d["valid"], 64, 3, workers=0, nc=6, verbose=False)
    for e in range(2):
        assert [p for b in epoch_batches(loader, e) for p in b[2]] == ds.img_files


def test_distributed_sampler_shards(shapes_tiny):
    d = parse_data_cfg(shapes_tiny)
    ds = LoadImagesAndLabels(d["train"], 64, nc=6, verbose=False)
    s = [D.EpochSampler(ds, shuffle=True, seed=0, rank=r, world_size=3) for r in range(3)]
    for x in s:
        x.set_epoch(5)
    parts = [list(x) for x in s]
    assert all(len(p) == 6 for p in parts) and all(e == 5 for p in parts for _, e in p)
    idx = [i for p in parts for i, _ in p]
    assert set(idx) == set(range(16))  # 18 slots: 16 images + 2 repeats
    assert isinstance(s[0], torch.utils.data.distributed.DistributedSampler)


def test_mosaic_probability_zero_gives_shapes(shapes_tiny):
    d = parse_data_cfg(shapes_tiny)
    ds = LoadImagesAndLabels(d["train"], 64, augment=True, hyp={"mosaic": 0.0}, nc=6, verbose=False)
    assert all(ds[i][3] is not None for i in range(4))
    ds = LoadImagesAndLabels(d["train"], 64, augment=True, hyp={"mosaic": 1.0}, nc=6, verbose=False)
    assert all(ds[i][3] is None for i in range(4))


def test_cache_images_same_output(shapes_tiny):
    d = parse_data_cfg(shapes_tiny)
    a = LoadImagesAndLabels(d["train"], 64, augment=True, nc=6, verbose=False)
    b = LoadImagesAndLabels(d["train"], 64, augment=True, nc=6, verbose=False, cache_images=True)
    for i in range(3):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])


# ------------------------------------------------------------------------------------------- LoadImages
def test_load_images_file_folder_glob_video(tmp_path):
    write_img(tmp_path / "a.jpg", 100, 50)
    write_img(tmp_path / "b.png", 40, 80)
    (tmp_path / "notes.txt").write_text("x")
    vw = cv2.VideoWriter(str(tmp_path / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for k in range(3):
        vw.write(np.full((48, 64, 3), 60 * k, np.uint8))
    vw.release()
    items = list(LoadImages(tmp_path, img_size=64, stride=32))
    assert [Path(p).name for p, *_ in items] == ["a.jpg", "b.png", "v.avi", "v.avi", "v.avi"]
    (p, img, img0, cap) = items[0]
    assert img.shape == (3, 32, 64) and img.dtype == np.uint8 and img0.shape == (50, 100, 3) and cap is None
    assert items[1][1].shape == (3, 64, 32)
    assert items[2][3] is not None and items[2][2].shape == (48, 64, 3)
    assert len(list(LoadImages(tmp_path / "a.jpg"))) == 1
    assert len(list(LoadImages(str(tmp_path / "*.png")))) == 1
    with pytest.raises(UserError):
        LoadImages(tmp_path / "missing")
    with pytest.raises(UserError):
        LoadImages(tmp_path / "notes.txt")


def test_distributed_rect_keeps_whole_batches(coco128):
    ds = LoadImagesAndLabels(coco128 / "images" / "train2017", 320, 16, rect=True, nc=80, verbose=False)
    s = [D.EpochSampler(ds, shuffle=False, rank=r, world_size=3, batch_size=16) for r in range(3)]
    parts = [[i for i, _ in x] for x in s]
    assert sorted(i for p in parts for i in p) == list(range(128))  # each image once
    for p, x in zip(parts, s):
        assert len(x) == len(p) and len(p) % 16 == 0
        for k in range(0, len(p), 16):  # each chunk of 16 is one rect batch
            assert len(set(ds.batch[p[k:k + 16]])) == 1


def test_darknet_style_paths_relative_to_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    img = write_img(tmp_path / "set" / "images" / "a.jpg")
    write_label(img, "0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "set" / "train.txt").write_text("set/images/a.jpg\n")
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "n.names").write_text("thing\n")
    data = tmp_path / "cfgs" / "d.data"
    data.write_text("classes=1\ntrain=set/train.txt\nvalid=set/train.txt\nnames=cfgs/n.names\n")
    d = parse_data_cfg(data)
    assert Path(d["train"]) == tmp_path / "set" / "train.txt" and d["names"] == ["thing"]
    assert D.list_image_files(d["train"]) == [str(img)]

"""Datasets: ``.data`` parsing, label scanning and caching, augmentation, collate, loaders.

Conventions (see docs/architecture.md, "Data"):

* A ``.data`` file has ``classes=``, ``train=``, ``valid=``, ``names=`` (paths relative to the ``.data`` file or
  absolute). ``train``/``valid`` is a folder of images, a text file listing image paths (relative to the text
  file's folder or absolute), or a glob. ``generator=shapes`` makes ``parse_data_cfg`` build the synthetic
  shapes set on first use.
* Labels: replace the last ``/images/`` of an image path with ``/labels/`` and the extension with ``.txt``; one
  object per line, ``class x_center y_center width height`` normalised to 0..1. No label file (or an empty
  one) = a background image.
* Bad data never stops a run and is never silent: a corrupt image is skipped; a bad label line is reported once
  as ``file:line: reason`` and dropped; exact duplicate lines are dropped; coordinates may exceed 0..1 by at most
  ``COORD_TOL`` (then they are clipped), box corners outside the image are clipped silently.

Reproducibility: every random draw of an item's augmentation comes from a generator seeded with
``(seed, epoch, index)``, and the training order of epoch ``e`` from ``(seed, e)``. The loader's sampler
(``EpochSampler``) sends the epoch along with each index, so epoch ``e``'s batches are the same whatever ran
before, with 0 or N workers, persistent or not. The engine calls ``loader.sampler.set_epoch(e)`` before
iterating epoch ``e`` (without the call, each new iteration advances the epoch by one).
"""
import glob
import hashlib
import json
import math
import os
import sys
import tempfile
from dataclasses import asdict
from multiprocessing.pool import ThreadPool
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from utils import shapes
from utils.errors import UserError
from utils.general import project_path, user_cache_dir
from utils.settings import AugmentSettings

IMG_FORMATS = ("bmp", "jpg", "jpeg", "png", "tif", "tiff", "webp")
VID_FORMATS = ("avi", "mp4", "mov", "mkv", "m4v", "mpg", "mpeg", "wmv")
COORD_TOL = 1e-3  # label coordinates may leave 0..1 by this much before the line counts as bad
CACHE_VERSION = "1"
PAD_VALUE = 114  # grey of letterbox and mosaic borders
MAX_MESSAGES = 50  # bad-label messages printed per dataset; the summary counts them all
DEFAULT_HYP = asdict(AugmentSettings())  # a dataset built without ``hyp`` augments like train.py with no flags

cv2.setNumThreads(0)  # OpenCV threads fight with loader workers on small machines


def _log(msg):
    print(msg, flush=True)


def _warn(msg):
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- .data files
def parse_data_cfg(path):
    """Read a ``.data`` file -> ``dict(classes=int, train=str, valid=str, names=list[str], ...)``.

    Paths are resolved relative to the ``.data`` file (or, for Darknet-style files, relative to the working folder
    when only that one exists). Other ``key=value`` lines are kept as strings.
    A missing field, a path that does not exist, or a names file whose length differs from ``classes`` is a
    ``UserError`` naming the field and the ``.data`` file. ``generator=shapes`` builds the shapes set
    (``utils.shapes.ensure``, root = the folder above ``train``; optional integer keys ``n_train``, ``n_val``,
    ``img_size``, ``seed``) before the paths are checked.
    """
    path = project_path(path)
    if not path.is_file():
        raise UserError(f"{path}: .data file not found")
    d = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise UserError(f"{path}:{n}: expected key=value, got {line!r}")
        k, v = (s.strip() for s in line.split("=", 1))
        d[k] = v
    for field in ("classes", "train", "valid", "names"):
        if not d.get(field):
            raise UserError(f"{path}: missing field '{field}'")
    try:
        d["classes"] = int(d["classes"])
        assert d["classes"] > 0
    except (ValueError, AssertionError):
        raise UserError(f"{path}: field 'classes' must be a positive integer, got {d['classes']!r}") from None
    base = path.resolve().parent
    paths = [f for f in ("train", "valid", "test", "names") if d.get(f)]  # test: optional, scored once
    for field in paths:
        p = Path(os.path.expanduser(d[field]))
        q = p if p.is_absolute() else base / p
        if not p.is_absolute() and not q.exists() and not d.get("generator") and p.exists():
            q = p.resolve()  # Darknet-style .data files name paths relative to the working folder
        d[field] = os.path.normpath(str(q))
    if d.get("generator"):
        if d["generator"] != "shapes":
            raise UserError(f"{path}: field 'generator': unknown generator {d['generator']!r} (known: shapes)")

        try:
            opts = {k: int(d[k]) for k in ("n_train", "n_val", "img_size", "seed") if k in d}
        except ValueError:
            raise UserError(f"{path}: generator options n_train, n_val, img_size, seed must be integers") from None
        shapes.ensure(Path(d["train"]).parents[1], **opts)
    for field in paths:
        if not glob.has_magic(d[field]) and not Path(d[field]).exists():
            raise UserError(f"{path}: field '{field}': path not found: {d[field]}")
    if glob.has_magic(d["names"]):
        raise UserError(f"{path}: field 'names': expected a file, got a pattern {d['names']}")
    names = [s.strip() for s in Path(d["names"]).read_text().splitlines() if s.strip()]
    if len(names) != d["classes"]:
        raise UserError(f"{path}: field 'names': {d['names']} has {len(names)} names but classes={d['classes']}")
    d["names"] = names
    return d


def img2label_paths(img_paths):
    """Label path of each image path: last ``/images/`` -> ``/labels/``, extension -> ``.txt``."""
    a, b = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    out = []
    for p in img_paths:
        p = str(p)
        i = p.rfind(a)
        if i >= 0:
            p = p[:i] + b + p[i + len(a):]
        out.append(os.path.splitext(p)[0] + ".txt")
    return out


IGNORE_SUFFIX = ".ignore.txt"  # beside a label file: regions evaluation ignores (VOC's difficult objects)


def ignore_regions(img_path, shape0, nc=None):
    """The ignore regions of an image (``<label stem>.ignore.txt``, YOLO lines like a label file; training never
    reads them) as ``(k, 5)`` ``[cls, x1, y1, x2, y2]`` in original pixels, ``shape0 = (h0, w0)``; none: ``(0, 5)``."""
    path = Path(os.path.splitext(img2label_paths([img_path])[0])[0] + IGNORE_SUFFIX)
    if not path.is_file():
        return np.zeros((0, 5), np.float32)
    lab, msgs, _, _ = parse_label_file(path, nc)
    for m in msgs[:MAX_MESSAGES]:
        _warn(m)
    h, w = shape0
    xyxy = np.stack((lab[:, 1] - lab[:, 3] / 2, lab[:, 2] - lab[:, 4] / 2, lab[:, 1] + lab[:, 3] / 2,
                     lab[:, 2] + lab[:, 4] / 2), 1) * np.array([w, h, w, h], np.float32) if len(lab) else lab[:, 1:]
    return np.concatenate((lab[:, :1], xyxy), 1).astype(np.float32)


def _is_image(p):
    return str(p).rsplit(".", 1)[-1].lower() in IMG_FORMATS


def list_image_files(path):
    """Image files of a folder (recursive), a text file listing images, a glob, or a list of those; sorted."""
    files = []
    for p in path if isinstance(path, (list, tuple)) else [path]:
        p = Path(p)
        if p.is_dir():
            files += [str(f) for f in p.rglob("*") if f.is_file() and _is_image(f)]
        elif p.is_file() and _is_image(p):
            files.append(str(p))
        elif p.is_file():  # a list of images, relative to the list's folder (or, failing that, the working folder)
            lines = [Path(os.path.expanduser(s.strip())) for s in p.read_text().splitlines() if s.strip()]
            rel = [q for q in lines if not q.is_absolute()]
            base = p.parent
            if rel and not (base / rel[0]).exists() and rel[0].exists():
                base = Path.cwd()
            files += [str(q if q.is_absolute() else base / q) for q in lines]
        elif glob.has_magic(str(p)):
            files += [f for f in glob.glob(str(p), recursive=True) if _is_image(f)]
        else:
            raise UserError(f"{p}: no such file or folder")
    return sorted({os.path.normpath(f) for f in files if _is_image(f)})


# ----------------------------------------------------------------------------------------------- scanning
def _is_writable_dir(d):
    """A folder we may write to. As root ``os.access`` says yes everywhere, so the mode's write bits count too."""
    try:
        if not os.path.isdir(d) or not os.access(d, os.W_OK):
            return False
        return os.geteuid() != 0 or bool(os.stat(d).st_mode & 0o222)
    except (OSError, AttributeError):
        return os.path.isdir(d) and os.access(d, os.W_OK)


def cache_candidates(label_files, source):
    """Where the label cache may live: beside the data it describes (a list file: ``LIST.cache`` next to it; a
    folder: ``labels.cache`` next to an existing labels folder), then the user's and the temp cache dir."""
    src = Path(str(source))
    if src.is_file():
        local, key = src.with_suffix(".cache"), src
    else:
        ldir = Path(label_files[0]).parent if label_files else src
        key = ldir
        local = ldir.parent / (ldir.name + ".cache") if ldir.is_dir() else None  # not beside a missing folder
    tag = hashlib.sha1(str(key.resolve()).encode()).hexdigest()[:16] + f"-{key.stem}.cache"
    return [c for c in (local, user_cache_dir() / tag, Path(tempfile.gettempdir()) / "yolo-compression" / tag) if c]


def _files_hash(img_files, label_files, nc):
    h = hashlib.sha256(f"v{CACHE_VERSION}|nc={nc}|tol={COORD_TOL}".encode())
    for f in list(img_files) + list(label_files):
        try:
            st = os.stat(f)
            h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{f}|-\n".encode())
    return h.hexdigest()


def _image_ok(path):
    """``(w, h)`` of a readable image, or raise. JPEGs without an end marker are fully decoded to catch truncation."""
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        if im.format == "JPEG":
            with open(path, "rb") as f:
                f.seek(-2, 2)
                if f.read() != b"\xff\xd9":
                    im.load()  # raises on a truncated file
    if w < 2 or h < 2:
        raise ValueError(f"image too small ({w}x{h})")
    return w, h


def parse_label_file(path, nc=None):
    """Parse one label file -> ``(labels (n, 5) float32, messages, n_bad, n_duplicates)``.

    A line is bad (reported as ``path:line: reason`` and dropped) if it does not have 5 numeric fields, if its
    class is not an integer in ``0..nc-1``, if ``x, y, w, h`` leave 0..1 by more than ``COORD_TOL``, or if the box
    has no area. Exact duplicates of an earlier line are dropped and reported too. Kept boxes are clipped to the
    image.
    """
    rows, msgs, bad, dup, seen = [], [], 0, 0, {}
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return np.zeros((0, 5), np.float32), [f"{path}: unreadable label file: {e}"], 1, 0
    for n, line in enumerate(text.splitlines(), 1):
        f = line.split()
        if not f:
            continue
        reason = None
        if len(f) != 5:
            reason = f"expected 5 fields 'class x y w h', got {len(f)}"
        else:
            try:
                v = [float(s) for s in f]
            except ValueError:
                reason = "non-numeric field"
            else:
                c, x, y, w, h = v
                if not all(math.isfinite(t) for t in v):
                    reason = "non-finite value"
                elif c != int(c) or c < 0 or (nc is not None and c >= nc):
                    rng = f"0..{nc - 1}" if nc is not None else ">= 0"
                    reason = f"class id {f[0]} outside {rng}"
                elif min(x, y, w, h) < -COORD_TOL or max(x, y, w, h) > 1 + COORD_TOL:
                    reason = f"coordinates outside 0..1 (tolerance {COORD_TOL:g}): {' '.join(f[1:])}"
                elif w <= 0 or h <= 0:
                    reason = "box has zero width or height"
        if reason:
            bad += 1
            msgs.append(f"{path}:{n}: {reason}; line dropped")
            continue
        key = tuple(v)
        if key in seen:
            dup += 1
            msgs.append(f"{path}:{n}: duplicate of line {seen[key]}; line dropped")
            continue
        seen[key] = n
        rows.append(v)
    lab = np.array(rows, np.float32).reshape(-1, 5)
    if len(lab):  # clip the box to the image, keep centre/size form
        x1 = np.clip(lab[:, 1] - lab[:, 3] / 2, 0, 1)
        x2 = np.clip(lab[:, 1] + lab[:, 3] / 2, 0, 1)
        y1 = np.clip(lab[:, 2] - lab[:, 4] / 2, 0, 1)
        y2 = np.clip(lab[:, 2] + lab[:, 4] / 2, 0, 1)
        lab[:, 1], lab[:, 2], lab[:, 3], lab[:, 4] = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        lab = lab[(lab[:, 3] > 0) & (lab[:, 4] > 0)]
    return lab, msgs, bad, dup


def _scan_one(args):
    img, lbl, nc = args
    try:
        w, h = _image_ok(img)
    except Exception as e:  # noqa: BLE001 - any decoder error means corrupt
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return img, None, None, [f"{img}: corrupt or unreadable image skipped: {first}"], 0, 0
    if os.path.isfile(lbl):
        lab, msgs, bad, dup = parse_label_file(lbl, nc)
    else:
        lab, msgs, bad, dup = np.zeros((0, 5), np.float32), [], 0, 0
    return img, (w, h), lab, msgs, bad, dup


def scan_labels(img_files, label_files, nc=None, source="", verbose=True, prefix=""):
    """Verify images and parse labels, through the cache when it is valid.

    Returns a dict with ``img_files, label_files, shapes (n, 2) w,h, labels (list of (k, 5)), counts, messages,
    cache_path, cache_status`` (``'read'``, ``'written'`` or ``'not written'``); only readable images are kept.
    """
    key = _files_hash(img_files, label_files, nc)
    cands = cache_candidates(label_files, source)
    res = None
    for c in cands:
        res = _read_cache(c, key)
        if res is not None:
            res["cache_path"], res["cache_status"] = str(c), "read"
            break
    if res is None:
        with ThreadPool(min(8, max(1, os.cpu_count() or 1) * 2)) as pool:
            out = pool.map(_scan_one, [(i, lb, nc) for i, lb in zip(img_files, label_files)], chunksize=16)
        keep = [o for o in out if o[1] is not None]
        labels = [o[2] for o in keep]
        counts = dict(found=len(img_files), labelled=sum(len(lb) > 0 for lb in labels),
                      background=sum(len(lb) == 0 for lb in labels), corrupt=len(out) - len(keep),
                      bad_lines=sum(o[4] for o in out), duplicates=sum(o[5] for o in out))
        lab_of = dict(zip(img_files, label_files))
        res = dict(img_files=[o[0] for o in keep], label_files=[lab_of[o[0]] for o in keep],
                   shapes=np.array([o[1] for o in keep], np.int64).reshape(-1, 2), labels=labels,
                   counts=counts, messages=[m for o in out for m in o[3]])
        res["cache_path"], res["cache_status"] = None, "not written"
        for c in cands:
            if _write_cache(c, key, res):
                res["cache_path"], res["cache_status"] = str(c), "written"
                break
    if verbose:
        msgs = res["messages"]
        for m in msgs[:MAX_MESSAGES]:
            _warn(m)
        if len(msgs) > MAX_MESSAGES:
            _warn(f"... and {len(msgs) - MAX_MESSAGES} more messages like these (counted below)")
        k = res["counts"]
        nbox = sum(len(lb) for lb in res["labels"])
        _log(f"{prefix}{source}: {k['found']} images found, {k['labelled']} labelled, {k['background']} background, "
             f"{k['corrupt']} corrupt, {k['bad_lines']} bad label lines, {k['duplicates']} duplicates "
             f"({nbox} boxes; label cache {res['cache_status']}{' ' + res['cache_path'] if res['cache_path'] else ''})")
    return res


def _read_cache(path, key):
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["version"]) != CACHE_VERSION or str(z["hash"]) != key:
                return None
            nlab = z["nlab"]
            splits = np.cumsum(nlab)[:-1]
            return dict(img_files=[str(s) for s in z["img_files"]], label_files=[str(s) for s in z["label_files"]],
                        shapes=z["shapes"].astype(np.int64).reshape(-1, 2),
                        labels=[a.astype(np.float32).reshape(-1, 5) for a in np.split(z["labels"], splits)]
                        if len(nlab) else [],
                        counts=json.loads(str(z["counts"])), messages=[str(s) for s in z["messages"]])
    except Exception:  # noqa: BLE001 - a missing, stale or damaged cache is simply rebuilt
        return None


def _write_cache(path, key, res):
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not _is_writable_dir(path.parent):
            return False
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                labels = np.concatenate(res["labels"]) if res["labels"] else np.zeros((0, 5), np.float32)
                np.savez(f, version=np.array(CACHE_VERSION), hash=np.array(key),
                         img_files=np.array(res["img_files"], dtype=str),
                         label_files=np.array(res["label_files"], dtype=str),
                         shapes=res["shapes"], nlab=np.array([len(lb) for lb in res["labels"]], np.int64),
                         labels=labels.astype(np.float32), counts=np.array(json.dumps(res["counts"])),
                         messages=np.array(res["messages"], dtype=str))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------- geometry
def load_resized(path, img_size, augment=False):
    """Read an image (BGR, EXIF orientation ignored so labels stay valid), long side resized to ``img_size``.

    Returns ``(img, (h0, w0), (h, w))``; raises ``FileNotFoundError`` when the file cannot be decoded.
    """
    img = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise FileNotFoundError(f"{path}: image cannot be read (deleted or damaged since the dataset scan?)")
    h0, w0 = img.shape[:2]
    hw = resized_shape(h0, w0, img_size)
    return resize_to(img, hw, augment), (h0, w0), hw


def resize_to(img, hw, augment=False):
    """``img`` resized to ``(h, w)`` (itself when already that size): bilinear for training or upsampling, area
    averaging when shrinking for evaluation."""
    h, w = hw
    if (h, w) == img.shape[:2]:
        return img
    interp = cv2.INTER_LINEAR if (augment or h > img.shape[0]) else cv2.INTER_AREA
    return cv2.resize(img, (w, h), interpolation=interp)


def resized_shape(h0, w0, img_size):
    """``(h, w)`` of an ``(h0, w0)`` image whose long side is resized to ``img_size`` (each side at least 1)."""
    r = img_size / max(h0, w0)
    return max(1, int(round(h0 * r))), max(1, int(round(w0 * r)))


def letterbox(img, new_shape=416, color=(PAD_VALUE,) * 3, auto=False, stride=32, scaleup=True):
    """Resize keeping the aspect ratio and pad to ``new_shape`` (int or ``(h, w)``), the image centred.

    ``auto`` pads only to the next multiple of ``stride``. Returns ``(img, (ratio_h, ratio_w), (padw, padh))``
    where ``padw``/``padh`` are the left/top offsets in pixels: ``x_new = x_old * ratio_w + padw``.
    """
    h0, w0 = img.shape[:2]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / h0, new_shape[1] / w0)
    if not scaleup:
        r = min(r, 1.0)
    h, w = max(1, int(round(h0 * r))), max(1, int(round(w0 * r)))
    if auto:
        new_shape = (int(math.ceil(h / stride) * stride), int(math.ceil(w / stride) * stride))
    if (h, w) != (h0, w0):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    top, left = (new_shape[0] - h) // 2, (new_shape[1] - w) // 2
    bottom, right = new_shape[0] - h - top, new_shape[1] - w - left
    if top or bottom or left or right:
        img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return img, (h / h0, w / w0), (float(left), float(top))


def random_affine(img, boxes, rng, degrees=0.0, translate=0.1, scale=0.5, shear=0.0, perspective=0.0, border=(0, 0)):
    """Random rotation, scale, shear, translation and perspective of ``img`` and its pixel boxes.

    ``boxes`` is ``(n, 5)``: ``cls, x1, y1, x2, y2`` in pixels of ``img``. The output is
    ``img.shape + 2 * border`` (a negative border crops, as after a mosaic). Each box is replaced by the
    box around its 4 transformed corners, clipped to the output; boxes that became degenerate (under 2 px,
    under 10% of their scaled area, aspect ratio over 20) are dropped. All random numbers are drawn every
    time, in a fixed order, so the stream does not depend on the hyperparameters being zero.
    """
    height, width = img.shape[0] + 2 * border[0], img.shape[1] + 2 * border[1]
    u = rng.uniform(-1.0, 1.0, 7)
    C = np.eye(3)
    C[0, 2], C[1, 2] = -img.shape[1] / 2, -img.shape[0] / 2
    P = np.eye(3)
    P[2, 0], P[2, 1] = u[0] * perspective, u[1] * perspective
    a, s = u[2] * degrees, 1 + u[3] * scale
    R = np.eye(3)
    R[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=a, scale=s)
    S = np.eye(3)
    S[0, 1], S[1, 0] = math.tan(math.radians(u[4] * shear)), math.tan(math.radians(u[5] * shear))
    tx, ty = rng.uniform(0.5 - translate, 0.5 + translate, 2)
    T = np.eye(3)
    T[0, 2], T[1, 2] = tx * width, ty * height
    M = T @ S @ R @ P @ C
    if border[0] or border[1] or (M != np.eye(3)).any():
        if perspective:
            img = cv2.warpPerspective(img, M, dsize=(width, height), borderValue=(PAD_VALUE,) * 3)
        else:
            img = cv2.warpAffine(img, M[:2], dsize=(width, height), borderValue=(PAD_VALUE,) * 3)
    n = len(boxes)
    if n:
        xy = np.ones((n * 4, 3))
        xy[:, :2] = boxes[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
        xy = xy @ M.T
        xy = (xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]).reshape(n, 8)
        x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
        new = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1)
        new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
        new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
        keep = box_candidates(boxes[:, 1:5].T * s, new.T)
        boxes = np.concatenate([boxes[keep, :1], new[keep]], 1).astype(np.float32)
    return img, boxes


def box_candidates(b1, b2, wh_thr=2, ar_thr=20, area_thr=0.1, eps=1e-16):
    """Boxes ``b2`` (4, n, x1y1x2y2) that survive augmentation of ``b1`` (4, n, scaled by the affine's scale)."""
    w1, h1 = b1[2] - b1[0], b1[3] - b1[1]
    w2, h2 = b2[2] - b2[0], b2[3] - b2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def augment_hsv(img, rng, hgain=0.5, sgain=0.5, vgain=0.5):
    """Random hue/saturation/value gains on a BGR uint8 image, in place (lookup tables)."""
    r = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    if not (hgain or sgain or vgain):
        return img
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_h = ((x * r[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=img)
    return img


def _norm_to_pix(lab, w, h, padw=0.0, padh=0.0):
    """``(n, 5)`` normalised ``cls x y w h`` of a ``w x h`` image -> ``cls x1 y1 x2 y2`` pixels, shifted by the pad."""
    out = np.zeros((len(lab), 5), np.float32)
    if len(lab):
        out[:, 0] = lab[:, 0]
        out[:, 1] = w * (lab[:, 1] - lab[:, 3] / 2) + padw
        out[:, 2] = h * (lab[:, 2] - lab[:, 4] / 2) + padh
        out[:, 3] = w * (lab[:, 1] + lab[:, 3] / 2) + padw
        out[:, 4] = h * (lab[:, 2] + lab[:, 4] / 2) + padh
    return out


# ----------------------------------------------------------------------------------------------- dataset
class LoadImagesAndLabels(Dataset):
    """YOLO-format images and labels; ``dataset[i] -> (img, labels, path, shapes)`` (see the module docstring).

    ``dataset[(i, epoch)]`` is what the loader's sampler asks for; ``dataset[i]`` uses ``dataset.epoch``
    (``set_epoch``). Augmentation of item ``i`` in epoch ``e`` is a pure function of ``(seed, e, i)``.
    """

    def __init__(self, path, img_size=416, batch_size=16, augment=False, hyp=None, rect=False, cache_images=False,
                 stride=32, pad=0.0, nc=None, seed=0, verbose=True, prefix=""):
        self.path, self.img_size, self.augment, self.rect, self.stride = str(path), int(img_size), augment, rect, stride
        self.hyp = {**DEFAULT_HYP, **(hyp or {})}
        self.mosaic = augment and not rect and float(self.hyp.get("mosaic", 1.0)) > 0
        self.seed, self.epoch, self.nc = int(seed), 0, nc
        img_files = list_image_files(path)
        if not img_files:
            raise UserError(f"{path}: no images found (formats: {', '.join(IMG_FORMATS)})")
        res = scan_labels(img_files, img2label_paths(img_files), nc=nc, source=self.path, verbose=verbose,
                          prefix=prefix)
        if not res["img_files"]:
            raise UserError(f"{path}: none of the {len(img_files)} images can be read")
        self.scan = res
        self.counts, self.messages, self.cache_status, self.cache_path = (
            res["counts"], res["messages"], res["cache_status"], res["cache_path"])
        self.img_files, self.label_files = res["img_files"], res["label_files"]
        self.shapes, self.labels = res["shapes"], res["labels"]  # shapes: (w, h) of the original images
        n = self.n = len(self.img_files)
        self.unreadable = 0  # images that failed to load after the scan (skipped by __getitem__)
        bs = max(1, int(batch_size))
        self.batch = np.arange(n) // bs
        self.batch_shapes = None
        if rect:  # sort by aspect ratio; each batch as small as the stride allows
            ar = self.shapes[:, 1] / self.shapes[:, 0]
            order = np.argsort(ar, kind="stable")
            self.img_files = [self.img_files[i] for i in order]
            self.label_files = [self.label_files[i] for i in order]
            self.labels = [self.labels[i] for i in order]
            self.shapes = self.shapes[order]
            nb = int(self.batch[-1]) + 1
            hw = np.array([resized_shape(int(h), int(w), self.img_size) for w, h in self.shapes])
            self.batch_shapes = np.zeros((nb, 2), np.int64)
            for b in range(nb):
                m = hw[self.batch == b].max(0)
                self.batch_shapes[b] = np.ceil(m / stride + pad).astype(np.int64) * stride
        self.imgs = [None] * n
        if cache_images:
            def load(i):
                return load_resized(self.img_files[i], self.img_size, self.augment)

            with ThreadPool(2) as pool:
                for i, r in enumerate(pool.imap(load, range(n))):
                    self.imgs[i] = r

    def __len__(self):
        return self.n

    def set_epoch(self, epoch):
        """Epoch used by ``dataset[i]`` with a plain index (the loader passes its own epoch with each index)."""
        self.epoch = int(epoch)

    def set_img_size(self, img_size):
        """Build images of side ``img_size`` from now on: progressive resizing sets each epoch's size before the
        loader starts its workers, so mosaics and affine warps cost what that size costs. Square training sets
        only (rect batch shapes are fixed at ``__init__``); cached images are resized from their cached size."""
        if self.rect:
            raise ValueError(f"{self.path}: rect batches keep the shapes of img_size {self.img_size}")
        self.img_size = int(img_size)

    def item_rng(self, index, epoch=None):
        """The generator for item ``index`` in ``epoch``: seeded with ``(seed, epoch, index)``."""
        return np.random.default_rng([self.seed, self.epoch if epoch is None else int(epoch), int(index)])

    def load_image(self, i):
        """``(img BGR, (h0, w0), (h, w))`` with the long side at ``img_size`` (from RAM when cached)."""
        if self.imgs[i] is not None:
            img, hw0, _ = self.imgs[i]
            hw = resized_shape(*hw0, self.img_size)
            out = resize_to(img, hw, self.augment)
            return (img.copy() if out is img else out), hw0, hw
        return load_resized(self.img_files[i], self.img_size, self.augment)

    def __getitem__(self, index):
        """``(img CHW RGB uint8, labels (n, 6), path, shapes)``. An image that cannot be read any more (deleted or
        damaged since the scan) is skipped and counted like a corrupt one: the item is built from the next one."""
        epoch = None
        if isinstance(index, (tuple, list)):
            index, epoch = index
        index = int(index)
        for k in range(self.n):
            try:
                return self._item((index + k) % self.n, epoch)
            except FileNotFoundError as e:
                self.unreadable += 1
                _warn(f"{e}: skipped ({self.unreadable} unreadable since the scan, in this process)")
        raise UserError(f"{Path(self.img_files[index]).parent}: none of the {self.n} images can be read any more")

    def _item(self, index, epoch):
        rng = self.item_rng(index, epoch)
        hyp, s = self.hyp, self.img_size
        do_mosaic = self.mosaic and rng.random() < float(hyp.get("mosaic", 1.0))
        if do_mosaic:
            img, boxes = self._load_mosaic(index, rng)
            shapes = None
        else:
            img, (h0, w0), (h, w) = self.load_image(index)
            shape = tuple(self.batch_shapes[self.batch[index]]) if self.rect else (s, s)
            img, ratio, pad = letterbox(img, shape, scaleup=self.augment)
            shapes = ((h0, w0), ((ratio[0] * h / h0, ratio[1] * w / w0), pad))
            boxes = _norm_to_pix(self.labels[index], ratio[1] * w, ratio[0] * h, pad[0], pad[1])
            if self.augment:
                img, boxes = random_affine(img, boxes, rng, hyp["degrees"], hyp["translate"], hyp["scale"],
                                           hyp["shear"], hyp["perspective"])
        if self.augment:
            augment_hsv(img, rng, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"])
        H, W = img.shape[:2]
        labels = np.zeros((len(boxes), 6), np.float32)
        if len(boxes):
            b = boxes[:, 1:5].copy()
            b[:, [0, 2]] = b[:, [0, 2]].clip(0, W)
            b[:, [1, 3]] = b[:, [1, 3]].clip(0, H)
            labels[:, 1] = boxes[:, 0]
            labels[:, 2] = (b[:, 0] + b[:, 2]) / 2 / W
            labels[:, 3] = (b[:, 1] + b[:, 3]) / 2 / H
            labels[:, 4] = (b[:, 2] - b[:, 0]) / W
            labels[:, 5] = (b[:, 3] - b[:, 1]) / H
        if self.augment:
            flips = rng.random(2)
            if flips[0] < hyp["fliplr"]:
                img = img[:, ::-1]
                labels[:, 2] = 1 - labels[:, 2]
            if flips[1] < hyp["flipud"]:
                img = img[::-1]
                labels[:, 3] = 1 - labels[:, 3]
        img = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        return torch.from_numpy(img), torch.from_numpy(labels), self.img_files[index], shapes

    def _load_mosaic(self, index, rng):
        """Four images around a random centre on a ``2s x 2s`` canvas, then a random affine that crops to ``s x s``."""
        s = self.img_size
        xc, yc = (int(v) for v in rng.uniform(s / 2, 3 * s / 2, 2))
        indices = [index] + [int(i) for i in rng.integers(0, self.n, 3)]
        canvas = np.full((2 * s, 2 * s, 3), PAD_VALUE, np.uint8)
        all_boxes = []
        for k, i in enumerate(indices):
            img, _, (h, w) = self.load_image(i)
            if k == 0:  # top left
                x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
                x1b, y1b = w - (x2a - x1a), h - (y2a - y1a)
            elif k == 1:  # top right
                x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
                x1b, y1b = 0, h - (y2a - y1a)
            elif k == 2:  # bottom left
                x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * s, yc + h)
                x1b, y1b = w - (x2a - x1a), 0
            else:  # bottom right
                x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h)
                x1b, y1b = 0, 0
            canvas[y1a:y2a, x1a:x2a] = img[y1b:y1b + (y2a - y1a), x1b:x1b + (x2a - x1a)]
            all_boxes.append(_norm_to_pix(self.labels[i], w, h, x1a - x1b, y1a - y1b))
        boxes = np.concatenate(all_boxes, 0)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, 2 * s)
        boxes[:, [2, 4]] = boxes[:, [2, 4]].clip(0, 2 * s)
        hyp = self.hyp
        return random_affine(canvas, boxes, rng, hyp["degrees"], hyp["translate"], hyp["scale"], hyp["shear"],
                             hyp["perspective"], border=(-s // 2, -s // 2))

    @staticmethod
    def collate_fn(batch):
        """``[(img, labels, path, shapes), ...]`` -> ``(imgs (bs,3,H,W) uint8, targets (N,6), paths, shapes)``;
        column 0 of ``targets`` is the image's index in the batch."""
        imgs, labels, paths, shapes = zip(*batch)
        targets = []
        for i, lb in enumerate(labels):
            lb = lb.clone()
            lb[:, 0] = i
            targets.append(lb)
        return torch.stack(imgs, 0), torch.cat(targets, 0), paths, shapes


# ----------------------------------------------------------------------------------------------- loaders
class EpochSampler(DistributedSampler):
    """Epoch-seeded order, optionally sharded over DDP ranks; yields ``(index, epoch)`` pairs.

    The order of epoch ``e`` is a permutation drawn from ``(seed, e)`` (identity without ``shuffle``), the same
    on every rank; rank ``r`` of ``W`` takes positions ``r, r + W, ...`` of it (padded to a multiple of ``W``).
    With ``batch_size`` (rect batches, no shuffle) ranks take whole batches instead (``r, r + W, ...``, no
    padding), so every batch keeps its own shape. Call ``set_epoch(e)`` before each epoch; without it each new
    iteration advances the epoch by one.
    """

    def __init__(self, dataset, shuffle=True, seed=0, rank=-1, world_size=None, drop_last=False, batch_size=None):
        if rank == -1:
            world_size, rank = 1, 0
        elif world_size is None:
            world_size = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self._explicit = False
        self.whole_batches = int(batch_size) if batch_size and not shuffle else None
        if self.whole_batches:
            self.num_samples = len(self.indices())

    def set_epoch(self, epoch):
        super().set_epoch(int(epoch))
        self._explicit = True

    def indices(self, epoch=None):
        """Indices this rank visits in ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.dataset)
        if self.whole_batches:
            bs = self.whole_batches
            return [i for b in range(self.rank, math.ceil(n / bs), self.num_replicas)
                    for i in range(b * bs, min(n, (b + 1) * bs))]
        idx = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        idx = idx.tolist()
        if self.drop_last:
            idx = idx[:self.total_size]
        else:
            pad = self.total_size - len(idx)
            idx += (idx * math.ceil(max(pad, 1) / max(len(idx), 1)))[:pad]
        return idx[self.rank:self.total_size:self.num_replicas]

    def __len__(self):
        return self.num_samples

    def __iter__(self):
        if not self._explicit and getattr(self, "_iterated", False):
            self.epoch += 1
        self._iterated, self._explicit = True, False
        e = self.epoch
        return iter([(i, e) for i in self.indices(e)])


def worker_init_fn(worker_id):
    """Seed python/numpy/torch/OpenCV in each worker from torch's per-worker seed (augmentation itself is seeded
    per item, so this only matters for code outside the dataset)."""
    import random

    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)
    cv2.setRNGSeed(s % 2**31)


def create_dataloader(path, img_size, batch_size, stride=32, hyp=None, augment=False, rect=False, workers=2,
                      shuffle=False, rank=-1, cache=False, seed=0, nc=None, pad=0.0, verbose=None, prefix=""):
    """Build ``(loader, dataset)``.

    Training: ``augment=True, shuffle=True``: the order of each epoch is a seeded permutation. Evaluation:
    ``rect=True`` (shuffle is then off, batches follow the aspect-ratio order). With ``rank != -1`` each DDP
    rank reads its shard. The engine calls ``loader.sampler.set_epoch(epoch)`` before each epoch; that is all
    it takes for epoch ``e`` to give the same batches and augmentations in any run with the same seed.
    """
    if rect and shuffle:
        _warn("warning: rect batches cannot be shuffled; shuffle turned off")
        shuffle = False
    verbose = rank in (-1, 0) if verbose is None else verbose
    dataset = LoadImagesAndLabels(path, img_size, batch_size, augment=augment, hyp=hyp, rect=rect, cache_images=cache,
                                  stride=stride, pad=pad, nc=nc, seed=seed, verbose=verbose, prefix=prefix)
    batch_size = min(batch_size, len(dataset))
    workers = max(0, min(int(workers), os.cpu_count() or 1, batch_size if batch_size > 1 else 1))
    sampler = EpochSampler(dataset, shuffle=shuffle, seed=seed, rank=rank, batch_size=batch_size if rect else None)
    g = torch.Generator()
    g.manual_seed(int(seed))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=False,
                        collate_fn=LoadImagesAndLabels.collate_fn, worker_init_fn=worker_init_fn, generator=g,
                        persistent_workers=False,  # new workers each epoch see set_img_size (progressive)
                        prefetch_factor=4 if workers else None)
    return loader, dataset


# ----------------------------------------------------------------------------------------------- detect.py
class LoadImages:
    """Images and videos for ``detect.py``: a file, folder, glob or video.

    Iterating yields ``(path, img, img0, cap)``: ``img`` a ``(3, H, W)`` uint8 RGB array letterboxed to the
    smallest stride multiple around ``img_size``, ``img0`` the original BGR frame, ``cap`` the
    ``cv2.VideoCapture`` for videos (``None`` for images). ``self.mode`` is ``'image'`` or ``'video'``,
    ``self.frame`` the frame number within the current video.
    """

    def __init__(self, source, img_size=416, stride=32):
        source = str(source)
        p = Path(os.path.expanduser(source))
        if glob.has_magic(source):
            files = sorted(glob.glob(source, recursive=True))
        elif p.is_dir():
            files = sorted(str(f) for f in p.iterdir() if f.is_file())
        elif p.is_file():
            files = [str(p)]
        else:
            raise UserError(f"{source}: no such file or folder")
        ext = [f.rsplit(".", 1)[-1].lower() for f in files]
        self.images = [f for f, e in zip(files, ext) if e in IMG_FORMATS]
        self.videos = [f for f, e in zip(files, ext) if e in VID_FORMATS]
        self.files = self.images + self.videos
        self.nf = len(self.files)
        self.video_flag = [False] * len(self.images) + [True] * len(self.videos)
        self.img_size, self.stride = img_size, stride
        self.mode, self.cap, self.frame, self.nframes = "image", None, 0, 0
        self.skipped = 0  # unreadable images and videos that cannot be opened
        if not self.nf:
            raise UserError(f"{source}: no images or videos found "
                            f"(images: {', '.join(IMG_FORMATS)}; videos: {', '.join(VID_FORMATS)})")

    def __len__(self):
        return self.nf

    def __iter__(self):
        self.count = 0
        return self

    def _new_video(self, path):
        """Open ``path``; False (the video skipped and counted, like an unreadable image) if it cannot be."""
        self.frame = 0
        self.cap = cv2.VideoCapture(path)
        if not self.cap.isOpened():
            self.cap = None
            self.skipped += 1
            _warn(f"{path}: video cannot be opened, skipped")
            return False
        self.nframes = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
        return True

    def __next__(self):
        while True:
            if self.count >= self.nf:
                if self.cap is not None:
                    self.cap.release()
                    self.cap = None
                raise StopIteration
            path = self.files[self.count]
            if self.video_flag[self.count]:
                self.mode = "video"
                if self.cap is None and not self._new_video(path):
                    self.count += 1
                    continue
                ok, img0 = self.cap.read()
                if not ok:
                    self.cap.release()
                    self.cap = None
                    self.count += 1
                    continue
                self.frame += 1
                cap = self.cap
            else:
                self.mode = "image"
                self.count += 1
                img0 = cv2.imread(path)
                if img0 is None:
                    self.skipped += 1
                    _warn(f"{path}: corrupt or unreadable image skipped")
                    continue
                cap = None
            img = letterbox(img0, self.img_size, auto=True, stride=self.stride)[0]
            img = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))
            return path, img, img0, cap

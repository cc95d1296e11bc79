"""The synthetic shapes set: deterministic, learnable in minutes on a CPU, not trivial.

Each image is a pure function of ``(seed, split, index)``: a textured, noisy background with unlabelled clutter
(thin lines), then 1-8 filled shapes of 6 classes with random colours (contrasting with the background), sizes
from about 4% to 50% of the image side (log-uniform, so small objects are common), rotations and limited
overlaps (each object keeps at least 60% of its pixels visible). A label is the tight box around the object's
*visible* pixels, computed from an id map, so labels are exact. Images are JPEG at quality 90 (same seed, same
bytes with the same OpenCV build), width and height each between 75% and 100% of ``img_size``.

Layout under ``root``: ``images/{train,val}/NNNNNN.jpg``, ``labels/{train,val}/NNNNNN.txt``, ``shapes.names``,
``shapes.data`` (relative paths), ``.complete.json`` (the parameters; written last).

    make_shapes(root, n_train=16, n_val=8, img_size=128, seed=0) -> Path of the .data file
    ensure(root, n_train=1000, n_val=200, img_size=320, seed=0) -> root  (no-op when already complete)

``python -m utils.shapes OUT [--n-train N --n-val N --img-size S --seed S]`` writes a set from the command line.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

CLASSES = ("circle", "square", "triangle", "star", "cross", "hexagon")
VERSION = 1
SPLITS = {"train": 0, "val": 1}
JPEG_QUALITY = 90
MIN_VISIBLE = 0.6  # each object keeps at least this fraction of its pixels visible
SHIFT = 4  # fixed-point bits for sub-pixel polygon vertices


def shape_polygon(cls, cx, cy, r, angle):
    """Vertices ``(k, 2)`` of class ``cls`` (index into ``CLASSES``), circumradius ``r``, rotated by ``angle`` (rad)."""
    name = CLASSES[cls]
    if name == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif name in ("square", "triangle", "hexagon"):
        k = {"square": 4, "triangle": 3, "hexagon": 6}[name]
        t = np.arange(k) * 2 * np.pi / k + np.pi / k
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif name == "star":
        t = np.arange(10) * np.pi / 5 - np.pi / 2
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        pts = np.stack([np.cos(t) * rad, np.sin(t) * rad], 1)
    else:  # cross: a plus sign, arms 0.6 of its extent wide
        a = 0.3
        pts = np.array([[a, 1], [a, a], [1, a], [1, -a], [a, -a], [a, -1], [-a, -1], [-a, -a], [-1, -a], [-1, a],
                        [-a, a], [-a, 1]]) / np.sqrt(1 + a * a)
    c, s = np.cos(angle), np.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]]) * r
    return pts + [cx, cy]


def _fill(mask, pts):
    cv2.fillPoly(mask, [np.round(pts * (1 << SHIFT)).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=SHIFT)
    return mask


def _background(rng, h, w):
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = (np.cos(t) * xx / w + np.sin(t) * yy / h)
    g = (g - g.min()) / max(g.max() - g.min(), 1e-6)
    img = c0 * (1 - g[..., None]) + c1 * g[..., None]
    low = rng.normal(0, 1, (h // 24 + 2, w // 24 + 2, 3)).astype(np.float32)
    img += cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC) * rng.uniform(8, 30)
    kind = rng.integers(0, 3)
    if kind == 1:  # stripes
        f, a = rng.uniform(0.05, 0.4), rng.uniform(0, np.pi)
        img += (np.sin(f * (np.cos(a) * xx + np.sin(a) * yy)) * rng.uniform(5, 18))[..., None]
    elif kind == 2:  # grain
        blur = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), rng.uniform(1, 2.5))
        img += (blur * rng.uniform(15, 40))[..., None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(0, 6)):  # unlabelled clutter
        p = rng.integers(0, [w, h, w, h])
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), col, int(rng.integers(1, 3)), cv2.LINE_AA)
    return img


def render_image(seed, split, index, img_size=320):
    """One image -> ``(img BGR uint8, labels (n, 5) float32 cls x y w h normalised, idmap int32, objects)``.

    ``idmap`` holds, per pixel, ``k + 1`` for the visible object ``k`` (0 = background); ``labels[k]`` is the
    tight box around ``idmap == k + 1``; ``objects`` the ``(cls, cx, cy, r, angle)`` of each object.
    """
    rng = np.random.default_rng([int(seed), SPLITS.get(split, split) if isinstance(split, str) else int(split),
                                 int(index), VERSION])
    w, h = (int(v) for v in rng.integers(int(0.75 * img_size), img_size + 1, 2))
    img = _background(rng, h, w)
    idmap = np.zeros((h, w), np.int32)
    smin, smax = max(8.0, 0.04 * img_size), 0.5 * min(w, h)
    objects, areas = [], []
    for _ in range(int(rng.integers(1, 9))):
        for _try in range(20):
            cls = int(rng.integers(0, len(CLASSES)))
            size = float(np.exp(rng.uniform(np.log(smin), np.log(smax))))  # extent of the shape, pixels
            r = size / 2
            angle = float(rng.uniform(0, 2 * np.pi))
            cx, cy = rng.uniform(r + 1, w - r - 1), rng.uniform(r + 1, h - r - 1)
            mask = _fill(np.zeros((h, w), np.uint8), shape_polygon(cls, cx, cy, r, angle)).astype(bool)
            ok = True
            for k in range(len(objects)):  # every earlier object must stay mostly visible
                vis = (idmap == k + 1) & ~mask
                if vis.sum() < MIN_VISIBLE * areas[k]:
                    ok = False
                    break
            if ok and mask.sum() >= 12:
                break
        else:
            continue
        ys, xs = np.nonzero(mask)
        x1, x2, y1, y2 = max(xs.min() - 2, 0), min(xs.max() + 3, w), max(ys.min() - 2, 0), min(ys.max() + 3, h)
        bg = img[y1:y2, x1:x2].reshape(-1, 3).astype(np.float32).mean(0)
        for _c in range(10):  # a colour that stands out from the local background
            col = rng.uniform(0, 255, 3)
            if np.abs(col - bg).sum() > 120:
                break
        shade = rng.normal(0, rng.uniform(2, 10), (y2 - y1, x2 - x1, 3))
        patch = np.clip(col + shade, 0, 255).astype(np.uint8)
        sub = mask[y1:y2, x1:x2]
        img[y1:y2, x1:x2][sub] = patch[sub]
        idmap[mask] = len(objects) + 1
        objects.append((cls, float(cx), float(cy), float(r), float(angle)))
        areas.append(int(mask.sum()))
    noise = rng.normal(0, rng.uniform(2, 8), img.shape)
    img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    labels = []
    for k, (cls, *_rest) in enumerate(objects):
        ys, xs = np.nonzero(idmap == k + 1)
        x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        labels.append([cls, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h])
    return img, np.array(labels, np.float32).reshape(-1, 5), idmap, objects


def _write_one(job):
    out, seed, split, index, img_size = job
    img, labels, _, _ = render_image(seed, split, index, img_size)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok
    name = f"{index:06d}"
    (Path(out) / "images" / split / f"{name}.jpg").write_bytes(buf.tobytes())
    text = "".join(f"{int(c)} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}\n" for c, x, y, bw, bh in labels)
    (Path(out) / "labels" / split / f"{name}.txt").write_text(text)


def _generate(out, n_train, n_val, img_size, seed, workers=2):
    out = Path(out)
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), seed, "train", i, img_size) for i in range(n_train)]
    jobs += [(str(out), seed, "val", i, img_size) for i in range(n_val)]
    workers = max(1, min(workers, os.cpu_count() or 1))
    if workers > 1 and len(jobs) >= 64:
        with get_context("spawn" if sys.platform == "win32" else "fork").Pool(workers) as pool:
            pool.map(_write_one, jobs, chunksize=16)
    else:
        for j in jobs:
            _write_one(j)
    (out / "shapes.names").write_text("".join(f"{c}\n" for c in CLASSES))
    (out / "shapes.data").write_text(f"classes={len(CLASSES)}\ntrain=images/train\nvalid=images/val\n"
                                     f"names=shapes.names\n")


class _Lock:
    """An exclusive advisory lock on a file (``fcntl.flock``; a no-op where fcntl is missing)."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a+")
        try:
            import fcntl

            fcntl.flock(self.f, fcntl.LOCK_EX)
        except ImportError:
            pass
        return self

    def __exit__(self, *exc):
        try:
            import fcntl

            fcntl.flock(self.f, fcntl.LOCK_UN)
        except ImportError:
            pass
        self.f.close()


def _lock_path(root):
    """The lock file for ``root``: in the temp folder, so that nothing but the set appears beside it."""
    key = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "yolo-compression-locks" / f"shapes-{key}.lock"


def _params(n_train, n_val, img_size, seed):
    return dict(version=VERSION, n_train=int(n_train), n_val=int(n_val), img_size=int(img_size), seed=int(seed))


def _complete(root, params):
    try:
        return json.loads((Path(root) / ".complete.json").read_text()) == params
    except (OSError, ValueError):
        return False


def ensure(root, n_train=1000, n_val=200, img_size=320, seed=0, workers=2, verbose=True):
    """Make sure ``root`` holds the shapes set for these parameters; generate it if not. Returns ``root``.

    Safe with concurrent callers: a lock file (in the temp folder, keyed by ``root``) serialises them, the set is written to a temporary
    folder and renamed into place, and ``.complete.json`` marks a finished set. A set made with other parameters
    is replaced; an empty folder is filled; any other folder at ``root`` is an error (never deleted).
    """
    from utils.errors import UserError

    root = Path(root)
    params = _params(n_train, n_val, img_size, seed)
    if _complete(root, params):
        return root
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=root.parent).close()
    except OSError as e:
        raise UserError(f"{root}: cannot write the shapes set here ({e.strerror}); "
                        f"generate it elsewhere with: python -m utils.shapes OUT_FOLDER") from None
    with _Lock(_lock_path(root)):
        if _complete(root, params):
            return root
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # an empty folder (e.g. a fresh temporary one) is ours to fill
        if root.exists():
            if not (root / ".complete.json").is_file():
                raise UserError(f"{root}: exists but is not a generated shapes set; move it away to generate one")
            shutil.rmtree(root)
        if verbose:
            print(f"generating the shapes set ({n_train} train + {n_val} val images, seed {seed}) in {root} ...",
                  flush=True)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            _generate(tmp, n_train, n_val, img_size, seed, workers)
            (tmp / ".complete.json").write_text(json.dumps(params))
            os.rename(tmp, root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return root


def make_shapes(root, n_train=16, n_val=8, img_size=128, seed=0):
    """A small shapes set under ``root`` (for tests and examples) -> path of its ``shapes.data``."""
    root = ensure(root, n_train, n_val, img_size, seed, workers=1, verbose=False)
    return root / "shapes.data"


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write the synthetic shapes set.")
    ap.add_argument("out", help="output folder (must not exist, or be a shapes set)")
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--img-size", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    ensure(a.out, a.n_train, a.n_val, a.img_size, a.seed)
    print(Path(a.out) / "shapes.data")


if __name__ == "__main__":
    from utils.errors import cli

    cli(main)

#!/usr/bin/env python3
"""ExDark (Exclusively Dark) bbGt annotations -> YOLO labels and a .data file.

    python data/exdark2yolo.py --images ExDark --annotations ExDark_Annno --out data/exdark
        [--split-file imageclasslist.txt | --val-fraction 0.2 --seed 0] [--copy]

ExDark keeps images in ``<images>/<Class>/<name>`` and one annotation per image in
``<annotations>/<Class>/<name>.txt`` (``bbGt version=3``): a header line ``% bbGt version=3``, then one object per
line ``ClassName left top width height`` in pixels (more fields may follow; they are ignored). The 12 classes
are numbered in the order of ``EXDARK_CLASSES``.

Splits: with ``--split-file`` (ExDark's ``imageclasslist.txt``: ``name class light in/out split`` with split
1 = train, 2 = val, 3 = test) the official split is used; otherwise a seeded random ``--val-fraction`` of the
images goes to val. Writes ``<out>/images/<split>/<name>`` (links, or copies with ``--copy``),
``<out>/labels/<split>/<stem>.txt``, ``<out>/exdark.names``, ``<out>/exdark.data``.
"""
import argparse
import os
import random
import shutil
import sys
from pathlib import Path

EXDARK_CLASSES = ("Bicycle", "Boat", "Bottle", "Bus", "Car", "Cat", "Chair", "Cup", "Dog", "Motorbike", "People",
                  "Table")
IMG_EXT = (".jpg", ".jpeg", ".png", ".bmp")
SPLIT_CODES = {"1": "train", "2": "val", "3": "test"}


def place(src, dst, copy=False):
    """Put image ``src`` at ``dst`` as a symbolic link (or a copy), replacing what was there."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if copy:
        shutil.copy2(src, dst)
    else:
        os.symlink(os.path.abspath(src), dst)


def parse_bbgt(path, width, height):
    """One bbGt file -> ``(lines, n_unknown)``: YOLO label lines (boxes clipped to the image)."""
    lines, unknown = [], 0
    lower = {c.lower(): i for i, c in enumerate(EXDARK_CLASSES)}
    for n, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        f = line.split()
        if not f or f[0].startswith("%"):
            continue
        if len(f) < 5:
            print(f"{path}:{n}: expected 'Class left top width height', line skipped", file=sys.stderr)
            continue
        c = lower.get(f[0].lower())
        if c is None:
            unknown += 1
            print(f"{path}:{n}: unknown class {f[0]!r} skipped", file=sys.stderr)
            continue
        try:
            left, top, w, h = (float(v) for v in f[1:5])
        except ValueError:
            print(f"{path}:{n}: non-numeric box {' '.join(f[1:5])!r}, line skipped", file=sys.stderr)
            continue
        x1, y1, x2, y2 = max(left, 0.0), max(top, 0.0), min(left + w, width), min(top + h, height)
        if x2 <= x1 or y2 <= y1:
            print(f"{path}:{n}: empty box skipped", file=sys.stderr)
            continue
        lines.append(f"{c} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                     f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
    return lines, unknown


def _find_annotation(ann_root, rel):
    """``<ann_root>/<rel>.txt``, matching the file name case-insensitively (ExDark mixes .jpg/.JPG)."""
    p = Path(ann_root) / (str(rel) + ".txt")
    if p.is_file():
        return p
    folder = p.parent
    if folder.is_dir():
        want = p.name.lower()
        for q in folder.iterdir():
            if q.name.lower() == want:
                return q
    return None


def convert(images, annotations, out, split_file=None, val_fraction=0.2, seed=0, copy=False):
    """Convert the whole set; returns the path of ``<out>/exdark.data``."""
    from PIL import Image

    images, out = Path(images), Path(out)
    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMG_EXT)
    if split_file:
        split_of = {}
        for line in Path(split_file).read_text().splitlines():
            f = line.split()
            if len(f) >= 5 and f[4] in SPLIT_CODES:
                split_of[f[0].lower()] = SPLIT_CODES[f[4]]
    else:
        order = list(range(len(files)))
        random.Random(seed).shuffle(order)
        n_val = int(round(val_fraction * len(files)))
        split_of = {files[i].name.lower(): ("val" if k < n_val else "train") for k, i in enumerate(order)}
    stats = dict(images=0, boxes=0, unknown=0, no_annotation=0, unlisted=0)
    splits = set()
    for img in files:
        split = split_of.get(img.name.lower())
        if split is None:
            stats["unlisted"] += 1
            continue
        ann = _find_annotation(annotations, img.relative_to(images))
        with Image.open(img) as im:
            width, height = im.size
        if ann is None:
            stats["no_annotation"] += 1
            lines = []
        else:
            lines, unk = parse_bbgt(ann, width, height)
            stats["unknown"] += unk
        place(img, out / "images" / split / img.name, copy)
        lab = out / "labels" / split / (img.stem + ".txt")
        lab.parent.mkdir(parents=True, exist_ok=True)
        lab.write_text("".join(line + "\n" for line in lines))
        stats["images"] += 1
        stats["boxes"] += len(lines)
        splits.add(split)
    (out / "exdark.names").write_text("".join(c + "\n" for c in EXDARK_CLASSES))
    valid = "images/val" if "val" in splits else "images/test"
    data = out / "exdark.data"
    data.write_text(f"classes={len(EXDARK_CLASSES)}\ntrain=images/train\nvalid={valid}\nnames=exdark.names\n")
    print(f"{stats['images']} images, {stats['boxes']} boxes written; {stats['no_annotation']} images without "
          f"annotation file (background), {stats['unknown']} objects of unknown classes, {stats['unlisted']} images "
          f"not in the split file skipped -> {data}")
    return data


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True, help="ExDark image root (one folder per class)")
    ap.add_argument("--annotations", required=True, help="ExDark_Annno root (same layout, <image>.txt)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--split-file", help="imageclasslist.txt for the official train/val/test split")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--copy", action="store_true", help="copy images instead of linking them")
    a = ap.parse_args(argv)
    convert(a.images, a.annotations, a.out, a.split_file, a.val_fraction, a.seed, a.copy)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""COCO instances JSON -> YOLO labels (80 contiguous classes) and a .data file.

    python data/coco2yolo.py --annotations annotations/instances_train2017.json --images train2017 \
        --out data/coco --split train2017 [--copy] [--categories-from-json]

Writes ``<out>/images/<split>/<file_name>`` (links, or copies with ``--copy``), ``<out>/labels/<split>/<stem>.txt``
(images without annotations get no label file: background), ``<out>/coco.names`` and ``<out>/coco.data`` (train =
``images/train2017``, valid = ``images/val2017`` where converted, otherwise the train split).

Category ids: COCO numbers its 80 classes 1..90 with gaps; they map to 0..79 in the standard order
(``COCO80_IDS``). ``--categories-from-json`` instead numbers the JSON's own categories by ascending id (for
other COCO-format sets). Crowd annotations (``iscrowd=1``) are skipped, as are boxes without area. Boxes are
``[x, y, w, h]`` from the top-left corner in pixels, clipped to the image.
"""
import argparse
import json
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path

COCO80_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
              33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
              60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90)
COCO80_NAMES = ("person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
                "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
                "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
                "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
                "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
                "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
                "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
                "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
                "scissors", "teddy bear", "hair drier", "toothbrush")
COCO91_TO_80 = {cid: i for i, cid in enumerate(COCO80_IDS)}


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


def read_json(path):
    """The parsed JSON file, or a one-line error naming it (and the line where it stops being JSON)."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except OSError as e:
        raise SystemExit(f"error: {path}: {e.strerror or e}") from None


def well_formed(entry, path, kind, keys, bbox=False):
    """Whether an image or annotation entry has ``keys`` (and a bbox of 4 numbers); if not, says so on stderr."""
    ok = isinstance(entry, dict) and keys <= set(entry)
    if ok and bbox:
        b = entry["bbox"]
        ok = isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)
    if not ok:
        what = entry.get("id") if isinstance(entry, dict) else entry
        print(f"{path}: {kind} {what!r}: needs {', '.join(sorted(keys))}{' (bbox: 4 numbers)' if bbox else ''}; "
              f"skipped", file=sys.stderr)
    return ok


def convert(annotations, images, out, split, copy=False, categories_from_json=False):
    """Convert one split; returns the path of ``<out>/coco.data``."""
    out = Path(out)
    d = read_json(annotations)
    if categories_from_json:
        cats = sorted(d.get("categories", []), key=lambda c: c["id"])
        mapping = {c["id"]: i for i, c in enumerate(cats)}
        names = [c["name"] for c in cats]
    else:
        mapping, names = COCO91_TO_80, list(COCO80_NAMES)
    per_image = defaultdict(list)
    stats = dict(images=0, boxes=0, crowd=0, empty=0, unknown=0, malformed=0, missing=0)
    for a in d.get("annotations", []):
        if not well_formed(a, annotations, "annotation", {"image_id", "category_id", "bbox"}, bbox=True):
            stats["malformed"] += 1
            continue
        if a.get("iscrowd", 0):
            stats["crowd"] += 1
            continue
        if a["category_id"] not in mapping:
            stats["unknown"] += 1
            print(f"{annotations}: annotation {a.get('id')}: unknown category_id {a['category_id']} skipped",
                  file=sys.stderr)
            continue
        per_image[a["image_id"]].append(a)
    for im in d.get("images", []):
        if not well_formed(im, annotations, "image", {"id", "file_name", "width", "height"}):
            stats["malformed"] += 1
            continue
        src = Path(images) / im["file_name"]
        if not src.is_file():
            stats["missing"] += 1
            print(f"{src}: image not found, skipped", file=sys.stderr)
            continue
        W, H = float(im["width"]), float(im["height"])
        lines = []
        for a in per_image.get(im["id"], []):
            x, y, w, h = (float(v) for v in a["bbox"])
            x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, W), min(y + h, H)
            if x2 <= x1 or y2 <= y1:
                stats["empty"] += 1
                continue
            lines.append(f"{mapping[a['category_id']]} {(x1 + x2) / 2 / W:.6f} {(y1 + y2) / 2 / H:.6f} "
                         f"{(x2 - x1) / W:.6f} {(y2 - y1) / H:.6f}")
        place(src, out / "images" / split / im["file_name"], copy)
        lab = out / "labels" / split / (Path(im["file_name"]).stem + ".txt")
        lab.parent.mkdir(parents=True, exist_ok=True)
        if lines:
            lab.write_text("".join(line + "\n" for line in lines))
        elif lab.exists():
            lab.unlink()
        stats["images"] += 1
        stats["boxes"] += len(lines)
    (out / "coco.names").write_text("".join(n + "\n" for n in names))
    train = "images/train2017" if (out / "images" / "train2017").is_dir() else f"images/{split}"
    valid = "images/val2017" if (out / "images" / "val2017").is_dir() else train
    data = out / "coco.data"
    data.write_text(f"classes={len(names)}\ntrain={train}\nvalid={valid}\nnames=coco.names\n")
    print(f"{split}: {stats['images']} images, {stats['boxes']} boxes written; {stats['crowd']} crowd annotations, "
          f"{stats['empty']} empty boxes, {stats['unknown']} unknown categories, {stats['malformed']} malformed entries, "
          f"{stats['missing']} missing images skipped -> {data}")
    return data


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--annotations", required=True, help="instances_*.json")
    ap.add_argument("--images", required=True, help="folder of the split's images")
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", required=True, help="e.g. train2017 or val2017")
    ap.add_argument("--copy", action="store_true", help="copy images instead of linking them")
    ap.add_argument("--categories-from-json", action="store_true",
                    help="number the JSON's categories by ascending id instead of the COCO-80 mapping")
    a = ap.parse_args(argv)
    convert(a.annotations, a.images, a.out, a.split, a.copy, a.categories_from_json)


if __name__ == "__main__":
    main()

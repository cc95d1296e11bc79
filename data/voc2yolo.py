#!/usr/bin/env python3
"""Pascal VOC XML annotations -> YOLO labels and a .data file.

    python data/voc2yolo.py --voc-root VOCdevkit --out data/voc
        [--train VOC2007/trainval,VOC2012/train] [--valid VOC2012/val] [--test VOC2007/test]
        [--difficult {ignore,keep,drop}] [--copy]

Splits: the model is selected (best.pt, the per-epoch mAP) on ``valid``, held out of training (by default VOC2012
val, 5,823 images), and ``test`` (VOC2007 test, 4,952 images) is scored once at the end with ``test.py --split
test``: selecting on VOC2007 test, as 07+12 recipes often do, tunes on the test set. ``--test ''`` leaves it out.

Reads ``<voc-root>/<VOCyear>/ImageSets/Main/<set>.txt``, ``Annotations/<id>.xml`` and ``JPEGImages/<id>.jpg``;
writes ``<out>/images/{train,val,test}/<VOCyear>_<id>.jpg`` (symbolic links, or copies with ``--copy``),
``<out>/labels/{train,val,test}/<VOCyear>_<id>.txt``, ``<out>/voc.names`` and ``<out>/voc.data``.

Boxes: VOC corners are 1-based inclusive pixel indices, so a box covers ``[xmin - 1, xmax]`` in continuous
pixel coordinates: ``x_center = (xmin - 1 + xmax) / 2 / width``, ``w = (xmax - xmin + 1) / width``.

``difficult`` objects: the VOC evaluation ignores them (neither a hit nor a miss). By default (``--difficult
ignore``) they go to ``labels/<split>/<stem>.ignore.txt`` beside the labels, in the same YOLO format: training
never reads them, and the evaluation (per epoch and ``test.py``) scores them as pycocotools crowd regions, where
a detection is neither a hit nor a false positive, as the devkit does. ``keep`` writes them as ordinary
objects; ``drop`` leaves them out (a detection of one then counts as a false positive).
Objects of unknown classes are reported and skipped.
"""
import argparse
import os
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


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


def _image_size(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def convert_annotation(xml_path, classes=VOC_CLASSES, keep_difficult=False, image_path=None):
    """One VOC XML file -> ``(lines, stats, difficult)``: YOLO label lines, counts ``objects, difficult, unknown``
    and the difficult objects' lines (in ``lines`` too with ``keep_difficult``). A file that cannot be read, is not
    XML or has a box without its four numeric corners raises ``ValueError('<file>[:line]: why')``."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{xml_path}:{e.position[0]}: not valid XML ({e})") from None
    except OSError as e:
        raise ValueError(f"{xml_path}: {e.strerror or e}") from None
    size = root.find("size")
    w = int(float(size.findtext("width", "0"))) if size is not None else 0
    h = int(float(size.findtext("height", "0"))) if size is not None else 0
    if (w <= 0 or h <= 0) and image_path is not None and Path(image_path).is_file():
        w, h = _image_size(image_path)
    if w <= 0 or h <= 0:
        raise ValueError(f"{xml_path}: no image size in <size> and no image to read it from")
    lines, stats, hard = [], dict(objects=0, difficult=0, unknown=0), []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in classes:
            stats["unknown"] += 1
            print(f"{xml_path}: unknown class {name!r} skipped", file=sys.stderr)
            continue
        difficult = int(float(obj.findtext("difficult", "0") or 0)) == 1
        x1, y1, x2, y2 = box_corners(obj, xml_path, name)
        x1, y1 = max(x1 - 1, 0.0), max(y1 - 1, 0.0)
        x2, y2 = min(x2, w), min(y2, h)
        if x2 <= x1 or y2 <= y1:
            print(f"{xml_path}: empty box of {name!r} skipped", file=sys.stderr)
            continue
        line = (f"{classes.index(name)} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
        if difficult:
            stats["difficult"] += 1
            hard.append(line)
            if not keep_difficult:
                continue
        lines.append(line)
        stats["objects"] += 1
    return lines, stats, hard


def box_corners(obj, xml_path, name):
    """``(xmin, ymin, xmax, ymax)`` of an ``<object>``'s ``<bndbox>``, or a ``ValueError`` naming what is missing."""
    bb = obj.find("bndbox")
    try:
        return tuple(float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"{xml_path}: object {name!r} has no <bndbox> with numeric xmin, ymin, xmax, ymax") from None


def convert(voc_root, out, train=("VOC2007/trainval", "VOC2012/train"), valid=("VOC2012/val",),
            difficult="ignore", copy=False, classes=VOC_CLASSES, test=("VOC2007/test",)):
    """Convert the listed ``<VOCyear>/<set>`` image sets; returns the path of the written ``voc.data``."""
    voc_root, out = Path(voc_root), Path(out)
    total = dict(images=0, objects=0, difficult=0, unknown=0, skipped=0, missing=0)
    for split, sets in (("train", train), ("val", valid), ("test", test)):
        for s in sets:
            year, name = s.split("/")
            base = voc_root / year
            ids_file = base / "ImageSets" / "Main" / f"{name}.txt"
            if not ids_file.is_file():
                raise SystemExit(f"error: {ids_file}: image set not found")
            for img_id in ids_file.read_text().split():
                img = base / "JPEGImages" / f"{img_id}.jpg"
                if not img.is_file():  # a link to nothing would be counted as a corrupt image at every epoch
                    print(f"{img}: image not found, skipped", file=sys.stderr)
                    total["missing"] += 1
                    continue
                try:
                    lines, st, hard = convert_annotation(base / "Annotations" / f"{img_id}.xml", classes,
                                                         difficult == "keep", img)
                except ValueError as e:  # an image with unreadable labels would train as all background
                    print(f"{e}; image skipped", file=sys.stderr)
                    total["skipped"] += 1
                    continue
                stem = f"{year}_{img_id}"
                place(img, out / "images" / split / f"{stem}.jpg", copy)
                lab = out / "labels" / split / f"{stem}.txt"
                lab.parent.mkdir(parents=True, exist_ok=True)
                lab.write_text("".join(line + "\n" for line in lines))
                ignore = lab.with_name(f"{stem}.ignore.txt")
                if difficult == "ignore" and hard:
                    ignore.write_text("".join(line + "\n" for line in hard))
                elif ignore.exists():
                    ignore.unlink()
                total["images"] += 1
                for k in st:
                    total[k] += st[k]
    if not total["images"]:
        raise SystemExit(f"error: {voc_root}: no image converted ({total['skipped']} skipped for unreadable "
                         f"annotations, {total['missing']} missing)")
    (out / "voc.names").write_text("".join(c + "\n" for c in classes))
    data = out / "voc.data"
    data.write_text(f"classes={len(classes)}\ntrain=images/train\nvalid=images/val\n"
                    + ("test=images/test\n" if test else "") + "names=voc.names\n")
    kept = {"ignore": "written as ignore regions (labels/*/*.ignore.txt)", "keep": "kept as objects",
            "drop": "dropped"}[difficult]
    print(f"{total['images']} images, {total['objects']} objects written; {total['difficult']} difficult objects "
          f"{kept}; {total['unknown']} objects of unknown classes skipped; {total['skipped']} images skipped for "
          f"unreadable annotations; {total['missing']} images missing -> {data}")
    return data


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--voc-root", required=True, help="folder holding VOC2007/, VOC2012/ (e.g. VOCdevkit)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--train", default="VOC2007/trainval,VOC2012/train", help="comma-separated YEAR/SET lists")
    ap.add_argument("--valid", default="VOC2012/val", help="held out of training: model selection")
    ap.add_argument("--test", default="VOC2007/test", help="scored once at the end (test.py --split test)")
    ap.add_argument("--difficult", choices=("ignore", "keep", "drop"), default="ignore",
                    help="difficult objects: ignore regions of the evaluation (the devkit's rule), ordinary objects, "
                         "or left out")
    ap.add_argument("--keep-difficult", dest="difficult", action="store_const", const="keep",
                    help="the same as --difficult keep")
    ap.add_argument("--copy", action="store_true", help="copy images instead of linking them")
    a = ap.parse_args(argv)
    split = lambda s: tuple(x for x in s.split(",") if x)  # noqa: E731
    convert(a.voc_root, a.out, split(a.train), split(a.valid), a.difficult, a.copy, test=split(a.test))


if __name__ == "__main__":
    main()

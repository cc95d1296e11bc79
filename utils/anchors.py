"""Anchors fitted to a dataset: how well a cfg's anchors fit its boxes, k-means anchors, and rewriting the cfg.

YOLOv3 (Redmon & Farhadi 2018, section 2.1) chooses its anchors by k-means over the training boxes' widths and
heights. A cfg's anchors are in input pixels, so anchors chosen for one dataset and image size (the VOC anchors
of YOLO Nano and the Mobile cfgs are for 416-pixel VOC images) can fit another poorly: every target may still be
matched (the loss matches a target to each anchor whose width and height ratios are within ``anchor_t``, 4 by
default), yet through anchors 3x its size, so the regression starts far off and whole heads stay idle.

- ``anchor_fit``: the figures ``python -m utils.anchors`` and ``--autoanchor`` report: best possible recall (the
  share of targets that at least one anchor can be matched to under ``anchor_t``), anchors matched per target,
  and the mean best ratio (for each target ``min over its dims of min(r, 1/r)`` with its closest anchor; 1 is a
  perfect fit).
- ``kmeans_anchors``: k-means (``scipy.cluster.vq.kmeans2``, k-means++ seeding) on ``(log w, log h)``: the loss
  matches by ratios, so distances between log sizes are the right ones (plain k-means on pixels lets big boxes
  dominate).
- ``set_anchors``: the same anchors written into every ``[yolo]`` of the cfg text, smallest anchors to the
  indexes the finest-stride head uses (the Darknet convention), so the model's checkpoint carries them (toolkit
  checkpoints rebuild the network from their cfg text).

    python -m utils.anchors --data data/shapes.data --cfg cfg/yolo-nano.cfg --img-size 256 --out nano-shapes.cfg
    python train.py --cfg cfg/yolo-nano.cfg --autoanchor     # the same, inside the run (fresh networks only)
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models import Darknet, read_sections, yolo_mask  # noqa: E402
from utils.datasets import IMG_FORMATS, img2label_paths, list_image_files, parse_data_cfg, scan_labels  # noqa: E402
from utils.errors import UserError, cli  # noqa: E402

MIN_BOX_PX = 2.0  # boxes smaller than this (in training pixels) are left out of the fit


def label_wh(train_path, img_size, nc=None):
    """Widths and heights ``(n, 2)`` in pixels of every training box at ``img_size`` (long side resized to it)."""
    imgs = list_image_files(train_path)
    if not imgs:
        raise UserError(f"{train_path}: no images found (formats: {', '.join(IMG_FORMATS)})")
    res = scan_labels(imgs, img2label_paths(imgs), nc, source=str(train_path), verbose=False)
    wh = [lab[:, 3:5] * shape * (img_size / max(shape))
          for shape, lab in zip(res["shapes"].astype(np.float64), res["labels"]) if len(lab)]
    if not wh:
        raise UserError(f"{train_path}: no labelled boxes to fit anchors to")
    wh = np.concatenate(wh)
    return wh[(wh >= MIN_BOX_PX).all(1)]


def anchor_fit(wh, anchors, thr=4.0):
    """``dict(bpr, per_target, best_ratio)`` of ``anchors`` ``(k, 2)`` for boxes ``wh`` ``(n, 2)`` (module doc)."""
    r = np.asarray(wh, np.float64)[:, None] / np.asarray(anchors, np.float64)[None]  # (n, k, 2)
    worst = np.maximum(r, 1 / r).max(2)  # (n, k): the loss's matching ratio of each target-anchor pair
    best = worst.min(1)
    return dict(bpr=float((best < thr).mean()), per_target=float((worst < thr).sum(1).mean()),
                best_ratio=float((1 / best).mean()))


def kmeans_anchors(wh, k, seed=0, iters=100):
    """``k`` anchors ``(k, 2)`` by k-means on ``log(wh)``, sorted by area (smallest first)."""
    from scipy.cluster.vq import kmeans2

    wh = np.asarray(wh, np.float64)
    if len(wh) < k:
        raise UserError(f"{len(wh)} boxes cannot give {k} anchors")
    centres, _ = kmeans2(np.log(wh), k, iter=iters, minit="++", seed=np.random.default_rng(seed))
    anchors = np.exp(centres)
    return anchors[np.argsort(anchors.prod(1))]


def yolo_anchor_order(model):
    """The anchor indexes the heads use, finest stride first (the order area-sorted anchors take; an index two heads
    share, like 3 in yolov3-tiny's masks 1,2,3 and 3,4,5, counts once). Anchors no head uses are left out."""
    heads = []
    for i in model.yolo_layers:
        d = model.module_defs[i]
        heads.append((float(model.module_list[i].stride), yolo_mask(d, model.cfg_path)))
    lists = {tuple(model.module_defs[i]["anchors"]) for i in model.yolo_layers}
    if len(lists) != 1:
        raise UserError(f"{model.cfg_path}: the [yolo] sections list different anchors; fitting needs one shared list")
    return list(dict.fromkeys(m for _, mask in sorted(heads, key=lambda h: h[0]) for m in mask))


def anchors_text(anchors):
    """``(n, 2)`` anchors as a cfg's ``anchors=`` value, rounded to whole pixels (at least 1)."""
    return ",  ".join(f"{max(1, round(w))},{max(1, round(h))}" for w, h in np.asarray(anchors, np.float64))


def set_anchors(cfg_text, anchors, path="cfg"):
    """``cfg_text`` with ``anchors=`` of every ``[yolo]`` replaced by ``anchors`` ``(n, 2)`` (rounded to pixels)."""
    value = anchors_text(anchors)
    lines = cfg_text.splitlines()
    for kind, _, keys in read_sections(cfg_text, path):
        if kind == "yolo" and "anchors" in keys:
            n = keys["anchors"][1] - 1
            comment = "  #" + lines[n].split("#", 1)[1] if "#" in lines[n] else ""
            lines[n] = f"anchors={value}{comment}"
    return "\n".join(lines) + ("\n" if cfg_text.endswith("\n") else "")


def model_anchors(model):
    """The shared anchor list ``(n, 2)`` of a Darknet model, in cfg index order."""
    i = model.yolo_layers[0]
    return np.asarray(model.module_defs[i]["anchors"], np.float64).reshape(-1, 2)


def fitted_anchors(model, wh, seed=0):
    """k-means anchors for ``wh``, in the model's cfg index order (smallest at its finest-stride head): one cluster
    per anchor a head uses; anchors no head uses (yolov3-tiny's 0) keep their cfg values."""
    order = yolo_anchor_order(model)
    anchors = model_anchors(model).copy()
    anchors[order] = kmeans_anchors(wh, len(order), seed)
    return np.round(anchors).clip(1)


def apply_anchors(model, anchors):
    """Give ``model`` the anchors ``(n, 2)``: its ``[yolo]`` layers' buffers, parsed defs and cfg text."""
    anchors = np.asarray(anchors, np.float64)
    for i in model.yolo_layers:
        d = model.module_defs[i]
        layer = model.module_list[i]
        mask = yolo_mask(d, model.cfg_path)
        layer.anchors.copy_(torch.as_tensor(anchors[mask], dtype=torch.float32))
        d["anchors"] = [float(v) for v in anchors.reshape(-1)]
    model.cfg_text = set_anchors(model.cfg_text, anchors, model.cfg_path)


def describe_fit(fit):
    return (f"best possible recall {fit['bpr']:.3f}, {fit['per_target']:.1f} anchors per target, "
            f"mean best ratio {fit['best_ratio']:.3f}")


def autoanchor(model, train_path, img_size, thr=4.0, nc=None, seed=0, log=print):
    """Fit the model's anchors to the training boxes (``--autoanchor``); keep them when they fit better.

    Returns True when the anchors changed. Better = higher best possible recall, then higher mean best ratio.
    """
    wh = label_wh(train_path, img_size, nc)
    old = anchor_fit(wh, model_anchors(model), thr)
    new_anchors = fitted_anchors(model, wh, seed)
    new = anchor_fit(wh, new_anchors, thr)
    log(f"autoanchor: cfg anchors: {describe_fit(old)}")
    if (new["bpr"], new["best_ratio"]) <= (old["bpr"], old["best_ratio"]):
        log("autoanchor: k-means anchors fit no better; the cfg's are kept")
        return False
    apply_anchors(model, new_anchors)
    log(f"autoanchor: k-means anchors: {describe_fit(new)}; used (and saved in the run's cfg): "
        + anchors_text(new_anchors))
    return True


def warn_if_poor(model, train_path, img_size, thr=4.0, nc=None, log=print, min_bpr=0.98):
    """A one-line warning when fewer than ``min_bpr`` of the training boxes can be matched to any anchor."""
    fit = anchor_fit(label_wh(train_path, img_size, nc), model_anchors(model), thr)
    if fit["bpr"] < min_bpr:
        log(f"warning: the cfg's anchors fit this data poorly ({describe_fit(fit)}); --autoanchor refits them")
    return fit


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="dataset .data file (its train split is fitted)")
    p.add_argument("--cfg", required=True, help="the cfg whose anchors are checked and refitted")
    p.add_argument("--img-size", type=int, default=416, help="training image size (anchors are in its pixels)")
    p.add_argument("--anchor-t", type=float, default=4.0, help="the loss's anchor-matching ratio threshold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the cfg with the fitted anchors here")
    args = p.parse_args(argv)
    data = parse_data_cfg(args.data)
    model = Darknet(args.cfg, img_size=args.img_size, nc=data["classes"])
    wh = label_wh(data["train"], args.img_size, data["classes"])
    print(f"{len(wh)} boxes at {args.img_size} px: median {np.median(wh, 0).round(1).tolist()} (w, h)")
    print(f"{args.cfg}: {describe_fit(anchor_fit(wh, model_anchors(model), args.anchor_t))}")
    anchors = fitted_anchors(model, wh, args.seed)
    print(f"k-means: {describe_fit(anchor_fit(wh, anchors, args.anchor_t))}")
    print("anchors=" + anchors_text(anchors))
    if args.out:
        Path(args.out).write_text(set_anchors(Path(args.cfg).read_text(), anchors, args.cfg))
        print(f"written {args.out}")


if __name__ == "__main__":
    cli(main)

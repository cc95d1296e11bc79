"""Evaluate a detector with the COCO metrics (pycocotools), or time it.

    python test.py --weights runs/train/exp/weights/best.pt --data data/shapes.data
    python test.py --cfg cfg/yolov3.cfg --weights yolov3.weights --data data/coco.data --img-size 416 --save-json
    python test.py --weights best.pt --data data/shapes.data --task speed --half

The evaluation itself is ``utils.evaluation.evaluate``, which the training loop also calls every epoch.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from models import Darknet
from utils.checkpoint import load_model
from utils.datasets import create_dataloader, parse_data_cfg
from utils.errors import UserError
from utils.evaluation import evaluate, measure_speed
from utils.general import increment_path, select_device
from utils.metrics import (EVAL_BATCH_SIZE, format_metrics, format_per_class, read_official_annotations,
                           score_with_official_annotations)
from utils.my_utils import add_data_args, add_inference_precision_args, add_model_args, flag
from utils.summary import model_summary
from utils.torch_utils import resolve_precision


# --------------------------------------------------------------------------------------------------------- CLI
def build_parser():
    """test.py's flags (model and data groups from utils/my_utils.py)."""
    p = argparse.ArgumentParser(description="Evaluate a YOLO detector with the COCO metrics (pycocotools).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    add_model_args(p)
    add_data_args(p)
    g = p.add_argument_group("evaluation")
    flag(g, "--conf-thres", type=float, default=0.001, help="confidence threshold (obj * cls)")
    flag(g, "--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    flag(g, "--max-det", type=int, default=300, help="detections kept per image")
    flag(g, "--multi-label", action="store_true", help="a box may be kept for several classes")
    flag(g, "--task", choices=("val", "speed"), default="val", help="val: COCO metrics; speed: ms per image")
    flag(g, "--split", choices=("valid", "test"), default="valid",
         help="the .data file's images to score: valid (model selection) or test (held out, scored once)")
    flag(g, "--save-json", action="store_true", help="write predictions.json and ground_truth.json (COCO format)")
    flag(g, "--coco-json", type=str, default=None,
         help="score against these official COCO annotations (e.g. instances_val2017.json: their image ids, "
              "category ids, areas and crowd regions) instead of the YOLO labels, so mAP compares with published ones")
    add_inference_precision_args(g)
    flag(g, "--verbose", action="store_true", help="show pycocotools' own report")
    g = p.add_argument_group("output")
    flag(g, "--project", type=str, default="runs/test", help="results go to PROJECT/NAME")
    flag(g, "--name", type=str, default="exp", help="run name; exp, exp2, ... when it exists")
    flag(g, "--exist-ok", action="store_true", help="reuse PROJECT/NAME instead of incrementing")
    flag(g, "--device", type=str, default="", help="cpu, 0, cuda:1 ... (default: first GPU, else CPU)")
    return p


def load_for_eval(weights, cfg, nc, device):
    """``(model, ckpt)`` from a checkpoint or Darknet weights (+ cfg); a bare ``cfg`` gives random weights."""
    if weights:
        return load_model(weights, cfg, nc, device)
    if not cfg:
        raise UserError("test.py: give --weights (a checkpoint .pt, or Darknet .weights with --cfg)")

    print(f"warning: no --weights: {cfg} with random weights", file=sys.stderr)
    return Darknet(cfg, nc=nc).to(device), {}


def main(argv=None):
    args = build_parser().parse_args(argv)

    if not args.data:
        raise UserError("test.py: --data is required (a .data file)")
    data = parse_data_cfg(args.data)
    nc, names = int(data["classes"]), list(data["names"])
    device = select_device(args.device)
    precision = resolve_precision(device, args.amp)
    print(f"precision {precision}")
    model, ckpt = load_for_eval(args.weights, args.cfg, nc, device)
    if int(getattr(model, "nc", nc)) != nc:
        raise UserError(f"{args.data}: {nc} classes, but the model has {model.nc}")
    img_size = args.img_size or (ckpt or {}).get("img_size") or 416
    model.check_img_size(img_size)
    batch_size = args.batch_size or EVAL_BATCH_SIZE
    if args.split not in data:
        raise UserError(f"{args.data}: no '{args.split}=' line (--split {args.split})")
    loader, _ = create_dataloader(data[args.split], img_size, batch_size, model.max_stride, rect=True, augment=False,
                                  shuffle=False, workers=args.workers, cache=args.cache_images, nc=nc)
    run_dir = increment_path(Path(args.project) / args.name, exist_ok=args.exist_ok)
    run_dir.mkdir(parents=True, exist_ok=True)

    summary = model_summary(model, img_size=img_size, path=args.weights or None)
    print(json.dumps(summary))

    report = {"task": args.task, "split": args.split, "weights": args.weights, "cfg": args.cfg, "data": args.data,
              "img_size": img_size,
              "batch_size": batch_size, "conf_thres": args.conf_thres, "iou_thres": args.iou_thres,
              "precision": precision.name, "device": str(device)}
    if summary is not None:
        report["summary"] = summary
    if args.task == "speed":
        speed = measure_speed(model, loader, args.conf_thres, args.iou_thres, precision=precision)
        report["speed"] = speed
        print(f"Speed: {speed['preprocess']:.1f} ms preprocess, {speed['inference']:.1f} ms inference, "
              f"{speed['nms']:.1f} ms NMS per image over {speed['images']} images, batch shape "
              f"{speed['batch_shape']}")
    else:
        annotations = read_official_annotations(args.coco_json, names) if args.coco_json else None  # checked first
        metrics = evaluate(model, loader, conf_thres=args.conf_thres, iou_thres=args.iou_thres, precision=precision,
                           names=names, save_json=run_dir if args.save_json or args.coco_json else None,
                           verbose=args.verbose, multi_label=args.multi_label, max_det=args.max_det)
        if args.coco_json:  # the official annotations replace the labels as the ground truth
            official = score_with_official_annotations(json.loads((run_dir / "ground_truth.json").read_text()),
                                                       json.loads((run_dir / "predictions.json").read_text()),
                                                       args.coco_json, names, verbose=args.verbose,
                                                       official=annotations)
            metrics.update(official, scored_against=str(args.coco_json))
            print(f"scored against {args.coco_json} (official image ids, categories, areas and crowd regions)")
        report.update(metrics)
        print(format_metrics(metrics))
        print(format_per_class(metrics["per_class"]))
        s = metrics["speed"]
        print(f"Speed: {s['preprocess']:.1f} ms preprocess, {s['inference']:.1f} ms inference, "
              f"{s['nms']:.1f} ms NMS per image")
        if args.save_json:
            print(f"COCO json: {run_dir / 'predictions.json'}, {run_dir / 'ground_truth.json'}")
    (run_dir / "metrics.json").write_text(json.dumps(report, indent=2, default=_json_default))
    print(f"Results saved to {run_dir}")
    return report


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (torch.Tensor,)):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


if __name__ == "__main__":
    from utils.errors import cli

    cli(main)

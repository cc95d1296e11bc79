"""Run a detector on images or videos and write annotated copies (and YOLO txt predictions).

    python detect.py --weights runs/train/exp/weights/best.pt --source data/samples
    python detect.py --cfg cfg/yolov3.cfg --weights yolov3.weights --names data/coco.names --source clip.mp4
    python detect.py --weights best.pt --source 'images/*.jpg' --save-txt --conf-thres 0.4

``--source`` is a file, a folder, a glob or a video. Outputs go to ``PROJECT/NAME`` (``runs/detect/exp``): one
annotated image per image, one annotated ``.mp4`` per video, and with ``--save-txt`` a ``labels/<stem>.txt`` per
image (``<stem>_<frame>.txt`` per video frame) holding ``cls x y w h conf`` per line, the box centre and size
normalised to the original image.
"""
import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.checkpoint import load_model
from utils.datasets import LoadImages, parse_data_cfg
from utils.errors import UserError
from utils.general import increment_path, select_device, xyxy2xywh
from utils.metrics import non_max_suppression, scale_boxes
from utils.my_utils import add_inference_precision_args, flag
from utils.torch_utils import autocast, resolve_precision


def colour(c):
    """A fixed BGR colour per class index."""
    rng = np.random.default_rng(int(c) * 7919 + 17)
    return tuple(int(v) for v in rng.integers(40, 256, 3))


def draw_detections(img, det, names):
    """Draw ``(n, 6)`` ``[x1, y1, x2, y2, conf, cls]`` boxes (original pixels) on the BGR image ``img`` in place."""
    h, w = img.shape[:2]
    thick = max(1, round(0.002 * (h + w) / 2))
    font = max(0.3, thick / 3)
    for x1, y1, x2, y2, conf, cls in det.tolist():
        c = int(cls)
        col = colour(c)
        p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(img, p1, p2, col, thick, cv2.LINE_AA)
        label = f"{names[c] if c < len(names) else c} {conf:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font, max(thick - 1, 1))
        top = p1[1] - th - base if p1[1] - th - base >= 0 else p1[1]
        cv2.rectangle(img, (p1[0], top), (p1[0] + tw, top + th + base), col, -1, cv2.LINE_AA)
        cv2.putText(img, label, (p1[0], top + th), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255),
                    max(thick - 1, 1), cv2.LINE_AA)
    return img


def yolo_lines(det, shape0):
    """``cls x y w h conf`` lines (centre and size normalised to the ``(h0, w0)`` original image)."""
    h0, w0 = shape0[:2]
    lines = []
    if len(det):
        xywh = xyxy2xywh(det[:, :4].clone()) / torch.tensor([w0, h0, w0, h0], dtype=torch.float32)
        for (x, y, w, h), conf, cls in zip(xywh.tolist(), det[:, 4].tolist(), det[:, 5].tolist()):
            lines.append(f"{int(cls)} {x:.6f} {y:.6f} {w:.6f} {h:.6f} {conf:.5f}")
    return lines


def read_names(path):
    """Class names from a ``.names`` file, or from the ``names=`` entry of a ``.data`` file."""
    path = Path(path)
    if path.suffix == ".data":
        return list(parse_data_cfg(path)["names"])
    if not path.is_file():
        raise UserError(f"{path}: names file not found")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def build_parser():
    p = argparse.ArgumentParser(description="Detect objects in images or videos with a YOLO detector.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    g = p.add_argument_group("model")
    flag(g, "--weights", type=str, required=True, help="checkpoint .pt, or Darknet .weights with --cfg")
    flag(g, "--cfg", type=str, default=None, help="Darknet .cfg (needed with .weights)")
    flag(g, "--names", type=str, default=None, help=".names or .data file (default: the checkpoint's names)")
    flag(g, "--img-size", type=int, default=None, help="inference size in pixels (default: the checkpoint's, or 416)")
    g = p.add_argument_group("detection")
    flag(g, "--source", type=str, required=True, help="image, folder, glob or video")
    flag(g, "--conf-thres", type=float, default=0.25, help="confidence threshold (obj * cls)")
    flag(g, "--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    flag(g, "--max-det", type=int, default=300, help="detections kept per image")
    flag(g, "--classes", type=int, nargs="+", default=None, help="keep only these class indexes")
    add_inference_precision_args(g)
    flag(g, "--device", type=str, default="", help="cpu, 0, cuda:1 ... (default: first GPU, else CPU)")
    g = p.add_argument_group("output")
    flag(g, "--project", type=str, default="runs/detect", help="results go to PROJECT/NAME")
    flag(g, "--name", type=str, default="exp", help="run name; exp, exp2, ... when it exists")
    flag(g, "--exist-ok", action="store_true", help="reuse PROJECT/NAME instead of incrementing")
    flag(g, "--save-txt", action="store_true", help="also write YOLO txt predictions (cls x y w h conf)")
    flag(g, "--nosave", action="store_true", help="do not write annotated images / videos")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    device = select_device(args.device)
    precision = resolve_precision(device, args.amp)
    print(f"precision {precision}")
    model, ckpt = load_model(args.weights, args.cfg, None, device)
    model.eval()
    if precision.amp:
        model.to(memory_format=torch.channels_last)
    ckpt = ckpt or {}
    nc = int(model.nc)
    names = read_names(args.names) if args.names else list(ckpt.get("names") or [])
    if len(names) < nc:
        names += [str(i) for i in range(len(names), nc)]
    img_size = args.img_size or ckpt.get("img_size") or 416
    model.check_img_size(img_size)

    run_dir = increment_path(Path(args.project) / args.name, exist_ok=args.exist_ok)
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.save_txt:
        (run_dir / "labels").mkdir(exist_ok=True)

    writers = {}  # video path -> cv2.VideoWriter
    n_images = n_dets = 0
    t_start = time.perf_counter()
    source = LoadImages(args.source, img_size=img_size, stride=model.max_stride)
    try:
        for path, img, img0, cap in source:
            path = Path(path)
            t0 = time.perf_counter()
            x = torch.as_tensor(img).to(device).float().div_(255)[None]
            if precision.amp:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), autocast(device, precision):
                inf, _ = model(x)
            det = non_max_suppression(inf, args.conf_thres, args.iou_thres, classes=args.classes,
                                      max_det=args.max_det)[0].cpu()
            if len(det):
                scale_boxes(x.shape[2:], det[:, :4], img0.shape[:2])
            dt = (time.perf_counter() - t0) * 1000
            n_images += 1
            n_dets += len(det)

            frame = int(cap.get(cv2.CAP_PROP_POS_FRAMES)) if cap is not None else None
            stem = path.stem if frame is None else f"{path.stem}_{frame}"
            if args.save_txt:
                lines = yolo_lines(det, img0.shape)
                (run_dir / "labels" / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
            if not args.nosave:
                out = draw_detections(img0.copy(), det, names)
                if cap is None:
                    cv2.imwrite(str(run_dir / path.name), out)
                else:
                    key = str(path)
                    if key not in writers:
                        fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
                        h, w = out.shape[:2]
                        writers[key] = cv2.VideoWriter(str(run_dir / f"{path.stem}.mp4"),
                                                       cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                    writers[key].write(out)
            counts = {}
            for c in det[:, 5].int().tolist():
                counts[names[c]] = counts.get(names[c], 0) + 1
            found = ", ".join(f"{v} {k}" for k, v in counts.items()) or "no detections"
            where = f"{path.name}" + (f" frame {frame}" if frame is not None else "")
            print(f"{where}: {x.shape[3]}x{x.shape[2]} {found} ({dt:.1f} ms)")
    finally:
        for w in writers.values():
            w.release()
    skipped = f", {source.skipped} unreadable files skipped" if source.skipped else ""
    if n_images == 0:
        raise UserError(f"{args.source}: no readable images or videos{skipped}")
    print(f"{n_images} images, {n_dets} detections in {time.perf_counter() - t_start:.1f} s{skipped}. "
          f"Results saved to {run_dir}")
    return run_dir


if __name__ == "__main__":
    from utils.errors import cli

    cli(main)

"""COCO evaluation of a detector (pycocotools through ``utils.metrics``) and its timing: what the training loop
calls every epoch, test.py's CLI, export.py's check and the pruning rounds' scoring use."""
import sys
import time
from collections import defaultdict

import torch
from tqdm import tqdm

from utils.datasets import ignore_regions
from utils.general import xywh2xyxy
from utils.metrics import Evaluator, non_max_suppression, scale_boxes
from utils.torch_utils import autocast


# ----------------------------------------------------------------------------------------------------- helpers
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_channels_last(model):
    """Whether the model's conv kernels are stored channels_last (judged on the first unambiguous kernel)."""
    for p in model.parameters():
        if p.ndim == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def _model_device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _labels_to_original(targets, si, img_shape, shape):
    """The ground truth of image ``si`` of a batch as ``(m, 5)`` ``[cls, x1, y1, x2, y2]`` in original pixels."""
    t = targets[targets[:, 0] == si, 1:].float().cpu()
    if not len(t):
        return torch.zeros((0, 5))
    h, w = img_shape
    box = xywh2xyxy(t[:, 1:5]) * torch.tensor([w, h, w, h], dtype=torch.float32)
    shape0, ratio_pad = _original_shape(img_shape, shape)
    box = scale_boxes(img_shape, box, shape0, ratio_pad)
    return torch.cat((t[:, :1], box), 1)


def _original_shape(img_shape, shape):
    """``(h0, w0), ratio_pad`` from a dataset's ``shapes`` entry (``None``: the image was not letterboxed)."""
    if shape is None:
        return tuple(int(v) for v in img_shape), ((1.0, 1.0), (0.0, 0.0))
    return shape[0], (shape[1] if len(shape) > 1 else None)


class _Timer:
    """Seconds spent in preprocessing, inference and NMS, and the images they covered."""

    def __init__(self, device):
        self.device, self.t, self.images = device, defaultdict(float), 0

    def mark(self):
        _sync(self.device)
        return time.perf_counter()

    def ms_per_image(self):
        n = max(self.images, 1)
        return {k: 1000 * self.t[k] / n for k in ("preprocess", "inference", "nms")}


class _EvalMode:
    """Puts the model in eval mode (and channels_last under autocast), then restores what it found."""

    def __init__(self, model, precision):
        self.model, self.half = model, _low(precision)

    def __enter__(self):
        self.training = self.model.training
        self.model.eval()
        self.restore_format = False
        if self.half and not is_channels_last(self.model):
            self.model.to(memory_format=torch.channels_last)
            self.restore_format = True
        return self.model

    def __exit__(self, *exc):
        if self.restore_format:
            self.model.to(memory_format=torch.contiguous_format)
        self.model.train(self.training)
        return False


def _low(precision):
    """Whether ``precision`` (a name or ``Precision``) is an autocast one (bf16, fp16) rather than fp32."""
    return getattr(precision, "name", precision) != "fp32"


def _batches(model, dataloader, conf_thres, iou_thres, precision, timer, desc, multi_label=False, max_det=300,
             compute_loss=None, losses=None):
    """Run the model over ``dataloader``; yield ``(imgs, targets, paths, shapes, detections)`` per batch with
    detections in network-input pixels. Times the three stages into ``timer``; loss terms summed into ``losses``."""
    device = timer.device
    bar = tqdm(dataloader, desc=desc, total=len(dataloader) if hasattr(dataloader, "__len__") else None,
               file=sys.stderr, leave=False, dynamic_ncols=True)
    for imgs, targets, paths, shapes in bar:
        t0 = timer.mark()
        imgs = imgs.to(device, non_blocking=True).float().div_(255)
        if _low(precision):
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device)
        t1 = timer.mark()
        with torch.no_grad(), autocast(device, precision):
            out = model(imgs)
        t2 = timer.mark()
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError("evaluate: the model in eval mode must return (inf, p)")
        inf, p = out
        if compute_loss is not None:
            with torch.no_grad():
                _, terms = compute_loss([x.float() for x in p], targets)
            for k, v in terms.items():
                losses[k] += float(v)
            losses["_batches"] += 1
        t3 = timer.mark()
        dets = non_max_suppression(inf, conf_thres=conf_thres, iou_thres=iou_thres, multi_label=multi_label,
                                   max_det=max_det)
        t4 = timer.mark()
        timer.t["preprocess"] += t1 - t0
        timer.t["inference"] += t2 - t1
        timer.t["nms"] += t4 - t3
        timer.images += imgs.shape[0]
        yield imgs, targets, paths, shapes, dets


# ---------------------------------------------------------------------------------------------------- evaluate
def evaluate(model, dataloader, conf_thres=0.001, iou_thres=0.6, precision="fp32", names=None, compute_loss=None,
             save_json=None, verbose=False, multi_label=False, max_det=300, desc="val"):
    """COCO evaluation of ``model`` on ``dataloader`` (batches ``(imgs uint8, targets, paths, shapes)``).

    ``precision``: fp32, or bf16 / fp16 autocast with channels_last (a name or ``Precision``). ``compute_loss(p, targets) ->
    (loss, terms)`` adds ``loss``, the mean of each term over batches. ``save_json``: a folder that receives
    ``predictions.json`` (COCO results: ``image_id, category_id, bbox`` xywh original pixels, ``score``) and
    ``ground_truth.json`` (the labels converted to COCO; ``image_id`` runs from 1 in loader order, ``file_name``
    names the image, ``category_id`` is the 0-based class). The model is evaluated in eval mode and put back in
    the mode (and memory format) it had.

    Returns ``map`` (AP@[.5:.95]), ``map50``, ``map75``, ``ap_small``, ``ap_medium``, ``ap_large``, ``ar1``,
    ``ar10``, ``ar100``, ``precision``, ``recall`` (mean over classes at the best-F1 confidence), ``per_class``
    (rows ``class, name, images, labels, detections, precision, recall, ap50, ap, f1``), ``f1``, ``conf_best``,
    ``images``, ``labels``, ``speed`` (ms per image: ``preprocess, inference, nms``) and, with ``compute_loss``,
    ``loss``. pycocotools reports -1 for a size bucket without ground truth.
    """
    device = _model_device(model)
    nc = _num_classes(model, names)
    evaluator = Evaluator(nc, names)
    timer = _Timer(device)
    losses = defaultdict(float)
    with _EvalMode(model, precision):
        for imgs, targets, paths, shapes, dets in _batches(model, dataloader, conf_thres, iou_thres, precision, timer,
                                                           desc, multi_label, max_det, compute_loss, losses):
            img_shape = imgs.shape[2:]
            for si, det in enumerate(dets):
                shape0, ratio_pad = _original_shape(img_shape, shapes[si])
                labels = _labels_to_original(targets, si, img_shape, shapes[si])
                det = det.cpu()
                if len(det):
                    scale_boxes(img_shape, det[:, :4], shape0, ratio_pad)
                evaluator.add(paths[si], shape0, labels, det, ignore_regions(paths[si], shape0, nc))
    metrics = evaluator.compute(verbose=verbose)
    metrics["speed"] = timer.ms_per_image()
    if compute_loss is not None:
        n = max(losses.pop("_batches", 0), 1)
        metrics["loss"] = {k: v / n for k, v in losses.items()}
    if save_json:
        evaluator.save_json(save_json)
    return metrics


def _num_classes(model, names):
    nc = getattr(model, "nc", None)
    if nc is None:
        if names is None:
            raise ValueError("evaluate: the model has no 'nc' attribute; pass names")
        nc = len(names)
    return int(nc)


def measure_speed(model, dataloader, conf_thres=0.001, iou_thres=0.6, precision="fp32", warmup=1):
    """Milliseconds per image for preprocessing, inference and NMS over ``dataloader`` (after ``warmup`` batches
    that are run but not timed). Returns ``{'preprocess', 'inference', 'nms', 'images', 'batch_shape'}``."""
    device = _model_device(model)
    timer = _Timer(device)
    shape = None
    with _EvalMode(model, precision):
        for i, (imgs, *_) in enumerate(_batches(model, dataloader, conf_thres, iou_thres, precision, timer, "speed")):
            shape = tuple(imgs.shape)
            if i < warmup:
                timer.t.clear()
                timer.images = 0
    out = timer.ms_per_image()
    out["images"] = timer.images
    out["batch_shape"] = shape
    return out


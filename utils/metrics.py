"""Evaluation: NMS, box scaling, COCO metrics through pycocotools, and a per-class table.

The model's eval output is ``inf (bs, N, 5 + nc)``: ``x, y, w, h`` in input pixels, objectness probability and
class probabilities. ``non_max_suppression`` turns it into ``(n, 6)`` detections ``[x1, y1, x2, y2, conf, cls]``
per image (``conf = obj * cls``). ``scale_boxes`` maps them back to the original image. ``Evaluator`` collects
ground truth and detections per image in original pixels and computes:

- the COCO figures with pycocotools on a ground truth built in memory (``iscrowd = 0``, ``area = w * h`` of the
  box in original pixels, so the small / medium / large buckets are by box area): AP@[.5:.95], AP50, AP75,
  AP small / medium / large, AR@1 / 10 / 100;
- a per-class table: labels, precision, recall and F1 at the confidence that maximises the mean F1 over the
  classes (detections matched greedily by confidence to the unmatched ground truth box of the same class with the
  highest IoU >= 0.5, as pycocotools does), and each class's AP50 and AP@[.5:.95] taken from pycocotools, so the
  table's mean AP50 equals ``map50``.

Detections and ground truth are rounded once (boxes to 3 decimals, scores to 5) before anything is computed, so
the figures are exactly those pycocotools gives on the json files ``Evaluator.save_json`` writes.
"""
import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import torch
import torchvision

from utils.errors import UserError
from utils.general import xywh2xyxy

# pycocotools' stats vector, in order
COCO_KEYS = ("map", "map50", "map75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100",
             "ar_small", "ar_medium", "ar_large")
METRIC_KEYS = COCO_KEYS[:9] + ("precision", "recall")


# ----------------------------------------------------------------------------------------------------------- boxes
def box_iou(box1, box2):
    """IoU matrix ``(n, m)`` between ``(n, 4)`` and ``(m, 4)`` boxes ``x1, y1, x2, y2`` (torch tensors)."""
    return torchvision.ops.box_iou(box1, box2)


def box_iou_np(box1, box2):
    """``box_iou`` for numpy arrays (float64)."""
    box1 = np.asarray(box1, dtype=np.float64).reshape(-1, 4)
    box2 = np.asarray(box2, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(box1[:, None, :2], box2[None, :, :2])
    rb = np.minimum(box1[:, None, 2:], box2[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    a1 = (box1[:, 2] - box1[:, 0]) * (box1[:, 3] - box1[:, 1])
    a2 = (box2[:, 2] - box2[:, 0]) * (box2[:, 3] - box2[:, 1])
    union = a1[:, None] + a2[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def clip_boxes(boxes, shape):
    """Clip ``x1, y1, x2, y2`` boxes in place to an image of ``shape = (h, w)``; returns ``boxes``."""
    h, w = shape[0], shape[1]
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, w)
        boxes[..., 1].clamp_(0, h)
        boxes[..., 2].clamp_(0, w)
        boxes[..., 3].clamp_(0, h)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


def scale_boxes(img_shape, boxes, img0_shape, ratio_pad=None):
    """Map ``x1, y1, x2, y2`` boxes from the letterboxed network input back to the original image, in place.

    ``img_shape = (h, w)`` of the network input, ``img0_shape = (h0, w0)`` of the original image.
    ``ratio_pad = ((h / h0, w / w0), (padw, padh))`` as the dataset's ``shapes[1]`` gives it (resize gains and the
    left / top padding in pixels); without it the gain and centred padding are worked out as ``letterbox`` does.
    Boxes are clipped to the original image. Returns ``boxes``.
    """
    if ratio_pad is None:
        gain = min(img_shape[0] / img0_shape[0], img_shape[1] / img0_shape[1])
        gh = gw = gain
        padw = (img_shape[1] - img0_shape[1] * gain) / 2
        padh = (img_shape[0] - img0_shape[0] * gain) / 2
    else:
        (gh, gw), (padw, padh) = ratio_pad
        gh, gw, padw, padh = float(gh), float(gw), float(padw), float(padh)
    boxes[..., 0] -= padw
    boxes[..., 2] -= padw
    boxes[..., 1] -= padh
    boxes[..., 3] -= padh
    boxes[..., 0] /= gw
    boxes[..., 2] /= gw
    boxes[..., 1] /= gh
    boxes[..., 3] /= gh
    return clip_boxes(boxes, img0_shape)


# ------------------------------------------------------------------------------------------------------------- NMS
# Images per evaluation batch, in test.py and in the engine's per-epoch evaluation alike: with rectangular batches
# the padding depends on the batch, so one size makes both score a checkpoint identically (issue 27).
EVAL_BATCH_SIZE = 32


def non_max_suppression(pred, conf_thres=0.001, iou_thres=0.6, multi_label=False, max_det=300, classes=None,
                        max_nms=30000):
    """Class-aware NMS on the model's eval output.

    ``pred``: ``(bs, N, 5 + nc)`` with ``x, y, w, h`` (input pixels), objectness and class probabilities. A
    candidate's confidence is ``obj * cls``; with ``multi_label`` every class above ``conf_thres`` is a candidate,
    otherwise only the best class of each box. ``classes`` keeps only those class indexes. At most ``max_nms``
    candidates (the most confident) enter ``torchvision.ops.batched_nms`` and at most ``max_det`` come out.
    Returns a list (one per image) of float32 ``(n, 6)`` tensors ``[x1, y1, x2, y2, conf, cls]``, by confidence.
    """
    if isinstance(pred, (list, tuple)):  # (inf, p) as the eval forward returns
        pred = pred[0]
    bs, nc = pred.shape[0], pred.shape[2] - 5
    # the filtering runs on the whole batch at once (few, larger ops: much faster on a busy CPU than per image)
    b, n = (pred[..., 4] > conf_thres).nonzero(as_tuple=True)  # conf = obj * cls <= obj: a cheap first cut
    x = pred[b, n].float()
    box = xywh2xyxy(x[:, :4])
    scores = x[:, 5:] * x[:, 4:5] if nc > 0 else x[:, 4:5]
    if multi_label and nc > 1:
        i, j = (scores > conf_thres).nonzero(as_tuple=True)
        det = torch.cat((box[i], scores[i, j, None], j[:, None].float()), 1)
        b = b[i]
    else:
        conf, j = scores.max(1, keepdim=True)
        keep = conf.view(-1) > conf_thres
        det = torch.cat((box, conf, j.float()), 1)[keep]
        b = b[keep]
    if classes is not None:
        keep = (det[:, 5:6] == torch.as_tensor(classes, device=det.device, dtype=det.dtype).view(1, -1)).any(1)
        det, b = det[keep], b[keep]
    out = []
    for d in det.split(torch.bincount(b, minlength=bs).tolist()):  # b is sorted: nonzero() is row-major
        if d.shape[0] > max_nms:
            d = d[d[:, 4].topk(max_nms).indices]
        if d.shape[0]:
            d = d[torchvision.ops.batched_nms(d[:, :4], d[:, 4], d[:, 5].long(), iou_thres)[:max_det]]
        out.append(d)
    return out


# ------------------------------------------------------------------------------------------------- COCO evaluation
@contextlib.contextmanager
def _quiet(verbose):
    if verbose:
        yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def coco_from_dict(dataset, verbose=False):
    """A pycocotools ``COCO`` object from an in-memory COCO dict (no file)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with _quiet(verbose):
        coco.createIndex()
    return coco


def coco_evaluate(gt, detections, verbose=False, return_eval=False):
    """COCO box evaluation with pycocotools.

    ``gt``: a COCO ground-truth dict (``images``, ``annotations`` with ``id >= 1``, ``area`` and ``iscrowd``,
    ``categories``) or a path to its json; ``detections``: a list of ``{image_id, category_id, bbox: [x, y, w, h],
    score}`` or a path to such a json. Returns a dict with the ``COCO_KEYS`` (``-1`` where pycocotools has nothing
    to measure, e.g. no small objects), and with ``return_eval`` also the ``COCOeval`` object.
    pycocotools' printing is swallowed unless ``verbose``.
    """
    from pycocotools.cocoeval import COCOeval

    if isinstance(gt, (str, Path)):
        gt = json.loads(Path(gt).read_text())
    if isinstance(detections, (str, Path)):
        detections = json.loads(Path(detections).read_text())
    coco_gt = coco_from_dict(gt, verbose)
    with _quiet(verbose):
        if detections:
            coco_dt = coco_gt.loadRes([dict(d) for d in detections])  # loadRes adds keys to the dicts it gets
        else:  # loadRes() cannot take an empty list: an empty result set scores 0 where there is ground truth
            coco_dt = coco_from_dict({"images": gt["images"], "annotations": [], "categories": gt["categories"]})
        E = COCOeval(coco_gt, coco_dt, "bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    stats = {k: float(v) for k, v in zip(COCO_KEYS, E.stats)}
    return (stats, E) if return_eval else stats


def read_official_annotations(coco_json, names):
    """The parsed official annotation file, checked before anything is evaluated: readable JSON with images and
    categories, and categories (sorted by id) named as the data's classes, in order; else a ``UserError``."""
    path = Path(coco_json)
    try:
        official = json.loads(path.read_text())
        if "images" not in official:
            raise KeyError("images")
        theirs = [c["name"].strip().lower() for c in sorted(official["categories"], key=lambda c: c["id"])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: not a COCO annotation file ({type(e).__name__}: {e})") from None
    ours = [c.replace("_", " ").strip().lower() for c in names]
    if ours != theirs:
        k = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        raise UserError(f"{path}: its {len(theirs)} categories do not match the data's {len(ours)} class names in "
                        f"order (first difference at class {k})")
    return official


def score_with_official_annotations(gt_ours, detections, coco_json, names, verbose=False, official=None):
    """COCO metrics of ``detections`` (our results: loader image ids, 0-based classes) against the official
    annotations ``coco_json`` (e.g. instances_val2017.json): its crowd regions and areas, its image ids (matched by
    file name to ``gt_ours``' images) and its category ids (class k is the k-th category by id: COCO's 80 -> 91 map).
    Only the images scored here count; ``official``: the file already read by ``read_official_annotations``.
    Returns ``coco_evaluate``'s dict."""
    path = Path(coco_json)
    official = official or read_official_annotations(path, names)
    images, categories = official["images"], sorted(official["categories"], key=lambda c: c["id"])
    by_name = {Path(im["file_name"]).name: im["id"] for im in images}
    image_id = {}
    for im in gt_ours["images"]:
        name = Path(im["file_name"]).name
        if name not in by_name:
            raise UserError(f"{path}: no image named {name} (the data's images must be the file's)")
        image_id[im["id"]] = by_name[name]
    kept = set(image_id.values())
    gt = {"images": [im for im in images if im["id"] in kept], "categories": categories,
          "annotations": [a for a in official.get("annotations", []) if a["image_id"] in kept]}
    dets = [dict(d, image_id=image_id[d["image_id"]], category_id=categories[d["category_id"]]["id"])
            for d in detections]
    return coco_evaluate(gt, dets, verbose)


def ap_per_class_from_eval(E):
    """Per category id: ``(ap50, ap)`` from an accumulated ``COCOeval`` (area 'all', 100 detections); NaN where
    the class has no ground truth."""
    prec = E.eval["precision"]  # (T, R, K, A, M)
    out = {}
    for k, cat in enumerate(E.params.catIds):
        p50 = prec[0, :, k, 0, -1]
        pall = prec[:, :, k, 0, -1]
        ap50 = float(p50[p50 > -1].mean()) if (p50 > -1).any() else float("nan")
        ap = float(pall[pall > -1].mean()) if (pall > -1).any() else float("nan")
        out[cat] = (ap50, ap)
    return out


def match_detections(det, gt, iou_thres=0.5):
    """Greedy matching of one image's detections to its ground truth, as pycocotools does at one IoU threshold.

    ``det``: ``(n, 6)`` ``[x1, y1, x2, y2, conf, cls]``; ``gt``: ``(m, 5)`` ``[cls, x1, y1, x2, y2]`` (numpy).
    Detections are visited by decreasing confidence; each takes the unmatched ground-truth box of its class with
    the highest IoU >= ``iou_thres``. Returns a bool array ``(n,)``: true positive per detection (input order).
    """
    det = np.asarray(det, dtype=np.float64).reshape(-1, 6)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 5)
    tp = np.zeros(len(det), dtype=bool)
    if not len(det) or not len(gt):
        return tp
    iou = box_iou_np(det[:, :4], gt[:, 1:])
    iou[det[:, 5:6] != gt[None, :, 0]] = -1.0  # other class: never a match
    taken = np.zeros(len(gt), dtype=bool)
    for d in np.argsort(-det[:, 4], kind="mergesort"):
        cand = np.where(taken, -1.0, iou[d])
        g = int(cand.argmax())
        if cand[g] >= iou_thres:
            taken[g] = True
            tp[d] = True
    return tp


def pr_at_best_f1(conf, tp, pred_cls, n_labels, n_thresholds=1001):
    """Precision, recall and F1 per class at the single confidence threshold that maximises the mean F1.

    ``conf, tp, pred_cls``: one entry per detection (all images); ``n_labels``: ground-truth count per class
    (array of length nc). The mean runs over classes with labels. Counts are exact (detections with
    ``conf >= threshold``) on a grid of ``n_thresholds`` thresholds in [0, 1].
    Returns ``(p, r, f1, threshold)`` with arrays of length nc.
    """
    n_labels = np.asarray(n_labels)
    nc = len(n_labels)
    grid = np.linspace(0, 1, n_thresholds)
    P = np.zeros((nc, n_thresholds))
    R = np.zeros((nc, n_thresholds))
    conf, tp, pred_cls = np.asarray(conf, dtype=np.float64), np.asarray(tp, dtype=bool), np.asarray(pred_cls)
    for c in range(nc):
        m = pred_cls == c
        cc = conf[m]
        order = np.argsort(cc)
        cc, tc = cc[order], tp[m][order]
        tpc = np.concatenate(([0], np.cumsum(tc[::-1])))[::-1]  # true positives with conf >= cc[i]
        first = np.searchsorted(cc, grid, side="left")  # detections kept at each threshold: cc[first:]
        n_det = len(cc) - first
        n_tp = tpc[first]
        with np.errstate(divide="ignore", invalid="ignore"):
            P[c] = np.where(n_det > 0, n_tp / np.maximum(n_det, 1), 0.0)
            R[c] = n_tp / n_labels[c] if n_labels[c] else 0.0
    F1 = 2 * P * R / np.maximum(P + R, 1e-16)
    has = n_labels > 0
    if not has.any():
        return np.zeros(nc), np.zeros(nc), np.zeros(nc), 0.0
    i = int(F1[has].mean(0).argmax())
    return P[:, i], R[:, i], F1[:, i], float(grid[i])


class Evaluator:
    """Collects ground truth and detections in original-image pixels, then computes every figure at once.

    ``add(file_name, shape0, labels, det)`` per image; ``compute(verbose)`` returns the metrics dict
    (``METRIC_KEYS`` plus ``per_class``, ``f1``, ``conf_best``, ``ar_small/medium/large``); ``coco_gt()`` and
    ``coco_results()`` give the two json bodies; ``save_json(folder)`` writes them as ``ground_truth.json`` and
    ``predictions.json``. Category ids are the 0-based class indexes, image ids count from 1 in ``add`` order.
    """

    def __init__(self, nc, names=None):
        self.nc = int(nc)
        self.names = list(names) if names is not None else [str(i) for i in range(self.nc)]
        if len(self.names) < self.nc:
            self.names += [str(i) for i in range(len(self.names), self.nc)]
        self.images, self.annotations, self.results = [], [], []
        self._match = []  # (conf, tp, cls) arrays per image
        self._n_labels = np.zeros(self.nc, dtype=np.int64)
        self._n_images = np.zeros(self.nc, dtype=np.int64)

    def add(self, file_name, shape0, labels, det, ignore=None):
        """One image. ``shape0 = (h0, w0)``; ``labels``: ``(m, 5)`` ``[cls, x1, y1, x2, y2]`` in original pixels;
        ``det``: ``(n, 6)`` ``[x1, y1, x2, y2, conf, cls]`` in original pixels (torch or numpy); ``ignore``:
        ``(k, 5)`` like ``labels``, regions a detection may hit without counting (VOC's difficult objects): crowd
        annotations for pycocotools, and for precision/recall a detection that is no hit but overlaps one of its
        class by IoU >= 0.5 is left out, as the VOC devkit does. Returns the image id."""
        labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        det = det.detach().float().cpu().numpy() if isinstance(det, torch.Tensor) else np.asarray(det)
        labels = np.asarray(labels, dtype=np.float64).reshape(-1, 5)
        det = np.asarray(det, dtype=np.float64).reshape(-1, 6)
        if len(labels) and (labels[:, 0].min() < 0 or labels[:, 0].max() >= self.nc):
            raise UserError(f"{file_name}: label class {int(labels[:, 0].max())} outside 0..{self.nc - 1} "
                            f"(the model has {self.nc} classes)")
        img_id = len(self.images) + 1
        self.images.append({"id": img_id, "file_name": str(file_name), "height": int(shape0[0]),
                            "width": int(shape0[1])})
        # round once; everything below uses the rounded values (what the json files hold)
        gt_xywh = np.round(np.stack((labels[:, 1], labels[:, 2], labels[:, 3] - labels[:, 1],
                                     labels[:, 4] - labels[:, 2]), 1), 3) if len(labels) else np.zeros((0, 4))
        for c, b in zip(labels[:, 0].astype(int), gt_xywh):
            self.annotations.append({"id": len(self.annotations) + 1, "image_id": img_id, "category_id": int(c),
                                     "bbox": [float(v) for v in b], "area": float(b[2] * b[3]), "iscrowd": 0})
        det_xywh = np.round(np.stack((det[:, 0], det[:, 1], det[:, 2] - det[:, 0], det[:, 3] - det[:, 1]), 1), 3)
        scores = np.round(det[:, 4], 5)
        cls = det[:, 5].astype(int)
        for b, s, c in zip(det_xywh, scores, cls):
            self.results.append({"image_id": img_id, "category_id": int(c), "bbox": [float(v) for v in b],
                                 "score": float(s)})
        gt_r = np.concatenate((labels[:, :1], gt_xywh[:, :2], gt_xywh[:, :2] + gt_xywh[:, 2:]), 1)
        det_r = np.concatenate((det_xywh[:, :2], det_xywh[:, :2] + det_xywh[:, 2:], scores[:, None], cls[:, None]), 1)
        tp = match_detections(det_r, gt_r, 0.5)
        keep = ~(~tp & self._add_ignored(img_id, ignore, det_r))
        self._match.append((scores[keep], tp[keep], cls[keep]))
        if len(labels):
            lc = labels[:, 0].astype(int)
            self._n_labels += np.bincount(lc, minlength=self.nc)
            self._n_images[np.unique(lc)] += 1
        return img_id

    def _add_ignored(self, img_id, ignore, det_r):
        """Record ``ignore`` as crowd annotations; ``(n,)`` bool: detections overlapping one of their class."""
        if ignore is None or not len(ignore):
            return np.zeros(len(det_r), dtype=bool)
        ignore = np.asarray(ignore.detach().cpu().numpy() if isinstance(ignore, torch.Tensor) else ignore,
                            dtype=np.float64).reshape(-1, 5)
        xywh = np.round(np.stack((ignore[:, 1], ignore[:, 2], ignore[:, 3] - ignore[:, 1],
                                  ignore[:, 4] - ignore[:, 2]), 1), 3)
        for c, b in zip(ignore[:, 0].astype(int), xywh):
            self.annotations.append({"id": len(self.annotations) + 1, "image_id": img_id, "category_id": int(c),
                                     "bbox": [float(v) for v in b], "area": float(b[2] * b[3]), "iscrowd": 1})
        if not len(det_r):
            return np.zeros(0, dtype=bool)
        iou = box_iou_np(det_r[:, :4], np.concatenate((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), 1))
        iou[det_r[:, 5:6] != ignore[None, :, 0]] = -1.0
        return (iou >= 0.5).any(1)

    def coco_gt(self):
        return {"info": {"description": "yolo-compression ground truth (from YOLO labels, original pixels)"},
                "images": self.images, "annotations": self.annotations,
                "categories": [{"id": i, "name": n} for i, n in enumerate(self.names[:self.nc])]}

    def coco_results(self):
        return self.results

    def save_json(self, folder):
        """Write ``predictions.json`` (COCO results format) and ``ground_truth.json`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        pred, gt = folder / "predictions.json", folder / "ground_truth.json"
        pred.write_text(json.dumps(self.coco_results()))
        gt.write_text(json.dumps(self.coco_gt()))
        return pred, gt

    def compute(self, verbose=False):
        if self.images:
            stats, E = coco_evaluate(self.coco_gt(), self.results, verbose=verbose, return_eval=True)
            ap_cls = ap_per_class_from_eval(E)
        else:
            stats, ap_cls = {k: 0.0 for k in COCO_KEYS}, {}
        if self._match:
            conf, tp, cls = (np.concatenate(v) for v in zip(*self._match))
        else:
            conf, tp, cls = np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, dtype=int)
        p, r, f1, conf_best = pr_at_best_f1(conf, tp, cls, self._n_labels)
        per_class = []
        for c in range(self.nc):
            if not self._n_labels[c]:
                continue
            ap50, ap = ap_cls.get(c, (float("nan"), float("nan")))
            per_class.append({"class": c, "name": self.names[c], "images": int(self._n_images[c]),
                              "labels": int(self._n_labels[c]), "detections": int((cls == c).sum()),
                              "precision": float(p[c]), "recall": float(r[c]), "ap50": ap50, "ap": ap,
                              "f1": float(f1[c])})
        has = self._n_labels > 0
        out = dict(stats)
        out["precision"] = float(p[has].mean()) if has.any() else 0.0
        out["recall"] = float(r[has].mean()) if has.any() else 0.0
        out["f1"] = float(f1[has].mean()) if has.any() else 0.0
        out["conf_best"] = conf_best
        out["per_class"] = per_class
        out["images"] = len(self.images)
        out["labels"] = int(self._n_labels.sum())
        return out


# ---------------------------------------------------------------------------------------------------- formatting
def format_metrics(m):
    """The headline figures as a two-line table."""
    keys = [("images", "Images"), ("labels", "Labels"), ("precision", "P"), ("recall", "R"), ("map50", "AP50"),
            ("map75", "AP75"), ("map", "AP"), ("ap_small", "APs"), ("ap_medium", "APm"), ("ap_large", "APl"),
            ("ar1", "AR1"), ("ar10", "AR10"), ("ar100", "AR100")]
    keys = [(k, h) for k, h in keys if k in m]
    head = " ".join(f"{h:>8}" for _, h in keys)
    vals = " ".join(f"{m[k]:>8d}" if isinstance(m[k], int) else f"{m[k]:>8.4f}" for k, _ in keys)
    return head + "\n" + vals


def format_per_class(per_class):
    """The per-class table (one row per class with labels)."""
    lines = [f"{'class':>20} {'images':>7} {'labels':>7} {'P':>7} {'R':>7} {'F1':>7} {'AP50':>7} {'AP':>7}"]
    for row in per_class:
        lines.append(f"{row['name'][:20]:>20} {row['images']:>7d} {row['labels']:>7d} {row['precision']:>7.3f} "
                     f"{row['recall']:>7.3f} {row['f1']:>7.3f} {row['ap50']:>7.3f} {row['ap']:>7.3f}")
    return "\n".join(lines)

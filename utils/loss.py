"""The YOLOv3 detection loss: target assignment, GIoU box loss, objectness and class BCE.

Formulation of the predictions (Redmon & Farhadi 2018, "YOLOv3: An Incremental Improvement", arXiv 1804.02767):
each anchor of each grid cell predicts ``t_x, t_y, t_w, t_h, t_o, t_c...``; the box centre is
``(sigmoid(t_xy) + cell) * stride`` and its size ``exp(t_wh) * anchor``; objectness and every class are independent
logistic outputs trained with binary cross-entropy.

Two departures from the paper, both standard in later YOLOv3 practice and documented here so nobody is surprised:

* The box term is the GIoU loss ``1 - GIoU`` (Rezatofighi et al. 2019, "Generalized Intersection over Union",
  arXiv 1902.09630) instead of the paper's squared error on ``t``.
* A target is matched to *every* anchor of a scale whose width and height ratios to the target are within
  ``anchor_t`` (``max(r, 1/r) < anchor_t``), in the grid cell containing the target's centre, instead of the single
  anchor of best IoU. The objectness target at a matched anchor is the (detached, clamped at 0) GIoU between its
  predicted box and the target, and 0 at every other anchor.

Gains (``box``, ``obj``, ``cls`` from ``params/default.yaml``) are rescaled here, in one place, as the YAML comments
say (the engine must pass the raw YAML values): ``box *= 3/nl``, ``cls *= nc/80 * 3/nl``, ``obj *= (img_size/640)^2``
with ``nl`` the number of YOLO layers. The box and class references were tuned for 80 classes, 3 scales and 640 px;
the rescaling keeps their balance for other class counts and scale counts.

Objectness weighs every cell of every scale the same: each scale's BCE (a mean over its cells) is multiplied by its
cell count relative to a stride-32 grid, ``balance = (32 / stride)^2`` (16 at stride 8, 4 at 16, 1 at 32), so the
term is the BCE summed over all cells divided by the stride-32 cell count, and ``(img_size/640)^2`` keeps it constant
across image sizes. A positive then pulls equally hard whatever its scale and however many scales the network has.
The default ``obj: 1.5`` reproduces exactly the pull of ultralytics' rule (``[4.0, 1.0]`` per scale, gain ``3/nl``)
on yolov3-tiny's strides 16 and 32; the older rule (``[4.0, 1.0, 0.4]`` on strides 8/16/32 with ``3/nl``) gave a
positive on a three-scale network six times less pull than on tiny, and YOLO Nano, whose shapes targets land on its
stride-8 head, did not learn objectness at all in 30 epochs (docs/models.md).
Everything is computed in fp32 with autocast disabled, so the loss may be called inside a bf16/fp16 autocast
region on raw predictions of any floating dtype.
"""
import math

import torch
import torch.nn as nn

from utils.settings import LossSettings

REF_IMG_SIZE = 640  # image size the YAML gains refer to
REF_NC = 80  # class count the YAML class gain refers to
MAX_WH_LOG = math.log(1e3)  # t_wh is clamped here before exp(): a box at most 1000 anchors wide, never inf

REF_STRIDE = 32  # objectness balance: a scale weighs its cell count relative to this stride's grid


def balance_for_strides(strides):
    """Per-scale objectness weights ``(32 / stride)^2`` for YOLO layers of the given strides, in the same order.

    A scale's objectness BCE is a mean over its cells; this weight turns it into a sum over cells divided by the
    stride-32 cell count, so every cell (and every positive) weighs the same on every scale.
    """
    return [(REF_STRIDE / float(s)) ** 2 for s in strides]


def smooth_bce_targets(eps=0.0):
    """Positive and negative class targets with label smoothing ``eps``: ``(1 - eps/2, eps/2)``."""
    return 1.0 - 0.5 * eps, 0.5 * eps


def giou_xywh(box1, box2, eps=1e-7):
    """Elementwise Generalized IoU (Rezatofighi et al. 2019) of two ``(..., 4)`` tensors of ``[x, y, w, h]`` boxes.

    ``GIoU = IoU - (C - U) / C`` with ``U`` the union and ``C`` the area of the smallest enclosing box;
    it lies in ``(-1, 1]`` and equals 1 only for identical boxes. Returns a tensor of shape ``(...)``.
    """
    b1x1, b1x2 = box1[..., 0] - box1[..., 2] / 2, box1[..., 0] + box1[..., 2] / 2
    b1y1, b1y2 = box1[..., 1] - box1[..., 3] / 2, box1[..., 1] + box1[..., 3] / 2
    b2x1, b2x2 = box2[..., 0] - box2[..., 2] / 2, box2[..., 0] + box2[..., 2] / 2
    b2y1, b2y2 = box2[..., 1] - box2[..., 3] / 2, box2[..., 1] + box2[..., 3] / 2

    iw = (torch.minimum(b1x2, b2x2) - torch.maximum(b1x1, b2x1)).clamp(min=0)
    ih = (torch.minimum(b1y2, b2y2) - torch.maximum(b1y1, b2y1)).clamp(min=0)
    inter = iw * ih
    union = box1[..., 2] * box1[..., 3] + box2[..., 2] * box2[..., 3] - inter + eps
    iou = inter / union

    cw = torch.maximum(b1x2, b2x2) - torch.minimum(b1x1, b2x1)
    ch = torch.maximum(b1y2, b2y2) - torch.minimum(b1y1, b2y1)
    c_area = cw * ch + eps
    return iou - (c_area - union) / c_area


def decode_matched(ps, anchors):
    """Decode raw predictions at matched anchors into boxes comparable with ``build_targets``' ``tbox``.

    ``ps``: ``(n, >=4)`` raw outputs at the matched ``(b, a, gj, gi)``; ``anchors``: ``(n, 2)`` anchor sizes in grid
    units. Returns ``(n, 4)`` fp32 ``[x, y, w, h]`` in grid units with ``x, y`` the offset inside the cell:
    ``xy = sigmoid(t_xy)``, ``wh = exp(min(t_wh, ln 1000)) * anchor`` (Redmon & Farhadi 2018), the same decode as the
    model's inference output divided by the stride, minus the cell index.
    """
    ps = ps.float()
    pxy = ps[:, 0:2].sigmoid()
    pwh = ps[:, 2:4].clamp(max=MAX_WH_LOG).exp() * anchors.float()
    return torch.cat((pxy, pwh), 1)


def _hyp_get(hyp, key, default=None):
    """``hyp[key]`` of a dict or namespace; ``default`` where it is missing or None."""
    value = None if hyp is None else hyp.get(key) if isinstance(hyp, dict) else getattr(hyp, key, None)
    return default if value is None else value


class ComputeLoss:
    """The YOLOv3 loss for a Darknet model (see the module docstring for the formulation and the gains).

    ``ComputeLoss(model, hyp)`` reads the model's YOLO layers (``model.yolo_layers`` into ``model.module_list``; a
    ``DistributedDataParallel`` wrapper is unwrapped) and the hyperparameters ``box, obj, cls, cls_pw, obj_pw,
    anchor_t, label_smoothing`` (and ``img_size`` where present, else ``model.img_size``) from a dict or namespace.

    ``loss_fn(p, targets) -> (loss, terms)``: ``p`` is the list of raw per-scale outputs ``(bs, na, ny, nx, 5+nc)``
    in YOLO-layer order, ``targets`` an ``(N, 6)`` tensor ``[img_idx, cls, x, y, w, h]`` normalised to the input
    image. ``loss`` is ``(box + obj + cls) * bs``, the scalar to back-propagate; ``terms`` is
    ``{'box', 'obj', 'cls'}`` as detached Python floats (before the batch-size factor).

    Keyword options: ``autoscale=False`` uses the YAML gains as given; ``balance`` overrides the per-scale objectness
    weights (a list in YOLO-layer order); ``ref_img_size`` changes the image size the ``obj`` gain refers to.
    """

    def __init__(self, model, hyp=None, autoscale=True, balance=None, ref_img_size=REF_IMG_SIZE):
        m = model.module if hasattr(model, "module") else model
        self.layers = [m.module_list[i] for i in m.yolo_layers]  # plain list: buffers follow model.to(device)
        if not self.layers:
            raise ValueError("ComputeLoss: the model has no YOLO layers")
        self.nl = len(self.layers)
        self.na = int(self.layers[0].na)
        self.nc = int(self.layers[0].nc)
        self.strides = [float(layer.stride) for layer in self.layers]

        fallback = LossSettings()  # a key ``hyp`` lacks takes train.py's default
        get = lambda key: float(_hyp_get(hyp, key, getattr(fallback, key)))  # noqa: E731
        self.anchor_t, self.cls_pw, self.obj_pw = get("anchor_t"), get("cls_pw"), get("obj_pw")
        self.cp, self.cn = smooth_bce_targets(get("label_smoothing"))

        box, obj, cls = get("box"), get("obj"), get("cls")
        if autoscale:
            img_size = _hyp_get(hyp, "img_size", None) or getattr(m, "img_size", None) or ref_img_size
            if isinstance(img_size, (list, tuple)):
                img_size = max(img_size)
            s = 3.0 / self.nl
            box *= s
            cls *= self.nc / REF_NC * s
            obj *= (float(img_size) / ref_img_size) ** 2
        self.gains = {"box": box, "obj": obj, "cls": cls}

        if balance is None:
            balance = balance_for_strides(self.strides)
        if len(balance) != self.nl:
            raise ValueError(f"ComputeLoss: balance has {len(balance)} values for {self.nl} YOLO layers")
        self.balance = [float(b) for b in balance]

    # ------------------------------------------------------------------ target assignment
    def build_targets(self, p, targets):
        """Assign targets to anchors and cells, per scale (vectorised over targets and anchors).

        A target is matched to every anchor of a scale whose ratios ``w/w_a`` and ``h/h_a`` both satisfy
        ``max(r, 1/r) < anchor_t``, in the cell containing its centre (indices clamped to the grid).
        Returns four lists with one entry per YOLO layer:
        ``tcls`` ``(n,)`` long class ids; ``tbox`` ``(n, 4)`` ``[x, y, w, h]`` in grid units, ``x, y`` the offset of
        the centre within its cell; ``indices`` a tuple ``(b, a, gj, gi)`` of ``(n,)`` long tensors (image, anchor,
        row, column); ``anchors`` ``(n, 2)`` the matched anchors' sizes in grid units.
        """
        targets = targets.float()
        tcls, tbox, indices, anch = [], [], [], []
        for i, layer in enumerate(self.layers):
            device = p[i].device
            ny, nx = p[i].shape[2], p[i].shape[3]
            t = targets.to(device)
            anchors = layer.anchors.to(device=device, dtype=torch.float32) / float(layer.stride)  # (na, 2) grid
            scale = torch.tensor([nx, ny, nx, ny], device=device, dtype=torch.float32)
            gxywh = t[:, 2:6] * scale  # (N, 4) grid units

            r = gxywh[None, :, 2:4] / anchors[:, None, :]  # (na, N, 2)
            match = torch.maximum(r, 1.0 / r).amax(2) < self.anchor_t  # (na, N); w or h == 0 -> inf -> no match
            a, ti = match.nonzero(as_tuple=True)

            g = gxywh[ti]
            gxy, gwh = g[:, 0:2], g[:, 2:4]
            gij = gxy.floor().long()
            gi = gij[:, 0].clamp(0, nx - 1)
            gj = gij[:, 1].clamp(0, ny - 1)
            b = t[ti, 0].long()

            tcls.append(t[ti, 1].long())
            tbox.append(torch.cat((gxy - torch.stack((gi, gj), 1).float(), gwh), 1))
            indices.append((b, a, gj, gi))
            anch.append(anchors[a])
        return tcls, tbox, indices, anch

    decode_matched = staticmethod(decode_matched)
    giou = staticmethod(giou_xywh)

    # ------------------------------------------------------------------ loss
    def details(self, p, targets):
        """The loss with its intermediate values, for tests and for distillation.

        Returns a dict: ``loss`` (the scalar ``__call__`` returns), ``lbox``, ``lobj``, ``lcls`` (gained fp32
        tensors, before the batch-size factor), and per scale ``tobj`` (the objectness target tensor
        ``(bs, na, ny, nx)``), ``giou`` (GIoU of each matched prediction, ``(n,)``) and the ``build_targets``
        outputs ``tcls, tbox, indices, anchors``.
        """
        device_type = p[0].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            p = [pi.float() for pi in p]
            device = p[0].device
            tcls, tbox, indices, anchors = self.build_targets(p, targets)
            bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([self.cls_pw], device=device))
            bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([self.obj_pw], device=device))

            zero = torch.zeros((), device=device)
            lbox, lobj, lcls = zero, zero, zero
            tobjs, gious = [], []
            for i, pi in enumerate(p):
                b, a, gj, gi = indices[i]
                tobj = torch.zeros(pi.shape[:4], device=device)
                n = b.shape[0]
                if n:
                    ps = pi[b, a, gj, gi]  # (n, 5 + nc)
                    pbox = decode_matched(ps, anchors[i])
                    giou = giou_xywh(pbox, tbox[i])
                    lbox = lbox + (1.0 - giou).mean()
                    tobj[b, a, gj, gi] = giou.detach().clamp(min=0)
                    if self.nc > 1:  # one class: objectness already says it all
                        tc = torch.full_like(ps[:, 5:], self.cn)
                        tc[torch.arange(n, device=device), tcls[i]] = self.cp
                        lcls = lcls + bce_cls(ps[:, 5:], tc)
                    gious.append(giou.detach())
                else:
                    gious.append(torch.zeros(0, device=device))
                lobj = lobj + self.balance[i] * bce_obj(pi[..., 4], tobj)
                tobjs.append(tobj)

            lbox = lbox * self.gains["box"]
            lobj = lobj * self.gains["obj"]
            lcls = lcls * self.gains["cls"]
            bs = p[0].shape[0]
            loss = (lbox + lobj + lcls) * bs
        return dict(loss=loss, lbox=lbox, lobj=lobj, lcls=lcls, tobj=tobjs, giou=gious,
                    tcls=tcls, tbox=tbox, indices=indices, anchors=anchors)

    def __call__(self, p, targets, scales=None):
        """``(loss, terms)``: the scalar to back-propagate (``(box + obj + cls) * bs``, each term times its factor in
        ``scales`` = ``{'box', 'obj', 'cls'}`` when given) and the detached, unscaled terms."""
        d = self.details(p, targets)
        terms = {"box": float(d["lbox"].detach()), "obj": float(d["lobj"].detach()), "cls": float(d["lcls"].detach())}
        if not scales or len(set(scales.values())) == 1:  # one factor: the whole loss (as before per-term scales)
            return d["loss"] * (next(iter(scales.values())) if scales else 1.0), terms
        bs = p[0].shape[0]
        return sum(d["l" + k] * scales.get(k, 1.0) for k in ("box", "obj", "cls")) * bs, terms


__all__ = ["ComputeLoss", "decode_matched", "giou_xywh", "balance_for_strides", "smooth_bce_targets"]

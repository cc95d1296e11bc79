"""Knowledge distillation for YOLO (Chen et al. 2017): teacher loading, feature pairs, adaptation layers, the hint,
soft-target and teacher-bounded losses, and the plug-in of ``my_kd.py``. How each term works: docs/techniques.md.
"""
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from utils import engine
from utils.checkpoint import load_checkpoint, load_model
from utils.engine import Plugin
from utils.errors import UserError
from utils.loss import MAX_WH_LOG
from utils.pruning import MaskPlugin, Masks
from utils.settings import KDSettings, ModelSettings, TeacherSettings
from utils.torch_utils import ddp, de_parallel


# ------------------------------------------------------------------------------------------------------ teacher
class Teacher(nn.Module):
    """A frozen network that stays in eval mode: ``train()`` is a no-op, parameters never require gradients.

    ``forward(imgs, features=())`` runs under ``torch.no_grad()`` and returns ``(p, feats)``: the raw per-scale
    YOLO outputs ``(bs, na, ny, nx, 5 + nc)`` in YOLO-layer order and the outputs of the ``features`` layers.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode=True):  # noqa: ARG002 - a teacher is never trained
        return super().train(False)

    @torch.no_grad()
    def forward(self, imgs, features=()):
        if self.model.training:  # someone reached past the wrapper: put it back
            self.model.eval()
        features = list(features)
        if features:
            (_, p), feats = self.model(imgs, features=features)
        else:
            (_, p), feats = self.model(imgs), []
        return p, feats


def load_teacher(cfg, weights, device="cpu"):
    """Load a teacher from a checkpoint ``.pt`` (its own cfg unless ``cfg`` is given) or Darknet ``.weights`` + ``cfg``.

    Returns a ``Teacher`` on ``device``, in eval mode, with ``requires_grad=False`` everywhere.
    """
    if not weights:
        raise UserError("--teacher-weights is required (a checkpoint .pt, or Darknet .weights with --teacher-cfg)")
    model, _ = load_model(weights, cfg=cfg or None, device=device)
    return Teacher(model).to(device)


# ------------------------------------------------------------------------------------------------ feature pairs
@torch.no_grad()
def layer_shapes(model, img_size):
    """Output shape ``(C, H, W)`` of every layer for a ``(1, 3, img_size, img_size)`` input; ``None`` for [yolo].

    A dry forward in eval mode (BN statistics untouched); the model's mode is restored.
    """
    net = de_parallel(model)
    net = net.model if isinstance(net, Teacher) else net
    was_training = net.training
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    channels = int(net.net.get("channels", 3))
    net.eval()
    try:
        x = torch.zeros(1, channels, img_size, img_size, device=device)
        _, feats = net(x, features=list(range(len(net.module_list))))
    finally:
        net.train(was_training)
    return [tuple(f.shape[1:]) if f.dim() == 4 else None for f in feats]


def _fmt(shape):
    return "x".join(str(v) for v in shape) if shape else "[yolo] output"


def _name(model):
    net = de_parallel(model)
    net = net.model if isinstance(net, Teacher) else net
    return str(getattr(net, "cfg_path", "cfg")).replace("\\", "/").split("/")[-1]


def _stage_output(shapes, yolo_layers, model, size):
    """The layer that ends the network's first pass at spatial ``size`` (H, W): the backbone stage output.

    The last layer at ``size`` before the first layer at a coarser size (yolov3: 36 at 52x52, 61 at 26x26); at the
    coarsest size, the last layer at ``size`` that a later route takes (the head's branch point, yolov3: 79).
    """
    net = de_parallel(model)
    net = net.model if isinstance(net, Teacher) else net
    last = None
    for i, s in enumerate(shapes):
        if s is None:
            continue
        hw = s[1:]
        if hw == size:
            last = i
        elif last is not None and hw[0] * hw[1] < size[0] * size[1]:
            return last
        elif last is not None and hw[0] * hw[1] > size[0] * size[1]:
            break  # the head begins (upsample or route to a finer layer)
    first_yolo = min(yolo_layers) if yolo_layers else len(shapes)
    routed = sorted({j for m in net.module_list for j in getattr(m, "sources", ())
                     if j < first_yolo and shapes[j] is not None and shapes[j][1:] == size})
    if routed:
        return routed[-1]
    at_size = [i for i in range(first_yolo) if shapes[i] is not None and shapes[i][1:] == size]
    return at_size[-1] if at_size else None


def stage_feature_pairs(student, teacher, img_size, n=1, s_shapes=None, t_shapes=None):
    """Up to ``n`` pairs of layers of the same resolution: the stage outputs at the strides both networks detect at,
    finest first. Returns ``(student indexes, teacher indexes)``; a stride where either network has no such layer
    is skipped.

    yolov3 -> yolov3-tiny: ``([8, 13], [61, 79])`` (26x26 and 13x13 at 416); yolov3 -> yolov3: ``[36, 61, 79]``.
    """
    s_net, t_net = _darknet(student), _darknet(teacher)
    s_shapes = s_shapes or layer_shapes(s_net, img_size)
    t_shapes = t_shapes or layer_shapes(t_net, img_size)
    s_strides = {float(s_net.module_list[i].stride) for i in s_net.yolo_layers}
    t_strides = {float(t_net.module_list[i].stride) for i in t_net.yolo_layers}
    common = sorted(s_strides & t_strides) or sorted(s_strides | t_strides)
    out_s, out_t = [], []
    for stride in common:
        size = (math.ceil(img_size / stride), math.ceil(img_size / stride))
        s = _stage_output(s_shapes, s_net.yolo_layers, s_net, size)
        t = _stage_output(t_shapes, t_net.yolo_layers, t_net, size)
        if s is not None and t is not None and len(out_s) < n:
            out_s.append(s)
            out_t.append(t)
    if not out_s:
        raise UserError(f"{_name(s_net)} and {_name(t_net)}: found no layers of the same resolution to pair; "
                        f"give --student-features and --teacher-features")
    return out_s, out_t


def default_feature_pairs(student, teacher, img_size, s_shapes=None, t_shapes=None):
    """One pair of layers of the same resolution: the stage outputs at the finest stride both networks detect at.

    yolov3 -> YOLO Nano: teacher 36 (256x52x52) with Nano's block that feeds its 52x52 head; yolov3 -> yolov3-tiny:
    teacher 61 (512x26x26) with tiny's 8 (256x26x26). Returns ``([student index], [teacher index])``.
    """
    return stage_feature_pairs(student, teacher, img_size, 1, s_shapes, t_shapes)


def _darknet(model):
    net = de_parallel(model)
    return net.model if isinstance(net, Teacher) else net


def check_pairs(student, teacher, student_features, teacher_features, img_size, s_shapes=None, t_shapes=None):
    """Validate a distillation set-up before training; every problem is a one-line ``UserError``.

    Class counts and input channels equal; as many student as teacher feature indexes; every index inside its
    network and not a [yolo] layer; each pair of the same spatial size at ``img_size`` (a dry forward). Returns
    ``(student shapes, teacher shapes)`` of the paired layers, ``[(C, H, W)]``.
    """
    s_net, t_net = _darknet(student), _darknet(teacher)
    s_name, t_name = _name(s_net), _name(t_net)
    if s_net.nc != t_net.nc:
        raise UserError(f"teacher {t_name} has {t_net.nc} classes, student {s_name} has {s_net.nc}: "
                        f"distillation needs the same classes")
    s_ch, t_ch = s_net.net.get("channels", 3), t_net.net.get("channels", 3)
    if s_ch != t_ch:
        raise UserError(f"teacher {t_name} takes {t_ch}-channel images, student {s_name} {s_ch}-channel ones")
    student_features, teacher_features = list(student_features or []), list(teacher_features or [])
    if len(student_features) != len(teacher_features):
        raise UserError(f"--student-features has {len(student_features)} layer(s), --teacher-features "
                        f"{len(teacher_features)}: give one student and one teacher layer per pair")
    for flag, net, name, idx in (("--student-features", s_net, s_name, student_features),
                                 ("--teacher-features", t_net, t_name, teacher_features)):
        n = len(net.module_list)
        for i in idx:
            if not 0 <= i < n:
                raise UserError(f"{flag} {i}: {name} has layers 0..{n - 1} (see python models.py --cfg {name})")
    if not student_features:
        return [], []
    s_shapes = s_shapes or layer_shapes(s_net, img_size)
    t_shapes = t_shapes or layer_shapes(t_net, img_size)
    out_s, out_t = [], []
    for i, j in zip(student_features, teacher_features):
        for flag, name, k, shapes in (("--student-features", s_name, i, s_shapes),
                                      ("--teacher-features", t_name, j, t_shapes)):
            if shapes[k] is None:
                raise UserError(f"{flag} {k}: layer {k} of {name} is a [yolo] layer; pair the conv before it "
                                f"({k - 1}) instead")
        if s_shapes[i][1:] != t_shapes[j][1:]:
            raise UserError(f"student {s_name} layer {i} ({_fmt(s_shapes[i])}) and teacher {t_name} layer {j} "
                            f"({_fmt(t_shapes[j])}) differ in spatial size at --img-size {img_size}; "
                            f"pair layers of the same resolution")
        out_s.append(s_shapes[i])
        out_t.append(t_shapes[j])
    return out_s, out_t


# ------------------------------------------------------------------------------------------- adaptation layers
class AdaptationLayer(nn.Conv2d):
    """Chen et al.'s adaptation layer ``r``: a conv from student to teacher channels (1x1, or 3x3 with padding 1).

    It starts near zero (weights ``N(0, 0.1^2 / fan_in)``, bias 0): the output is about a tenth of the student map's
    scale, so the first hint gradients do not drag the student through a random projection (with PyTorch's default
    init a Nano map of large magnitude gave hints 10x the teacher map's energy); the layer learns the map first.
    """

    def __init__(self, c_student, c_teacher, kernel=1):
        if kernel not in (1, 3):
            raise UserError(f"--adapt-kernel {kernel}: use 1 or 3")
        super().__init__(c_student, c_teacher, kernel, padding=kernel // 2, bias=True)
        with torch.no_grad():
            self.weight.normal_(0.0, 0.1 / math.sqrt(c_student * kernel * kernel))
            self.bias.zero_()

    @torch.no_grad()
    def identity_(self):
        """Set the layer to the identity map (needs equal channel counts); returns itself."""
        if self.in_channels != self.out_channels:
            raise ValueError(f"identity adaptation needs equal channels, not {self.in_channels}->{self.out_channels}")
        self.weight.zero_()
        k = self.kernel_size[0] // 2
        self.weight[:, :, k, k] = torch.eye(self.out_channels)
        self.bias.zero_()
        return self


class HintAdapters(nn.Module):
    """One ``AdaptationLayer`` per feature pair; ``forward(list of student maps) -> list of adapted maps``."""

    def __init__(self, student_channels, teacher_channels, kernel=1):
        super().__init__()
        self.layers = nn.ModuleList(AdaptationLayer(cs, ct, kernel)
                                    for cs, ct in zip(student_channels, teacher_channels))

    def forward(self, feats):
        return [m(f) for m, f in zip(self.layers, feats)]


# ------------------------------------------------------------------------------------------------------ losses
def hint_loss(adapted, target, kind="l2"):
    """Chen et al. eq. 5: ``mean((r(F_s) - F_t)^2)`` (``l2``) or ``mean(|r(F_s) - F_t|)`` (``l1``), in fp32."""
    if adapted.shape != target.shape:
        raise UserError(f"hint: adapted student map {tuple(adapted.shape)} and teacher map {tuple(target.shape)} "
                        f"differ")
    d = adapted.float() - target.float().detach()
    return d.abs().mean() if kind == "l1" else d.pow(2).mean()


def binary_kl(z_s, z_t, temperature=1.0):
    """Elementwise ``KL(sigma(z_t/T) || sigma(z_s/T))`` = ``BCE(sigma(z_s/T), sigma(z_t/T)) - H(sigma(z_t/T))``.

    Same gradient in ``z_s`` as the BCE of the soft target; exactly 0 where ``z_s == z_t``. fp32, ``z_t`` detached.
    """
    a = z_s.float() / temperature
    b = z_t.float().detach() / temperature
    q = torch.sigmoid(b)
    return (F.binary_cross_entropy_with_logits(a, q, reduction="none")
            - F.binary_cross_entropy_with_logits(b, q, reduction="none"))


def match_heads(student, teacher):
    """Pair each student YOLO scale with the teacher's of the same stride.

    Returns one entry per student YOLO layer: ``None`` (no teacher scale of that stride) or ``(j, amap)`` with
    ``j`` the teacher's YOLO position and ``amap`` a long tensor mapping each student anchor to the teacher anchor
    closest in shape (identity when the anchors are equal).
    """
    s_net, t_net = _darknet(student), _darknet(teacher)
    t_layers = [t_net.module_list[i] for i in t_net.yolo_layers]
    pairs = []
    for i in s_net.yolo_layers:
        ls = s_net.module_list[i]
        js = [j for j, lt in enumerate(t_layers) if abs(float(lt.stride) - float(ls.stride)) < 1e-6]
        if not js:
            pairs.append(None)
            continue
        a_s, a_t = ls.anchors.float().cpu(), t_layers[js[0]].anchors.float().cpu()
        d = (a_s[:, None, :].log() - a_t[None, :, :].log()).abs().amax(2)  # (na_s, na_t)
        pairs.append((js[0], d.argmin(1)))
    return pairs


CLASS_CELLS = ("all", "objects")  # --kd-class-cells


def check_class_cells(class_cells):
    if class_cells not in CLASS_CELLS:
        raise UserError(f"--kd-class-cells {class_cells}: use {' or '.join(CLASS_CELLS)}")
    return class_cells


def anchor_mismatches(student, teacher, pairs, thr=4.0):
    """``(student scale, student anchor, teacher anchor, ratio)`` for each student anchor whose paired teacher anchor
    (``match_heads``) differs in width or height by a ratio of ``thr`` (the loss's ``anchor_t``) or more: there the
    two objectness outputs answer for boxes of different sizes, so the soft target misleads."""
    s_net, t_net = _darknet(student), _darknet(teacher)
    out = []
    for scale, (i, pair) in enumerate(zip(s_net.yolo_layers, pairs)):
        if pair is None:
            continue
        j, amap = pair
        a_s = s_net.module_list[i].anchors.float().cpu()
        a_t = t_net.module_list[t_net.yolo_layers[j]].anchors.float().cpu()[amap.cpu()]
        ratio = (a_s / a_t).log().abs().amax(1).exp()
        out += [(scale, a_s[k].tolist(), a_t[k].tolist(), float(ratio[k])) for k in range(len(a_s)) if ratio[k] >= thr]
    return out


def soft_target_loss(p_s, p_t, pairs, temperature=1.0, object_weight=1.0, obj_gains=None, cls_gain=1.0,
                     class_cells="all"):
    """Soft-target loss over every anchor cell (module docstring); returns ``(objectness term, class term)``.

    ``p_s``/``p_t``: raw per-scale outputs ``(bs, na, ny, nx, 5 + nc)`` of student and teacher; ``pairs`` from
    ``match_heads``; ``obj_gains`` per student scale (``balance_i * obj gain``; default 1); ``cls_gain`` the class
    gain. Per scale: ``mean over cells of w * KL`` with ``w = 1 + (object_weight - 1) * sigma(z_t,obj)``.
    ``class_cells="objects"``: the class term is instead the mean of the class KL weighted by the teacher's
    objectness probability, ``sum(sigma(z_t,obj) * KL) / sum(sigma(z_t,obj))``: YOLO's class outputs are
    ``p(class | object)``, trained at positives only, so where the teacher sees background they carry nothing to
    imitate (the weighted mean keeps the term on the scale of the hard class loss, a mean over positives).
    """
    check_class_cells(class_cells)
    device = p_s[0].device
    lobj = torch.zeros((), device=device)
    lcls = torch.zeros((), device=device)
    t2 = temperature ** 2
    for i, pair in enumerate(pairs):
        if pair is None:
            continue
        j, amap = pair
        ps, pt = p_s[i], p_t[j][:, amap.to(p_t[j].device)]
        if ps.shape[:4] != pt.shape[:4]:
            raise UserError(f"soft targets: student scale {i} {tuple(ps.shape[:4])} and teacher scale {j} "
                            f"{tuple(pt.shape[:4])} differ (images of different sizes?)")
        zt_obj = pt[..., 4].float()
        w = 1.0 + (object_weight - 1.0) * torch.sigmoid(zt_obj)
        gain = 1.0 if obj_gains is None else obj_gains[i]
        lobj = lobj + gain * (w * binary_kl(ps[..., 4], zt_obj, temperature)).mean() * t2
        if ps.shape[-1] > 6:  # one class: objectness says it all (as in the detection loss)
            kl = binary_kl(ps[..., 5:], pt[..., 5:], temperature).mean(-1)
            if class_cells == "objects":
                p_obj = torch.sigmoid(zt_obj)
                lcls = lcls + cls_gain * (p_obj * kl).sum() / p_obj.sum().clamp(min=1e-6) * t2
            else:
                lcls = lcls + cls_gain * (w * kl).mean() * t2
    return lobj, lcls


def regression_params(ps, anchors):
    """YOLOv3's regression outputs at matched anchors: ``(sigma(t_x), sigma(t_y), log w, log h)``, grid units, fp32.

    ``log w = t_w + log anchor_w`` (``t_wh`` clamped at ``ln 1000`` as in the loss).
    """
    ps = ps.float()
    return torch.cat((ps[:, 0:2].sigmoid(), ps[:, 2:4].clamp(max=MAX_WH_LOG) + anchors.float().log()), 1)


def regression_error(ps, anchors, tbox):
    """``||R - y||^2`` per box: ``R = regression_params(ps, anchors)``, ``y = (x, y, log w, log h)`` of ``tbox``."""
    y = torch.cat((tbox[:, 0:2].float(), tbox[:, 2:4].float().clamp(min=1e-9).log()), 1)
    return (regression_params(ps, anchors) - y).pow(2).sum(1)


def bounded_regression_loss(err_s, err_t, margin):
    """Chen et al. eq. 4 per box, less the teacher's (constant) error where active.

    Active where ``err_s + margin > err_t``: the value is ``err_s - err_t`` (gradient: eq. 4's ``d err_s``);
    elsewhere 0. Zero where the student beats the teacher by more than ``margin``, positive where it is worse,
    0 where they are equal, never below ``-margin``.
    """
    err_t = err_t.detach().to(err_s.dtype)
    active = err_s.detach() + margin > err_t
    return torch.where(active, err_s - err_t, torch.zeros_like(err_s))


def teacher_bounded_loss(p_s, p_t, pairs, build, teacher_anchors, margin):
    """Mean of ``bounded_regression_loss`` over the student's positive anchors of the scales the teacher has.

    ``build``: ``build_targets(p_s, targets)`` output ``(tcls, tbox, indices, anchors)``; ``teacher_anchors``: per
    teacher YOLO layer its anchors in grid units ``(na_t, 2)``.
    """
    _, tbox, indices, anchors = build
    losses = []
    for i, pair in enumerate(pairs):
        if pair is None:
            continue
        b, a, gj, gi = indices[i]
        if not b.numel():
            continue
        j, amap = pair
        at = amap.to(a.device)[a]
        err_s = regression_error(p_s[i][b, a, gj, gi], anchors[i], tbox[i])
        err_t = regression_error(p_t[j][b, at, gj, gi].detach(), teacher_anchors[j].to(a.device)[at], tbox[i])
        losses.append(bounded_regression_loss(err_s, err_t, margin))
    if not losses:
        return torch.zeros((), device=p_s[0].device)
    return torch.cat(losses).mean()


# ------------------------------------------------------------------------------------------------------ plug-ins
class TeacherPlugin(Plugin):
    """Base of the distillation plug-ins: a frozen teacher, feature pairs and their adaptation layers.

    ``teacher``: a ``Teacher`` (``load_teacher``) or a Darknet; ``student_features``/``teacher_features``: layer
    indexes, one per pair (``None`` for ``default_feature_pairs``, ``[]`` for no pairs); ``adapt_kernel``: 1 or 3.
    ``check(student, img_size)`` validates (one-line errors) and may run before ``setup``. Each step,
    ``run_teacher(imgs)`` gives ``(p_t, {index: teacher map})``; ``adapt(features)`` the adapted student maps.
    The adaptation layers are in ``modules()`` (trained by the main optimiser) and in ``state_dict()`` (resume),
    never in the exported checkpoint's ``model``.
    """

    name = "teacher"

    def __init__(self, teacher, student_features=None, teacher_features=None, adapt_kernel=1, img_size=416,
                 use_features=True):
        self.teacher = teacher if isinstance(teacher, Teacher) else Teacher(teacher)
        self.student_features = None if student_features is None else list(student_features)
        self.teacher_features = None if teacher_features is None else list(teacher_features)
        self.adapt_kernel = int(adapt_kernel or 1)
        self.img_size = img_size
        self.use_features = use_features
        self.adapters = None
        self._ddp_adapters = None
        self.pairs = []
        self.checked = False
        self.feature_layers = ()

    # -- validation, before training -------------------------------------------------------------------
    def check(self, student, img_size=None):
        """Validate against ``student`` and build the adaptation layers; returns ``self``."""
        img_size = img_size or self.img_size
        s_net, t_net = _darknet(student), self.teacher.model
        self.img_size = img_size
        if self.use_features and (self.student_features is None) != (self.teacher_features is None):
            given = "--student-features" if self.student_features is not None else "--teacher-features"
            missing = "--teacher-features" if self.student_features is not None else "--student-features"
            raise UserError(f"{given} needs {missing} too (one teacher layer per student layer), or neither")
        # classes and channels first: cheap, and the most common mistake
        check_pairs(s_net, t_net, [], [], img_size)
        s_shapes = t_shapes = None
        if self.use_features:
            if self.student_features is None:
                s_shapes, t_shapes = layer_shapes(s_net, img_size), layer_shapes(t_net, img_size)
                self.student_features, self.teacher_features = default_feature_pairs(
                    s_net, t_net, img_size, s_shapes, t_shapes)
            s_sh, t_sh = check_pairs(s_net, t_net, self.student_features, self.teacher_features, img_size,
                                     s_shapes, t_shapes)
        else:
            self.student_features, self.teacher_features, s_sh, t_sh = [], [], [], []
        self.pair_shapes = list(zip(s_sh, t_sh))
        if self.adapters is None or [m.in_channels for m in self.adapters.layers] != [s[0] for s in s_sh] \
                or [m.out_channels for m in self.adapters.layers] != [t[0] for t in t_sh]:
            self.adapters = HintAdapters([s[0] for s in s_sh], [t[0] for t in t_sh], self.adapt_kernel)
        self.feature_layers = tuple(self.student_features)
        self.head_pairs = match_heads(s_net, t_net)
        self.teacher_anchors = [t_net.module_list[i].anchors.float() / float(t_net.module_list[i].stride)
                                for i in t_net.yolo_layers]
        self.checked = True
        return self

    def describe(self):
        """Lines saying what is distilled (printed at setup)."""
        s = [f"distilling features: student {i} ({_fmt(ss)}) <- teacher {j} ({_fmt(ts)}) via {self.adapt_kernel}x"
             f"{self.adapt_kernel} adaptation" for i, j, (ss, ts) in
             zip(self.student_features, self.teacher_features, self.pair_shapes)]
        missing = [i for i, p in enumerate(self.head_pairs) if p is None]
        if missing:
            s.append(f"note: the teacher has no YOLO scale of the student's stride for student scale(s) {missing}; "
                     f"soft and bounded terms skip them")
        return s

    # -- engine hooks ---------------------------------------------------------------------------------
    def setup(self, trainer):
        if not self.checked:
            self.check(trainer.model, trainer.img_size)
        self.head_pairs = match_heads(trainer.model, self.teacher.model)  # --autoanchor may have refitted them
        thr = trainer.hyp["anchor_t"]
        mismatches = anchor_mismatches(trainer.model, self.teacher.model, self.head_pairs, thr) if trainer.main else []
        for scale, a_s, a_t, r in mismatches:
            trainer.log(f"note: student scale {scale} anchor {a_s[0]:.0f}x{a_s[1]:.0f} is paired with teacher anchor "
                        f"{a_t[0]:.0f}x{a_t[1]:.0f} (ratio {r:.1f} >= anchor_t {thr:g}): their objectness covers "
                        f"boxes of other sizes; anchors fitted to the data (--autoanchor) on both match better")
        self.place(trainer)
        self.log_description(trainer)

    def place(self, trainer):
        """The teacher (eval mode) and the adaptation layers on the trainer's device and memory format; the layers
        with parameters wrapped in DDP when training is distributed."""
        self.teacher.to(trainer.device).to(memory_format=trainer.fmt)
        self.teacher.eval()
        self.adapters.to(trainer.device).to(memory_format=trainer.fmt)
        self._ddp_adapters = None
        if dist.is_available() and dist.is_initialized() and any(p.requires_grad for p in self.adapters.parameters()):
            self._ddp_adapters = ddp(self.adapters, trainer.device)

    def log_description(self, trainer):
        if trainer.main:
            for line in self.describe():
                trainer.log(line)

    def modules(self):
        return [self.adapters] if self.adapters is not None and len(self.adapters.layers) else []

    def before_epoch(self, trainer, epoch):
        self.teacher.eval()  # cannot be in train mode (Teacher.train is a no-op); kept for clarity

    def run_teacher(self, imgs):
        """The teacher on ``imgs`` (no gradients, eval mode): ``(p_t, {teacher index: map})``."""
        p_t, feats = self.teacher(imgs, self.teacher_features)
        return p_t, dict(zip(self.teacher_features, feats))

    def adapt(self, features):
        """Adapted student maps, one per pair, from the engine's ``{index: map}``."""
        module = self._ddp_adapters or self.adapters
        return module([features[i] for i in self.student_features])

    def state_dict(self):
        return {"adapters": {k: v.detach().cpu() for k, v in self.adapters.state_dict().items()},
                "student_features": list(self.student_features), "teacher_features": list(self.teacher_features)}

    def load_state_dict(self, state):
        if not state:
            return
        if list(state.get("student_features", [])) != list(self.student_features) or \
                list(state.get("teacher_features", [])) != list(self.teacher_features):
            raise UserError(f"resume: the run distilled features {state.get('student_features')} <- "
                            f"{state.get('teacher_features')}, not {self.student_features} <- {self.teacher_features}")
        self.adapters.load_state_dict(state["adapters"])


# What --kd-mu scales: the whole detection loss, the objectness and class terms (Chen et al.'s classification loss,
# whose background class YOLO's objectness plays), or the class term alone (the original project's kd_classical.py)
class DistillPlugin(TeacherPlugin):
    """Chen et al. 2017 classical distillation as engine terms ``{'hint', 'soft', 'bound'}`` (module docstring).

    Weights: ``hint_weight`` (lambda), ``soft_weight`` (carried as ``(1 - mu) * soft_weight``; ``mu`` then scales
    the detection loss), ``bound_weight`` (nu, times the box gain); ``temperature`` T, ``mu``, ``margin`` m,
    ``object_weight`` (cells the teacher sees as objects vs background), ``hint_kind`` ``l2``/``l1``. A term whose
    weight is 0 is not computed and not logged.
    """

    name = "distill"

    def __init__(self, teacher, settings=None, img_size=416, **changes):
        """``settings``: a ``KDSettings`` (default: its fallbacks, what my_kd.py does with no flags); ``changes``:
        fields to override."""
        self.settings = k = (settings or KDSettings()).but(**changes)
        super().__init__(teacher, k.student_features, k.teacher_features, k.adapt_kernel, img_size,
                         use_features=bool(k.hint_weight))
        self.hint_weight, self.soft_weight = float(k.hint_weight), float(k.soft_weight)
        self.bound_weight = float(k.bound_weight)
        self.temperature, self.mu, self.margin = float(k.kd_temperature), float(k.kd_mu), float(k.kd_margin)
        self.object_weight, self.hint_kind = float(k.kd_object_weight), k.hint_loss
        self.class_cells, self.mu_scope = k.kd_class_cells, k.kd_mu_scope

    @classmethod
    def from_args(cls, args, teacher=None):
        """The plug-in ``my_kd.py`` builds from its resolved arguments (teacher loaded on the CPU if not given)."""
        k = KDSettings.from_args(args)
        teacher = teacher or load_teacher(k.teacher_cfg, k.teacher_weights)
        return cls(teacher, k, ModelSettings.from_args(args).img_size)

    def detection_loss_scale(self, trainer):
        if not self.soft_weight:
            return 1.0
        return {"detection": self.mu, "classification": {"obj": self.mu, "cls": self.mu},
                "class": {"cls": self.mu}}[self.mu_scope]

    def extra_loss(self, trainer, imgs, targets, outputs, features):
        return self.losses(imgs, targets, outputs, features, trainer.compute_loss)

    def losses(self, imgs, targets, outputs, features, compute_loss):
        """The weighted per-image terms for one batch: ``{'hint', 'soft', 'bound'}`` (those with a weight > 0).

        ``outputs``: the student's raw per-scale outputs; ``features``: ``{student index: map}``.
        """
        p_t, t_feats = self.run_teacher(imgs)  # under the caller's autocast, no gradients, eval mode
        terms = {}
        if self.hint_weight and self.student_features:
            adapted = self.adapt(features)
            with torch.autocast(imgs.device.type, enabled=False):
                h = [hint_loss(a, t_feats[j], self.hint_kind) for a, j in zip(adapted, self.teacher_features)]
                terms["hint"] = self.hint_weight * torch.stack(h).mean()
        with torch.autocast(imgs.device.type, enabled=False):
            if self.soft_weight:
                gains = [b * compute_loss.gains["obj"] for b in compute_loss.balance]
                lobj, lcls = soft_target_loss(outputs, p_t, self.head_pairs, self.temperature, self.object_weight,
                                              gains, compute_loss.gains["cls"], self.class_cells)
                terms["soft"] = (1.0 - self.mu) * self.soft_weight * (lobj + lcls)
            if self.bound_weight:
                build = compute_loss.build_targets(outputs, targets)
                lb = teacher_bounded_loss(outputs, p_t, self.head_pairs, build, self.teacher_anchors, self.margin)
                terms["bound"] = self.bound_weight * compute_loss.gains["box"] * lb
        return terms


def mask_plugin_for(ckpt):
    """The pruning module's ``MaskPlugin`` for a student checkpoint that holds ``masks`` (else ``None``)."""
    if not ckpt or not ckpt.get("masks"):
        return None

    return MaskPlugin(Masks.from_state_dict(ckpt["masks"]))


def student_plugins(args, model, plugin_cls, resume=None):
    """The distillation plug-in ``plugin_cls`` (validated against ``model``) and, for a pruned student, its mask
    plug-in, so that distilling into a pruned network keeps its mask fixed."""
    t, m = TeacherSettings.from_args(args), ModelSettings.from_args(args)
    plugins = [plugin_cls.from_args(args, load_teacher(t.teacher_cfg, t.teacher_weights)).check(model, m.img_size)]
    source = resume
    if source is None and str(m.weights or "").endswith(".pt"):
        source = load_checkpoint(m.weights)
    masks = mask_plugin_for(source)
    return plugins + ([masks] if masks is not None else [])


def run(args, plugin_cls):
    """What my_kd.py and my_kd_gan.py do once their arguments are parsed: prepare the run, add the plug-ins, train.

    A set-up error (teacher, feature pairs) leaves no empty run folder behind. Returns the run folder.
    """
    import os
    import shutil


    if not args.teacher_weights and not args.resume:
        raise UserError("--teacher-weights is required (a checkpoint .pt, or Darknet .weights with --teacher-cfg)")
    args, model, save_dir, resume = engine.prepare(args)
    try:
        plugins = student_plugins(args, model, plugin_cls, resume)
    except UserError:
        main_rank = os.environ.get("RANK", "-1") in ("-1", "0")
        if main_rank and resume is None and not any(p.is_file() for p in save_dir.rglob("*")):
            shutil.rmtree(save_dir, ignore_errors=True)
        raise
    trainer = engine.Trainer(args, model, save_dir, plugins=plugins, resume_ckpt=resume)
    trainer.fit()
    if trainer.main:
        print(f"results saved to {save_dir} (best.pt, last.pt, results.csv, results.png)")
    return save_dir


__all__ = ["Teacher", "load_teacher", "layer_shapes", "stage_feature_pairs", "default_feature_pairs", "check_pairs",
           "AdaptationLayer", "HintAdapters", "hint_loss", "binary_kl", "match_heads", "anchor_mismatches",
           "soft_target_loss", "regression_params",
           "regression_error", "bounded_regression_loss", "teacher_bounded_loss", "TeacherPlugin", "DistillPlugin",
           "mask_plugin_for", "student_plugins", "run"]

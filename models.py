"""Darknet ``.cfg`` networks in PyTorch: cfg parser, YOLO layer, Darknet ``.weights`` I/O (the summary CLI: utils/summary.py).

Implements the network side of YOLOv3 (Redmon & Farhadi 2018, arXiv 1804.02767) for any network written in
Darknet's cfg format. The parser is table-driven: ``SECTIONS`` maps a section name to its builder and its keys,
``ACTIVATIONS`` maps an activation name to a module factory, so a new section is one small builder function with
an ``@section(...)`` line, and a new activation is one table entry.

    python models.py --cfg cfg/yolov3.cfg --img-size 416 --nc 20    # per-layer table, then one JSON line
    python models.py --weights runs/train/exp/weights/best.pt
    python models.py --convert yolov3.weights yolov3.pt --cfg cfg/yolov3.cfg
    python models.py --convert yolov3.pt yolov3.weights

Choices worth knowing (see also docs/architecture.md):
- BatchNorm2d(momentum=0.03, eps=1e-4) for every ``batch_normalize=1`` conv: ultralytics' training values. Darknet
  itself averages its statistics with .01 per batch and divides by sqrt(var) + 1e-6, so a model read from ``.weights``
  holds Darknet's numbers exactly and its outputs differ from Darknet's only by that epsilon.
- A conv has a bias only without BN, unless ``bias=0/1`` says otherwise (our extension, for SE / FCA blocks).
- Compact-model sections ``[ep]``, ``[pep]`` (YOLO Nano), ``[bottleneck]`` (MobileNetV2/V3) and ``[se]``
  (squeeze-excite / FCA) are stacks of ConvBlocks and nn.Linear layers: see docs/models.md.
- ``[maxpool]`` pads like Darknet: ``size - 1`` cells in all, ``(size - 1) // 2`` of them before, where an out-of-range
  cell never wins the max; output size ``(w - 1) // stride + 1``. ``zero_pad=1`` (our extension) pads with zeros, as
  ultralytics/yolov3 does (for models trained there).
- Keys only Darknet's trainer reads (``jitter``, ``ignore_thresh``, ``scale_x_y``, ...) are accepted and ignored,
  and kept in the layer's dict as strings; ``[net]`` accepts any key.
- Eval-mode decoding always runs in float32 (also under autocast), so ``inf`` is float32.
"""
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

from utils.errors import UserError, at, cli
from utils.general import project_path

# ------------------------------------------------------------------------------------------------ activations

ACTIVATIONS = {
    "linear": None,
    "leaky": lambda: nn.LeakyReLU(0.1, inplace=True),
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "logistic": nn.Sigmoid,
    "tanh": nn.Tanh,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "hswish": nn.Hardswish,
    "hsigmoid": nn.Hardsigmoid,
}

# ------------------------------------------------------------------------------------------------ cfg parsing

REQUIRED = object()  # marks a key without a default
ANY = "*"  # a section that accepts any key ([net])
ALIASES = {"conv": "convolutional", "network": "net", "max": "maxpool", "avg": "avgpool",
           "inverted_residual": "bottleneck", "bneck": "bottleneck"}


def ints(s):
    """``'-1, 61'`` -> ``[-1, 61]``."""
    return [int(v) for v in s.split(",") if v]


def floats(s):
    """``'10,13, 16,30'`` -> ``[10.0, 13.0, 16.0, 30.0]``."""
    return [float(v) for v in s.split(",") if v]


TYPE_NAMES = {int: "an integer", float: "a number", str: "a word", ints: "integers separated by commas",
              floats: "numbers separated by commas"}


class Section(NamedTuple):
    build: object  # build(d, ctx) -> (module, out_channels, stride)
    keys: dict  # key -> (converter, default or REQUIRED)
    ignored: object  # keys accepted and ignored, or ANY


SECTIONS = {}


def section(name, ignored=(), **keys):
    """Register ``build`` as the builder of ``[name]`` with its keys: ``key=(converter, default)``."""
    def register(build):
        SECTIONS[name] = Section(build, keys, ignored if ignored == ANY else frozenset(ignored))
        return build
    return register


def read_sections(text, path):
    """Split cfg text into ``[(type, line, {key: (value, line)})]``; whitespace inside values is dropped."""
    sections = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise at(path, n, f"malformed section header {line!r}")
            kind = line[1:-1].strip()
            sections.append((ALIASES.get(kind, kind), n, {}))
        elif "=" in line:
            key, value = (s.strip() for s in line.split("=", 1))
            if not sections:
                raise at(path, n, f"'{key}=' before the first [section]")
            kind, _, keys = sections[-1]
            if key in keys:
                raise at(path, n, f"duplicate key '{key}' in [{kind}] (first given at line {keys[key][1]})")
            keys[key] = ("".join(value.split()), n)
        else:
            raise at(path, n, f"expected '[section]' or 'key=value', got {line!r}")
    return sections


def typed_def(kind, line, keys, path):
    """One section as a dict of typed values plus ``type``, ``_line`` (its header) and ``_lines`` (per key)."""
    if kind not in SECTIONS:
        raise at(path, line, f"unknown section [{kind}] (known: {', '.join(sorted(SECTIONS))})")
    spec = SECTIONS[kind]
    d = {"type": kind, "_line": line, "_lines": {k: ln for k, (_, ln) in keys.items()}}
    for key, (value, ln) in keys.items():
        if key in spec.keys:
            conv = spec.keys[key][0]
            try:
                d[key] = conv(value)
            except ValueError:
                raise at(path, ln, f"{key}={value}: expected {TYPE_NAMES[conv]} in [{kind}]") from None
        elif spec.ignored == ANY or key in spec.ignored:
            d[key] = value
        else:
            raise at(path, ln, f"unknown key '{key}' in [{kind}]")
    for key, (_, default) in spec.keys.items():
        if key not in d:
            if default is REQUIRED:
                raise at(path, line, f"[{kind}] is missing the required key '{key}'")
            d[key] = default
    return d


def parse_cfg(text, path):
    """Cfg text -> ``(net, module_defs)``: the ``[net]`` dict (defaults when absent) and one dict per layer."""
    defs = [typed_def(kind, line, keys, path) for kind, line, keys in read_sections(text, path)]
    net = defs.pop(0) if defs and defs[0]["type"] == "net" else typed_def("net", None, {}, path)
    for d in defs:
        if d["type"] == "net":
            raise at(path, d["_line"], "[net] must be the first section")
    if not defs:
        raise at(path, None, "no layers")
    return net, defs


def override_classes(defs, nc, path):
    """Set ``classes=nc`` in every ``[yolo]`` and ``filters=len(mask) * (5 + nc)`` in the conv before it."""
    if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
        raise UserError(f"{path}: nc must be a positive integer, got {nc!r}")
    for i, d in enumerate(defs):
        if d["type"] == "yolo":
            d["classes"] = nc
            if i > 0 and defs[i - 1]["type"] == "convolutional":
                defs[i - 1]["filters"] = len(yolo_mask(d, path)) * (5 + nc)


def yolo_mask(d, path):
    """The anchor indexes a ``[yolo]`` uses (all anchors when ``mask`` is absent), checked against ``num``."""
    n = len(d["anchors"]) // 2
    if len(d["anchors"]) % 2:
        raise at(path, line_of(d, "anchors"), f"anchors need pairs w,h; got {len(d['anchors'])} numbers")
    if d["num"] is not None and d["num"] != n:
        raise at(path, line_of(d, "num"), f"num={d['num']} but anchors lists {n} pairs")
    mask = d["mask"] if d["mask"] is not None else list(range(n))
    for m in mask:
        if not 0 <= m < n:
            raise at(path, line_of(d, "mask"), f"mask index {m} outside the {n} anchors")
    return mask


def line_of(d, key):
    """Line of ``key`` in a parsed section, else the section header's line."""
    return d.get("_lines", {}).get(key, d["_line"])


# ------------------------------------------------------------------------------------------------ layers

class ConvBlock(nn.Sequential):
    """``[convolutional]``: conv (+ BN) (+ activation), children named ``conv``, ``bn``, ``act``.

    Under the CPU's bf16 autocast a depthwise conv with a kernel of 3 or more runs in fp32 (and the BN and activation
    after it): oneDNN's bf16 depthwise backward is the slow path on AVX-512/AMX CPUs (a 5x5 one up to 5x slower than
    fp32), and fp32 makes a MobileNetV3-YOLO training step 1.56x faster here, YOLO Nano's and YOLOv3-Mobile's within
    the noise (BENCHMARKS.md, "Compact models"). 1x1 depthwise convs (per-channel scales, memory-bound: 15% slower in
    fp32) stay in bf16. CUDA is unaffected."""

    def __init__(self, c1, c2, k=1, s=1, p=0, g=1, bn=True, bias=None, act=None):
        layers = OrderedDict(conv=nn.Conv2d(c1, c2, k, s, p, groups=g, bias=(not bn) if bias is None else bias))
        if bn:
            layers["bn"] = nn.BatchNorm2d(c2, momentum=0.03, eps=1e-4)
        if act is not None:
            layers["act"] = act
        super().__init__(layers)
        self.fp32_on_cpu = g > 1 and g == c1 == c2 and k >= 3

    def forward(self, x):
        if self.fp32_on_cpu and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class Route(nn.Module):
    """``[route]``: concatenate earlier outputs along channels (Darknet ``groups``: keep chunk ``group_id`` of each)."""

    def __init__(self, sources, groups=1, group_id=0):
        super().__init__()
        self.sources, self.groups, self.group_id = sources, groups, group_id

    def forward(self, x, xs):
        if self.groups > 1:
            xs = [t.chunk(self.groups, 1)[self.group_id] for t in xs]
        return xs[0] if len(xs) == 1 else torch.cat(xs, 1)


class Shortcut(nn.Module):
    """``[shortcut]``: residual sum of the previous output and earlier outputs, then the activation."""

    def __init__(self, sources, act=None):
        super().__init__()
        self.sources, self.act = sources, act

    def forward(self, x, xs):
        for t in xs:
            x = x + t
        return x if self.act is None else self.act(x)


class ScaleChannels(nn.Module):
    """``[scale_channels]``: Darknet's squeeze-excite product, earlier output times this input per channel."""

    def __init__(self, sources, act=None):
        super().__init__()
        self.sources, self.act = sources, act

    def forward(self, x, xs):
        y = xs[0] * x
        return y if self.act is None else self.act(y)


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al. 2018): average pool, ``Linear C->h``, act, ``Linear h->C``, gate, scale the input.

    YOLO Nano's FCA (Wong et al. 2019) is this with ``h = C // 8`` and no biases; MobileNetV3's SE (Howard et al. 2019)
    has ``h = make_divisible(C / 4)``, biases and a hard-sigmoid gate.
    """

    def __init__(self, c, hidden, bias=True, act=None, gate=None):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(c, hidden, bias=bias)
        self.act = act if act is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden, c, bias=bias)
        self.gate = gate if gate is not None else nn.Identity()

    def forward(self, x):
        s = self.gate(self.fc2(self.act(self.fc1(self.pool(x).flatten(1)))))
        return x * s.to(x.dtype)[:, :, None, None]


class Block(nn.Sequential):
    """A composite section (``[ep]``, ``[pep]``, ``[bottleneck]``): its children in order, plus the input
    when ``residual``. Children are ``ConvBlock``s, an optional ``SqueezeExcite`` and activations, so ``.weights``
    I/O, pruning and thop see them like any other conv or linear layer."""

    def __init__(self, children, residual=False):
        super().__init__(OrderedDict(children))
        self.residual = residual

    def forward(self, x):
        y = super().forward(x)
        return x + y if self.residual else y


def make_divisible(v, divisor=8):
    """MobileNet's channel rounding: nearest multiple of ``divisor``, at least ``divisor``, never below 90% of ``v``."""
    n = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return n + divisor if n < 0.9 * v else n


class YOLOLayer(nn.Module):
    """``[yolo]``: reshape to ``(bs, na, ny, nx, 5 + nc)``; in eval mode also decode boxes to input pixels.

    Decode (YOLOv3): ``xy = (sigmoid(t_xy) + cell) * stride``, ``wh = exp(t_wh) * anchor``, objectness and
    classes ``sigmoid``. Anchors are in input pixels.
    """

    def __init__(self, anchors, nc, stride, index):
        super().__init__()
        self.na, self.nc, self.no = len(anchors), nc, nc + 5
        self.stride, self.index = float(stride), index
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(-1, 2), persistent=False)
        self._grids = {}

    def forward(self, x):
        bs, _, ny, nx = x.shape
        p = x.reshape(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
        return p if self.training else (self.decode(p), p)

    def decode(self, p):
        """Raw ``(bs, na, ny, nx, no)`` -> ``(bs, na * ny * nx, no)`` boxes xywh in pixels + probabilities (fp32)."""
        bs, na, ny, nx, no = p.shape
        q = p.float()
        xy = (q[..., :2].sigmoid() + self.grid(nx, ny, q.device)) * self.stride
        wh = q[..., 2:4].exp() * self.anchors.float().view(1, na, 1, 1, 2)
        return torch.cat((xy, wh, q[..., 4:].sigmoid()), -1).reshape(bs, -1, no)

    def grid(self, nx, ny, device):
        """Cell offsets ``(1, 1, ny, nx, 2)`` as ``[x, y]``, cached per size and device (not while exporting)."""
        key = (ny, nx, str(device))
        if key in self._grids and not exporting():
            return self._grids[key]
        yv, xv = torch.meshgrid(torch.arange(ny, device=device, dtype=torch.float32),
                                torch.arange(nx, device=device, dtype=torch.float32), indexing="ij")
        g = torch.stack((xv, yv), -1).view(1, 1, ny, nx, 2)
        if not exporting():
            self._grids[key] = g
        return g


def exporting():
    """True while TorchScript tracing or torch.export / dynamo is capturing the model."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


# ------------------------------------------------------------------------------------------------ section builders

class BuildContext:
    """What a builder sees: the layer index, input channels and stride, and every earlier layer's."""

    def __init__(self, path, in_channels):
        self.path, self.in_channels = path, in_channels
        self.defs, self.channels, self.strides = [], [], []

    @property
    def i(self):
        return len(self.channels)

    @property
    def c(self):
        return self.channels[-1] if self.channels else self.in_channels

    @property
    def s(self):
        return self.strides[-1] if self.strides else 1.0

    def error(self, d, message, key=None):
        return at(self.path, line_of(d, key) if key else d["_line"], message)

    def source(self, d, key, j):
        """Absolute index of layer ``j`` (relative when negative) named by ``key``; must be an earlier layer."""
        k = self.i + j if j < 0 else j
        if not 0 <= k < self.i:
            hint = f"layers 0..{self.i - 1}" if self.i else "no earlier layer"
            raise self.error(d, f"{key}={j} points outside the network (layer {self.i} can use {hint})", key)
        return k

    def activation(self, d, key="activation"):
        name = d[key]
        if name not in ACTIVATIONS:
            raise self.error(d, f"unknown activation '{name}' (known: {', '.join(ACTIVATIONS)})", key)
        make = ACTIVATIONS[name]
        return make() if make else None


def scaled(stride, factor):
    """Stride after a layer that multiplies it by ``factor`` (``None`` after a global pool stays ``None``)."""
    return None if stride is None else stride * factor


@section("net", ignored=ANY, width=(int, 416), height=(int, 416), channels=(int, 3))
def build_net(d, ctx):
    """Never a layer: ``parse_cfg`` takes the first ``[net]`` apart and rejects any other."""
    raise ctx.error(d, "[net] must be the first section")


@section("convolutional", filters=(int, REQUIRED), size=(int, 1), stride=(int, 1), pad=(int, 0),
         padding=(int, 0), groups=(int, 1), batch_normalize=(int, 0), bias=(int, None),
         activation=(str, "logistic"))
def build_conv(d, ctx):
    k, s, g, f = d["size"], d["stride"], d["groups"], d["filters"]
    for key in ("filters", "size", "stride", "groups"):
        if d[key] < 1:
            raise ctx.error(d, f"{key}={d[key]} must be at least 1", key)
    if ctx.c % g or f % g:
        raise ctx.error(d, f"groups={g} must divide the input channels ({ctx.c}) and filters ({f})", "groups")
    p = k // 2 if d["pad"] else d["padding"]
    bias = None if d["bias"] is None else bool(d["bias"])
    act = ctx.activation(d)
    return ConvBlock(ctx.c, f, k, s, p, g, bool(d["batch_normalize"]), bias, act), f, scaled(ctx.s, s)


@section("maxpool", size=(int, None), stride=(int, 1), padding=(int, None), zero_pad=(int, 0))
def build_maxpool(d, ctx):
    s = d["stride"]
    k = d["size"] if d["size"] is not None else s
    pad = d["padding"] if d["padding"] is not None else k - 1
    if k < 1 or s < 1 or pad < 0:
        raise ctx.error(d, f"size={k}, stride={s}, padding={pad}: need size, stride >= 1 and padding >= 0")
    if d["zero_pad"] not in (0, 1):
        raise ctx.error(d, f"zero_pad={d['zero_pad']}: 0 (Darknet's padding) or 1 (zeros)", "zero_pad")
    return darknet_maxpool(k, s, pad, bool(d["zero_pad"])), ctx.c, scaled(ctx.s, s)


def darknet_maxpool(k, s, pad, zero_pad=False):
    """Darknet max pooling: ``pad`` cells in all, ``pad // 2`` before; padded cells never win the max.

    Edge replication is used for asymmetric padding: a replicated edge value never exceeds the max of its window.
    ``zero_pad`` (the cfg key ``zero_pad=1``, our extension) pads with zeros instead, as ultralytics/yolov3 and the
    original project do for tiny's size-2 stride-1 pool: a zero beats negative activations at the border.
    """
    before, after = pad // 2, pad - pad // 2
    if zero_pad:
        return nn.Sequential(nn.ZeroPad2d((before, after, before, after)), nn.MaxPool2d(k, s))
    if before == after and before <= k // 2:
        return nn.MaxPool2d(k, s, padding=before)
    if before == 0 and s == k:
        return nn.MaxPool2d(k, s, ceil_mode=True)  # same windows; the partial last window clips like Darknet
    return nn.Sequential(nn.ReplicationPad2d((before, after, before, after)), nn.MaxPool2d(k, s))


@section("avgpool")
def build_avgpool(d, ctx):
    return nn.AdaptiveAvgPool2d(1), ctx.c, None


@section("upsample", stride=(int, 2))
def build_upsample(d, ctx):
    s = d["stride"]
    if s < 1:
        raise ctx.error(d, f"stride={s}: only up-sampling (stride >= 1) is supported", "stride")
    return nn.Upsample(scale_factor=s, mode="nearest"), ctx.c, scaled(ctx.s, 1 / s)


@section("dropout", probability=(float, 0.5))
def build_dropout(d, ctx):
    return nn.Dropout(d["probability"]), ctx.c, ctx.s


@section("route", layers=(ints, REQUIRED), groups=(int, 1), group_id=(int, 0))
def build_route(d, ctx):
    src = [ctx.source(d, "layers", j) for j in d["layers"]]
    if not src:
        raise ctx.error(d, "layers= is empty", "layers")
    same_resolution(ctx, d, "layers", src)
    g, gid = d["groups"], d["group_id"]
    if g < 1 or not 0 <= gid < g or any(ctx.channels[j] % g for j in src):
        raise ctx.error(d, f"groups={g}, group_id={gid} do not split channels "
                           f"{[ctx.channels[j] for j in src]} evenly", "groups")
    return Route(src, g, gid), sum(ctx.channels[j] for j in src) // g, ctx.strides[src[0]]


@section("shortcut", activation=(str, "linear"), **{"from": (ints, REQUIRED)})
def build_shortcut(d, ctx):
    src = [ctx.source(d, "from", j) for j in d["from"]]
    for j in src:
        if ctx.channels[j] != ctx.c:
            raise ctx.error(d, f"from={j - ctx.i} has {ctx.channels[j]} channels, the previous layer {ctx.c}", "from")
    same_resolution(ctx, d, "from", src + [ctx.i - 1])
    return Shortcut(src, ctx.activation(d)), ctx.c, ctx.s


@section("scale_channels", scale_wh=(int, 0), activation=(str, "linear"), **{"from": (int, REQUIRED)})
def build_scale_channels(d, ctx):
    j = ctx.source(d, "from", d["from"])
    if d["scale_wh"]:
        raise ctx.error(d, "scale_wh=1 is not supported", "scale_wh")
    if ctx.channels[j] != ctx.c:
        raise ctx.error(d, f"from={d['from']} has {ctx.channels[j]} channels, the previous layer {ctx.c}", "from")
    return ScaleChannels([j], ctx.activation(d)), ctx.c, ctx.strides[j]


# Compact-model sections (YOLO Nano, MobileNetV3): each is a short stack of ConvBlocks (+ SqueezeExcite), see
# docs/models.md for the definitions and how they map to the papers' blocks.

@section("se", reduction=(int, 4), divisor=(int, 0), bias=(int, 1), activation=(str, "relu"),
         gate=(str, "logistic"))
def build_se(d, ctx):
    """Squeeze-excite on the previous output; hidden ``C // reduction`` or, with ``divisor``, rounded by it."""
    r, div = d["reduction"], d["divisor"]
    if r < 1 or div < 0:
        raise ctx.error(d, f"reduction={r}, divisor={div}: need reduction >= 1 and divisor >= 0")
    hidden = make_divisible(ctx.c / r, div) if div else max(ctx.c // r, 1)
    return SqueezeExcite(ctx.c, hidden, bool(d["bias"]), ctx.activation(d), ctx.activation(d, "gate")), ctx.c, ctx.s


def check_positive(d, ctx, *keys):
    """Each of ``keys`` must be at least 1."""
    for key in keys:
        if d[key] < 1:
            raise ctx.error(d, f"{key}={d[key]} must be at least 1", key)


def separable(d, ctx, c1):
    """YOLO Nano's EP body on ``c1`` channels: 1x1 (c1) + act, 3x3 depthwise (stride) + act, 1x1 linear (filters)."""
    f, s = d["filters"], d["stride"]
    return [("expand", ConvBlock(c1, c1, 1, act=ctx.activation(d))),
            ("dw", ConvBlock(c1, c1, 3, s, 1, g=c1, act=ctx.activation(d))),
            ("linear", ConvBlock(c1, f, 1))]


@section("ep", filters=(int, REQUIRED), stride=(int, 1), activation=(str, "relu6"))
def build_ep(d, ctx):
    """YOLO Nano's expansion-projection block; residual when stride 1 and in = out."""
    check_positive(d, ctx, "filters", "stride")
    block = Block(separable(d, ctx, ctx.c), residual=d["stride"] == 1 and ctx.c == d["filters"])
    return block, d["filters"], scaled(ctx.s, d["stride"])


@section("pep", filters=(int, REQUIRED), project=(int, REQUIRED), stride=(int, 1), activation=(str, "relu6"))
def build_pep(d, ctx):
    """YOLO Nano's projection-expansion-projection block: 1x1 to ``project`` (the paper's x) + act, then EP."""
    check_positive(d, ctx, "filters", "project", "stride")
    x = d["project"]
    children = [("project", ConvBlock(ctx.c, x, 1, act=ctx.activation(d)))] + separable(d, ctx, x)
    block = Block(children, residual=d["stride"] == 1 and ctx.c == d["filters"])
    return block, d["filters"], scaled(ctx.s, d["stride"])


@section("bottleneck", filters=(int, REQUIRED), size=(int, 3), stride=(int, 1), expand=(float, 1.0),
         se=(int, 0), se_gate=(str, "logistic"), activation=(str, "relu"))
def build_bottleneck(d, ctx):
    """MobileNetV2/V3 inverted residual (V3's "bneck"; aliases ``[inverted_residual]``, ``[bneck]``).

    [1x1 expand + act], kxk depthwise (stride) + act, [SE], 1x1 linear. Hidden width ``make_divisible(in * expand)``;
    no expand conv when it equals the input width; SE squeezes to ``make_divisible(hidden / 4)`` with biases, ReLU
    and the ``se_gate``; residual when stride 1 and in = out.
    """
    check_positive(d, ctx, "filters", "size", "stride")
    if d["expand"] <= 0:
        raise ctx.error(d, f"expand={d['expand']:g} must be positive", "expand")
    k, s, f, c1 = d["size"], d["stride"], d["filters"], ctx.c
    hidden = make_divisible(c1 * d["expand"])
    children = [] if hidden == c1 else [("expand", ConvBlock(c1, hidden, 1, act=ctx.activation(d)))]
    children.append(("dw", ConvBlock(hidden, hidden, k, s, k // 2, g=hidden, act=ctx.activation(d))))
    if d["se"]:
        children.append(("se", SqueezeExcite(hidden, make_divisible(hidden / 4), True, nn.ReLU(inplace=True),
                                             ctx.activation(d, "se_gate"))))
    children.append(("linear", ConvBlock(hidden, f, 1)))
    return Block(children, residual=s == 1 and c1 == f), f, scaled(ctx.s, s)


YOLO_IGNORED = ("jitter", "ignore_thresh", "truth_thresh", "random", "scale_x_y", "iou_normalizer",
                "cls_normalizer", "obj_normalizer", "iou_loss", "iou_thresh", "iou_thresh_kind", "beta_nms",
                "nms_kind", "max_delta", "counters_per_class", "label_smooth_eps", "resize", "new_coords",
                "objectness_smooth", "delta_normalizer", "focal_loss", "max", "uc_normalizer")


@section("yolo", ignored=YOLO_IGNORED, mask=(ints, None), anchors=(floats, REQUIRED), classes=(int, REQUIRED),
         num=(int, None))
def build_yolo(d, ctx):
    mask = yolo_mask(d, ctx.path)
    nc = d["classes"]
    if nc < 1:
        raise ctx.error(d, f"classes={nc} must be at least 1", "classes")
    need = len(mask) * (5 + nc)
    if ctx.c != need:
        prev = ctx.defs[-1] if ctx.defs else d
        where = f"filters={ctx.c}" if prev["type"] == "convolutional" else f"layer {ctx.i - 1} gives {ctx.c} channels"
        raise ctx.error(prev, f"{where}, but the [yolo] at line {d['_line']} needs len(mask) * (5 + classes) = "
                              f"{len(mask)} * (5 + {nc}) = {need}", "filters")
    if ctx.s is None:
        raise ctx.error(d, "[yolo] after a global [avgpool] has no grid")
    anchors = [d["anchors"][2 * m: 2 * m + 2] for m in mask]
    return YOLOLayer(anchors, nc, ctx.s, ctx.i), ctx.c, ctx.s


def same_resolution(ctx, d, key, src):
    """Layers combined by a route or shortcut must share one stride."""
    strides = {ctx.strides[j] for j in src}
    if len(strides) > 1:
        got = ", ".join(f"{j}: stride {ctx.strides[j]:g}" if ctx.strides[j] else f"{j}: pooled" for j in src)
        raise ctx.error(d, f"{key} combines layers of different resolution ({got})", key)


def build_modules(defs, path, in_channels):
    """Build one module per layer definition; returns ``(module_list, channels, strides)``."""
    ctx = BuildContext(path, in_channels)
    modules = nn.ModuleList()
    for d in defs:
        module, c, s = SECTIONS[d["type"]].build(d, ctx)
        modules.append(module)
        ctx.defs.append(d)
        ctx.channels.append(c)
        ctx.strides.append(s)
    return modules, ctx.channels, ctx.strides


# ------------------------------------------------------------------------------------------------ the network

class Darknet(nn.Module):
    """A network built from a Darknet cfg; see ``docs/architecture.md`` for the contract.

    ``cfg`` is a path; ``cfg_text`` (or ``Darknet.from_text``) builds from text instead, ``cfg`` then only names it
    in messages. ``nc`` overrides the class count of every ``[yolo]`` and the filters of the conv before it.
    """

    def __init__(self, cfg, img_size=416, nc=None, cfg_text=None):
        super().__init__()
        self.cfg_path = str(cfg)
        self.cfg_text = read_cfg(cfg) if cfg_text is None else cfg_text
        self.img_size = img_size
        self.net, self.module_defs = parse_cfg(self.cfg_text, self.cfg_path)
        if nc is not None:
            override_classes(self.module_defs, nc, self.cfg_path)
        self.module_list, self.channels, self.strides = build_modules(self.module_defs, self.cfg_path,
                                                                      self.net["channels"])
        self.yolo_layers = [i for i, d in enumerate(self.module_defs) if d["type"] == "yolo"]
        self.nc = self._class_count()
        self._keep = {j for m in self.module_list for j in getattr(m, "sources", ())}
        self.version, self.seen = (0, 2, 0), 0
        init_output_biases(self)
        init_residual_branches(self)

    @classmethod
    def from_text(cls, text, name="<cfg>", img_size=416, nc=None):
        """Build from cfg text (e.g. a checkpoint's ``cfg``); ``name`` appears in error messages."""
        return cls(name, img_size=img_size, nc=nc, cfg_text=text)

    def _class_count(self):
        ncs = [self.module_list[i].nc for i in self.yolo_layers]
        for i, n in zip(self.yolo_layers, ncs):
            if n != ncs[0]:
                d = self.module_defs[i]
                raise at(self.cfg_path, line_of(d, "classes"), f"classes={n} differs from the first [yolo]'s {ncs[0]}")
        return ncs[0] if ncs else None

    @property
    def max_stride(self):
        """The largest YOLO stride (input sizes should be multiples of it)."""
        return max((int(self.module_list[i].stride) for i in self.yolo_layers), default=32)

    def check_img_size(self, img_size):
        """A ``UserError`` unless ``img_size`` is a multiple of ``max_stride`` (the heads' grids would not line up:
        a route concatenates maps of different sizes)."""
        if img_size % self.max_stride:
            raise UserError(f"--img-size {img_size} is not a multiple of the model's stride {self.max_stride}")

    def forward(self, x, features=None):
        """Training: list of raw ``(bs, na, ny, nx, no)``; eval: ``(inf, p)``; with ``features``: ``(out, feats)``."""
        keep = self._keep if not features else self._keep | set(self._check_features(features))
        outputs, p, inf = {}, [], []
        for i, m in enumerate(self.module_list):
            sources = getattr(m, "sources", None)
            if sources:
                x = m(x, [outputs[j] for j in sources])
            elif isinstance(m, YOLOLayer):
                y = m(x)  # the layer after a [yolo] sees the [yolo]'s input, as in Darknet
                if self.training:
                    p.append(y)
                else:
                    inf.append(y[0])
                    p.append(y[1])
                if i in keep:
                    outputs[i] = p[-1]
                continue
            else:
                x = m(x)
            if i in keep:
                outputs[i] = x
        out = p if self.training else (torch.cat(inf, 1) if inf else x, p)
        return out if features is None else (out, [outputs[i] for i in features])

    def _check_features(self, features):
        n = len(self.module_list)
        for i in features:
            if not isinstance(i, int) or not 0 <= i < n:
                raise UserError(f"{self.cfg_path}: feature layer {i!r} is outside the network (layers 0..{n - 1})")
        return features


def read_cfg(path):
    """The text of a cfg file, or a ``UserError`` naming it."""
    path = project_path(path)
    if not path.is_file():
        raise UserError(f"{path}: cfg file not found")
    return path.read_text()


def output_bias(layer):
    """The bias that sets a layer's raw output: the conv bias, or the BN bias of a conv without one."""
    if not isinstance(layer, ConvBlock):
        return None
    if layer.conv.bias is not None:
        return layer.conv.bias
    bn = getattr(layer, "bn", None)
    return bn.bias if bn is not None else None


def residual_branch_bns(model):
    """The last BN of every residual branch made of compact blocks, in layer order: of each ``[ep]`` / ``[pep]`` /
    ``[bottleneck]`` with its own residual, and of each such block whose output a ``[shortcut]`` adds to an earlier
    layer (YOLOv3-Mobile). Convs before a ``[shortcut]`` (yolov3.cfg) are not branches here."""
    bns = []
    for i, m in enumerate(model.module_list):
        if isinstance(m, Shortcut) and i > 0 and isinstance(model.module_list[i - 1], Block):
            branch = model.module_list[i - 1]
        elif isinstance(m, Block) and m.residual:
            branch = m
        else:
            continue
        bns.append([b for b in branch.modules() if isinstance(b, nn.BatchNorm2d)][-1])
    return bns


def init_residual_branches(model):
    """Start every residual branch made of compact blocks as the identity: zero scale of its last BN ("zero-gamma",
    Goyal et al. 2017, arXiv 1706.02677; the branches of ``residual_branch_bns``).

    Deep stacks of thin BN layers start with exploding gradients otherwise: YOLO Nano's gradient norm at init is
    ~2,000 (yolov3-tiny's ~10), ~140 with this; YOLOv3-Mobile's ~7,000, ~120 with it. Under Adam it still matters:
    without it Nano reaches half the mAP in its CPU budget (docs/models.md, "Ablations on a GPU").
    """
    with torch.no_grad():
        for bn in residual_branch_bns(model):
            bn.weight.zero_()


def init_output_biases(model):
    """Objectness and class priors for each conv feeding a ``[yolo]``: ~8 objects per 640 px image, p(class) ~ 0.6/nc.

    Objectness bias ``log(8 / (640 / stride)**2)``, class biases ``log(0.6 / (nc - 0.99))``, written into the
    parameter itself (the original's in-place edit of a copy silently did nothing).
    """
    for i in model.yolo_layers:
        yolo = model.module_list[i]
        bias = output_bias(model.module_list[i - 1]) if i > 0 else None
        if bias is None:
            continue
        with torch.no_grad():
            b = bias.view(yolo.na, yolo.no)
            b[:, 4] = math.log(8 / (640 / yolo.stride) ** 2)
            b[:, 5:] = math.log(0.6 / (yolo.nc - 0.99))


def output_convs(model):
    """The last conv of each layer that feeds a ``[yolo]``."""
    convs = []
    for i in model.yolo_layers:
        layer_convs = [m for m in model.module_list[i - 1].modules() if isinstance(m, nn.Conv2d)] if i > 0 else []
        convs += layer_convs[-1:]
    return convs


def prunable_parameters(model, include_output=False, skip_first=False):
    """``[(name, parameter)]`` of conv kernels (not BN, not biases, not linear layers), in module order.

    By default without the output convs that feed ``[yolo]`` layers; ``skip_first`` also leaves out the first conv.
    Names are those of ``model.named_parameters()`` (a DDP wrapper is unwrapped, so names never carry ``module.``).
    """
    net = model.module if isinstance(getattr(model, "module", None), Darknet) else model
    excluded = set() if include_output else {id(c) for c in output_convs(net)}
    convs = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    if skip_first:
        convs = convs[1:]
    return [(f"{n}.weight", m.weight) for n, m in convs if id(m) not in excluded]


# ------------------------------------------------------------------------------------------------ Darknet .weights

def darknet_tensors(model):
    """The tensors of a ``.weights`` file in file order.

    Per ``ConvBlock`` (in ``model.modules()`` order): BN bias, weight, running mean, running var (or the conv bias
    when there is no BN; nothing when neither), then the kernel. Per ``nn.Linear``: bias, then weight.
    """
    tensors = []
    for m in model.modules():
        if isinstance(m, ConvBlock):
            bn = getattr(m, "bn", None)
            if bn is not None:
                tensors += [bn.bias, bn.weight, bn.running_mean, bn.running_var]
            elif m.conv.bias is not None:
                tensors.append(m.conv.bias)
            tensors.append(m.conv.weight)
        elif isinstance(m, nn.Linear):
            tensors += ([m.bias] if m.bias is not None else []) + [m.weight]
    return tensors


def darknet_file_bytes(model):
    """Bytes of the ``.weights`` file of ``model``: 20-byte header + float32 values."""
    return 20 + 4 * sum(t.numel() for t in darknet_tensors(model))


def load_darknet_weights(model, path):
    """Read a Darknet ``.weights`` file into ``model``; a size that does not fit the cfg is a ``UserError``.

    Header: int32 major, minor, revision, then images seen (int64 when ``major*10 + minor >= 2``, else int32).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    data = path.read_bytes()
    tensors = darknet_tensors(model)
    floats_needed = sum(t.numel() for t in tensors)
    major, minor, revision = (int(v) for v in np.frombuffer(data[:12], "<i4")) if len(data) >= 12 else (0, 2, 0)
    header = 20 if major * 10 + minor >= 2 and major < 1000 and minor < 1000 else 16
    expected = header + 4 * floats_needed
    if len(data) != expected:
        kind = "too short" if len(data) < expected else "too long"
        raise UserError(f"{path}: {kind} for {Path(model.cfg_path).name}: expected {expected:,} bytes "
                        f"({header}-byte header + {floats_needed:,} float32 values), file has {len(data):,} bytes")
    seen = int(np.frombuffer(data[12:header], "<i8" if header == 20 else "<i4")[0])
    values = np.frombuffer(data, "<f4", count=floats_needed, offset=header)
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(torch.from_numpy(values[offset:offset + n].copy()).view_as(t))
            offset += n
    model.version, model.seen = (major, minor, revision), seen
    return model


def save_darknet_weights(model, path):
    """Write ``model`` as a Darknet ``.weights`` file (version 0.2.0, int64 images seen), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.array([0, 2, 0], "<i4").tofile(f)
        np.array([getattr(model, "seen", 0)], "<i8").tofile(f)
        for t in darknet_tensors(model):
            t.detach().cpu().float().numpy().astype("<f4").tofile(f)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------------ checkpoint

def make_checkpoint(model, names=None):
    """A minimal toolkit checkpoint (see docs/architecture.md) for a converted model."""
    nc = model.nc
    return {"cfg": model.cfg_text, "cfg_name": Path(model.cfg_path).name, "nc": nc,
            "names": list(names) if names else [str(i) for i in range(nc or 0)], "img_size": model.img_size,
            "model": {k: v.detach().float() if v.is_floating_point() else v for k, v in model.state_dict().items()},
            "epoch": -1, "best_fitness": None, "args": {}}


if __name__ == "__main__":
    from utils.summary import main  # the summary / conversion CLI lives above the artefact layer

    cli(main)

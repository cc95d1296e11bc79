"""Deployment artefacts: folding away empty channels, cfg text for a changed network, ONNX, Darknet ``.weights``.

Folding empty channels (``export.py --fold-empty-channels``)
----------------------------------------------------------
An output channel of a conv whose kernel is entirely zero (continuous sparsification at 99% kills whole filters)
computes a constant: ``k = act(BN(b))`` with ``b`` the conv bias (0 without one). The constant travels unchanged
through ``[maxpool]``, ``[upsample]``, ``[dropout]`` and ``[route]``, and a ``[shortcut]`` of constants is the
constant ``act(k1 + k2)``. Such a channel can be removed from the network when every place it reaches can do without it:

- a ``[convolutional]`` (groups=1) that reads it loses that input channel; its contribution ``k * sum(W[o, c])`` is
  added to the conv's bias, or subtracted from its BN running mean when it has BN and no bias. That is exact
  when ``k == 0`` (BN with zero shift, a ReLU-family activation of a negative value, ...) or when the conv has no
  padding (1x1 kernels); for a kxk conv with zero padding it is exact in the interior and approximate within
  ``k // 2`` pixels of the border, where the padded taps never saw the constant (``exact=True`` keeps those
  channels instead).
- the channels of a ``[shortcut]``'s inputs and output are one channel: it is removed from all of them or none.
- a ``[yolo]``, a grouped conv, a route with ``groups``, and the composite sections (``[ep]``, ``[pep]``,
  ``[bottleneck]``, ``[se]``, ``[scale_channels]``, ``[avgpool]``) keep every channel they read (and their
  own outputs are never removed); so any cfg folds, these layers just stay as they are.

Every conv keeps at least one output channel. Folding repeats until nothing more can be removed (a conv whose only
non-zero weights read removed channels becomes empty in the next pass).

``round_to`` keeps some empty channels so that every folded conv's width is a multiple of it (or its full width):
ONNX Runtime and oneDNN compute convs in blocks of 8 (AVX2) or 16 (AVX-512) channels, and a width off the block costs
layout conversions. Half of yolov3-tiny's filters folded ran 2.0 ms at widths of 16s against 2.4 ms at the exact
widths (256 px, AMD EPYC Zen 5, ONNX Runtime; BENCHMARKS.md, "Channel rounding"). Keeping a channel is always exact.
"""
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models import ConvBlock, Darknet, parse_cfg, save_darknet_weights
from utils.errors import UserError

PASS_THROUGH = ("maxpool", "upsample", "dropout")
FOLD_ROUND_TO = 16  # folded conv widths are multiples of this (see the module docstring)


# ------------------------------------------------------------------------------------------------ cfg text
def render_cfg(model, filters=None):
    """The model's cfg text with ``filters=`` of each conv and ``classes=`` of each ``[yolo]`` set to the network's
    actual values (so an ``nc`` override is written into the file), and ``filters`` ``{layer: n}`` applied on top.
    Other lines (comments included) are kept as they are."""
    filters = filters or {}
    _, written = parse_cfg(model.cfg_text, model.cfg_path)
    lines = model.cfg_text.splitlines(keepends=True)
    for i, (d, w) in enumerate(zip(model.module_defs, written)):
        keys = {"convolutional": ("filters",), "yolo": ("classes",)}.get(d["type"], ())
        for key in keys:
            value = filters.get(i, d[key]) if key == "filters" else d[key]
            if value != w[key]:
                n = d["_lines"][key] - 1
                indent = re.match(r"\s*", lines[n]).group(0)
                end = "\n" if lines[n].endswith("\n") else ""
                lines[n] = f"{indent}{key}={value}{end}"
    return "".join(lines)


# ------------------------------------------------------------------------------------------------ Darknet
def export_darknet(model, path):
    """Write ``path`` (``.weights``) and a cfg beside it (``.cfg``, class count written in); returns both paths."""
    path = Path(path)
    save_darknet_weights(model, path)
    cfg = path.with_suffix(".cfg")
    write_text(cfg, render_cfg(model))
    return path, cfg


def write_text(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ ONNX
class Decoded(nn.Module):
    """The eval-mode network returning only the decoded ``(bs, N, 5 + nc)`` boxes and probabilities."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)[0]


def export_onnx(model, path, img_size=416, opset=17, batch=1):
    """``torch.onnx.export`` (TorchScript exporter, constant folding) of the eval-mode float32 model: input ``images``
    ``(batch, 3, img_size, img_size)`` float in [0, 1], output ``output`` ``(batch, N, 5 + nc)`` (xywh in input pixels,
    objectness and class probabilities), dynamic batch axis. Checked with ``onnx.checker``; written atomically."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = Decoded(model).float().eval()
    x = torch.zeros(batch, model.net["channels"], img_size, img_size)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # Slice in the decode
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(net, (x,), tmp, dynamo=False, opset_version=opset, input_names=["images"],
                              output_names=["output"], dynamic_axes={"images": {0: "batch"}, "output": {0: "batch"}},
                              do_constant_folding=True)
        proto = onnx.load(tmp)
        onnx.checker.check_model(proto)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def onnx_session(path, threads=None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_onnx(model, path, img_size=416, batch=2, seed=0):
    """Max absolute difference between onnxruntime's and PyTorch's outputs on a random batch (``batch`` > 1 also
    checks the dynamic batch axis)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, model.net["channels"], img_size, img_size, generator=g)
    with torch.no_grad():
        ref = Decoded(model).float().eval()(x).numpy()
    out = onnx_session(path).run(None, {"images": x.numpy()})[0]
    if out.shape != ref.shape:
        raise RuntimeError(f"{path}: onnxruntime gives {out.shape}, PyTorch {ref.shape}")
    return float(np.abs(out - ref).max())


# ------------------------------------------------------------------------------------------------ folding
class _Channels:
    """Union-find over every (layer, channel) of the network (layer -1 is the input image)."""

    def __init__(self, channels, in_channels):
        self.offset = {-1: 0}
        n = in_channels
        for i, c in enumerate(channels):
            self.offset[i] = n
            n += c
        self.parent = np.arange(n)
        self.value = np.full(n, np.nan)  # the constant a channel carries, NaN when it is not constant
        self.pinned = np.zeros(n, bool)  # must stay
        self.pinned[:in_channels] = True

    def ids(self, layer, count):
        return np.arange(self.offset[layer], self.offset[layer] + count)

    def find(self, a):
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def roots(self):
        """Each id's group root."""
        return np.array([self.find(a) for a in range(len(self.parent))])

    def removable(self):
        """Per id: True when its whole group is constant and nothing in it is pinned."""
        roots = self.roots()
        bad = np.zeros(len(self.parent), bool)
        np.logical_or.at(bad, roots, np.isnan(self.value) | self.pinned)
        return ~bad[roots], roots


def _input_layer(defs, i):
    """The layer whose output layer ``i`` reads (a ``[yolo]`` passes its own input on, as in ``Darknet.forward``)."""
    j = i - 1
    while j >= 0 and defs[j]["type"] == "yolo":
        j -= 1
    return j


def _plain_conv(d, m):
    return d["type"] == "convolutional" and isinstance(m, ConvBlock) and m.conv.groups == 1


@torch.no_grad()
def _constant_after(block, pre):
    """``act(bn(pre))`` of a ConvBlock for a vector of pre-BN constants, with the block's own modules (eval)."""
    x = pre.view(1, -1, 1, 1).clone()
    if getattr(block, "bn", None) is not None:
        x = nn.functional.batch_norm(x, block.bn.running_mean, block.bn.running_var, block.bn.weight, block.bn.bias,
                                     False, 0.0, block.bn.eps)
    act = getattr(block, "act", None)
    return (act(x) if act is not None else x).view(-1)


def keeps_zero(act):
    """True when the activation module ``act`` (None: the identity) maps 0 to 0."""
    return act is None or float(act(torch.zeros(1)).abs()) == 0


def channel_graph(model):
    """``(graph, consumers, notes)``: the ``_Channels`` union-find of ``model`` (each channel's constant where its
    filter is empty, the channels folding must keep pinned), the ``(conv layer, layer it reads)`` pairs, and
    ``notes['kept_layers']`` (layers folding leaves alone)."""
    defs, mods, chans = model.module_defs, model.module_list, model.channels
    g = _Channels(chans, model.net["channels"])
    width = lambda j: chans[j] if j >= 0 else model.net["channels"]  # noqa: E731
    notes = {"kept_layers": [], "offset_sums": []}  # offset_sums: channels of a [shortcut] whose act(0) is not 0
    consumers = []  # (conv layer, input layer)
    for i, (d, m) in enumerate(zip(defs, mods)):
        src = _input_layer(defs, i)
        out = g.ids(i, chans[i])
        t = d["type"]
        if _plain_conv(d, m):
            w = m.conv.weight.detach()
            dead = ~w.reshape(w.shape[0], -1).ne(0).any(1)
            if dead.any():
                pre = m.conv.bias.detach().float() if m.conv.bias is not None else torch.zeros(w.shape[0])
                k = _constant_after(m, pre.clone()).double().numpy()
                g.value[out[dead.numpy()]] = k[dead.numpy()]
            consumers.append((i, src))
            if m.conv.bias is None and getattr(m, "bn", None) is None:
                g.pinned[g.ids(src, width(src))] = True  # nowhere to fold a constant into
        elif t in PASS_THROUGH:
            for a, b in zip(out, g.ids(src, width(src))):
                g.union(a, b)
            v = g.value[g.ids(src, width(src))]
            if any(isinstance(x, nn.ZeroPad2d) for x in m.modules()):  # zero_pad=1: a negative constant meets 0
                v = np.where(v < 0, np.nan, v)
            g.value[out] = v
        elif t == "route" and m.groups == 1:
            ids = np.concatenate([g.ids(j, chans[j]) for j in m.sources])
            for a, b in zip(out, ids):
                g.union(a, b)
            g.value[out] = g.value[ids]
        elif t == "shortcut":
            inputs = [g.ids(src, width(src))] + [g.ids(j, chans[j]) for j in m.sources]
            for ids in inputs:
                for a, b in zip(out, ids):
                    g.union(a, b)
            v = np.sum([g.value[ids] for ids in inputs], axis=0)
            if not keeps_zero(m.act):
                notes["offset_sums"].extend(out.tolist())
            if m.act is not None and not np.isnan(v).all():
                v = _constant_after(m, torch.from_numpy(v).float()).double().numpy()
            g.value[out] = v
        else:  # [yolo], grouped convs and routes, composite blocks: keep what they read and what they write
            sources = [src] + list(getattr(m, "sources", ()))
            for j in sources:
                g.pinned[g.ids(j, width(j))] = True
            g.pinned[out] = True
            if t != "yolo":
                notes["kept_layers"].append(f"{i} [{t}]")
    return g, consumers, notes


def foldable_convs(model, coupled=False):
    """Layer indexes of the plain convs whose filters ``fold_empty_channels`` removes once they are empty: no
    channel of theirs is read by a layer folding keeps whole (a ``[yolo]`` head, a composite section, a grouped
    conv), nor summed with another conv's by a ``[shortcut]``. ``coupled``: convs whose channels a ``[shortcut]``
    sums count too, where every conv of the sum does (a channel then folds once it is empty in all of them) and the
    sum keeps 0 at 0. Filter-level pruning elsewhere would cost accuracy and save no time."""
    g, _, notes = channel_graph(model)
    roots = g.roots()
    pinned = set(roots[g.pinned].tolist())
    convs = [i for i, (d, m) in enumerate(zip(model.module_defs, model.module_list)) if _plain_conv(d, m)]
    owners = {}
    for i in convs:
        for r in roots[g.ids(i, model.channels[i])].tolist():
            owners.setdefault(r, set()).add(i)
    rows = {i: roots[g.ids(i, model.channels[i])].tolist() for i in convs}
    if not coupled:
        return [i for i in convs if all(r not in pinned and owners[r] == {i} for r in rows[i])]
    bad = pinned | set(roots[notes["offset_sums"]].tolist())
    keep = {i for i in convs if not any(r in bad for r in rows[i])}
    while True:  # a conv goes with every conv it is summed with
        out = {i for i in keep if any(owners[r] - keep for r in rows[i])}
        if not out:
            return sorted(keep)
        keep -= out


def _round_widths(g, convs, round_to):
    """Pin removable channels of each conv in ``convs`` (``{layer: channel ids}``) until its kept width is a multiple
    of ``round_to`` or its full width; True when something was pinned."""
    removable, _ = g.removable()
    changed = False
    for ids in convs.values():
        gone = ids[removable[ids]]
        kept = len(ids) - len(gone)
        extra = min(len(ids), max(1, -(-kept // round_to)) * round_to) - kept
        if extra > 0:
            g.pinned[gone[:extra]] = True
            changed = True
    return changed


def plan_fold(model, exact=False, round_to=FOLD_ROUND_TO):
    """Which output channels of each layer stay.

    Returns ``(keep, graph, roots, consumers, notes)``: ``keep`` ``{layer: LongTensor of kept channel indexes}``
    (layer -1 is the input image), the ``_Channels`` graph with each channel's constant, each channel id's group
    root, the ``(conv layer, layer it reads)`` pairs, and ``notes['kept_layers']`` (layers folding leaves alone).
    """
    defs, mods, chans = model.module_defs, model.module_list, model.channels
    g, consumers, notes = channel_graph(model)
    width = lambda j: chans[j] if j >= 0 else model.net["channels"]  # noqa: E731
    if exact:  # a constant through a padded kxk conv is approximate at the border: keep it
        for i, src in consumers:
            conv = mods[i].conv
            if any(p > 0 for p in conv.padding):
                ids = g.ids(src, width(src))
                g.pinned[ids[np.nan_to_num(g.value[ids], nan=0.0) != 0]] = True
    convs = {i: g.ids(i, chans[i]) for i, d in enumerate(defs) if _plain_conv(d, mods[i])}
    while _round_widths(g, convs, max(1, round_to)):  # every conv keeps one channel (round_to of them) at least
        pass
    removable, roots = g.removable()
    keep = {i: torch.from_numpy(np.flatnonzero(~removable[g.ids(i, chans[i])])) for i in range(len(defs))}
    keep[-1] = torch.arange(model.net["channels"])
    return keep, g, roots, consumers, notes


@torch.no_grad()
def fold_once(model, exact=False, round_to=FOLD_ROUND_TO):
    """One folding pass: ``(new model, report)``; the model itself is not changed."""
    keep, g, roots, consumers, notes = plan_fold(model, exact, round_to)
    defs, mods, chans = model.module_defs, model.module_list, model.channels
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    removed = {i: chans[i] - len(keep[i]) for i, d in enumerate(defs) if d["type"] == "convolutional"}
    report = {"removed": sum(removed.values()), "kept_layers": notes["kept_layers"],
              "layers": {i: (chans[i], len(keep[i])) for i, n in removed.items() if n}}
    folded, inexact = set(), set()  # removed channels (their union-find roots) with a non-zero constant
    width = lambda j: chans[j] if j >= 0 else model.net["channels"]  # noqa: E731
    for i, src in consumers if report["removed"] else ():  # fold constants into the conv's bias / BN mean
        conv, prefix = mods[i].conv, f"module_list.{i}"
        gone = np.setdiff1d(np.arange(width(src)), keep[src].numpy())
        if not len(gone):
            continue
        ids = g.ids(src, width(src))[gone]
        k = torch.from_numpy(g.value[ids])
        nonzero = k != 0
        folded.update(roots[ids[nonzero.numpy()]].tolist())
        if any(p > 0 for p in conv.padding):
            inexact.update(roots[ids[nonzero.numpy()]].tolist())
        if nonzero.any():
            delta = (conv.weight.detach().double()[:, torch.from_numpy(gone)].sum((2, 3)) * k).sum(1)
            if conv.bias is not None:
                state[f"{prefix}.conv.bias"] += delta.to(state[f"{prefix}.conv.bias"].dtype)
            else:
                state[f"{prefix}.bn.running_mean"] -= delta.to(state[f"{prefix}.bn.running_mean"].dtype)
    report.update(folded_constants=len(folded), inexact_constants=len(inexact))
    if not report["removed"]:
        return model, report
    for i, d in enumerate(defs):  # slice the convs
        if not _plain_conv(d, mods[i]):
            continue
        out, inp, prefix = keep[i], keep[_input_layer(defs, i)], f"module_list.{i}"
        state[f"{prefix}.conv.weight"] = state[f"{prefix}.conv.weight"][out][:, inp].contiguous()
        for key in ("conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
            if f"{prefix}.{key}" in state:
                state[f"{prefix}.{key}"] = state[f"{prefix}.{key}"][out].contiguous()
    text = render_cfg(model, {i: len(keep[i]) for i in removed if removed[i]})
    new = Darknet.from_text(text, name=model.cfg_path, img_size=model.img_size, nc=model.nc)
    new.load_state_dict(state)
    new.version, new.seen = getattr(model, "version", (0, 2, 0)), getattr(model, "seen", 0)
    return new.to(next(model.parameters()).device).train(model.training), report


def fold_empty_channels(model, exact=False, max_passes=10, round_to=FOLD_ROUND_TO):
    """Remove every empty output channel that can go (see the module docstring): ``(folded model, report)``.

    ``report``: ``removed`` (conv output channels), ``folded_constants`` (removed channels whose non-zero constant
    went into the bias of the convs that read them; a channel shared through a route or shortcut counts once),
    ``inexact_constants`` (of those, the ones read by a padded kxk conv: exact in the interior, approximate near
    the image border), ``layers`` ``{layer: (channels before, after)}``, ``kept_layers`` (layers folding leaves
    alone), ``passes``, ``params_before``, ``params_after``.
    """
    total = {"removed": 0, "folded_constants": 0, "inexact_constants": 0, "layers": {}, "kept_layers": [],
             "passes": 0, "params_before": sum(p.numel() for p in model.parameters())}
    for _ in range(max_passes):
        model, report = fold_once(model, exact, round_to)
        total["kept_layers"] = report["kept_layers"]
        if not report["removed"]:
            break
        total["passes"] += 1
        for key in ("removed", "folded_constants", "inexact_constants"):
            total[key] += report[key]
        for i, (before, after) in report["layers"].items():
            total["layers"][i] = (total["layers"].get(i, (before, after))[0], after)
    total["params_after"] = sum(p.numel() for p in model.parameters())
    return model, total


def check_foldable(model):
    """A ``UserError`` when ``model`` is not a ``Darknet`` built from cfg text (folding rewrites the cfg)."""
    if not hasattr(model, "module_defs") or not hasattr(model, "cfg_text"):
        raise UserError("--fold-empty-channels needs a network built from a Darknet cfg")


@torch.no_grad()
def compare_outputs(a, b, img_size=416, batch=1, seed=0):
    """How far network ``b``'s outputs are from ``a``'s on a random image batch: max |diff| of the raw head outputs
    (``raw``), of the objectness and class probabilities (``prob``) and of the box centres/sizes in pixels (``box``)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, a.net["channels"], img_size, img_size, generator=g)
    (ia, pa), (ib, pb) = a.eval()(x), b.eval()(x)
    return {"raw": max(float((u - v).abs().max()) for u, v in zip(pa, pb)),
            "prob": float((ia[..., 4:] - ib[..., 4:]).abs().max()),
            "box": float((ia[..., :4] - ib[..., :4]).abs().max())}


def bit_equal(a, b):
    """Same shape, dtype and bits (``-0.0`` differs from ``+0.0``; NaNs compare by payload)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        a, b = a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)
    return torch.equal(a, b)

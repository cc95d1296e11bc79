"""The models.py CLI over library functions: a network's per-layer summary (parameters, MACs, sparsity, bytes) and
``.weights`` <-> ``.pt`` conversion.

    python models.py --cfg cfg/yolov3-tiny.cfg --img-size 416
    python models.py --weights runs/prune/exp/round_3/weights/best.pt
    python models.py --convert yolov3-tiny.weights yolov3-tiny.pt --cfg cfg/yolov3-tiny.cfg
    python models.py --verify best.pt best.sparse.pt
"""
import argparse
import copy
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn

from models import Darknet, darknet_file_bytes, make_checkpoint, prunable_parameters, save_darknet_weights
from utils.checkpoint import checked, load_model, read_file, save_checkpoint
from utils.errors import UserError
from utils.sparse import export_bytes, zero_output_channels


def profile_layers(model, img_size):
    """Profile a copy of ``model`` with thop at ``img_size``: ``(macs, {module name: macs}, [layer output shape])``."""
    import thop

    m = copy.deepcopy(model).float().eval()
    shapes = [None] * len(m.module_list)
    for i, layer in enumerate(m.module_list):
        layer.register_forward_hook(lambda mod, inp, out, i=i: shapes.__setitem__(i, shape_of(out)))
    device = next(m.parameters()).device if any(True for _ in m.parameters()) else "cpu"
    x = torch.zeros(1, m.net["channels"], img_size, img_size, device=device)
    macs, _, info = thop.profile(m, inputs=(x,), verbose=False, ret_layer_info=True)
    return int(macs), flatten_ops(info), shapes


def shape_of(out):
    t = out[1] if isinstance(out, tuple) else out  # a [yolo] in eval mode returns (decoded, raw)
    return tuple(t.shape[1:])


def flatten_ops(info, prefix=""):
    """thop's nested ``{name: (ops, params, children)}`` -> ``{'module_list.0.conv': ops, ...}``."""
    flat = {}
    for name, (ops, _, children) in info.items():
        full = f"{prefix}{name}"
        flat[full] = ops
        flat.update(flatten_ops(children, full + "."))
    return flat


def model_summary(model, img_size=416, path=None, verbose=False):
    """Summary figures of the results tables; ``verbose`` also prints the per-layer table.

    ``layers``: cfg layers; ``params``/``nonzero_params``: all parameters (BN and biases included);
    ``sparsity``: zero fraction of the prunable conv kernels (``prunable_parameters`` defaults); ``macs``: thop,
    dense, batch 1 at ``img_size``; ``sparse_macs``: the same with each conv's MACs scaled by its kernel's non-zero
    fraction; ``size_mb``: bytes of ``path`` on disk, or without a path the fp32 ``.weights`` size, in MiB (2**20).
    With a ``path`` (the file the model came from) also: ``file_bytes`` (its bytes on disk), ``sparse_bytes`` and
    ``sparse_half_bytes`` (bytes of its sparse export, ``export.py --include sparse [--half]``, computed in memory),
    ``zero_channels`` (conv output channels whose kernel is all zero) and ``zero_channels_per_layer``
    (``{layer: count}``, layers with any). The per-layer table shows that count in its ``empty`` column.
    """
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    prunable = [p for _, p in prunable_parameters(model)]
    n_prunable = sum(p.numel() for p in prunable)
    zeros = n_prunable - sum(int(torch.count_nonzero(p)) for p in prunable)
    macs, ops, shapes = profile_layers(model, img_size)
    sparse_macs = macs - sum(ops.get(n, 0) * (1 - int(torch.count_nonzero(m.weight)) / m.weight.numel())
                             for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    size = os.path.getsize(path) if path else darknet_file_bytes(model)
    empty = zero_output_channels(model)
    if verbose:
        print_layer_table(model, ops, shapes, empty=empty)
    summary = {"layers": len(model.module_list), "params": params, "nonzero_params": nonzero,
               "sparsity": zeros / n_prunable if n_prunable else 0.0, "macs": macs, "sparse_macs": round(sparse_macs),
               "size_mb": size / 2 ** 20}
    if path:
        summary.update(file_bytes=size, sparse_bytes=export_bytes(model), sparse_half_bytes=export_bytes(model, True),
                       zero_channels=sum(empty.values()),
                       zero_channels_per_layer={str(i): n for i, n in sorted(empty.items()) if n})
    return summary


def print_layer_table(model, ops, shapes, file=None, empty=None):
    """Print index, type, sources, output shape (C, H, W), parameters, MACs and (``empty``, ``{layer: count}``) the
    conv output channels whose kernel is all zero, of every layer."""
    file = file or sys.stdout
    empty = empty or {}
    print(f"{'layer':>5}  {'type':<15} {'from':<14} {'output':<18} {'params':>12} {'MACs':>15} {'empty':>6}", file=file)
    for i, (d, m) in enumerate(zip(model.module_defs, model.module_list)):
        src = ",".join(str(j) for j in getattr(m, "sources", ())) or "-1"
        shape = "x".join(str(v) for v in shapes[i]) if shapes[i] else "-"
        n = sum(p.numel() for p in m.parameters())
        print(f"{i:>5}  {d['type']:<15} {src:<14} {shape:<18} {n:>12,} {int(ops.get(f'module_list.{i}', 0)):>15,} "
              f"{empty.get(i, '-'):>6}", file=file)


# ------------------------------------------------------------------------------------------------ CLI

def convert(src, dst, cfg=None, nc=None, names=None):
    """``.weights`` -> ``.pt`` checkpoint (needs ``cfg``) or ``.pt`` -> ``.weights``."""
    src, dst = Path(src), Path(dst)
    model, _ = load_model(src, cfg=cfg, nc=nc)
    if dst.suffix == ".weights":
        save_darknet_weights(model, dst)
    elif dst.suffix == ".pt":
        class_names = Path(names).read_text().split("\n") if names else None
        class_names = [n.strip() for n in class_names if n.strip()] if class_names else None
        save_checkpoint(make_checkpoint(model, class_names), dst)
    else:
        raise UserError(f"{dst}: --convert writes .pt or .weights")
    print(f"{src} -> {dst} ({dst.stat().st_size / 2 ** 20:.2f} MiB)")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Darknet cfg models: per-layer summary, .weights conversion.")
    ap.add_argument("--cfg", help="network cfg file (needed with .weights)")
    ap.add_argument("--weights", help="checkpoint .pt or Darknet .weights to summarise")
    ap.add_argument("--img-size", type=int, default=None, help="input size for shapes and MACs (default 416)")
    ap.add_argument("--nc", type=int, default=None, help="override the class count of every [yolo]")
    ap.add_argument("--convert", nargs=2, metavar=("SRC", "DST"), help="a.weights b.pt (with --cfg) or b.pt a.weights")
    ap.add_argument("--names", help="class names file for --convert to .pt")
    ap.add_argument("--verify", nargs="+", metavar="FILE", help="check the checksum of checkpoints / sparse exports")
    return ap.parse_args(argv)


def verify_files(paths):
    """Check each file's ``crc32`` (``load_checkpoint`` does; a mismatch is a one-line ``UserError``); returns
    ``{path: 'ok' | 'no checksum'}`` and prints a line per file."""
    out = {}
    for path in map(Path, paths):
        if path.suffix == ".weights":
            out[str(path)] = "no checksum"
            print(f"{path}: a Darknet .weights file carries no checksum")
            continue
        raw = read_file(path)
        checked(raw, path)  # checks the checksum, or raises naming the file
        has = isinstance(raw, dict) and "crc32" in raw
        out[str(path)] = "ok" if has else "no checksum"
        print(f"{path}: checksum ok (crc32 {raw['crc32']:#010x})" if has else
              f"{path}: no checksum (written before checksums existed); it loads, but cannot be verified")
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.verify:
        return verify_files(args.verify)
    if args.convert:
        return convert(*args.convert, cfg=args.cfg, nc=args.nc, names=args.names)
    if args.weights:
        model, ckpt = load_model(args.weights, cfg=args.cfg, nc=args.nc)
        img_size = args.img_size or (ckpt or {}).get("img_size") or 416
    elif args.cfg:
        img_size = args.img_size or 416
        model = Darknet(args.cfg, img_size=img_size, nc=args.nc)
    else:
        raise UserError("models.py: give --cfg, --weights or --convert (see --help)")
    model.check_img_size(img_size)
    summary = model_summary(model, img_size, path=args.weights, verbose=True)
    print(json.dumps(summary))
    return summary

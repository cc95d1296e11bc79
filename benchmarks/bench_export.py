"""What pruning buys on disk and on the CPU: checkpoint and sparse-export bytes, and batch-1 latency of PyTorch fp32,
PyTorch bf16 + channels_last and onnxruntime, for yolov3-tiny and yolov3 at several unstructured sparsities, before
and after folding empty channels.

    python benchmarks/bench_export.py                                   # both models, 0/50/90/95/99% (long)
    python benchmarks/bench_export.py --cfgs cfg/yolov3-tiny.cfg --reps 5
    python benchmarks/bench_export.py --no-latency                      # bytes only (a minute or two)
    python benchmarks/bench_export.py --sparsities 0.9 --empty-filters 0.5 --latency-sparsities 90   # dead filters

Networks: the cfg as shipped (80 classes), PyTorch's initialisation (seed 0), magnitude masks over
``models.prunable_parameters`` (conv kernels but the output convs), ``--scope local`` (the same fraction in every
layer; default) or ``global``; pruned weights are +0.0. Unstructured magnitude pruning of these weights empties
few whole filters, so ``--empty-filters F`` also empties the fraction F of each prunable conv's filters (smallest
L1 norm), as continuous sparsification does at high sparsity, to show what folding buys. Files, per network and
sparsity:

- ``last.pt``: what a ``prune.py --lth`` round writes as last.pt: EMA weights, masks (bool), rewind weights, and
  the training state (raw weights, SGD momentum buffers, scheduler).
- ``best.pt``: the same without the training state (weights + masks + rewind), as prune.py writes it.
- ``dense``: a checkpoint with the weights only (``models.make_checkpoint``): the reference of every ratio.
- ``sparse`` / ``sparse fp16``: ``export.py --include sparse [--half]``.

Latency: milliseconds per 416 px image at batch 1 (best and median of ``--reps`` runs after a warm-up), with
``--threads`` threads (default 1) for PyTorch and onnxruntime alike. Unstructured zeros do not speed up dense
kernels, so the pruned networks are timed at ``--latency-sparsities`` only (default: 0 and 90); folded networks
wherever folding removed channels. Prints markdown tables; ``--json`` also writes the figures.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import Darknet, make_checkpoint, prunable_parameters  # noqa: E402
from utils import sparse  # noqa: E402
from utils.checkpoint import export_sparse  # noqa: E402
from utils.export import Decoded, fold_empty_channels  # noqa: E402
from common import latencies  # noqa: E402


def magnitude_masks(model, sparsity, scope="local"):
    """Masks keeping the largest-|w| fraction ``1 - sparsity`` of the prunable kernels; pruned weights -> +0.0."""
    params = prunable_parameters(model)
    masks = {}
    with torch.no_grad():
        if scope == "global":
            flat = torch.cat([p.detach().abs().flatten() for _, p in params])
            k = round(flat.numel() * sparsity)
            threshold = flat.kthvalue(k).values if k else -1.0
            del flat
        for name, p in params:
            if scope == "local":
                k = round(p.numel() * sparsity)
                threshold = p.detach().abs().flatten().kthvalue(k).values if k else -1.0
            masks[name] = p.detach().abs() > threshold
            p.masked_fill_(~masks[name], 0.0)
    return masks


def empty_filters(model, masks, fraction):
    """Also zero the ``fraction`` of filters with the smallest L1 norm in every prunable conv (what continuous
    sparsification does to whole filters at high sparsity), in the weights and the masks."""
    with torch.no_grad():
        for name, p in prunable_parameters(model):
            k = int(p.shape[0] * fraction)
            if k:
                dead = p.abs().flatten(1).sum(1).argsort()[:k]
                p[dead] = 0.0
                if name in masks:
                    masks[name][dead] = False


def lth_checkpoints(model, masks):
    """``(best.pt dict, last.pt dict)`` shaped like prune.py's (see utils/engine.py and utils/pruning.py)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best = make_checkpoint(model)
    best["masks"] = masks
    best["rewind"] = {"model": {k: v.clone() for k, v in state.items()}, "epoch": 1, "step": 100}
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.937, nesterov=True)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    lr0 = [g["lr"] for g in opt.param_groups]
    for g in opt.param_groups:
        g["lr"] = 0.0
    opt.step()  # creates the momentum buffers, changes nothing
    for g, lr in zip(opt.param_groups, lr0):
        g["lr"] = lr
    for p in model.parameters():
        p.grad = None
    last = dict(best)
    last["train_state"] = {"model": state, "ema_updates": 100, "optimizer": opt.state_dict(),
                           "scheduler": {"last_epoch": 1}, "scaler": {}, "plugins": {"masks": {}, "rewind": {}}}
    return best, last


def file_bytes(obj, folder):
    """Bytes on disk of ``torch.save(obj)`` (written to ``folder`` and removed)."""
    path = Path(folder) / "ckpt.pt"
    torch.save(obj, path)
    n = path.stat().st_size
    path.unlink()
    return n


def run(cfg, sparsities, args, folder):
    rows = []
    for s in sparsities:
        torch.manual_seed(0)
        model = Darknet(ROOT / cfg).eval()
        masks = magnitude_masks(model, s, args.scope) if s else {}
        if args.empty_filters:
            empty_filters(model, masks, args.empty_filters)
        params = sum(p.numel() for p in model.parameters())
        nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
        row = {"cfg": Path(cfg).stem, "sparsity": s, "params": params, "nonzero": nonzero,
               "empty_filters": args.empty_filters}
        dense = make_checkpoint(model)
        row["dense"] = file_bytes(dense, folder)
        del dense
        best, last = lth_checkpoints(model, masks)
        row["best_pt"] = file_bytes(best, folder)
        row["last_pt"] = file_bytes(last, folder)
        del best, last
        row["sparse"] = export_sparse(model, Path(folder) / "m.sparse.pt", {"masks": masks})
        row["sparse_fp16"] = export_sparse(model, Path(folder) / "m.sparse.pt", {"masks": masks}, half=True)
        (Path(folder) / "m.sparse.pt").unlink()
        row["empty_channels"] = sum(sparse.zero_output_channels(model).values())
        t0 = time.perf_counter()
        folded, rep = fold_empty_channels(model)
        row["fold_seconds"] = time.perf_counter() - t0
        row["folded_removed"] = rep["removed"]
        row["folded_params"] = rep["params_after"]
        if rep["removed"]:
            row["folded_dense"] = file_bytes(make_checkpoint(folded), folder)
            row["folded_sparse"] = export_sparse(folded, Path(folder) / "f.sparse.pt")
            row["folded_sparse_fp16"] = export_sparse(folded, Path(folder) / "f.sparse.pt", half=True)
            (Path(folder) / "f.sparse.pt").unlink()
            with torch.no_grad():
                x = torch.rand(1, 3, 416, 416)
                row["folded_max_abs_diff"] = float((Decoded(model)(x) - Decoded(folded)(x)).abs().max())
        if not args.no_latency:
            if round(100 * s) in args.latency_sparsities:
                row["latency"] = latencies(model, args.img_size, args.reps, folder)
            if rep["removed"]:
                row["folded_latency"] = latencies(folded, args.img_size, args.reps, folder)
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
        del model, folded
    return rows


def mb(n):
    return f"{n / 1e6:,.2f}"


def markdown(rows, args):
    lines = [f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs, torch {torch.__version__.split('+')[0]}, {torch.get_num_threads()} threads; "
             f"magnitude masks ({args.scope}), random weights, 80 classes"
             + (f", {args.empty_filters:.0%} of the filters of every prunable conv emptied"
                if args.empty_filters else "")
             + ".", "",
             "| model | sparsity | non-zero params | last.pt MB | best.pt MB | dense MB | sparse MB | sparse fp16 MB "
             "| last.pt / dense | best.pt / dense | sparse / dense | fp16 / dense |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r["dense"]
        lines.append(f"| {r['cfg']} | {r['sparsity']:.0%} | {r['nonzero']:,} | {mb(r['last_pt'])} | {mb(r['best_pt'])} "
                     f"| {mb(d)} | {mb(r['sparse'])} | {mb(r['sparse_fp16'])} | {r['last_pt'] / d:.2f} "
                     f"| {r['best_pt'] / d:.2f} | {r['sparse'] / d:.1%} | {r['sparse_fp16'] / d:.1%} |")
    lines += ["", "Folding empty output channels (exact here: random-init BN has no shift, so an empty filter "
              "outputs 0):",
              "", "| model | sparsity | empty channels | channels removed | params after | dense MB after "
              "| sparse MB after | max abs diff (decoded outputs) | fold s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["folded_removed"]:
            lines.append(f"| {r['cfg']} | {r['sparsity']:.0%} | {r['empty_channels']:,} | {r['folded_removed']:,} "
                         f"| {r['folded_params']:,} | {mb(r['folded_dense'])} | {mb(r['folded_sparse'])} "
                         f"| {r['folded_max_abs_diff']:.2g} | {r['fold_seconds']:.1f} |")
        else:
            lines.append(f"| {r['cfg']} | {r['sparsity']:.0%} | {r['empty_channels']:,} | 0 | - | - | - | - "
                         f"| {r['fold_seconds']:.1f} |")
    if not args.no_latency:
        lines += ["", f"Latency, ms per image, batch 1, {args.img_size} px (best / median of {args.reps}):", "",
                  "| model | sparsity | network | params | PyTorch fp32 | PyTorch bf16 + channels_last "
                  "| onnxruntime fp32 |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            for key, name, params in (("latency", "pruned (dense kernels)", r["params"]),
                                      ("folded_latency", "folded", r.get("folded_params"))):
                if key in r:
                    t = r[key]
                    lines.append(f"| {r['cfg']} | {r['sparsity']:.0%} | {name} | {params:,} | "
                                 + " | ".join(f"{t[k][0]:.0f} / {t[k][1]:.0f}" for k in ("fp32", "bf16_cl", "ort"))
                                 + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cfgs", nargs="+", default=["cfg/yolov3-tiny.cfg", "cfg/yolov3.cfg"])
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0, 0.5, 0.9, 0.95, 0.99])
    ap.add_argument("--scope", choices=("local", "global"), default="local")
    ap.add_argument("--empty-filters", type=float, default=0.0,
                    help="also empty this fraction of the filters (smallest L1) of every prunable conv")
    ap.add_argument("--img-size", type=int, default=416)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--latency-sparsities", nargs="+", type=int, default=[0, 90], help="percent")
    ap.add_argument("--threads", type=int, default=1,
                    help="PyTorch and onnxruntime threads (1: on a shared machine PyTorch's OpenMP threads stall "
                         "each other when the cores are oversubscribed)")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for cfg in args.cfgs:
            rows += run(cfg, args.sparsities, args, folder)
    text = markdown(rows, args)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()

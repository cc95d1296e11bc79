"""Latency of trained or pruned checkpoints as they would ship: empty filters folded away, then PyTorch fp32 (bf16 +
channels_last only where the CPU runs bf16 natively) and ONNX Runtime, per batch size and image size.

    python benchmarks/bench_latency.py --weights dense.pt ticket.pt
    python benchmarks/bench_latency.py --weights dense.pt ticket.pt --img-sizes 256 416 --batch-sizes 1 16 --reps 20
    python benchmarks/bench_latency.py --weights dense.pt ticket.pt --reps 50 --passes 3   # on a noisy shared VM
    python benchmarks/bench_latency.py --weights best.pt --filter-rates 0.2 0.36 0.488   # filter masks, untrained
    python benchmarks/bench_latency.py --weights best.pt --filter-rates 0.5 --round-to 1 8 16  # folded widths
    python benchmarks/bench_latency.py --weights dense.pt ticket.pt --device 0   # and CUDA fp16 on a GPU

Every figure is the median of ``--reps`` runs (default 20) after ``--warmup`` untimed ones; with ``--passes P`` every
network, size and batch is timed in turn P times and a figure is the median of its P medians. ``--threads``
threads (default: torch's choice) for PyTorch and ONNX Runtime alike; the header names the CPU. ``--filter-rates``
adds, for each checkpoint, networks with that fraction of every plain conv's filters removed by L1 norm
(``prune.py --granularity filter``'s ranking, one local step, the convs a shortcut sums together) and folded: their
speed, not their accuracy (which needs the retraining ``prune.py`` does). ``--round-to`` folds each network once per width multiple
(``export.py --fold-round-to``). The first network of the list is the reference of the speed-up column.
"""
import argparse
import json
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import interleaved_latencies, latency_runners, threads_label, timing_rule  # noqa: E402
from utils.checkpoint import load_model  # noqa: E402
from utils.export import FOLD_ROUND_TO, fold_empty_channels  # noqa: E402
from utils.general import cpu_name, select_device  # noqa: E402
from utils.pruning import Masks, filter_groups, filter_prune, unit_kernels  # noqa: E402
from utils.summary import model_summary  # noqa: E402


def networks(weights, rates, round_to=(FOLD_ROUND_TO,)):
    """``[(label, folded model, {'params', 'removed', 'round_to'})]`` for each checkpoint, filter rate and width
    multiple."""
    out = []
    for w, name in zip(weights, short_names(weights)):
        model, _ = load_model(w)
        variants = [(name, model)]
        for rate in rates:
            masked, _ = load_model(w)
            start = Masks.from_model(masked, granularity="filter", coupled=True)
            groups = filter_groups(masked, unit_kernels(start))
            masks = filter_prune(dict(masked.state_dict()), start, rate, groups=groups)
            masks.apply(masked)
            variants.append((f"{name} filters -{rate:g}", masked))
        for (label, net), r in ((v, r) for v in variants for r in round_to):
            folded, rep = fold_empty_channels(net.eval(), round_to=r)
            tag = f" (widths x{r})" if len(round_to) > 1 else ""
            out.append((label + tag, folded, {"params": rep["params_after"], "removed": rep["removed"], "round_to": r}))
    return out


def short_names(paths):
    """Each path's shortest tail of folders that no other path shares (``r3/round_1/weights/best.pt`` and
    ``r4/round_1/weights/best.pt`` become ``r3/round_1/weights/best.pt`` and ``r4/...``; ``a.pt`` stays ``a.pt``)."""
    parts = [Path(p).parts for p in paths]
    for n in range(1, max(map(len, parts), default=0) + 1):
        tails = [str(Path(*x[-n:])) for x in parts]
        if len(set(tails)) == len(tails):
            return tails
    return [str(p) for p in paths]


KINDS = ("fp32", "bf16_cl", "ort", "cuda_fp16")  # latency_runners' runtimes, in the order a pass times them


def by_runtime(per_case):
    """``{(case, kind): runner}`` with every case of one runtime before the next runtime: torch's and ONNX Runtime's
    idle threads spin for a while after a run and slow the other runtime's next runs (alternating them per network
    put the dense YOLOv3 w0.25 at 11.6 ms in ORT, against 8.9 timed this way, Zen 4, 2026-12-07)."""
    return {(i, kind): r[kind] for kind in KINDS for i, r in enumerate(per_case) if kind in r}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", nargs="+", required=True, help="checkpoints (.pt, sparse exports)")
    ap.add_argument("--img-sizes", type=int, nargs="+", default=[256])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--passes", type=int, default=1,
                    help="passes over every network, size and batch in turn; a figure is the median of its passes' "
                         "medians (3 outvotes a slow spell of a shared machine)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu",
                    help="a CUDA device (0, cuda:1) adds a CUDA fp16 autocast + channels_last column; the CPU "
                         "columns stay")
    ap.add_argument("--filter-rates", type=float, nargs="*", default=[])
    ap.add_argument("--round-to", type=int, nargs="+", default=[FOLD_ROUND_TO],
                    help="fold each network with its conv widths rounded up to these multiples")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = select_device(a.device)
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    meta = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "python": platform.python_version(),
            "reps": a.reps, "warmup": a.warmup, "passes": a.passes}
    meta["gpu"] = gpu.lstrip(", ")
    print(f"{meta['cpu']}{gpu}, {threads_label(meta['threads'])}, torch {meta['torch']}, {meta['date']}; "
          f"{timing_rule(a.reps, a.passes)} after {a.warmup} "
          f"warm-up, ms per batch\n")
    cuda = " CUDA fp16 |" if gpu else ""
    print(f"| network | params | MACs (1 image) | size | batch | fp32 | bf16+cl | ONNX Runtime | ORT speed-up |{cuda}")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|" + ("--:|" if gpu else ""))
    rows, ref = [], {}
    with tempfile.TemporaryDirectory() as folder:
        cases = [(label, net, info, size, bs) for label, net, info in networks(a.weights, a.filter_rates, a.round_to)
                 for size in a.img_sizes for bs in a.batch_sizes]
        runners = by_runtime([latency_runners(net, size, folder, batch=bs, device=device)
                              for _, net, _, size, bs in cases])
        with torch.inference_mode():
            timed = interleaved_latencies(runners, a.reps, a.passes, a.warmup)
        for i, (label, net, info, size, bs) in enumerate(cases):
            t = {kind: timed[(i, kind)][1] if (i, kind) in timed else float("nan")
                 for kind in KINDS}
            ref.setdefault((size, bs), t["ort"])
            row = {"network": label, **info, "macs": model_summary(net, size)["macs"], "img_size": size, "batch": bs,
                   **t, "ort_passes": timed[(i, "ort")][2], "ort_speedup": ref[(size, bs)] / t["ort"]}
            rows.append(row)
            print(f"| {label} | {info['params']:,} | {row['macs'] / 1e6:,.0f} M | {size} | {bs} | {t['fp32']:.1f} | "
                  f"{t['bf16_cl']:.1f} | {t['ort']:.1f} | {row['ort_speedup']:.2f}x |"
                  + (f" {t['cuda_fp16']:.2f} |" if gpu else ""), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()

"""Latency of trained or pruned checkpoints as they would ship: empty filters folded away, then PyTorch fp32 (bf16 +
channels_last only where the CPU runs bf16 natively) and ONNX Runtime, per batch size and image size.

    python benchmarks/bench_latency.py --weights dense.pt ticket.pt
    python benchmarks/bench_latency.py --weights dense.pt ticket.pt --img-sizes 256 416 --batch-sizes 1 16 --reps 20
    python benchmarks/bench_latency.py --weights best.pt --filter-rates 0.2 0.36 0.488   # filter masks, untrained
    python benchmarks/bench_latency.py --weights best.pt --filter-rates 0.5 --round-to 1 8 16  # folded widths

Every figure is the median of ``--reps`` runs (default 20) after ``--warmup`` untimed ones, with ``--threads``
threads (default: torch's choice) for PyTorch and ONNX Runtime alike; the header names the CPU. ``--filter-rates``
adds, for each checkpoint, networks with that fraction of every plain conv's filters removed by L1 norm
(``prune.py --granularity filter``'s ranking, one local step) and folded: their speed, not their accuracy (which
needs the retraining ``prune.py`` does). ``--round-to`` folds each network once per width multiple
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

from benchmarks.common import latencies  # noqa: E402
from utils.checkpoint import load_model  # noqa: E402
from utils.export import FOLD_ROUND_TO, fold_empty_channels  # noqa: E402
from utils.general import cpu_name  # noqa: E402
from utils.pruning import Masks, filter_prune  # noqa: E402
from utils.summary import model_summary  # noqa: E402


def networks(weights, rates, round_to=(FOLD_ROUND_TO,)):
    """``[(label, folded model, {'params', 'removed', 'round_to'})]`` for each checkpoint, filter rate and width
    multiple."""
    out = []
    for w in weights:
        model, _ = load_model(w)
        variants = [(Path(w).name, model)]
        for rate in rates:
            masked, _ = load_model(w)
            masks = filter_prune(dict(masked.state_dict()), Masks.from_model(masked, granularity="filter"), rate)
            masks.apply(masked)
            variants.append((f"{Path(w).name} filters -{rate:g}", masked))
        for (label, net), r in ((v, r) for v in variants for r in round_to):
            folded, rep = fold_empty_channels(net.eval(), round_to=r)
            tag = f" (widths x{r})" if len(round_to) > 1 else ""
            out.append((label + tag, folded, {"params": rep["params_after"], "removed": rep["removed"], "round_to": r}))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", nargs="+", required=True, help="checkpoints (.pt, sparse exports)")
    ap.add_argument("--img-sizes", type=int, nargs="+", default=[256])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--filter-rates", type=float, nargs="*", default=[])
    ap.add_argument("--round-to", type=int, nargs="+", default=[FOLD_ROUND_TO],
                    help="fold each network with its conv widths rounded up to these multiples")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    meta = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "python": platform.python_version(),
            "reps": a.reps, "warmup": a.warmup}
    print(f"{meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}, {meta['date']}; median of {a.reps} "
          f"runs after {a.warmup} warm-up, ms per batch\n")
    print("| network | params | MACs (1 image) | size | batch | fp32 | bf16+cl | ONNX Runtime | ORT speed-up |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    rows, ref = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for label, net, info in networks(a.weights, a.filter_rates, a.round_to):
            for size in a.img_sizes:
                macs = model_summary(net, size)["macs"]
                for bs in a.batch_sizes:
                    t = latencies(net, size, a.reps, folder, batch=bs, warmup=a.warmup)
                    ort = t["ort"][1]
                    ref.setdefault((size, bs), ort)
                    row = {"network": label, **info, "macs": macs, "img_size": size, "batch": bs,
                           **{k: v[1] for k, v in t.items()}, "ort_speedup": ref[(size, bs)] / ort}
                    rows.append(row)
                    print(f"| {label} | {info['params']:,} | {macs / 1e6:,.0f} M | {size} | {bs} | {row['fp32']:.1f} | "
                          f"{row['bf16_cl']:.1f} | {ort:.1f} | {row['ort_speedup']:.2f}x |", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()

"""Compact models against yolov3-tiny on the shapes set, for the same training time: mAP, params, MACs, CPU latency.

    python benchmarks/bench_compact.py        # full: data/shapes.data (1000/200) at 256 px, yolov3-tiny 30 epochs
    python benchmarks/bench_compact.py --n-train 128 --n-val 32 --img-size 128 --epochs 10 \
        --train-args "--nominal-batch-size 16" --out runs/bench_compact_small       # reduced, for a loaded CPU
    python benchmarks/bench_compact.py --compact-args "--params params/compact.yaml"   # their own recipe
    python benchmarks/bench_compact.py --device 0 --jobs 4 ...     # on a GPU: rates timed there, runs side by side

Steps (subprocesses of the real entry script, with the default recipe of params/default.yaml):
1. the data: ``data/shapes.data`` (generated on first use), or with ``--n-train/--n-val`` a smaller shapes set
   written under ``--out``;
2. ``train.py --cfg cfg/yolov3-tiny.cfg --epochs E``: the reference and its time budget;
3. the same time for each compact cfg: the training-step throughput of every cfg is measured in this process
   (``bench_train.step_rate``: random images at ``--img-size``, in the precision and memory format train.py picks
   with ``--amp`` (``auto`` by default) and ``--memory-format auto``; best of ``--rate-rounds`` interleaved rounds), and a cfg that trains at ``r`` times
   tiny's speed gets ``max(1, round(E * r))`` epochs. With ``--img-size-start S`` the compact cfgs train with
   progressive resizing (train.py's flag); their rates are timed at every size they will train at, and they get
   the epoch count whose epochs, each costed at its own size, take the time nearest tiny's (``epochs_for_time``).
   The table shows the wall time each run really took, so the budget can be checked (the rates leave out what
   does not scale with the step: the loader, the EMA, each epoch's evaluation); ``--compact-epochs N`` sets the
   compact cfgs' epochs by hand instead, e.g. matched to tiny's wall time from an earlier run's epoch seconds.
   With ``--device 0`` the rates are timed on that GPU (fp16 autocast, synchronised); with ``--jobs N`` the
   training runs go N at a time once the rates are measured (each run keeps its epoch count, so sharing the
   machine changes the wall times in the table, not the budget);
4. ``train.py --cfg X --epochs E_X`` for each cfg of ``--cfgs``;
5. a markdown table (also ``OUT/results.md``): epochs, training wall time (sum of the epochs' seconds in
   results.csv, evaluation included; for the compact cfgs also as a share of tiny's, the check of the budget),
   mAP@0.5 and AP@[.5:.95] of best.pt (the best-fitness epoch of results.csv), parameters, MACs at 416 and at
   ``--img-size`` (thop, dense), and CPU ms/image of best.pt (batch 1, fp32, eval, no grad, median of
   ``--latency-runs`` at ``--img-size``, with the threads it shows).

A run folder that already holds a finished run (its results.csv has all epochs) is reused, so an interrupted
benchmark continues where it stopped (an unfinished run is trained again from scratch).
"""
import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import data_path, read_csv, run_timed  # noqa: E402
from utils.engine import progressive_img_size  # noqa: E402
from utils.general import select_device  # noqa: E402
from utils.memory_format import choose_memory_format  # noqa: E402
from utils.torch_utils import PRECISION_CHOICES, resolve_precision  # noqa: E402

REFERENCE = "cfg/yolov3-tiny.cfg"
STRIDE = 32  # the largest stride of every cfg here: progressive sizes are its multiples
COMPACT = ("cfg/yolo-nano.cfg", "cfg/yolo-nano_leaky.cfg", "cfg/yolov3-mobile.cfg", "cfg/yolov3-mobile_leaky.cfg",
           "cfg/mobilenetv3-yolo.cfg", "cfg/mobilenetv3-yolo_leaky.cfg")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfgs", default=",".join(COMPACT), help="compact cfgs, comma-separated")
    ap.add_argument("--data", default="data/shapes.data")
    ap.add_argument("--n-train", type=int, default=None, help="a smaller shapes set: training images")
    ap.add_argument("--n-val", type=int, default=None, help="a smaller shapes set: validation images")
    ap.add_argument("--img-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=30, help="yolov3-tiny's epochs; the others get the same time")
    ap.add_argument("--rate-steps", type=int, default=4, help="training steps timed per cfg and round")
    ap.add_argument("--rate-rounds", type=int, default=3, help="interleaved timing rounds (the best counts)")
    ap.add_argument("--latency-runs", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="",
                    help="train.py's --device; the rates are timed there too (default: the first GPU, else the CPU)")
    ap.add_argument("--jobs", type=int, default=1, help="training runs side by side (after the rates are timed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--amp", choices=PRECISION_CHOICES, default="auto",
                    help="train.py's --amp (passed on; the rates are timed in the precision it resolves to)")
    ap.add_argument("--no-amp", dest="amp", action="store_const", const="off", help="the same as --amp off")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads of every measurement and training run (OMP_NUM_THREADS; default: torch's)")
    ap.add_argument("--train-args", default="", help="extra train.py flags, one string")
    ap.add_argument("--compact-args", default="",
                    help="extra train.py flags for the compact cfgs only (e.g. \"--params params/compact.yaml\")")
    ap.add_argument("--img-size-start", type=int, default=0,
                    help="the compact cfgs train with train.py's progressive resizing from this size; their budget "
                         "counts each epoch at its own size's measured rate")
    ap.add_argument("--compact-epochs", type=int, default=0,
                    help="train the compact cfgs this many epochs instead of the measured budget (a count matched "
                         "to tiny's wall time by hand, e.g. from an earlier run's epoch seconds)")
    ap.add_argument("--out", default="runs/bench_compact")
    return ap.parse_args(argv)


def train(a, out, data, cfg, epochs):
    """``train.py`` into OUT/<cfg stem> unless a finished run is there; returns the run folder."""
    name = Path(cfg).stem
    run = out / name
    if len(read_csv(run / "results.csv")) >= epochs and (run / "weights" / "best.pt").is_file():
        print(f"{run}: finished run found, reused", flush=True)
        return run
    cmd = [sys.executable, "train.py", "--cfg", cfg, "--data", data, "--img-size", str(a.img_size),
           "--batch-size", str(a.batch_size), "--epochs", str(epochs), "--workers", str(a.workers),
           "--seed", str(a.seed), "--project", str(out), "--name", name, "--exist-ok", *a.train_args.split()]
    if a.device:
        cmd += ["--device", a.device]
    if cfg != REFERENCE:
        cmd += a.compact_args.split()
        if a.img_size_start:
            cmd += ["--img-size-start", str(a.img_size_start)]
    cmd += ["--amp", a.amp]
    run_timed(cmd, env=dict(os.environ, OMP_NUM_THREADS=str(a.threads)) if a.threads else None)
    return run


def train_rates(a, runs):
    """Training images per second of each ``(cfg, img_size)`` (random data, the engine's precision): the best of
    ``--rate-rounds`` interleaved rounds, so that a burst of load from other processes does not decide a budget."""
    from bench_train import step_rate

    from models import Darknet

    rates = {run: 0.0 for run in runs}
    device = select_device(a.device)
    precision = resolve_precision(device, a.amp)
    fmts = {run: choose_memory_format(Darknet(str(ROOT / run[0]), img_size=run[1]), device, precision, run[1],
                                      a.batch_size)[0] for run in runs}
    for _ in range(a.rate_rounds):
        for cfg, size in runs:
            rate = step_rate(str(ROOT / cfg), size, a.batch_size, precision.name, a.rate_steps, device,
                             fmts[cfg, size])
            rates[cfg, size] = max(rates[cfg, size], rate)
    return rates


def epochs_for_time(budget, rates, start, end, stride=STRIDE):
    """The epoch count whose training time is closest to ``budget`` (seconds per training image): each epoch ``e``
    of ``E`` costs ``1 / rates[size]`` at its progressive size (``engine.progressive_img_size``; ``end`` without
    ``start``). Without progressive resizing this is ``round(budget * rates[end])``; at least 1."""
    def cost(epochs):
        return sum(1 / rates[progressive_img_size(e, epochs, start, end, stride)] for e in range(epochs))

    epochs = 1
    while cost(epochs + 1) <= budget:
        epochs += 1
    return epochs + 1 if budget - cost(epochs) > cost(epochs + 1) - budget else epochs


def train_sizes(a):
    """The image sizes a compact cfg trains at: every stride multiple from ``--img-size-start`` to ``--img-size``."""
    if not a.img_size_start:
        return [a.img_size]
    return sorted({*range(max(STRIDE, a.img_size_start // STRIDE * STRIDE), a.img_size, STRIDE), a.img_size})


def plan_epochs(a, cfgs):
    """``{cfg: epochs}``: tiny's ``--epochs``; for each compact cfg ``--compact-epochs``, or the count that takes
    tiny's time at the measured training rates (``train_rates``, ``epochs_for_time``)."""
    epochs = {REFERENCE: a.epochs}
    if a.compact_epochs:
        epochs.update({c: a.compact_epochs for c in cfgs})
        print(f"epochs: yolov3-tiny {a.epochs}, the compact cfgs {a.compact_epochs} (--compact-epochs)", flush=True)
        return epochs
    sizes = train_sizes(a)
    print(f"timing {a.rate_rounds} x {a.rate_steps} training steps of each cfg at {a.img_size} px"
          + (f" (the compact cfgs also at {', '.join(map(str, sizes[:-1]))} px)" if len(sizes) > 1 else "") + " ...",
          flush=True)
    rates = train_rates(a, [(REFERENCE, a.img_size)] + [(c, s) for c in cfgs for s in sizes])
    budget = a.epochs / rates[REFERENCE, a.img_size]
    epochs.update({c: epochs_for_time(budget, {s: rates[c, s] for s in sizes}, a.img_size_start, a.img_size)
                   for c in cfgs})
    print("epochs for the same time: " + ", ".join(
        f"{Path(c).stem} {e} (" + ", ".join(f"{rates[c, s]:.1f}" for s in (sizes if c != REFERENCE else [a.img_size]))
        + " img/s)" for c, e in epochs.items()), flush=True)
    return epochs


def best_row(rows):
    """The epoch best.pt holds: the highest fitness 0.1 * mAP@0.5 + 0.9 * AP@[.5:.95] (the engine's)."""
    def fitness(r):
        return 0.1 * float(r.get("metrics/map50") or 0) + 0.9 * float(r.get("metrics/map") or 0)
    return max(rows, key=fitness)


def latency_ms(weights, img_size, runs):
    """Median CPU milliseconds per image of a checkpoint: batch 1, fp32, eval mode, no grad."""
    from utils.checkpoint import load_model

    model, _ = load_model(weights)
    model.float().eval()
    x = torch.rand(1, 3, img_size, img_size)
    times = []
    with torch.no_grad():
        for i in range(runs + 3):
            t = time.perf_counter()
            model(x)
            if i >= 3:
                times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def figures(run, img_size):
    from utils.summary import model_summary
    from utils.checkpoint import load_model

    model, _ = load_model(run / "weights" / "best.pt")
    at_size = model_summary(model, img_size)
    return at_size["params"], model_summary(model, 416)["macs"], at_size["macs"]


def main(argv=None):
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = (ROOT / a.out) if not Path(a.out).is_absolute() else Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = data_path(a, out)
    cfgs = [c.strip() for c in a.cfgs.split(",") if c.strip()]
    epochs = plan_epochs(a, cfgs)
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        futures = {c: pool.submit(train, a, out, data, c, epochs[c]) for c in [REFERENCE] + cfgs}
        runs = {c: f.result() for c, f in futures.items()}

    lines = ["| network | epochs | train time | mAP@0.5 | AP@[.5:.95] | vs tiny mAP@0.5 | params | MACs @416 | "
             f"MACs @{a.img_size} | CPU ms/img @{a.img_size} |", "|---|---|---|---|---|---|---|---|---|---|"]
    ref_map50 = ref_seconds = None
    for cfg in [REFERENCE] + cfgs:
        rows = read_csv(runs[cfg] / "results.csv")
        best = best_row(rows)
        seconds = sum(float(r["seconds"]) for r in rows)
        map50, map_ = float(best["metrics/map50"]), float(best["metrics/map"])
        ref_map50, ref_seconds = (map50, seconds) if cfg == REFERENCE else (ref_map50, ref_seconds)
        params, macs416, macs = figures(runs[cfg], a.img_size)
        ms = latency_ms(runs[cfg] / "weights" / "best.pt", a.img_size, a.latency_runs)
        share = f"{map50 / ref_map50:.0%}" if ref_map50 else "-"
        time_share = f" ({seconds / ref_seconds:.0%} of tiny's)" if cfg != REFERENCE and ref_seconds else ""
        lines.append(f"| {Path(cfg).stem} | {len(rows)} | {seconds:.0f} s{time_share} | {map50:.4f} | {map_:.4f} | "
                     f"{share} | {params:,} | {macs416 / 1e9:.2f} G | {macs / 1e9:.2f} G | {ms:.1f} |")
    text = "\n".join(lines)
    device = select_device(a.device)
    precision = resolve_precision(device, a.amp)
    setup = (f"{data}, {a.img_size} px, batch {a.batch_size}, {precision} on {device}, "
             f"{a.jobs} run(s) at a time, "
             f"yolov3-tiny {a.epochs} epochs, the others "
             + (f"{a.compact_epochs} epochs (--compact-epochs)" if a.compact_epochs else
                "the epochs that take the same time at their measured training speed")
             + f"; seed {a.seed}; extra train.py flags: {a.train_args or 'none'}; "
             f"for the compact cfgs only: {a.compact_args or 'none'}"
             + (f" and progressive resizing from {a.img_size_start} px" if a.img_size_start else "") + "; "
             f"CPU latency with {torch.get_num_threads()} threads")
    (out / "results.md").write_text(setup + "\n\n" + text + "\n")
    print(setup)
    print(text)


if __name__ == "__main__":
    main()

"""Lottery Ticket with late rewinding (prune.py --lth) on the shapes set: dense vs LTH global vs LTH local.

    python benchmarks/bench_lth.py     # full: shapes 1000/200 at 256 px, 10 rounds at 0.2 (89.3%), 10 epochs/round
    python benchmarks/bench_lth.py --n-train 128 --n-val 32 --img-size 96 --epochs 4 --rewind-epoch 1 \
        --out runs/bench_lth_small                                                # reduced, for a loaded CPU

Steps (subprocesses of the real entry script, so the numbers are what a user gets):
1. the data: ``data/shapes.data`` (generated on first use), or with ``--n-train/--n-val`` a smaller shapes set
   written under ``--out``;
2. ``prune.py --lth --scope global``: round 0 trains the dense network (``--epochs``) and captures the rewind
   weights after ``--rewind-epoch`` epochs, then ``--rounds`` rounds of prune (``--rate``) -> rewind -> retrain;
3. ``prune.py --lth --scope local --weights <global run>/round_0/weights/last.pt``: the same dense network and
   rewind point, pruned per layer instead of globally;
4. a markdown table: the dense network (round 0), and the last round of each scope (and, with ``--all-rounds``,
   every round): sparsity of the prunable weights, parameters alive, sparse and dense MACs (at ``--img-size``),
   mAP@0.5 and AP@[.5:.95] of each round's best.pt on the validation set, the change of mAP@0.5 against dense,
   and wall time (sum of the rounds' epoch times). Written to ``OUT/results.md`` too.

A run folder that exists is continued with ``prune.py --resume`` (finished rounds are never redone), so an
interrupted benchmark continues where it stopped.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import data_path, read_csv, run_timed  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default="cfg/yolov3-tiny.cfg")
    ap.add_argument("--data", default="data/shapes.data")
    ap.add_argument("--n-train", type=int, default=None, help="a smaller shapes set: training images")
    ap.add_argument("--n-val", type=int, default=None, help="a smaller shapes set: validation images")
    ap.add_argument("--img-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=10, help="epochs of every round (dense included)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--rewind-epoch", type=int, default=2)
    ap.add_argument("--scopes", default="global,local")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="")
    ap.add_argument("--all-rounds", action="store_true", help="one table row per round")
    ap.add_argument("--prune-args", default="", help="extra prune.py flags, one string")
    ap.add_argument("--out", default="runs/bench_lth")
    return ap.parse_args(argv)


def run_prune(a, out, data, scope, weights=None):
    """One prune.py run in OUT/<scope> (continued with --resume when it exists); returns its wall seconds."""
    run = out / scope
    if (run / "args.yaml").is_file():
        cmd = [sys.executable, "prune.py", "--resume", str(run)]
    else:
        cmd = [sys.executable, "prune.py", "--lth", "--scope", scope, "--cfg", a.cfg, "--data", data,
               "--img-size", str(a.img_size), "--batch-size", str(a.batch_size), "--epochs", str(a.epochs),
               "--rounds", str(a.rounds), "--prune-rate", str(a.rate), "--rewind-epoch", str(a.rewind_epoch),
               "--workers", str(a.workers), "--seed", str(a.seed), "--project", str(out), "--name", scope,
               "--exist-ok", *a.prune_args.split()]
        if a.device:
            cmd += ["--device", a.device]
        if weights:
            cmd += ["--weights", str(weights)]
    return run_timed(cmd)


def read_rows(run):
    return read_csv(run / "rounds.csv")


def table(out, scopes, all_rounds):
    lines = ["| network | round | sparsity | params alive | sparse MACs | dense MACs | mAP@0.5 | AP@[.5:.95] | "
             "Δ mAP@0.5 vs dense | wall time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    dense = read_rows(out / scopes[0])[0]

    def line(name, row):
        delta = float(row["map50"]) - float(dense["map50"])
        lines.append(f"| {name} | {row['round']} | {float(row['sparsity']):.2%} | {int(row['alive_params']):,} | "
                     f"{int(row['sparse_macs']):,} | {int(row['dense_macs']):,} | {float(row['map50']):.4f} | "
                     f"{float(row['map']):.4f} | {delta:+.4f} | {float(row['seconds']):.0f} s |")

    line("dense", dense)
    for scope in scopes:
        rows = read_rows(out / scope)[1:]
        for row in rows if all_rounds else rows[-1:]:
            line(f"LTH {scope}", row)
    total = {s: sum(float(r["seconds"]) for r in read_rows(out / s)[1:]) for s in scopes}
    lines.append("")
    lines.append("wall time per row: that round's training and evaluation; all pruned rounds: "
                 + ", ".join(f"{s} {t:.0f} s" for s, t in total.items()) + f"; dense {float(dense['seconds']):.0f} s")
    return "\n".join(lines)


def main(argv=None):
    a = parse_args(argv)
    out = (ROOT / a.out) if not Path(a.out).is_absolute() else Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = data_path(a, out)
    scopes = [s.strip() for s in a.scopes.split(",") if s.strip()]
    walls = {}
    for i, scope in enumerate(scopes):
        dense = out / scopes[0] / "round_0" / "weights" / "last.pt" if i else None
        walls[scope] = run_prune(a, out, data, scope, weights=dense)
    text = table(out, scopes, a.all_rounds)
    setup = (f"{a.cfg} on {data}, {a.img_size} px, batch {a.batch_size}, {a.epochs} epochs per round, "
             f"{a.rounds} rounds at {a.rate}, rewind to epoch {a.rewind_epoch}, seed {a.seed}; "
             f"process wall time: " + ", ".join(f"{s} {t:.0f} s" for s, t in walls.items()))
    (out / "results.md").write_text(setup + "\n\n" + text + "\n")
    print(setup)
    print(text)


if __name__ == "__main__":
    main()

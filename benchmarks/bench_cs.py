"""Continuous Sparsification (prune.py --cs) on the shapes set: a dense baseline against CS with 1 and 3 search rounds.

    python benchmarks/bench_cs.py          # full: yolov3-tiny, shapes 1000/200 at 256 px, params/CS.yaml settings
    python benchmarks/bench_cs.py --n-train 256 --n-val 64 --img-size 128 --nominal-batch-size 16 --epochs 6 \
        --ticket-epochs 20 --rewind-epoch 1 --out runs/bench_cs_small             # reduced, for a loaded CPU

Steps (subprocesses of the real entry scripts, so the numbers are what a user gets):
1. the data: ``data/shapes.data`` (generated on first use), or with ``--n-train/--n-val`` a smaller shapes set
   written under ``--out``;
2. ``train.py``: the dense network, trained for ``--ticket-epochs`` epochs (as long as a ticket is retrained), the
   reference of the "kept" column;
3. ``prune.py --cs --rounds R`` for each R of ``--rounds`` (default 1 and 3): R search rounds of ``--epochs``
   epochs (β from 1 to ``--final-temperature``), then the ticket (m = 1[s > 0], rewound to ``--rewind-epoch``)
   retrained for ``--ticket-epochs``; every other CS setting comes from params/CS.yaml or ``--prune-args``;
4. a markdown table, also written to ``OUT/results.md``: per network the sparsity of the prunable weights,
   parameters alive, sparse and dense MACs (at ``--img-size``), storage (the bytes of ``export.py --include sparse``,
   fp32 and ``--half``: one bit per prunable weight plus the kept values; dense tensors as they are), mAP@0.5 and
   AP@[.5:.95] of the checkpoint (each search round's last.pt, the ticket's best.pt, the dense best.pt), the share
   of the dense mAP@0.5 kept, and wall time. With ``--all-rounds`` the search rounds get rows too.

A run folder that exists is continued (``train.py --resume``/``prune.py --resume``; finished rounds are never
redone), so an interrupted benchmark continues where it stopped.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import data_path, read_csv, run_timed as run  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default="cfg/yolov3-tiny.cfg")
    ap.add_argument("--data", default="data/shapes.data")
    ap.add_argument("--n-train", type=int, default=None, help="a smaller shapes set: training images")
    ap.add_argument("--n-val", type=int, default=None, help="a smaller shapes set: validation images")
    ap.add_argument("--img-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--nominal-batch-size", type=int, default=None, help="accumulate to this batch (default: YAML)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of every search round (default: CS.yaml)")
    ap.add_argument("--ticket-epochs", type=int, default=30, help="epochs of the ticket and of the dense network")
    ap.add_argument("--rewind-epoch", type=int, default=None, help="default: CS.yaml")
    ap.add_argument("--rounds", default="1,3", help="search-round counts to run, comma-separated")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="")
    ap.add_argument("--all-rounds", action="store_true", help="rows for the search rounds too")
    ap.add_argument("--prune-args", default="", help="extra prune.py flags, one string (e.g. '--cs-lambda 1e-6')")
    ap.add_argument("--train-args", default="", help="extra train.py flags, one string")
    ap.add_argument("--out", default="runs/bench_cs")
    return ap.parse_args(argv)


def common(a, data):
    cmd = ["--cfg", a.cfg, "--data", data, "--img-size", str(a.img_size), "--batch-size", str(a.batch_size),
           "--workers", str(a.workers), "--seed", str(a.seed)]
    if a.nominal_batch_size:
        cmd += ["--nominal-batch-size", str(a.nominal_batch_size)]
    return cmd + (["--device", a.device] if a.device else [])


def run_dense(a, out, data):
    folder = out / "dense"
    if (folder / "weights" / "last.pt").is_file():
        last = last_epoch(folder)
        if last is not None and last >= a.ticket_epochs:
            return 0.0
        return run([sys.executable, "train.py", "--resume", str(folder / "weights" / "last.pt")])
    return run([sys.executable, "train.py", *common(a, data), "--epochs", str(a.ticket_epochs), "--project", str(out),
                "--name", "dense", "--exist-ok", *a.train_args.split()])


def last_epoch(folder):
    rows = read_csv(folder / "results.csv")
    return int(rows[-1]["epoch"]) if rows else None


def run_cs(a, out, data, rounds):
    folder = out / f"cs_{rounds}"
    if (folder / "args.yaml").is_file():
        return run([sys.executable, "prune.py", "--resume", str(folder)])
    cmd = [sys.executable, "prune.py", "--cs", *common(a, data), "--rounds", str(rounds),
           "--ticket-epochs", str(a.ticket_epochs), "--project", str(out), "--name", folder.name, "--exist-ok"]
    if a.epochs is not None:
        cmd += ["--epochs", str(a.epochs)]
    if a.rewind_epoch is not None:
        cmd += ["--rewind-epoch", str(a.rewind_epoch)]
    return run(cmd + a.prune_args.split())


def figures(path, img_size):
    """Parameters, sparsity, MACs and storage of a checkpoint (``models.model_summary`` with its file)."""
    from utils.summary import model_summary
    from utils.checkpoint import load_model

    model, _ = load_model(path)
    return model_summary(model, img_size=img_size, path=str(path))


def dense_row(out, img_size):
    folder = out / "dense"
    rows = read_csv(folder / "results.csv")
    fitness = [0.1 * float(r["metrics/map50"]) + 0.9 * float(r["metrics/map"]) for r in rows]
    row = rows[max(range(len(rows)), key=fitness.__getitem__)]  # the epoch best.pt holds
    s = figures(folder / "weights" / "best.pt", img_size)
    return {"name": "dense", "round": "", "sparsity": s["sparsity"], "alive": s["nonzero_params"],
            "params": s["params"], "sparse_macs": s["sparse_macs"], "macs": s["macs"], "bytes": s["sparse_bytes"],
            "half_bytes": s["sparse_half_bytes"], "map50": float(row["metrics/map50"]),
            "map": float(row["metrics/map"]), "seconds": sum(float(r["seconds"]) for r in rows)}


def cs_rows(out, rounds, img_size, all_rounds):
    folder = out / f"cs_{rounds}"
    result = []
    for row in read_csv(folder / "rounds.csv"):
        r = int(row["round"])
        ticket = row["kind"] == "cs-ticket"
        if not (ticket or all_rounds):
            continue
        wdir = folder / f"round_{r}" / "weights"
        path = wdir / "best.pt" if ticket and (wdir / "best.pt").is_file() else wdir / "last.pt"
        s = figures(path, img_size)
        result.append({"name": f"CS {rounds} round{'s' * (rounds != 1)}" + (" ticket" if ticket else " search"),
                       "round": r, "sparsity": float(row["sparsity"]), "alive": int(row["alive_params"]),
                       "params": int(row["params"]), "sparse_macs": int(row["sparse_macs"]),
                       "macs": int(row["dense_macs"]), "bytes": s["sparse_bytes"], "half_bytes": s["sparse_half_bytes"],
                       "map50": float(row["map50"]), "map": float(row["map"]), "seconds": float(row["seconds"]),
                       "total_seconds": sum(float(x["seconds"]) for x in read_csv(folder / "rounds.csv"))})
    return result


def table(rows, dense):
    lines = ["| network | round | sparsity | params alive | sparse MACs | dense MACs | storage fp32 / fp16 | mAP@0.5 | "
             "AP@[.5:.95] | mAP@0.5 kept | wall time |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kept = r["map50"] / dense["map50"] if dense["map50"] > 0 else float("nan")
        wall = f"{r['seconds']:.0f} s" + (f" ({r['total_seconds']:.0f} s all rounds)" if "total_seconds" in r else "")
        lines.append(f"| {r['name']} | {r['round']} | {r['sparsity']:.2%} | {r['alive']:,} / {r['params']:,} | "
                     f"{r['sparse_macs']:,} | {r['macs']:,} | {r['bytes'] / 2**20:.2f} / {r['half_bytes'] / 2**20:.2f} MiB"
                     f" | {r['map50']:.4f} | {r['map']:.4f} | {kept:.1%} | {wall} |")
    return "\n".join(lines)


def main(argv=None):
    a = parse_args(argv)
    out = (ROOT / a.out) if not Path(a.out).is_absolute() else Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = data_path(a, out)
    counts = [int(x) for x in a.rounds.split(",") if x.strip()]
    walls = {"dense": run_dense(a, out, data)}
    for n in counts:
        walls[f"cs_{n}"] = run_cs(a, out, data, n)
    dense = dense_row(out, a.img_size)
    rows = [dense] + [row for n in counts for row in cs_rows(out, n, a.img_size, a.all_rounds)]
    import yaml

    cs_args = yaml.safe_load((out / f"cs_{counts[0]}" / "args.yaml").read_text()) or {}
    setup = (f"{a.cfg} on {data}, {a.img_size} px, batch {a.batch_size}; CS: {cs_args.get('epochs')} epochs per search "
             f"round, ticket {cs_args.get('ticket_epochs')} epochs rewound to epoch {cs_args.get('rewind_epoch')}, "
             f"s0 {cs_args.get('mask_init')}, lambda {cs_args.get('cs_lambda')}, beta_T "
             f"{cs_args.get('final_temperature')}, mask lr {cs_args.get('mask_lr')}; dense: {a.ticket_epochs} epochs; "
             f"seed {a.seed}; process wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()))
    text = table(rows, dense)
    (out / "results.md").write_text(setup + "\n\n" + text + "\n")
    (out / "results.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=1))
    print(setup)
    print(text)


if __name__ == "__main__":
    main()

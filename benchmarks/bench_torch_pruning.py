"""Torch-Pruning (VainF), the peer structured pruner, against this toolkit's filter-level tickets on one network.

    python benchmarks/bench_torch_pruning.py \\
        --weights runs/table/shapes/dense-yolov3-tiny/seed0/round_0/weights/best.pt \\
        --target runs/table/shapes/lth-filter-local-yolov3-tiny/seed0/round_2/weights/best.pt \\
        --data data/shapes.data --img-size 256 --epochs 116

1. Installs ``torch-pruning`` into its own virtualenv (``--venv``). The project's torch is reused there through a
   ``.pth`` file, so Torch-Pruning is never a dependency of the toolkit.
2. In that virtualenv (``--worker``): prunes ``--weights`` (the converged dense network) with Torch-Pruning's
   dependency graph and its L1 group importance, the same ratio in every layer (its local mode, like ``prune.py
   --scope local``), the convs that feed a ``[yolo]`` head kept. The ratio is bisected until the network's MACs
   reach those of ``--target`` folded (``export.py --fold``), so both are judged at the same cost. ``--round-to``
   (Torch-Pruning's own ``round_to``; default that of ``export.py --fold-round-to``) keeps every width a multiple of
   it. The pruned network is written as a toolkit checkpoint with its own cfg text.
3. Fine-tunes it with ``train.py`` for ``--epochs`` (give the ticket's retraining budget: rounds x (epochs - rewind
   epoch)) on the same data, size and recipe (``--train-args`` for anything else).
4. Prints one markdown table (dense, ticket, Torch-Pruning): mAP@0.5 and AP@[.5:.95] (test.py's evaluation), params,
   MACs and ONNX Runtime latency at batch 1 (``--reps`` runs, median), with the CPU and threads; writes it with the
   numbers as ``--out``/result.json.

As a row of benchmarks/table.py (``--rows tp``): ``--macs-fraction F --project P --name N`` prunes ``--weights`` to
F of its MACs into ``P/N/pruned.pt`` and fine-tunes it there with ``train.py`` (every other flag goes to train.py),
so ``P/N`` is a train.py run folder; ``--resume P/N`` continues the fine-tuning.

Only networks of plain layers ([convolutional] with groups 1, [route], [shortcut], [upsample], [maxpool]) are
written back as cfg text: Torch-Pruning also narrows the inside of [pep]/[bottleneck]-style sections, whose widths a
cfg here cannot express.
"""
import argparse
import copy
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, ort_latency, peer_python, read_csv, run_timed  # noqa: E402
from utils.export import FOLD_ROUND_TO  # noqa: E402

PACKAGE = "torch-pruning==1.6.0"
PLAIN = {"convolutional", "route", "shortcut", "upsample", "maxpool", "yolo", "dropout"}


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True, help="the converged dense checkpoint")
    goal = ap.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target", help="the filter-level ticket whose folded MACs Torch-Pruning matches")
    goal.add_argument("--macs-fraction", type=float, help="prune to this fraction of the dense network's MACs")
    ap.add_argument("--resume", help="a table row's run folder: continue its fine-tuning")
    ap.add_argument("--round-to", type=int, default=FOLD_ROUND_TO,
                    help="kept channels per layer are a multiple of this (Torch-Pruning's round_to; 1: any count)")
    ap.add_argument("--data", default="data/shapes.data")
    ap.add_argument("--img-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=116, help="fine-tuning epochs (the ticket's retraining budget)")
    ap.add_argument("--train-args", default="", help="extra train.py flags, one string")
    ap.add_argument("--reps", type=int, default=20, help="timed ONNX Runtime runs per network (median)")
    ap.add_argument("--venv", default="runs/bench_torch_pruning/venv", help="Torch-Pruning's own virtualenv")
    ap.add_argument("--out", default="runs/bench_torch_pruning")
    ap.add_argument("--project", help="a table row: prune and fine-tune in PROJECT/NAME (other flags go to train.py)")
    ap.add_argument("--name", default="exp")
    ap.add_argument("--exist-ok", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return ap


# ------------------------------------------------------------------------------------ the virtualenv
def tp_python(venv):
    """The virtualenv's python, with torch-pruning installed in it (no dependencies: the project's torch is shared)."""
    return peer_python(venv, "torch_pruning", PACKAGE, no_deps=True)


# ------------------------------------------------------------------------------------ in the virtualenv
def check_plain(model, path):
    """A ``UserError`` unless every layer of ``model`` is one a cfg can give Torch-Pruning's widths."""
    from utils.errors import UserError

    kinds = {d["type"] for d in model.module_defs} - PLAIN
    if kinds or any(int(d.get("groups") or 1) != 1 for d in model.module_defs if d["type"] == "convolutional"):
        raise UserError(f"{path}: only plain-layer networks are written back as cfg text (found "
                        f"{', '.join(sorted(kinds)) or 'grouped convs'})")


def head_convs(model):
    """The convs that feed a [yolo] head: their filters are the boxes, so they are kept."""
    defs = model.module_defs
    return [model.module_list[i] for i in range(len(defs) - 1) if defs[i + 1]["type"] == "yolo"]


def tp_prune(model, ratio, img_size, round_to=1):
    """A copy of ``model`` with ``ratio`` of every prunable channel group removed by Torch-Pruning (L1), the kept
    widths multiples of ``round_to``."""
    import torch
    import torch_pruning as tp

    m = copy.deepcopy(model).eval()
    x = torch.rand(1, 3, img_size, img_size)
    pruner = tp.pruner.MetaPruner(m, x, importance=tp.importance.GroupMagnitudeImportance(p=1), pruning_ratio=ratio,
                                  ignored_layers=head_convs(m), global_pruning=False,
                                  round_to=round_to if round_to > 1 else None,
                                  output_transform=lambda out: out[0] if isinstance(out, (tuple, list)) else out)
    pruner.step()
    return m


def as_darknet(pruned):
    """The pruned module as a ``Darknet`` built from its own cfg text (conv filters written in)."""
    from models import Darknet
    from utils.export import render_cfg

    filters = {i: m.conv.out_channels for i, (d, m) in enumerate(zip(pruned.module_defs, pruned.module_list))
               if d["type"] == "convolutional"}
    text = render_cfg(pruned, filters)
    net = Darknet.from_text(text, name="torch-pruning.cfg", img_size=pruned.img_size, nc=pruned.nc)
    net.load_state_dict(pruned.state_dict())
    return net.eval(), text


def macs(model, img_size):
    from utils.summary import model_summary

    return model_summary(model, img_size)["macs"]


def target_macs(path, img_size):
    from utils.checkpoint import load_model
    from utils.export import fold_empty_channels

    model, _ = load_model(path)
    return macs(fold_empty_channels(model)[0], img_size)


def worker(a, out):
    from export import checkpoint_of
    from utils.checkpoint import load_model, save_checkpoint
    from utils.errors import UserError
    from utils.export import compare_outputs, write_text

    model, ckpt = load_model(a.weights)
    check_plain(model, a.weights)
    if a.macs_fraction is not None and not 0 < a.macs_fraction < 1:
        raise UserError(f"--macs-fraction {a.macs_fraction}: must lie in (0, 1)")
    goal = target_macs(a.target, a.img_size) if a.target else a.macs_fraction * macs(model, a.img_size)
    lo, hi = 0.0, 0.95
    for _ in range(12):  # bisect the ratio to the target's MACs (within 0.5%)
        mid = (lo + hi) / 2
        got = macs(tp_prune(model, mid, a.img_size, a.round_to), a.img_size)
        lo, hi = (mid, hi) if got > goal else (lo, mid)
        if abs(got - goal) <= 0.005 * goal:
            break
    module = tp_prune(model, mid, a.img_size, a.round_to)
    pruned, text = as_darknet(module)
    diff = compare_outputs(pruned, module, a.img_size)["raw"]
    if diff > 1e-4:
        raise UserError(f"Torch-Pruning's network and its cfg rebuild differ (max |diff| {diff:.3g})")
    save_checkpoint(checkpoint_of(pruned, ckpt), out / "pruned.pt")
    write_text(out / "pruned.cfg", text)
    print(json.dumps({"ratio": mid, "macs": macs(pruned, a.img_size), "target_macs": goal, "round_to": a.round_to}))


# ------------------------------------------------------------------------------------ the comparison
def score(path, a, folder):
    """mAP@0.5, AP, params, MACs and ONNX Runtime batch-1 latency (best, median ms) of ``path`` (folded)."""
    import torch

    from export import evaluate_map
    from utils.checkpoint import load_model
    from utils.export import fold_empty_channels
    from utils.summary import model_summary

    model, _ = load_model(path)
    model = fold_empty_channels(model)[0].eval()
    s = model_summary(model, a.img_size)
    map50, ap = evaluate_map(model, a.data, a.img_size, 32, 2)
    best, median = ort_latency(model, a.img_size, a.reps, folder, batch=1, warmup=3)
    return {"weights": str(path), "map50": map50, "ap": ap, "params": s["params"], "macs": s["macs"],
            "ort_ms": median, "ort_best_ms": best, "threads": torch.get_num_threads()}


def prune_in_venv(a, out):
    """``out/pruned.pt`` (and pruned.cfg): Torch-Pruning's network at the goal of ``a``, pruned in its virtualenv."""
    goal = ["--target", a.target] if a.target else ["--macs-fraction", a.macs_fraction]
    run_timed([tp_python(a.venv), Path(__file__).resolve(), "--weights", a.weights, *goal, "--img-size", a.img_size,
               "--round-to", a.round_to, "--out", out, "--worker"], env=dict(os.environ, PYTHONPATH=str(ROOT)))


def table_row(a, train_args):
    """The table's Torch-Pruning row: ``PROJECT/NAME/pruned.pt``, then train.py fine-tunes it in that folder."""
    train = [sys.executable, ROOT / "train.py"]
    if a.resume:
        return run_timed([*train, "--resume", a.resume, *train_args])
    folder = Path(a.project) / a.name
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "pruned.pt").is_file():
        prune_in_venv(a, folder)
    run_timed([*train, "--weights", folder / "pruned.pt", "--data", a.data, "--img-size", a.img_size, "--epochs",
               a.epochs, *train_args, "--project", a.project, "--name", a.name, "--exist-ok"])


def main(argv=None):
    a, train_args = build_parser().parse_known_args(argv)
    if a.worker:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        return worker(a, out)
    if a.project or a.resume:
        return table_row(a, train_args)
    if train_args:
        build_parser().error(f"unrecognized arguments: {' '.join(train_args)} (train.py flags go with --project)")
    if a.target is None:
        build_parser().error("the comparison needs --target (a filter-level ticket)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "pruned.pt").is_file():
        prune_in_venv(a, out)
    run = out / "finetune"
    if len(read_csv(run / "results.csv")) < a.epochs:
        if (run / "weights" / "last.pt").is_file():  # killed midway: continue that run
            run_timed([sys.executable, "train.py", "--resume", run / "weights" / "last.pt"])
        else:
            run_timed([sys.executable, "train.py", "--weights", out / "pruned.pt", "--data", a.data, "--img-size",
                       a.img_size, "--epochs", a.epochs, "--project", out, "--name", "finetune", "--exist-ok",
                       *a.train_args.split()])
    from utils.general import cpu_name

    rows = {"dense": score(a.weights, a, out), "ticket (folded)": score(a.target, a, out),
            "Torch-Pruning + fine-tune": score(run / "weights" / "best.pt", a, out)}
    dense = rows["dense"]["ort_ms"]
    print(f"{cpu_name()}, {rows['dense']['threads']} threads; ONNX Runtime, batch 1, {a.img_size} px, median of "
          f"{a.reps}; fine-tuning {a.epochs} epochs")
    print("| network | mAP@0.5 | AP@[.5:.95] | params | MACs | ORT ms | speed-up |\n|---|--:|--:|--:|--:|--:|--:|")
    for name, r in rows.items():
        print(f"| {name} | {r['map50']:.3f} | {r['ap']:.3f} | {r['params']:,} | {r['macs']:,} | {r['ort_ms']:.1f} | "
              f"{dense / r['ort_ms']:.2f}x |")
    (out / "result.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    from utils.errors import cli

    cli(main)

"""The results table: every model and compression technique, mean ± std over seeds, in one resumable command.

    python benchmarks/table.py --data data/shapes.data --seeds 3                     # the full table on shapes
    python benchmarks/table.py --data data/coco128.data --seeds 1 --readme README.md # and the README block
    python benchmarks/table.py --data data/shapes.data --seeds 1 --epochs 1 --rows tiny nano 'kd-*'   # a subset
    python benchmarks/table.py --data data/voc.data --hyp params/voc.yaml --device 0 --lth-rounds 10 \
        --prune-rate 0.2                                                              # the paper setting (GPU)
    python benchmarks/table.py --data data/shapes.data --list-rows                   # the rows and their runs
    python benchmarks/table.py --data data/shapes.data --dry-run                     # the commands, run nothing
    python benchmarks/table.py --data data/shapes.data --seeds 1 --big-cfg cfg/yolov3-tiny.cfg --rows tiny lth-global \
        lth-local cs1 cs3 --all-rounds                                   # LTH and CS, every round in rounds.md
    python benchmarks/table.py --data data/shapes.data --n-train 256 --n-val 64 ...  # a smaller shapes set

For each seed k in 0 .. --seeds-1 the real entry scripts run as subprocesses, each in a fixed folder
``OUT/<data stem>/<run id>/seed<k>/`` (``--out``, default runs/table), all with ``--seed k``:

| row | script | what it trains |
|---|---|---|
| ``tiny``, ``big`` | train.py, prune.py --lth --rounds 0 | baselines yolov3-tiny, yolov3 (``--big-cfg/-width``) |
| ``big-long`` (only when named) | train.py | the big model trained ``--long-epochs``: the dense reference of rows that train longer than ``--epochs`` |
| ``nano``, ``nano-leaky``, ``mnv3``, ``mnv3-leaky`` | train.py | the compact students (``--student NAME=CFG``) |
| ``mobile`` | train.py | YOLOv3-Mobile, a compact dense reference with the students' recipe (``--reference NAME=CFG``) |
| ``lth-local``, ``lth-global`` | prune.py --lth --weights DENSE | Lottery Ticket on the big model, from its dense run |
| ``lth-lr`` (only when named) | prune.py --lth --rewind lr | ``lth-local`` with learning-rate rewinding (Renda et al. 2020) |
| ``cs1``, ``cs3`` | prune.py --cs | Continuous Sparsification, 1 and 3 search rounds (``--cs-rounds``) |
| ``lth-filter``, ``cs-filter`` | prune.py --granularity filter | filter-level LTH and CS (1 round): foldable |
| ``tp`` (only when named) | benchmarks/bench_torch_pruning.py | the peer: Torch-Pruning to ``--tp-macs`` of the dense MACs, fine-tuned by train.py |
| ``kd-<student>`` | my_kd.py | classical KD (Chen et al. 2017) from the big model of the same seed (``--teacher-weights``: a given one) |
| ``gan-<student>`` | my_kd_gan.py | GAN KD (Wang et al. 2020) from the same teacher |
| ``kd2-``, ``gan-hint-``, ``gan-all-``, ``gan-light-``, ``gan-lighter-<student>`` (only when named) | my_kd.py, my_kd_gan.py | the distillation ablations (``DISTILL_ROWS``) |
| ``lth-<c>`` | prune.py --lth --weights DENSE | LTH on the composition student ``c`` (``--compose-student``) |
| ``lth+kd`` | my_kd.py --weights PRUNED | distillation into the pruned student ``lth-<c>``, its mask held fixed |
| ``kd+lth`` | prune.py --lth --weights DISTILLED | LTH of the distilled student ``kd-<c>`` |

The big model and the composition student are trained once per seed by ``prune.py --lth --rounds 0`` (the same
training as train.py, plus the capture of the rewind weights): that run is their baseline row, the KD teacher
(big model) and round 0 of both LTH rows; the other baselines are train.py runs. LTH runs ``--lth-rounds`` rounds
at ``--prune-rate`` (local: per layer; global: one threshold); ``kd+lth`` rewinds to the distilled weights
(``--rewind-epoch 0``). CS search rounds last ``max(2, --epochs)`` epochs, its ticket ``--epochs``. Every run of a
student (its baseline, KD, GAN, LTH and composition rows) also gets the training keys of ``--student-hyp``
(default params/compact.yaml: Adam, lr0 0.006, class gain 2, no gradient clip), typed after the ``--hyp`` flags.
With ``--equal-time`` every run of a student trains for the epochs that take the tiny baseline's training time:
training-step rates of tiny and each student timed once at every size they train at (cached in
``OUT/<stem>/rates.json``, so a rerun plans the same runs); ``--student-epochs N`` sets that count by hand.

After a run its final checkpoint is exported (``export.py --include sparse`` -> ``export/best.sparse.pt``, the
shipped artefact: a bitmask + non-zero values for pruned networks, plain fp32 tensors otherwise) and that artefact
is scored by ``test.py`` (``test/metrics.json``: mAP, parameters, non-zero parameters, dense and sparse MACs, bytes
on disk). Then ``table_done.json`` marks the folder complete. A rerun reuses complete folders (never re-running
them), continues an interrupted run with the script's own ``--resume``, and refuses a folder made with other
arguments (``table_spec.json``): change ``--out`` or delete it. ``OUT/<stem>/table.log`` records every run
started, finished, reused or failed (JSON lines); each run's output goes to ``OUT/<stem>/logs/``.

Outputs in ``OUT/<stem>/`` (``OUT/<--table-name>/`` for a second table on the same data, e.g. other models):
``table.md`` and ``table.csv`` (one row per technique: mean ± sample std over the
seeds, parsed back from the run folders), ``seeds.csv`` (one line per row and seed), ``table.json`` (everything,
plus command, machine and date), ``table.png`` (mAP@0.5 against storage, log x). ``--readme README.md`` rewrites
the block between ``<!-- table:start -->`` and ``<!-- table:end -->`` with every table under ``--out``, a section
each (images copied to ``--readme-images``).

Run folders stay on the machine that made them. ``--ledger docs/results/ledger_<stem>.json`` keeps every finished
run's figures (with its arguments, date, machine and commit) in a file committed with the code, so that a table built
slice by slice across sessions and machines keeps the rows whose folders are gone; they are marked † in the tables.
With a ledger, a run it records is not started again unless a run it lacks starts from it (an LTH row from its dense
run) or ``--rerun`` asks for it (after a code change); a record keeps its artefact's latency on every CPU that timed
it. A run is recorded as soon as it finishes, so a table stopped midway keeps the runs it finished.
"""
import argparse
import contextlib
import csv
import fnmatch
import importlib
import json
import os
import queue
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.errors import UserError, cli  # noqa: E402

START, END = "<!-- table:start -->", "<!-- table:end -->"

# The markdown table's columns (the README test checks them).
COLUMNS = ("model", "training", "mAP@0.5", "AP@[.5:.95]", "flat (last 5)", "params", "non-zero params", "dense MACs",
           "sparse MACs", "storage MiB", "latency ms", "filters folded", "artefact", "wall time", "runs")

# table.csv's columns: one line per row, means and sample standard deviations over the seeds.
CSV_COLUMNS = ("row", "model", "training", "seeds", "map50_mean", "map50_std", "map_mean", "map_std",
               "map50_flat_mean", "map50_flat_std", "params_mean",
               "params_std", "nonzero_params_mean", "nonzero_params_std", "sparsity_mean", "sparsity_std",
               "macs_mean", "macs_std", "sparse_macs_mean", "sparse_macs_std", "storage_bytes_mean",
               "storage_bytes_std", "latency_ms_mean", "latency_ms_std", "filters_mean", "filters_std",
               "filters_removed_mean", "filters_removed_std", "artefact", "wall_s_mean", "wall_s_std",
               "runs")

# seeds.csv's columns: one line per row and seed.
SEED_COLUMNS = ("row", "seed", "run", "map50", "map", "map50_flat", "params", "nonzero_params", "sparsity", "macs",
                "sparse_macs", "storage_bytes", "latency_ms", "latency_cpu", "latency_rule", "filters",
                "filters_removed", "artefact", "artefact_path", "checkpoint_bytes", "wall_s", "recorded")

# A run is converged when mAP@0.5 moved at most FLAT_POINTS over its last FLAT_EPOCHS evaluated epochs (issue 29).
FLAT_EPOCHS, FLAT_POINTS = 5, 1.0

METRICS = ("map50", "map", "map50_flat", "params", "nonzero_params", "sparsity", "macs", "sparse_macs",
           "storage_bytes", "latency_ms", "filters", "filters_removed", "wall_s")

MODEL_NAMES = {"yolov3-tiny": "YOLOv3-Tiny", "yolov3": "YOLOv3", "yolov3-spp": "YOLOv3-SPP",
               "yolo-nano": "YOLO Nano", "yolo-nano_leaky": "YOLO Nano leaky",
               "mobilenetv3-yolo": "MobileNetV3-YOLO", "mobilenetv3-yolo_leaky": "MobileNetV3-YOLO leaky",
               "yolov3-mobile": "YOLOv3-Mobile", "yolov3-mobile_leaky": "YOLOv3-Mobile leaky"}

DEFAULT_STUDENTS = ("nano=cfg/yolo-nano.cfg", "nano-leaky=cfg/yolo-nano_leaky.cfg",
                    "mnv3=cfg/mobilenetv3-yolo.cfg", "mnv3-leaky=cfg/mobilenetv3-yolo_leaky.cfg")
# compact networks trained alone, with the students' recipe: dense references without distillation rows
DEFAULT_REFERENCES = ("mobile=cfg/yolov3-mobile.cfg",)

# training flags every run script shares (train.py's parser); --hyp keys outside it are refused
RUN_KEYS_SKIPPED = ("cfg", "data", "weights", "params", "project", "name", "exist_ok", "resume", "seed")


# ----------------------------------------------------------------------------------------------------- options
def build_parser():
    p = argparse.ArgumentParser(prog="benchmarks/table.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="dataset .data file")
    p.add_argument("--n-train", type=int, default=None,
                   help="instead of --data's images: a smaller shapes set of this many training images, written "
                        "under --out (default 128 with --n-val)")
    p.add_argument("--n-val", type=int, default=None, help="... and this many validation images (default 32)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per row")
    g = p.add_argument_group("training settings of every run (default: --hyp, else params/default.yaml)")
    g.add_argument("--img-size", type=int, default=None, help="train and test image size")
    g.add_argument("--epochs", type=int, default=None, help="epochs of every training run (and LTH round)")
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--nominal-batch-size", type=int, default=None)
    g.add_argument("--hyp", default=None,
                   help="YAML of training hyperparameters (e.g. params/voc.yaml) passed to every run as flags")
    g.add_argument("--workers", type=int, default=2, help="data loader workers of every run")
    g.add_argument("--device", default="",
                   help="device of every run (cpu, 0, ...); several, e.g. 0,1,2,3: one run per device at a time")
    g.add_argument("--extra-args", default="", help="more flags for every training run, one quoted string")
    g = p.add_argument_group("models")
    g.add_argument("--tiny-cfg", default="cfg/yolov3-tiny.cfg", help="the small baseline")
    g.add_argument("--big-cfg", default="cfg/yolov3.cfg",
                   help="the big baseline: pruned by LTH and CS, teacher of every KD row")
    g.add_argument("--big-width", type=float, default=1.0,
                   help="scale the big cfg's conv widths (e.g. 0.25 where time forbids the full yolov3)")
    g.add_argument("--student", action="append", default=None, metavar="NAME=CFG",
                   help=f"a KD student (repeat; default: {' '.join(DEFAULT_STUDENTS)})")
    g.add_argument("--reference", action="append", default=None, metavar="NAME=CFG",
                   help=f"a compact network trained alone with the students' recipe, no distillation rows (repeat; "
                        f"default: {' '.join(DEFAULT_REFERENCES)}; '' for none)")
    g.add_argument("--compose-student", default="nano-leaky", help="the student of the LTH + KD / KD + LTH rows")
    g.add_argument("--student-hyp", default=str(ROOT / "params" / "compact.yaml"),
                   help="YAML whose training keys every run of a student gets on top of --hyp ('' for none)")
    g.add_argument("--equal-time", action="store_true",
                   help="every run of a student trains the epochs that take tiny's --epochs' time at the training "
                        "rates measured here (cached in OUT/<stem>/rates.json)")
    g.add_argument("--student-epochs", type=int, default=None,
                   help="every run of a student trains this many epochs (e.g. an --equal-time count from elsewhere)")
    g.add_argument("--teacher-weights", default=None,
                   help="a trained teacher for the distillation rows instead of the big model's dense run")
    g = p.add_argument_group("techniques")
    g.add_argument("--lth-rounds", type=int, default=3, help="LTH prune-rewind-retrain rounds")
    g.add_argument("--prune-rate", type=float, default=0.5, help="LTH: fraction of the surviving weights per round")
    g.add_argument("--filter-rounds", type=int, default=3, help="filter-level LTH rounds (the lth-filter row)")
    g.add_argument("--filter-rate", type=float, default=0.2,
                   help="filter-level LTH: fraction of the surviving filters removed per round")
    g.add_argument("--rewind-epoch", type=int, default=None,
                   help="LTH/CS rewind epoch (default: round(epochs / 30), the original's 10 of 300)")
    g.add_argument("--cs-rounds", type=int, nargs="+", default=[1, 3], help="CS search rounds, one row each")
    g.add_argument("--cs-epochs", type=int, default=None, help="epochs of a CS search round (default max(2, epochs))")
    g.add_argument("--long-epochs", type=int, default=None,
                   help="the big-long row: the big model trained this many epochs (default 2 x --epochs: as long as "
                        "the dense run and the tp row's fine-tuning together)")
    g.add_argument("--tp-macs", type=float, default=0.5,
                   help="the tp row: Torch-Pruning prunes the dense big model to this fraction of its MACs, then "
                        "train.py fine-tunes it for --epochs")
    g.add_argument("--prune-args", default="", help="more prune.py flags, one quoted string")
    g.add_argument("--cs-args", default="",
                   help="more prune.py flags for the CS rows only (e.g. --cs-lambda), one quoted string")
    g.add_argument("--lth-args", default="",
                   help="more prune.py flags for the pruned LTH rounds only, not the dense runs (e.g. --rewind lr)")
    g.add_argument("--lth-filter-args", default="",
                   help="more prune.py flags for the filter-level LTH row only, after --lth-args")
    g.add_argument("--cs-filter-args", default="",
                   help="more prune.py flags for the filter-level CS row only, after --cs-args")
    g.add_argument("--kd-args", default="", help="more my_kd.py flags, one quoted string")
    g.add_argument("--gan-args", default="", help="more my_kd_gan.py flags, one quoted string")
    g = p.add_argument_group("what to run and where")
    g.add_argument("--rows", nargs="+", default=None,
                   help="row names or patterns (default: all but tp, the peer tool's row; see --list-rows)")
    g.add_argument("--out", default="runs/table", help="run folders and tables go to OUT/<data stem>/")
    g.add_argument("--table-name", default=None,
                   help="write this table to OUT/NAME/ and name its README section NAME (default: the data stem), "
                        "e.g. a second table of other models on the same data; the runs stay in OUT/<data stem>/")
    g.add_argument("--readme", default=None, help="rewrite this README's block between the table markers")
    g.add_argument("--readme-images", default="docs/results",
                   help="folder (relative to the README) that receives the table_<stem>.png images")
    g.add_argument("--jobs", type=int, default=1, help="runs at once (subprocess runner; independent runs only)")
    g.add_argument("--runner", choices=("subprocess", "inprocess"), default="subprocess",
                   help="inprocess: call each script's main() in this process (no start-up cost; for tests)")
    g.add_argument("--list-rows", action="store_true", help="print the rows and the runs they need, then stop")
    g.add_argument("--all-rounds", action="store_true",
                   help="also write rounds.md: every round of every pruning run (LTH rounds, CS search rounds)")
    g.add_argument("--collect-only", action="store_true", help="start no run: tables from the finished runs")
    g.add_argument("--rerun", action="store_true",
                   help="train the rows' runs again even where the ledger records them (after a code change); "
                        "the new records replace the old")
    g.add_argument("--latency", action="store_true",
                   help="time the shipped artefact of each finished run of the rows, folded, in ONNX Runtime at "
                        "batch 1, all together in interleaved passes (latency.json): run it when nothing else runs")
    g.add_argument("--latency-reps", type=int, default=20, help="timed runs per latency pass (their median counts)")
    g.add_argument("--latency-passes", type=int, default=3,
                   help="passes over all the networks to time, interleaved; a latency is the median of its passes' "
                        "medians, so a slow spell of a shared machine falls on every row alike and is outvoted")
    g.add_argument("--latency-threads", type=int, default=None,
                   help="threads for the latency runs (default: torch's choice); the thread count is part of a "
                        "latency's CPU tag, so the ledger keeps an artefact's figure for each count timed")
    g.add_argument("--ledger", default=None,
                   help="JSON file of the finished runs' figures, e.g. docs/results/ledger_shapes.json: committed, it "
                        "carries a table across sessions and machines whose run folders are gone (a run found here "
                        "updates its record; a record stands in for a run with the same arguments and seed)")
    g.add_argument("--dry-run", action="store_true", help="print the commands of the runs to do, then stop")
    return p


def resolve_settings(a):
    """img_size, epochs, batch sizes and the --hyp flags: table flag > --hyp file > what train.py does with no flags
    (params/default.yaml over the settings' fallbacks)."""
    from utils.my_utils import load_params, train_parser

    actions = {x.dest: x for x in train_parser()._actions}
    base = {k: x.default for k, x in actions.items()}
    hyp = {k: v for k, (v, _) in load_params(a.hyp).items()} if a.hyp else {}
    flags = yaml_flags(a.hyp, hyp, base, actions)
    student = {k: v for k, (v, _) in load_params(a.student_hyp).items()} if a.student_hyp else {}
    a.student_flags = yaml_flags(a.student_hyp, student, dict(base, **hyp), actions)
    pick = lambda k: getattr(a, k) if getattr(a, k) is not None else hyp.get(k, base.get(k))  # noqa: E731
    a.img_size, a.epochs, a.batch_size = pick("img_size"), pick("epochs"), pick("batch_size")
    a.nominal_batch_size = pick("nominal_batch_size")
    a.img_size_start = hyp.get("img_size_start", base.get("img_size_start"))  # for --equal-time's sizes
    if not a.epochs or a.epochs < 1:
        raise UserError(f"--epochs must be 1 or more, not {a.epochs}")
    for flag in ("seeds", "latency_reps", "latency_passes", "latency_threads"):
        if getattr(a, flag) is not None and getattr(a, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be 1 or more, not {getattr(a, flag)}")
    if a.rewind_epoch is None:
        a.rewind_epoch = min(a.epochs, round(a.epochs / 30))
    a.cs_epochs = a.cs_epochs or max(2, a.epochs)
    if a.jobs < 1:
        raise UserError(f"--jobs must be 1 or more, not {a.jobs}")
    a.devices = [d.strip() for d in str(a.device).split(",") if d.strip()] or [""]
    if len(a.devices) > 1 and a.jobs == 1:
        a.jobs = len(a.devices)
    if a.runner == "inprocess" and a.jobs > 1:
        raise UserError("--runner inprocess runs one script at a time: drop --jobs")
    a.hyp_flags = flags
    return a


def yaml_flags(path, values, base, actions):
    """The flags that give a YAML's training keys where they differ from ``base`` (run-level keys skipped)."""
    flags = []
    for key, value in values.items():
        if key in RUN_KEYS_SKIPPED or key in ("img_size", "epochs", "batch_size", "nominal_batch_size"):
            continue
        if key not in actions:
            raise UserError(f"{path}: unknown key '{key}' (not a training flag)")
        if key in base and base[key] == value:
            continue  # what every script's YAML already gives
        option = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags += [option] if value else []
        else:
            flags += [option, str(value)]
    return flags


# ----------------------------------------------------------------------------------------------------- the plan
@dataclass
class Job:
    """One run of an entry script for one seed, in its own folder."""

    id: str                      # folder name below OUT/<stem>/, e.g. "lth-local-yolov3"
    seed: int
    folder: Path
    script: str                  # train.py, prune.py, my_kd.py, my_kd_gan.py
    argv: list                   # without --project/--name/--exist-ok
    deps: list = field(default_factory=list)   # keys of the jobs whose outputs argv names
    final_round: int = None      # prune.py runs: the round whose best.pt is the result
    pruned: bool = False         # the result holds masks: shipped as a sparse export

    @property
    def key(self):
        return (self.id, self.seed)

    def final(self):
        """The run's result checkpoint: best.pt (else last.pt) of the run, or of its last round."""
        wdir = self.folder / (f"round_{self.final_round}/weights" if self.final_round is not None else "weights")
        return wdir / "best.pt" if (wdir / "best.pt").is_file() else wdir / "last.pt"

    def weights(self, name="best.pt"):
        """Path of a checkpoint the run will write (for the argv of the runs that depend on it)."""
        if self.final_round is not None:
            return self.folder / f"round_{self.final_round}" / "weights" / name
        return self.folder / "weights" / name

    def command(self):
        return [self.script, *self.argv, "--project", str(self.folder.parent), "--name", self.folder.name,
                "--exist-ok"]


@dataclass
class Row:
    name: str
    model: str
    training: str
    job: str                     # the Job id whose result the row describes
    family: str                  # baseline, pruning, distillation, composition, peer


def model_label(cfg):
    stem = Path(cfg).stem
    m = re.fullmatch(r"(.+)-w([0-9.]+)", stem)
    if m and m.group(1) in MODEL_NAMES:
        return f"{MODEL_NAMES[m.group(1)]} (width x{m.group(2)})"
    return MODEL_NAMES.get(stem, stem)


def scale_cfg(src, width, dst):
    """Write ``src`` with every conv's filters scaled by ``width`` (rounded to a multiple of 8, at least 8), except
    the output convs before ``[yolo]`` layers (their filters follow the class count)."""
    text = Path(src).read_text()
    sections = re.split(r"(?m)^(?=\[)", text)
    out = []
    for i, sec in enumerate(sections):
        head = sec.strip().splitlines()[0].strip() if sec.strip() else ""
        nxt = next((s.strip().splitlines()[0].strip() for s in sections[i + 1:] if s.strip()), "")
        if head == "[convolutional]" and nxt != "[yolo]":
            sec = re.sub(r"(?m)^(\s*filters\s*=\s*)(\d+)",
                         lambda m: m.group(1) + str(max(8, int(round(int(m.group(2)) * width / 8)) * 8)), sec)
        out.append(sec)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(out)
    if not dst.is_file() or dst.read_text() != text:
        dst.write_text(text)
    return dst


def existing_cfg(path, what):
    p = Path(path)
    if not p.is_absolute():
        p = (Path.cwd() / p) if (Path.cwd() / p).is_file() else ROOT / p
    if not p.is_file():
        raise UserError(f"{path}: {what} cfg not found")
    return p.resolve()


def existing_file(path, flag):
    p = Path(path).resolve()
    if not p.is_file():
        raise UserError(f"{path}: {flag} not found")
    return p


def parse_students(specs, flag="--student"):
    out = {}
    for spec in specs:
        name, sep, cfg = spec.partition("=")
        if not sep or not name or not cfg or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise UserError(f"{flag} {spec!r}: expected NAME=CFG (NAME of letters, digits, '-', '_', '.')")
        out[name] = existing_cfg(cfg, f"{flag.lstrip('-')} {name}")
    return out


def build_plan(a, base):
    """``(rows, jobs)``: every row of the table and, per seed, the runs (``{key: Job}``, dependencies first)."""
    plan = Plan(a, base)
    for add_rows in (add_baselines, add_pruning_rows, add_distillation_rows, add_composition_rows):
        add_rows(plan)
    rows = select_rows(plan.unique_rows(), a.rows or [r.name for r in plan.unique_rows() if not opt_in(r.name)])
    jobs = plan.jobs(rows)
    missing = sorted({j.script for j in jobs.values() if not (ROOT / j.script).is_file()})
    if missing:
        raise UserError(f"{', '.join(missing)} not found in {ROOT}: leave its rows out with --rows")
    return rows, jobs


class Plan:
    """The rows and the specs of their runs (``job id -> (script, argv(seed, jobs), deps, final_round, pruned)``),
    with the flags every run of a kind shares; the ``add_*_rows`` functions fill it family by family."""

    def __init__(self, a, base):
        self.a = a
        self.tiny = existing_cfg(a.tiny_cfg, "--tiny-cfg")
        self.big = existing_cfg(a.big_cfg, "--big-cfg")
        if a.big_width != 1.0:
            if not 0 < a.big_width < 1:
                raise UserError(f"--big-width must be in (0, 1], not {a.big_width}")
            self.big = scale_cfg(self.big, a.big_width, base.parent / "cfg" / f"{self.big.stem}-w{a.big_width:g}.cfg")
        self.students = parse_students(a.student or DEFAULT_STUDENTS)
        self.references = parse_students([x for x in (DEFAULT_REFERENCES if a.reference is None else a.reference)
                                          if x], "--reference")  # --reference '': none
        if a.compose_student not in self.students:
            raise UserError(f"--compose-student {a.compose_student}: not one of the students "
                            f"({', '.join(self.students)})")
        common = ["--data", str(Path(a.data).resolve()), "--img-size", str(a.img_size), "--batch-size",
                  str(a.batch_size), "--workers", str(a.workers)]
        if a.nominal_batch_size:
            common += ["--nominal-batch-size", str(a.nominal_batch_size)]
        common += a.hyp_flags + shlex.split(a.extra_args)
        self.common_cs, self.common = ["--epochs", str(a.cs_epochs), *common], ["--epochs", str(a.epochs), *common]
        self.prune_extra, self.kd_extra, self.gan_extra = (shlex.split(s) for s in (a.prune_args, a.kd_args,
                                                                                       a.gan_args))
        self.cs_extra, self.lth_extra = ([*self.prune_extra, *shlex.split(x)] for x in (a.cs_args, a.lth_args))
        self.filter_extra = [*self.lth_extra, *shlex.split(a.lth_filter_args)]
        self.cs_filter_extra = [*self.cs_extra, *shlex.split(a.cs_filter_args)]
        self.cs_note, lth_note, self.filter_note, self.cs_filter_note = (
            f" ({x.strip()})" if x.strip() else "" for x in (
                a.cs_args, a.lth_args, f"{a.lth_args} {a.lth_filter_args}", f"{a.cs_args} {a.cs_filter_args}"))
        self.lth = ["--rounds", str(a.lth_rounds), "--prune-rate", f"{a.prune_rate:g}"]
        self.lth_label = f"{a.lth_rounds} round{'s' * (a.lth_rounds != 1)} at {a.prune_rate:g}{lth_note}"
        self.compose_cfg = self.students[a.compose_student]
        self.dense_cfgs = {self.big, self.compose_cfg}  # prune.py --lth --rounds 0: baseline, teacher, LTH round 0
        self.compact = {**self.students, **self.references}  # every network trained with the students' recipe
        self.student_epochs = plan_student_epochs(a, self.tiny, self.compact, self.common, base)
        self.base, self.rows, self.specs = base, [], {}

    def own(self, cfg):
        """The students' recipe and epochs for a run of ``cfg`` (nothing for the other models)."""
        if cfg not in set(self.compact.values()):
            return []
        epochs = ["--epochs", str(self.student_epochs[cfg])] if cfg in self.student_epochs else []
        return [*self.a.student_flags, *epochs]

    def job(self, jid, script, argv, deps=(), final_round=None, pruned=False):
        self.specs.setdefault(jid, (script, argv, list(deps), final_round, pruned))
        return jid

    def add(self, name, cfg, training, jid, family):
        self.rows.append(Row(name, model_label(cfg), training, jid, family))

    def baseline(self, cfg):
        """The run that trains ``cfg`` alone: prune.py --lth --rounds 0 for the models LTH rewinds, else train.py."""
        a = self.a
        if cfg in self.dense_cfgs:
            return self.job(f"dense-{cfg.stem}", "prune.py",
                            lambda s, J: ["--lth", "--cfg", str(cfg), "--rounds", "0", "--rewind-epoch",
                                          str(a.rewind_epoch), *self.common, *self.own(cfg), "--seed", str(s),
                                          *self.prune_extra], final_round=0)
        return self.job(f"train-{cfg.stem}", "train.py",
                        lambda s, J: ["--cfg", str(cfg), *self.common, *self.own(cfg), "--seed", str(s)])

    def lth_job(self, cfg, scope, granularity="weight", lr_rewind=False):
        """LTH on ``cfg`` from its dense run: weight-level (--lth-rounds at --prune-rate) or filter-level;
        ``lr_rewind``: weight-level with learning-rate rewinding, a run of its own beside the weight-rewound one."""
        a, dense, weights = self.a, self.baseline(cfg), granularity == "weight"
        schedule = self.lth if weights else ["--rounds", str(a.filter_rounds), "--prune-rate", f"{a.filter_rate:g}",
                                             "--granularity", "filter"]
        if lr_rewind:
            kind, extra = "lr-", [*self.lth_extra, "--rewind", "lr"]
        else:
            kind, extra = ("", self.lth_extra) if weights else ("filter-", self.filter_extra)
        return self.job(f"lth-{kind}{scope}-{cfg.stem}", "prune.py",
                        lambda s, J: ["--lth", "--cfg", str(cfg), "--weights",
                                      str(J[dense].folder / "round_0/weights/last.pt"), "--scope", scope, *schedule,
                                      *self.common, *self.own(cfg), "--seed", str(s), *extra],
                        deps=[dense], final_round=a.lth_rounds if weights else a.filter_rounds, pruned=True)

    def cs_job(self, rounds, granularity="weight"):
        """CS on the big model: ``rounds`` search rounds, then the ticket trained for --epochs."""
        a = self.a
        flags = ["--cs", "--cfg"] if granularity == "weight" else ["--cs", "--granularity", "filter", "--cfg"]
        return self.job(f"cs{rounds if granularity == 'weight' else '-filter'}-{self.big.stem}", "prune.py",
                        lambda s, J: [*flags, str(self.big), "--rounds", str(rounds), *self.common_cs,
                                      "--ticket-epochs", str(a.epochs), "--rewind-epoch",
                                      str(min(a.rewind_epoch, a.cs_epochs)), "--seed", str(s),
                                      *(self.cs_extra if granularity == "weight" else self.cs_filter_extra)],
                        final_round=rounds, pruned=True)

    def teacher(self):
        """``(deps, weights(J), label)`` of the distillation rows' teacher: --teacher-weights, else the big model's
        dense run."""
        if self.a.teacher_weights:  # a given teacher: no run of the big model behind the distillation rows
            given = str(existing_file(self.a.teacher_weights, "--teacher-weights"))
            return [], lambda J: given, f"KD from {Path(given).parent.parent.name}/{Path(given).name}"
        dense = self.baseline(self.big)
        return [dense], lambda J: str(J[dense].weights("best.pt")), f"KD from {model_label(self.big)}"

    def unique_rows(self):
        """One row per run: a row whose run another row already shows (e.g. --big-cfg = --tiny-cfg) is dropped."""
        seen, unique = set(), []
        for r in self.rows:
            if r.job not in seen and r.name not in {u.name for u in unique}:
                seen.add(r.job)
                unique.append(r)
        return unique

    def jobs(self, rows):
        """``{(job id, seed): Job}`` of every run the rows need, per seed, each after the runs it starts from."""
        needed, order = set(), []

        def visit(jid):
            if jid not in needed:
                for d in self.specs[jid][2]:
                    visit(d)
                needed.add(jid)
                order.append(jid)

        for r in rows:
            visit(r.job)
        jobs = {}
        for s in range(self.a.seeds):
            J = {}
            for jid in order:
                script, argv, deps, final_round, pruned = self.specs[jid]
                J[jid] = Job(jid, s, self.base / jid / f"seed{s}", script, [], [(d, s) for d in deps], final_round,
                             pruned)
                J[jid].argv = argv(s, J)
                jobs[(jid, s)] = J[jid]
        return jobs


def add_baselines(p):
    p.add("tiny", p.tiny, "default", p.baseline(p.tiny), "baseline")
    p.add("big", p.big, "default", p.baseline(p.big), "baseline")
    long = p.a.long_epochs or 2 * p.a.epochs
    jid = p.job(f"dense-e{long}-{p.big.stem}", "train.py",
                lambda s, J: ["--cfg", str(p.big), *p.common, "--epochs", str(long), "--seed", str(s)])
    p.add("big-long", p.big, f"default, {long} epochs", jid, "baseline")
    for name, cfg in p.compact.items():
        epochs = f", {p.student_epochs[cfg]} epochs" if cfg in p.student_epochs else ""
        recipe = Path(p.a.student_hyp).stem + " recipe" if p.a.student_flags else "default"
        p.add(name, cfg, recipe + epochs, p.baseline(cfg), "baseline")


def add_pruning_rows(p):
    """LTH local and global, filter-level LTH and CS, the CS rows, and the peer (Torch-Pruning) on the big model."""
    from utils.export import FOLD_ROUND_TO

    a, big = p.a, p.big
    p.add("lth-local", big, f"LTH local, {p.lth_label}", p.lth_job(big, "local"), "pruning")
    p.add("lth-global", big, f"LTH global, {p.lth_label}", p.lth_job(big, "global"), "pruning")
    p.add("lth-lr", big, f"LTH local, {p.lth_label}, learning-rate rewinding",
          p.lth_job(big, "local", lr_rewind=True), "pruning")
    p.add("lth-filter", big, f"LTH filters local, {a.filter_rounds} rounds at {a.filter_rate:g}{p.filter_note}",
          p.lth_job(big, "local", "filter"), "pruning")
    for n in a.cs_rounds:
        if n < 1:
            raise UserError(f"--cs-rounds {n}: a CS run needs 1 search round or more")
        p.add(f"cs{n}", big, f"CS {n} round{'s' * (n != 1)}{p.cs_note}", p.cs_job(n), "pruning")
    p.add("cs-filter", big, f"CS filters, 1 round{p.cs_filter_note}", p.cs_job(1, "filter"), "pruning")
    dense = p.baseline(big)
    jid = p.job(f"tp-{big.stem}", "benchmarks/bench_torch_pruning.py",
                lambda s, J: ["--weights", str(J[dense].weights("best.pt")), "--macs-fraction", f"{a.tp_macs:g}",
                              "--round-to", str(FOLD_ROUND_TO), *p.common, "--seed", str(s)], deps=[dense])
    p.add("tp", big, f"Torch-Pruning to {a.tp_macs:g} of the MACs + fine-tuning", jid, "peer")


def add_distillation_rows(p):
    """KD, GAN-KD and the opt-in ablations (``DISTILL_ROWS``) into every student, from one teacher."""
    deps, teacher, label = p.teacher()
    for prefix, (script, what, _) in DISTILL_ROWS.items():
        extra = p.kd_extra if script == "my_kd.py" else p.gan_extra
        for name, cfg in p.students.items():
            jid = p.job(f"{prefix}-{cfg.stem}", script,
                        lambda s, J, cfg=cfg, prefix=prefix, extra=extra: [
                            "--cfg", str(cfg), "--teacher-weights", teacher(J), *p.common, *p.own(cfg),
                            "--seed", str(s), *extra, *variant_flags(prefix, cfg, teacher(J), p.a, p.own(cfg))],
                        deps=deps)
            p.add(f"{prefix}-{name}", cfg, label.replace("KD", what, 1), jid, "distillation")


def add_composition_rows(p):
    """LTH of the composition student, KD into its ticket (mask held), and LTH of its distilled run."""
    deps, teacher, _ = p.teacher()
    c, name = p.compose_cfg, p.a.compose_student
    pruned = p.lth_job(c, "local")
    p.add(f"lth-{name}", c, f"LTH local, {p.lth_label}", pruned, "pruning")
    jid = p.job(f"lthkd-{c.stem}", "my_kd.py",
                lambda s, J: ["--cfg", str(c), "--weights", str(J[pruned].weights("best.pt")), "--teacher-weights",
                              teacher(J), *p.common, *p.own(c), "--seed", str(s), *p.kd_extra],
                deps=[pruned, *deps], pruned=True)
    p.add("lth+kd", c, f"LTH + KD (LTH local {p.lth_label}, mask held)", jid, "composition")
    distilled = f"kd-{c.stem}"
    jid = p.job(f"kdlth-{c.stem}", "prune.py",
                lambda s, J: ["--lth", "--cfg", str(c), "--weights", str(J[distilled].weights("best.pt")), "--scope",
                              "local", *p.lth, "--rewind-epoch", "0", *p.common, *p.own(c), "--seed", str(s),
                              *p.lth_extra],
                deps=[distilled], final_round=p.a.lth_rounds, pruned=True)
    p.add("kd+lth", c, f"KD + LTH (LTH local {p.lth_label})", jid, "composition")


# rows run only when --rows names them: tp installs Torch-Pruning into its own virtualenv; big-long trains the big
# model again, longer; lth-lr (Renda et al. 2020's rewinding) and the distillation ablations are studies of one
# technique, not rows of the comparison
OPT_IN_ROWS = ("tp", "big-long", "lth-lr", "kd2-*", "gan-hint-*", "gan-all-*", "gan-light-*", "gan-lighter-*")

# the distillation rows, per student: row prefix -> (script, training label, what the variant adds)
DISTILL_ROWS = {
    "kd": ("my_kd.py", "KD", "the default feature pair (params/KD.yaml)"),
    "kd2": ("my_kd.py", "KD, two feature pairs,", "the stage outputs at the two finest strides both networks detect at"),
    "gan": ("my_kd_gan.py", "KD GAN", "params/KD_GAN.yaml (Wang et al. 2020)"),
    "gan-hint": ("my_kd_gan.py", "KD GAN + hint 0.1,", "--hint-weight 0.1"),
    "gan-all": ("my_kd_gan.py", "KD GAN, adversarial every epoch,", "--second-stage EPOCHS"),
    "gan-light": ("my_kd_gan.py", "KD GAN, adv 0.1 on the full detection loss,",
                  "--adv-weight 0.1 --stage1-det-scale 1.0"),
    "gan-lighter": ("my_kd_gan.py", "KD GAN, adv 0.01 on the full detection loss,",
                    "--adv-weight 0.01 --stage1-det-scale 1.0"),
}


def opt_in(name):
    return any(fnmatch.fnmatchcase(name, p) for p in OPT_IN_ROWS)


def variant_flags(prefix, cfg, teacher, a, student_flags):
    """The flags a distillation row adds to its script's defaults (DISTILL_ROWS' third column)."""
    if prefix == "kd2":
        s, t = two_feature_pairs(str(cfg), teacher, a)
        return ["--student-features", *map(str, s), "--teacher-features", *map(str, t)]
    if prefix == "gan-all":
        return ["--second-stage", flag_value(["--epochs", str(a.epochs), *student_flags], "--epochs")]
    how = DISTILL_ROWS[prefix][2]
    return how.split() if how.startswith("--") else []


def two_feature_pairs(cfg, teacher, a):
    """``utils.distill.stage_feature_pairs`` with n=2: the teacher's architecture from its checkpoint where it is
    there already, else from --big-cfg (the run that will train it); the pairing needs no trained weights."""
    from models import Darknet
    from utils.checkpoint import load_model
    from utils.distill import stage_feature_pairs
    from utils.datasets import parse_data_cfg

    nc = int(parse_data_cfg(a.data)["classes"])
    t_net = load_model(teacher)[0] if Path(teacher).is_file() else Darknet(str(existing_cfg(a.big_cfg, "--big-cfg")),
                                                                             img_size=a.img_size, nc=nc)
    return stage_feature_pairs(Darknet(cfg, img_size=a.img_size, nc=nc), t_net, a.img_size, n=2)


def flag_value(argv, option, default=None):
    """The last value of ``option`` in ``argv`` (argparse's rule: the last one wins)."""
    values = [argv[i + 1] for i, x in enumerate(argv[:-1]) if x == option]
    return values[-1] if values else default


def plan_student_epochs(a, tiny, students, common, base):
    """``{student cfg: epochs}`` for every run of a student: ``--student-epochs``; with ``--equal-time`` the count
    whose epochs, each costed at its progressive size, take the time of tiny's ``--epochs`` (``measured_rates``,
    ``bench_train.epochs_for_time``); else nothing (they train --epochs like every run)."""
    if a.student_epochs:
        return {cfg: a.student_epochs for cfg in students.values()}
    if not a.equal_time:
        return {}
    from benchmarks.bench_train import STRIDE, epochs_for_time, train_sizes, training_cost
    from utils.engine import start_img_size

    start = lambda argv: start_img_size(  # noqa: E731  (the flag, else params/default.yaml's)
        float(flag_value(argv, "--img-size-start", a.img_size_start or 0)), a.img_size, STRIDE)
    tiny_start, student_start = start(common), start([*common, *a.student_flags])
    sizes = {tiny: train_sizes(tiny_start, a.img_size),
             **{cfg: train_sizes(student_start, a.img_size) for cfg in students.values()}}
    rates = measured_rates(a, sizes, base)
    tiny_rates = {s: rates[tiny.stem, s] for s in sizes[tiny]}
    budget = training_cost(a.epochs, tiny_rates, tiny_start, a.img_size)
    return {cfg: epochs_for_time(budget, {s: rates[cfg.stem, s] for s in sizes[cfg]}, student_start, a.img_size)
            for cfg in students.values()}


def measured_rates(a, sizes, base):
    """``{(cfg stem, size): training images per second}`` of every cfg at every size it trains at, on the first
    --device in the precision and memory format train.py picks there (``bench_train.train_rates``); timed once and
    kept in ``base/rates.json``, so a rerun plans the same epochs."""
    from benchmarks.bench_train import train_rates

    path = base / "rates.json"
    cached = {tuple(k.rsplit("@", 1)): v for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}
    cached = {(stem, int(size)): v for (stem, size), v in cached.items()}
    todo = [(cfg, s) for cfg, ss in sizes.items() for s in ss if (cfg.stem, s) not in cached]
    if todo:
        print(f"--equal-time: timing training steps of {len({c for c, _ in todo})} cfgs at "
              f"{', '.join(map(str, sorted({s for _, s in todo})))} px ...", flush=True)
        measured = train_rates(todo, a.batch_size, a.devices[0], flag_value(shlex.split(a.extra_args), "--amp", "auto"))
        cached.update({(cfg.stem, s): r for (cfg, s), r in measured.items()})
        base.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({f"{k}@{s}": v for (k, s), v in sorted(cached.items())}, indent=1))
    return cached


def select_rows(rows, patterns):
    names = [r.name for r in rows]
    chosen = set()
    for p in patterns:
        hit = [n for n in names if fnmatch.fnmatchcase(n, p)]
        if not hit:
            raise UserError(f"--rows {p}: no such row (rows: {' '.join(names)})")
        chosen.update(hit)
    return [r for r in rows if r.name in chosen]


# ----------------------------------------------------------------------------------------------------- runners
def _die_with_parent():
    """Child processes end when the table process dies (Linux), so a killed table leaves no orphan run behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def run_subprocess(script, argv, log_path, env=None):
    """Run ``python SCRIPT ARGV`` from the repository root, its output appended to ``log_path``; returns the status."""
    with open(log_path, "a") as f:
        f.write(f"$ {shlex.join(['python', script, *argv])}\n")
        f.flush()
        proc = subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=ROOT, stdout=f,
                              stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                              preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    return proc.returncode


def run_inprocess(script, argv, log_path, env=None):
    """Call ``SCRIPT.main(argv)`` in this process (output to ``log_path``); 0, 2 for a UserError, 1 for a crash."""
    import torch

    module = importlib.import_module(Path(script).stem)
    cwd = os.getcwd()
    with open(log_path, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        print(f"$ {shlex.join(['python', script, *argv])}  (in process)", flush=True)
        grad = torch.no_grad() if script in ("export.py", "test.py") else contextlib.nullcontext()
        try:
            os.chdir(ROOT)
            with grad:
                module.main(argv)
            return 0
        except UserError as e:
            print(f"error: {e}")
            return 2
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 1
        except Exception:
            traceback.print_exc()
            return 1
        finally:
            os.chdir(cwd)


RUNNERS = {"subprocess": run_subprocess, "inprocess": run_inprocess}


# ----------------------------------------------------------------------------------------------------- the ledger
class Ledger:
    """The finished runs' figures in one JSON file that outlives the run folders: one record per run and seed,
    with the run's arguments (its spec), so that a record only ever stands in for the same run. A record's
    ``latencies`` keep the artefact's latency on other CPUs (``{cpu: ms}``): a run measured again elsewhere adds a
    CPU instead of replacing one, as long as it is the same artefact (same mAP, non-zero parameters and bytes)."""

    KEPT = ("artefact", "latency_cpu", "latency_rule") + METRICS
    LATENCY = ("latency_ms", "latency_cpu", "latency_rule", "filters", "filters_removed")
    SAME_ARTEFACT = ("map50", "map", "nonzero_params", "storage_bytes")

    def __init__(self, path):
        self.path = Path(path)
        self.records = self.read()
        self.mine = []  # the records this table put: save() lays them over the file as it is then

    def read(self):
        try:
            return json.loads(self.path.read_text())["runs"] if self.path.is_file() else []
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{self.path}: not a table ledger ({e})") from None

    @staticmethod
    def key(rec):
        return rec["run"], rec["seed"], json.dumps(rec["spec"], sort_keys=True)

    def get(self, spec, job):
        return next((r for r in self.records if (r["run"], r["seed"], r["spec"]) == (job.id, job.seed, spec)), None)

    def put(self, spec, job, nums):
        """Record a finished run's figures (a record with the same figures keeps its date); returns the record."""
        old = self.get(spec, job)
        numbers = {k: nums.get(k) for k in self.KEPT}
        others = {}
        if old is not None and all(old["numbers"].get(k) == numbers[k] for k in self.SAME_ARTEFACT):
            before = old["numbers"]
            if numbers["latency_ms"] is None:  # not timed here: the latency timed before stands
                numbers.update({k: before.get(k) for k in self.LATENCY})
            others = dict(old.get("latencies", {}))
            if before.get("latency_ms") is not None:
                others[before["latency_cpu"]] = before["latency_ms"]
            others.pop(numbers["latency_cpu"], None)
        if old is not None and old["numbers"] == numbers and old.get("latencies", {}) == others:
            return old
        rec = {"run": job.id, "seed": job.seed, "spec": spec, "numbers": numbers, "date": nums["finished"][:10],
               "machine": nums["machine"], "commit": nums["commit"], **({"latencies": others} if others else {})}
        self.records = [r for r in self.records if r is not old] + [rec]
        self.mine = [r for r in self.mine if self.key(r) != self.key(rec)] + [rec]
        return rec

    def save(self):
        """Write the file as it is now on disk with this table's records laid over it: a table running beside
        this one (another row set, the same ledger) keeps the runs it recorded meanwhile."""
        from utils.checkpoint import write_atomic

        mine = {self.key(r) for r in self.mine}
        self.records = [r for r in self.read() if self.key(r) not in mine] + self.mine
        self.records.sort(key=lambda r: (r["run"], r["seed"], json.dumps(r["spec"])))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps({"runs": self.records}, indent=1) + "\n")


def moved(job, recorded):
    """A file the run's marker names (an absolute path), in ``job.folder`` wherever that folder lies now: a run folder
    copied from another machine (benchmarks/gpu_table.sh) keeps its layout below ``<run id>/seed<k>/``."""
    p = Path(recorded)
    parts = p.parts
    for i in range(len(parts) - 2, -1, -1):
        if (parts[i], parts[i + 1]) == (job.id, job.folder.name):
            return job.folder.joinpath(*parts[i + 2:])
    return p


def git_commit():
    """The repository's short commit hash (``+changes`` when the work tree differs from it), or 'unknown'."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


# ----------------------------------------------------------------------------------------------------- execution
class Table:
    """Runs the jobs (reusing finished ones) and collects their numbers."""

    def __init__(self, a, base, rows, jobs, runner=None, out=print):
        self.a, self.base, self.rows, self.jobs = a, base, rows, jobs
        self.dir = base.parent / (a.table_name or base.name)  # table.md, table.json, the plots
        self.runner = runner or RUNNERS[a.runner]
        self.out = out
        self.log_path = base / "table.log"
        self.lock = threading.Lock()
        self.env = dict(os.environ)
        if a.jobs > 1 and "OMP_NUM_THREADS" not in self.env:
            self.env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // a.jobs))
        self.status = {}
        self.ledger = Ledger(a.ledger) if a.ledger else None
        self.devices = queue.Queue()  # a run takes a device for its duration (several with --device 0,1,...)
        for i in range(a.jobs):
            self.devices.put(a.devices[i % len(a.devices)])

    # -- bookkeeping ---------------------------------------------------------------------------------
    def event(self, kind, job, **extra):
        rec = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "event": kind, "run": job.id,
               "seed": job.seed, **extra}
        with self.lock:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def spec(self, job):
        """What makes a run: script and arguments, with the table folder and the repository as placeholders."""
        def norm(x):
            return str(x).replace(str(self.base), "{OUT}").replace(str(ROOT), "{ROOT}")

        return {"script": job.script, "argv": [norm(x) for x in job.argv]}

    def check_specs(self):
        """Refuse folders made by other arguments before anything runs."""
        for job in self.jobs.values():
            for name in ("table_done.json", "table_spec.json"):
                path = job.folder / name
                if name == "table_spec.json" and not self.resume_argv(job):
                    continue  # nothing trained there yet (e.g. a set-up error): it starts afresh
                saved = json.loads(path.read_text()).get("spec") if path.is_file() else None
                if saved is not None and saved != self.spec(job):
                    raise UserError(f"{job.folder}: made by other arguments than this table's ({path.name}: "
                                    f"{spec_difference(saved, self.spec(job))}); delete the folder or choose "
                                    f"another --out")

    def done(self, job):
        marker = job.folder / "table_done.json"
        return marker.is_file() and json.loads(marker.read_text()).get("spec") == self.spec(job)

    def resume_argv(self, job):
        """The script's own --resume for an interrupted run folder, else None (start afresh)."""
        if job.script == "prune.py":
            started = (job.folder / "args.yaml").is_file() and any(p.is_dir() for p in job.folder.glob("round_*"))
        else:
            started = (job.folder / "weights" / "last.pt").is_file()
        return ["--resume", str(job.folder)] if started else None

    # -- running -------------------------------------------------------------------------------------
    def recorded(self, job):
        return not self.a.rerun and self.ledger is not None and self.ledger.get(self.spec(job), job) is not None

    def needed(self):
        """The keys of the jobs to run or reuse: those neither finished here nor in the ledger, and the runs they
        start from that are not finished here (a recorded run is trained again only when a new run needs it)."""
        keys = set()
        for job in reversed(list(self.jobs.values())):  # dependents before the runs they need
            if job.key in keys or not (self.done(job) or self.recorded(job)):
                keys.add(job.key)
                keys.update(d for d in job.deps if not self.done(self.jobs[d]))
        return keys

    def run_all(self):
        self.check_specs()
        needed = self.needed()
        order = [j for j in self.jobs.values() if j.key in needed or self.done(j)]
        for job in self.jobs.values():
            if job.key not in needed and not self.done(job):
                self.status[job.key] = True  # its figures come from the ledger
                self.out(f"{job.id} seed {job.seed}: recorded in the ledger, not run")
        if self.a.dry_run:
            for job in order:
                state = "reuse" if self.done(job) else ("resume" if self.resume_argv(job) else "run")
                self.out(f"# {job.id} seed {job.seed}: {state}")
                if state != "reuse":
                    cmd = [job.script, *self.resume_argv(job)] if state == "resume" else job.command()
                    self.out("python " + shlex.join(cmd).replace(f"{ROOT}/", ""))  # paths from the repository root
            return {}
        (self.base / "logs").mkdir(parents=True, exist_ok=True)
        n = len(order)
        if self.a.jobs == 1:
            for i, job in enumerate(order, 1):
                self.status[job.key] = self.attempt(job, i, n)
        else:
            self.run_parallel(order)
        return self.status

    def run_parallel(self, order):
        pending, running, counter = list(order), {}, iter(range(1, len(order) + 1))
        with ThreadPoolExecutor(self.a.jobs) as pool:
            while pending or running:
                for job in list(pending):
                    if any(self.status.get(d) is False for d in job.deps):
                        pending.remove(job)
                        self.status[job.key] = self.attempt(job, next(counter), len(order))  # logs the skip
                    elif all(self.status.get(d) is True for d in job.deps) and len(running) < self.a.jobs:
                        pending.remove(job)
                        running[pool.submit(self.attempt, job, next(counter), len(order))] = job
                if running:
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        job = running.pop(fut)
                        try:
                            self.status[job.key] = fut.result()
                        except Exception as e:  # a bug in the table itself: report it with the run
                            self.out(f"{job.id} seed {job.seed}: {type(e).__name__}: {e}")
                            self.status[job.key] = False

    def attempt(self, job, i, n):
        """Run one job unless it is finished; True when its folder is complete."""
        tag = f"[{i}/{n}] {job.id} seed {job.seed}"
        if self.done(job):
            self.event("reuse", job)
            self.out(f"{tag}: finished earlier, reused ({job.folder})")
            return True
        failed = [d for d in job.deps if self.status.get(d) is not True]
        if failed:
            self.event("skip", job, because=[f"{d[0]} seed {d[1]}" for d in failed])
            self.out(f"{tag}: skipped (needs {', '.join(f'{d[0]} seed {d[1]}' for d in failed)})")
            return False
        device = self.devices.get()
        try:
            return self.execute(job, tag, device)
        finally:
            self.devices.put(device)

    def execute(self, job, tag, device):
        """The run (fresh, or the script's --resume), its sparse export and test.py on it; then the marker."""
        log = self.base / "logs" / f"{job.id}-seed{job.seed}.log"
        job.folder.mkdir(parents=True, exist_ok=True)
        (job.folder / "table_spec.json").write_text(json.dumps({"spec": self.spec(job)}, indent=1) + "\n")
        resume = self.resume_argv(job)  # a resumed run keeps the device it started on (its saved arguments)
        cmd = [job.script, *resume] if resume else job.command() + (["--device", device] if device else [])
        self.event("start", job, resume=bool(resume), command=cmd, device=device)
        self.out(f"{tag}: {'resuming' if resume else 'running'} python {shlex.join(cmd)}  (log: {log})")
        t0 = time.time()
        steps = [("run", cmd[0], cmd[1:])]
        rc = self.runner(cmd[0], cmd[1:], log, self.env)
        if rc == 0 and not job.final().is_file():
            rc = f"no {job.final()} after the run"
        if rc == 0:
            final = job.final()
            export_dir = job.folder / "export"
            steps.append(("export", "export.py", ["--weights", str(final), "--include", "sparse", "--out",
                                                  str(export_dir)]))
            rc = self.runner("export.py", steps[-1][2], log, self.env)
            artefact = export_dir / (final.name[:-3] + ".sparse.pt")
            if rc == 0 and not artefact.is_file():
                rc = f"no {artefact} after export.py"
        if rc == 0:
            # test.py's own evaluation batch (the per-epoch rule); the test split where the .data file has one
            test_argv = ["--weights", str(artefact), "--data", str(Path(self.a.data).resolve()), "--img-size",
                         str(self.a.img_size), "--split", scored_split(self.a.data), "--workers",
                         str(self.a.workers), "--project", str(job.folder), "--name", "test", "--exist-ok"]
            test_argv += ["--device", device] if device else []
            steps.append(("test", "test.py", test_argv))
            rc = self.runner("test.py", test_argv, log, self.env)
            if rc == 0 and not (job.folder / "test" / "metrics.json").is_file():
                rc = "no test/metrics.json after test.py"
        seconds = round(time.time() - t0, 1)
        if rc != 0:
            self.event("fail", job, status=rc, step=steps[-1][0], log=str(log))
            self.out(f"{tag}: FAILED in {steps[-1][0]} ({rc}); see {log}")
            return False
        marker = {"spec": self.spec(job), "final": str(final), "artefact": str(artefact),
                  "pruned": job.pruned, "seconds_this_attempt": seconds,
                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "machine": machine(), "commit": git_commit(),
                  "commands": [[s, *argv] for _, s, argv in steps]}
        (job.folder / "table_done.json").write_text(json.dumps(marker, indent=1) + "\n")
        self.event("done", job, seconds=seconds)
        if self.ledger is not None:  # recorded at once: a session that ends mid-table keeps the runs it finished
            with self.lock:
                self.ledger.put(self.spec(job), job, self.numbers(job))
                self.ledger.save()
        self.out(f"{tag}: done in {seconds:.0f}s")
        return True

    # -- numbers -------------------------------------------------------------------------------------
    def numbers(self, job):
        """The figures of a finished job, parsed back from its folder; None when it is not finished."""
        if not self.done(job):
            return None
        marker = json.loads((job.folder / "table_done.json").read_text())
        metrics = json.loads((job.folder / "test" / "metrics.json").read_text())
        s = metrics.get("summary") or {}
        artefact, final = moved(job, marker["artefact"]), moved(job, marker["final"])
        return {"map50": float(metrics["map50"]), "map": float(metrics["map"]),
                "map50_flat": last_epochs_spread(final.parent.parent / "results.csv"), "params": int(s["params"]),
                "nonzero_params": int(s["nonzero_params"]), "sparsity": float(s["sparsity"]),
                "macs": float(s["macs"]), "sparse_macs": float(s["sparse_macs"]),
                "storage_bytes": int(s.get("file_bytes") or artefact.stat().st_size),
                "artefact": "sparse" if marker.get("pruned") else "fp32", "artefact_path": str(artefact),
                "checkpoint_bytes": final.stat().st_size if final.is_file() else "",
                **latency_fields(self.latency_record(job)), "wall_s": run_seconds(job),
                "finished": marker["finished"], "machine": marker.get("machine") or machine(),
                "commit": marker.get("commit", "unknown")}

    # -- latency ---------------------------------------------------------------------------------------
    def latency_setting(self):
        """What a latency figure depends on besides the artefact."""
        import torch

        from utils.general import cpu_name

        from utils.export import FOLD_ROUND_TO

        return {"cpu": cpu_name(), "threads": torch.get_num_threads(), "img_size": self.a.img_size, "batch": 1,
                "round_to": FOLD_ROUND_TO, "reps": self.a.latency_reps, "passes": self.a.latency_passes}

    def latency_record(self, job):
        """The run's latency.json when it was measured at this table's image size, else None."""
        path = job.folder / "latency.json"
        rec = json.loads(path.read_text()) if path.is_file() else {}
        return rec if rec.get("img_size") == self.a.img_size else None

    def measure_latencies(self):
        """latency.json for every finished run of the table whose artefact is on this machine, all timed afresh
        and together, in interleaved passes (``interleaved_latencies``): rows compared are timed in the same spell.
        ``--latency-threads`` sets the thread count for these runs only."""
        import torch

        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(self.a.latency_threads or threads)  # ONNX Runtime sessions take torch's count
            self.time_artefacts()
        finally:
            torch.set_num_threads(threads)

    def time_artefacts(self):
        """``measure_latencies`` at the thread count set."""
        import tempfile

        import torch

        from benchmarks.common import interleaved_latencies, ort_runner
        from utils.checkpoint import load_model
        from utils.export import fold_empty_channels

        setting = self.latency_setting()
        todo = {}  # (run id, seed): (job, artefact)
        for job in self.jobs.values():
            if not self.done(job):
                continue
            artefact = str(moved(job, json.loads((job.folder / "table_done.json").read_text())["artefact"]))
            if not Path(artefact).is_file():
                self.out(f"{job.id} seed {job.seed}: no latency, its artefact {artefact} is not on this machine")
                continue
            todo[(job.id, job.seed)] = job, artefact
        with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
            runners, folds = {}, {}
            for key, (job, artefact) in todo.items():
                model, _ = load_model(artefact)
                filters = sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))
                folded, report = fold_empty_channels(model.eval())
                folds[key] = (filters, report)
                runners[key] = ort_runner(folded, self.a.img_size, folder)
            timed = interleaved_latencies(runners, self.a.latency_reps, self.a.latency_passes, warmup=3)
        for key, (best, median, passes) in timed.items():
            (job, artefact), (filters, report) = todo[key], folds[key]
            rec = {**setting, "ms": round(median, 3), "best_ms": round(best, 3),
                   "pass_ms": [round(m, 3) for m in passes], "warmup": 3, "runtime": "onnxruntime",
                   "artefact": artefact, "params_folded": report["params_after"],
                   "filters": filters, "filters_removed": report["removed"],
                   "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
            (job.folder / "latency.json").write_text(json.dumps(rec, indent=1) + "\n")
            self.event("latency", job, ms=rec["ms"])
            self.out(f"{job.id} seed {job.seed}: {rec['ms']:.2f} ms (ONNX Runtime, batch 1, {self.a.img_size} px, "
                     f"passes {', '.join(f'{m:.2f}' for m in passes)}; {report['removed']} filters folded)")

    def seed_numbers(self, job):
        """A seed's figures: from its run folder (recorded in the ledger), else from the ledger's record of a run
        with the same arguments (``recorded``: when and where it ran), else None."""
        nums = self.numbers(job)
        if nums is not None:
            nums = dict(nums, seed=job.seed, run=str(job.folder), recorded=None, other_latencies={})
            if self.ledger is not None:
                rec = self.ledger.put(self.spec(job), job, nums)
                nums.update({k: rec["numbers"][k] for k in Ledger.LATENCY}, other_latencies=rec.get("latencies", {}))
            return nums
        rec = self.ledger.get(self.spec(job), job) if self.ledger is not None else None
        if rec is None:
            return None
        return dict(dict.fromkeys(METRICS), **rec["numbers"], seed=job.seed, run=str(job.folder), artefact_path="",
                    checkpoint_bytes="", other_latencies=rec.get("latencies", {}),
                    recorded=f"{rec['date']}, {rec['machine']}, commit {rec['commit']}")

    def collect(self):
        """Per row: the per-seed numbers and their mean and sample standard deviation."""
        out = []
        for row in self.rows:
            seeds = []
            for s in range(self.a.seeds):
                nums = self.seed_numbers(self.jobs[(row.job, s)])
                if nums is not None:
                    seeds.append(nums)
            agg = {}
            for k in METRICS:
                values = [x[k] for x in seeds if x[k] is not None]
                agg[k] = (statistics.fmean(values) if values else None,
                          statistics.stdev(values) if len(values) > 1 else None)
            others = {}
            for x in seeds:
                for cpu, ms in (x.get("other_latencies") or {}).items():
                    others.setdefault(cpu, []).append(ms)
            out.append({"row": row.name, "model": row.model, "training": row.training, "family": row.family,
                        "job": row.job, "seeds": seeds, "n": len(seeds), "agg": agg,
                        "other_latencies": {cpu: statistics.fmean(v) for cpu, v in others.items()},
                        "artefact": seeds[0]["artefact"] if seeds else "",
                        "runs": [str(self.jobs[(row.job, s)].folder) for s in range(self.a.seeds)]})
        return out


def widths(rec):
    """', widths xN' for a latency measured with folded widths rounded to multiples of N (N > 1)."""
    n = rec.get("round_to") or 1
    return f", widths x{n}" if n > 1 else ""


def timing_rule(rec):
    """How a latency record's figure was taken: 'median of N runs', or the median of interleaved passes' medians."""
    from benchmarks.common import timing_rule as rule

    return rule(rec["reps"], rec.get("passes") or 1) if rec.get("reps") is not None else None


def latency_fields(rec):
    """A run's latency record as table figures: the median ms, ``cpu, N threads``, how it was timed, the conv
    filters and how many folding removed (None where there is no record, or one from before the filter count)."""
    from benchmarks.common import threads_label

    rec = rec or {}
    return {"latency_ms": float(rec["ms"]) if rec else None,
            "latency_cpu": f"{rec['cpu']}, {threads_label(rec['threads'])}{widths(rec)}" if rec else None,
            "latency_rule": timing_rule(rec) if rec else None,
            "filters": rec.get("filters"), "filters_removed": rec.get("filters_removed")}


def spec_difference(saved, now):
    """A short account of how two run specs differ: the first argument where they part."""
    if saved.get("script") != now.get("script"):
        return f"{saved.get('script')} then, {now.get('script')} now"
    a, b = list(saved.get("argv", [])), list(now.get("argv", []))
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    j = i - 1 if i > 0 and a[i - 1].startswith("--") else i
    return f"then {shlex.join(a[j:i + 1]) or 'nothing'}, now {shlex.join(b[j:i + 1]) or 'nothing'}"


def last_epochs_spread(results_csv, n=FLAT_EPOCHS):
    """How flat a run ended: mAP@0.5's max - min over the last ``n`` evaluated epochs of its results.csv (a pruning
    run: its final round), or None with fewer evaluated epochs."""
    if not Path(results_csv).is_file():
        return None
    with open(results_csv, newline="") as f:
        maps = [float(r["metrics/map50"]) for r in csv.DictReader(f) if r.get("metrics/map50")]
    return round(max(maps[-n:]) - min(maps[-n:]), 6) if len(maps) >= n else None


def flat_cell(mean, std):
    """The spread in mAP@0.5 points; above ``FLAT_POINTS`` the run is marked as not converged."""
    if mean is None:
        return "-"
    spread = f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std else "") + " pt"
    return spread if 100 * mean <= FLAT_POINTS else f"{spread}, not flat"


def run_seconds(job):
    """Training time of a run: the ``seconds`` of every epoch (results.csv) or round (rounds.csv), summed."""
    path = job.folder / ("rounds.csv" if job.script == "prune.py" else "results.csv")
    if not path.is_file():
        return 0.0
    with open(path, newline="") as f:
        return round(sum(float(r.get("seconds") or 0) for r in csv.DictReader(f)), 1)


# ----------------------------------------------------------------------------------------------------- formatting
def fmt_float(mean, std, digits=3):
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std else "")


def fmt_int(mean, std):
    if mean is None:
        return "-"
    return f"{round(mean):,}" + (f" ± {round(std):,}" if std and round(std) else "")


def fmt_time(mean, std):
    if mean is None:
        return "-"
    unit, div = ("s", 1) if mean < 120 else ("min", 60) if mean < 7200 else ("h", 3600)
    return f"{mean / div:.1f}" + (f" ± {std / div:.1f}" if std and std / div >= 0.05 else "") + f" {unit}"


def fmt_share(part, whole):
    """``part`` as a percentage of ``whole`` ('-' when either is unknown)."""
    return "-" if part is None or not whole else f"{part / whole:.1%}"


def md_row(cells):
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def cpu_tag(result, cpus):
    """' [k]': the CPU (``cpus[k - 1]``) a row's latency was measured on, when the table's latencies come from more
    than one CPU ('' otherwise)."""
    cpu = next((x["latency_cpu"] for x in result["seeds"] if x["latency_ms"] is not None), None)
    return f" [{cpus.index(cpu) + 1}]" if len(cpus) > 1 and cpu in cpus else ""


def latency_cell(result, cpus):
    """The row's latency with its CPU tag, then the same artefact's latency on the table's other CPUs (ledger)."""
    cell = fmt_float(*result["agg"]["latency_ms"], digits=1) + cpu_tag(result, cpus)
    others = result.get("other_latencies") or {}
    more = [f"{others[c]:.1f}" + (f" [{k}]" if len(cpus) > 1 else "") for k, c in enumerate(cpus, 1) if c in others]
    return "; ".join(([] if cell == "-" else [cell]) + more) or "-"


def markdown_table(results, link_base, seeds, cpus=()):
    """The rows as markdown; the runs cell links each finished seed's folder (a ledger record: † instead) and says
    when a row has fewer seeds than the table asks for, or none yet; a latency says which of ``cpus`` it is from
    when there are several."""
    lines = [md_row(COLUMNS), "|" + "|".join(["---"] * 2 + ["--:"] * 10 + ["---"] * 3) + "|"]
    for r in results:
        g = r["agg"]
        mib = [None if v is None else v / 2**20 for v in g["storage_bytes"]]
        links = " ".join(f"s{x['seed']}†" if x["recorded"] else
                         f"[s{x['seed']}]({Path(os.path.relpath(x['run'], link_base)).as_posix()})" for x in r["seeds"])
        if r["n"] < seeds:
            links = f"{links} ({r['n']} of {seeds} seeds)" if r["n"] else "not run yet"
        lines.append(md_row([r["model"], r["training"], fmt_float(*g["map50"]), fmt_float(*g["map"]),
                             flat_cell(*g["map50_flat"]), fmt_int(*g["params"]), fmt_int(*g["nonzero_params"]),
                             fmt_int(*g["macs"]),
                             fmt_int(*g["sparse_macs"]), fmt_float(*mib, digits=2),
                             latency_cell(r, cpus),
                             fmt_share(g["filters_removed"][0], g["filters"][0]),
                             r["artefact"] or "-", fmt_time(*g["wall_s"]),
                             links]))
    return lines


def notes(meta):
    return [
        f"mean ± sample standard deviation over {meta['seeds']} seed{'s' * (meta['seeds'] != 1)} (no ± with one "
        f"seed; a row with fewer finished seeds says so in table.csv's `seeds`). mAP: `test.py` (pycocotools) on "
        f"the validation set at {meta['img_size']} px. flat (last {FLAT_EPOCHS}): mAP@0.5's spread (max - min) over "
        f"the run's last {FLAT_EPOCHS} evaluated epochs (a pruning run: its final round), in points; above "
        f"{FLAT_POINTS:g} pt the row says 'not flat': not trained to convergence. params: all parameters; non-zero "
        f"params: those not zero "
        f"(pruned rows). MACs: batch 1 at {meta['img_size']} px, dense (every kernel weight) and sparse (non-zero "
        f"kernel weights only). storage: bytes on disk of the shipped artefact `export.py --include sparse`: a "
        f"bitmask + non-zero values for pruned rows (`sparse`), plain fp32 tensors for dense ones (`fp32`). "
        f"latency: {latency_note(meta)}. filters folded: the share of the network's conv filters that folding "
        f"removes (all their weights pruned), measured with the latency. wall "
        f"time: the run's epochs (training + validation) summed over its rounds, start-up and the final test "
        f"excluded; a run a row starts from (teacher, dense round 0, pruned or distilled student) counts in its "
        f"own row. runs: the run folder of each seed."] + ledger_note(meta)


def ledger_note(meta):
    if not meta.get("recorded"):
        return []
    return ["", f"† figures from the ledger `{meta['ledger']}`: the run folder is not on this machine; the same run "
                f"(same arguments and seed) finished on {'; '.join(meta['recorded'])}."]


def latency_note(meta):
    cpus = meta.get("latency_cpus") or []
    if not cpus:
        return "not measured (`--latency`)"
    where = cpus[0] if len(cpus) == 1 else (
        "; ".join(f"[{k}] {c}" for k, c in enumerate(cpus, 1)) + ", as each latency's [k] says: figures of "
        "different [k] (another CPU or fold setting) do not compare, so compare a row with the dense row of the "
        "same [k]")
    return (f"ms per image of the shipped artefact with its empty filters folded away (`export.py --fold`; 'widths "
            f"xN': the folded conv widths rounded up to multiples of N, `--fold-round-to`), ONNX "
            f"Runtime, batch 1, {meta['img_size']} px, {' or '.join(meta.get('latency_rules') or ['median'])} "
            f"after 3 warm-up, on {where} (`--latency`, run with nothing else running)")


def describe(meta):
    same = meta.get("train_is_valid")
    load = f" (load average {meta['load']:.1f} at the start)" if meta.get("load") is not None else ""
    lines = [f"`{meta['command']}`", "",
             f"{meta['machine']}{load}; {meta['date']}; {meta['epochs']} epoch{'s' * (meta['epochs'] != 1)} at "
             f"{meta['img_size']} px, batch "
             f"{meta['batch_size']}; {meta['seeds']} seed{'s' * (meta['seeds'] != 1)}; training time of all runs "
             f"{fmt_time(meta['total_seconds'], None)}."]
    if same:
        lines += ["", "Trained and evaluated on the same images: a sanity check that the pipeline learns from real "
                      "images, not a measure of accuracy."]
    return lines


def machine():
    from utils.general import cpu_name

    text = f"{cpu_name()}, {os.cpu_count()} cores"
    try:
        import torch

        text += f", torch {torch.__version__}"
        if torch.cuda.is_available():
            text += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def plot(results, path, title, x_key="storage_bytes", cpus=()):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"baseline": "o", "pruning": "s", "distillation": "^", "composition": "D", "peer": "X"}
    fig, ax = plt.subplots(figsize=(8, 5))
    for fam, marker in markers.items():
        pts = [r for r in results if r["family"] == fam and r["n"] and r["agg"][x_key][0] is not None]
        if not pts:
            continue
        div = 2**20 if x_key == "storage_bytes" else 1
        x = [r["agg"][x_key][0] / div for r in pts]
        y = [r["agg"]["map50"][0] for r in pts]
        xerr = [(r["agg"][x_key][1] or 0) / div for r in pts]
        yerr = [r["agg"]["map50"][1] or 0 for r in pts]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=marker, capsize=3, label=fam)
        for xi, yi, r in zip(x, y, pts):
            tag = cpu_tag(r, cpus) if x_key == "latency_ms" else ""
            ax.annotate(r["row"] + tag, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for r in (r for r in results if x_key == "latency_ms" and r["n"]):  # the same artefacts timed on other CPUs
        for cpu, ms in (r.get("other_latencies") or {}).items():
            ax.plot([ms], [r["agg"]["map50"][0]], markers.get(r["family"], "o"), mfc="none", color="grey")
            ax.annotate(f"{r['row']} [{cpus.index(cpu) + 1}]", (ms, r["agg"]["map50"][0]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color="grey")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    for axis in (ax.xaxis,):
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))
    ax.set_xlabel("storage of the shipped artefact (MiB, log scale)" if x_key == "storage_bytes" else
                  "latency of the shipped artefact, folded (ms per image, ONNX Runtime, batch 1, log scale)")
    ax.set_ylabel("mAP@0.5")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(table, meta):
    """table.csv, seeds.csv, table.md, table.json and table.png in the table folder; returns the results."""
    base = table.dir
    base.mkdir(parents=True, exist_ok=True)
    results = table.collect()
    seeds = {(r["job"], x["seed"]): x for r in results for x in r["seeds"]}.values()  # a run once, whatever rows
    meta["total_seconds"] = round(sum(x["wall_s"] or 0 for x in seeds), 1)
    meta["latency_cpus"] = list(dict.fromkeys([*(x["latency_cpu"] for x in seeds if x["latency_ms"] is not None),
                                               *(c for x in seeds for c in x.get("other_latencies") or {})]))
    meta["latency_rules"] = sorted({x.get("latency_rule") or f"median of {table.a.latency_reps} runs"
                                    for x in seeds if x["latency_ms"] is not None})
    meta["recorded"] = sorted({x["recorded"] for x in seeds if x["recorded"]})
    meta["ledger"] = table.a.ledger
    with open(base / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in results:
            g = r["agg"]
            vals = {"row": r["row"], "model": r["model"], "training": r["training"], "seeds": r["n"],
                    "artefact": r["artefact"], "runs": " ".join(r["runs"])}
            for k in METRICS:
                vals[f"{k}_mean"], vals[f"{k}_std"] = ("" if v is None else v for v in g[k])
            w.writerow([vals.get(c, "") for c in CSV_COLUMNS])
    with open(base / "seeds.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SEED_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in results:
            for x in r["seeds"]:
                w.writerow(dict(x, row=r["row"]))
    title = f"{meta['stem']}: mAP@0.5 against storage ({meta['seeds']} seed{'s' * (meta['seeds'] != 1)})"
    lines = [f"# Results on {meta['stem']}", ""] + describe(meta) + [""]
    lines += markdown_table(results, base, meta["seeds"], meta["latency_cpus"]) + [""]
    lines += notes(meta) + ["", "![mAP@0.5 against storage](table.png)", ""]
    plot(results, base / "table.png", title)
    if meta["latency_cpus"]:
        lines += ["![mAP@0.5 against latency](table_latency.png)", ""]
        plot(results, base / "table_latency.png", title.replace("storage", "latency"), "latency_ms",
             meta["latency_cpus"])
    (base / "table.md").write_text("\n".join(lines))
    (base / "table.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=1) + "\n")
    if table.a.all_rounds:
        runs = pruning_rounds(table)
        (base / "rounds.md").write_text("\n".join(rounds_report(runs)) + "\n")
        plot_rounds_curves(runs, base / "rounds.png", f"{meta['stem']}: mAP@0.5 of every pruning round")
    return results


def plot_rounds_curves(runs, path, title):
    """rounds.png: mAP@0.5 against sparsity, one line per prune.py run of ``runs`` (``pruning_rounds``, seed 0), a
    point per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for job, rows in runs:
        rows = [r for r in rows if r["map50"] not in ("", None)]
        if job.seed == 0 and len(rows) > 1:
            ax.plot([100 * float(r["sparsity"]) for r in rows], [float(r["map50"]) for r in rows], "o-", label=job.id)
    ax.set_xlabel("sparsity of the prunable weights (%)")
    ax.set_ylabel("mAP@0.5")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pruning_rounds(table):
    """``[(job, its rounds.csv rows)]`` of every prune.py run of the table (rows: [] before it has any)."""
    from benchmarks.common import read_csv

    return [(job, read_csv(job.folder / "rounds.csv")) for job in table.jobs.values() if job.script == "prune.py"]


def rounds_report(runs):
    """rounds.md: one line per round of ``runs`` (``pruning_rounds``), seed by seed."""
    lines = ["| run | seed | round | kind | sparsity | params alive | sparse MACs | mAP@0.5 | AP@[.5:.95] | wall time |",
             "|---|--:|--:|---|--:|--:|--:|--:|--:|--:|"]
    for job, rows in runs:
        for r in rows:
            lines.append(f"| {job.id} | {job.seed} | {r['round']} | {r['kind']} | {float(r['sparsity']):.2%} | "
                         f"{int(r['alive_params']):,} | {int(r['sparse_macs']):,} | {float(r['map50'] or 'nan'):.3f} | "
                         f"{float(r['map'] or 'nan'):.3f} | {float(r['seconds'] or 0):.0f} s |")
    return lines


# ----------------------------------------------------------------------------------------------------- README
def readme_block(out_root, readme, images):
    """The README block: a section per data set table under ``out_root`` (oldest first)."""
    readme_dir = Path(readme).resolve().parent
    tables = []
    for path in Path(out_root).glob("*/table.json"):
        tables.append(json.loads(path.read_text()))
    tables.sort(key=lambda t: (t["meta"].get("created", ""), t["meta"]["stem"]))
    lines = [START, "<!-- written by benchmarks/table.py --readme; edits between the markers are overwritten -->"]
    for t in tables:
        meta = t["meta"]
        img_dir = (readme_dir / images).resolve()
        img_dir.mkdir(parents=True, exist_ok=True)
        lines += ["", f"### {meta['stem']}", ""] + describe(meta) + [""]
        cpus = meta.get("latency_cpus") or []
        lines += markdown_table(t["rows"], readme_dir, meta["seeds"], cpus) + [""] + notes(meta)
        for name, what in (("table", "storage"), ("table_latency", "latency")):
            src = Path(out_root) / meta["stem"] / f"{name}.png"
            img = img_dir / f"{name}_{meta['stem']}.png"
            if src.is_file():
                shutil.copyfile(src, img)
                rel = Path(os.path.relpath(img, readme_dir)).as_posix()
                lines += ["", f"![{meta['stem']}: mAP@0.5 against {what}]({rel})"]
    lines += ["", END]
    return "\n".join(lines)


def replace_block(text, block):
    """``text`` with the block between the markers replaced (or appended under a Results heading)."""
    if START in text and END in text:
        i, j = text.index(START), text.index(END) + len(END)
        return text[:i] + block + text[j:]
    if START in text or END in text:
        raise UserError(f"the README has only one of the markers {START} / {END}")
    return text.rstrip("\n") + "\n\n## Results\n\n" + block + "\n"


def parse_block(text):
    """The markdown tables between the markers: a list of ``(header cells, [row cells])``."""
    if START not in text or END not in text:
        raise ValueError("no table block")
    body = text[text.index(START) + len(START):text.index(END)]
    tables, cur = [], None
    for line in body.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if cur is None:
                cur = (cells, [])
                tables.append(cur)
            elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
                cur[1].append(cells)
        else:
            cur = None
    return tables


# ----------------------------------------------------------------------------------------------------- main
def scored_split(data):
    """The split a finished run is scored on: ``test`` where the .data file holds one (held out), else ``valid``."""
    from utils.datasets import parse_data_cfg

    return "test" if parse_data_cfg(data).get("test") else "valid"


def main(argv=None, runner=None, out=print):
    argv = sys.argv[1:] if argv is None else list(argv)
    a = resolve_settings(build_parser().parse_args(argv))
    if a.n_train or a.n_val:
        from benchmarks.common import data_path

        a.data = data_path(a, Path(a.out).resolve())
    if not Path(a.data).is_file() and not (a.dry_run or a.list_rows):
        raise UserError(f"{a.data}: no such .data file")
    stem = Path(a.data).stem
    out_root = Path(a.out).resolve()
    base = out_root / stem
    rows, jobs = build_plan(a, base)
    if a.list_rows:
        if not a.rows:
            out(f"(and, only when --rows names them: {', '.join(OPT_IN_ROWS)})")
        for r in rows:
            deps = sorted({d[0] for j in jobs.values() if j.id == r.job for d in j.deps})
            out(f"{r.name:<16} {r.model} | {r.training}  <- run {r.job}" + (f" (needs {', '.join(deps)})" if deps
                                                                             else ""))
        return rows
    if not a.dry_run:
        base.mkdir(parents=True, exist_ok=True)
    table = Table(a, base, rows, jobs, runner=runner, out=out)
    t0 = time.time()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    status = {} if a.collect_only else table.run_all()
    if a.dry_run:
        return status
    if a.latency:
        table.measure_latencies()
    from utils.datasets import parse_data_cfg

    data = parse_data_cfg(a.data)
    old = json.loads((table.dir / "table.json").read_text())["meta"] if (table.dir / "table.json").is_file() else {}
    meta = {"stem": table.dir.name, "data": str(Path(a.data).resolve()), "seeds": a.seeds, "epochs": a.epochs,
            "img_size": a.img_size, "batch_size": a.batch_size,
            "command": "python benchmarks/table.py " + shlex.join(argv), "machine": machine(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "created": old.get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "elapsed_this_invocation_s": round(time.time() - t0, 1), "load": old.get("load", load),
            "train_is_valid": Path(data["train"]).resolve() == Path(data["valid"]).resolve()}
    results = write_outputs(table, meta)
    if table.ledger is not None:
        table.ledger.save()
    if a.readme:
        readme = Path(a.readme)
        text = readme.read_text() if readme.is_file() else ""
        readme.write_text(replace_block(text, readme_block(out_root, readme, a.readme_images)))
        out(f"README block rewritten: {readme}")
    failed = [k for k, v in status.items() if v is False]
    out(f"table: {table.dir / 'table.md'} ({sum(r['n'] > 0 for r in results)}/{len(results)} rows with results; "
        f"{time.time() - t0:.0f}s)")
    if failed:
        raise UserError(f"{len(failed)} run(s) failed or were skipped: "
                        f"{', '.join(f'{j} seed {s}' for j, s in failed)}; see {base / 'logs'} (rerun to continue)")
    return results


if __name__ == "__main__":
    cli(main)

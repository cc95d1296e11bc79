"""Classical distillation (my_kd.py) on the shapes set (or any ``--data``): a student alone vs distilled with one and
two feature pairs.

    python benchmarks/bench_kd.py          # full: shapes 1000/200 at 256 px, teacher 60 + students 30 epochs
    python benchmarks/bench_kd.py --n-train 128 --n-val 32 --img-size 96 --nominal-batch-size 16 \
        --teacher-epochs 30 --epochs 20 --out runs/bench_kd_small                 # reduced, for a loaded CPU

Steps (each a subprocess of the real entry scripts, so the numbers are what a user gets):
1. the data: ``data/shapes.data`` (generated on first use), or with ``--n-train/--n-val`` a smaller shapes set
   written under ``--out``, or any ``--data`` file (``data/coco128.data``: train and evaluate on coco128 itself);
2. the teacher (``--teacher-cfg``, default yolov3-tiny) trained with ``train.py`` (skipped with ``--teacher-weights``);
3. the student (``--student-cfg``, default YOLO Nano; where ``cfg/yolo-nano.cfg`` does not exist yet, yolov3-tiny
   with every width divided by ``--slim``, written under ``--out``) trained alone with ``train.py``, and distilled
   with ``my_kd.py`` with one feature pair (the default pair) and with two (the stage outputs at the two finest
   strides both networks detect at); same epochs, seed and hyperparameters (params/KD.yaml inherits
   params/default.yaml);
4. every ``best.pt`` scored by ``test.py``; one markdown row per run (mAP@0.5, AP@[.5:.95], the change against the
   student alone) printed and written to ``OUT/results.md`` and ``OUT/results.json``.

A run whose ``metrics.json`` exists is not repeated, so an interrupted benchmark continues where it stopped.
"""
import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import run_timed as run  # noqa: E402


def add_settings(ap, epochs_help):
    """The teacher, student, data and training flags bench_kd.py and bench_gan.py share (bench_gan.py passes them on)."""
    ap.add_argument("--teacher-cfg", default="cfg/yolov3-tiny.cfg")
    ap.add_argument("--teacher-weights", default=None, help="a trained teacher (skips training one)")
    ap.add_argument("--student-cfg", default="cfg/yolo-nano.cfg")
    ap.add_argument("--teacher-epochs", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=30, help=epochs_help)
    ap.add_argument("--img-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--nominal-batch-size", type=int, default=None, help="default: params/default.yaml's")
    ap.add_argument("--data", default=None,
                    help="a .data file (e.g. data/coco128.data); default: the shapes set")
    ap.add_argument("--n-train", type=int, default=None, help="a smaller shapes set: training images")
    ap.add_argument("--n-val", type=int, default=None, help="a smaller shapes set: validation images")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_settings(ap, "student epochs (alone and distilled)")
    ap.add_argument("--slim", type=int, default=4, help="width divisor of the fallback student (yolov3-tiny)")
    ap.add_argument("--variants", default="alone,kd1,kd2", help="comma-separated subset of alone,kd1,kd2")
    ap.add_argument("--kd-args", default="", help="extra my_kd.py flags for the distilled runs, one string")
    ap.add_argument("--student-args", default="",
                    help="extra flags for every student run, alone and distilled (e.g. params/compact.yaml's "
                         "\"--optimizer adam --lr0 0.006 --cls 2 --grad-clip 0\")")
    ap.add_argument("--out", default="runs/bench_kd")
    return ap.parse_args(argv)


def slim_cfg(src, divisor, dst):
    """``src`` with the filters of every [convolutional] divided by ``divisor`` (the heads are reset by ``nc``)."""
    text = Path(src).read_text()
    text = re.sub(r"^(\s*filters\s*=\s*)(\d+)", lambda m: f"{m.group(1)}{max(int(m.group(2)) // divisor, 8)}", text,
                  flags=re.M)
    Path(dst).write_text(f"# {Path(src).name} with widths / {divisor} (bench_kd.py's fallback student)\n" + text)
    return dst


def data_file(args, out):
    if args.data:
        if args.n_train is not None or args.n_val is not None:
            raise SystemExit("--n-train/--n-val make a smaller shapes set: they do not go with --data")
        return Path(args.data).resolve()
    if args.n_train is None and args.n_val is None:
        return ROOT / "data" / "shapes.data"
    from utils.shapes import make_shapes

    return make_shapes(out / "shapes", n_train=args.n_train or 1000, n_val=args.n_val or 200,
                       img_size=max(args.img_size, 128), seed=0)


def setting_line(args):
    """The line above a results table: data (the .data file, or the shapes set and its size), size, batch, seed,
    teacher."""
    data = Path(args.data).name if args.data else (
        f"shapes {'full' if args.n_train is None else f'{args.n_train}/{args.n_val}'}")
    return (f"{data}, {args.img_size} px, batch {args.batch_size}, seed {args.seed}, "
            f"teacher {Path(args.teacher_cfg).name}")


def evaluate(weights, data, args, out, name, log):
    metrics = out / "test" / name / "metrics.json"
    if not metrics.is_file():
        run([sys.executable, "test.py", "--weights", weights, "--data", data, "--img-size", args.img_size,
             "--batch-size", args.batch_size, "--workers", args.workers, "--device", args.device,
             "--project", out / "test", "--name", name, "--exist-ok"], log)
    return json.loads(metrics.read_text())


def main(argv=None):
    args = parse_args(argv)
    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "bench_kd.log"
    data = data_file(args, out)
    common = ["--data", data, "--img-size", args.img_size, "--batch-size", args.batch_size, "--workers", args.workers,
              "--seed", args.seed, "--device", args.device, "--project", out, "--exist-ok"]
    if args.nominal_batch_size:
        common += ["--nominal-batch-size", args.nominal_batch_size]
    seconds = {}

    # the teacher
    teacher = Path(args.teacher_weights) if args.teacher_weights else out / "teacher" / "weights" / "best.pt"
    if not teacher.is_file():
        seconds["teacher"] = run([sys.executable, "train.py", "--cfg", args.teacher_cfg,
                                  "--epochs", args.teacher_epochs, *common, "--name", "teacher"], log)
    rows = [("teacher", Path(args.teacher_cfg).name, "-", evaluate(teacher, data, args, out, "teacher", log))]

    # the student
    student = ROOT / args.student_cfg
    if not student.is_file():
        student = slim_cfg(ROOT / "cfg" / "yolov3-tiny.cfg", args.slim, out / f"yolov3-tiny-slim{args.slim}.cfg")
        print(f"{args.student_cfg} not found: the student is {student.name}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    kd_extra = args.kd_args.split() if args.kd_args else []
    student_extra = args.student_args.split()
    pairs2 = two_pairs(student, teacher, args.img_size) if "kd2" in variants else None
    for v in variants:
        weights = out / v / "weights" / "best.pt"
        if v == "alone":
            cmd = [sys.executable, "train.py", "--cfg", student, "--epochs", args.epochs, *common, "--name", v,
                   *student_extra]
            pairs = "-"
        else:
            cmd = [sys.executable, "my_kd.py", "--cfg", student, "--teacher-weights", teacher, "--epochs", args.epochs,
                   *common, "--name", v, *student_extra, *kd_extra]
            if v == "kd2":
                cmd += ["--student-features", *pairs2[0], "--teacher-features", *pairs2[1]]
                pairs = ", ".join(f"{s}<-{t}" for s, t in zip(*pairs2))
            else:
                pairs = "default"
        if not (out / "test" / v / "metrics.json").is_file() and not weights.is_file():
            seconds[v] = run(cmd, log)
        rows.append((v, student.name, pairs, evaluate(weights, data, args, out, v, log)))

    base = next((m for v, _, _, m in rows if v == "alone"), None)
    lines = ["| run | network | feature pairs (student<-teacher) | epochs | mAP@0.5 | AP@[.5:.95] | "
             "Δ mAP@0.5 vs alone |", "|---|---|---|---|---|---|---|"]
    for v, net, pairs, m in rows:
        epochs = (("given" if args.teacher_weights else args.teacher_epochs) if v == "teacher" else args.epochs)
        delta = f"{100 * (m['map50'] - base['map50']):+.1f} pts" if base is not None and v.startswith("kd") else ""
        lines.append(f"| {v} | {net} | {pairs} | {epochs} | {m['map50']:.3f} | {m['map']:.3f} | {delta} |")
    table = "\n".join(lines)
    setting = setting_line(args)
    print(f"\n{setting}\n\n{table}")
    (out / "results.md").write_text(f"{setting}\n\n{table}\n")
    (out / "results.json").write_text(json.dumps({"setting": vars(args), "seconds": seconds,
                                                  "rows": [{"run": v, "network": n, "pairs": p, "map50": m["map50"],
                                                            "map": m["map"]} for v, n, p, m in rows]}, indent=1))
    return rows


def two_pairs(student_cfg, teacher_weights, img_size):
    """The stage outputs at the two finest strides both networks detect at (``utils.distill.stage_feature_pairs``)."""
    from models import Darknet
    from utils.checkpoint import load_model
    from utils.distill import stage_feature_pairs

    teacher, _ = load_model(teacher_weights)
    student = Darknet(student_cfg, img_size=img_size, nc=teacher.nc)
    return stage_feature_pairs(student, teacher, img_size, n=2)


if __name__ == "__main__":
    from utils.errors import cli

    cli(main)

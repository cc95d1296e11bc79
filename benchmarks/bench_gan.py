"""GAN distillation (my_kd_gan.py, Wang et al. 2020) on the shapes set beside the student alone and classical KD.

    python benchmarks/bench_gan.py         # full: shapes 1000/200 at 256 px, teacher 60 + students 30 epochs
    python benchmarks/bench_gan.py --n-train 128 --n-val 32 --img-size 96 --nominal-batch-size 16 \
        --teacher-epochs 30 --epochs 20 --out runs/bench_kd_small                 # reduced, for a loaded CPU

Steps (subprocesses of the real entry scripts, so the numbers are what a user gets):
1. the data, the teacher, the student alone and the classically distilled student (``kd1``, ``kd2``) are
   ``benchmarks/bench_kd.py``'s: it is called with the same settings and the same ``--out``, so runs it already
   made there are reused, not repeated (the default ``--out`` is bench_kd.py's);
2. the GAN-distilled students with ``my_kd_gan.py`` (params/KD_GAN.yaml: the raw prediction maps paired by stride,
   one discriminator each, adversarial stage for the first 2/3 of the epochs with the detection loss x0.05, then
   detection loss only): ``gan`` with the defaults, ``gan_hint`` with ``--hint-weight 0.1`` too, ``gan_all`` with
   the adversarial stage over every epoch (``--second-stage EPOCHS``), ``gan_light`` with ``--adv-weight 0.1`` on
   the full detection loss (``--stage1-det-scale 1``), ``gan_lighter`` the same with 0.01; same epochs, seed
   and hyperparameters;
3. every ``best.pt`` scored by ``test.py``; one markdown row per run (mAP@0.5, AP@[.5:.95], change against the
   student alone, training seconds from its results.csv, the discriminator's last-stage-1 accuracies) printed and
   written to ``OUT/results_gan.md`` and ``OUT/results_gan.json``.

A run whose ``metrics.json`` exists is not repeated, so an interrupted benchmark continues where it stopped.
"""
import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_kd  # noqa: E402
from common import run_timed  # noqa: E402

KD_VARIANTS = ("alone", "kd1", "kd2")
GAN_VARIANTS = {"gan": [], "gan_hint": ["--hint-weight", "0.1"], "gan_all": None,  # None: --second-stage EPOCHS
                "gan_light": ["--adv-weight", "0.1", "--stage1-det-scale", "1.0"],
                "gan_lighter": ["--adv-weight", "0.01", "--stage1-det-scale", "1.0"]}
GAN_NAMES = {"gan": "GAN (Wang et al.)", "gan_hint": "GAN (Wang et al.) + hint 0.1",
             "gan_all": "GAN (Wang et al.), adversarial every epoch",
             "gan_light": "GAN, adv weight 0.1, full detection loss in stage 1",
             "gan_lighter": "GAN, adv weight 0.01, full detection loss in stage 1"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_kd.add_settings(ap, "student epochs (alone, KD and GAN)")
    ap.add_argument("--variants", default="alone,kd1,gan",
                    help=f"comma-separated subset of {','.join(KD_VARIANTS + tuple(GAN_VARIANTS))}")
    ap.add_argument("--kd-args", default="", help="extra my_kd.py flags for the KD runs, one string")
    ap.add_argument("--gan-args", default="", help="extra my_kd_gan.py flags for the GAN runs, one string")
    ap.add_argument("--out", default="runs/bench_kd", help="bench_kd.py's folder by default, to reuse its runs")
    return ap.parse_args(argv)


def bench_kd_argv(args, variants):
    """bench_kd.py's command line for the same settings."""
    argv = ["--teacher-cfg", args.teacher_cfg, "--student-cfg", args.student_cfg,
            "--teacher-epochs", args.teacher_epochs, "--epochs", args.epochs, "--img-size", args.img_size,
            "--batch-size", args.batch_size, "--workers", args.workers, "--seed", args.seed, "--device", args.device,
            "--variants", ",".join(variants), "--out", args.out]
    for flag_name, value in (("--teacher-weights", args.teacher_weights),
                             ("--nominal-batch-size", args.nominal_batch_size), ("--n-train", args.n_train),
                             ("--n-val", args.n_val), ("--kd-args", args.kd_args or None), ("--data", args.data)):
        if value is not None:
            argv += [flag_name, value]
    return [str(a) for a in argv]


def run_stats(run_dir):
    """Training seconds (sum over epochs) and the discriminator's accuracies in the last stage-1 epoch, from
    results.csv."""
    path = Path(run_dir) / "results.csv"
    if not path.is_file():
        return {}
    rows = list(csv.DictReader(path.open()))
    out = {"seconds": sum(float(r.get("seconds") or 0) for r in rows)}
    stage1 = [r for r in rows if r.get("train/D_loss")]
    if stage1:
        last = stage1[-1]
        out.update({k: float(last[f"train/{k}"]) for k in ("D_loss", "D_real", "D_fake", "adv")})
        out["collapsed_epochs"] = sum(int(float(r.get("gan/collapsed") or 0)) for r in rows)
    return out


def main(argv=None):
    args = parse_args(argv)
    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in KD_VARIANTS and v not in GAN_VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}: use {', '.join(KD_VARIANTS + tuple(GAN_VARIANTS))}")

    # teacher, student alone, classical KD: bench_kd.py's runs (reused when already made in --out)
    kd_rows = bench_kd.main(bench_kd_argv(args, [v for v in variants if v in KD_VARIANTS] or ["alone"]))
    rows = [(v, net, "classical (Chen et al.)" if v.startswith("kd") else ("-" if v == "teacher" else "none"), m)
            for v, net, _, m in kd_rows]

    # GAN distillation
    log = out / "bench_gan.log"
    data = bench_kd.data_file(args, out)
    teacher = Path(args.teacher_weights) if args.teacher_weights else out / "teacher" / "weights" / "best.pt"
    student = ROOT / args.student_cfg
    common = ["--data", data, "--img-size", args.img_size, "--batch-size", args.batch_size, "--workers", args.workers,
              "--seed", args.seed, "--device", args.device, "--project", out, "--exist-ok"]
    if args.nominal_batch_size:
        common += ["--nominal-batch-size", args.nominal_batch_size]
    gan_extra = args.gan_args.split() if args.gan_args else []
    for v in [v for v in variants if v in GAN_VARIANTS]:
        extra = GAN_VARIANTS[v] if GAN_VARIANTS[v] is not None else ["--second-stage", args.epochs]
        weights = out / v / "weights" / "best.pt"
        if not (out / "test" / v / "metrics.json").is_file() and not weights.is_file():
            run_timed([sys.executable, "my_kd_gan.py", "--cfg", student, "--teacher-weights", teacher,
                          "--epochs", args.epochs, *common, "--name", v, *extra, *gan_extra], log)
        rows.append((v, student.name, GAN_NAMES[v], bench_kd.evaluate(weights, data, args, out, v, log)))

    base = next((m for v, _, _, m in rows if v == "alone"), None)
    lines = ["| run | network | distillation | epochs | mAP@0.5 | AP@[.5:.95] | Δ mAP@0.5 vs alone | train s | "
             "D acc real / fake (last stage-1 epoch) |", "|---|---|---|---|---|---|---|---|---|"]
    records = []
    for v, net, how, m in rows:
        stats = run_stats(out / v)
        epochs = (("given" if args.teacher_weights else args.teacher_epochs) if v == "teacher" else args.epochs)
        delta = f"{100 * (m['map50'] - base['map50']):+.1f} pts" if base is not None and v not in ("teacher",
                                                                                                  "alone") else ""
        d_acc = f"{stats['D_real']:.2f} / {stats['D_fake']:.2f}" if "D_real" in stats else ""
        secs = f"{stats['seconds']:.0f}" if stats.get("seconds") else ""
        lines.append(f"| {v} | {net} | {how} | {epochs} | {m['map50']:.3f} | {m['map']:.3f} | {delta} | {secs} | "
                     f"{d_acc} |")
        records.append({"run": v, "network": net, "distillation": how, "map50": m["map50"], "map": m["map"], **stats})
    table = "\n".join(lines)
    setting = bench_kd.setting_line(args)
    print(f"\n{setting}\n\n{table}")
    (out / "results_gan.md").write_text(f"{setting}\n\n{table}\n")
    (out / "results_gan.json").write_text(json.dumps({"setting": vars(args), "rows": records}, indent=1))
    return rows


if __name__ == "__main__":
    from utils.errors import cli

    cli(main)

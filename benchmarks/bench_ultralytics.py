"""train.py against the tool a user would pick instead: the ``ultralytics`` package (8.x), side by side on this CPU.

    python benchmarks/bench_ultralytics.py                        # shapes 1000/200, 256 px, batch 16, 30 epochs
    python benchmarks/bench_ultralytics.py --epochs 3 --n-train 64 --n-val 16 --out runs/bench_ultra_small

Both train yolov3-tiny from scratch on the same images (``data/shapes.data``, or a smaller shapes set written under
``--out``), at the same image size, batch size, epoch count, loader workers and intra-op threads, one after the
other on a quiet machine. ``ultralytics`` is installed by this script into its own virtualenv (``--venv``, made on
first use with ``pip install "ultralytics>=8.3,<9"``; the project's torch is shared through a .pth file, so both
run on the same torch): a reference to beat, never a dependency of this project. Its yolov3-tiny is
``yolov3-tiny.yaml`` of its model zoo: the Darknet backbone and neck with its own anchor-free detection head and
loss, trained with its own defaults (SGD/AdamW chosen by ``optimizer=auto``, mosaic, its own learning-rate
schedule); ``train.py`` runs its defaults (params/default.yaml, ``--amp auto``,
``--memory-format auto``). Each tool scores its own checkpoints with its own validator after every epoch
(ultralytics: its ``mAP50(B)``; train.py: pycocotools' mAP@0.5 through ``test.evaluate``), on the same val images.

Prints (and writes ``OUT/results.md``): img/s of training, wall time to mAP@0.5 0.50 and 0.70 (the sum of the
epochs' seconds, evaluation included, up to the first epoch that reaches it), the best mAP@0.5, and the total time.
"""
import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import data_path, peer_python, read_csv, run_timed  # noqa: E402

THRESHOLDS = (0.50, 0.70)
ULTRALYTICS = "ultralytics>=8.3,<9"

# Run inside the ultralytics virtualenv: its yolov3-tiny from scratch, offline, no plots (they fetch a font).
ULTRA_TRAIN = """
import sys, time
from ultralytics import YOLO
data, imgsz, batch, epochs, workers, seed, project, name = sys.argv[1:9]
model = YOLO("yolov3-tiny.yaml")
t = time.time()
model.train(data=data, imgsz=int(imgsz), batch=int(batch), epochs=int(epochs), workers=int(workers), device="cpu",
            seed=int(seed), project=project, name=name, exist_ok=True, pretrained=False, plots=False, amp=False,
            verbose=False)
print(f"ultralytics wall {time.time() - t:.1f} s")
"""


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/shapes.data")
    ap.add_argument("--n-train", type=int, default=None, help="a smaller shapes set: training images")
    ap.add_argument("--n-val", type=int, default=None, help="a smaller shapes set: validation images")
    ap.add_argument("--img-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads of both runs (default: the cores)")
    ap.add_argument("--tools", default="train.py,ultralytics", help="which to run (finished runs are reused)")
    ap.add_argument("--train-args", default="", help="extra train.py flags, one string")
    ap.add_argument("--venv", default="runs/bench_ultralytics/venv", help="ultralytics' own virtualenv")
    ap.add_argument("--out", default="runs/bench_ultralytics")
    return ap.parse_args(argv)


def ultralytics_python(venv):
    """The virtualenv's python, with ultralytics installed in it on first use (the project's torch shared)."""
    return peer_python(venv, "ultralytics", ULTRALYTICS)


def shapes_yaml(data, out):
    """An ultralytics data YAML for a shapes ``.data`` file (the same image and label folders)."""
    from utils.datasets import parse_data_cfg

    d = parse_data_cfg(data)
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(d["names"]))
    path = Path(out) / "shapes_ultralytics.yaml"
    path.write_text(f"train: {Path(d['train']).resolve()}\nval: {Path(d['valid']).resolve()}\nnames:\n{names}\n")
    return path


def first_reaching(rows, threshold):
    """Seconds (cumulative, evaluation included) and epoch at which mAP@0.5 first reaches ``threshold``, or None
    (an epoch not evaluated, NaN: ``--eval-from``, never reaches it)."""
    total = 0.0
    for epoch, seconds, map50 in rows:
        total += seconds
        if map50 >= threshold:
            return total, epoch
    return None


def ours(a, data, out, env):
    run = out / "train_py"
    if len(read_csv(run / "results.csv")) < a.epochs:
        run_timed([sys.executable, "train.py", "--data", data, "--img-size", a.img_size, "--batch-size", a.batch_size,
                   "--epochs", a.epochs, "--workers", a.workers, "--seed", a.seed, "--project", out, "--name",
                   "train_py", "--exist-ok", *a.train_args.split()], env=env)
    rows = read_csv(run / "results.csv")
    seconds = [float(r["seconds"]) for r in rows]
    return {"epochs": [(int(r["epoch"]), s, float(r["metrics/map50"] or "nan")) for r, s in zip(rows, seconds)],
            "img_per_s": n_images(data) * len(rows) / sum(seconds),
            "setup": f"{rows[-1].get('dtype', '?')} {rows[-1].get('memory_format', '')}".strip()}


def theirs(a, data, out, env):
    run = out / "ultralytics"
    if len(read_csv(run / "results.csv")) < a.epochs:
        python = ultralytics_python(a.venv)
        yaml_path = shapes_yaml(data, out)
        env = dict(env, YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(out / "ultralytics_config"))
        run_timed([python, "-c", ULTRA_TRAIN, yaml_path, a.img_size, a.batch_size, a.epochs, a.workers, a.seed,
                   out.resolve(), "ultralytics"], env=env)
    rows = [{k.strip(): v for k, v in r.items()} for r in read_csv(run / "results.csv")]
    # ultralytics' "time" column is cumulative wall seconds (training and validation)
    times = [float(r["time"]) for r in rows]
    secs = [t - p for t, p in zip(times, [0.0] + times[:-1])]
    return {"epochs": [(int(r["epoch"]), s, float(r["metrics/mAP50(B)"])) for r, s in zip(rows, secs)],
            "img_per_s": n_images(data) * len(rows) / max(times[-1], 1e-9), "setup": "fp32 (ultralytics on a CPU)"}


def n_images(data):
    """Training images of ``data`` (an epoch's worth)."""
    from utils.datasets import parse_data_cfg

    return sum(1 for p in Path(parse_data_cfg(data)["train"]).iterdir() if p.is_file())


def table(results, a, data):
    from utils.memory_format import machine_name
    import torch

    lines = ["| tool | precision | img/s (epochs incl. eval) | to mAP@0.5 0.50 | to 0.70 | best mAP@0.5 | total |",
             "|---|---|---|---|---|---|---|"]
    for tool, r in results.items():
        cells = []
        for thr in THRESHOLDS:
            hit = first_reaching(r["epochs"], thr)
            cells.append(f"{hit[0] / 60:.1f} min (epoch {hit[1]})" if hit else f"not in {len(r['epochs'])} epochs")
        best = max((m for _, _, m in r["epochs"] if m == m), default=float("nan"))
        total = sum(s for _, s, _ in r["epochs"])
        lines.append(f"| {tool} | {r['setup']} | {r['img_per_s']:.1f} | {cells[0]} | {cells[1]} | {best:.3f} | "
                     f"{total / 60:.1f} min |")
    setup = (f"{machine_name(torch.device('cpu'))}; {data}, {a.img_size} px, batch {a.batch_size}, {a.epochs} epochs, "
             f"{a.workers} workers, seed {a.seed}; {time.strftime('%Y-%m-%d')}")
    return setup + "\n\n" + "\n".join(lines) + "\n"


def main(argv=None):
    a = parse(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = data_path(a, out)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads)) if a.threads else dict(os.environ)
    results = {}
    tools = a.tools.split(",")
    if "train.py" in tools:
        results["train.py"] = ours(a, data, out, env)
    if "ultralytics" in tools:
        results["ultralytics"] = theirs(a, data, out, env)
    text = table(results, a, data)
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

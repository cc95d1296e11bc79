"""Inference speed on this machine: ms/image for yolov3-tiny and yolov3 in fp32 (contiguous and channels_last) and
in low precision + channels_last where the device runs it natively (bf16 on a CPU with AMX or AVX512-BF16, fp16 on
CUDA), and the wall time of a full ``test.py`` run (fp32, and ``--half``: ``--amp auto``) on the shapes validation
set.

    python benchmarks/bench_inference.py                      # everything (a few minutes on 2 CPU cores)
    python benchmarks/bench_inference.py --cfgs cfg/yolov3-tiny.cfg --batch-sizes 1 --no-test
    python benchmarks/bench_inference.py --test-weights runs/train/exp/weights/best.pt
    python benchmarks/bench_inference.py --device 0 --batch-sizes 1 32   # a GPU: fp32 vs fp16 autocast

Forward passes run under ``torch.inference_mode()`` on random weights (speed does not depend on them); NMS is
not included in the model figures. On CUDA each timed forward ends with ``torch.cuda.synchronize()``. The test.py figure uses ``--test-weights`` when given (a trained model
keeps fewer boxes, so NMS and pycocotools cost less), else a randomly initialised yolov3-tiny checkpoint.
Prints a markdown table (and ``--json`` writes the figures).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def time_forward(model, bs, img_size, precision, fmt="contiguous", min_iters=3, min_seconds=3.0, warmup=1):
    """``(best, median, iterations)``: milliseconds per image of ``model(x)`` for a ``(bs, 3, img_size,
    img_size)`` batch on the model's device in ``precision`` (fp32, bf16, fp16) and memory format ``fmt``.
    On a shared machine the best time is the figure least disturbed by other processes."""
    from utils.torch_utils import MEMORY_FORMATS, autocast

    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    model = model.to(memory_format=MEMORY_FORMATS[fmt])
    x = torch.rand(bs, 3, img_size, img_size, device=device).contiguous(memory_format=MEMORY_FORMATS[fmt])
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.inference_mode():
        for _ in range(warmup + (10 if cuda else 0)):  # CUDA: cuDNN picks its algorithms in the first calls
            with autocast(device, precision):
                model(x)
        sync()
        times = []
        t_end = time.perf_counter() + min_seconds
        while len(times) < min_iters or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            with autocast(device, precision):
                model(x)
            sync()
            times.append(time.perf_counter() - t0)
    times.sort()
    return 1000 * times[0] / bs, 1000 * times[len(times) // 2] / bs, len(times)


def bench_models(cfgs, batch_sizes, img_size, device):
    from models import Darknet

    from bench_train import modes

    rows = []
    for cfg in cfgs:
        model = Darknet(str(ROOT / cfg) if not Path(cfg).is_file() else cfg, img_size=img_size).eval().to(device)
        for bs in batch_sizes:
            for precision, fmt in modes(device):
                ms, med, n = time_forward(model, bs, img_size, precision, fmt)
                row = {"cfg": Path(cfg).name, "img_size": img_size, "batch": bs, "mode": f"{precision}+{fmt}",
                       "ms_per_image": round(ms, 2),
                       "ms_median": round(med, 2), "img_per_s": round(1000 / ms, 2), "iterations": n}
                rows.append(row)
                print(f"{row['cfg']:>18} {img_size} bs={bs:<3} {row['mode']:>19}: {ms:8.1f} ms/img best, "
                      f"{med:8.1f} median ({1000 / ms:6.1f} img/s, {n} iters)", flush=True)
    return rows


def bench_test_py(weights, data, img_size, batch_size, half, device_arg):
    """Wall time of ``python test.py`` on the shapes validation set (a fresh process, as a user runs it)."""
    with tempfile.TemporaryDirectory() as tmp:
        if not weights:
            from models import Darknet
            from utils.checkpoint import save_checkpoint
            from utils.datasets import parse_data_cfg

            d = parse_data_cfg(ROOT / data)
            cfg = ROOT / "cfg" / "yolov3-tiny.cfg"
            model = Darknet(str(cfg), nc=d["classes"])
            weights = Path(tmp) / "random.pt"
            save_checkpoint({"cfg": cfg.read_text(), "cfg_name": cfg.name, "nc": d["classes"], "names": d["names"],
                             "img_size": img_size, "model": model.state_dict(), "epoch": 0, "best_fitness": 0.0,
                             "args": {}}, weights)
        cmd = [sys.executable, str(ROOT / "test.py"), "--weights", str(weights), "--data", str(data),
               "--img-size", str(img_size), "--batch-size", str(batch_size), "--project", tmp, "--name", "bench"]
        if half:
            cmd.append("--half")
        cmd += ["--device", device_arg] if device_arg else []
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode:
            print(r.stdout[-3000:], r.stderr[-3000:], sep="\n")
            raise SystemExit(f"test.py failed with status {r.returncode}")
        m = json.loads((Path(tmp) / "bench" / "metrics.json").read_text())
    row = {"weights": "random yolov3-tiny" if "random.pt" in str(weights) else str(weights), "img_size": img_size,
           "batch": batch_size, "half": half, "images": m.get("images"), "wall_s": round(wall, 2),
           "map50": m.get("map50"), "speed_ms": m.get("speed")}
    print(f"test.py {row['weights']} {img_size}px bs={batch_size} half={half}: {row['images']} images in "
          f"{wall:.1f} s wall (ms/img {m.get('speed')})", flush=True)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfgs", nargs="+", default=["cfg/yolov3-tiny.cfg", "cfg/yolov3.cfg"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--img-size", type=int, default=416)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-models", action="store_true")
    p.add_argument("--no-test", action="store_true")
    p.add_argument("--test-data", default="data/shapes.data")
    p.add_argument("--test-weights", default=None)
    p.add_argument("--test-img-size", type=int, default=256)
    p.add_argument("--test-batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu", help="cpu (default), 0, cuda:1 ...")
    p.add_argument("--json", default=None, help="write the figures to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from utils.general import select_device

    device = select_device(args.device)
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    info = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cpus{gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"}
    print(info["machine"])
    out = {"info": info, "models": [], "test_py": []}
    if not args.no_models:
        out["models"] = bench_models(args.cfgs, args.batch_sizes, args.img_size, device)
    if not args.no_test:
        for half in (False, True):
            out["test_py"].append(bench_test_py(args.test_weights, args.test_data, args.test_img_size,
                                                args.test_batch_size, half, args.device))
    print("\n| model | size | batch | precision | ms/image (best) | ms/image (median) | img/s (best) |\n"
          "|---|---|---|---|---|---|---|")
    for r in out["models"]:
        print(f"| {r['cfg']} | {r['img_size']} | {r['batch']} | {r['mode']} | {r['ms_per_image']:.1f} | "
              f"{r['ms_median']:.1f} | {r['img_per_s']:.1f} |")
    if out["test_py"]:
        print("\n| test.py | size | batch | half | images | wall s |\n|---|---|---|---|---|---|")
        for r in out["test_py"]:
            print(f"| {r['weights']} | {r['img_size']} | {r['batch']} | {r['half']} | {r['images']} | "
                  f"{r['wall_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

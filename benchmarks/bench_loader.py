#!/usr/bin/env python3
"""Training-loader throughput: images/s with mosaic + affine + HSV + flip augmentation.

    python benchmarks/bench_loader.py [--data data/coco128.data data/shapes.data] [--img-size 416]
                                      [--batch-size 16] [--workers 2] [--images 512]

For each .data file, builds the training loader exactly as training does (create_dataloader with augment=True,
shuffle=True and params/default.yaml's augmentation), drops the first batch (worker start-up), then times
batches until ``--images`` images have been produced (over as many epochs as needed), and measures the CPU time of
one augmented item in the main process. Prints one markdown row per dataset. The loader must not be the
bottleneck: compare with yolov3-tiny training (~20 img/s fp32, ~70 img/s bf16 at 256 px on a 2-core machine). On a
machine whose cores also run the training, the CPU ms per image is the cost that matters.
"""
import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from utils.datasets import create_dataloader, parse_data_cfg  # noqa: E402


def load_hyp():
    try:
        import yaml

        y = yaml.safe_load((ROOT / "params" / "default.yaml").read_text())
        keys = ("hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective", "flipud", "fliplr",
                "mosaic")
        return {k: float(y[k]) for k in keys if k in y}
    except Exception:  # noqa: BLE001 - fall back to the dataset defaults
        return None


def bench(data, img_size, batch_size, workers, n_images, hyp):
    d = parse_data_cfg(data)
    t0 = time.perf_counter()
    loader, ds = create_dataloader(d["train"], img_size, batch_size, hyp=hyp, augment=True, shuffle=True,
                                   workers=workers, nc=d["classes"], verbose=False)
    t_build = time.perf_counter() - t0
    seen, epoch, t_start = 0, 0, None
    first = True
    while seen < n_images:
        loader.sampler.set_epoch(epoch)
        for imgs, targets, _, _ in loader:
            if first:  # worker start-up and the first batch are not throughput
                first, t_start = False, time.perf_counter()
                continue
            seen += len(imgs)
            if seen >= n_images:
                break
        epoch += 1
    dt = time.perf_counter() - t_start
    # CPU cost of one training item in this process (what the loader takes away from training on a small machine)
    t0, n_cpu = time.process_time(), min(ds.n, 128)
    for i in range(n_cpu):
        ds[(i, 0)]
    cpu_ms = (time.process_time() - t0) / n_cpu * 1000
    return dict(name=Path(data).stem, n=ds.n, build=t_build, ips=seen / dt, seen=seen, cpu_ms=cpu_ms)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+",
                    default=[str(ROOT / "data" / "coco128.data"), str(ROOT / "data" / "shapes.data")])
    ap.add_argument("--img-size", type=int, default=416)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--images", type=int, default=512)
    a = ap.parse_args()
    torch.set_num_threads(1)
    hyp = load_hyp()
    rows = []
    for data in a.data:
        rows.append(bench(data, a.img_size, a.batch_size, a.workers, a.images, hyp))
    mosaic = hyp.get("mosaic", 1.0) if hyp else 1.0
    print(f"\nloader throughput, mosaic={mosaic}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print("| dataset | images | img size | batch | workers | dataset build (s) | images timed | images/s "
          "| CPU ms/image (1 process) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['n']} | {a.img_size} | {a.batch_size} | {a.workers} | {r['build']:.2f} "
              f"| {r['seen']} | {r['ips']:.1f} | {r['cpu_ms']:.1f} |")


if __name__ == "__main__":
    main()

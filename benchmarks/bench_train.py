"""Training throughput of the engine's step: fp32 vs bf16 autocast + channels_last, against this CPU's peak.

    python benchmarks/bench_train.py --cfg cfg/yolov3-tiny.cfg --img-size 416 --batch-size 16

Measures (1) the bf16 and fp32 matmul peak of this machine (GFLOP/s, large square matmuls), (2) img/s of a full
training step (forward, YOLO loss, backward, SGD step) on random images with random targets, in fp32 and in bf16
autocast with channels_last, and (3) the share of the bf16 peak the bf16 step reaches, counting a training step
as 3x the forward MACs x 2 FLOPs. Prints one markdown table row per mode.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import Darknet, model_summary  # noqa: E402
from utils.loss import ComputeLoss  # noqa: E402
from utils.my_utils import hyp_from_args, parse_args, train_parser  # noqa: E402
from utils.torch_utils import autocast, build_optimizer  # noqa: E402


def matmul_peak(dtype, n=2048, reps=10):
    """GFLOP/s of an n x n matmul in ``dtype`` (best of ``reps``)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def random_targets(batch, n_per_image=4, nc=80):
    rows = []
    for i in range(batch):
        xy = torch.rand(n_per_image, 2) * 0.6 + 0.2
        wh = torch.rand(n_per_image, 2) * 0.3 + 0.05
        cls = torch.randint(0, nc, (n_per_image, 1)).float()
        rows.append(torch.cat([torch.full((n_per_image, 1), float(i)), cls, xy, wh], 1))
    return torch.cat(rows)


def step_rate(cfg, img_size, batch, amp, steps, device="cpu"):
    """Images per second of full training steps (after 2 warm-up steps) on ``device``: the engine's precision there
    (bf16 autocast on the CPU, fp16 on CUDA) with channels_last, or fp32 contiguous without ``amp``."""
    device = torch.device(device)
    torch.manual_seed(0)
    fmt = torch.channels_last if amp else torch.contiguous_format
    model = Darknet(cfg, img_size=img_size).train().to(device, memory_format=fmt)
    hyp = hyp_from_args(parse_args(train_parser(), []))
    loss_fn = ComputeLoss(model, hyp)
    opt = build_optimizer([model], "sgd", 0.001, 0.9, 5e-4)
    imgs = torch.rand(batch, 3, img_size, img_size, device=device).contiguous(memory_format=fmt)
    targets = random_targets(batch, nc=model.nc).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(steps + 2):
        sync()
        t = time.perf_counter()
        with autocast(device, amp):
            loss, _ = loss_fn(model(imgs), targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return batch / (sum(times) / len(times))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="cfg/yolov3-tiny.cfg")
    p.add_argument("--img-size", type=int, default=416)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    peak_bf16, peak_fp32 = matmul_peak(torch.bfloat16), matmul_peak(torch.float32)
    macs = model_summary(Darknet(a.cfg, img_size=a.img_size), img_size=a.img_size)["macs"]
    step_flops = 3 * 2 * macs  # forward + backward (2x forward) FLOPs per image
    print(f"matmul peak: bf16 {peak_bf16:.0f} GFLOP/s, fp32 {peak_fp32:.0f} GFLOP/s; {macs / 1e9:.2f} GMACs/img")
    print("| model | img | batch | mode | img/s | GFLOP/s | share of peak |")
    print("|---|---|---|---|---|---|---|")
    rates = {}
    for mode, amp, peak in (("fp32", False, peak_fp32), ("bf16+channels_last", True, peak_bf16)):
        rate = step_rate(a.cfg, a.img_size, a.batch_size, amp, a.steps)
        rates[mode] = rate
        gflops = rate * step_flops / 1e9
        print(f"| {Path(a.cfg).stem} | {a.img_size} | {a.batch_size} | {mode} | {rate:.1f} | {gflops:.0f} | "
              f"{gflops / peak:.1%} of {mode.split('+')[0]} peak |")
    print(f"bf16 speed-up over fp32: {rates['bf16+channels_last'] / rates['fp32']:.2f}x")


if __name__ == "__main__":
    main()

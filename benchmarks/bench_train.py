"""Training throughput of the engine's step in each precision and memory format, against this machine's peak.

    python benchmarks/bench_train.py                                   # yolov3-tiny, 256 px, batch 16
    python benchmarks/bench_train.py --cfg cfg/yolo-nano.cfg --img-size 416 --batch-size 8 --device 0

Measures (1) the fp32 and bf16 matmul peak of this machine (GFLOP/s, large square matmuls; on CUDA fp32 and
fp16), (2) img/s of a full training step (forward, YOLO loss, backward, SGD step) on random images with random
targets in fp32 contiguous, fp32 channels_last and, where the device runs it natively, bf16 (CPU) or fp16 (CUDA)
in both layouts, and (3) each mode's share of its dtype's peak, counting a training step as 3x the forward MACs x
2 FLOPs. Emulated bf16 (a CPU without AMX or AVX512-BF16) is skipped unless ``--emulated``: on an AVX2 Zen 2 EPYC
one such step takes over 20 s. The last row is what ``train.py --amp auto --memory-format auto`` picks here.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import Darknet  # noqa: E402
from utils.summary import model_summary  # noqa: E402
from utils.engine import progressive_img_size  # noqa: E402
from utils.general import select_device  # noqa: E402
from utils.loss import ComputeLoss  # noqa: E402
from utils.memory_format import choose_memory_format, machine_name  # noqa: E402
from utils.my_utils import hyp_from_args, parse_args, train_parser  # noqa: E402
from utils.torch_utils import (MEMORY_FORMATS, autocast, build_optimizer, native_low_precision,  # noqa: E402
                               resolve_precision)


def matmul_peak(dtype, n=2048, reps=10, device="cpu"):
    """GFLOP/s of an n x n matmul in ``dtype`` on ``device`` (best of ``reps``)."""
    device = torch.device(device)
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        a @ b
        sync()
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


def step_rate(cfg, img_size, batch, precision, steps, device="cpu", memory_format="channels_last"):
    """Images per second of full training steps (after 2 warm-up steps) on ``device`` in ``precision`` (bf16, fp16
    or fp32) and ``memory_format`` (channels_last or contiguous)."""
    device = torch.device(device)
    torch.manual_seed(0)
    fmt = MEMORY_FORMATS[memory_format]
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
        with autocast(device, precision):
            loss, _ = loss_fn(model(imgs), targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return batch / (sum(times) / len(times))


STRIDE = 32  # the largest stride of every cfg here: progressive sizes are its multiples


def train_rates(runs, batch, device="", amp="auto", steps=4, rounds=3):
    """Training images per second of each ``(cfg path, img_size)`` on ``device`` in the precision ``--amp`` resolves
    to and the memory format train.py picks (random data): the best of ``rounds`` interleaved rounds, so that a burst
    of load from other processes does not decide a budget."""
    device = select_device(device)
    precision = resolve_precision(device, amp)
    fmts = {run: choose_memory_format(Darknet(str(run[0]), img_size=run[1]), device, precision, run[1], batch)[0]
            for run in runs}
    rates = {run: 0.0 for run in runs}
    for _ in range(rounds):
        for cfg, size in runs:
            rates[cfg, size] = max(rates[cfg, size], step_rate(str(cfg), size, batch, precision.name, steps, device,
                                                               fmts[cfg, size]))
    return rates


def training_cost(epochs, rates, start, end, stride=STRIDE):
    """Seconds per training image of ``epochs`` epochs, each at its progressive size (``engine.progressive_img_size``)
    at ``rates[size]`` images per second."""
    return sum(1 / rates[progressive_img_size(e, epochs, start, end, stride)] for e in range(epochs))


def epochs_for_time(budget, rates, start, end, stride=STRIDE):
    """The epoch count whose training time (``training_cost``) is closest to ``budget``; at least 1. Without
    progressive resizing (``start`` 0) this is ``round(budget * rates[end])``."""
    epochs = 1
    while training_cost(epochs + 1, rates, start, end, stride) <= budget:
        epochs += 1
    below, above = (training_cost(n, rates, start, end, stride) for n in (epochs, epochs + 1))
    return epochs + 1 if budget - below > above - budget else epochs


def train_sizes(start, end, stride=STRIDE):
    """The image sizes a run trains at: every stride multiple from ``start`` (0: none) up to ``end``."""
    if not start:
        return [end]
    return sorted({*range(max(stride, start // stride * stride), end, stride), end})


def modes(device, emulated=False):
    """``[(precision, memory format)]`` to time on ``device``: fp32 in both layouts, then the device's low
    precision (fp16 on CUDA, bf16 on a CPU) in both layouts where it is native (or with ``emulated``)."""
    low = "fp16" if device.type == "cuda" else "bf16"
    out = [("fp32", "contiguous"), ("fp32", "channels_last")]
    if device.type == "cuda" or native_low_precision(low) or emulated:
        out += [(low, "contiguous"), (low, "channels_last")]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="cfg/yolov3-tiny.cfg")
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu", help="cpu, 0, cuda:1 ...")
    p.add_argument("--emulated", action="store_true", help="also time bf16 where the CPU only emulates it")
    a = p.parse_args(argv)
    device = select_device(a.device)
    peak_dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    # the peak of each precision timed (an emulated bf16 matmul takes minutes on an AVX2 CPU)
    peaks = {name: matmul_peak(peak_dtypes[name], device=device) for name in dict(modes(device, a.emulated))}
    macs = model_summary(Darknet(a.cfg, img_size=a.img_size), img_size=a.img_size)["macs"]
    step_flops = 3 * 2 * macs  # forward + backward (2x forward) FLOPs per image
    print(f"{machine_name(device)}; torch ISA {torch.backends.cpu.get_cpu_capability()}; matmul peak: "
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()) + f"; {macs / 1e9:.3f} GMACs/img")
    print("| model | img | batch | precision | memory format | img/s | GFLOP/s | share of peak |")
    print("|---|---|---|---|---|---|---|---|")
    rates = {}
    for precision, fmt in modes(device, a.emulated):
        rate = rates[precision, fmt] = step_rate(a.cfg, a.img_size, a.batch_size, precision, a.steps, device, fmt)
        gflops = rate * step_flops / 1e9
        print(f"| {Path(a.cfg).stem} | {a.img_size} | {a.batch_size} | {precision} | {fmt} | {rate:.1f} | "
              f"{gflops:.0f} | {gflops / peaks[precision]:.1%} of {precision} peak |", flush=True)
    chosen = resolve_precision(device, "auto")
    model = Darknet(a.cfg, img_size=a.img_size)
    fmt, why = choose_memory_format(model, device, chosen, a.img_size, a.batch_size)
    rate = rates.get((chosen.name, fmt)) or step_rate(a.cfg, a.img_size, a.batch_size, chosen.name, a.steps, device, fmt)
    best = max(rates, key=rates.get)
    print(f"auto: {chosen} with {fmt} ({why}): {rate:.1f} img/s; fastest measured here: {' '.join(best)} "
          f"{rates[best]:.1f} img/s")


if __name__ == "__main__":
    main()

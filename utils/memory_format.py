"""``--memory-format auto``: time a training step in both layouts on this machine and keep the faster one.

No rule holds across CPUs (BENCHMARKS.md): YOLO Nano's bf16 step is 1.4x faster contiguous on an AMX Xeon, while
on a Zen 4 EPYC channels_last wins for every cfg, and on an AVX2 Zen 2 fp32 channels_last is 16% faster. So the
choice is measured: a few forward+backward passes of a copy of the network on random images, cached per machine,
torch version, cfg, precision, image size and batch in the toolkit's cache folder (``$YOLO_COMPRESSION_CACHE``,
default ``~/.cache/yolo-compression``), so a machine pays for each probe once.
"""
import copy
import hashlib
import json
import os
import time

import torch

from utils.general import cpu_name, user_cache_dir
from utils.torch_utils import MEMORY_FORMATS, autocast

PROBE_BATCH = 8  # CPU: images per probe step, enough to be representative, small enough for YOLOv3 on 2 cores
PROBE_STEPS = {"cpu": 2, "cuda": 10}  # timed steps per layout, after one warm-up step each (a GPU step is ~ms)


def cache_file():
    return user_cache_dir() / "memory_format.json"


def machine_name(device):
    """The processor (CPU model and thread count, or GPU name) and torch version a probe's result holds for."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{cpu_name()}, {torch.get_num_threads()} threads"
    return f"{name}, torch {torch.__version__}"


def probe_key(device, cfg_text, precision, img_size, batch):
    digest = hashlib.sha1(cfg_text.encode()).hexdigest()[:12]
    return f"{machine_name(device)} | cfg {digest} | {precision} | {img_size}px | batch {batch}"


def read_cache():
    try:
        data = json.loads(cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_cache(key, rates):
    """Add one probe's rates to the cache (atomically; an unwritable cache folder only costs a re-probe)."""
    path = cache_file()
    data = read_cache()
    data[key] = rates
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def step_rates(model, device, precision, img_size, batch=PROBE_BATCH, steps=None):
    """``{layout: img/s}`` of forward+backward passes of a copy of ``model`` (best of ``steps``, layouts interleaved).

    The copy and a private generator leave the model, its BN statistics and every global RNG untouched, so a run
    gives the same results whether its probe ran or came from the cache.
    """
    steps = steps or PROBE_STEPS.get(device.type, 2)
    net = copy.deepcopy(model).to(device).train()
    x = torch.rand(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(0)).to(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    best = dict.fromkeys(MEMORY_FORMATS, 0.0)
    for i in range(steps + 1):
        for name, fmt in MEMORY_FORMATS.items():
            net.to(memory_format=fmt)
            xi = x.contiguous(memory_format=fmt)
            sync()
            t = time.perf_counter()
            with autocast(device, precision):
                out = net(xi)
            sum(o.float().mean() for o in out if torch.is_tensor(o)).backward()
            net.zero_grad(set_to_none=True)
            sync()
            if i:  # the first pass of each layout warms up oneDNN / cuDNN
                best[name] = max(best[name], batch / (time.perf_counter() - t))
    return best


def choose_memory_format(model, device, precision, img_size, batch_size, choice="auto"):
    """``(layout name, why)`` for training ``model``: ``choice`` when given, else the faster layout as measured."""
    if choice != "auto":
        return choice, f"--memory-format {choice}"
    batch = batch_size if device.type == "cuda" else min(batch_size, PROBE_BATCH)  # a GPU's rate depends on it
    key = probe_key(device, getattr(model, "cfg_text", repr(model)), getattr(precision, "name", precision), img_size,
                    batch)
    rates, how = read_cache().get(key), "probed earlier on this machine"
    if not (isinstance(rates, dict) and set(rates) == set(MEMORY_FORMATS)):
        rates, how = step_rates(model, device, precision, img_size, batch), "probed now"
        write_cache(key, rates)
    name = max(rates, key=rates.get)
    other = next(k for k in rates if k != name)
    return name, f"{rates[name]:.1f} vs {rates[other]:.1f} img/s {other}, {how}"

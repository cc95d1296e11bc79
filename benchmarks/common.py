"""Helpers shared by the benchmark scripts."""
import copy
import csv
import itertools
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
_ONNX_FILES = itertools.count()


def run_timed(cmd, log=None, env=None):
    """Run ``cmd`` (a list) from the repository root, its output on the console or appended to ``log``; stop with a
    one-line error if it fails; returns its wall seconds."""
    cmd = [str(c) for c in cmd]
    print("$", " ".join(cmd), flush=True)
    t = time.time()
    if log is None:
        code = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    else:
        with open(log, "a") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if code:
        sys.exit(f"failed ({code}): {' '.join(cmd)}" + (f" (see {log})" if log else ""))
    return time.time() - t


def peer_python(venv, module, package, no_deps=False):
    """The python of a peer tool's own virtualenv (made on first use), with ``package`` installed in it where
    ``module`` does not import. The project's torch is shared with it through a .pth file: the peer runs on the same
    torch as the toolkit, and never becomes a dependency of it."""
    venv = Path(venv)
    python = venv / "bin" / "python"
    if not python.is_file():
        run_timed([sys.executable, "-m", "venv", venv])
    own = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                         text=True, check=True).stdout.strip()
    Path(own, "yolo_compression_torch.pth").write_text(str(Path(torch.__file__).parents[1]) + "\n")
    if subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode:
        run_timed([python, "-m", "pip", "install", "-q", *(["--no-deps"] if no_deps else []), package])
    return python


def read_csv(path):
    """The rows of a CSV file as dicts (``[]`` where the file does not exist yet)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def data_path(a, out):
    """``a.data``, or with ``a.n_train`` / ``a.n_val`` a smaller shapes set (defaults 128 / 32) written under ``out``
    (reused when it is already there)."""
    if a.n_train is None and a.n_val is None:
        return a.data
    from utils.shapes import make_shapes

    n_train, n_val = a.n_train or 128, a.n_val or 32
    return str(make_shapes(Path(out) / f"shapes_{n_train}_{n_val}", n_train=n_train, n_val=n_val, img_size=320,
                           seed=0))


def timed(fn, reps, warmup=1):
    """``(best, median)`` milliseconds of ``fn()`` over ``reps`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1000 * times[0], 1000 * times[len(times) // 2]


def latency_runners(model, img_size, folder, batch=1, device=None):
    """``{'fp32': fn, 'bf16_cl': fn, 'ort': fn, 'cuda_fp16': fn}``: one ``(batch, 3, img_size, img_size)`` forward
    each, in PyTorch fp32, bf16 + channels_last (only where bf16 is native: emulated bf16 is never shipped) and ONNX
    Runtime on the CPU, with torch's thread count for both; with a CUDA ``device``, also fp16 autocast +
    channels_last there. Call them under ``torch.inference_mode()``."""
    from utils.torch_utils import native_low_precision

    model = model.eval()
    x = torch.rand(batch, 3, img_size, img_size)
    runners = {"fp32": lambda: model(x)}
    cpu = torch.device("cpu")
    if native_low_precision("bf16"):
        runners["bf16_cl"] = autocast_runner(model, img_size, cpu, "bf16", batch)
    runners["ort"] = ort_runner(model, img_size, folder, batch)
    if device is not None and device.type == "cuda":
        runners["cuda_fp16"] = autocast_runner(model, img_size, device, "fp16", batch)
    return runners


def autocast_runner(model, img_size, device, precision, batch=1):
    """One forward of a channels_last copy of ``model`` on ``device`` under ``precision`` autocast, finished (CUDA
    runs asynchronously: the call waits for the device)."""
    from utils.torch_utils import autocast

    net = copy.deepcopy(model).eval().to(device).to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, img_size, img_size, device=device).contiguous(memory_format=torch.channels_last)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def run():
        with autocast(device, precision):
            net(x)
        sync()
    return run


def latencies(model, img_size, reps, folder, batch=1, warmup=1):
    """``{'fp32': (best, median), 'bf16_cl': ..., 'ort': ...}``: milliseconds per forward of each of
    ``latency_runners`` (NaN for bf16 where it is not native)."""
    runners = latency_runners(model, img_size, folder, batch)
    with torch.inference_mode():
        out = {k: timed(fn, reps, warmup) for k, fn in runners.items()}
    return {"bf16_cl": (float("nan"), float("nan")), **out}


def ort_runner(model, img_size, folder, batch=1):
    """A callable that runs one ``(batch, 3, img_size, img_size)`` forward of ``model`` exported to ONNX, in an ONNX
    Runtime CPU session with torch's thread count (the .onnx file is written under ``folder``)."""
    from utils.export import export_onnx, onnx_session

    folder = Path(folder) / f"ort{next(_ONNX_FILES)}"  # one file per session: several may live at once
    folder.mkdir(parents=True)
    path = export_onnx(model.eval(), folder / "m.onnx", img_size, batch=batch)
    sess = onnx_session(path, threads=torch.get_num_threads())
    feed = {"images": torch.rand(batch, 3, img_size, img_size).numpy()}
    return lambda: sess.run(None, feed)


def ort_latency(model, img_size, reps, folder, batch=1, warmup=1):
    """``(best, median)`` milliseconds per forward of ``model`` in ONNX Runtime on the CPU (``ort_runner``)."""
    return timed(ort_runner(model, img_size, folder, batch), reps, warmup)


def threads_label(n):
    """'1 thread', '2 threads': how latency figures name their thread count."""
    return f"{n} thread{'s' * (int(n) != 1)}"


def timing_rule(reps, passes=1):
    """How an ``interleaved_latencies`` figure was taken, in words."""
    return (f"median of {reps} runs" if passes == 1 else
            f"median of {passes} interleaved passes' medians of {reps} runs")


def interleaved_latencies(runners, reps, passes, warmup=1):
    """``{key: (best, median, pass_medians)}`` for ``{key: fn}``: ``passes`` passes, each timing every ``fn`` in turn
    (``warmup`` untimed runs, then the median of ``reps``); ``median`` is the median of the passes' medians. A slow
    spell of a shared machine then falls on every network alike and is outvoted by the other passes."""
    per_pass = {key: [] for key in runners}
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(passes):
        for key, fn in runners.items():
            b, m = timed(fn, reps, warmup)
            per_pass[key].append(m)
            best[key] = min(best[key], b)
    return {key: (best[key], statistics.median(ms), ms) for key, ms in per_pass.items()}

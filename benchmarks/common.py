"""Helpers shared by the benchmark scripts."""
import csv
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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

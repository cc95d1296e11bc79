"""Shared test fixtures and helpers. Tests run on CPU, on tiny images, and never reach the network."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from utils import engine

ROOT = Path(__file__).resolve().parents[1]
COCO128 = ROOT.parent / "shared" / "data" / "coco128"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
# --memory-format auto's probes are cached for this test session only (subprocesses inherit it), never the user's
os.environ["YOLO_COMPRESSION_CACHE"] = tempfile.mkdtemp(prefix="yoloc-test-cache-")

# the end-to-end runs' training flags: 64 px, batch 8, no loader workers, a short warm-up, seed 0
FAST = ["--img-size", "64", "--batch-size", "8", "--nominal-batch-size", "8", "--workers", "0",
        "--warmup-epochs", "0.5", "--seed", "0"]


def script_env():
    """A subprocess computes with as many threads as this process (results depend on the thread count)."""
    return dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), PYTHONPATH=str(ROOT))


def run_script(script, *args, env=None):
    """Run an entry script of the repository in a subprocess (``env``: its environment, e.g. ``script_env()``);
    returns the ``CompletedProcess`` (text output)."""
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


class StopAt(engine.Plugin):
    """Simulates a kill: raises when ``epoch`` is about to start (the previous epoch is fully saved)."""

    name = "stop"

    def __init__(self, epoch):
        self.stop_epoch = epoch

    def before_epoch(self, trainer, epoch):
        if epoch == self.stop_epoch:
            raise KeyboardInterrupt


@pytest.fixture(scope="session")
def coco128():
    """The 128 real COCO images beside the project (../shared/data/coco128); skip where absent."""
    if not (COCO128 / "images" / "train2017").is_dir():
        pytest.skip(f"coco128 not found at {COCO128} (it lies in ../shared/data beside the checkout)")
    return COCO128


@pytest.fixture(scope="session")
def shapes_tiny(tmp_path_factory):
    """A tiny shapes set (16 train + 8 val images, 96-128 px, 6 classes, seed 0) in a temporary folder.

    Returns the ``pathlib.Path`` of its ``shapes.data`` (relative paths inside; ``parse_data_cfg`` reads it).
    Built once per test session (about a second); tests must not modify it.
    """
    from utils.shapes import make_shapes

    return make_shapes(tmp_path_factory.mktemp("shapes_tiny"), n_train=16, n_val=8, img_size=128, seed=0)

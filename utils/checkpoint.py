"""Checkpoints: atomic writes, safe loads (``weights_only=True``), and one loader for every artefact we write.

The layout of a checkpoint dict is documented in ``docs/architecture.md``.
"""
import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from utils.errors import UserError


def save_checkpoint(obj, path):
    """Write ``obj`` with ``torch.save`` to a temporary file beside ``path``, then rename it into place.

    A kill at any moment leaves either the old file or the new one, never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint dict with ``weights_only=True``; any problem is a one-line ``UserError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError, io.UnsupportedOperation) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a readable checkpoint (truncated or corrupt?): {first}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "cfg" not in ckpt:
        raise UserError(f"{path}: not a yolo-compression checkpoint (no 'model' and 'cfg' entries)")
    return ckpt


def rng_state():
    """Python, numpy and torch RNG states as weights_only-safe values."""
    import random

    import numpy as np

    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what ``rng_state()`` returned."""
    import random

    import numpy as np

    random.setstate(_to_tuple(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x):
    return tuple(_to_tuple(i) for i in x) if isinstance(x, (list, tuple)) else x

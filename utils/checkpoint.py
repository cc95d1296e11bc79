"""Checkpoints: atomic writes, safe loads (``weights_only=True``), and one loader for every artefact we write.

The layout of a checkpoint dict is documented in ``docs/architecture.md``.
"""
import contextlib
import errno
import io
import os
import shutil
import tempfile
from pathlib import Path

import torch

from models import Darknet, load_darknet_weights
from utils import sparse
from utils.errors import UserError


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block ends without an error, and
    removed when it does not. A kill at any moment leaves the old file or the new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path, data):
    """Write ``data`` (str or bytes) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        (tmp.write_bytes if isinstance(data, bytes) else tmp.write_text)(data)


def remove_stale_temporaries(folder):
    """Remove the temporary files an interrupted atomic write left in ``folder``; returns how many. Call it only where
    no other process writes (the run folder's lock is held)."""
    stale = list(Path(folder).glob(".*.tmp"))
    for f in stale:
        f.unlink(missing_ok=True)
    return len(stale)


FULL_DISK = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def save_checkpoint(obj, path):
    """Write ``obj`` with ``torch.save`` atomically (``atomic_path``), synced to disk, with a ``crc32`` entry over
    everything else it holds (``load_checkpoint`` checks it). A full disk is a one-line ``UserError`` saying how
    much space the file needs; the previous file at ``path`` is left as it was."""
    obj = plain(obj)
    if isinstance(obj, dict):
        body = sparse.without_crc(obj)
        obj = {**body, "crc32": sparse.payload_crc(body)}
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.errno not in FULL_DISK:
            raise
        buf = io.BytesIO()
        torch.save(obj, buf)
        free = shutil.disk_usage(Path(path).parent).free
        raise UserError(f"{path}: {os.strerror(e.errno)}: the file needs {buf.tell() / 2**20:.1f} MiB, "
                        f"{free / 2**20:.1f} MiB are free; the previous {Path(path).name} is intact") from None


def save_compact(ckpt, path):
    """``save_checkpoint`` of ``ckpt`` with a pruned network's zeros left out (``sparse.compact_checkpoint``; a dense
    one is saved as it is): how best.pt is written. ``load_checkpoint`` expands it."""
    save_checkpoint(sparse.compact_checkpoint(ckpt), path)


def plugin_state(ckpt, name, where):
    """The training state plug-in ``name`` saved in a last.pt (``train_state.plugins.NAME``); a one-line error naming
    ``where`` when the checkpoint holds none."""
    try:
        return ckpt["train_state"]["plugins"][name]
    except (KeyError, TypeError):
        raise UserError(f"{where}: holds no '{name}' training state (not the last.pt of a run with that plug-in)") \
            from None


def plain(obj):
    """Numpy scalars and arrays inside ``obj`` as Python numbers and tensors, so ``weights_only`` loads accept it."""
    import numpy as np

    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    return obj


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint dict with ``weights_only=True``; any problem is a one-line ``UserError`` naming the file."""
    return checked(read_file(path, map_location), path)


def read_file(path, map_location="cpu"):
    """What ``torch.load(weights_only=True)`` reads from ``path``, as written (a one-line ``UserError`` when it cannot)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- garbage makes the weights-only unpickler raise almost anything
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else ""
        if not isinstance(e, (RuntimeError, OSError, EOFError)) or not first:
            first = f"{type(e).__name__}: {first}" if first else type(e).__name__
        raise UserError(f"{path}: not a readable checkpoint (truncated or corrupt?): {first}") from None


def checked(ckpt, path):
    """A file's contents (``read_file``) as a plain checkpoint dict: its checksum verified, a sparse export decoded, a
    compact best.pt expanded."""
    if sparse.is_export(ckpt):  # export.py --include sparse: decode (and check) it to a plain checkpoint dict
        return _checked_layout(sparse.decode(ckpt, path), path)
    if isinstance(ckpt, dict) and "crc32" in ckpt:  # files written before checksums have none
        verify(ckpt, path)
        ckpt = sparse.without_crc(ckpt)
    if sparse.is_compact(ckpt):  # a pruned network's best.pt: zeros not stored
        ckpt = sparse.expand_checkpoint(ckpt, path)
    return _checked_layout(ckpt, path)


def _checked_layout(ckpt, path):
    if not isinstance(ckpt, dict) or "model" not in ckpt or "cfg" not in ckpt:
        raise UserError(f"{path}: not a yolo-compression checkpoint (no 'model' and 'cfg' entries)")
    return ckpt


# ------------------------------------------------------------------------------------------ sparse exports
def save_export(obj, path):
    """Write a sparse-export dict atomically; returns ``path``."""
    save_checkpoint(obj, path)
    return Path(path)


def export_sparse(model, path, ckpt=None, half=False, source=None):
    """Write ``model``'s sparse export to ``path``; returns its size in bytes."""
    save_export(sparse.encode_model(model, ckpt, half=half, source=source), path)
    return Path(path).stat().st_size


def load_export(path):
    """Read a sparse export file (``load_checkpoint`` decodes it)."""
    ckpt = load_checkpoint(path)
    if "sparse_export" not in ckpt:
        raise UserError(f"{path}: a checkpoint, not a sparse export")
    return ckpt


def verify(ckpt, path):
    """A one-line ``UserError`` unless the checkpoint dict's ``crc32`` matches what it holds."""
    if sparse.payload_crc(sparse.without_crc(ckpt)) != ckpt["crc32"]:
        raise UserError(f"{path}: checksum mismatch: the file was changed after it was written (a flipped byte, an "
                        f"edit); it cannot be trusted")


def load_model(weights, cfg=None, nc=None, device="cpu"):
    """Build a ``Darknet`` from any artefact the toolkit writes; returns ``(model, ckpt)`` with the model in eval mode.

    - a checkpoint ``.pt`` (see docs/architecture.md): the network comes from its ``cfg`` text (or from ``cfg`` when
      given), with its ``nc``; ``model`` is loaded strictly and ``masks`` (if any) are applied; ``ckpt`` is the dict.
    - a sparse export (``export.py --include sparse``): loaded like the checkpoint it came from.
    - a Darknet ``.weights`` file: needs ``cfg`` (and ``nc`` when the file was trained with another class count);
      ``ckpt`` is ``None``.
    """
    weights = Path(weights)
    if weights.suffix == ".weights":
        if cfg is None:
            raise UserError(f"{weights}: a Darknet .weights file needs its --cfg")
        model = Darknet(cfg, nc=nc)
        load_darknet_weights(model, weights)
        return model.to(device).eval(), None
    ckpt = load_checkpoint(weights)
    if nc is not None and ckpt.get("nc") is not None and nc != ckpt["nc"]:
        raise UserError(f"{weights}: the checkpoint has {ckpt['nc']} classes, --nc asks for {nc}")
    nc = ckpt.get("nc") if nc is None else nc
    img_size = ckpt.get("img_size") or 416
    if cfg is not None:
        model = Darknet(cfg, img_size=img_size, nc=nc)
    else:
        model = Darknet.from_text(ckpt["cfg"], name=ckpt.get("cfg_name") or weights.name, img_size=img_size, nc=nc)
    _load_state(model, ckpt["model"], weights)
    _apply_masks(model, ckpt.get("masks") or {}, weights)
    return model.to(device).eval(), ckpt


def _load_state(model, state, path):
    """``load_state_dict`` with a one-line ``UserError`` naming the first mismatches instead of a traceback."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{name}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                 for name, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if items]
        raise UserError(f"{path}: weights do not fit the network ({'; '.join(parts)})")
    model.load_state_dict(state)


def _apply_masks(model, masks, path):
    """Zero the pruned weights named by ``masks`` ``{param_name: bool tensor}``."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            if name not in params or tuple(mask.shape) != tuple(params[name].shape):
                raise UserError(f"{path}: mask {name} does not fit the network")
            params[name].mul_(mask.to(params[name].dtype))

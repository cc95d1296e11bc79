"""Sparse deployment checkpoints: pruned kernels as a packed bitmask plus their non-zero values.

The original project stored its 90%-sparse YOLOv3 as 118 MB, half the dense 235 MB, because dense zeros and the
masks were saved (and its COO variant spent 20 bytes per kept weight). A sparse export keeps one bit per weight
and the values that are not zero, and nothing that only training needs.

Format (``format_version`` 2). A ``torch.save`` dict that loads with ``torch.load(weights_only=True)``:

| key | content |
|---|---|
| ``sparse_format`` | ``"yolo-compression sparse export"``: the magic that tells it from other files |
| ``format_version`` | ``2`` (``1`` is still read); a newer version is refused with a message instead of being misread |
| ``cfg``, ``cfg_name``, ``nc``, ``names``, ``img_size`` | as in a checkpoint (the network rebuilds from them) |
| ``half`` | values and dense floats stored as float16 (``export.py --half``); loads as float32 |
| ``meta`` | ``source`` (file), ``epoch``, ``best_fitness``, ``floats``, ``nonzero_floats``, ``created``, ``torch`` |
| ``tensors`` | ``{state_dict key: entry}`` in state-dict order (below) |
| ``crc32`` | ``payload_crc`` of every other entry (cfg text, names, meta, tensors, ...), checked on load (torch does not check its zip records); version 1 covered the tensors only |

An entry is ``{'shape': [...], 'dtype': 'float32', 'encoding': ...}`` plus

- ``'dense'``: ``data``, the tensor (floats as float16 with ``half``).
- ``'bitmask'``: ``bits``, a uint8 tensor of ``numpy.packbits`` of the flattened keep-pattern (big-endian bit order,
  padded to a byte), deflated with zlib (Huffman-only or run-length strategy) when that is smaller (``codec``
  ``'packbits+zlib'``, else ``'packbits'``);
  ``values``, the kept entries in row-major order (float32, or float16 with ``half``); ``mask``, True when the
  pattern is the checkpoint's pruning mask (it comes back as the checkpoint's ``masks`` entry).

Which tensors are sparse: a floating tensor of 2 or more dimensions (conv kernels, linear weights) whose bitmask
encoding is smaller than its dense bytes, and every tensor the checkpoint has a pruning mask for. The pattern is
the pruning mask when the checkpoint has one and every pruned entry holds +0.0; otherwise it marks the entries
whose bits are not all zero (so a -0.0 is kept as a value). Decoding writes +0.0 elsewhere, so an fp32 export loads
bit-identical to the checkpoint's weights. With ``half`` the values are rounded to float16.

Bytes: one bit per weight (deflated: at 90% zeros ~0.48 bit) + 4 (2) bytes per kept value; a 90%-sparse network is
~13% (fp16 ~7%) of its dense fp32 file plus the layers that are not pruned.
"""
import io
import zlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError

MAGIC = "yolo-compression sparse export"
FORMAT_VERSION = 2  # 2: crc32 covers every entry (cfg, names, meta, ...); 1: the tensors only (still read)
READ_VERSIONS = (1, 2)
META_KEYS = ("cfg", "cfg_name", "nc", "names", "img_size")  # copied from the checkpoint


# ----------------------------------------------------------------------------------------------------- encode
_SAME_SIZE_INT = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}


def keep_pattern(t):
    """Bool numpy array: True where the entry's bits are not all zero (so -0.0 and NaN are kept as values)."""
    a = t.detach().cpu().contiguous()
    if a.dtype == torch.bfloat16:
        a = a.view(torch.int16)
    a = a.numpy()
    return a.view(_SAME_SIZE_INT[a.itemsize]) != 0


def _pack(pattern):
    """``(codec, uint8 tensor)``: packbits of the flattened pattern, deflated when that is smaller."""
    packed = np.packbits(pattern.reshape(-1)).tobytes()
    best = min((_deflate(packed, s) for s in (zlib.Z_HUFFMAN_ONLY, zlib.Z_RLE)), key=len)
    codec, data = ("packbits+zlib", best) if len(best) < len(packed) else ("packbits", packed)
    return codec, torch.tensor(np.frombuffer(data, np.uint8))


def _deflate(data, strategy):
    """A zlib stream of ``data``. Huffman-only deflate codes the packed bytes within ~2% of the entropy of a random
    mask (0.47 bit per weight at 90% zeros) and is ~70x faster than the default LZ77 search, which does worse on
    such data; run-length deflate wins where whole filters or channels are zero."""
    c = zlib.compressobj(9, zlib.DEFLATED, 15, 9, strategy)
    return c.compress(data) + c.flush()


def _encode_tensor(t, mask, half):
    """``(entry, number of stored non-+0.0 entries or None)`` for one state-dict tensor."""
    t = t.detach().cpu().contiguous()
    entry = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
    store = torch.float16 if half else t.dtype
    if not t.is_floating_point():
        entry.update(encoding="dense", data=t.clone())
        return entry, None
    bits = keep_pattern(t)
    nonzero = int(np.count_nonzero(bits))
    pattern, is_mask = None, False
    if mask is not None and tuple(mask.shape) == tuple(t.shape):
        mask = mask.detach().cpu().bool().numpy()
        if not (bits & ~mask).any():  # every pruned entry is +0.0: the mask is the pattern
            pattern, is_mask = mask, True
    if pattern is None and t.dim() >= 2:
        pattern = bits
    if pattern is not None:
        codec, packed = _pack(pattern)
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16
            values = t[torch.from_numpy(pattern)].to(store)
        else:
            values = torch.from_numpy(t.numpy()[pattern]).to(store)
        sparse_bytes = packed.numel() + values.numel() * values.element_size()
        if is_mask or sparse_bytes < t.numel() * torch.empty((), dtype=store).element_size():
            entry.update(encoding="bitmask", codec=codec, bits=packed, values=values, mask=is_mask)
            return entry, nonzero
    entry.update(encoding="dense", data=t.to(store).clone())
    return entry, nonzero


def _entry_tensors(entry):
    return [entry["data"]] if entry["encoding"] == "dense" else [entry["bits"], entry["values"]]


def payload_crc(obj, crc=0):
    """CRC-32 of everything ``obj`` holds (nested dicts, lists, tensors and plain values, in order): a changed byte of
    a weight, a cfg line or a class name changes it. What ``crc32`` entries of the toolkit's files hold."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            crc = payload_crc(v, zlib.crc32(f"{k!r}:".encode(), crc))
        return zlib.crc32(b"}", crc)
    if isinstance(obj, (list, tuple)):
        for v in obj:
            crc = payload_crc(v, zlib.crc32(b",", crc))
        return zlib.crc32(b"]", crc)
    if torch.is_tensor(obj):
        crc = zlib.crc32(f"{obj.dtype}{tuple(obj.shape)}".encode(), crc)
        if obj.numel():
            crc = zlib.crc32(obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy(), crc)  # no copy
        return crc
    return zlib.crc32(repr(obj).encode(), crc)


def without_crc(obj):
    return {k: v for k, v in obj.items() if k != "crc32"}


def _crc(tensors):
    """The version-1 checksum: entry names, shapes, encodings and tensor bytes (compact checkpoints still use it)."""
    crc = 0
    for name, entry in tensors.items():
        crc = zlib.crc32(f"{name}:{entry['shape']}:{entry['encoding']}".encode(), crc)
        for t in _entry_tensors(entry):
            if t.numel():
                crc = zlib.crc32(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(), crc)
    return crc


def encode(state, masks=None, half=False, info=None, meta=None):
    """The sparse-export dict of a state dict. ``masks`` ``{name: bool tensor}``; ``info`` supplies ``cfg``,
    ``cfg_name``, ``nc``, ``names``, ``img_size``; ``meta`` is stored as given (plus counts and a timestamp)."""
    masks = masks or {}
    info = info or {}
    tensors, nonzero = {}, 0
    for k, v in state.items():
        tensors[k], n = _encode_tensor(v, masks.get(k), half)
        nonzero += n or 0
    meta = dict(meta or {})
    meta.setdefault("floats", sum(v.numel() for v in state.values() if v.is_floating_point()))
    meta.setdefault("nonzero_floats", nonzero)
    meta.setdefault("created", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    meta.setdefault("torch", torch.__version__.split("+")[0])
    out = {"sparse_format": MAGIC, "format_version": FORMAT_VERSION}
    out.update({k: info.get(k) for k in META_KEYS})
    out.update(half=bool(half), meta=meta, tensors=tensors)
    out["crc32"] = payload_crc(out)
    return out


def encode_model(model, ckpt=None, half=False, source=None):
    """The sparse-export dict of a loaded ``Darknet`` (its current weights), with ``ckpt``'s names and masks."""
    ckpt = ckpt or {}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    info = {"cfg": model.cfg_text, "cfg_name": ckpt.get("cfg_name") or Path(model.cfg_path).name, "nc": model.nc,
            "names": list(ckpt.get("names") or [str(i) for i in range(model.nc or 0)]),
            "img_size": ckpt.get("img_size") or model.img_size}
    meta = {"source": Path(source).name if source else None, "epoch": ckpt.get("epoch"),
            "best_fitness": ckpt.get("best_fitness")}
    masks = ckpt.get("masks") or {}
    return encode(state, masks={k: m for k, m in masks.items() if k in state}, half=half, info=info, meta=meta)


def to_bytes(obj):
    """The bytes ``torch.save`` writes for ``obj`` (what the file on disk holds)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def export_bytes(model, half=False):
    """Bytes on disk of ``model``'s sparse export, computed in memory."""
    return len(to_bytes(encode_model(model, half=half)))


# ----------------------------------------------------------------------------------------------------- decode
def is_export(obj):
    """True for a dict that says it is a sparse export (any version)."""
    return isinstance(obj, dict) and obj.get("sparse_format") == MAGIC


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def _decode_tensor(name, e):
    shape = tuple(int(s) for s in e["shape"])
    dtype_name = e["dtype"]
    if e["encoding"] == "dense":
        t = e["data"]
        if tuple(t.shape) != shape:
            raise ValueError(f"{name}: holds {tuple(t.shape)}, its header says {shape}")
        return (t.to(DTYPES[dtype_name]) if t.is_floating_point() else t), None
    if e["encoding"] != "bitmask":
        raise ValueError(f"{name}: unknown encoding {e['encoding']!r}")
    dtype = DTYPES[dtype_name]
    raw = e["bits"].numpy().tobytes()
    if e["codec"] == "packbits+zlib":
        raw = zlib.decompress(raw)
    elif e["codec"] != "packbits":
        raise ValueError(f"{name}: unknown bitmask codec {e['codec']!r}")
    n = int(np.prod(shape)) if shape else 1
    if len(raw) != (n + 7) // 8:
        raise ValueError(f"{name}: bitmask of {len(raw)} bytes for {n} entries")
    pattern = np.unpackbits(np.frombuffer(raw, np.uint8), count=n).view(bool)
    values = e["values"].to(dtype)
    kept = int(np.count_nonzero(pattern))
    if kept != values.numel():
        raise ValueError(f"{name}: bitmask keeps {kept} entries, {values.numel()} values stored")
    out = torch.zeros(n, dtype=dtype)
    if dtype == torch.bfloat16:
        out[torch.from_numpy(pattern)] = values
    else:
        out.numpy()[pattern] = values.numpy()
    return out.view(shape), (torch.from_numpy(pattern.copy()).view(shape) if e.get("mask") else None)


DECODE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, RuntimeError, zlib.error)  # a damaged file


def _corrupt(path, kind, e):
    """The one-line ``UserError`` for a ``DECODE_ERRORS`` exception ``e`` met while decoding ``path``."""
    what = f"missing entry {e}" if isinstance(e, KeyError) else (str(e).splitlines() or [type(e).__name__])[0]
    return UserError(f"{path}: corrupt {kind} ({what})")


def _decode_tensors(obj, version=1):
    """``(state, masks)`` of the ``tensors`` entry of ``obj`` after checking its ``crc32`` (version 1: over the
    tensors; 2: over every entry of ``obj``); errors as in decode."""
    tensors = obj["tensors"]
    if (_crc(tensors) if version == 1 else payload_crc(without_crc(obj))) != obj["crc32"]:
        raise ValueError("checksum mismatch: changed after it was written")
    state, masks = {}, {}
    for name, entry in tensors.items():
        state[name], mask = _decode_tensor(name, entry)
        if mask is not None:
            masks[name] = mask
    return state, masks


def decode(obj, path="<sparse export>"):
    """A sparse export dict -> a checkpoint dict (``cfg``, ``nc``, ``names``, ``img_size``, ``model`` fp32 state,
    ``masks`` when the source had them, ``epoch``, ``best_fitness``, ``sparse_export``). Problems are ``UserError``."""
    version = obj.get("format_version")
    if version not in READ_VERSIONS:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise UserError(f"{path}: sparse export format version {version!r} "
                        f"{'is newer than this toolkit reads' if newer else 'is not supported'} "
                        f"(this toolkit reads version {FORMAT_VERSION})")
    try:
        state, masks = _decode_tensors(obj, version)
        if not isinstance(obj["cfg"], str):
            raise ValueError("no cfg text")
    except DECODE_ERRORS as e:
        raise _corrupt(path, "sparse export", e) from None
    meta = obj.get("meta") or {}
    ckpt = {k: obj.get(k) for k in META_KEYS}
    ckpt.update(model=state, epoch=meta.get("epoch"), best_fitness=meta.get("best_fitness"),
                sparse_export={"format_version": version, "half": obj.get("half", False), "meta": meta})
    if masks:
        ckpt["masks"] = masks
    return ckpt


# ------------------------------------------------------------------------------------------ compact checkpoints
COMPACT = "sparse_state"  # the key that marks a state dict stored as bitmask entries inside a checkpoint
COMPACT_VERSION = 1  # its crc32 covers its tensors; the checkpoint's own crc32 covers the rest


def _compact_state(state, masks):
    """``state`` as bitmask entries over ``masks`` (the tensors export uses), or None where some masked tensor has a
    pruned entry that is not +0.0 (the mask would then not be its pattern)."""
    tensors = {k: _encode_tensor(v, masks.get(k), False)[0] for k, v in state.items()}
    if not all(tensors.get(k, {}).get("mask") for k in masks):
        return None
    return {COMPACT: COMPACT_VERSION, "tensors": tensors, "crc32": _crc(tensors), "mask_names": list(masks)}


def compact_checkpoint(ckpt):
    """A pruned network's checkpoint without the bytes of its zeros (what the engine writes as best.pt).

    ``model`` becomes bitmask entries over the pruning mask (lossless: its pruned weights are +0.0), and the mask
    comes back from them, so the ``masks`` entry is dropped. ``rewind['model']`` keeps θ_k of the surviving weights
    only; its pruned entries load as +0.0. That loses nothing: a rewind always masks them again
    (``utils.pruning.rewind``) with a mask inside this one, because pruned weights stay pruned. A checkpoint
    without masks, with a ``train_state`` (last.pt: resume needs every byte), or whose pruned weights are not
    +0.0 is returned unchanged. ``utils.checkpoint.load_checkpoint`` expands it (``expand_checkpoint``)."""
    masks = ckpt.get("masks") or {}
    if not masks or "train_state" in ckpt or is_compact(ckpt):
        return ckpt
    model = _compact_state(ckpt["model"], masks)
    if model is None:
        return ckpt
    out = {k: v for k, v in ckpt.items() if k != "masks"}
    out["model"] = model
    if isinstance(ckpt.get("rewind"), dict) and ckpt["rewind"].get("model"):
        theta = {k: v.masked_fill(~masks[k].bool(), 0.0) if k in masks else v
                 for k, v in ckpt["rewind"]["model"].items()}
        theta_masks = {k: m for k, m in masks.items() if k in theta}
        out["rewind"] = dict(ckpt["rewind"], model=_compact_state(theta, theta_masks))
    return out


def is_compact(ckpt):
    """True for a checkpoint dict (or its ``rewind`` entry) whose ``model`` was stored by ``compact_checkpoint``."""
    return isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict) and COMPACT in ckpt["model"]


def _expand_state(obj, path):
    if obj.get(COMPACT) != COMPACT_VERSION:
        raise UserError(f"{path}: compact checkpoint format version {obj.get(COMPACT)!r} is not supported "
                        f"(this toolkit reads version {COMPACT_VERSION})")
    try:
        state, masks = _decode_tensors(obj)
        masks = {k: masks[k] for k in obj["mask_names"]}
    except DECODE_ERRORS as e:
        raise _corrupt(path, "checkpoint", e) from None
    return state, masks


def expand_checkpoint(ckpt, path="<checkpoint>"):
    """The plain checkpoint dict of a ``compact_checkpoint`` (``model``, ``masks`` in their saved order, ``rewind``)."""
    out = dict(ckpt)
    out["model"], out["masks"] = _expand_state(ckpt["model"], path)
    if is_compact(ckpt.get("rewind")):
        out["rewind"] = dict(ckpt["rewind"], model=_expand_state(ckpt["rewind"]["model"], path)[0])
    return out


# ------------------------------------------------------------------------------------------------ zero channels
def zero_output_channels(model):
    """``{layer index: number of conv output channels whose kernel is entirely zero}`` for every layer with a conv
    (the sum over a composite block's convs)."""
    counts = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and name.startswith("module_list."):
            i = int(name.split(".")[1])
            dead = int((~m.weight.detach().reshape(m.weight.shape[0], -1).ne(0).any(1)).sum())
            counts[i] = counts.get(i, 0) + dead
    return counts

"""Export a trained or pruned detector for deployment: sparse checkpoint, ONNX, Darknet ``.weights``.

    python export.py --weights runs/prune/exp/round_10/weights/best.pt --include sparse onnx darknet
    python export.py --weights best.pt --include sparse --half                  # fp16 values: ~half the bytes
    python export.py --weights best.pt --include sparse onnx --fold-empty-channels --data data/voc.data

- ``sparse`` -> ``NAME.sparse.pt`` (``NAME.sparse-fp16.pt`` with ``--half``): pruned kernels as a packed bitmask plus
  their non-zero values, the cfg and class names, nothing that only training needs (format: ``utils/sparse.py``).
  ``models.py``, ``test.py``, ``detect.py`` (every ``--weights``) load it like the checkpoint it came from.
- ``onnx`` -> ``NAME.onnx``: opset 17 (``--opset``), input ``images`` (batch, 3, S, S) in [0, 1] with a dynamic batch
  axis, output ``output`` (batch, N, 5 + nc): xywh in input pixels, objectness and class probabilities. Checked
  against PyTorch with onnxruntime. Always float32.
- ``darknet`` -> ``NAME.weights`` + ``NAME.cfg`` (the class count written into the cfg), for Darknet and OpenCV DNN.

``--fold-empty-channels`` first removes conv output channels whose kernels are entirely zero and the inputs that
read them downstream (``utils/export.py`` says how constants are folded), writes ``NAME.folded.pt`` +
``NAME.folded.cfg``, and exports that network (``NAME.folded.*``); with ``--data`` it reports mAP before and after.
Folded widths are rounded up to multiples of ``--fold-round-to`` (16) by keeping some empty channels: a width off
ONNX Runtime's channel block costs more than the channels it saves.
"""
import argparse
import json
from pathlib import Path

import torch

from models import make_checkpoint
from utils import sparse
from utils.checkpoint import export_sparse, load_export, load_model, save_checkpoint
from utils.datasets import create_dataloader, parse_data_cfg
from utils.errors import UserError, cli
from utils.evaluation import evaluate
from utils.export import (FOLD_ROUND_TO, bit_equal, check_foldable, check_onnx, compare_outputs, export_darknet,
                          export_onnx, fold_empty_channels, render_cfg, write_text)
from utils.my_utils import add_model_args, flag
from utils.summary import model_summary

FORMATS = ("sparse", "onnx", "darknet")


def build_parser():
    p = argparse.ArgumentParser(description="Export a detector: sparse checkpoint, ONNX, Darknet .weights.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    add_model_args(p)
    g = p.add_argument_group("export")
    flag(g, "--include", nargs="+", choices=FORMATS, default=["sparse"], help="formats to write")
    flag(g, "--half", action="store_true", help="sparse export with float16 values (loads as float32)")
    flag(g, "--fold-empty-channels", "--fold", action="store_true",
         help="remove conv output channels whose kernels are all zero (and their inputs downstream) first: a "
              "filter-level ticket (prune.py --granularity filter) becomes a smaller dense network")
    flag(g, "--fold-exact", action="store_true",
         help="with --fold-empty-channels: keep channels whose constant would be folded only approximately "
              "(read by a padded kxk conv)")
    flag(g, "--fold-round-to", type=int, default=FOLD_ROUND_TO,
         help="with --fold-empty-channels: keep empty channels so each folded conv's width is a multiple of this "
              "(ONNX Runtime and oneDNN compute convs in blocks of 8 or 16 channels; 1 keeps the fewest)")
    flag(g, "--opset", type=int, default=17, help="ONNX opset")
    flag(g, "--out", type=str, default=None, help="output folder (default: beside --weights)")
    flag(g, "--nc", type=int, default=None, help="class count of a Darknet .weights input")
    g = p.add_argument_group("mAP before/after folding (optional)")
    flag(g, "--data", type=str, default=None, help="a .data file: evaluate before and after --fold-empty-channels")
    flag(g, "--batch-size", type=int, default=16)
    flag(g, "--workers", type=int, default=2)
    return p


def stem_of(weights):
    name = Path(weights).name
    for suffix in (".sparse-fp16.pt", ".sparse.pt", ".pt", ".weights"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def evaluate_map(model, data_path, img_size, batch_size, workers):
    """``(mAP@0.5, mAP@.5:.95)`` of ``model`` on the ``valid`` set of a ``.data`` file."""
    data = parse_data_cfg(data_path)
    if int(data["classes"]) != model.nc:
        raise UserError(f"{data_path}: {data['classes']} classes, but the model has {model.nc}")
    loader, _ = create_dataloader(data["valid"], img_size, batch_size, model.max_stride, rect=True,
                                  augment=False, shuffle=False, workers=workers, nc=model.nc)
    m = evaluate(model, loader, names=list(data["names"]))
    return m["map50"], m["map"]


def checkpoint_of(model, ckpt):
    """A toolkit checkpoint (no training state) for ``model``, with ``ckpt``'s names, image size and history."""
    out = make_checkpoint(model, (ckpt or {}).get("names"))
    for key in ("img_size", "epoch", "best_fitness"):
        if (ckpt or {}).get(key) is not None:
            out[key] = ckpt[key]
    return out


def fold(model, ckpt, args, out_dir, stem, img_size):
    check_foldable(model)
    if args.fold_round_to < 1:
        raise UserError(f"--fold-round-to {args.fold_round_to}: a width multiple is 1 or more")
    folded, rep = fold_empty_channels(model, exact=args.fold_exact, round_to=args.fold_round_to)
    result = {k: rep[k] for k in ("removed", "folded_constants", "inexact_constants", "passes", "params_before",
                                  "params_after")}
    print(f"fold: removed {rep['removed']:,} empty output channels in {len(rep['layers'])} layers "
          f"({rep['passes']} passes, widths rounded up to multiples of {args.fold_round_to}); parameters "
          f"{rep['params_before']:,} -> {rep['params_after']:,}")
    for i, (before, after) in sorted(rep["layers"].items()):
        print(f"  layer {i:>3}: {before} -> {after} channels")
    if rep["kept_layers"]:
        print(f"  left as they are (folding does not reach into them): {', '.join(rep['kept_layers'])}")
    if rep["folded_constants"]:
        print(f"  {rep['folded_constants']} removed channels carried a non-zero constant, folded into the next "
              f"layer's bias; {rep['inexact_constants']} of them are read by a padded kxk conv (exact in the interior, "
              f"approximate at the image border; --fold-exact keeps those)")
    diff = compare_outputs(model, folded, img_size)
    result["max_abs_diff"] = diff
    print(f"  folded vs unfolded on a random {img_size}px image: max |diff| raw {diff['raw']:.3g}, "
          f"probabilities {diff['prob']:.3g}, boxes {diff['box']:.3g} px")
    if args.data:
        before = evaluate_map(model, args.data, img_size, args.batch_size, args.workers)
        after = evaluate_map(folded, args.data, img_size, args.batch_size, args.workers)
        result["map_before"], result["map_after"] = before, after
        print(f"  mAP@0.5 {before[0]:.4f} -> {after[0]:.4f}, mAP@.5:.95 {before[1]:.4f} -> {after[1]:.4f}")
    path = out_dir / f"{stem}.folded.pt"
    save_checkpoint(checkpoint_of(folded, ckpt), path)
    write_text(out_dir / f"{stem}.folded.cfg", render_cfg(folded))
    print(f"  {path} ({path.stat().st_size:,} bytes) + {stem}.folded.cfg")
    result["checkpoint"] = str(path)
    return folded, result


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not args.weights:
        raise UserError("export.py: give --weights (a checkpoint .pt, sparse export, or Darknet .weights with --cfg)")
    weights = Path(args.weights)
    model, ckpt = load_model(weights, cfg=args.cfg, nc=args.nc)
    img_size = args.img_size or (ckpt or {}).get("img_size") or 416
    model.check_img_size(img_size)
    out_dir = Path(args.out) if args.out else weights.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem_of(weights)
    dense_bytes = len(sparse.to_bytes(checkpoint_of(model, ckpt)))
    s = model_summary(model, img_size)
    zero = sparse.zero_output_channels(model)
    print(f"{weights}: {weights.stat().st_size:,} bytes; {s['params']:,} parameters, {s['nonzero_params']:,} non-zero, "
          f"prunable sparsity {s['sparsity']:.2%}; MACs at {img_size}px: dense {s['macs']:,}, sparse "
          f"{s['sparse_macs']:,}; {sum(zero.values()):,} empty conv output channels")
    result = {"weights": str(weights), "file_bytes": weights.stat().st_size, "dense_bytes": dense_bytes,
              "summary": s, "files": {}}
    if args.fold_empty_channels:
        model, result["fold"] = fold(model, ckpt, args, out_dir, stem, img_size)
        stem += ".folded"
    for fmt in dict.fromkeys(args.include):
        if fmt == "sparse":
            path = out_dir / f"{stem}.sparse{'-fp16' if args.half else ''}.pt"
            info = ckpt if not args.fold_empty_channels else {k: v for k, v in (ckpt or {}).items() if k != "masks"}
            n = export_sparse(model, path, info, half=args.half, source=weights)
            loaded = load_export(path)["model"]
            state = model.state_dict()
            same = all(bit_equal(loaded[k], v.detach().cpu()) for k, v in state.items())
            check = ("loads bit-identical" if same else "LOAD MISMATCH") if not args.half else "float16 values"
            if not args.half and not same:
                raise RuntimeError(f"{path}: the written export does not load back bit-identical")
            print(f"sparse: {path} {n:,} bytes = {n / dense_bytes:.2%} of the dense fp32 checkpoint "
                  f"({dense_bytes:,} bytes); {check}")
            result["files"]["sparse"] = {"path": str(path), "bytes": n, "ratio": n / dense_bytes}
        elif fmt == "onnx":
            path = export_onnx(model, out_dir / f"{stem}.onnx", img_size, args.opset)
            diff = check_onnx(model, path, img_size)
            print(f"onnx: {path} {path.stat().st_size:,} bytes; onnxruntime vs PyTorch max |diff| {diff:.3g} "
                  f"(batch 2, {img_size}px)")
            result["files"]["onnx"] = {"path": str(path), "bytes": path.stat().st_size, "max_abs_diff": diff}
        elif fmt == "darknet":
            path, cfg = export_darknet(model, out_dir / f"{stem}.weights")
            print(f"darknet: {path} {path.stat().st_size:,} bytes + {cfg}")
            result["files"]["darknet"] = {"path": str(path), "cfg": str(cfg), "bytes": path.stat().st_size}
    print(json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    cli(main)

"""Ablations of the compact cfgs (issue 6): ``train.py`` with one change to every network it builds.

    python benchmarks/ablate_compact.py --residual-gamma 1 -- --params params/compact.yaml --cfg cfg/yolo-nano.cfg
    bash benchmarks/gpu_ablate.sh OUT 460        # the sweep of docs/models.md, side by side on a GPU

Changes (flags before ``--``; everything after it goes to ``train.py``):
- ``--residual-gamma G``: the last BN scale of every residual branch starts at G instead of 0
  (``models.init_residual_branches``, zero-gamma of Goyal et al. 2017; 1 is PyTorch's default);
- ``--no-se``: squeeze-excite layers (YOLO Nano's FCA, the SE of the MobileNet blocks) pass their input through
  unchanged (their weights stay in the model, unused);
- ``--act-out``: the block that feeds each output conv gets its depthwise conv's activation after its linear
  projection too, so the output conv reads an activated BN conv as in YOLOv3 (parameter count unchanged).

The edits hold for this process only: checkpoints carry the plain cfg, so a ``--act-out`` or ``--no-se``
checkpoint evaluated later by ``test.py`` is a different network. Per-epoch figures come from the run's
results.csv, evaluated in this process.
"""
import argparse
import copy
import sys
from pathlib import Path

import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import models  # noqa: E402
import train  # noqa: E402
from utils.errors import UserError, cli  # noqa: E402


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], usage="%(prog)s [changes] -- [train.py flags]")
    ap.add_argument("--residual-gamma", type=float, default=None, help="start value of residual branches' last BN scale")
    ap.add_argument("--no-se", action="store_true", help="squeeze-excite layers become the identity")
    ap.add_argument("--act-out", action="store_true", help="activate the projection that feeds each output conv")
    argv = list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    return ap.parse_args(argv[:cut]), argv[cut + 1:]


def activate_outputs(model):
    """Append the depthwise activation to the linear projection of each block that feeds an output conv."""
    for i in model.yolo_layers:
        block = model.module_list[i - 2]
        if not isinstance(block, models.Block) or "linear" not in block._modules or "dw" not in block._modules:
            raise UserError(f"--act-out: layer {i - 2} of {model.cfg_path} is not a compact block")
        block.linear.add_module("act", copy.deepcopy(block.dw.act))


def edit(model, residual_gamma=None, act_out=False):
    """The model edits of the flags, applied to a built ``Darknet``."""
    if residual_gamma is not None:
        for bn in models.residual_branch_bns(model):
            nn.init.constant_(bn.weight, residual_gamma)
    if act_out:
        activate_outputs(model)


def install(a):
    """Patch ``models`` so that every ``Darknet`` this process builds gets the edits of ``a``."""
    plain = models.init_residual_branches

    def init_residual_branches(model):
        plain(model)
        edit(model, a.residual_gamma, a.act_out)

    models.init_residual_branches = init_residual_branches
    if a.no_se:
        models.SqueezeExcite.forward = lambda self, x: x


def main(argv=None):
    a, train_argv = parse_args(sys.argv[1:] if argv is None else argv)
    install(a)
    print(f"ablation: residual_gamma={a.residual_gamma} no_se={a.no_se} act_out={a.act_out}", flush=True)
    return train.main(train_argv)


if __name__ == "__main__":
    cli(main)

"""Distil a teacher into a student (Chen et al. 2017): hint, soft-target and teacher-bounded regression terms.

    python my_kd.py --cfg cfg/yolov3-tiny.cfg --teacher-weights runs/train/exp/weights/best.pt
    python my_kd.py --cfg cfg/yolo-nano.cfg --teacher-weights yolov3.pt --student-features 12 --teacher-features 36
    python my_kd.py --weights runs/prune/exp/round_3/weights/best.pt --teacher-weights yolov3.pt   # pruned student
    python my_kd.py --resume                          # continue the most recent distillation run

Defaults come from params/KD.yaml (inheriting params/default.yaml); utils/distill.py has the equations.
A pruned student (a --weights checkpoint with masks) keeps its mask: the pruning module's mask plug-in runs too.
"""
import os
import shutil

from utils import engine
from utils.checkpoint import load_checkpoint
from utils.distill import DistillPlugin, load_teacher, mask_plugin_for
from utils.errors import UserError, cli
from utils.my_utils import kd_parser, parse_args


def build_plugins(args, model, resume=None):
    """The distillation plug-in (validated against ``model``) and, for a pruned student, its mask plug-in."""
    teacher = load_teacher(args.teacher_cfg, args.teacher_weights)
    kd = DistillPlugin.from_args(args, teacher).check(model, args.img_size)
    plugins = [kd]
    source = resume
    if source is None and str(args.weights or "").endswith(".pt"):
        source = load_checkpoint(args.weights)
    masks = mask_plugin_for(source)
    if masks is not None:
        plugins.append(masks)
    return plugins


def main(argv=None):
    args = parse_args(kd_parser(), argv)
    if not args.teacher_weights and not args.resume:
        raise UserError("--teacher-weights is required (a checkpoint .pt, or Darknet .weights with --teacher-cfg)")
    args, model, save_dir, resume = engine.prepare(args)
    try:
        plugins = build_plugins(args, model, resume)
    except UserError:
        main_rank = os.environ.get("RANK", "-1") in ("-1", "0")
        if main_rank and resume is None and not any(p.is_file() for p in save_dir.rglob("*")):
            shutil.rmtree(save_dir, ignore_errors=True)  # leave no empty run folder behind a set-up error
        raise
    trainer = engine.Trainer(args, model, save_dir, plugins=plugins, resume_ckpt=resume)
    trainer.fit()
    if trainer.main:
        print(f"results saved to {save_dir} (best.pt, last.pt, results.csv, results.png)")
    return save_dir


if __name__ == "__main__":
    cli(main)

"""Distil a teacher into a student adversarially (Wang et al. 2020, GAN-Knowledge Distillation, IEEE Access 8).

    python my_kd_gan.py --cfg cfg/yolo-nano.cfg --teacher-weights runs/train/exp/weights/best.pt
    python my_kd_gan.py --cfg cfg/yolo-nano.cfg --teacher-weights yolov3.pt \
        --teacher-features 81 93 105 --student-features 48 44 40          # the original's three scales (the default)
    python my_kd_gan.py --cfg cfg/yolo-nano.cfg --teacher-weights yolov3.pt --epochs 300 --second-stage 200
    python my_kd_gan.py --resume                      # continue the most recent run, discriminators included

The student plays the generator: per feature pair (by default the raw prediction maps before every [yolo] layer,
paired by stride) a discriminator learns to tell the teacher's map from the student's, and the student gets
``stage1_det_scale * L_det + adv_weight * BCE(D(F_s), real)`` with the gradient flowing through D until the
``--second-stage`` epoch, then the detection loss alone. Defaults come from params/KD_GAN.yaml (inheriting
params/default.yaml); utils/gan.py has the details. A pruned student keeps its mask (the pruning plug-in runs too).
"""
import os
import shutil

from utils import engine
from utils.checkpoint import load_checkpoint
from utils.distill import load_teacher, mask_plugin_for
from utils.errors import UserError, cli
from utils.gan import GANPlugin
from utils.my_utils import gan_parser, parse_args


def build_plugins(args, model, resume=None):
    """The GAN plug-in (validated against ``model``) and, for a pruned student, its mask plug-in."""
    teacher = load_teacher(args.teacher_cfg, args.teacher_weights)
    gan = GANPlugin.from_args(args, teacher).check(model, args.img_size)
    plugins = [gan]
    source = resume
    if source is None and str(args.weights or "").endswith(".pt"):
        source = load_checkpoint(args.weights)
    masks = mask_plugin_for(source)
    if masks is not None:
        plugins.append(masks)
    return plugins


def main(argv=None):
    args = parse_args(gan_parser(), argv)
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

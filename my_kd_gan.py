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
from utils import distill
from utils.gan import GANPlugin
from utils.errors import cli
from utils.my_utils import gan_parser, parse_args


def build_plugins(args, model, resume=None):
    """The GANPlugin (validated against ``model``) and, for a pruned student, its mask plug-in."""
    return distill.student_plugins(args, model, GANPlugin, resume)


def main(argv=None):
    return distill.run(parse_args(gan_parser(), argv), GANPlugin)


if __name__ == "__main__":
    cli(main)

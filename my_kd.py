"""Distil a teacher into a student (Chen et al. 2017): hint, soft-target and teacher-bounded regression terms.

    python my_kd.py --cfg cfg/yolov3-tiny.cfg --teacher-weights runs/train/exp/weights/best.pt
    python my_kd.py --cfg cfg/yolo-nano.cfg --teacher-weights yolov3.pt --student-features 12 --teacher-features 36
    python my_kd.py --weights runs/prune/exp/round_3/weights/best.pt --teacher-weights yolov3.pt   # pruned student
    python my_kd.py --resume                          # continue the most recent distillation run

Defaults come from params/KD.yaml (inheriting params/default.yaml); utils/distill.py has the equations.
A pruned student (a --weights checkpoint with masks) keeps its mask: the pruning module's mask plug-in runs too.
"""
from utils import distill
from utils.distill import DistillPlugin
from utils.errors import cli
from utils.my_utils import kd_parser, parse_args


def build_plugins(args, model, resume=None):
    """The DistillPlugin (validated against ``model``) and, for a pruned student, its mask plug-in."""
    return distill.student_plugins(args, model, DistillPlugin, resume)


def main(argv=None):
    return distill.run(parse_args(kd_parser(), argv), DistillPlugin)


if __name__ == "__main__":
    cli(main)

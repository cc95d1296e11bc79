"""utils/settings.py: one source of every technique default, shared by the flags, the YAML recipes and Python."""
import argparse
from dataclasses import fields

import pytest
import yaml

from models import Darknet, prunable_parameters
from utils.cs import ContinuousSparsification, CSPlugin, SoftMasks
from utils.distill import DistillPlugin, Teacher
from utils.errors import UserError
from utils.gan import GANPlugin
from utils.datasets import DEFAULT_HYP
from utils.loss import ComputeLoss
from utils.my_utils import (gan_parser, hyp_from_args, kd_parser, parse_args, prune_parser, train_parser,
                            upgrade_saved_args)
from utils.pruning import LotteryTicket
from utils.settings import (HYP_SETTINGS, AugmentSettings, CSSettings, DataSettings, DeviceSettings, GANSettings,
                            KDSettings, LossSettings, LTHSettings, ModelSettings, OptimSettings, OutputSettings,
                            RunSettings, TrainSettings)

from .conftest import ROOT

TEACHER = ["--teacher-weights", "t.pt"]
SCRIPTS = [(KDSettings, kd_parser, TEACHER), (GANSettings, gan_parser, TEACHER), (CSSettings, prune_parser, ["--cs"]),
           (LTHSettings, prune_parser, ["--lth"]), (OptimSettings, train_parser, []), (LossSettings, train_parser, []),
           (AugmentSettings, train_parser, []), (LossSettings, kd_parser, TEACHER), (OptimSettings, gan_parser, TEACHER)]
TECHNIQUES = (KDSettings, GANSettings, CSSettings, LTHSettings)
PINNED = {"voc.yaml"}  # the GPU recipe states all its values (ultralytics' 2020 ones): they must not follow a fallback
PRUNE_PARAMS = {"--cs": ROOT / "params" / "CS.yaml", "--lth": ROOT / "params" / "IMP.yaml"}


def tiny(seed=0):
    import torch

    torch.manual_seed(seed)
    return Darknet("cfg/yolov3-tiny.cfg", img_size=64, nc=6)


@pytest.mark.parametrize("cls, parser, argv", SCRIPTS)
def test_the_script_with_no_flags_uses_the_dataclass_fallbacks(cls, parser, argv):
    if argv and argv[0] == "--lth":  # prune.py reads the technique's recipe (IMP.yaml: none of these keys)
        argv = [*argv, "--params", str(PRUNE_PARAMS[argv[0]])]
    from_cli = cls.from_args(parse_args(parser(), argv))
    expected = cls(teacher_weights="t.pt") if "teacher_weights" in {f.name for f in fields(cls)} else cls()
    assert from_cli == expected


@pytest.mark.parametrize("cls, parser, argv", SCRIPTS)
def test_every_field_is_a_flag_whose_help_shows_the_fallback(cls, parser, argv):
    actions = {a.dest: a for a in parser()._actions}
    shared = {f.name for f in fields(LTHSettings)} & {f.name for f in fields(CSSettings)}
    for f in fields(cls):
        assert f.name in actions, f"--{f.name} is not a flag"
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        if parser is prune_parser and f.name in shared and LTHSettings.__dataclass_fields__[f.name].default != \
                CSSettings.__dataclass_fields__[f.name].default:
            default = None  # one flag, two techniques: each falls back to its own default
            assert f"{f.default}" in actions[f.name].help
        assert actions[f.name].default == default and actions[f.name].help


def test_plugins_built_from_python_equal_those_the_scripts_build():
    teacher = Teacher(tiny(1))
    kd_cli = DistillPlugin.from_args(parse_args(kd_parser(), TEACHER), teacher)
    kd_py = DistillPlugin(teacher, teacher_weights="t.pt")
    assert kd_py.settings == kd_cli.settings
    assert (kd_py.hint_weight, kd_py.object_weight, kd_py.class_cells) == (0.1, 4.0, "objects")
    gan_args = parse_args(gan_parser(), TEACHER)
    gan_cli = GANPlugin.from_args(gan_args, teacher)
    assert GANPlugin(teacher, teacher_weights="t.pt").settings == gan_cli.settings
    soft = SoftMasks.init(prunable_parameters(tiny()), -0.1)
    cs = ContinuousSparsification(parse_args(prune_parser(), ["--cs"]), None)
    assert CSPlugin(soft).settings == cs.plugin(soft).settings == CSSettings() and cs.plugin(soft).mask_lr == 0.1
    lth = LotteryTicket(parse_args(prune_parser(), ["--lth", "--params", str(PRUNE_PARAMS["--lth"])]), None)
    assert lth.settings == LTHSettings() and (lth.rounds, lth.rate, lth.scope, lth.continued) == (12, 0.2, "local", True)
    cs_recipe = ContinuousSparsification(parse_args(prune_parser(), ["--cs", "--params", str(PRUNE_PARAMS["--cs"])]),
                                         None)
    assert (cs_recipe.settings.mask_lr, cs_recipe.search_rounds, cs_recipe.rewind_epoch) == (10.0, 3, 2)


def test_recipes_do_not_repeat_a_fallback():
    """A key of params/*.yaml that is a settings field must change it: a repeated value would be a second source."""
    owner = {"KD.yaml": KDSettings, "KD_GAN.yaml": GANSettings, "CS.yaml": CSSettings, "IMP.yaml": LTHSettings}
    repeated = []
    for path in sorted((ROOT / "params").glob("*.yaml")):
        classes = ([owner[path.name]] if path.name in owner else list(TECHNIQUES)) + \
            ([] if path.name in PINNED else list(HYP_SETTINGS))
        defaults = {f.name: f.default for cls in classes for f in fields(cls)}
        for key, value in (yaml.safe_load(path.read_text()) or {}).items():
            value = tuple(value) if isinstance(value, list) else value
            if key in defaults and value == defaults[key]:
                repeated.append(f"{path.name}: {key}")
    assert not repeated, repeated


def test_loss_and_augmentation_built_from_python_equal_those_of_train_py():
    cli = hyp_from_args(parse_args(train_parser(), []))
    assert ComputeLoss(tiny()).gains == ComputeLoss(tiny(), cli).gains
    assert ComputeLoss(tiny(), {"box": 0.1}).gains["cls"] == ComputeLoss(tiny(), cli).gains["cls"]  # a missing key
    assert DEFAULT_HYP == {k: cli[k] for k in DEFAULT_HYP} and set(DEFAULT_HYP) == {f.name for f in fields(AugmentSettings)}
    assert (cli["lr0"], cli["cls"], cli["mosaic"]) == (0.01, 2.0, 1.0)


def test_training_values_are_checked_from_flags_and_recipes(tmp_path):
    with pytest.raises(UserError, match="--mosaic 2.0"):
        hyp_from_args(parse_args(train_parser(), ["--mosaic", "2"]))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("momentum: 1.2\n")
    with pytest.raises(UserError, match="--momentum 1.2"):
        OptimSettings.from_args(parse_args(train_parser(), ["--params", str(recipe)]))


@pytest.mark.parametrize("cls, changes, flag", [
    (KDSettings, dict(kd_mu=1.5), "--kd-mu"), (KDSettings, dict(hint_loss="l3"), "--hint-loss"),
    (KDSettings, dict(soft_weight=-1.0), "--soft-weight"), (KDSettings, dict(kd_mu_scope="box"), "--kd-mu-scope"),
    (GANSettings, dict(d_arch="huge"), "--d-arch"), (GANSettings, dict(second_stage=0), "--second-stage"),
    (GANSettings, dict(d_lr=float("nan")), "--d-lr"), (CSSettings, dict(mask_lr=0.0), "--mask-lr"),
    (CSSettings, dict(cs_reset="never"), "--cs-reset"), (CSSettings, dict(final_temperature=0.5), "--final-temperature"),
    (CSSettings, dict(rounds=0), "--rounds"), (LTHSettings, dict(prune_rate=1.0), "--prune-rate"),
    (LTHSettings, dict(rounds=-1), "--rounds"), (LTHSettings, dict(retrain_schedule="again"), "--retrain-schedule"),
    (OptimSettings, dict(lr0=-0.01), "--lr0"), (OptimSettings, dict(momentum=1.0), "--momentum"),
    (OptimSettings, dict(optimizer="rmsprop"), "--optimizer"), (OptimSettings, dict(nominal_batch_size=0),
                                                                 "--nominal-batch-size"),
    (OptimSettings, dict(grad_clip=-1.0), "--grad-clip"), (LossSettings, dict(cls=-1.0), "--cls"),
    (LossSettings, dict(anchor_t=1.0), "--anchor-t"), (LossSettings, dict(label_smoothing=1.0), "--label-smoothing"),
    (AugmentSettings, dict(mosaic=1.5), "--mosaic"), (AugmentSettings, dict(fliplr=float("nan")), "--fliplr"),
    (AugmentSettings, dict(hsv_s=-0.1), "--hsv-s"), (DataSettings, dict(batch_size=0), "--batch-size"),
    (DataSettings, dict(workers=-1), "--workers"), (TrainSettings, dict(epochs=0), "--epochs"),
    (TrainSettings, dict(memory_format="nhwc"), "--memory-format"),
    (TrainSettings, dict(precise_bn=-1), "--precise-bn"),
    (OutputSettings, dict(eval_from=-1.0), "--eval-from"), (DeviceSettings, dict(amp="fp8"), "--amp"),
    (ModelSettings, dict(img_size=0), "--img-size"),
])
def test_settings_validate_in_one_place_with_one_line_errors(cls, changes, flag):
    with pytest.raises(UserError, match=flag) as e:
        cls().but(**changes)
    assert "\n" not in str(e.value)


RUN_SETTINGS = (ModelSettings, DataSettings, TrainSettings, OutputSettings, DeviceSettings)


@pytest.mark.parametrize("parser, project", [(train_parser, "runs/train"), (prune_parser, "runs/prune"),
                                             (kd_parser, "runs/kd")])
def test_run_data_and_device_flags_come_from_their_dataclasses(parser, project):
    """Every field of the run's settings is a flag of each training script; with no flags a script gets the
    fallbacks, overridden only by params/default.yaml's recipe (its own runs/ folder aside)."""
    actions = {a.dest: a for a in parser()._actions}
    recipe = yaml.safe_load((ROOT / "params" / "default.yaml").read_text())
    run = RunSettings.from_args(parse_args(parser(), TEACHER if parser is kd_parser else []))
    for cls in RUN_SETTINGS:
        got = next(getattr(run, f.name) for f in fields(RunSettings) if f.type is cls)
        for f in fields(cls):
            assert f.name in actions and actions[f.name].help, f"--{f.name} is not a flag"
            expected = project if f.name == "project" else recipe.get(f.name, f.default)
            if parser is kd_parser and f.name == "cfg":
                continue  # KD.yaml names its student
            assert getattr(got, f.name) == expected, f.name
    assert (run.model.img_size, run.data.workers, run.device.amp, run.train.precise_bn) == (256, 2, "auto", 16)


def test_the_trainer_reads_typed_settings(tmp_path):
    from utils.engine import Trainer

    args = parse_args(train_parser(), ["--epochs", "3", "--workers", "0", "--seed", "7", "--no-ema",
                                       "--project", str(tmp_path), "--device", "cpu", "--amp", "off"])
    trainer = Trainer(args, tiny(), tmp_path / "run")
    s = trainer.settings
    assert (s.train.epochs, s.data.workers, s.device.seed, s.train.no_ema, s.output.project) == \
        (3, 0, 7, True, str(tmp_path))
    assert (trainer.epochs, trainer.seed, trainer.img_size, trainer.precision.name) == (3, 7, 256, "fp32")
    with pytest.raises(UserError, match="--workers -1"):
        Trainer(parse_args(train_parser(), ["--workers", "-1"]), tiny(), tmp_path / "bad")


def test_typed_flags_and_recipes_reach_the_settings(tmp_path):
    recipe = tmp_path / "kd.yaml"
    recipe.write_text("inherit_from: " + str(ROOT / "params" / "KD.yaml") + "\nkd_mu: 0.5\n")
    s = KDSettings.from_args(parse_args(kd_parser(), TEACHER + ["--params", str(recipe), "--hint-weight", "2"]))
    assert (s.kd_mu, s.hint_weight, s.bound_weight) == (0.5, 2.0, 0.5)
    g = GANSettings.from_args(parse_args(gan_parser(), TEACHER + ["--d-kernel-size", "1", "3", "--soft-labels", "no"]))
    assert g.d_kernel_size == (1, 3) and g.soft_labels is False


def test_old_kd_runs_resume_with_the_class_term_they_trained_with():
    saved = upgrade_saved_args(argparse.Namespace(amp="off", kd_mu=0.7, teacher_weights="t.pt"))
    assert KDSettings.from_args(saved).kd_class_cells == "all"
    current = upgrade_saved_args(argparse.Namespace(amp="off", kd_mu=0.7, kd_class_cells="objects"))
    assert current.kd_class_cells == "objects"

"""Typed settings of the techniques: one frozen dataclass per concern, the one source of its defaults.

Each field carries its flag's help (and type/choices/nargs where argparse needs them); ``utils.my_utils`` builds
the flags from these fields, so ``--help``, a plug-in built from Python and a script run with no flags all start
from the same values. params/*.yaml files are recipes: they override these fallbacks, never repeat them.
"""
import argparse
import math
from dataclasses import dataclass, field, fields, replace

from utils.errors import UserError

PRECISION_CHOICES = ("auto", "bf16", "fp16", "off")  # --amp (utils/torch_utils.py resolve_precision)


def setting(default, help, **flag_kwargs):
    """A field whose metadata holds the argparse keywords of its flag (``help``, and ``type``/``choices``/...)."""
    return field(default=default, metadata={"help": help, **flag_kwargs})


def yes_no(value):
    """A boolean flag value: yes/no, true/false, 1/0."""
    text = str(value).lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


def check_choice(settings, *names):
    """A one-line error for a field outside its flag's choices (settings built from Python skip argparse)."""
    for name in names:
        choices = next(f.metadata["choices"] for f in fields(settings) if f.name == name)
        if getattr(settings, name) not in choices:
            raise UserError(f"--{name.replace('_', '-')} {getattr(settings, name)}: use one of "
                            f"{', '.join(map(str, choices))}")


def check_non_negative(settings, *names):
    """A one-line error for a weight that is missing, not finite or negative."""
    for name in names:
        v = getattr(settings, name)
        if v is None or not math.isfinite(float(v)) or v < 0:
            raise UserError(f"--{name.replace('_', '-')} {v}: must be a number >= 0")


class Settings:
    """What every settings dataclass can do: be read from parsed arguments and be overridden by keywords."""

    @classmethod
    def from_args(cls, args, **overrides):
        """The settings in ``args`` (a Namespace); a key that is missing or None takes its fallback."""
        values = {}
        for f in fields(cls):
            value = getattr(args, f.name, None)
            if value is not None:
                values[f.name] = tuple(value) if isinstance(f.default, tuple) and isinstance(value, list) else value
        return cls(**{**values, **overrides})

    def but(self, **changes):
        """A copy with ``changes`` (field names) applied."""
        return replace(self, **changes)


def check_range(settings, low, high, *names, high_open=False):
    """A one-line error for a field outside [low, high] (or [low, high) with ``high_open``)."""
    for name in names:
        v = getattr(settings, name)
        ok = v is not None and math.isfinite(float(v)) and low <= v and (v < high if high_open else v <= high)
        if not ok:
            raise UserError(f"--{name.replace('_', '-')} {v}: must lie in [{low:g}, {high:g}{')' if high_open else ']'}")


LR_SCHEDULES = ("cosine", "inverse-exp")


@dataclass(frozen=True)
class OptimSettings(Settings):
    """The optimiser and its schedule (utils/engine.py): every script trains with these."""

    optimizer: str = setting("sgd", "SGD with nesterov momentum, or Adam", choices=("sgd", "adam"))
    lr_schedule: str = setting("cosine", "learning-rate factor over the epochs: cosine to --lrf, or inverse-exp "
                               "1 - 10^(-4 (1 - e/epochs)) (the original project's)", choices=LR_SCHEDULES)
    lr0: float = setting(0.01, "initial learning rate", type=float)
    lrf: float = setting(0.05, "final learning rate as a fraction of lr0 (cosine)", type=float)
    momentum: float = setting(0.937, "SGD momentum / Adam beta1", type=float)
    weight_decay: float = setting(0.0005, "L2 on conv and linear weights (not BN or biases)", type=float)
    warmup_epochs: float = setting(2.0, "linear warm-up length", type=float)
    warmup_momentum: float = setting(0.8, "momentum at the start of warm-up", type=float)
    warmup_bias_lr: float = setting(0.1, "bias learning rate at the start of warm-up", type=float)
    nominal_batch_size: int = setting(16, "gradients are accumulated to this batch size", type=int)
    grad_clip: float = setting(10.0, "clip the gradient norm (0 disables)", type=float)

    def __post_init__(self):
        if self.nominal_batch_size is None or self.nominal_batch_size < 1:
            raise UserError(f"--nominal-batch-size {self.nominal_batch_size}: must be 1 or more")
        check_range(self, 0, 1, "momentum", "warmup_momentum", high_open=True)
        check_non_negative(self, "lr0", "lrf", "weight_decay", "warmup_epochs", "warmup_bias_lr", "grad_clip")
        check_choice(self, "optimizer", "lr_schedule")


@dataclass(frozen=True)
class LossSettings(Settings):
    """The YOLO loss's gains and target matching (utils/loss.py)."""

    box: float = setting(0.05, "GIoU box loss gain", type=float)
    obj: float = setting(1.5, "objectness BCE gain: every cell of every scale weighs the same", type=float)
    cls: float = setting(2.0, "class BCE gain, scaled by the class count and the number of scales (2.0: the CPU "
                         "recipe on shapes, where 0.5 learnt the classes late; params/voc.yaml: 0.5)", type=float)
    cls_pw: float = setting(1.0, "class BCE positive weight", type=float)
    obj_pw: float = setting(1.0, "objectness BCE positive weight", type=float)
    anchor_t: float = setting(4.0, "anchor-matching ratio threshold", type=float)
    label_smoothing: float = setting(0.0, "class label smoothing epsilon", type=float)

    def __post_init__(self):
        check_non_negative(self, "box", "obj", "cls", "cls_pw", "obj_pw")
        check_range(self, 0, 1, "label_smoothing", high_open=True)
        if self.anchor_t is None or not self.anchor_t > 1:
            raise UserError(f"--anchor-t {self.anchor_t}: must be above 1 (a ratio threshold)")


@dataclass(frozen=True)
class AugmentSettings(Settings):
    """The training images' augmentation (utils/datasets.py)."""

    hsv_h: float = setting(0.015, "hue jitter (fraction)", type=float)
    hsv_s: float = setting(0.7, "saturation jitter (fraction)", type=float)
    hsv_v: float = setting(0.4, "value jitter (fraction)", type=float)
    degrees: float = setting(0.0, "rotation (+- deg)", type=float)
    translate: float = setting(0.1, "translation (+- fraction)", type=float)
    scale: float = setting(0.5, "scale gain (+- fraction)", type=float)
    shear: float = setting(0.0, "shear (+- deg)", type=float)
    perspective: float = setting(0.0, "perspective (+- fraction)", type=float)
    flipud: float = setting(0.0, "vertical flip probability", type=float)
    fliplr: float = setting(0.5, "horizontal flip probability", type=float)
    mosaic: float = setting(1.0, "probability of a 4-image mosaic", type=float)

    def __post_init__(self):
        check_non_negative(self, "hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "shear", "perspective")
        check_range(self, 0, 1, "scale", "flipud", "fliplr", "mosaic")


HYP_SETTINGS = (OptimSettings, LossSettings, AugmentSettings)  # what the engine, the loss and the data read


def check_at_least(settings, low, *names):
    """A one-line error for a count below ``low``; None (not given: the script's own choice) passes."""
    for name in names:
        v = getattr(settings, name)
        if v is not None and not v >= low:
            raise UserError(f"--{name.replace('_', '-')} {v}: must be {low} or more")


@dataclass(frozen=True)
class ModelSettings(Settings):
    """The network and its input size (every script)."""

    cfg: str = setting(None, "Darknet .cfg file of the network")
    weights: str = setting("", "start from a checkpoint .pt or Darknet .weights (with --cfg)")
    img_size: int = setting(None, "train and test image size in pixels (multiple of 32)", type=int)

    def __post_init__(self):
        check_at_least(self, 1, "img_size")


@dataclass(frozen=True)
class DataSettings(Settings):
    """Which dataset, and how its batches are loaded (train.py, the technique scripts, test.py)."""

    data: str = setting(None, "dataset description file (.data)")
    batch_size: int = setting(None, "total batch size over all processes", type=int)
    workers: int = setting(2, "data loader worker processes", type=int)
    cache_images: bool = setting(False, "cache decoded images in RAM", action="store_true")

    def __post_init__(self):
        check_at_least(self, 1, "batch_size")
        check_at_least(self, 0, "workers")


@dataclass(frozen=True)
class TrainSettings(Settings):
    """The training loop around the optimiser (utils/engine.py Trainer): epochs, image sizes, EMA, layout, BN."""

    epochs: int = setting(None, "training epochs", type=int)
    multi_scale: bool = setting(False, "vary the image size +-50%% per batch", action="store_true")
    img_size_start: float = setting(0.0, "progressive resizing: train the first epoch at this size (pixels, or a "
                                    "fraction below 1 of --img-size), growing linearly to --img-size by the last; 0 "
                                    "disables", type=float)
    rect: bool = setting(False, "rectangular training batches (no mosaic)", action="store_true")
    no_ema: bool = setting(False, "evaluate and save the raw weights instead of their EMA", action="store_true")
    memory_format: str = setting("auto", "training memory format (auto: the faster one, timed on this machine at "
                                 "start-up and cached)", choices=("auto", "channels_last", "contiguous"))
    autoanchor: bool = setting(False, "fit the anchors to the training boxes (k-means) before training a fresh "
                               "network (utils/anchors.py)", action="store_true")
    precise_bn: int = setting(16, "before each evaluation, recompute BN statistics over this many training batches "
                              "(0: keep the running ones)", type=int)

    def __post_init__(self):
        check_at_least(self, 1, "epochs")
        check_non_negative(self, "img_size_start", "precise_bn")
        check_choice(self, "memory_format")


@dataclass(frozen=True)
class OutputSettings(Settings):
    """Where a run writes, whether it resumes, and which epochs it scores."""

    project: str = setting("runs/train", "runs are written to PROJECT/NAME")
    name: str = setting("exp", "run name; exp, exp2, ... when it exists")
    exist_ok: bool = setting(False, "reuse PROJECT/NAME instead of incrementing", action="store_true")
    resume: object = setting(False, "continue the most recent run, or the given run folder or last.pt, where it "
                             "stopped", nargs="?", const=True)
    notest: bool = setting(False, "evaluate only after the last epoch", action="store_true")
    eval_from: float = setting(None, "evaluate after each epoch from this one on (1-based, or a fraction below 1 of "
                               "--epochs); the last epoch always is", type=float)

    def __post_init__(self):
        check_at_least(self, 0, "eval_from")


@dataclass(frozen=True)
class DeviceSettings(Settings):
    """Where and in which precision a run computes, and its seed."""

    device: str = setting("", "cpu, 0, cuda:1 ... (default: first GPU, else CPU)")
    amp: str = setting("auto", "autocast precision (auto: fp16 + gradient scaler on CUDA, bf16 on a CPU with native "
                       "bf16 (AMX or AVX512-BF16), else fp32; off: fp32)", choices=PRECISION_CHOICES)
    sync_bn: bool = setting(False, "SyncBatchNorm under DistributedDataParallel", action="store_true")
    seed: int = setting(0, "seed of the initial weights, the augmentation and the data order", type=int)
    deterministic: bool = setting(False, "deterministic kernels (exact resume; slower)", action="store_true")

    def __post_init__(self):
        check_choice(self, "amp")


@dataclass(frozen=True)
class RunSettings:
    """Everything a training run reads besides its technique: one typed object built once from the arguments."""

    model: ModelSettings
    data: DataSettings
    train: TrainSettings
    output: OutputSettings
    device: DeviceSettings
    optim: OptimSettings

    @classmethod
    def from_args(cls, args):
        return cls(*(f.type.from_args(args) for f in fields(cls)))


@dataclass(frozen=True)
class TeacherSettings(Settings):
    """Which teacher, and which student/teacher layers are paired (both distillation scripts)."""

    teacher_cfg: str = setting(None, "teacher network cfg (default: the one in its checkpoint)")
    teacher_weights: str = setting(None, "teacher checkpoint .pt, or Darknet .weights with --teacher-cfg (required)")
    student_features: tuple = setting(None, "student layer indexes, one per pair (default: chosen per script)",
                                      type=int, nargs="+")
    teacher_features: tuple = setting(None, "teacher layer indexes, one per pair", type=int, nargs="+")
    adapt_kernel: int = setting(1, "kernel of the adaptation convs where a pair's channels differ", type=int,
                                choices=(1, 3))


@dataclass(frozen=True)
class KDSettings(TeacherSettings):
    """Chen et al. 2017 classical distillation (my_kd.py, utils/distill.py). A weight of 0 disables its term."""

    hint_loss: str = setting("l2", "distance of the hint loss (l1: the original project's)", choices=("l2", "l1"))
    hint_weight: float = setting(0.1, "lambda of the hint loss", type=float)
    soft_weight: float = setting(1.0, "weight of the soft-target loss, carried as (1 - mu) * soft_weight",
                                 type=float)
    bound_weight: float = setting(0.5, "nu of the teacher-bounded regression, relative to the box gain", type=float)
    kd_temperature: float = setting(1.0, "temperature T of the soft targets, sigma(z / T)", type=float)
    kd_mu: float = setting(0.7, "hard-loss share mu in mu * hard + (1 - mu) * soft", type=float)
    kd_mu_scope: str = setting("detection", "the hard terms mu scales: the whole detection loss, objectness + classes "
                               "(Chen et al.'s classification loss) or the class term alone (the original project)",
                               choices=("detection", "classification", "class"))
    kd_margin: float = setting(1e-5, "margin m of the teacher-bounded regression", type=float)
    kd_object_weight: float = setting(4.0, "weight, in the soft loss, of cells the teacher sees as objects "
                                      "(background cells weigh 1)", type=float)
    kd_class_cells: str = setting("objects", "cells of the soft class term: objects (weighted by the teacher's "
                                  "objectness) or all (weighted like objectness)", choices=("all", "objects"))

    def __post_init__(self):
        if not 0.0 <= self.kd_mu <= 1.0:
            raise UserError(f"--kd-mu {self.kd_mu}: the hard-loss share must lie in [0, 1]")
        if not self.kd_temperature > 0:
            raise UserError(f"--kd-temperature {self.kd_temperature}: must be positive")
        check_non_negative(self, "hint_weight", "soft_weight", "bound_weight", "kd_margin", "kd_object_weight")
        check_choice(self, "hint_loss", "kd_mu_scope", "kd_class_cells", "adapt_kernel")


@dataclass(frozen=True)
class GANSettings(TeacherSettings):
    """Wang et al. 2020 GAN distillation (my_kd_gan.py, utils/gan.py): discriminators, their SGD, the two stages."""

    d_kernel_size: tuple = setting((1,), "discriminator conv kernel, one value or one per pair", type=int, nargs="+")
    d_arch: str = setting("compact", "discriminator: compact (pool 4, 128 hidden, leaky 0.2: 456 k parameters per "
                          "pair at 75 channels) or original (the original project's: pool 7, 1024 and 128 hidden, "
                          "leaky 0.1: 3.67 M)", choices=("compact", "original"))
    d_optimizer: str = setting("constant", "discriminator SGD: constant learning rate with plain momentum, or the "
                               "original's nesterov with its inverse-exp factor 1 - 10^(-4 (1 - e/epochs))",
                               choices=("constant", "original"))
    d_lr: float = setting(0.01, "discriminator learning rate", type=float)
    d_momentum: float = setting(0.937, "discriminator SGD momentum", type=float)
    soft_labels: bool = setting(True, "real labels U(0.7, 1), fake U(0, 0.3) instead of 1 / 0", type=yes_no)
    label_flip: float = setting(0.05, "probability of flipping a discriminator label", type=float)
    adv_weight: float = setting(1.0, "weight of the adversarial term in the student loss (0.01 measured better on "
                                "shapes: BENCHMARKS.md)", type=float)
    stage1_det_scale: float = setting(0.05, "scale of the detection loss during the adversarial stage", type=float)
    second_stage: float = setting(0.6667, "epoch at which stage 2 (detection loss only) starts; a value below 1 is a "
                                  "fraction of --epochs", type=float)
    hint_loss: str = setting("l2", "distance of the optional hint on the same pairs", choices=("l2", "l1"))
    hint_weight: float = setting(0.0, "weight of the optional hint loss during stage 1 (0: none)", type=float)

    def __post_init__(self):
        check_non_negative(self, "d_lr", "adv_weight", "stage1_det_scale", "hint_weight")
        if self.d_momentum is None or not 0.0 <= self.d_momentum < 1.0:
            raise UserError(f"--d-momentum {self.d_momentum}: must lie in [0, 1)")
        if self.label_flip is None or not 0.0 <= self.label_flip < 0.5:
            raise UserError(f"--label-flip {self.label_flip}: a probability in [0, 0.5)")
        if self.second_stage is None or self.second_stage <= 0:
            raise UserError(f"--second-stage {self.second_stage}: the adversarial stage would never run (give an "
                            f"epoch >= 1, or a fraction of the epochs in (0, 1)); train.py trains without a teacher")
        check_choice(self, "hint_loss", "d_arch", "d_optimizer", "adapt_kernel")


SCOPES = {"global": "global", "local": "local", "imp_global": "global", "imp_local": "local"}


def scope_type(value):
    """``global``/``local``; the original's ``IMP_GLOBAL``/``IMP_LOCAL`` spellings are accepted."""
    try:
        return SCOPES[str(value).lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"scope must be global or local, not {value!r}") from None


@dataclass(frozen=True)
class PruneSettings(Settings):
    """What both pruning techniques (prune.py) share: which weights are pruned, where the ticket rewinds to."""

    prune_output: bool = setting(False, "also prune the output convs before [yolo] layers", action="store_true")
    keep_first_dense: bool = setting(False, "never prune the first conv", action="store_true")
    rewind_iter: int = setting(None, "rewind to the weights after this many optimiser steps instead of an epoch",
                               type=int)
    granularity: str = setting("weight", "weight: single weights; filter: whole filters of the plain convs (kernel, "
                               "BN scale and shift), which export.py --fold removes for a smaller, faster network "
                               "(CS: one gate per filter)", choices=("weight", "filter"))
    shortcut_filters: str = setting("together", "with --granularity filter: the convs a [shortcut] sums lose the same "
                                    "channels (together: LTH ranks a channel by its filters' mean score, CS gives it "
                                    "one gate), or keep every filter (exclude)", choices=("together", "exclude"))


@dataclass(frozen=True)
class LTHSettings(PruneSettings):
    """Lottery Ticket with late rewinding (Frankle et al. 2019; prune.py --lth, utils/pruning.py)."""

    rounds: int = setting(12, "prune -> rewind -> retrain rounds after the dense round 0 (12 at 0.2 leave 6.87%%, the "
                          "original's iterations 13)", type=int)
    prune_rate: float = setting(0.2, "fraction of the surviving prunable weights removed per round", type=float)
    scope: str = setting("local", "local: the same fraction in every layer; global: one magnitude threshold over all "
                         "layers", type=scope_type)
    rewind_epoch: float = setting(0.03, "survivors are rewound to the dense run's weights after this many epochs (0: "
                                  "the initial weights; below 1: a fraction of --epochs, 0.03 = 9 of 300)", type=float,
                                  aliases=("--reseting",))
    retrain_schedule: str = setting("continue", "a pruned round trains from the rewind epoch k to --epochs with the "
                                    "schedule continued from k (continue: Frankle et al. 2019, open_lth), or all "
                                    "--epochs with warm-up and cosine restarted (restart: the original project)",
                                    choices=("continue", "restart"))
    rewind: str = setting("weights", "what a pruned round restarts from: the survivors' weights at the rewind epoch "
                          "(weights: Frankle et al. 2019) or their final trained values, with the same learning-rate "
                          "schedule (lr: learning-rate rewinding, Renda et al. 2020)", choices=("weights", "lr"))
    rank_weights: str = setting("ema", "rank by the magnitudes of the previous round's final weights: their EMA (the "
                                "weights evaluated and saved) or the raw trained weights", choices=("ema", "raw"))
    filter_criterion: str = setting("l1", "with --granularity filter: rank filters by the L1 norm of their kernel, "
                                    "or by their BN |gamma| (bn: network slimming, Liu et al. 2017)",
                                    choices=("l1", "bn"))

    def __post_init__(self):
        if self.rounds is None or self.rounds < 0:
            raise UserError(f"--rounds must be 0 or more, not {self.rounds}")
        if self.prune_rate is None or not 0 < float(self.prune_rate) < 1:
            raise UserError(f"--prune-rate must be in (0, 1), not {self.prune_rate}")
        check_choice(self, "retrain_schedule", "rewind", "rank_weights", "granularity", "filter_criterion",
                     "shortcut_filters")


@dataclass(frozen=True)
class CSSettings(PruneSettings):
    """Continuous Sparsification (Savarese et al. 2020; prune.py --cs, utils/cs.py): the mask logits and β."""

    rounds: int = setting(3, "search rounds (the original's iterations); the ticket is trained after them", type=int)
    rewind_epoch: float = setting(0.1, "the ticket rewinds to the weights after this many epochs of the first search "
                                  "round (below 1: a fraction of --epochs; 0.1: the original's 10 of 100)", type=float,
                                  aliases=("--reseting",))
    ticket_epochs: int = setting(None, "epochs of the ticket's retraining (default: --epochs)", type=int)
    mask_init: float = setting(-0.1, "initial mask logit s0; every gate sigma(beta s)/sigma(s0) starts at 1",
                               type=float)
    cs_lambda: float = setting(1e-8, "weight of the L1 penalty on the soft mask, per image", type=float)
    final_temperature: float = setting(200.0, "temperature beta reached at the last epoch of a search round",
                                       type=float)
    mask_lr: float = setting(0.1, "learning rate of the mask logits' SGD (scaled by the lr schedule)", type=float)
    mask_momentum: float = setting(0.9, "momentum of the mask logits' SGD", type=float)
    mask_nesterov: bool = setting(True, "nesterov momentum for the mask logits' SGD",
                                  action=argparse.BooleanOptionalAction)
    cs_reset: str = setting("paper", "logits between search rounds: s <- min(beta_T s, s0) (paper: Savarese et al., "
                            "Algorithm 1), or beta <- 1 first, so s <- min(s, s0) (original: the original project, "
                            "where removed weights can return)", choices=("paper", "original"))
    cs_penalty: str = setting("sigmoid", "the L1 term lambda * sum sigma(beta s) (sigmoid: the paper's eq. 6) or "
                              "lambda * sum of the gates sigma(beta s)/sigma(s0) (gate: the original project; "
                              "1/sigma(s0) = 2.1x at s0 = -0.1)", choices=("sigmoid", "gate"))

    def __post_init__(self):
        if self.rounds is None or self.rounds < 1:
            raise UserError(f"--rounds (CS search rounds) must be 1 or more, not {self.rounds}")
        if self.ticket_epochs is not None and self.ticket_epochs < 1:
            raise UserError(f"--ticket-epochs must be 1 or more, not {self.ticket_epochs}")
        if not math.isfinite(self.mask_init):
            raise UserError(f"--mask-init must be finite, not {self.mask_init}")
        if self.cs_lambda < 0:
            raise UserError(f"--cs-lambda must be 0 or more, not {self.cs_lambda}")
        if not self.final_temperature >= 1:
            raise UserError(f"--final-temperature must be at least 1, not {self.final_temperature}")
        if not self.mask_lr > 0 or not 0 <= self.mask_momentum < 1:
            raise UserError(f"--mask-lr must be > 0 and --mask-momentum in [0, 1) "
                            f"(got {self.mask_lr}, {self.mask_momentum})")
        check_choice(self, "cs_reset", "cs_penalty", "granularity", "shortcut_filters")


def flag_kwargs(f):
    """``(flag names, argparse keywords)`` of field ``f``'s flag, its default the field's."""
    kwargs = dict(f.metadata)
    names = ["--" + f.name.replace("_", "-"), *kwargs.pop("aliases", ())]
    kwargs["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
    return names, kwargs


__all__ = ["setting", "yes_no", "scope_type", "Settings", "OptimSettings", "LossSettings", "AugmentSettings",
           "HYP_SETTINGS", "LR_SCHEDULES", "TeacherSettings", "KDSettings", "GANSettings", "PruneSettings",
           "LTHSettings", "CSSettings", "flag_kwargs", "ModelSettings", "DataSettings", "TrainSettings",
           "OutputSettings", "DeviceSettings", "RunSettings"]

"""The one argparse module: a parser per entry script, built from shared groups, plus ``--params`` YAML files.

Precedence, lowest to highest: the defaults written below < ``params/default.yaml`` < the ``--params`` YAML
(and the files it inherits from, via ``inherit_from:``) < flags typed on the command line. The original project's
argparse defaults silently overrode its YAML files; here a YAML value loses only to a flag the user typed.

Every ``--dashed-flag`` also answers to ``--dashed_flag`` (the original's underscore spellings).
"""
import argparse
from dataclasses import asdict, fields
from pathlib import Path

import yaml

from utils.errors import UserError
from utils.general import ROOT, project_path
from utils.settings import (HYP_SETTINGS, PRECISION_CHOICES, AugmentSettings, CSSettings, DataSettings,
                            DeviceSettings, GANSettings, KDSettings, LossSettings, LTHSettings, ModelSettings,
                            OptimSettings, OutputSettings, TrainSettings, flag_kwargs)

DEFAULT_PARAMS = ROOT / "params" / "default.yaml"

# Keys of the original project's params files, read as ours.
YAML_ALIASES = {"pruning_rate": "prune_rate", "iterations": "rounds", "reseting": "rewind_epoch",
                "prune_kind": "scope"}

# What the loss, the augmentation and the warm-up read as one dict (``hyp``), in this order; their fallbacks are
# utils/settings.py's OptimSettings, LossSettings and AugmentSettings.
HYP_KEYS = ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr",
            *(f.name for f in fields(LossSettings)), *(f.name for f in fields(AugmentSettings)))


def flag(group, name, *more, **kwargs):
    """``group.add_argument`` that also registers the underscore spelling of a dashed flag."""
    names = [name, *more]
    for n in list(names):
        alt = "--" + n[2:].replace("-", "_")
        if n.startswith("--") and alt not in names:
            names.append(alt)
    return group.add_argument(*names, **kwargs)


# ----------------------------------------------------------------------------------------------- groups
def add_model_args(p, cfg_required=False):
    g = p.add_argument_group("model (utils/settings.py ModelSettings)")
    add_settings_flags(g, ModelSettings)
    dest_actions(p)["cfg"].required = cfg_required
    return g


def add_data_args(p):
    g = p.add_argument_group("data (utils/settings.py DataSettings)")
    add_settings_flags(g, DataSettings)
    return g


def add_optim_args(p):
    g = p.add_argument_group("training (utils/settings.py TrainSettings, OptimSettings and LossSettings)")
    add_settings_flags(g, TrainSettings)
    add_settings_flags(g, OptimSettings)
    add_settings_flags(g, LossSettings)
    return g


def add_aug_args(p):
    g = p.add_argument_group("augmentation (utils/settings.py AugmentSettings)")
    add_settings_flags(g, AugmentSettings)
    return g


def add_output_args(p, project):
    g = p.add_argument_group("output (utils/settings.py OutputSettings)")
    add_settings_flags(g, OutputSettings)
    p.set_defaults(project=project)  # each script writes under its own runs/<script> folder
    return g


def add_device_args(p):
    g = p.add_argument_group("device (utils/settings.py DeviceSettings)")
    add_settings_flags(g, DeviceSettings)
    flag(g, "--no-amp", dest="amp", action="store_const", const="off", help="the same as --amp off")
    return g


def add_inference_precision_args(g):
    """test.py's and detect.py's precision: fp32 unless asked, and never an emulated bf16 unless forced."""
    flag(g, "--amp", choices=PRECISION_CHOICES, default="off",
         help="inference precision (off: fp32; auto: fp16 on CUDA, bf16 on a CPU with native bf16, else fp32); "
              "autocast runs channels_last")
    flag(g, "--half", dest="amp", action="store_const", const="auto", help="the same as --amp auto")


def base_parser(description, params):
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                allow_abbrev=False)
    flag(p, "--params", type=str, default=str(params) if params else None,
         help="YAML of defaults (may name inherit_from:); flags typed here override it")
    return p


def train_parser(description="Train a Darknet-cfg YOLO detector.", params=DEFAULT_PARAMS, project="runs/train"):
    """The parser of train.py; the technique scripts extend it with their own groups."""
    p = base_parser(description, params)
    add_model_args(p)
    add_data_args(p)
    add_optim_args(p)
    add_aug_args(p)
    add_output_args(p, project)
    add_device_args(p)
    return show_yaml_defaults(p, params)


def dest_actions(parser):
    """``{dest: action}``, the first action of each dest (``--amp``, not its alias ``--no-amp``)."""
    actions = {}
    for a in parser._actions:
        actions.setdefault(a.dest, a)
    return actions


def show_yaml_defaults(parser, params):
    """Let ``--help`` show the values the YAML files give (``parse_args`` applies them the same way)."""
    values = load_params(DEFAULT_PARAMS)
    if params and Path(params).resolve() != DEFAULT_PARAMS.resolve() and Path(params).is_file():
        values.update(load_params(params))
    actions = dest_actions(parser)
    for key, (value, _) in values.items():
        key = YAML_ALIASES.get(key, key)
        if key in actions and key != "params":
            actions[key].default = value
    return parser


# ----------------------------------------------------------------------------------------------- YAML
def load_params(path, _seen=None):
    """Read a params YAML, following ``inherit_from:`` (relative to the file); the child's keys win."""
    path = project_path(path)
    if not path.is_file():
        raise UserError(f"{path}: params file not found")
    _seen = _seen or []
    if path.resolve() in _seen:
        raise UserError(f"{path}: inherit_from makes a cycle")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise UserError(f"{path}:{'' if line is None else line + 1}: invalid YAML") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of key: value")
    parent = values.pop("inherit_from", None)
    merged = load_params(path.parent / parent, _seen + [path.resolve()]) if parent else {}
    merged.update({k: (v, path) for k, v in values.items()})
    return merged


def parse_args(parser, argv=None):
    """Parse ``argv`` with precedence defaults < params/default.yaml < --params YAML < typed flags."""
    args = parser.parse_args(argv)
    typed = typed_dests(parser, argv)
    actions = dest_actions(parser)
    layers = load_params(DEFAULT_PARAMS)
    if args.params and Path(args.params).resolve() != DEFAULT_PARAMS.resolve():
        layers.update(load_params(args.params))
    for key, (value, source) in layers.items():
        key = YAML_ALIASES.get(key, key)
        if key not in actions:
            raise UserError(f"{source}: unknown key '{key}' (not a flag of this script)")
        if key not in typed:
            setattr(args, key, yaml_value(actions[key], value, source))
    if str(getattr(args, "weights", "") or "").endswith(".pt") and "cfg" not in typed:
        args.cfg = None  # a checkpoint carries its own cfg; the YAML's cfg is for runs from scratch
    args._typed = sorted(typed)  # for --resume (resume_args); vars_clean leaves it out of args.yaml
    return args


RESUME_FLAGS = ("device", "workers")  # what a resumed run takes from the command line: where it runs, not what


def resume_args(saved, current, typed, log=print):
    """The arguments of a run being resumed: ``saved`` (its args.yaml / checkpoint), with the ``RESUME_FLAGS``
    typed on this command line (``current``, ``typed``: their dests). Any other typed flag whose value differs from
    the saved one is ignored, and a note names it: a resumed run continues as it was configured (exact resume)."""
    ignored = []
    for key in sorted(set(typed) - {"resume", "project", "params"}):
        value, before = getattr(current, key, None), getattr(saved, key, None)
        if key in RESUME_FLAGS:
            setattr(saved, key, value)
        elif value != before:
            ignored.append(f"--{key.replace('_', '-')} {value} (the run has {before})")
    if ignored:
        log(f"note: --resume continues the run as it was configured; ignored: {', '.join(ignored)}")
    return saved


ARGS_VERSION = 2  # of the saved arguments (args.yaml, a checkpoint's "args"); MIGRATIONS[v] turns version v into v + 1


def _to_v1(saved):
    """Runs saved before arguments had a version: ``no_amp`` became ``--amp off``, and their default (bf16 on a
    CPU, fp16 on CUDA) is ``--amp auto``; LTH runs from before ``--retrain-schedule`` restarted the schedule in every
    round and ranked by the EMA weights; KD runs from before ``--kd-class-cells`` used every cell; runs from before
    progressive resizing, ``--lr-schedule``, ``--memory-format``, ``--eval-from``, ``--autoanchor`` and
    ``--precise-bn`` trained at one size with the cosine, chose the layout automatically, scored every epoch, kept
    the cfg's anchors and the running BN statistics."""
    if not hasattr(saved, "amp"):
        saved.amp = "off" if vars(saved).pop("no_amp", False) else "auto"
    if getattr(saved, "lth", False) and not hasattr(saved, "retrain_schedule"):
        saved.retrain_schedule, saved.rank_weights = "restart", "ema"
    if hasattr(saved, "kd_mu") and not hasattr(saved, "kd_class_cells"):
        saved.kd_class_cells = "all"
    for key, value in (("img_size_start", 0), ("lr_schedule", "cosine"), ("memory_format", "auto"), ("eval_from", 0),
                       ("autoanchor", False), ("precise_bn", 0)):
        if not hasattr(saved, key):
            setattr(saved, key, value)


def _to_v2(saved):
    """LTH and CS runs from before ``--shortcut-filters`` left the filters of the convs a [shortcut] sums unpruned."""
    if (getattr(saved, "lth", False) or getattr(saved, "cs", False)) and not hasattr(saved, "shortcut_filters"):
        saved.shortcut_filters = "exclude"


MIGRATIONS = (_to_v1, _to_v2)


def upgrade_saved_args(saved, source="saved arguments"):
    """A run's saved arguments (``argparse.Namespace``) in today's terms, so that older run folders resume: the
    migrations from the saved ``args_version`` (none: 0) to ``ARGS_VERSION``, in order."""
    version = vars(saved).pop("args_version", 0)
    if not isinstance(version, int) or not 0 <= version <= ARGS_VERSION:
        raise UserError(f"{source}: args_version {version!r} is not one this toolkit reads (0 to {ARGS_VERSION}): "
                        f"written by a newer version?")
    for migrate in MIGRATIONS[version:]:
        migrate(saved)
    return saved


def yaml_value(action, value, source):
    """A YAML value checked like the flag it stands for: its type, its number of values and its choices."""
    what = f"{source}: {action.dest}"
    if value is None:
        return value
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise UserError(f"{what}: expected true or false, not {value!r}")
        return value
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int) and action.nargs > 1
    items = [yaml_item(action, v, what) for v in (value if many and isinstance(value, list) else [value])]
    for v in items:
        if action.choices is not None and v not in action.choices:
            raise UserError(f"{what}: {v!r} is not one of {', '.join(map(str, action.choices))}")
    return items if many else items[0]


def yaml_item(action, value, what):
    """One YAML value as the flag's type: strings through it as argparse would; numbers checked for int and float
    flags (YAML ``true`` is no number, 2.5 no integer); a list or mapping where one value belongs is refused."""
    if isinstance(value, (list, dict)):
        raise UserError(f"{what}: expected one value, not {value!r}")
    try:
        if isinstance(value, str) and action.type is not None:
            return action.type(value)
        if action.type in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"expected a number, not {value!r}")
            if action.type is int and value != int(value):
                raise ValueError(f"expected an integer, not {value!r}")
            return int(value) if action.type is int else value  # an int stays one for a float flag (args.yaml)
    except (argparse.ArgumentTypeError, ValueError) as e:
        raise UserError(f"{what}: {e}") from None
    return value


def typed_dests(parser, argv):
    """The dests of the options present in ``argv`` (the command line), whatever their spelling."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    words = {w.split("=", 1)[0] for w in argv if w.startswith("-")}
    return {a.dest for a in parser._actions if any(s in words for s in a.option_strings)}


def hyp_from_args(args):
    """The hyperparameter dict the loss, the data augmentation and the warm-up read, checked by their settings."""
    values = {}
    for cls in HYP_SETTINGS:
        values.update(asdict(cls.from_args(args)))
    return {k: values[k] for k in HYP_KEYS}


def save_args(args, path):
    """Write the resolved configuration as ``args.yaml``: a run is fully described by it."""
    Path(path).write_text(yaml.safe_dump(vars_clean(args), sort_keys=False))


def vars_clean(args):
    """``vars(args)`` with paths as strings, safe for YAML and ``torch.load(weights_only=True)``."""
    out = {"args_version": ARGS_VERSION}
    for k, v in vars(args).items():
        if not k.startswith("_"):
            out[k] = str(v) if isinstance(v, Path) else v
    return out


# ----------------------------------------------------------------------------------------------- techniques
def add_prune_args(p):
    g = p.add_argument_group("pruning (utils/settings.py LTHSettings and CSSettings)")
    method = g.add_mutually_exclusive_group()
    method.add_argument("--lth", action="store_true", help="Lottery Ticket: iterative magnitude pruning + rewinding")
    method.add_argument("--cs", action="store_true", help="Continuous Sparsification")
    add_settings_flags(g, LTHSettings, "LTH: ", CSSettings)
    add_settings_flags(g, CSSettings, "CS: ", LTHSettings)
    return g


def prune_parser():
    """The parser of prune.py: training flags plus the pruning group."""
    p = train_parser("Prune a YOLO detector: Lottery Ticket (--lth) or Continuous Sparsification (--cs).",
                     params=None, project="runs/prune")
    add_prune_args(p)
    return show_yaml_defaults(p, None)


def add_settings_flags(group, cls, prefix="", other=None):
    """One flag per field of the settings dataclass ``cls`` (utils/settings.py), its default the field's. With
    ``other`` (the second technique of a script), a field both define is added once, without a default of its own:
    each technique's ``from_args`` then falls back to its own default."""
    theirs = {f.name: f for f in fields(other)} if other else {}
    taken = {a.dest for a in group._group_actions}
    for f in fields(cls):
        if f.name in taken:
            continue
        names, kwargs = flag_kwargs(f)
        help_text = prefix + kwargs["help"]
        if f.name in theirs and theirs[f.name].default != f.default:
            kwargs["default"] = None
            help_text = f"{kwargs['help']} (default {f.default} for {cls.__name__[:-8]}, {theirs[f.name].default} " \
                        f"for {other.__name__[:-8]})"
        elif f.name in theirs:
            help_text = kwargs["help"]
        flag(group, *names, **{**kwargs, "help": help_text})


def kd_parser():
    """The parser of my_kd.py: training flags plus the distillation group."""
    p = train_parser("Distil a teacher into a student (Chen et al. 2017).", params=ROOT / "params" / "KD.yaml",
                     project="runs/kd")
    add_settings_flags(p.add_argument_group("distillation (utils/settings.py KDSettings)"), KDSettings)
    return show_yaml_defaults(p, ROOT / "params" / "KD.yaml")


def gan_parser():
    """The parser of my_kd_gan.py: training and distillation flags plus the GAN group."""
    p = train_parser("GAN-based distillation of a teacher into a student (Wang et al. 2020).",
                     params=ROOT / "params" / "KD_GAN.yaml", project="runs/kd_gan")
    add_settings_flags(p.add_argument_group("GAN distillation (utils/settings.py GANSettings)"), GANSettings)
    return show_yaml_defaults(p, ROOT / "params" / "KD_GAN.yaml")

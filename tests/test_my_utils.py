"""The shared command line: YAML defaults, inherit_from, override order, underscore aliases."""
import re

import pytest
import yaml

from utils.errors import UserError
from utils.my_utils import hyp_from_args, load_params, parse_args, train_parser


def write(path, text):
    path.write_text(text)
    return path


def test_default_yaml_fills_values_the_parser_leaves_open():
    args = parse_args(train_parser(), [])
    assert args.lr0 == 0.01 and args.cfg == "cfg/yolov3-tiny.cfg" and args.data == "data/shapes.data"
    hyp = hyp_from_args(args)
    assert hyp["mosaic"] == 1.0 and hyp["anchor_t"] == 4.0 and None not in hyp.values()


def test_yaml_beats_parser_default_and_loses_to_typed_flag(tmp_path):
    write(tmp_path / "base.yaml", "lr0: 0.02\nmomentum: 0.9\nworkers: 5\n")
    child = write(tmp_path / "child.yaml", "inherit_from: base.yaml\nlr0: 0.03\n")
    args = parse_args(train_parser(), ["--params", str(child)])
    assert args.lr0 == 0.03          # child wins over its parent
    assert args.momentum == 0.9      # inherited from the parent
    assert args.workers == 5         # YAML wins over the parser's own default (2)
    assert args.weight_decay == 0.0005  # untouched keys keep params/default.yaml
    args = parse_args(train_parser(), ["--params", str(child), "--lr0", "0.5", "--workers=1"])
    assert args.lr0 == 0.5 and args.workers == 1


def test_underscore_aliases_are_the_same_flag():
    a = parse_args(train_parser(), ["--img_size", "320", "--batch_size", "8"])
    b = parse_args(train_parser(), ["--img-size", "320", "--batch-size", "8"])
    assert a.img_size == b.img_size == 320 and a.batch_size == b.batch_size == 8


def test_typed_flag_equal_to_default_still_beats_yaml(tmp_path):
    p = write(tmp_path / "p.yaml", "workers: 7\n")
    args = parse_args(train_parser(), ["--params", str(p), "--workers", "2"])
    assert args.workers == 2


def test_unknown_yaml_key_names_file_and_key(tmp_path):
    p = write(tmp_path / "bad.yaml", "lr0: 0.1\nlearning_rate: 3\n")
    with pytest.raises(UserError, match=r"bad\.yaml: unknown key 'learning_rate'"):
        parse_args(train_parser(), ["--params", str(p)])


def test_inherit_cycle_and_missing_file(tmp_path):
    write(tmp_path / "a.yaml", "inherit_from: b.yaml\n")
    write(tmp_path / "b.yaml", "inherit_from: a.yaml\n")
    with pytest.raises(UserError, match="cycle"):
        load_params(tmp_path / "a.yaml")
    with pytest.raises(UserError, match="nope.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_yaml_values_are_checked_like_flags_and_original_keys_accepted(tmp_path):
    from utils.my_utils import prune_parser

    p = write(tmp_path / "imp.yaml", "prune_kind: IMP_GLOBAL\npruning_rate: 0.3\niterations: 4\nreseting: 2\n")
    args = parse_args(prune_parser(), ["--params", str(p)])
    assert (args.scope, args.prune_rate, args.rounds, args.rewind_epoch) == ("global", 0.3, 4, 2)
    bad = write(tmp_path / "bad.yaml", "optimizer: rmsprop\n")
    with pytest.raises(UserError, match=r"bad\.yaml: optimizer: 'rmsprop' is not one of sgd, adam"):
        parse_args(train_parser(), ["--params", str(bad)])


def test_checkpoint_weights_bring_their_own_cfg():
    assert parse_args(train_parser(), ["--weights", "a.pt"]).cfg is None
    assert parse_args(train_parser(), ["--weights", "a.pt", "--cfg", "cfg/yolov3.cfg"]).cfg == "cfg/yolov3.cfg"
    assert parse_args(train_parser(), ["--weights", "a.weights"]).cfg == "cfg/yolov3-tiny.cfg"


def test_compact_recipe_overrides_only_the_optimiser_the_clip_and_the_anchors():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    default = parse_args(train_parser(), [])
    compact = parse_args(train_parser(), ["--params", str(root / "params" / "compact.yaml")])
    assert (compact.optimizer, compact.lr0, compact.grad_clip, compact.cls) == ("adam", 0.006, 0.0, 2.0)
    assert default.cls == 2.0  # default.yaml's since the CPU recipe of issue 25
    assert (default.optimizer, default.grad_clip, default.precise_bn) == ("sgd", 10.0, 16)
    assert (compact.autoanchor, default.autoanchor) == (True, False)
    changed = ("optimizer", "lr0", "grad_clip", "autoanchor", "params", "_typed")
    same = {k for k in vars(default) if k not in changed}
    assert {k: getattr(compact, k) for k in same} == {k: getattr(default, k) for k in same}


def test_resume_takes_device_and_workers_and_names_other_typed_flags():
    import argparse

    from utils.my_utils import resume_args

    saved = argparse.Namespace(epochs=30, lr0=0.01, device="", workers=8, resume="runs/x/weights/last.pt")
    current = parse_args(train_parser(), ["--resume", "--epochs", "50", "--lr0", "0.01", "--device", "cpu",
                                          "--workers", "0"])
    assert current._typed == ["device", "epochs", "lr0", "resume", "workers"]
    notes = []
    args = resume_args(saved, current, current._typed, log=notes.append)
    assert (args.epochs, args.lr0, args.device, args.workers) == (30, 0.01, "cpu", 0)
    assert notes == ["note: --resume continues the run as it was configured; ignored: --epochs 50 (the run has 30)"]
    resume_args(saved, current, ["lr0"], log=notes.append)  # typed but equal to the run's value: nothing to say
    assert len(notes) == 1


def test_typed_flags_stay_out_of_args_yaml(tmp_path):
    import yaml

    from utils.my_utils import save_args

    args = parse_args(train_parser(), ["--epochs", "3"])
    save_args(args, tmp_path / "args.yaml")
    saved = yaml.safe_load((tmp_path / "args.yaml").read_text())
    assert saved["epochs"] == 3 and not any(k.startswith("_") for k in saved)


def test_saved_arguments_carry_a_version_and_old_ones_are_migrated_once(tmp_path):
    import argparse

    from utils.my_utils import ARGS_VERSION, save_args, upgrade_saved_args, vars_clean

    args = parse_args(train_parser(), ["--img-size-start", "0.5", "--eval-from", "0.4"])
    assert vars_clean(args)["args_version"] == ARGS_VERSION
    save_args(args, tmp_path / "args.yaml")
    saved = argparse.Namespace(**yaml.safe_load((tmp_path / "args.yaml").read_text()))
    current = upgrade_saved_args(saved)
    assert (current.img_size_start, current.eval_from, current.amp) == (0.5, 0.4, args.amp)  # today's: untouched
    assert not hasattr(current, "args_version")  # re-added by the next save, at today's version
    # a run saved before versions: the values its code behaved as, for the keys it did not have
    old = upgrade_saved_args(argparse.Namespace(epochs=3, no_amp=True, lth=True))
    assert (old.amp, old.img_size_start, old.lr_schedule, old.memory_format, old.eval_from, old.autoanchor,
            old.precise_bn, old.retrain_schedule, old.rank_weights) == ("off", 0, "cosine", "auto", 0, False, 0,
                                                                        "restart", "ema")
    assert not hasattr(old, "no_amp") and not hasattr(old, "kd_class_cells")  # not a KD run
    assert old.shortcut_filters == "exclude"  # LTH before --shortcut-filters: shortcut-summed convs kept whole
    for technique in ("lth", "cs"):
        v1 = upgrade_saved_args(argparse.Namespace(args_version=1, granularity="filter", **{technique: True}))
        assert v1.shortcut_filters == "exclude"
    assert not hasattr(upgrade_saved_args(argparse.Namespace(args_version=1)), "shortcut_filters")  # train.py
    with pytest.raises(UserError, match=rf"runs/x/args.yaml: args_version {ARGS_VERSION + 1} is not one"):
        upgrade_saved_args(argparse.Namespace(args_version=ARGS_VERSION + 1), "runs/x/args.yaml")


@pytest.mark.parametrize("text, message", [
    ("lr0: [1, 2]\n", "lr0: expected one value, not [1, 2]"),
    ("epochs: 2.5\n", "epochs: expected an integer, not 2.5"),
    ("lr0: true\n", "lr0: expected a number, not True"),
    ("notest: 1\n", "notest: expected true or false, not 1"),
    ("optimizer: rmsprop\n", "optimizer: 'rmsprop' is not one of"),
])
def test_a_params_value_of_the_wrong_kind_is_a_one_line_error_naming_the_file(tmp_path, text, message):
    from utils.errors import UserError
    from utils.my_utils import parse_args, train_parser

    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=f"^{re.escape(f'{path}: {message}')}"):
        parse_args(train_parser(), ["--params", str(path)])
    path.write_text("epochs: 3\nlr0: 1\nnotest: true\n")  # YAML's int 1 for a float flag is fine
    a = parse_args(train_parser(), ["--params", str(path)])
    assert (a.epochs, a.lr0, a.notest) == (3, 1, True)

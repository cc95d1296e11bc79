"""utils/checkpoint.py: how best.pt is written (a pruned network's zeros left out) and how a plug-in's training state
is read back from a last.pt."""
import pytest
import torch

from models import Darknet, make_checkpoint, prunable_parameters
from utils.checkpoint import load_checkpoint, plugin_state, save_checkpoint, save_compact
from utils.errors import UserError
from utils.pruning import Masks, magnitude_prune


def pruned_checkpoint():
    torch.manual_seed(0)
    model = Darknet("cfg/yolov3-tiny.cfg", img_size=64, nc=6)
    masks = magnitude_prune(dict(model.state_dict()), Masks.ones(prunable_parameters(model)), 0.9, "global")
    masks.apply(model)
    return dict(make_checkpoint(model), masks=masks.state_dict())


def test_save_compact_leaves_out_a_pruned_networks_zeros_and_loads_back_bit_for_bit(tmp_path):
    ckpt = pruned_checkpoint()
    save_compact(ckpt, tmp_path / "best.pt")
    save_checkpoint(ckpt, tmp_path / "plain.pt")
    assert (tmp_path / "best.pt").stat().st_size < 0.3 * (tmp_path / "plain.pt").stat().st_size
    back = load_checkpoint(tmp_path / "best.pt")
    assert back["model"].keys() == ckpt["model"].keys()
    assert all(torch.equal(back["model"][k], v) for k, v in ckpt["model"].items())
    assert all(torch.equal(back["masks"][k], m) for k, m in ckpt["masks"].items())


def test_a_plugins_training_state_or_a_one_line_error_naming_the_file():
    assert plugin_state({"train_state": {"plugins": {"cs": {"masks": 1}}}}, "cs", "last.pt") == {"masks": 1}
    for ckpt in ({}, {"train_state": {"plugins": {"lth": {}}}}, {"train_state": None}):
        with pytest.raises(UserError, match="^round_0/last.pt: holds no 'cs' training state") as e:
            plugin_state(ckpt, "cs", "round_0/last.pt")
        assert "\n" not in str(e.value)

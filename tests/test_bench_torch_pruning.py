"""benchmarks/bench_torch_pruning.py: the parts that run without Torch-Pruning (it lives in the benchmark's own
virtualenv, never in the toolkit's)."""
import pytest
import torch

from benchmarks import bench_torch_pruning as bench
from models import Darknet
from utils.errors import UserError
from utils.export import render_cfg


def narrowed_tiny():
    """yolov3-tiny with some convs narrowed in place, as Torch-Pruning leaves it: module shapes changed, cfg text not."""
    model = Darknet("cfg/yolov3-tiny.cfg", img_size=64).eval()
    narrow = Darknet.from_text(render_cfg(model, {0: 8, 2: 24, 13: 128}), name="narrow", img_size=64, nc=model.nc)
    narrow.eval()
    model.module_list = narrow.module_list  # the layers changed, the module_defs still say the old widths
    return model, narrow


def test_a_pruned_module_is_rebuilt_from_cfg_text_with_its_widths_and_the_same_outputs():
    pruned, narrow = narrowed_tiny()
    net, text = bench.as_darknet(pruned)
    widths = [d["filters"] for d in net.module_defs if d["type"] == "convolutional"]
    assert (widths[0], widths[1], net.module_defs[13]["filters"]) == (8, 24, 128)
    assert "filters=8" in text and "filters=128" in text
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x)[0], narrow(x)[0])


def test_head_convs_are_the_convs_that_feed_yolo():
    model = Darknet("cfg/yolov3-tiny.cfg", img_size=64)
    heads = bench.head_convs(model)
    idx = [i for i, m in enumerate(model.module_list) if any(m is h for h in heads)]
    assert idx == [15, 22] and all(model.module_defs[i + 1]["type"] == "yolo" for i in idx)


def test_only_plain_layer_networks_are_accepted():
    bench.check_plain(Darknet("cfg/yolov3-tiny.cfg", img_size=64), "tiny.pt")
    for cfg in ("cfg/yolo-nano.cfg", "cfg/mobilenetv3-yolo.cfg"):
        with pytest.raises(UserError, match="only plain-layer networks"):
            bench.check_plain(Darknet(cfg, img_size=64), "x.pt")

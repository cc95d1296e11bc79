"""models.py: cfg parsing, parameter and MAC figures, YOLO decoding, output-bias prior, .weights I/O, errors."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import models
from models import (ACTIVATIONS, Darknet, YOLOLayer, darknet_maxpool, load_darknet_weights,
                    prunable_parameters, save_darknet_weights)
from utils import summary
from utils.checkpoint import load_model, save_checkpoint
from utils.errors import UserError
from utils.summary import model_summary

from .conftest import ROOT

CFG = ROOT / "cfg"
TINY_ANCHORS = [(10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319)]
V3_ANCHORS = [(10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326)]


@pytest.fixture(scope="module")
def yolov3_voc():
    torch.manual_seed(0)
    return Darknet(CFG / "yolov3.cfg", nc=20)


def tiny(nc=20, seed=0):
    torch.manual_seed(seed)
    return Darknet(CFG / "yolov3-tiny.cfg", nc=nc)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def bn_channels(model):
    return sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


# ------------------------------------------------------------------------------------------------ figures

@pytest.mark.parametrize("cfg, nc, params", [
    ("yolov3.cfg", None, 61_949_149),
    ("yolov3-tiny.cfg", None, 8_852_366),
    ("yolov3-spp.cfg", None, 62_998_749),
    ("yolov3-tiny.cfg", 20, 8_713_766),
])
def test_parameter_counts(cfg, nc, params):
    assert n_params(Darknet(CFG / cfg, nc=nc)) == params


def test_yolov3_voc_params_and_macs(yolov3_voc):
    s = model_summary(yolov3_voc, img_size=416)
    assert s["params"] == 61_626_049
    assert s["layers"] == 107
    assert abs(s["macs"] / 32_829_119_167 - 1) < 0.005
    assert s["sparse_macs"] == pytest.approx(s["macs"], rel=1e-6)  # dense init: (almost) no zero weights
    assert s["size_mb"] == (20 + 4 * (61_626_049 + 2 * bn_channels(yolov3_voc))) / 2 ** 20


def test_cli_summary_tiny_voc(capsys):
    summary.main(["--cfg", str(CFG / "yolov3-tiny.cfg"), "--img-size", "416", "--nc", "20"])
    lines = capsys.readouterr().out.strip().splitlines()
    s = json.loads(lines[-1])
    assert set(s) == {"layers", "params", "nonzero_params", "sparsity", "macs", "sparse_macs", "size_mb"}
    assert s["params"] == 8_713_766 and s["layers"] == 24
    assert abs(s["macs"] / 2_753_665_551 - 1) < 0.005
    rows = {int(r.split()[0]): r.split() for r in lines[1:-1]}
    assert rows[11][1:4] == ["maxpool", "-1", "512x13x13"]  # size=2 stride=1 keeps 13x13
    assert rows[20][1:4] == ["route", "19,8", "384x26x26"]
    assert rows[16][3] == "3x13x13x25"


def test_prunable_parameters_yolov3_voc(yolov3_voc):
    prunable = prunable_parameters(yolov3_voc)
    assert len(prunable) == 72
    assert sum(p.numel() for _, p in prunable) == 61_438_816
    assert n_params(yolov3_voc) - 61_438_816 == 187_233
    names = dict(yolov3_voc.named_parameters())
    assert all(names[n] is p and n.endswith("conv.weight") for n, p in prunable)
    assert {"module_list.81.conv.weight", "module_list.93.conv.weight"}.isdisjoint(n for n, _ in prunable)
    with_output = prunable_parameters(yolov3_voc, include_output=True)
    assert len(with_output) == 75 and sum(p.numel() for _, p in with_output) == 61_438_816 + 75 * (1024 + 512 + 256)
    no_first = prunable_parameters(yolov3_voc, skip_first=True)
    assert no_first[0][0] == "module_list.1.conv.weight"
    assert sum(p.numel() for _, p in no_first) == 61_438_816 - 32 * 3 * 3 * 3


def test_summary_counts_zero_weights():
    model = randomise(tiny())  # no accidental exact zeros
    with torch.no_grad():
        model.module_list[0].conv.weight.zero_()  # 16x3x3x3 kernel, 16x64x64 output
        model.module_list[2].conv.weight[:16] = 0  # half of 32x16x3x3, 32x32x32 output
    s = model_summary(model, img_size=64)
    total = sum(p.numel() for _, p in prunable_parameters(model))
    assert s["sparsity"] == (432 + 2304) / total
    assert s["nonzero_params"] == s["params"] - 432 - 2304
    assert s["macs"] - s["sparse_macs"] == 64 * 64 * 16 * 3 * 9 + 32 * 32 * 32 * 16 * 9 // 2


# ------------------------------------------------------------------------------------------------ structure

def test_yolo_layer_attributes_and_nc_override():
    model = tiny(nc=20)
    assert model.yolo_layers == [16, 23] and model.nc == 20
    for i, stride, mask in ((16, 32.0, (3, 4, 5)), (23, 16.0, (1, 2, 3))):
        y = model.module_list[i]
        assert isinstance(y, YOLOLayer)
        assert (y.na, y.nc, y.no, y.stride, y.index) == (3, 20, 25, stride, i)
        assert y.anchors.tolist() == [list(map(float, TINY_ANCHORS[m])) for m in mask]
        assert model.module_list[i - 1].conv.out_channels == 75
        assert model.module_defs[i - 1]["filters"] == 75 and model.module_defs[i]["classes"] == 20
    assert "anchors" not in model.state_dict() and not any("anchors" in k for k in model.state_dict())
    assert model.module_defs[0]["type"] == "convolutional" and model.module_defs[0]["_line"] == 30


def test_output_bias_prior_is_in_the_parameters(yolov3_voc):
    for model, nc in ((yolov3_voc, 20), (tiny(nc=80), 80)):
        state = model.state_dict()
        for i in model.yolo_layers:
            stride = model.module_list[i].stride
            b = state[f"module_list.{i - 1}.conv.bias"].view(3, 5 + nc)
            assert torch.equal(b[:, 4], torch.full((3,), math.log(8 / (640 / stride) ** 2)))
            assert torch.equal(b[:, 5:], torch.full((3, nc), math.log(0.6 / (nc - 0.99))))
    assert yolov3_voc.module_list[81].conv.bias.view(3, 25)[0, 4].item() == pytest.approx(math.log(8 / 400))


def test_features_return_requested_layers(yolov3_voc):
    yolov3_voc.eval()
    with torch.no_grad():
        (inf, p), feats = yolov3_voc(torch.rand(1, 3, 64, 64), features=[36, 61, 79, 105])
    assert [tuple(f.shape) for f in feats] == [(1, 256, 8, 8), (1, 512, 4, 4), (1, 512, 2, 2), (1, 75, 8, 8)]
    assert inf.shape == (1, 3 * (4 + 16 + 64), 25) and [t.shape[2] for t in p] == [2, 4, 8]
    assert torch.equal(feats[3].view(1, 3, 25, 8, 8).permute(0, 1, 3, 4, 2), p[2])
    with pytest.raises(UserError, match="feature layer 107 is outside"):
        yolov3_voc(torch.rand(1, 3, 64, 64), features=[107])


# ------------------------------------------------------------------------------------------------ decoding

def logit(p):
    return math.log(p / (1 - p))


def test_eval_decode_lands_boxes_at_expected_pixels():
    """Output convs with zero kernels and chosen biases: the raw output is known for every cell."""
    model = tiny(nc=2).eval()
    fx, fy, sw, sh = (0.25, 0.5, 0.75), (0.1, 0.6, 0.9), (1.0, 2.0, 0.5), (0.5, 1.0, 3.0)
    cls = (0.9, 0.2)
    with torch.no_grad():
        for i in model.yolo_layers:
            conv = model.module_list[i - 1].conv
            conv.weight.zero_()
            b = conv.bias.view(3, 7)
            for a in range(3):
                b[a] = torch.tensor([logit(fx[a]), logit(fy[a]), math.log(sw[a]), math.log(sh[a]), logit(0.3),
                                     logit(cls[0]), logit(cls[1])])
        inf, p = model(torch.rand(2, 3, 96, 64))
    expected = []
    for stride, mask in ((32, (3, 4, 5)), (16, (1, 2, 3))):
        ny, nx = 96 // stride, 64 // stride
        for a, m in enumerate(mask):
            for gy in range(ny):
                for gx in range(nx):
                    aw, ah = TINY_ANCHORS[m]
                    expected.append([(gx + fx[a]) * stride, (gy + fy[a]) * stride, sw[a] * aw, sh[a] * ah, 0.3, *cls])
    expected = torch.tensor(expected).expand(2, -1, -1)
    assert inf.shape == (2, 3 * (3 * 2 + 6 * 4), 7) and inf.dtype == torch.float32
    torch.testing.assert_close(inf, expected, rtol=1e-5, atol=1e-4)
    assert [tuple(t.shape) for t in p] == [(2, 3, 3, 2, 7), (2, 3, 6, 4, 7)]


def test_official_tiny_weights_layout_decodes_stride_16_with_anchors_1_2_3(tmp_path):
    """A .weights file built by hand for yolov3-tiny (80 classes): every value 0 except the bias of the last conv
    (the stride-16 output conv, which has no BN: its 255 biases come just before its 255x256 kernel at the end of
    the file). All features are then 0, so that head outputs its bias: tx = ty = 0, tw = th = 0 (box = anchor),
    objectness and class 0 certain. The stride-16 boxes must carry anchors 1, 2, 3 (23x27, 37x58, 81x82), the
    anchors the official weights were trained with (cfg mask = 1,2,3), not 0, 1, 2."""
    cfg = CFG / "yolov3-tiny.cfg"
    floats = (8_858_734 - 255 * 256) - 255  # every value of the file before that conv's bias
    bias = np.zeros((3, 85), "<f4")
    bias[:, 4] = bias[:, 5] = 20.0  # sigmoid(20) = 1 - 2e-9
    path = tmp_path / "tiny.weights"
    with open(path, "wb") as f:
        np.array([0, 2, 0], "<i4").tofile(f)
        np.array([0], "<i8").tofile(f)
        np.zeros(floats, "<f4").tofile(f)
        bias.tofile(f)
        np.zeros(255 * 256, "<f4").tofile(f)
    model = load_darknet_weights(Darknet(cfg), path).eval()
    with torch.no_grad():
        inf, _ = model(torch.rand(1, 3, 416, 416))
    head = inf[0, 3 * 13 * 13:].view(3, 26, 26, 85)  # after the stride-32 head's 3 x 13 x 13 rows
    for a, (w, h) in enumerate(TINY_ANCHORS[1:4]):
        assert head[a, ..., 2].unique().tolist() == [w] and head[a, ..., 3].unique().tolist() == [h]
        assert head[a, 5, 7, :2].tolist() == [(7 + 0.5) * 16, (5 + 0.5) * 16]
    assert float(head[..., 4].min()) > 0.999 and float(head[..., 5].min()) > 0.999


def test_yolo_layer_decodes_hand_made_tensor():
    layer = YOLOLayer([(10.0, 20.0), (30.0, 40.0)], nc=1, stride=8, index=5).eval()
    x = torch.zeros(1, 2 * 6, 2, 3)
    x.view(1, 2, 6, 2, 3)[0, 1, 2, 1, 2] = math.log(4.0)  # anchor 1, cell (y=1, x=2): w = 4 * 30
    inf, p = layer(x)
    assert torch.equal(p, x.view(1, 2, 6, 2, 3).permute(0, 1, 3, 4, 2))
    row = inf[0, 6 + 1 * 3 + 2]  # anchor 1, y 1, x 2
    assert row.tolist() == pytest.approx([(2 + 0.5) * 8, (1 + 0.5) * 8, 120.0, 40.0, 0.5, 0.5])
    assert inf[0, 0].tolist() == pytest.approx([4.0, 4.0, 10.0, 20.0, 0.5, 0.5])
    assert layer.train()(x).shape == (1, 2, 2, 3, 6)


def test_bf16_autocast_and_channels_last():
    model = tiny(nc=20)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref, _ = model.eval()(x)
    model = model.to(memory_format=torch.channels_last)
    xc = x.to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        inf, p = model(xc)
    assert inf.dtype == torch.float32 and p[0].dtype == torch.bfloat16
    torch.testing.assert_close(inf[..., :2], ref[..., :2], atol=0.5, rtol=0)  # pixels
    torch.testing.assert_close(inf[..., 2:4], ref[..., 2:4], rtol=0.05, atol=0.5)
    torch.testing.assert_close(inf[..., 4:], ref[..., 4:], atol=0.01, rtol=0)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(xc)
        loss = sum(t.float().square().mean() for t in out)
    loss.backward()
    assert [tuple(t.shape) for t in out] == [(2, 3, 2, 2, 25), (2, 3, 4, 4, 25)]
    grad = model.module_list[0].conv.weight.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_onnx_export_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = tiny(nc=20).eval()
    f = tmp_path / "tiny.onnx"
    torch.onnx.export(model, (torch.rand(1, 3, 64, 64),), str(f), input_names=["images"],
                      output_names=["inf", "p0", "p1"], dynamic_axes={"images": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)[0].numpy()
    got = ort.InferenceSession(str(f)).run(None, {"images": x.numpy()})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


def darknet_maxpool_reference(x, k, s):
    """Darknet's loop: pad k-1 in all, (k-1)//2 before, out-of-range cells ignored."""
    h, w = x.shape[-2:]
    off = (k - 1) // 2
    oh, ow = (h - 1) // s + 1, (w - 1) // s + 1
    out = torch.empty(*x.shape[:-2], oh, ow)
    for i in range(oh):
        for j in range(ow):
            y0, x0 = i * s - off, j * s - off
            win = x[..., max(y0, 0):min(y0 + k, h), max(x0, 0):min(x0 + k, w)]
            out[..., i, j] = win.amax(dim=(-2, -1))
    return out


@pytest.mark.parametrize("k, s, size", [(2, 1, 5), (2, 2, 5), (2, 2, 6), (5, 1, 7), (9, 1, 5), (3, 2, 7), (4, 1, 6)])
def test_maxpool_matches_darknet(k, s, size):
    x = -1 - torch.rand(1, 2, size, size)  # all negative: zero padding would be wrong
    torch.testing.assert_close(darknet_maxpool(k, s, k - 1)(x), darknet_maxpool_reference(x, k, s), rtol=0, atol=0)


def test_zero_pad_maxpool_is_ultralytics_tiny_pool_and_the_default_stays_darknets():
    """Issue 27: tiny's size-2 stride-1 pool pads one cell after the row and column; Darknet's padding never wins
    the max, ultralytics/yolov3's (ZeroPad2d((0, 1, 0, 1))) is 0, which beats negative activations at the border."""
    x = -1 - torch.rand(1, 2, 5, 5)
    ultralytics = torch.nn.functional.max_pool2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), 2, 1)
    torch.testing.assert_close(darknet_maxpool(2, 1, 1, zero_pad=True)(x), ultralytics, rtol=0, atol=0)
    assert float(ultralytics[..., -1, :].max()) == 0.0 and float(darknet_maxpool(2, 1, 1)(x).max()) < -1
    text = open("cfg/yolov3-tiny.cfg").read()
    i = text.index("size=2\nstride=1")
    zero = Darknet.from_text(text[:i] + "zero_pad=1\n" + text[i:], img_size=64, nc=80).eval()
    plain = Darknet("cfg/yolov3-tiny.cfg", img_size=64, nc=80).eval()
    zero.load_state_dict(plain.state_dict())
    pools = [m for m in zero.modules() if isinstance(m, torch.nn.ZeroPad2d)]
    assert len(pools) == 1 and pools[0].padding == (0, 1, 0, 1)
    bad = text[:i] + "zero_pad=2\n" + text[i:]
    with pytest.raises(UserError, match="zero_pad=2"):
        Darknet.from_text(bad, img_size=64)


COMPACT_CFG = """[net]
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=hswish

[convolutional]
batch_normalize=1
filters=8
size=3
groups=8
stride=2
pad=1
activation=relu6

[avgpool]

[convolutional]
filters=2
size=1
bias=0
activation=relu

[convolutional]
filters=8
size=1
activation=hsigmoid

[scale_channels]
from=-4

[route]
layers=-1
groups=2
group_id=1

[dropout]
probability=0.1

[convolutional]
filters=18
size=1
activation=linear

[yolo]
mask=0,1
anchors=4,5, 6,7
classes=4
"""


def test_compact_sections(tmp_path):
    model = Darknet.from_text(COMPACT_CFG, name="compact.cfg")
    ml = model.module_list
    assert isinstance(ml[0].act, torch.nn.Hardswish) and isinstance(ml[1].act, torch.nn.ReLU6)
    assert ml[1].conv.groups == 8 and ml[1].conv.weight.shape == (8, 1, 3, 3)
    assert ml[3].conv.bias is None and ml[4].conv.bias is not None
    assert model.channels == [8, 8, 8, 2, 8, 8, 4, 4, 18, 18] and model.module_list[9].stride == 2
    model.eval()
    with torch.no_grad():
        _, feats = model(torch.rand(2, 3, 16, 16), features=[1, 4, 5, 6])
    torch.testing.assert_close(feats[2], feats[0] * feats[1])
    assert torch.equal(feats[3], feats[2][:, 4:])
    path = tmp_path / "compact.weights"
    save_darknet_weights(model, path)
    # per conv: BN 4x8 + 8*27 | BN 4x8 + 72 | kernel 16 (no bias) | bias 8 + kernel 16 | bias 18 + kernel 72
    assert path.stat().st_size == 20 + 4 * ((32 + 216) + (32 + 72) + 16 + (8 + 16) + (18 + 72))


def test_activation_table():
    assert {"linear", "leaky", "relu", "relu6", "logistic", "swish", "silu", "mish", "hswish",
            "hsigmoid"} <= set(ACTIVATIONS)
    assert ACTIVATIONS["leaky"]().negative_slope == 0.1


# ------------------------------------------------------------------------------------------------ .weights

def randomise(model, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
            elif isinstance(m, torch.nn.Conv2d):  # |w| in [0.001, 0.05): never exactly zero
                m.weight.uniform_(0.001, 0.05).mul_(torch.randint_like(m.weight, 2) * 2 - 1)
    return model


def test_weights_round_trip_is_bit_identical(tmp_path):
    a = randomise(tiny(nc=3)).eval()
    path = tmp_path / "tiny.weights"
    save_darknet_weights(a, path)
    assert path.stat().st_size == 20 + 4 * (n_params(a) + 2 * bn_channels(a))
    b = load_darknet_weights(tiny(nc=3, seed=7), path).eval()
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if "num_batches_tracked" not in k)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(x)[0], b(x)[0])
    assert b.version == (0, 2, 0) and b.seen == 0


def test_weights_old_header_has_int32_seen(tmp_path):
    a = randomise(tiny(nc=1))
    path = tmp_path / "old.weights"
    with open(path, "wb") as f:
        np.array([0, 1, 0, 12345], "<i4").tofile(f)
        for t in models.darknet_tensors(a):
            t.detach().numpy().astype("<f4").tofile(f)
    b = load_darknet_weights(tiny(nc=1, seed=3), path)
    assert b.seen == 12345 and b.version == (0, 1, 0)
    assert torch.equal(a.module_list[12].conv.weight, b.module_list[12].conv.weight)


@pytest.mark.parametrize("change", [-4, 8])
def test_weights_wrong_size_names_both_sizes(tmp_path, change):
    model = tiny(nc=3)
    path = tmp_path / "bad.weights"
    save_darknet_weights(model, path)
    data = path.read_bytes()
    expected = len(data)
    path.write_bytes(data[:change] if change < 0 else data + b"\0" * change)
    with pytest.raises(UserError) as e:
        load_darknet_weights(model, path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: too {'short' if change < 0 else 'long'} for yolov3-tiny.cfg")
    assert f"expected {expected:,} bytes" in msg and f"file has {expected + change:,} bytes" in msg


def test_convert_cli_round_trip_and_load_model(tmp_path, capsys):
    a = randomise(tiny(nc=3)).eval()
    w1, pt, w2 = tmp_path / "a.weights", tmp_path / "b.pt", tmp_path / "c.weights"
    save_darknet_weights(a, w1)
    summary.main(["--convert", str(w1), str(pt), "--cfg", str(CFG / "yolov3-tiny.cfg"), "--nc", "3"])
    summary.main(["--convert", str(pt), str(w2)])
    assert w1.read_bytes() == w2.read_bytes()
    b, ckpt = load_model(pt)
    assert ckpt["nc"] == 3 and ckpt["cfg_name"] == "yolov3-tiny.cfg" and not b.training
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(x)[0], b(x)[0])
    s = summary.main(["--weights", str(pt), "--img-size", "64"])
    assert s["size_mb"] == pt.stat().st_size / 2 ** 20 and s["params"] == n_params(a)
    with pytest.raises(UserError, match="has 3 classes, --nc asks for 5"):
        load_model(pt, nc=5)


def test_load_model_applies_masks(tmp_path):
    model = tiny(nc=2)
    ckpt = models.make_checkpoint(model)
    name = "module_list.12.conv.weight"
    mask = torch.rand_like(ckpt["model"][name]) > 0.9
    ckpt["masks"] = {name: mask}
    save_checkpoint(ckpt, tmp_path / "pruned.pt")
    loaded, _ = load_model(tmp_path / "pruned.pt")
    w = dict(loaded.named_parameters())[name]
    assert torch.equal(w == 0, ~mask | (ckpt["model"][name] == 0))
    s = model_summary(loaded, img_size=64)
    assert s["sparsity"] == pytest.approx(int((~mask).sum()) / sum(p.numel() for _, p in prunable_parameters(loaded)),
                                          abs=1e-6)


# ------------------------------------------------------------------------------------------------ errors

HEAD = "[net]\nchannels=3\n\n[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n"  # lines 1-8

BAD_CFGS = [
    ("unknown section", HEAD + "\n[convolutionl]\nfilters=4\n", 10, "unknown section [convolutionl]"),
    ("unknown key", HEAD + "\n[convolutional]\nfliters=4\n", 11, "unknown key 'fliters' in [convolutional]"),
    ("missing key", HEAD + "\n[convolutional]\nsize=1\n", 10, "missing the required key 'filters'"),
    ("bad value", HEAD + "\n[convolutional]\nfilters=4\nsize=three\n", 12, "size=three: expected an integer"),
    ("route outside", HEAD + "\n[route]\nlayers=-1, -2\n", 11, "layers=-2 points outside the network"),
    ("route forward", HEAD + "\n[route]\nlayers=1\n", 11, "layers=1 points outside the network"),
    ("shortcut outside", HEAD + "\n[shortcut]\nfrom=-3\n", 11, "from=-3 points outside the network"),
    ("unknown activation", HEAD + "\n[convolutional]\nfilters=4\nactivation=leaky_relu\n", 12,
     "unknown activation 'leaky_relu'"),
    ("key before section", "filters=3\n[net]\n", 1, "'filters=' before the first [section]"),
    ("not key=value", HEAD + "filters 4\n", 9, "expected '[section]' or 'key=value'"),
    ("duplicate key", HEAD + "size=1\n", 9, "duplicate key 'size'"),
    ("net not first", HEAD + "\n[net]\n", 10, "[net] must be the first section"),
    ("filters vs yolo", HEAD + "\n[convolutional]\nfilters=20\nsize=1\n\n[yolo]\nmask=0,1,2\nanchors=1,2,3,4,5,6\n"
     "classes=2\n", 11, "filters=20, but the [yolo] at line 14 needs len(mask) * (5 + classes) = 3 * (5 + 2) = 21"),
    ("mask outside", HEAD + "\n[convolutional]\nfilters=21\nsize=1\n\n[yolo]\nmask=0,1,3\nanchors=1,2,3,4,5,6\n"
     "classes=2\n", 15, "mask index 3 outside the 3 anchors"),
    ("route resolution", HEAD + "\n[maxpool]\nsize=2\nstride=2\n\n[route]\nlayers=-1,0\n", 15,
     "layers combines layers of different resolution"),
]


@pytest.mark.parametrize("name, text, line, what", BAD_CFGS, ids=[c[0] for c in BAD_CFGS])
def test_malformed_cfg_names_file_and_line(tmp_path, name, text, line, what):
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        Darknet(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:{line}: ") and what in msg, msg
    assert "\n" not in msg


def test_nc_override_fixes_filters_and_cli_error_is_one_line(tmp_path, capsys):
    path = tmp_path / "voc.cfg"
    path.write_text(BAD_CFGS[12][1])
    model = Darknet(path, nc=2)
    assert model.module_list[1].conv.out_channels == 21 and model.nc == 2
    with pytest.raises(SystemExit) as e:
        from utils.errors import cli
        cli(lambda: summary.main(["--cfg", str(path)]))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}:11: filters=20") and err.count("\n") == 1
    with pytest.raises(UserError, match="cfg file not found"):
        Darknet(tmp_path / "missing.cfg")
    with pytest.raises(UserError, match="^--img-size 100 is not a multiple of the model's stride 32$"):
        summary.main(["--cfg", str(CFG / "yolov3-tiny.cfg"), "--img-size", "100"])  # was a torch.cat traceback


def _activations(model):
    """(module, inside an SE block) for every activation module of ``model`` (gates included)."""
    in_se = {id(sub) for m in model.modules() if isinstance(m, models.SqueezeExcite) for sub in m.modules()}
    plain = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.Identity, nn.AdaptiveAvgPool2d, nn.Upsample, nn.MaxPool2d,
             nn.ZeroPad2d, models.YOLOLayer, models.Route, models.Shortcut)
    return [(m, id(m) in in_se) for m in model.modules() if not list(m.children()) and not isinstance(m, plain)]


def test_yolo_nano_is_the_original_projects_network_whose_expansion_maps_x_to_x():
    """docs/models.md: cfg/yolo-nano.cfg is the original project's 2.89 M Nano, not a claim of Wong et al.'s network:
    the 1x1 before every depthwise conv of its PEP/EP blocks keeps the channel count."""
    nano = Darknet(str(ROOT / "cfg" / "yolo-nano.cfg"), nc=20)
    assert sum(p.numel() for p in nano.parameters()) == 2_890_527
    convs = [m for m in nano.modules() if isinstance(m, nn.Conv2d)]
    expansions = [a for a, b in zip(convs, convs[1:]) if b.groups > 1 and b.groups == b.in_channels]
    assert len(expansions) >= 10 and all(a.in_channels == a.out_channels for a in expansions)


def test_leaky_variants_are_leaky_except_where_docs_models_md_says():
    """Nano leaky: every activation is leaky 0.1 but the FCA gate (a sigmoid); MobileNetV3-YOLO and YOLOv3-Mobile
    leaky: leaky 0.1 outside SE, where ReLU and the gate remain (documented in their cfg headers)."""
    for cfg, se_act in (("yolo-nano_leaky.cfg", nn.LeakyReLU), ("mobilenetv3-yolo_leaky.cfg", nn.ReLU),
                        ("yolov3-mobile_leaky.cfg", nn.ReLU)):
        acts = _activations(Darknet(str(ROOT / "cfg" / cfg), nc=20))
        outside = [m for m, inside in acts if not inside]
        assert outside and all(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.1 for m in outside), cfg
        se = [type(m) for m, inside in acts if inside]
        assert se and se_act in se, cfg
        assert all(issubclass(t, (se_act, nn.Sigmoid, nn.Hardsigmoid)) for t in se), (cfg, set(se))

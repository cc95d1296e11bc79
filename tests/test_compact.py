"""Compact models (issue 6): YOLO Nano, YOLOv3-Mobile and MobileNetV3-YOLO cfgs, and every shipped cfg's basics.

Figures: parameter counts at 20 classes equal the original's table; MACs at 416 are checked against its table by
rebuilding its thop version's counting rules (see ``original_thop_macs``). Every shipped cfg builds, runs forward
and backward; the compact ones (and yolov3-tiny) also round-trip through ``.weights``, export to ONNX and overfit
a handful of shapes images. yolov3 / -spp (62 M parameters) only build, run and round-trip (test_models.py covers
their figures and yolov3-tiny's export).
"""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import models
from models import (Block, Darknet, SqueezeExcite, load_darknet_weights, make_divisible,
                    prunable_parameters, save_darknet_weights)
from utils.errors import UserError
from utils.summary import model_summary
from utils.torch_utils import parameter_groups

from .conftest import ROOT

CFG = ROOT / "cfg"
NANO = ["yolo-nano.cfg", "yolo-nano_leaky.cfg"]
MOBILE = ["yolov3-mobile.cfg", "yolov3-mobile_leaky.cfg"]
MNV3 = ["mobilenetv3-yolo.cfg", "mobilenetv3-yolo_leaky.cfg"]
COMPACT = NANO + MOBILE + MNV3
BIG = ["yolov3.cfg", "yolov3-spp.cfg"]
VOC_ANCHORS = [26, 31, 43, 84, 81, 171, 103, 68, 145, 267, 180, 135, 247, 325, 362, 178, 412, 346]

PARAMS_NC20 = {"yolo-nano.cfg": 2_890_527, "yolo-nano_leaky.cfg": 2_890_527,
               "yolov3-mobile.cfg": 4_395_985, "yolov3-mobile_leaky.cfg": 4_395_985,
               "mobilenetv3-yolo.cfg": 3_877_825, "mobilenetv3-yolo_leaky.cfg": 3_877_825}
# the original's table (thop of 2020) and ours (thop 0.1.1) at 416, 20 classes
ORIGINAL_MACS = {"yolo-nano.cfg": 2_082_423_381, "yolo-nano_leaky.cfg": 2_098_305_681,
                 "yolov3-mobile.cfg": 1_419_864_487, "yolov3-mobile_leaky.cfg": 1_458_910_247}
THOP_MACS = {"yolo-nano.cfg": 2_132_198_106, "yolov3-mobile.cfg": 1_505_942_440, "mobilenetv3-yolo.cfg": 1_457_220_472}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread here: on a shared CPU, OpenMP threads waiting for each other make the many small convs
    of these networks 10-50x slower (measured: a Nano step at 96 px, 0.4 s with 1 thread, 2-28 s with 2)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def build(cfg, nc=20, seed=0, img_size=416):
    torch.manual_seed(seed)
    return Darknet(CFG / cfg, nc=nc, img_size=img_size)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def randomise(model, seed=1):
    """Random BN statistics and affine terms, conv and linear weights and biases: nothing equals its default."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                for p in m.parameters(recurse=False):
                    p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return model


# ------------------------------------------------------------------------------------------------ figures

@pytest.mark.parametrize("cfg", COMPACT)
def test_parameter_counts_at_20_classes(cfg):
    model = build(cfg)
    assert n_params(model) == PARAMS_NC20[cfg]
    anchors = model.module_list[model.yolo_layers[0]].anchors.new_tensor(VOC_ANCHORS).view(-1, 2)
    for i in model.yolo_layers:
        y = model.module_list[i]
        assert y.nc == 20 and any(torch.equal(y.anchors, anchors[k:k + 3]) for k in (0, 3, 6))
    assert Darknet(CFG / cfg).nc == 80  # the files say 80 classes, like yolov3.cfg; --nc / the .data override it


def original_thop_macs(model, img_size=416):
    """MACs as the original's thop version (2020) counted them, from ours (thop 0.1.1, ``model_summary``).

    thop 0.1.1 counts BN as 4 ops per element (the original's: 2), nearest upsampling as 1 per output element
    (0), LeakyReLU as 0 (1 per element) and no conv bias (1 per output element). Convs, linears and pooling agree.
    """
    counts = {"bn": 0, "up": 0, "leaky": 0, "bias": 0}

    def hook(m, inp, out):
        key = ("bn" if isinstance(m, nn.BatchNorm2d) else "up" if isinstance(m, nn.Upsample) else
               "leaky" if isinstance(m, nn.LeakyReLU) else "bias" if getattr(m, "bias", None) is not None and
               isinstance(m, nn.Conv2d) else None)
        if key:
            counts[key] += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, img_size, img_size))
    for h in handles:
        h.remove()
    macs = model_summary(model, img_size)["macs"]
    return macs, macs - 2 * counts["bn"] - counts["up"] + counts["leaky"] + counts["bias"]


@pytest.mark.parametrize("cfg", NANO + MOBILE + MNV3[:1])
def test_macs_match_the_original_table(cfg):
    macs, original_rules = original_thop_macs(build(cfg))
    base = cfg.replace("_leaky", "")
    if base == "mobilenetv3-yolo.cfg":  # ours: no original figure
        assert macs == THOP_MACS[base]
        return
    assert original_rules == ORIGINAL_MACS[cfg]  # same network, layer for layer
    assert macs == THOP_MACS[base]  # thop 0.1.1 counts no activation, so leaky = ReLU6 / hard-swish
    # within 3% for Nano (2.4% over); Mobile's many BN channels make thop 0.1.1's 4 ops per BN element show (6.1%)
    assert abs(macs / ORIGINAL_MACS[base] - 1) < (0.03 if "nano" in cfg else 0.065)


# ------------------------------------------------------------------------------------------------ structure

def test_nano_blocks_and_feature_indexes():
    model = build("yolo-nano.cfg", img_size=64)
    ml, defs = model.module_list, model.module_defs
    assert len(ml) == 50 and model.yolo_layers == [41, 45, 49]
    assert [model.module_list[i].stride for i in model.yolo_layers] == [8.0, 16.0, 32.0]
    pep = ml[2]  # PEP x=7 on 24 channels: 1x1 24->7, 1x1 7->7, 3x3 dw, 1x1 7->24, residual
    assert isinstance(pep, Block) and pep.residual and list(pep._modules) == ["project", "expand", "dw", "linear"]
    assert [c.conv.weight.shape for c in pep] == [(7, 24, 1, 1), (7, 7, 1, 1), (7, 1, 3, 3), (24, 7, 1, 1)]
    assert isinstance(pep.dw.act, nn.ReLU6) and not hasattr(pep.linear, "act")
    assert not ml[3].residual and ml[3].dw.conv.stride == (2, 2)  # EP stride 2
    fca = ml[9]  # FCA: 150 -> 18 -> 150, no biases
    assert isinstance(fca, SqueezeExcite) and fca.fc1.weight.shape == (18, 150) and fca.fc1.bias is None
    assert isinstance(fca.gate, nn.Sigmoid) and fca.fc2.bias is None
    assert [defs[i]["type"] for i in (12, 21, 27, 33)] == ["pep", "pep", "convolutional", "convolutional"]
    model.eval()
    with torch.no_grad():
        (_, p), feats = model(torch.rand(1, 3, 64, 64), features=[12, 21, 27, 33, 40, 44, 48])
    assert [tuple(f.shape[1:]) for f in feats] == [(150, 8, 8), (325, 4, 4), (189, 2, 2), (98, 4, 4), (75, 8, 8),
                                                    (75, 4, 4), (75, 2, 2)]
    assert torch.equal(feats[4].view(1, 3, 25, 8, 8).permute(0, 1, 3, 4, 2), p[0])


def test_mobile_layout_is_yolov3s():
    model = build("yolov3-mobile.cfg", img_size=64)
    assert len(model.module_list) == 107 and model.yolo_layers == [82, 94, 106]
    assert [model.module_list[i].stride for i in model.yolo_layers] == [32.0, 16.0, 8.0]
    assert (model.channels[36], model.channels[61], model.channels[79], model.channels[91]) == (32, 64, 64, 32)
    m1 = model.module_list[1]  # M(8, 3, 1, s2, SE): hidden = 8 = in, so no expand conv
    assert list(m1._modules) == ["dw", "se", "linear"] and m1.se.fc1.weight.shape == (8, 8)
    m2 = model.module_list[2]  # M(4, 1, 4): 8 -> 32 -> k=1 depthwise -> 4
    assert list(m2._modules) == ["expand", "dw", "linear"] and m2.dw.conv.weight.shape == (32, 1, 1, 1)
    se = model.module_list[37].se  # M(64, 3, 6, s2, SE) on 32 channels: hidden 192, SE 192 -> 48 -> 192 with bias
    assert se.fc1.weight.shape == (48, 192) and se.fc1.bias is not None and isinstance(se.gate, nn.Sigmoid)
    assert isinstance(model.module_list[37].dw.act, nn.Hardswish) and isinstance(model.module_list[36 - 1].dw.act,
                                                                                  nn.ReLU)
    assert isinstance(build("yolov3-mobile_leaky.cfg").module_list[37].dw.act, nn.LeakyReLU)


def test_mobilenetv3_backbone_follows_the_paper():
    """Howard et al. 2019, Table 1 (MobileNetV3-Large): 15 bnecks; outputs 40 @ 8, 112 @ 16, 160 @ 32."""
    model = build("mobilenetv3-yolo.cfg", img_size=64)
    ml = model.module_list
    table = [(3, 16, 16, 0, "RE", 1), (3, 64, 24, 0, "RE", 2), (3, 72, 24, 0, "RE", 1), (5, 72, 40, 1, "RE", 2),
             (5, 120, 40, 1, "RE", 1), (5, 120, 40, 1, "RE", 1), (3, 240, 80, 0, "HS", 2), (3, 200, 80, 0, "HS", 1),
             (3, 184, 80, 0, "HS", 1), (3, 184, 80, 0, "HS", 1), (3, 480, 112, 1, "HS", 1), (3, 672, 112, 1, "HS", 1),
             (5, 672, 160, 1, "HS", 2), (5, 960, 160, 1, "HS", 1), (5, 960, 160, 1, "HS", 1)]
    assert ml[0].conv.stride == (2, 2) and ml[0].conv.out_channels == 16 and isinstance(ml[0].act, nn.Hardswish)
    for j, (k, exp, out, se, nl, s) in enumerate(table, 1):
        b = ml[j]
        assert b.dw.conv.kernel_size == (k, k) and b.dw.conv.out_channels == exp and b.dw.conv.stride == (s, s), j
        assert b.linear.conv.out_channels == out and hasattr(b, "expand") == (j > 1), j
        assert isinstance(b.dw.act, nn.ReLU if nl == "RE" else nn.Hardswish), j
        assert hasattr(b, "se") == bool(se), j
        if se:
            assert isinstance(b.se.gate, nn.Hardsigmoid) and b.se.fc1.out_features == make_divisible(exp / 4), j
        assert b.residual == (s == 1 and model.channels[j - 1] == out), j
    assert [(model.channels[i], model.strides[i]) for i in (6, 12, 15)] == [(40, 8), (112, 16), (160, 32)]
    assert model.yolo_layers == [20, 29, 38] and [ml[i].stride for i in model.yolo_layers] == [32.0, 16.0, 8.0]
    assert [model.channels[i - 2] for i in model.yolo_layers] == [320, 224, 128]  # 1x1 head conv before each output


def test_make_divisible():
    assert [make_divisible(v) for v in (2, 8, 12, 18.75, 32, 64 * 2.3, 80 * 2.3, 96 * 0.25)] == \
        [8, 8, 16, 24, 32, 144, 184, 24]


def test_se_section_computes_channel_attention():
    text = ("[net]\nchannels=3\n\n[convolutional]\nfilters=16\nsize=1\nactivation=linear\n\n"
            "[se]\nreduction=4\nbias=1\nactivation=relu\ngate=hsigmoid\n")
    model = Darknet.from_text(text, name="se.cfg").eval()
    se = model.module_list[1]
    assert se.fc1.weight.shape == (4, 16) and se.fc2.weight.shape == (16, 4)
    x = torch.randn(2, 3, 5, 7)
    with torch.no_grad():
        y = model.module_list[0](x)
        s = nn.functional.hardsigmoid(se.fc2(torch.relu(se.fc1(y.mean((2, 3))))))
        (_, _), feats = model(x, features=[1])
    torch.testing.assert_close(feats[0], y * s[:, :, None, None])


BAD = [
    ("[pep]\nfilters=8\n", 10, "[pep] is missing the required key 'project'"),
    ("[ep]\nfilters=0\n", 11, "filters=0 must be at least 1"),
    ("[bottleneck]\nfilters=8\nexpand=0\n", 12, "expand=0 must be positive"),
    ("[bottleneck]\nfilters=8\nse=1\nse_gate=sigmoidal\n", 13, "unknown activation 'sigmoidal'"),
    ("[se]\nreduction=0\n", 10, "reduction=0, divisor=0"),
]


@pytest.mark.parametrize("text, line, what", BAD)
def test_compact_section_errors_name_the_line(tmp_path, text, line, what):
    path = tmp_path / "bad.cfg"
    path.write_text("[net]\nchannels=3\n\n[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n\n" + text)
    with pytest.raises(UserError) as e:
        Darknet(path)
    assert str(e.value).startswith(f"{path}:{line}: ") and what in str(e.value), str(e.value)


# ------------------------------------------------------------------------------------------------ training set-up

@pytest.mark.parametrize("cfg", ["yolo-nano.cfg", "yolov3-mobile.cfg", "mobilenetv3-yolo.cfg"])
def test_output_prior_decay_groups_and_pruning(cfg):
    model = build(cfg, nc=20, img_size=64)
    for i in model.yolo_layers:  # the output-bias prior is in the parameters
        y, b = model.module_list[i], model.module_list[i - 1].conv.bias.view(3, 25)
        assert torch.equal(b[:, 4], torch.full((3,), math.log(8 / (640 / y.stride) ** 2)))
        assert torch.equal(b[:, 5:], torch.full((3, 20), math.log(0.6 / 19.01)))
    bn, decay, bias = parameter_groups([model])
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    kernels = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and ids(decay) == ids(kernels)  # every conv and linear weight decays, nothing else does
    assert ids(bias) == ids(p for n, p in model.named_parameters() if n.endswith(".bias"))  # linear ones too
    assert ids(bn) == ids(m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    for w in kernels:  # PyTorch's default (Kaiming-uniform) initialisation reached every kernel
        bound = 1 / math.sqrt(w[0].numel())
        assert 0 < w.abs().max() <= bound and w.std() > bound / 4
    prunable = prunable_parameters(model)
    names = [n for n, _ in prunable]
    outputs = {f"module_list.{i - 1}.conv.weight" for i in model.yolo_layers}
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert names == [f"{n}.weight" for n in convs if f"{n}.weight" not in outputs]  # conv kernels, not linear / BN


def test_residual_branches_start_as_identity():
    """Zero-gamma: residual compact blocks, and compact blocks before a [shortcut], start as the identity."""
    nano, mobile = build("yolo-nano.cfg", img_size=64), build("yolov3-mobile.cfg", img_size=64)
    last_bn = lambda m: [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)][-1]  # noqa: E731
    residual = [i for i, m in enumerate(nano.module_list) if isinstance(m, Block) and m.residual]
    assert residual == [2, 4, 5, 7, 10, 11, 12, *range(14, 22), 23]
    for i, m in enumerate(nano.module_list):
        if isinstance(m, Block):
            assert bool((last_bn(m).weight == 0).all()) == (i in residual), i
            assert bool((m[0].bn.weight == 1).all()), i  # other BNs keep PyTorch's init
    shortcuts = [i for i, d in enumerate(mobile.module_defs) if d["type"] == "shortcut"]
    assert all(not last_bn(mobile.module_list[i - 1]).weight.any() for i in shortcuts) and len(shortcuts) == 23
    assert last_bn(mobile.module_list[2]).weight.all()  # the first block of each pair is untouched
    yolov3 = Darknet(CFG / "yolov3-tiny.cfg")  # plain convs are never zeroed (yolov3.cfg's shortcuts neither)
    assert all(m.bn.weight.all() for m in yolov3.module_list if hasattr(m, "bn"))
    nano.eval()
    with torch.no_grad():
        _, (a, b) = nano(torch.rand(1, 3, 64, 64), features=[3, 4])
    assert torch.equal(a, b)  # PEP 4 adds nothing yet



def test_ablation_edits_change_only_what_they_name(monkeypatch, shapes_tiny, tmp_path):
    """benchmarks/ablate_compact.py: each flag edits exactly its layers, and the CLI trains with the edits."""
    from benchmarks import ablate_compact

    a, rest = ablate_compact.parse_args(["--residual-gamma", "0.25", "--no-se", "--act-out", "--", "--epochs", "1"])
    assert (a.residual_gamma, a.no_se, a.act_out, rest) == (0.25, True, True, ["--epochs", "1"])
    monkeypatch.setattr(models, "init_residual_branches", models.init_residual_branches)
    monkeypatch.setattr(SqueezeExcite, "forward", SqueezeExcite.forward)
    plain = build("yolo-nano.cfg", img_size=64)
    zeroed = models.residual_branch_bns(plain)
    assert len(zeroed) == 16 and all(not b.weight.any() for b in zeroed)
    ablate_compact.install(a)
    nano = build("yolo-nano.cfg", img_size=64)
    bns = [m for m in nano.modules() if isinstance(m, nn.BatchNorm2d)]
    gammas = [float(b.weight.detach().unique()) for b in models.residual_branch_bns(nano)]
    assert gammas == [0.25] * 16 and n_params(nano) == n_params(plain)
    assert sum(bool((b.weight == 1).all()) for b in bns) == len(bns) - 16  # every other BN untouched
    for i in nano.yolo_layers:  # the projection before each output conv is activated, the others are not
        assert isinstance(nano.module_list[i - 2].linear.act, nn.ReLU6)
    assert not hasattr(nano.module_list[12].linear, "act")
    x = torch.rand(2, 150, 8, 8)
    assert torch.equal(nano.module_list[9](x), x)  # FCA passes its input through
    with pytest.raises(UserError, match="layer 14 .* not a compact block"):
        ablate_compact.edit(Darknet(CFG / "yolov3-tiny.cfg"), act_out=True)
    save_dir = ablate_compact.main(["--act-out", "--", "--cfg", str(CFG / "yolo-nano.cfg"), "--data", str(shapes_tiny),
                                    "--img-size", "64", "--epochs", "1", "--batch-size", "8", "--workers", "0",
                                    "--project", str(tmp_path), "--name", "ablate", "--device", "cpu"])
    assert (save_dir / "results.csv").read_text().count("\n") == 2  # header and the one epoch


# ------------------------------------------------------------------------------------------------ every shipped cfg

def test_depthwise_blocks_compute_in_fp32_under_cpu_autocast():
    """bf16 autocast on the CPU: a depthwise ConvBlock with k >= 3 computes in fp32 (oneDNN's bf16 depthwise backward
    is the slow path) and equals its plain fp32 output; 1x1 depthwise and dense blocks stay in bf16; in a parsed
    MobileNetV3-YOLO exactly the depthwise k >= 3 blocks are marked, and gradients still reach every weight."""
    torch.manual_seed(0)
    dw = models.ConvBlock(8, 8, 5, 1, 2, g=8, act=nn.Hardswish()).eval()
    dw1, dense = models.ConvBlock(8, 8, 1, g=8).eval(), models.ConvBlock(8, 8, 3, 1, 1).eval()
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        plain = dw(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, y1, yd = dw(x.bfloat16()), dw1(x), dense(x)
    assert (y.dtype, y1.dtype, yd.dtype) == (torch.float32, torch.bfloat16, torch.bfloat16)
    assert torch.equal(y, dw(x.bfloat16().float()))
    assert not torch.equal(plain, dw(x.bfloat16().float()))  # the bf16 input was really used, then upcast

    model = Darknet(CFG / "mobilenetv3-yolo.cfg", img_size=64)
    blocks = [m for m in model.modules() if isinstance(m, models.ConvBlock)]
    depthwise = [m for m in blocks if m.conv.groups == m.conv.in_channels > 1 and m.conv.kernel_size[0] >= 3]
    assert depthwise and [m for m in blocks if m.fp32_on_cpu] == depthwise
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sum(t.float().square().mean() for t in model(torch.rand(2, 3, 64, 64)))
    loss.backward()
    assert all(m.conv.weight.grad is not None and m.conv.weight.grad.dtype == torch.float32 for m in depthwise)


def test_every_shipped_cfg_is_covered():
    assert {p.name for p in CFG.glob("*.cfg")} == set(COMPACT + BIG + ["yolov3-tiny.cfg"])


def forward_backward(model, size=64):
    model.train()
    out = model(torch.rand(2, 3, size, size))
    assert [tuple(t.shape) for t in out] == [(2, 3, size // int(model.module_list[i].stride),
                                              size // int(model.module_list[i].stride), 5 + model.nc)
                                             for i in model.yolo_layers]
    sum(t.float().square().mean() for t in out).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(int(g.count_nonzero() > 0) for g in grads) > 0.9 * len(grads)
    model.zero_grad(set_to_none=True)


def weights_round_trip(model, cfg, path):
    save_darknet_weights(model, path)
    assert path.stat().st_size == models.darknet_file_bytes(model)
    other = load_darknet_weights(build(cfg, nc=model.nc, seed=7, img_size=64), path)
    a, b = model.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if "num_batches_tracked" not in k)
    return other


@pytest.mark.parametrize("cfg", BIG)
def test_big_cfgs_build_run_and_round_trip(cfg, tmp_path):
    model = build(cfg, nc=2, img_size=64)
    forward_backward(model)
    weights_round_trip(model.eval(), cfg, tmp_path / "m.weights")


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("cfg", COMPACT + ["yolov3-tiny.cfg"])
def test_cfg_runs_round_trips_and_exports(cfg, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = randomise(build(cfg, nc=3, img_size=64))  # no zero-gamma BN: gradient reaches every parameter
    forward_backward(model)
    model.eval()
    other = weights_round_trip(model, cfg, tmp_path / "m.weights").eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        inf, p = model(x)
        assert torch.equal(other(x)[0], inf)
    f = tmp_path / "m.onnx"
    names = ["inf"] + [f"p{i}" for i in range(len(p))]
    torch.onnx.export(model, (x[:1],), str(f), input_names=["images"], output_names=names,
                      dynamic_axes={"images": {0: "batch"}}, opset_version=17, dynamo=False)
    got = ort.InferenceSession(str(f)).run(None, {"images": x.numpy()})
    for g, ref in zip(got[1:], p):  # raw outputs to 1e-4
        np.testing.assert_allclose(g, ref.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[0], inf.numpy(), rtol=1e-4, atol=1e-3)  # decoded boxes, in pixels


# ------------------------------------------------------------------------------------------------ learning

@pytest.fixture(scope="module")
def shapes_batch(shapes_tiny):
    """Four shapes images at 64 px (letterboxed, no augmentation) and their targets."""
    from utils.datasets import LoadImagesAndLabels, parse_data_cfg

    ds = LoadImagesAndLabels(parse_data_cfg(shapes_tiny)["train"], img_size=64, augment=False, verbose=False)
    imgs, targets, _, _ = LoadImagesAndLabels.collate_fn([ds[i] for i in range(4)])
    return imgs.float() / 255, targets


@pytest.mark.parametrize("cfg", COMPACT)
def test_compact_cfg_learns(cfg, shapes_batch):
    """A test-sized run overfits four shapes images: the YOLO loss falls below half of where it started.

    Adam through the engine's optimiser builder (weight decay on conv and linear weights), 30 steps, 64 px; the
    loss is the engine's, with the default hyperparameters. Measured ratios (last / first) 0.2-0.36.
    """
    from utils.loss import ComputeLoss
    from utils.my_utils import hyp_from_args, parse_args, train_parser
    from utils.torch_utils import build_optimizer

    imgs, targets = shapes_batch
    model = build(cfg, nc=6, img_size=64).train()
    args = parse_args(train_parser(), [])
    loss_fn = ComputeLoss(model, hyp_from_args(args))
    opt = build_optimizer([model], "adam", 2e-3, 0.9, args.weight_decay)
    losses = []
    for _ in range(30):
        loss, _ = loss_fn(model(imgs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-3:]) < 0.5 * losses[0], [round(v, 3) for v in losses]

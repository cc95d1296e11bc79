"""Tests for utils/loss.py: target assignment, GIoU, perfect predictions, objectness targets, gains, autocast.

The tests build a small fake model (``yolo_layers`` into ``module_list``, YOLO-layer stand-ins with ``na, nc, no,
stride, anchors``) so they do not depend on models.py; one test runs the loss on a real Darknet when available.
"""
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from utils.loss import ComputeLoss, balance_for_strides, decode_matched, giou_xywh

ROOT = Path(__file__).resolve().parents[1]

YOLOV3_ANCHORS = [(10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326)]
YOLOV3_MASKS = [(6, 7, 8), (3, 4, 5), (0, 1, 2)]  # cfg order: strides 32, 16, 8
HYP = dict(box=0.05, obj=1.0, cls=0.5, cls_pw=1.0, obj_pw=1.0, anchor_t=4.0, label_smoothing=0.0)


class FakeYOLO(nn.Module):
    def __init__(self, anchors, nc, stride):
        super().__init__()
        self.na, self.nc, self.no, self.stride = len(anchors), nc, nc + 5, float(stride)
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32))


class FakeDarknet(nn.Module):
    """Identity layers with YOLO stand-ins at the given positions, like a Darknet's module_list."""

    def __init__(self, nc=3, img_size=416, scales=((32, YOLOV3_MASKS[0]), (16, YOLOV3_MASKS[1]), (8, YOLOV3_MASKS[2])),
                 anchors=YOLOV3_ANCHORS):
        super().__init__()
        mods, self.yolo_layers = [], []
        for stride, mask in scales:
            mods += [nn.Identity(), nn.Identity()]
            self.yolo_layers.append(len(mods))
            mods.append(FakeYOLO([anchors[k] for k in mask], nc, stride))
        self.module_list = nn.ModuleList(mods)
        self.nc, self.img_size = nc, img_size


def make_p(model, bs, img_size, fill=0.0, dtype=torch.float32):
    out = []
    for i in model.yolo_layers:
        m = model.module_list[i]
        n = int(img_size // m.stride)
        out.append(torch.full((bs, m.na, n, n, m.no), fill, dtype=dtype))
    return out


def px_target(img, cls, cx, cy, w, h, size=416):
    return [img, cls, cx / size, cy / size, w / size, h / size]


def set_perfect(p, d, logit=20.0):
    """Write raw outputs that decode exactly to each matched target, with confident right classes."""
    for i, (b, a, gj, gi) in enumerate(d["indices"]):
        tb, an, tc = d["tbox"][i], d["anchors"][i], d["tcls"][i]
        with torch.no_grad():
            p[i][b, a, gj, gi, 0:2] = torch.logit(tb[:, 0:2].double()).float()
            p[i][b, a, gj, gi, 2:4] = torch.log(tb[:, 2:4] / an)
            cls = torch.full((len(b), p[i].shape[-1] - 5), -logit)
            cls[torch.arange(len(b)), tc] = logit
            p[i][b, a, gj, gi, 5:] = cls


# ---------------------------------------------------------------------------------------------- helpers
def test_giou_identical_disjoint_and_nested():
    a = torch.tensor([[5.0, 5.0, 2.0, 2.0]])
    assert giou_xywh(a, a).item() == pytest.approx(1.0, abs=1e-6)
    # disjoint: boxes [0,1]x[0,1] and [2,3]x[0,1]: IoU 0, C = 3, U = 2 -> GIoU = -1/3
    b1, b2 = torch.tensor([[0.5, 0.5, 1.0, 1.0]]), torch.tensor([[2.5, 0.5, 1.0, 1.0]])
    assert giou_xywh(b1, b2).item() == pytest.approx(-1 / 3, abs=1e-6)
    # nested: enclosing box == union, so GIoU == IoU == area ratio
    inner = torch.tensor([[5.0, 5.0, 1.0, 2.0]])
    assert giou_xywh(inner, a).item() == pytest.approx(0.5, abs=1e-6)
    assert giou_xywh(a, inner).item() == pytest.approx(0.5, abs=1e-6)


def test_decode_matched():
    ps = torch.tensor([[0.0, 0.0, 0.0, math.log(2.0), 9.0], [0.0, 0.0, 100.0, 0.0, 9.0]])
    anchors = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    out = decode_matched(ps, anchors)
    assert torch.allclose(out[0], torch.tensor([0.5, 0.5, 3.0, 8.0]))
    assert torch.isfinite(out).all() and out[1, 2].item() == pytest.approx(1000.0, rel=1e-4)  # exp clamped


def test_balance_by_stride_not_position():
    assert balance_for_strides([32, 16, 8]) == [1.0, 4.0, 16.0]
    assert balance_for_strides([8, 16, 32]) == [16.0, 4.0, 1.0]
    assert balance_for_strides([32, 16]) == [1.0, 4.0]
    assert balance_for_strides([16]) == [4.0]
    assert balance_for_strides([64]) == [0.25]
    assert ComputeLoss(FakeDarknet(), HYP).balance == [1.0, 4.0, 16.0]


def test_every_cell_weighs_the_same_on_every_scale():
    """The objectness term is the BCE summed over all cells / the stride-32 cell count, whatever the scale count."""
    torch.manual_seed(0)
    for scales in (((32, (6, 7, 8)), (16, (3, 4, 5)), (8, (0, 1, 2))), ((32, (3, 4, 5)), (16, (1, 2, 3)))):
        model = FakeDarknet(nc=3, img_size=256, scales=scales)
        loss_fn = ComputeLoss(model, dict(HYP, obj=1.5))
        p = make_p(model, 2, 256)
        t = torch.tensor([[0, 1, 0.3, 0.4, 0.2, 0.3], [1, 0, 0.7, 0.6, 0.1, 0.1]])
        d = loss_fn.details(p, t)
        bce_sum = sum((nn.functional.softplus(pi[..., 4]) - d["tobj"][i] * pi[..., 4]).sum() for i, pi in enumerate(p))
        cells32 = 2 * 3 * (256 // 32) ** 2  # images x anchors x stride-32 cells
        want = 1.5 * (256 / 640) ** 2 * bce_sum / cells32
        assert d["lobj"].item() == pytest.approx(want.item(), rel=1e-5)


def test_default_objectness_gain_keeps_ultralytics_pull_on_tiny():
    """obj 1.5 with (32/s)^2 equals ultralytics' rule on yolov3-tiny: gain obj 1.0 x 3/nl = 1.5, balance [4, 1]."""
    tiny = FakeDarknet(nc=3, img_size=320, scales=((32, (3, 4, 5)), (16, (1, 2, 3))))
    loss_fn = ComputeLoss(tiny, dict(HYP, obj=1.5))
    old_rule = [1.0 * 1.5 * (320 / 640) ** 2 * b for b in (1.0, 4.0)]  # layer order: stride 32, then 16
    assert [loss_fn.gains["obj"] * b for b in loss_fn.balance] == pytest.approx(old_rule)


def test_gain_scaling():
    m80 = FakeDarknet(nc=80, img_size=640)
    assert ComputeLoss(m80, HYP).gains == pytest.approx({"box": 0.05, "obj": 1.0, "cls": 0.5})
    tiny = FakeDarknet(nc=3, img_size=320, scales=((32, (3, 4, 5)), (16, (1, 2, 3))))
    g = ComputeLoss(tiny, HYP).gains
    assert g == pytest.approx({"box": 0.05 * 1.5, "obj": 0.25, "cls": 0.5 * 3 / 80 * 1.5})  # obj: size only
    # hyp's img_size wins over the model's; a namespace works as well as a dict; autoscale=False keeps the YAML
    g = ComputeLoss(m80, SimpleNamespace(**HYP, img_size=320)).gains
    assert g["obj"] == pytest.approx(0.25)
    assert ComputeLoss(tiny, HYP, autoscale=False).gains == {"box": 0.05, "obj": 1.0, "cls": 0.5}


# ---------------------------------------------------------------------------------------------- assignment
def test_assignment_hand_made_case():
    """A 60x60 px box centred at (100, 50) px in a 416 input, YOLOv3 anchors, anchor_t = 4."""
    model = FakeDarknet()
    loss_fn = ComputeLoss(model, HYP)
    p = make_p(model, 2, 416)
    targets = torch.tensor([px_target(1, 2, 100, 50, 60, 60)])
    tcls, tbox, indices, anchors = loss_fn.build_targets(p, targets)
    # stride 32 (anchors 116x90, 156x198, 373x326): 373/60 > 4 -> anchors 0, 1; cell (gi, gj) = (3, 1)
    # stride 16 (30x61, 62x45, 59x119): all within 4x -> anchors 0, 1, 2; cell (6, 3)
    # stride 8 (10x13, 16x30, 33x23): 60/10 = 6 > 4 -> anchors 1, 2; cell (12, 6)
    expected = [(32, [0, 1], 3, 1), (16, [0, 1, 2], 6, 3), (8, [1, 2], 12, 6)]
    for i, (stride, anc, gi, gj) in enumerate(expected):
        b, a, j, k = indices[i]
        assert a.tolist() == anc
        assert b.tolist() == [1] * len(anc)
        assert j.tolist() == [gj] * len(anc) and k.tolist() == [gi] * len(anc)
        assert tcls[i].tolist() == [2] * len(anc)
        off = [100 / stride - gi, 50 / stride - gj, 60 / stride, 60 / stride]
        assert torch.allclose(tbox[i], torch.tensor([off] * len(anc)), atol=1e-5)
        mask = YOLOV3_MASKS[i]
        want = torch.tensor([YOLOV3_ANCHORS[mask[x]] for x in anc], dtype=torch.float32) / stride
        assert torch.allclose(anchors[i], want)


def test_assignment_many_targets_and_cell_clamp():
    model = FakeDarknet()
    loss_fn = ComputeLoss(model, HYP)
    p = make_p(model, 3, 416)
    targets = torch.tensor([
        px_target(0, 0, 100, 50, 60, 60),
        px_target(2, 1, 416, 416, 120, 100),  # centre on the far edge: cell index clamped into the grid
        px_target(1, 2, 200, 200, 0, 0),  # degenerate box: never matched
    ])
    _, tbox, indices, _ = loss_fn.build_targets(p, targets)
    b, a, gj, gi = indices[0]  # stride 32, 13x13
    edge = b == 2
    assert edge.any() and (gi[edge] == 12).all() and (gj[edge] == 12).all()
    assert torch.allclose(tbox[0][edge, 0:2], torch.ones(int(edge.sum()), 2))
    for b, *_ in indices:
        assert 1 not in b.tolist()


def test_multiple_anchors_and_ratio_threshold():
    """Grid 16x16 (stride 16 in a 256 input); anchors 1x1, 2x2, 8x8 cells."""
    scales = ((16, (0, 1, 2)),)
    anchors = [(16, 16), (32, 32), (128, 128)]
    model = FakeDarknet(nc=2, img_size=256, scales=scales, anchors=anchors)
    p = make_p(model, 1, 256)
    # a 2x2-cell box: ratios 2, 1, 4 -> anchors 0 and 1 (anchor 2 is exactly at anchor_t: strict, not matched)
    t = torch.tensor([[0, 0, 0.5 + 1 / 32, 0.5 + 1 / 32, 2 / 16, 2 / 16]])
    _, _, idx, _ = ComputeLoss(model, HYP).build_targets(p, t)
    assert idx[0][1].tolist() == [0, 1]
    # anchor_t = 8: every anchor matches
    _, _, idx, _ = ComputeLoss(model, dict(HYP, anchor_t=8.0)).build_targets(p, t)
    assert idx[0][1].tolist() == [0, 1, 2]
    # a wide, flat box 12x0.5 cells: height ratio 2 to anchor 0 but width ratio 12 -> no anchor within 4
    t = torch.tensor([[0, 1, 0.5, 0.5, 12 / 16, 0.5 / 16]])
    _, _, idx, _ = ComputeLoss(model, HYP).build_targets(p, t)
    assert idx[0][0].numel() == 0
    # no targets at all
    tcls, tbox, idx, anc = ComputeLoss(model, HYP).build_targets(p, torch.zeros(0, 6))
    assert tcls[0].numel() == 0 and tbox[0].shape == (0, 4) and anc[0].shape == (0, 2)


# ---------------------------------------------------------------------------------------------- loss values
def _batch():
    targets = torch.tensor([
        px_target(0, 0, 100, 50, 60, 60),
        px_target(0, 2, 300.3, 220.7, 150, 90),
        px_target(1, 1, 37.1, 390.9, 20, 31),
        px_target(1, 0, 200.5, 100.5, 300, 280),
    ])
    return targets


def test_perfect_predictions_zero_box_and_class_loss():
    model = FakeDarknet(nc=3)
    loss_fn = ComputeLoss(model, HYP)
    targets = _batch()
    p = make_p(model, 2, 416)
    d = loss_fn.details(p, targets)
    assert d["lbox"].item() > 0.01 and d["lcls"].item() > 0.01
    # every matched slot must be unique for a perfect prediction to exist
    for b, a, gj, gi in d["indices"]:
        keys = set(zip(b.tolist(), a.tolist(), gj.tolist(), gi.tolist()))
        assert len(keys) == len(b) > 0
    set_perfect(p, d)
    d = loss_fn.details(p, targets)
    assert d["lbox"].item() < 1e-4
    assert d["lcls"].item() < 1e-4
    for g in d["giou"]:
        assert torch.allclose(g, torch.ones_like(g), atol=1e-4)
    _, terms = loss_fn(p, targets)
    assert terms["box"] < 1e-4 and terms["cls"] < 1e-4 and terms["obj"] > 0


def test_objectness_target_is_the_iou():
    """One target, one scale/anchor: the prediction is a box nested in the target (GIoU = IoU = area ratio)."""
    scales = ((16, (0,)),)
    model = FakeDarknet(nc=2, img_size=256, scales=scales, anchors=[(32, 32)])
    loss_fn = ComputeLoss(model, HYP)
    t = torch.tensor([[0, 1, (5 + 0.5) / 16, (7 + 0.25) / 16, 2 / 16, 2 / 16]])  # 2x2 cells at cell (5, 7)
    p = make_p(model, 1, 256)
    with torch.no_grad():
        p[0][0, 0, 7, 5, 0:2] = torch.logit(torch.tensor([0.5, 0.25]))
        p[0][0, 0, 7, 5, 2:4] = torch.log(torch.tensor([0.5, 0.75]))  # 1.0 x 1.5 cells inside 2 x 2
        p[0][0, 0, 7, 5, 4] = 0.3
    d = loss_fn.details(p, t)
    iou = (1.0 * 1.5) / (2 * 2)
    tobj = d["tobj"][0]
    assert tobj[0, 0, 7, 5].item() == pytest.approx(iou, abs=1e-5)
    assert tobj.sum().item() == pytest.approx(iou, abs=1e-5)  # 0 everywhere else
    # the objectness term is that BCE: mean over cells of softplus(x) - t*x, times gain and balance
    x = p[0][..., 4]
    want = (nn.functional.softplus(x) - tobj * x).mean() * loss_fn.gains["obj"] * loss_fn.balance[0]
    assert d["lobj"].item() == pytest.approx(want.item(), rel=1e-5)
    # a prediction disjoint from its target gives a negative GIoU, clamped to 0
    with torch.no_grad():
        p[0][0, 0, 7, 5, 2:4] = math.log(0.01)
        p[0][0, 0, 7, 5, 0:2] = torch.logit(torch.tensor([0.01, 0.01]))
    t2 = torch.tensor([[0, 1, (5 + 0.99) / 16, (7 + 0.99) / 16, 1.5 / 16, 1.5 / 16]])  # [5.24, 6.74]^2: disjoint
    d = loss_fn.details(p, t2)
    assert d["giou"][0].item() < 0 and d["tobj"][0].sum().item() == 0


def test_total_is_batch_size_times_terms_and_gradients_flow():
    model = FakeDarknet(nc=3)
    loss_fn = ComputeLoss(model, HYP)
    torch.manual_seed(0)
    p = [x.normal_().requires_grad_() for x in make_p(model, 2, 416)]
    loss, terms = loss_fn(p, _batch())
    assert set(terms) == {"box", "obj", "cls"} and all(isinstance(v, float) for v in terms.values())
    assert loss.item() == pytest.approx(2 * (terms["box"] + terms["obj"] + terms["cls"]), rel=1e-6)
    assert min(terms.values()) > 0
    loss.backward()
    for x in p:
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        assert x.grad[..., :4].abs().sum() > 0 and x.grad[..., 5:].abs().sum() > 0  # box and class outputs


def test_no_targets_and_huge_wh_stay_finite():
    model = FakeDarknet(nc=3)
    loss_fn = ComputeLoss(model, HYP)
    p = [x.requires_grad_() for x in make_p(model, 2, 416)]
    loss, terms = loss_fn(p, torch.zeros(0, 6))
    assert terms["box"] == 0 and terms["cls"] == 0 and terms["obj"] > 0
    loss.backward()
    assert all(torch.isfinite(x.grad).all() for x in p)
    p = [x.detach().fill_(1e4).requires_grad_() for x in p]  # exp(1e4) would be inf without the clamp
    loss, _ = loss_fn(p, _batch())
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(x.grad).all() for x in p)


def test_single_class_has_no_class_term_and_label_smoothing():
    model = FakeDarknet(nc=1)
    torch.manual_seed(0)
    p = [x.normal_() for x in make_p(model, 2, 416)]
    t = _batch()
    t[:, 1] = 0
    assert ComputeLoss(model, HYP)(p, t)[1]["cls"] == 0
    # label smoothing: perfect logits no longer give ~0 class loss
    model = FakeDarknet(nc=3)
    p = make_p(model, 2, 416)
    lf = ComputeLoss(model, dict(HYP, label_smoothing=0.1))
    set_perfect(p, lf.details(p, _batch()))
    assert lf(p, _batch())[1]["cls"] > 1e-3


def test_bf16_autocast_inputs():
    model = FakeDarknet(nc=3)
    loss_fn = ComputeLoss(model, HYP)
    torch.manual_seed(0)
    p32 = [x.normal_() for x in make_p(model, 2, 416)]
    p16 = [x.bfloat16().requires_grad_() for x in p32]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, terms = loss_fn(p16, _batch())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    ref, ref_terms = loss_fn([x.float() for x in p16], _batch())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()
    assert all(x.grad is not None and x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad).all() for x in p16)


def test_ddp_style_wrapper_is_unwrapped():
    class Wrapper(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.module = m

    model = FakeDarknet()
    assert ComputeLoss(Wrapper(model), HYP).strides == [32.0, 16.0, 8.0]


# ---------------------------------------------------------------------------------------------- real model
def _real_tiny():
    cfg = ROOT / "cfg" / "yolov3-tiny.cfg"
    if not cfg.is_file():
        pytest.skip("cfg/yolov3-tiny.cfg not present yet")
    models = pytest.importorskip("models")
    if not hasattr(models, "Darknet"):
        pytest.skip("models.Darknet not available yet")
    return models.Darknet(str(cfg), img_size=256, nc=3)


def test_real_darknet_training_output_backpropagates():
    torch.manual_seed(0)
    model = _real_tiny().train()
    loss_fn = ComputeLoss(model, dict(HYP, img_size=256))
    assert loss_fn.balance == balance_for_strides(loss_fn.strides) and sorted(loss_fn.strides) == [16.0, 32.0]
    imgs = torch.rand(2, 3, 256, 256)
    p = model(imgs)
    assert [tuple(x.shape) for x in p] == [(2, 3, 8, 8, 8), (2, 3, 16, 16, 8)]
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.3, 0.2], [1, 2, 0.2, 0.7, 0.1, 0.15], [1, 1, 0.8, 0.3, 0.5, 0.6]])
    loss, terms = loss_fn(p, targets)
    assert torch.isfinite(loss) and terms["box"] > 0 and terms["obj"] > 0 and terms["cls"] > 0
    loss.backward()
    grads = [q.grad for q in model.parameters() if q.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_autocast():
    model = FakeDarknet(nc=3).cuda()
    loss_fn = ComputeLoss(model, HYP)
    torch.manual_seed(0)
    p = [x.normal_().cuda().half().requires_grad_() for x in make_p(model, 2, 416)]
    with torch.autocast("cuda", dtype=torch.float16):
        loss, terms = loss_fn(p, _batch())  # targets on the CPU: moved by the loss
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    ref, _ = loss_fn([x.detach().cpu().float() for x in p], _batch())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    assert all(torch.isfinite(x.grad).all() for x in p)

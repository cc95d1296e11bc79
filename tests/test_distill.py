"""utils/distill.py: the Chen et al. 2017 terms, the frozen teacher, feature pairs and their one-line errors."""
import copy

import pytest
import torch
import torch.nn as nn

import my_kd
from models import Darknet, make_checkpoint
from utils import engine
from utils.checkpoint import save_checkpoint
from utils.distill import (AdaptationLayer, DistillPlugin, Teacher, binary_kl, bounded_regression_loss, check_pairs,
                           default_feature_pairs, load_teacher, match_heads, regression_error, soft_target_loss,
                           stage_feature_pairs)
from utils.errors import UserError
from utils.loss import ComputeLoss
from utils.my_utils import hyp_from_args, kd_parser, parse_args

TINY = "cfg/yolov3-tiny.cfg"
TARGETS = torch.tensor([[0, 1, 0.50, 0.50, 0.30, 0.30],
                        [1, 2, 0.30, 0.30, 0.20, 0.40],
                        [1, 4, 0.70, 0.60, 0.60, 0.50],
                        [2, 0, 0.60, 0.60, 0.50, 0.50]])


def tiny(nc=6, seed=0, img_size=64):
    torch.manual_seed(seed)
    return Darknet(TINY, img_size=img_size, nc=nc)


def kd_args(*extra):
    return parse_args(kd_parser(), ["--teacher-weights", "unused.pt", *extra])


def plugin(teacher, **kw):
    kw.setdefault("img_size", 64)
    return DistillPlugin(teacher, **kw)


def step(plug, student, imgs, targets=TARGETS, loss=None):
    out, feats = student(imgs, features=list(plug.feature_layers))
    if not student.training:
        out = out[1]
    loss = loss or ComputeLoss(student, hyp_from_args(kd_args()))
    return plug.losses(imgs, targets, out, dict(zip(plug.feature_layers, feats)), loss), out


# ------------------------------------------------------------------------------------------------------ teacher
def test_teacher_is_frozen_and_stays_in_eval_mode(tmp_path):
    net = tiny()
    save_checkpoint(make_checkpoint(net, [str(i) for i in range(6)]), tmp_path / "t.pt")
    teacher = load_teacher(None, tmp_path / "t.pt")
    assert not teacher.training and not teacher.model.training
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.model.training
    teacher.model.train()  # reaching past the wrapper: forward puts it back
    teacher(torch.rand(1, 3, 64, 64))
    assert not teacher.model.training
    with pytest.raises(UserError, match="--teacher-weights is required"):
        load_teacher(None, None)


# ------------------------------------------------------------------------------------------------------ terms
def test_every_term_is_zero_when_the_student_equals_the_teacher():
    teacher = tiny(seed=1)
    with torch.no_grad():  # give objectness/classes some spread so the soft term is not trivially zero
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    student = copy.deepcopy(teacher).eval()
    plug = plugin(Teacher(teacher), student_features=[8, 13], teacher_features=[8, 13], hint_weight=1.0,
                  kd_object_weight=4.0, kd_temperature=2.0).check(student, 64)
    for layer in plug.adapters.layers:
        layer.identity_()
    terms, _ = step(plug, student, torch.rand(3, 3, 64, 64))
    assert set(terms) == {"hint", "soft", "bound"}
    for k, v in terms.items():
        assert float(v.detach()) == pytest.approx(0.0, abs=1e-7), k
    # the same with another student: every term moves away from 0
    other = tiny(seed=2).eval()
    terms, _ = step(plug, other, torch.rand(3, 3, 64, 64))
    terms = {k: float(v.detach()) for k, v in terms.items()}
    assert terms["hint"] > 1e-4 and terms["soft"] > 1e-6 and terms["bound"] != 0.0


def test_identity_adaptation_and_3x3():
    x = torch.randn(2, 5, 7, 7)
    for k in (1, 3):
        layer = AdaptationLayer(5, 5, k).identity_()
        assert torch.allclose(layer(x), x, atol=1e-6)
    assert AdaptationLayer(5, 9, 3)(x).shape == (2, 9, 7, 7)
    with pytest.raises(ValueError):
        AdaptationLayer(5, 9).identity_()


def test_bound_is_zero_where_the_student_beats_the_teacher_by_the_margin_and_positive_otherwise():
    m = 1e-2
    err_t = torch.tensor([0.50, 0.10, 0.30, 0.300, 0.2])
    err_s = torch.tensor([0.10, 0.50, 0.30, 0.295, 0.2 - 2 * m], requires_grad=True)
    loss = bounded_regression_loss(err_s, err_t, m)
    lb = loss.detach()
    # beats by more than m -> 0; worse -> positive (the excess over the teacher); equal -> 0 but active (eq. 4)
    assert lb[0] == 0 and lb[4] == 0
    assert lb[1] == pytest.approx(0.4) and lb[1] > 0
    assert lb[2] == 0
    assert -m < float(lb[3]) < 0  # inside the margin: active, value never below -m
    loss.sum().backward()
    assert err_s.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # gradient of ||R_s - y||^2 exactly where eq. 4 is active


def test_regression_error_is_zero_on_the_target_and_independent_of_the_anchor():
    tbox = torch.tensor([[0.25, 0.75, 2.0, 3.0]])
    for anchor in ([1.0, 1.5], [4.0, 0.5]):
        a = torch.tensor([anchor])
        t = torch.cat((torch.logit(tbox[:, :2]), (tbox[:, 2:] / a).log()), 1)
        assert float(regression_error(t, a, tbox)) == pytest.approx(0.0, abs=1e-10)
    # doubling the width costs log(2)^2 whatever the anchor
    a = torch.tensor([[1.0, 1.0]])
    t = torch.cat((torch.logit(tbox[:, :2]), (tbox[:, 2:] * torch.tensor([2.0, 1.0]) / a).log()), 1)
    assert float(regression_error(t, a, tbox)) == pytest.approx(torch.log(torch.tensor(2.0)).item() ** 2, rel=1e-5)


def test_binary_kl_is_bce_minus_entropy_and_zero_on_equal_logits():
    zs, zt = torch.tensor([0.3, -2.0, 4.0]), torch.tensor([1.0, -2.0, -1.0])
    for T in (1.0, 3.0):
        ps, pt = torch.sigmoid(zs / T), torch.sigmoid(zt / T)
        bce = -(pt * ps.log() + (1 - pt) * (1 - ps).log())
        ent = -(pt * pt.log() + (1 - pt) * (1 - pt).log())
        assert torch.allclose(binary_kl(zs, zt, T), bce - ent, atol=1e-6)
    assert binary_kl(zs, zs).abs().max() == 0


def test_soft_loss_weights_cells_the_teacher_sees_as_objects():
    # one scale, one anchor, two cells, one class: cell 0 the teacher sees as an object, cell 1 as background
    p_t = torch.zeros(1, 1, 1, 2, 6)
    p_t[0, 0, 0, 0, 4], p_t[0, 0, 0, 1, 4] = 20.0, -20.0
    p_s = torch.zeros_like(p_t)
    pairs = [(0, torch.tensor([0]))]
    obj_only = soft_target_loss(p_s, p_t, pairs, object_weight=1.0)[0]
    weighted = soft_target_loss(p_s, p_t, pairs, object_weight=5.0)[0]
    kl = binary_kl(torch.zeros(2), torch.tensor([20.0, -20.0]))
    assert float(obj_only) == pytest.approx(float(kl.mean()), rel=1e-5)
    assert float(weighted) == pytest.approx(float((kl * torch.tensor([5.0, 1.0])).mean()), rel=1e-4)


@pytest.fixture(scope="module")
def yolov3():
    return Darknet("cfg/yolov3.cfg", img_size=64, nc=6)


def test_heads_pair_by_stride_and_nearest_anchor(yolov3):
    s, t = tiny(), yolov3
    pairs = match_heads(s, t)  # tiny: strides 32, 16; yolov3: 32, 16, 8
    assert [p[0] for p in pairs] == [0, 1] and pairs[0][1].tolist() == [0, 1, 2]
    back = match_heads(t, s)
    assert back[2] is None and back[0][0] == 0 and back[1][0] == 1


# ------------------------------------------------------------------------------------------------------ gradients
def test_gradients_reach_the_student_and_adapters_never_the_teacher():
    teacher, student = tiny(seed=1), tiny(seed=2).train()
    plug = plugin(Teacher(teacher), student_features=[8], teacher_features=[8], hint_weight=1.0).check(student, 64)
    imgs = torch.rand(3, 3, 64, 64)
    terms, out = step(plug, student, imgs)
    for name in ("hint", "soft", "bound"):
        student.zero_grad(set_to_none=True)
        plug.adapters.zero_grad(set_to_none=True)
        terms[name].backward(retain_graph=True)
        grads = [p.grad for p in student.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name
        if name == "hint":
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in plug.adapters.parameters())
        assert all(p.grad is None for p in teacher.parameters()), name
    assert not teacher.training


# ------------------------------------------------------------------------------------------------------ pairs
def test_default_pairs_take_stage_outputs_of_the_same_resolution(yolov3):
    assert default_feature_pairs(tiny(), yolov3, 64) == ([8], [61])  # tiny 256x26x26 <- yolov3 512x26x26 (at 416)
    assert default_feature_pairs(yolov3, yolov3, 64) == ([36], [36])  # the 52x52 stage output (at 416)
    assert default_feature_pairs(tiny(), tiny(), 64) == ([8], [8])
    assert stage_feature_pairs(tiny(), yolov3, 64, n=2) == ([8, 13], [61, 79])
    assert stage_feature_pairs(yolov3, yolov3, 64, n=3) == ([36, 61, 79], [36, 61, 79])


@pytest.mark.parametrize("kw, pattern", [
    (dict(student_features=[8], teacher_features=[13]),
     r"student yolov3-tiny.cfg layer 8 \(256x4x4\) and teacher yolov3-tiny.cfg layer 13 \(256x2x2\) differ"),
    (dict(student_features=[8, 13], teacher_features=[8]), "--student-features has 2 layer.*--teacher-features 1"),
    (dict(student_features=[99], teacher_features=[8]), r"--student-features 99: yolov3-tiny.cfg has layers 0..23"),
    (dict(student_features=[8], teacher_features=[-1]), r"--teacher-features -1: yolov3-tiny.cfg has layers 0..23"),
    (dict(student_features=[16], teacher_features=[16]), r"layer 16 of yolov3-tiny.cfg is a \[yolo\] layer"),
    (dict(student_features=[8], teacher_features=None), "--student-features needs --teacher-features"),
])
def test_setup_problems_are_one_line_errors(kw, pattern):
    with pytest.raises(UserError, match=pattern) as e:
        plugin(Teacher(tiny()), hint_weight=1.0, **kw).check(tiny(), 64)
    assert "\n" not in str(e.value)


def test_class_count_mismatch_is_a_one_line_error():
    with pytest.raises(UserError, match="teacher yolov3-tiny.cfg has 3 classes, student yolov3-tiny.cfg has 6") as e:
        check_pairs(tiny(nc=6), tiny(nc=3), [8], [8], 64)
    assert "\n" not in str(e.value)


def test_bad_weights_are_one_line_errors():
    for kw, pattern in ((dict(kd_mu=1.5), "--kd-mu"), (dict(kd_temperature=0.0), "--kd-temperature"),
                        (dict(hint_loss="l3"), "--hint-loss"), (dict(soft_weight=-1.0), "--soft-weight")):
        with pytest.raises(UserError, match=pattern):
            plugin(Teacher(tiny()), **kw)


# ------------------------------------------------------------------------------------------------------ engine
def test_mu_scales_the_detection_loss_only_when_soft_targets_are_on():
    assert plugin(Teacher(tiny()), kd_mu=0.7).detection_loss_scale(None) == 0.7
    assert plugin(Teacher(tiny()), kd_mu=0.7, soft_weight=0.0).detection_loss_scale(None) == 1.0
    assert engine.detection_scales([plugin(Teacher(tiny()), kd_mu=0.7)], None) == dict.fromkeys(("box", "obj", "cls"), 0.7)


@pytest.mark.parametrize("scope, mixed", [("classification", ("obj", "cls")), ("class", ("cls",))])
def test_mu_scope_scales_only_the_terms_it_names(scope, mixed):
    """--kd-mu-scope classification (Chen et al.: mu mixes the classification loss, objectness being YOLO's
    background class) or class (the original project): the engine's detection loss is box + obj + cls with mu on
    the named hard terms only, computed once."""
    student, imgs = tiny(seed=2).train(), torch.rand(3, 3, 64, 64)
    plug = plugin(Teacher(tiny(seed=1)), kd_mu=0.7, hint_weight=0.0, bound_weight=0.0, kd_mu_scope=scope).check(student, 64)
    scales = engine.detection_scales([plug], None)
    assert scales == {"box": 1.0, "obj": 0.7 if "obj" in mixed else 1.0, "cls": 0.7}
    loss = ComputeLoss(student, hyp_from_args(kd_args()))
    terms, out = step(plug, student, imgs, loss=loss)
    assert set(terms) == {"soft"}  # no second pass over the hard loss
    total, _ = loss(out, TARGETS, scales)
    hard = loss.details(out, TARGETS)
    want = (hard["lbox"] + sum((0.7 if k in mixed else 1.0) * hard["l" + k] for k in ("obj", "cls"))) * 3
    assert float(total) == pytest.approx(float(want), rel=1e-5) and float(total) < float(hard["loss"])
    total.backward()  # differentiable: it moves the student
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    with pytest.raises(UserError, match="kd-mu-scope"):
        plugin(Teacher(tiny()), kd_mu_scope="box")


def test_yaml_defaults_are_the_originals():
    args = kd_args()
    assert args.kd_mu == 0.7 and args.kd_margin == pytest.approx(1e-5) and args.bound_weight == 0.5
    assert args.hint_loss == "l2" and args.adapt_kernel == 1 and args.teacher_features is None
    assert args.kd_class_cells == "objects"  # ours, not the original's: YOLO's classes are p(class | object)
    assert parse_args(kd_parser(), ["--kd-mu", "0.5"]).kd_mu == 0.5  # a typed flag wins


def test_distillation_epoch_keeps_the_teacher_in_eval_mode_with_its_bn_statistics(shapes_tiny, tmp_path):
    teacher_net = tiny(seed=1)
    save_checkpoint(make_checkpoint(teacher_net, [str(i) for i in range(6)]), tmp_path / "teacher.pt")
    args = parse_args(kd_parser(), ["--cfg", TINY, "--teacher-weights", str(tmp_path / "teacher.pt"),
                                    "--data", str(shapes_tiny), "--img-size", "64", "--batch-size", "8",
                                    "--nominal-batch-size", "8", "--workers", "0", "--epochs", "1", "--notest",
                                    "--no-amp", "--student-features", "8", "--teacher-features", "8",
                                    "--project", str(tmp_path), "--name", "kd"])
    args, model, save_dir, _ = engine.prepare(args)
    plugins = my_kd.build_plugins(args, model)
    kd = plugins[0]
    teacher = kd.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    adapters_before = [p.detach().clone() for p in kd.adapters.parameters()]
    trainer = engine.Trainer(args, model, save_dir, plugins=plugins)
    trainer.fit()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    bns = [k for k in before if "running_" in k or "num_batches_tracked" in k]
    assert bns
    for k, v in teacher.state_dict().items():
        assert torch.equal(v.cpu(), before[k]), f"teacher {k} changed"
    assert all(p.grad is None for p in teacher.parameters())
    assert any(not torch.equal(a, b.detach().cpu()) for a, b in zip(adapters_before, kd.adapters.parameters()))
    header = (save_dir / "results.csv").read_text().splitlines()[0].split(",")
    assert {"train/hint", "train/soft", "train/bound"} <= set(header)
    # adaptation layers: in last.pt's plug-in state (resume), never in the exported weights
    last = torch.load(save_dir / "weights" / "last.pt", weights_only=False)  # see report: engine momentum dtype
    state = last["train_state"]["plugins"]["distill"]
    assert set(state["adapters"]) == {"layers.0.weight", "layers.0.bias"}
    assert not any("adapt" in k or k.startswith("layers.") for k in last["model"])
    fresh = plugin(Teacher(tiny()), student_features=[8], teacher_features=[8]).check(tiny(), 64)
    fresh.load_state_dict(state)
    for a, b in zip(fresh.adapters.parameters(), kd.adapters.parameters()):
        assert torch.equal(a, b.detach().cpu())
    with pytest.raises(UserError, match="resume: the run distilled features"):
        plugin(Teacher(tiny()), student_features=[13], teacher_features=[13]).check(tiny(), 64).load_state_dict(state)


def test_adapters_are_trained_by_the_main_optimiser():
    plug = plugin(Teacher(tiny()), student_features=[8, 13], teacher_features=[8, 13]).check(tiny(), 64)
    (mod,) = plug.modules()
    assert isinstance(mod, nn.Module) and len(list(mod.parameters())) == 4
    assert plugin(Teacher(tiny()), hint_weight=0.0).check(tiny(), 64).modules() == []


def test_anchor_mismatches_name_pairs_beyond_anchor_t_and_vanish_with_fitted_anchors():
    from utils.anchors import apply_anchors
    from utils.distill import anchor_mismatches

    nano, tiny = Darknet("cfg/yolo-nano.cfg", img_size=256, nc=6), Darknet("cfg/yolov3-tiny.cfg", img_size=256, nc=6)
    # Nano's VOC anchors all lie within anchor_t of tiny's (stride 16: 23x27, 37x58, 81x82, mask 1,2,3)
    assert anchor_mismatches(nano, tiny, match_heads(nano, tiny), thr=4.0) == []
    # stride-16 anchors 5x5 and 400x300 meet tiny's smallest and largest stride-16 anchors beyond anchor_t
    apply_anchors(nano, [[12, 12], [16, 16], [20, 20], [5, 5], [33, 33], [400, 300], [55, 55], [72, 72], [95, 95]])
    got = anchor_mismatches(nano, tiny, match_heads(nano, tiny), thr=4.0)
    assert [(s, a, t) for s, a, t, _ in got] == [(1, [5.0, 5.0], [23.0, 27.0]), (1, [400.0, 300.0], [81.0, 82.0])]
    assert [round(r, 2) for *_, r in got] == [round(27 / 5, 2), round(400 / 81, 2)]
    apply_anchors(nano, [[12, 12], [16, 16], [20, 20], [25, 25], [33, 33], [42, 42], [55, 55], [72, 72], [95, 95]])
    assert anchor_mismatches(nano, tiny, match_heads(nano, tiny), thr=4.0) == []


def test_setup_repairs_heads_after_the_student_anchors_change_and_notes_mismatches():
    from types import SimpleNamespace

    from utils.anchors import apply_anchors

    nano, teacher = Darknet("cfg/yolo-nano.cfg", img_size=64, nc=6), tiny()
    apply_anchors(nano, [[5, 5]] * 3 + [[400, 300]] * 3 + [[81, 82]] * 3)  # strides 8, 16, 32
    plug = plugin(teacher, hint_weight=0.0).check(nano, 64)  # checked first, as my_kd.py does
    logs = []
    trainer = SimpleNamespace(model=nano, hyp={"anchor_t": 4.0}, main=True, log=logs.append,
                              device=torch.device("cpu"), fmt=torch.contiguous_format, args=None)
    plug.setup(trainer)
    assert sum("is paired with teacher anchor" in m for m in logs) == 3  # 400x300 vs tiny's 81x82, three times
    # what --autoanchor does in the trainer's setup: new anchors; the plug-in must pair the new ones
    apply_anchors(nano, [[5, 5]] * 3 + [[23, 27]] * 3 + [[81, 82]] * 3)
    logs.clear()
    plug.setup(trainer)
    assert not any("is paired with teacher anchor" in m for m in logs)
    assert plug.head_pairs[1][1].tolist() == [0, 0, 0]  # stride 16: tiny's 23x27 (its head's anchor index 0)


def test_class_term_on_object_cells_ignores_what_the_teacher_calls_background():
    # two cells: the teacher sees an object in cell 0 (objectness logit 20), background in cell 1 (-20)
    p_t = torch.zeros(1, 1, 1, 2, 7)
    p_t[0, 0, 0, 0, 4], p_t[0, 0, 0, 1, 4] = 20.0, -20.0
    p_t[..., 5] = 3.0
    p_s = torch.zeros_like(p_t)
    pairs = [(0, torch.tensor([0]))]
    _, lcls = soft_target_loss(p_s, p_t, pairs, class_cells="objects")
    kl = binary_kl(torch.zeros(2), torch.tensor([3.0, 0.0])).mean()  # per cell: mean over the two classes
    assert float(lcls) == pytest.approx(float(kl), rel=1e-5)
    p_s[0, 0, 0, 1, 5:] = 7.0  # the student's classes at the background cell change: the term does not
    assert float(soft_target_loss(p_s, p_t, pairs, class_cells="objects")[1]) == pytest.approx(float(lcls), rel=1e-5)
    assert float(soft_target_loss(p_s, p_t, pairs, class_cells="all")[1]) > 2 * float(lcls)
    with pytest.raises(UserError, match="--kd-class-cells cells: use all or objects"):
        soft_target_loss(p_s, p_t, pairs, class_cells="cells")

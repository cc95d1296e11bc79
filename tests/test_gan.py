"""utils/gan.py: the adversarial gradient reaches the student (not the teacher, not D), D's own optimiser, D learns,
two stages, label noise, collapse warnings, state for resume, one-line errors."""
import io

import pytest
import torch

import my_kd_gan
from models import Darknet, make_checkpoint
from utils import engine
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.distill import Teacher
from utils.errors import UserError
from utils.gan import Discriminator, GANPlugin, PassThrough, output_feature_pairs
from utils.my_utils import gan_parser, parse_args

TINY = "cfg/yolov3-tiny.cfg"


def tiny(nc=6, seed=0, img_size=64):
    torch.manual_seed(seed)
    return Darknet(TINY, img_size=img_size, nc=nc)


def plugin(teacher, **kw):
    kw.setdefault("img_size", 64)
    kw.setdefault("epochs", 3)
    return GANPlugin(teacher if isinstance(teacher, Teacher) else Teacher(teacher), **kw)


def features(plug, student, imgs):
    out, feats = student(imgs, features=list(plug.feature_layers))
    return out, dict(zip(plug.feature_layers, feats))


def grad_norm(params):
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


class FakeTrainer:
    def __init__(self, epoch=0):
        self.epoch, self.main, self.lines = epoch, True, []

    def log(self, line):
        self.lines.append(line)


# ------------------------------------------------------------------------------------------------- gradient flow
def test_adversarial_gradient_reaches_the_student_and_never_the_teacher_or_the_discriminator():
    student, teacher = tiny(seed=0), Teacher(tiny(seed=1))
    plug = plugin(teacher).check(student, 64)
    assert plug.student_features == [15, 22] and plug.teacher_features == [15, 22]  # the raw prediction maps
    assert all(isinstance(a, PassThrough) for a in plug.adapters.layers) and plug.modules() == []
    student.train()
    imgs = torch.rand(4, 3, 64, 64)
    _, feats = features(plug, student, imgs)
    terms = plug.losses(imgs, feats)
    assert set(terms) == {"adv"} and terms["adv"].requires_grad  # D's figures are logged, not added to the loss
    assert set(plug.step_metrics(None)) == {"D_loss", "D_real", "D_fake"}
    assert all(isinstance(v, float) for v in plug.step_metrics(None).values())
    for p in plug.discriminators.parameters():
        assert p.grad is None  # D's own step zeroed its gradients (set_to_none)
    terms["adv"].backward()
    # through D, into the student: the output convs and the first conv of the backbone
    assert grad_norm(student.module_list[15].parameters()) > 0
    assert grad_norm(student.module_list[22].parameters()) > 0
    assert grad_norm(student.module_list[0].parameters()) > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in plug.discriminators.parameters())  # the student's loss never trains D
    assert all(p.requires_grad for p in plug.discriminators.parameters())  # restored for D's next step


def test_adaptation_layer_where_channels_differ_gets_the_adversarial_gradient():
    student, teacher = tiny(seed=0), Teacher(tiny(seed=1))
    # student 13 (256 ch) vs teacher 14 (512 ch) at the same 2x2 grid: a 1x1 adaptation layer
    plug = plugin(teacher, student_features=[13], teacher_features=[14]).check(student, 64)
    (adapters,) = plug.modules()
    assert plug.discriminators.nets[0].channels == 512
    student.train()
    imgs = torch.rand(4, 3, 64, 64)
    terms = plug.losses(imgs, features(plug, student, imgs)[1])
    terms["adv"].backward()
    assert grad_norm(adapters.parameters()) > 0 and grad_norm(student.module_list[13].parameters()) > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_discriminator_shape_and_parameters():
    d = Discriminator(75)
    convs = [m for m in d.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (75, 256, (1, 1)), (256, 512, (1, 1)), (512, 256, (1, 1)), (256, 128, (1, 1)), (128, 64, (1, 1))]
    assert sum(p.numel() for p in d.parameters()) == 456_065
    d.eval()
    assert d(torch.rand(3, 75, 13, 13)).shape == (3,) and d(torch.rand(2, 75, 2, 2)).shape == (2,)
    assert Discriminator(75, 3).features[0].kernel_size == (3, 3)
    with pytest.raises(UserError, match="odd kernel"):
        Discriminator(75, 2)


def test_original_discriminator_is_the_original_projects_shape():
    """--d-arch original: the original's models.py Discriminator (read at 72bb656): five 1x1 convs with biases,
    BN, leaky 0.1, 7x7 pooling, 3136 -> 1024 -> 128 -> 1: 3,669,569 parameters at 75 channels."""
    d = Discriminator(75, arch="original")
    convs = [m for m in d.features if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is not None for c in convs) and d.pool.output_size == 7
    linears = [(m.in_features, m.out_features) for m in d.head if isinstance(m, torch.nn.Linear)]
    assert linears == [(3136, 1024), (1024, 128), (128, 1)]
    assert {m.negative_slope for m in d.modules() if isinstance(m, torch.nn.LeakyReLU)} == {0.1}
    assert sum(p.numel() for p in d.parameters()) == 3_669_569
    assert d.eval()(torch.rand(2, 75, 13, 13)).shape == (2,)


def test_original_discriminator_optimiser_is_nesterov_with_the_inverse_exp_factor():
    teacher = Teacher(tiny(seed=1))
    plug = plugin(teacher, d_arch="original", d_optimizer="original", d_lr=0.01, epochs=4).check(tiny())
    assert all(g["nesterov"] for g in plug.d_optimizer.param_groups)
    lrs = []
    for epoch in range(4):
        plug.before_epoch(FakeTrainer(epoch), epoch)
        lrs.append(plug.d_optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.01 * (1 - 10 ** (-4 * (1 - e / 4))) for e in range(4)])
    plug = plugin(teacher, epochs=4).check(tiny())  # the default: constant lr, plain momentum
    plug.before_epoch(FakeTrainer(3), 3)
    assert plug.d_optimizer.param_groups[0]["lr"] == 0.01 and not plug.d_optimizer.param_groups[0]["nesterov"]


def test_default_pairs_are_the_prediction_maps_paired_by_stride():
    nano = Darknet("cfg/yolo-nano.cfg", nc=20)
    assert output_feature_pairs(nano, Darknet("cfg/yolov3.cfg", nc=20)) == ([40, 44, 48], [105, 93, 81])
    assert output_feature_pairs(nano, tiny(nc=20)) == ([44, 48], [22, 15])


# ------------------------------------------------------------------------------------------ the discriminator
def test_with_a_frozen_student_the_discriminator_learns_to_separate_teacher_from_student():
    student, teacher = tiny(seed=0), Teacher(tiny(seed=1))
    plug = plugin(teacher, student_features=[15], teacher_features=[15]).check(student, 64)
    student.eval()
    plug.reseed(0, 0)
    torch.manual_seed(5)
    first = None
    for _ in range(40):
        imgs = torch.rand(8, 3, 64, 64)
        with torch.no_grad():
            real = [plug.run_teacher(imgs)[1][15]]
            fake = [student(imgs, features=[15])[1][0]]
        stats = plug.discriminator_step(real, fake)
        first = first or stats
    # held-out images, as D is used (one mixed batch): teacher maps -> real, student maps -> fake
    imgs = torch.rand(16, 3, 64, 64)
    with torch.no_grad():
        logits = plug.discriminators.nets[0](torch.cat((plug.run_teacher(imgs)[1][15],
                                                        student(imgs, features=[15])[1][0])))
    acc = 0.5 * ((logits[:16] > 0).float().mean() + (logits[16:] < 0).float().mean())
    assert acc > 0.9, f"accuracy {acc:.3f}"
    assert stats["D_loss"] < first["D_loss"]
    assert plug.d_steps == 40


def test_the_generator_term_moves_the_student_towards_real_against_a_fixed_discriminator():
    student, teacher = tiny(seed=0), Teacher(tiny(seed=1))
    plug = plugin(teacher, student_features=[15], teacher_features=[15], soft_labels=False,
                  label_flip=0.0).check(student, 64)
    student.train()
    torch.manual_seed(3)
    imgs = torch.rand(8, 3, 64, 64)
    real = [plug.run_teacher(imgs)[1][15]]
    for _ in range(10):  # D learns to call the student fake
        with torch.no_grad():
            fake = [student(imgs, features=[15])[1][0]]
        plug.discriminator_step(real, fake)
    head = student.module_list[15]  # only the student's output conv moves; D stays fixed from here on
    opt = torch.optim.SGD(head.parameters(), lr=0.05)
    d_before = [p.detach().clone() for p in plug.discriminators.parameters()]
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = plug.generator_loss([student(imgs, features=[15])[1][0]], real)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses  # -log D(F_s) falls: D now takes the student's maps for real
    assert all(torch.equal(a, b) for a, b in zip(d_before, plug.discriminators.parameters()))


def test_labels_soft_ranges_flips_and_reseeding():
    plug = plugin(tiny(seed=1)).check(tiny(seed=0), 64)
    plug.reseed(3, 2)
    real, fake = plug.labels(20000, True, "cpu"), plug.labels(20000, False, "cpu")
    def within(y, lo, hi):
        return (y >= lo - 1e-6) & (y <= hi + 1e-6)

    for y, own, other in ((real, (0.7, 1.0), (0.0, 0.3)), (fake, (0.0, 0.3), (0.7, 1.0))):
        kept, flipped = within(y, *own), within(y, *other)
        assert (kept | flipped).all() and 0.04 < flipped.float().mean() < 0.06  # 5% flipped
        assert abs(float(y[kept].mean()) - sum(own) / 2) < 0.01  # uniform over the range
    plug.reseed(3, 2)
    assert torch.equal(plug.labels(20000, True, "cpu"), real)
    hard = plugin(tiny(seed=1), soft_labels=False, label_flip=0.0).check(tiny(seed=0), 64)
    assert torch.equal(hard.labels(5, True, "cpu"), torch.ones(5))
    assert torch.equal(hard.labels(5, False, "cpu"), torch.zeros(5))


def test_a_non_finite_discriminator_loss_skips_the_step():
    plug = plugin(tiny(seed=1), student_features=[15], teacher_features=[15]).check(tiny(seed=0), 64)
    before = [p.detach().clone() for p in plug.discriminators.parameters()]
    real = torch.rand(2, 33, 2, 2)
    plug.discriminator_step([real], [real * float("nan")])
    assert plug.d_skipped == 1 and plug.d_steps == 0
    assert all(torch.equal(a, b) for a, b in zip(before, plug.discriminators.parameters()))


# ------------------------------------------------------------------------------------------------------ stages
def test_two_stages_scale_the_detection_loss_then_stop_the_game():
    plug = plugin(tiny(seed=1), epochs=30).check(tiny(seed=0), 64)  # second_stage 2/3 of 30 epochs
    assert plug.stage2_epoch() == 20 and plug.stage(19) == 1 and plug.stage(20) == 2
    assert plug.detection_loss_scale(FakeTrainer(0)) == 0.05 and plug.detection_loss_scale(FakeTrainer(20)) == 1.0
    assert plugin(tiny(seed=1), second_stage=5, epochs=30).stage2_epoch() == 5
    assert plugin(tiny(seed=1), second_stage=0.6667, epochs=1).stage2_epoch() == 1  # at least one epoch of game
    # stage 2: no teacher, no discriminator, no terms
    plug.run_teacher = lambda imgs: pytest.fail("the teacher ran in stage 2")
    assert plug.extra_loss(FakeTrainer(20), torch.rand(2, 3, 64, 64), None, None, {}) == {}
    assert plug.after_epoch(FakeTrainer(20), 20, {}) == {"gan/stage": 2}
    with pytest.raises(UserError, match="--second-stage 0: the adversarial stage would never run"):
        plugin(tiny(seed=1), second_stage=0)


def test_collapse_is_a_warning_and_a_column():
    plug = plugin(tiny(seed=1)).check(tiny(seed=0), 64)
    cases = [([(1.0, 1.0), (1.0, 1.0)], "was 1 on every batch"),
             ([(1.0, 0.0), (1.0, 0.0)], "on the student (fake) maps was 0 on every batch"),
             ([(0.0, 1.0), (0.0, 0.75)], "on the teacher (real) maps was 0 on every batch"),
             ([(1.0, 1.0), (0.75, 1.0)], None),
             ([(0.5, 0.5), (0.0, 1.0)], None)]
    for accs, pattern in cases:
        trainer = FakeTrainer(0)
        plug._reset_epoch_stats()
        for r, f in accs:
            plug._record({"D_loss": 0.5, "D_real": r, "D_fake": f})
        row = plug.after_epoch(trainer, 0, {})
        assert row["gan/stage"] == 1 and row["gan/collapsed"] == int(pattern is not None)
        if pattern:
            assert len(trainer.lines) == 1 and trainer.lines[0].startswith("warning: epoch 1:")
            assert pattern in trainer.lines[0]
        else:
            assert trainer.lines == []


# ------------------------------------------------------------------------------------------------ state, resume
def test_state_dict_holds_the_discriminators_and_their_optimiser():
    student, teacher = tiny(seed=0), Teacher(tiny(seed=1))
    plug = plugin(teacher).check(student, 64)
    student.train()
    for _ in range(2):
        imgs = torch.rand(2, 3, 64, 64)
        plug.losses(imgs, features(plug, student, imgs)[1])
    buf = io.BytesIO()
    torch.save(plug.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # checkpoints load weights-only
    fresh = plugin(Teacher(tiny(seed=1))).check(tiny(seed=0), 64)
    fresh.load_state_dict(state)
    for a, b in zip(fresh.discriminators.state_dict().values(), plug.discriminators.state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = fresh.d_optimizer.state_dict(), plug.d_optimizer.state_dict()
    assert sa["param_groups"][0]["lr"] == 0.01 and sa["param_groups"][0]["momentum"] == 0.937
    assert len(sb["state"]) == len(list(plug.discriminators.parameters()))
    for k, v in sb["state"].items():
        assert torch.equal(sa["state"][k]["momentum_buffer"], v["momentum_buffer"])
    assert fresh.d_steps == 2
    with pytest.raises(UserError, match="discriminators have kernels"):
        plugin(Teacher(tiny(seed=1)), d_kernel_size=3).check(tiny(seed=0), 64).load_state_dict(state)


def test_engine_epoch_optimisers_are_disjoint_and_the_teacher_never_changes(shapes_tiny, tmp_path):
    save_checkpoint(make_checkpoint(tiny(seed=1), [str(i) for i in range(6)]), tmp_path / "teacher.pt")
    args = parse_args(gan_parser(), ["--cfg", TINY, "--teacher-weights", str(tmp_path / "teacher.pt"),
                                     "--data", str(shapes_tiny), "--img-size", "64", "--batch-size", "4",
                                     "--nominal-batch-size", "8", "--workers", "0", "--epochs", "1", "--notest",
                                     "--student-features", "13", "15", "--teacher-features", "14", "15",
                                     "--project", str(tmp_path), "--name", "gan"])
    args, model, save_dir, _ = engine.prepare(args)
    (gan,) = my_kd_gan.build_plugins(args, model)
    teacher_before = {k: v.clone() for k, v in gan.teacher.state_dict().items()}
    d_before = [p.detach().clone() for p in gan.discriminators.parameters()]
    trainer = engine.Trainer(args, model, save_dir, plugins=[gan])
    trainer.fit()
    # the student's optimiser: student + adaptation layer only; D's: D only
    main_ids = {id(p) for p in trainer.optimizer_parameters()}
    student_ids = {id(p) for p in model.parameters()} | {id(p) for p in gan.adapters.parameters()}
    d_ids = {id(p) for p in gan.discriminators.parameters()}
    d_opt_ids = {id(p) for g in gan.d_optimizer.param_groups for p in g["params"]}
    assert main_ids == student_ids and d_opt_ids == d_ids
    assert not main_ids & d_ids and not main_ids & {id(p) for p in gan.teacher.parameters()}
    # D stepped once per batch (4 batches of 4 images; the student every 2: nominal batch 8)
    assert gan.d_steps == len(trainer.train_loader) == 4
    assert any(not torch.equal(a, b.detach()) for a, b in zip(d_before, gan.discriminators.parameters()))
    for k, v in gan.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), f"teacher {k} changed"
    assert not gan.teacher.training and all(p.grad is None for p in gan.teacher.parameters())
    header = (save_dir / "results.csv").read_text().splitlines()[0].split(",")
    assert {"train/adv", "train/D_loss", "train/D_real", "train/D_fake", "gan/stage", "gan/collapsed"} <= set(header)
    last = load_checkpoint(save_dir / "weights" / "last.pt")
    state = last["train_state"]["plugins"]["gan"]
    assert set(state["discriminators"]) == set(gan.discriminators.state_dict())
    assert set(last["model"]) == set(model.state_dict())  # the exported student: no D, no adaptation layer


# ------------------------------------------------------------------------------------------- options, errors
def test_yaml_defaults_are_the_originals():
    args = parse_args(gan_parser(), ["--teacher-weights", "t.pt"])
    assert args.d_lr == 0.01 and args.d_momentum == 0.937 and args.stage1_det_scale == 0.05
    assert args.soft_labels is True and args.label_flip == 0.05 and args.d_kernel_size == [1]
    assert args.second_stage == pytest.approx(2 / 3, abs=1e-3) and args.adv_weight == 1.0
    assert args.hint_weight == 0.0 and not hasattr(args, "soft_weight") and not hasattr(args, "bound_weight")
    typed = parse_args(gan_parser(), ["--second-stage", "7", "--d-kernel-size", "1", "3", "--soft-labels", "false"])
    assert typed.second_stage == 7 and typed.d_kernel_size == [1, 3] and typed.soft_labels is False


@pytest.mark.parametrize("kw, pattern", [
    (dict(d_kernel_size=[1, 3, 5]), "--d-kernel-size has 3 values for 2 feature pairs"),
    (dict(d_kernel_size=[2]), "--d-kernel-size 2: use an odd kernel size"),
    (dict(label_flip=0.7), "--label-flip 0.7"),
    (dict(d_momentum=1.5), "--d-momentum 1.5"),
    (dict(student_features=[15], teacher_features=[22]), "differ in spatial size at --img-size 64"),
    (dict(student_features=[], teacher_features=[]), "needs at least one feature pair"),
])
def test_setup_problems_are_one_line_errors(kw, pattern):
    with pytest.raises(UserError) as e:
        plugin(tiny(seed=1), **kw).check(tiny(seed=0), 64)
    assert pattern in str(e.value) and "\n" not in str(e.value)


def test_classical_kd_terms_are_not_flags_of_my_kd_gan(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(gan_parser(), ["--teacher-weights", "t.pt", "--soft-weight", "1"])
    assert "unrecognized arguments: --soft-weight 1" in capsys.readouterr().err
    recipe = tmp_path / "gan.yaml"
    recipe.write_text("soft_weight: 1.0\n")
    with pytest.raises(UserError, match="unknown key 'soft_weight'"):
        parse_args(gan_parser(), ["--teacher-weights", "t.pt", "--params", str(recipe)])


def test_hint_term_is_optional():
    student, teacher = tiny(seed=0), Teacher(tiny(seed=1))
    plug = plugin(teacher, hint_weight=0.5).check(student, 64)
    student.train()
    imgs = torch.rand(2, 3, 64, 64)
    terms = plug.losses(imgs, features(plug, student, imgs)[1])
    assert terms["hint"] > 0 and terms["hint"].requires_grad

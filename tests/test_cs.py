"""utils/cs.py: Continuous Sparsification (Savarese et al. 2019) soft masks and plug-in: gates start at exactly 1,
the soft mask tends to the hard one, the L1 term trains the logits only, the reset rule, the ticket's network, the
EMA/checkpoint contract (plain keys, what the engine evaluates is what a checkpoint holds), plug-in state round trip,
and sparsity growing with lambda."""
import argparse
import math
import types

import pytest
import torch
import torch.nn as nn

from models import Darknet, prunable_parameters
from utils.cs import (ContinuousSparsification, CSPlugin, SoftFilterMasks, SoftMasks, reset_logits,
                      soft_masks_from_state, temperature)
from utils.export import fold_empty_channels
from utils.pruning import Masks, rewind
from utils.torch_utils import ModelEMA, build_optimizer, recompute_bn_stats

CFG = "cfg/yolov3-tiny.cfg"


class Small(nn.Module):
    """Three convs with BN, the last one linear: a regression network for the lambda sweep."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.bn(self.a(x))))))


def convs(model):
    return [(n, p) for n, p in model.named_parameters() if p.ndim == 4]


def darknet(seed=0):
    torch.manual_seed(seed)
    return Darknet(CFG, img_size=64, nc=3)


def outputs(model, x):
    """The raw YOLO maps, flattened: ``p`` in training mode, the second item of ``(inf, p)`` in eval mode."""
    out = model(x)
    return torch.cat([o.flatten() for o in (out if model.training else out[1])])


def fake_trainer(model, epochs=2):
    """What the plug-in reads of a ``Trainer``; set ``.ema`` after the plug-in's setup, as the engine does."""
    t = types.SimpleNamespace(model=model, epochs=epochs, ema=None, main=False, lf=lambda e: 1.0,
                              log=lambda *a: None)
    t.eval_model = lambda: t.ema.ema if t.ema is not None else t.model
    return t


def step_logits(plugin):
    """What the engine does with a plug-in's optimisers after each weights' step (one process, no grad scaler)."""
    for optimizer in plugin.optimizers():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def random_logits(soft, seed=1, low=0.1):
    """Logits away from 0 (|s| >= low), about half positive."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for s in soft.logits.values():
            v = torch.rand(s.shape, generator=g) * 2 + low
            sign = torch.where(torch.rand(s.shape, generator=g) < 0.5, -1.0, 1.0)
            s.copy_(v * sign)


# ------------------------------------------------------------------------------------------------ gates
@pytest.mark.parametrize("s0", [-0.1, -0.01, 0.0, 0.3])
def test_gates_start_at_exactly_one_and_the_masked_forward_equals_the_unmasked(s0):
    model = darknet().train()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        plain = outputs(model, x)
    soft = SoftMasks.init(prunable_parameters(model), s0)
    assert soft.beta == 1.0 and len(soft) == 11
    for n in soft.names():
        assert torch.equal(soft.soft_gate(n), torch.ones_like(soft.logits[n]))  # σ(1·s0)/σ(s0), every element
    soft.attach(model)
    masked = outputs(model, x).detach()  # training mode with gradients: the soft gates
    assert torch.equal(masked, plain)
    soft.detach(model)
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_large_beta_soft_mask_equals_hard_mask():
    model = darknet()
    soft = SoftMasks.init(prunable_parameters(model), -0.1)
    random_logits(soft)
    soft.beta = 200.0  # the final temperature: σ(200·s) for |s| >= 0.1 is within 2.1e-9 of the step
    hard = soft.hard_masks()
    for n, s in soft.logits.items():
        assert (torch.sigmoid(soft.beta * s.detach()) - hard[n].float()).abs().max() <= 1e-6
        assert (soft.soft_gate(n).detach() - soft.hard_gate(n)).abs().max() <= 1e-6
        assert torch.equal(soft.hard_gate(n) > 0, s > 0)
    assert 0.3 < hard.sparsity() < 0.7 and soft.hard_sparsity() == hard.sparsity()
    assert soft.soft_sparsity() == pytest.approx(hard.sparsity(), abs=1e-6)
    # the network: training mode (soft gates) at β = 200 against eval mode (hard gates), BN frozen in both
    soft.attach(model)
    x = torch.rand(2, 3, 64, 64)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    a = outputs(model, x).detach()  # with gradients: the soft gates
    with torch.no_grad():
        b = outputs(model.eval(), x)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    soft.detach(model)


def test_precise_bn_recomputes_the_statistics_of_the_hard_gated_network_it_scores():
    """Before an evaluation the engine recomputes BN statistics in train mode without gradients: the hooked network
    must use the hard gates there, as the evaluation does, so its statistics equal those of the folded network."""
    model = darknet()
    soft = SoftMasks.init(prunable_parameters(model), -0.1)
    random_logits(soft)
    soft.beta = 3.0  # mid-round: soft and hard gates differ
    folded = darknet()
    folded.load_state_dict(soft.fold(model.state_dict()))
    soft.attach(model)
    batches = [torch.rand(2, 3, 64, 64) for _ in range(3)]
    recompute_bn_stats(model, batches)
    recompute_bn_stats(folded, batches)
    bn = lambda m: {k: v for k, v in m.state_dict().items() if "running" in k}  # noqa: E731
    for k, v in bn(model).items():
        assert torch.allclose(v, bn(folded)[k], atol=1e-5, rtol=1e-4), k
    with torch.no_grad():
        assert torch.allclose(model.eval()(batches[0])[0], folded.eval()(batches[0])[0], atol=1e-4, rtol=1e-4)
    model.train()
    trained = outputs(model, batches[0]).detach()  # with gradients the soft gates still train
    with torch.no_grad():
        assert not torch.allclose(trained, outputs(folded.train(), batches[0]), atol=1e-3)
    soft.detach(model)


def test_temperature_schedule():
    assert [temperature(e, 5, 200.0) for e in (0, 4)] == [1.0, 200.0]
    assert temperature(2, 5, 200.0) == pytest.approx(200 ** 0.5)
    betas = [temperature(e, 10, 200.0) for e in range(10)]
    assert all(b2 / b1 == pytest.approx(200 ** (1 / 9)) for b1, b2 in zip(betas, betas[1:]))  # geometric


def test_reset_rule_is_exact():
    s = torch.tensor([-0.5, -0.0078125, 0.0, 0.0009765625, 0.25, 3.0, -2.0])  # exactly representable values
    beta_t, s0 = 200.0, -0.125
    expected = torch.tensor([-100.0, -1.5625, -0.125, -0.125, -0.125, -0.125, -400.0])
    assert torch.equal(reset_logits(s, beta_t, s0), expected)
    soft = SoftMasks({"w": s.clone()}, s0, beta=beta_t)
    soft.reset(beta_t)
    assert torch.equal(soft.logits["w"].detach(), expected) and soft.beta == 1.0
    assert soft.logits["w"].requires_grad and soft.logits["w"].is_leaf
    assert not soft.hard_masks()["w"].any()  # kept weights restart at s0 < 0, below the threshold
    # general values: min(β_T s, s0) elementwise, bit for bit
    g = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(reset_logits(g, 200.0, -0.1), torch.minimum(g * 200.0, torch.full_like(g, -0.1)))


def test_original_reset_rule_lets_removed_weights_return():
    """--cs-reset original: beta <- 1 before s <- min(beta s, s0), so s <- min(s, s0): a logit just below 0 stays
    there (one small step brings its weight back), where the paper's rule sends it to -200x."""
    s = torch.tensor([-0.5, -0.0078125, 0.0, 0.25, 3.0])
    s0 = -0.125
    assert torch.equal(reset_logits(s, 200.0, s0, "original"), torch.tensor([-0.5, -0.125, -0.125, -0.125, -0.125]))
    soft = SoftMasks({"w": s.clone()}, s0, beta=200.0)
    soft.reset(200.0, "original")
    assert soft.beta == 1.0 and soft.logits["w"][1] == -0.125
    args = cs_args(cs_reset="original", rounds=2)
    assert ContinuousSparsification(args, None).reset_rule == "original"
    assert ContinuousSparsification(cs_args(), None).reset_rule == "paper"  # the default


def test_gate_penalty_is_the_sigmoid_penalty_over_sigma_s0():
    soft = SoftMasks.init([("a.weight", torch.zeros(3, 4)), ("b.weight", torch.zeros(5))], -0.1)
    random_logits(soft)
    soft.beta = 2.0
    paper, gate = soft.l1(), soft.l1("gate")
    assert float(gate) == pytest.approx(float(paper) / float(torch.sigmoid(torch.tensor(-0.1))), rel=1e-6)
    assert float(gate) / float(paper) == pytest.approx(2.1052, abs=1e-3)  # 1/σ(-0.1): the original weighs λ 2.1x
    model = darknet()
    plugin = ContinuousSparsification(cs_args(cs_penalty="gate", cs_lambda=1e-3), None).plugin(
        SoftMasks.init(prunable_parameters(model), -0.1))
    plugin.setup(fake_trainer(model))
    term = plugin.extra_loss(fake_trainer(model), None, None, None, None)["cs_l1"]
    assert float(term) == pytest.approx(1e-3 * float(plugin.masks.l1()) / float(torch.sigmoid(torch.tensor(-0.1))))


@pytest.mark.parametrize("nesterov", [True, False])
def test_mask_optimiser_nesterov_follows_the_flag(nesterov):
    model = darknet()
    plugin = ContinuousSparsification(cs_args(mask_nesterov=nesterov), None).plugin(
        SoftMasks.init(prunable_parameters(model), -0.1))
    plugin.setup(fake_trainer(model))
    assert plugin.optimizer.param_groups[0]["nesterov"] is nesterov
    plugin.close()


# --------------------------------------------------------------------------------------- the L1 term
def test_l1_gradient_reaches_the_logits_and_not_the_weights():
    model = darknet().train()
    soft = SoftMasks.init(prunable_parameters(model), -0.1)
    random_logits(soft, low=0.0)
    plugin = CSPlugin(soft, cs_lambda=1e-3, mask_lr=0.1, mask_momentum=0.9, final_temperature=200.0)
    trainer = fake_trainer(model)
    plugin.setup(trainer)
    plugin.before_epoch(trainer, 1)  # β = 200 (the last of 2 epochs)
    assert soft.beta == 200.0
    term = plugin.extra_loss(trainer, None, None, None, {})["cs_l1"]
    term.backward()
    assert all(p.grad is None for p in model.parameters()), "the L1 term reached the weights"
    for s in soft.logits.values():
        sig = torch.sigmoid(200.0 * s.detach())
        assert torch.allclose(s.grad, 1e-3 * 200.0 * sig * (1 - sig), rtol=1e-5, atol=1e-12)
    expected = 1e-3 * sum(float(torch.sigmoid(200.0 * s.detach()).sum()) for s in soft.logits.values())
    assert float(term.detach()) == pytest.approx(expected)
    # the detection loss reaches both (through the masked forward)
    for s in soft.logits.values():
        s.grad = None
    soft.beta = 1.0
    outputs(model, torch.rand(2, 3, 64, 64)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in prunable_parameters(model))
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in soft.logits.values())
    # the engine steps the logits' own SGD (the plug-in's optimizers()) and clears their gradients
    before = {n: s.detach().clone() for n, s in soft.logits.items()}
    step_logits(plugin)
    assert all(s.grad is None for s in soft.logits.values())
    assert any(not torch.equal(before[n], s.detach()) for n, s in soft.logits.items())
    group = plugin.optimizer.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.9 and group["weight_decay"] == 0 and group["lr"] == 0.1
    plugin.close()


def test_logits_stay_out_of_the_main_optimiser_the_ema_and_the_state_dict():
    model = darknet().train()
    keys = list(model.state_dict())
    soft = SoftMasks.init(prunable_parameters(model), -0.1)
    plugin = CSPlugin(soft)
    plugin.setup(fake_trainer(model))
    optimizer = build_optimizer([model], "sgd", 0.01, 0.937, 5e-4)  # as the engine builds it, after setup
    ema = ModelEMA(model)
    logit_ids = {id(s) for s in soft.logits.values()}
    assert not logit_ids & {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert list(model.state_dict()) == keys == list(ema.ema.state_dict())  # plain keys, no 'parametrizations'
    assert not logit_ids & {id(p) for p in ema.ema.parameters()}
    assert all(model.get_parameter(n) is p for n, p in prunable_parameters(model))  # the weights are untouched
    ema.update(model)
    plugin.close()


# --------------------------------------------------------------------------------- EMA and checkpoints
def test_checkpoint_model_is_the_network_the_engine_evaluates():
    """The EMA (a deep copy of the hooked model) is evaluated with hard gates; the checkpoint's ``model`` is that
    network with the gates folded in, plain keys, exact zeros where s <= 0: a plain Darknet loading it (as test.py
    does, masks applied) gives the same outputs bit for bit."""
    from utils.checkpoint import _apply_masks

    model = darknet()
    soft = SoftMasks.init(prunable_parameters(model), -0.1)
    random_logits(soft)
    plugin = CSPlugin(soft)
    trainer = fake_trainer(model)
    plugin.setup(trainer)
    trainer.ema = ModelEMA(model, decay=0.5, tau=1)  # the engine builds the EMA after the plug-ins' setup
    with torch.no_grad():  # training moves the raw weights; the EMA follows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    trainer.ema.update(model)
    entries = plugin.checkpoint_entries(trainer)
    state = entries["model"]
    assert list(state) == list(model.state_dict())
    masks = Masks.from_state_dict(entries["masks"])
    assert masks.sparsity() == soft.hard_sparsity() and set(entries["cs"]) >= {"beta", "mask_init"}
    for n, m in masks.items():
        assert torch.equal(m, soft.logits[n] > 0) and not state[n][~m].any()
        assert not torch.signbit(state[n][~m]).any()  # +0.0, as sparse storage expects
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        evaluated = trainer.ema.ema(x)[0]
        plain = darknet(5)
        plain.load_state_dict(state)
        _apply_masks(plain, entries["masks"], "ckpt")
        assert torch.equal(plain.eval()(x)[0], evaluated)
        # the raw EMA itself (no hooks) computes another network: the mask matters
        raw = darknet(5)
        raw.load_state_dict(trainer.ema.ema.state_dict())
        assert not torch.allclose(raw.eval()(x)[0], evaluated)
    plugin.close()
    assert all(not m._forward_pre_hooks for m in trainer.ema.ema.modules())


def test_plugin_state_round_trip_restores_logits_optimiser_and_raw_ema():
    torch.manual_seed(0)
    model = Small().train()
    soft = SoftMasks.init(convs(model), -0.1)
    plugin = CSPlugin(soft, cs_lambda=1e-2, mask_lr=0.5)
    trainer = fake_trainer(model)
    plugin.setup(trainer)
    trainer.ema = ModelEMA(model, decay=0.5, tau=1)
    x = torch.rand(4, 3, 8, 8)
    for _ in range(3):
        (model(x).square().mean() + plugin.extra_loss(trainer, x, None, None, {})["cs_l1"]).backward()
        step_logits(plugin)
        trainer.ema.update(model)
    state = plugin.state_dict()
    raw_ema = {k: v.clone() for k, v in trainer.ema.ema.state_dict().items()}

    model2 = Small().train()
    plugin2 = CSPlugin(SoftMasks.from_state_dict(state["masks"]), cs_lambda=1e-2, mask_lr=0.5)
    trainer2 = fake_trainer(model2)
    plugin2.setup(trainer2)
    trainer2.ema = ModelEMA(model2)
    trainer2.ema.ema.load_state_dict(plugin.checkpoint_entries(trainer)["model"])  # what the engine restores
    plugin2.load_state_dict(state)
    for k, v in raw_ema.items():
        assert torch.equal(trainer2.ema.ema.state_dict()[k], v), k
    for n in soft.names():
        assert torch.equal(plugin2.masks.logits[n], soft.logits[n])
        assert torch.equal(plugin2.optimizer.state[plugin2.masks.logits[n]]["momentum_buffer"],
                           plugin.optimizer.state[soft.logits[n]]["momentum_buffer"])
    plugin.close()
    plugin2.close()


# ------------------------------------------------------------------------------------------- filter gates
def filter_gates(cfg, seed=0):
    torch.manual_seed(seed)
    model = Darknet(cfg, img_size=64, nc=3)
    return model, SoftFilterMasks.init(model, [n for n, _ in prunable_parameters(model)], -0.1)


@pytest.mark.parametrize("cfg", ["cfg/yolov3-tiny.cfg", "cfg/mobilenetv3-yolo.cfg"])
def test_filter_gates_start_at_one_and_the_folded_ticket_is_the_gated_network(cfg):
    model, soft = filter_gates(cfg)
    x = torch.rand(2, 3, 64, 64)
    model.train()
    dense = outputs(model, x)
    soft.attach(model)
    assert torch.equal(outputs(model, x), dense)  # σ(s0)/σ(s0) = 1 on every channel
    random_logits(soft, seed=5)
    model.eval()
    with torch.no_grad():
        gated = outputs(model, x)
    soft.detach(model)
    plain = Darknet(cfg, img_size=64, nc=3).eval()
    plain.load_state_dict(soft.fold(model.state_dict()))
    with torch.no_grad():
        assert torch.allclose(outputs(plain, x), gated, atol=1e-4)
    masks = soft.hard_masks()
    assert masks.violations(plain) == 0
    for k, (shape, extra) in soft.units.items():
        keep = soft.alive(k)
        assert masks[k].shape == shape and torch.equal(masks[k].flatten(1).all(1), keep)
        assert torch.equal(masks[k].flatten(1).any(1), keep)  # whole rows (the ticket adds the consumers' columns)
        assert extra and all(torch.equal(masks[c], keep) for c in extra)
    folded, report = fold_empty_channels(plain, round_to=1)
    closed = sum(int((s.detach() <= 0).sum()) for s in soft.logits.values())
    assert 0 < report["removed"] <= closed and report["params_after"] < report["params_before"]
    with torch.no_grad():
        assert torch.allclose(outputs(folded.eval(), x), gated, atol=1e-4)


def test_the_convs_a_shortcut_sums_share_one_gate_per_channel_and_fold():
    """coupled (--shortcut-filters together): the convs a [shortcut] sums read their lead's gates, so a channel
    closes in all of them at once and the folded network, narrower in the sums too, equals the gated one; the gates
    and their ties survive the plugin state."""
    torch.manual_seed(0)
    model = Darknet("cfg/yolov3.cfg", img_size=64, nc=3)
    kernels = [n for n, _ in prunable_parameters(model)]
    soft = SoftFilterMasks.init(model, kernels, -0.1, coupled=True)
    apart = SoftFilterMasks.init(model, kernels, -0.1)
    assert len(soft.tied) == len(set(soft.units) - set(apart.units)) - 5 > 20  # 5 sums, each with one lead
    assert len(soft.logits) == len(soft.units) - len(soft.tied)
    lead = next(iter(soft.tied.values()))
    members = [k for k in soft.units if soft.lead(k) == lead]
    assert soft.per_gate(lead) == sum(math.prod(soft.units[k][0][1:]) for k in members)
    random_logits(soft, seed=3)
    x = torch.rand(1, 3, 64, 64)
    soft.attach(model)
    model.eval()
    with torch.no_grad():
        gated = outputs(model, x)
    soft.detach(model)
    plain = Darknet("cfg/yolov3.cfg", img_size=64, nc=3).eval()
    plain.load_state_dict(soft.fold(model.state_dict()))
    masks = soft.hard_masks()
    rows = [masks[k].flatten(1).any(1) for k in members]
    assert all(torch.equal(r, rows[0]) for r in rows) and 0 < int((~rows[0]).sum()) < len(rows[0])
    folded, report = fold_empty_channels(plain, round_to=1)
    assert all(report["layers"][int(k.split(".")[1])][1] == int(rows[0].sum()) for k in members)
    with torch.no_grad():
        assert torch.allclose(outputs(folded.eval(), x), gated, atol=1e-4)
    back = soft_masks_from_state(soft.state_dict())
    assert back.tied == soft.tied and torch.equal(back.hard_masks()[members[-1]], masks[members[-1]])


def test_a_conv_with_every_gate_closed_keeps_its_largest_so_the_ticket_stays_connected():
    """A tensor of gates all <= 0 (here the first [shortcut] sum's shared gates and one plain conv's) keeps exactly
    its largest gate open, in the hard masks, the eval gate and the fold alike: the folded network still depends on
    its input (with the sum closed it would output the same maps for every image)."""
    torch.manual_seed(0)
    model = Darknet("cfg/yolov3.cfg", img_size=64, nc=3)
    soft = SoftFilterMasks.init(model, [n for n, _ in prunable_parameters(model)], -0.1, coupled=True)
    random_logits(soft, seed=4)
    lead = next(iter(soft.tied.values()))
    plain_conv = next(k for k in soft.logits if k not in soft.tied.values())
    with torch.no_grad():
        for k, best in ((lead, 3), (plain_conv, 0)):
            s = soft.logits[k]
            s.copy_(-1.0 - torch.rand(s.shape))
            s[best] = -0.5
    assert sorted(soft.reopened()) == sorted([lead, plain_conv])
    masks = soft.hard_masks()
    for k in [plain_conv, *[m for m in soft.units if soft.lead(m) == lead]]:
        best = 3 if soft.lead(k) == lead else 0
        rows = masks[k].flatten(1).any(1)
        assert int(rows.sum()) == 1 and bool(rows[best])
        assert torch.equal(soft.hard_gate(k) > 0, rows)
    soft.attach(model)
    model.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        gated = outputs(model, x)
    soft.detach(model)
    plain = Darknet("cfg/yolov3.cfg", img_size=64, nc=3).eval()
    plain.load_state_dict(soft.fold(model.state_dict()))
    folded, _ = fold_empty_channels(plain, round_to=1)
    with torch.no_grad():
        assert torch.allclose(outputs(folded.eval(), x), gated, atol=1e-4)
        a, b = (folded(x[i:i + 1])[1] for i in range(2))
    assert not all(torch.allclose(p, q) for p, q in zip(a, b))


def test_filter_penalty_weighs_each_gate_by_its_filter_and_the_lr_by_its_inverse():
    model, soft = filter_gates(CFG)
    random_logits(soft, seed=2)
    soft.beta = 3.0
    per = {k: math.prod(shape[1:]) for k, (shape, _) in soft.units.items()}
    expected = sum(float(torch.sigmoid(3.0 * s.detach()).sum()) * per[k] for k, s in soft.logits.items())
    assert float(soft.l1().detach()) == pytest.approx(expected, rel=1e-6)
    assert soft.numel() == sum(s.numel() * per[k] for k, s in soft.logits.items())
    plugin = CSPlugin(soft, cs_lambda=1e-6, mask_lr=0.5)
    trainer = fake_trainer(model.train(), epochs=4)
    trainer.lf = lambda e: 0.25
    plugin.setup(trainer)
    plugin.before_epoch(trainer, 1)
    lrs = {id(g["params"][0]): g["lr"] for g in plugin.optimizer.param_groups}
    assert len(lrs) == len(soft) and all(lrs[id(s)] == pytest.approx(0.5 * 0.25 / per[k])
                                         for k, s in soft.logits.items())
    loss = outputs(model, torch.rand(2, 3, 64, 64)).square().mean() + plugin.extra_loss(trainer, None, None, None,
                                                                                        {})["cs_l1"]
    loss.backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in soft.logits.values())
    step_logits(plugin)
    plugin.close()


def test_filter_gates_survive_the_plugin_state_and_the_checkpoint_folds_bn():
    model, soft = filter_gates(CFG)
    random_logits(soft, seed=4)
    plugin = CSPlugin(soft)
    trainer = fake_trainer(model.train())
    plugin.setup(trainer)
    trainer.ema = ModelEMA(model)
    state = plugin.state_dict()
    back = soft_masks_from_state(state["masks"])
    assert isinstance(back, SoftFilterMasks) and back.units == soft.units
    assert all(torch.equal(back.logits[n], soft.logits[n]) for n in soft.names())
    assert set(state["ema"]) == set(soft.folded_names())  # the raw BN scale and shift too
    entry = plugin.checkpoint_entries(trainer)
    raw = trainer.ema.ema.state_dict()
    for k, (_, extra) in soft.units.items():
        keep, bn = soft.logits[k].detach() > 0, extra[0]
        assert not entry["model"][k][~keep].any() and not entry["model"][bn][~keep].any()
        assert torch.allclose(entry["model"][bn][keep], raw[bn][keep].float() / soft.sig0("cpu"))
        assert torch.equal(entry["model"][k][keep], raw[k][keep].float())  # BN follows: the kernel is not scaled
    assert Masks.from_state_dict(entry["masks"]).sparsity() == soft.hard_masks().sparsity()
    plugin.close()


# ------------------------------------------------------------------------------------------- the ticket
def cs_args(**kw):
    values = dict(rounds=2, epochs=2, mask_init=-0.1, cs_lambda=1e-8, final_temperature=200.0, mask_lr=0.1,
                  mask_momentum=0.9, ticket_epochs=None, rewind_epoch=1, rewind_iter=None, img_size=64, seed=0,
                  deterministic=False, prune_output=False, keep_first_dense=False)
    values.update(kw)
    return argparse.Namespace(**values)


def test_ticket_is_rewound_and_equals_the_network_with_hard_masks():
    theta_k = darknet(1)
    final = darknet(2)  # the weights at the end of the search: the ticket must not use them
    soft = SoftMasks.init(prunable_parameters(final), -0.1)
    random_logits(soft, seed=3)
    prev = {"cfg": final.cfg_text, "cfg_name": "yolov3-tiny.cfg", "nc": 3, "model": final.state_dict(),
            "rewind": {"model": theta_k.state_dict(), "epoch": 1, "step": 2},
            "train_state": {"plugins": {"cs": {"masks": soft.state_dict()}}}}
    strategy = ContinuousSparsification(cs_args(), run=None)
    ticket, masks = strategy.ticket_model(prev)
    hard = soft.hard_masks()
    assert masks.names() == hard.names() and all(torch.equal(masks[n], hard[n]) for n in masks)
    state, rewound = ticket.state_dict(), theta_k.state_dict()
    for k, v in rewound.items():
        if k in masks:
            m = masks[k]
            assert not state[k][~m].any() and not torch.signbit(state[k][~m]).any()  # exact +0.0
            assert torch.equal(state[k][m], v[m])  # θ_k itself: no 1/σ(s0) folded in
        else:
            assert torch.equal(state[k], v), k
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        got = ticket.eval()(x)[0]
        # θ_k with the binary masks 1[s > 0] (Algorithm 1, line 10)
        plain = darknet(4)
        rewind(plain, theta_k.state_dict(), Masks({n: soft.logits[n].detach() > 0 for n in soft.names()}))
        assert torch.equal(plain.eval()(x)[0], got)
    assert strategy.round_args(2).epochs == 2 and strategy.kind(2) == "cs-ticket" and strategy.kind(1) == "cs-search"
    assert ContinuousSparsification(cs_args(ticket_epochs=7), None).round_args(2).epochs == 7


def test_bad_arguments_are_one_line_errors():
    from utils.errors import UserError

    for kw in (dict(rounds=0), dict(epochs=1), dict(cs_lambda=-1.0), dict(final_temperature=0.5), dict(mask_lr=0.0),
               dict(rewind_epoch=3), dict(mask_init=math.inf)):
        with pytest.raises(UserError):
            ContinuousSparsification(cs_args(**kw), None)


# ---------------------------------------------------------------------------------- sparsity against λ
def search(cs_lambda, epochs=4, steps=15):
    """One search round of a small regression network (fixed data and init); returns the hard sparsity."""
    torch.manual_seed(0)
    teacher, model = Small(), Small()
    x = torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        y = teacher(x)
    soft = SoftMasks.init(convs(model), 0.0)
    plugin = CSPlugin(soft, cs_lambda=cs_lambda, mask_lr=0.1, mask_momentum=0.9, final_temperature=200.0)
    trainer = fake_trainer(model.train(), epochs=epochs)
    plugin.setup(trainer)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(epochs):
        plugin.before_epoch(trainer, epoch)
        for _ in range(steps):
            loss = (model(x) - y).square().mean() + plugin.extra_loss(trainer, x, None, None, {}).get("cs_l1", 0)
            loss.backward()
            opt.step()
            opt.zero_grad()
            step_logits(plugin)
    plugin.close()
    return soft.hard_sparsity()


def test_sparsity_grows_with_lambda():
    sparsities = [search(lam) for lam in (0.0, 1e-6, 1e-5)]  # 0.54, 0.65, 0.95 here
    assert sparsities[0] < sparsities[1] < sparsities[2], sparsities
    assert sparsities[1] - sparsities[0] > 0.03 and sparsities[2] - sparsities[1] > 0.1, sparsities


def test_cs_yaml_keeps_the_original_settings_and_prune_py_picks_it():
    import prune
    from utils.my_utils import parse_args, prune_parser

    parser = prune_parser()
    parser.set_defaults(params=str(prune.PARAMS["cs"]))
    args = parse_args(parser, ["--cs"])
    s = ContinuousSparsification(args, None).settings  # the recipe passes the strategy's checks
    assert (s.rounds, s.mask_init, s.cs_lambda, s.final_temperature, s.mask_momentum) == (3, -0.1, 1e-8, 200, 0.9)
    assert args.epochs >= 2 and args.ticket_epochs and 0 <= args.rewind_epoch <= args.epochs and args.mask_lr > 0
    assert args.cfg == "cfg/yolov3-tiny.cfg" and args.data == "data/shapes.data"  # from default.yaml
    assert prune.STRATEGIES["cs"] is ContinuousSparsification

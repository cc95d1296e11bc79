"""utils/pruning.py: masks, exact magnitude pruning (global and local), the mask invariant under SGD/Adam with
momentum and weight decay, rewinding bit for bit, and parity with the original project's YOLOv3-VOC counts."""
import io
import math
import types

import pytest
import torch
import torch.nn as nn

from utils.errors import UserError
from utils.pruning import (MaskPlugin, Masks, RewindPlugin, expected_alive, expected_filter_sparsity, expected_sparsity,
                           filter_consumers, filter_prune, filter_rows, magnitude_prune, prune_count, rewind,
                           unit_kernels, with_consumer_inputs)
from utils.torch_utils import ModelEMA, build_optimizer


class Convs(nn.Module):
    """Four convs of different sizes with BN, so local and global pruning differ."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 16, 3)
        self.c = nn.Conv2d(16, 4, 1)
        self.d = nn.Conv2d(4, 33, 3, bias=False)

    def forward(self, x):
        return self.d(self.c(self.b(torch.relu(self.bn(self.a(x))))))


def conv_weights(model):
    return [(n, p) for n, p in model.named_parameters() if p.ndim == 4]


def sort_survivors(values, k):
    """Brute force: the positions of the ``k`` largest of ``values``, ties going to the later position."""
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    return set(order[len(values) - k:])


def test_prune_count_reads_the_rate_as_written():
    assert prune_count(100, 0.2) == 20  # 100 * 0.2 is 20.000000000000004 in binary floating point
    assert prune_count(10, 0.3) == 3 and prune_count(7, 0.2) == 2 and prune_count(61_438_816, 0.9) == 55_294_935
    assert expected_alive(100, 0.2, 3) == 80 - 16 - 13
    assert expected_sparsity(0.2, 10) == pytest.approx(0.8926258176)


@pytest.mark.parametrize("scope", ["global", "local"])
def test_sparsity_after_r_rounds_is_one_minus_one_minus_p_to_the_r(scope):
    torch.manual_seed(0)
    model = Convs()
    masks = Masks.ones(conv_weights(model))
    n, rate = masks.numel(), 0.2
    sizes = {name: m.numel() for name, m in masks.items()}
    for r in range(1, 9):
        with torch.no_grad():  # "retraining": the survivors move, so each round ranks new magnitudes
            for _, p in conv_weights(model):
                p.add_(torch.randn_like(p) * 0.1)
        masks = magnitude_prune(dict(model.named_parameters()), masks, rate, scope)
        formula = 1 - (1 - rate) ** r
        if scope == "global":
            assert masks.alive() == expected_alive(n, rate, r)
            assert abs(masks.alive() - n * (1 - rate) ** r) <= r  # at most one weight of rounding per round
            assert masks.sparsity() == pytest.approx(formula, abs=r / n)
        else:
            for row in masks.layer_stats():
                size = sizes[row["name"]]
                assert row["alive"] == expected_alive(size, rate, r)
                assert row["sparsity"] == pytest.approx(formula, abs=r / size)
    assert masks.sparsity() == pytest.approx(1 - 0.8 ** 8, abs=0.01)


@pytest.mark.parametrize("scope", ["global", "local"])
def test_survivors_are_the_largest_magnitudes(scope):
    torch.manual_seed(1)
    model = Convs()
    with torch.no_grad():  # coarse values make many ties in |w|
        for _, p in conv_weights(model):
            p.copy_(torch.round(torch.randn_like(p) * 4) / 4)
    weights = dict(model.named_parameters())
    masks = Masks.ones(conv_weights(model))
    masks = magnitude_prune(weights, masks, 0.3, scope)  # a first round, then check the second
    new = magnitude_prune(weights, masks, 0.5, scope)
    names = masks.names()
    if scope == "global":
        groups = [names]
    else:
        groups = [[n] for n in names]
    for group in groups:
        # flatten the group's previously alive weights in tensor order; the brute force keeps the largest |w|,
        # ties broken toward the later position (the earlier one is pruned first)
        values, where = [], []
        for n in group:
            flat, alive = weights[n].detach().abs().flatten(), masks[n].flatten()
            for i in torch.nonzero(alive).flatten().tolist():
                values.append(float(flat[i]))
                where.append((n, i))
        keep = len(values) - prune_count(len(values), 0.5)
        expected = {where[i] for i in sort_survivors(values, keep)}
        got = {(n, i) for n in group for i in torch.nonzero(new[n].flatten()).flatten().tolist()}
        assert got == expected
    for n in names:  # pruned weights stay pruned
        assert not (new[n] & ~masks[n]).any()


def test_pruning_is_deterministic_and_leaves_its_input_alone():
    torch.manual_seed(2)
    model = Convs()
    weights = dict(model.named_parameters())
    masks = Masks.ones(conv_weights(model))
    before = masks.state_dict()
    a = magnitude_prune(weights, masks, 0.4, "global")
    b = magnitude_prune(weights, masks, 0.4, "IMP_GLOBAL")  # the original's spelling
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert all(torch.equal(masks[n], before[n]) for n in masks)


def test_parity_with_the_original_yolov3_voc_counts():
    """One round at 0.9 on the initial weights of YOLOv3 with 20 classes (the original's LTH rows)."""
    from models import Darknet

    torch.manual_seed(0)
    model = Darknet("cfg/yolov3.cfg", nc=20)
    total = sum(p.numel() for p in model.parameters())
    masks = Masks.from_model(model)
    assert total == 61_626_049 and masks.numel() == 61_438_816 and len(masks) == 72
    weights = dict(model.named_parameters())
    glob = magnitude_prune(weights, masks, 0.9, "global")
    assert glob.alive() == math.floor(0.1 * 61_438_816) == 6_143_881  # exactly 10.000% of the prunable weights
    assert total - glob.pruned() == 6_331_114  # the original's table
    local = magnitude_prune(weights, masks, 0.9, "local")
    # per layer floor(0.1 * n): 71 weights below the global count; the original's 6,331,150 rounded per layer
    # the other way (it is within one weight per layer of ours)
    assert total - local.pruned() == 6_331_079
    assert abs((total - local.pruned()) - 6_331_150) <= len(masks)
    assert all(row["alive"] == row["numel"] // 10 for row in local.layer_stats())


def fake_trainer(model, optimizer=None):
    return types.SimpleNamespace(model=model, optimizer=optimizer, epoch=0, main=True, log=lambda *a: None,
                                 resume_ckpt=None)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_pruned_weights_stay_exactly_zero_with_momentum_and_weight_decay(optimizer):
    torch.manual_seed(3)
    model = Convs()
    masks = magnitude_prune(dict(model.named_parameters()), Masks.ones(conv_weights(model)), 0.6, "global")
    plugin = MaskPlugin(masks)
    opt = build_optimizer([model], optimizer, 0.05, 0.937, 0.05)  # weight decay far above the usual 5e-4
    trainer = fake_trainer(model, opt)
    plugin.setup(trainer)  # the engine builds the EMA after the plug-ins' setup
    ema = ModelEMA(model, decay=0.9, tau=1)
    params = dict(model.named_parameters())
    assert masks.violations(model) == 0 and masks.violations(ema.ema) == 0
    x = torch.randn(4, 3, 12, 12)
    for _ in range(6):  # the engine's order: backward, step, zero_grad, after_step, EMA update
        loss = (model(x) ** 2).mean()
        loss.backward()
        for n, m in masks.items():
            assert not params[n].grad[~m].any(), "gradients of pruned weights reach the optimiser"
        opt.step()
        opt.zero_grad(set_to_none=True)
        plugin.after_step(trainer)
        ema.update(model)
        for n, m in masks.items():
            w = params[n].detach()
            assert torch.equal(w[~m], torch.zeros_like(w[~m])) and not torch.signbit(w[~m]).any()
            assert w[m].abs().sum() > 0
            for v in opt.state[params[n]].values():
                if isinstance(v, torch.Tensor) and v.shape == w.shape:
                    assert not v[~m].any(), "optimiser state of pruned weights is not zero"
        assert masks.violations(ema.ema) == 0
    plugin.close()
    # without the plug-in the same optimiser revives pruned weights at once (so the test above is not vacuous)
    (model(x) ** 2).mean().backward()
    opt.step()
    assert masks.violations(model) > 0


def test_rewind_restores_survivors_bit_for_bit():
    torch.manual_seed(4)
    model = Convs()
    theta_k = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # "training" after the rewind point changes every parameter and buffer
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model.bn.running_mean.add_(1.0)
    masks = magnitude_prune(model.state_dict(), Masks.ones(conv_weights(model)), 0.5, "local")
    model = model.to(memory_format=torch.channels_last)  # as the engine trains under autocast
    rewind(model, theta_k, masks)
    state = model.state_dict()
    for k, v in theta_k.items():
        got = state[k]
        if k in masks:
            m = masks[k]
            assert torch.equal(got[m].view(torch.int32), v[m].view(torch.int32))  # bit for bit, sign included
            assert torch.equal(got[~m], torch.zeros_like(got[~m]))
        elif v.dtype.is_floating_point:
            assert torch.equal(got.view(torch.int32), v.view(torch.int32))
        else:
            assert torch.equal(got, v)


def test_masks_round_trip_through_a_checkpoint():
    masks = magnitude_prune(dict(Convs().named_parameters()), Masks.ones(conv_weights(Convs())), 0.3, "global")
    buf = io.BytesIO()
    torch.save({"masks": masks.state_dict()}, buf)
    buf.seek(0)
    back = Masks.from_state_dict(torch.load(buf, weights_only=True)["masks"])
    assert back.names() == masks.names() and all(torch.equal(back[n], masks[n]) for n in masks)
    assert back.sparsity() == masks.sparsity() == pytest.approx(0.3, abs=1 / masks.numel())
    assert "all prunable" in masks.report()


def test_rewind_plugin_captures_once_at_the_given_iteration():
    model = Convs()
    trainer = fake_trainer(model)
    plugin = RewindPlugin(epoch=5, iteration=3)
    plugin.setup(trainer)
    assert plugin.checkpoint_entries(trainer) == {}
    for step in range(1, 7):
        with torch.no_grad():
            model.a.weight.fill_(float(step))
        plugin.after_step(trainer)
        plugin.after_epoch(trainer, step, {})  # the iteration wins over the epoch
    snap = plugin.checkpoint_entries(trainer)["rewind"]
    assert snap["step"] == 3 and torch.equal(snap["model"]["a.weight"], torch.full_like(model.a.weight, 3.0))
    initial = RewindPlugin(epoch=0)
    initial.setup(trainer)  # epoch 0: the initial weights, taken at setup
    assert initial.checkpoint_entries(trainer)["rewind"]["step"] == 0


# ------------------------------------------------------------------------------------------- filter granularity
def shifted_tiny(seed=0, cfg="cfg/yolov3-tiny.cfg"):
    """yolov3-tiny (or ``cfg``) with random BN shifts, scales and statistics: a pruned filter left to BN would emit a
    constant."""
    from models import Darknet

    torch.manual_seed(seed)
    model = Darknet(cfg, img_size=64, nc=6).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(-0.5, 0.5)
                m.weight.uniform_(0.5, 1.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def test_filter_masks_cover_plain_convs_with_their_bn():
    from models import prunable_parameters

    model = shifted_tiny()
    masks = Masks.from_model(model, granularity="filter")
    kernels = [n for n in masks.names() if masks[n].dim() == 4]
    assert kernels == [n for n, _ in prunable_parameters(model)]  # tiny: every prunable kernel is a plain conv
    for k in kernels:
        prefix = k.rsplit(".", 2)[0]
        assert f"{prefix}.bn.weight" in masks and f"{prefix}.bn.bias" in masks
    nano = __import__("models").Darknet("cfg/yolo-nano.cfg", img_size=64, nc=6)
    inside_blocks = [n for n in Masks.from_model(nano, granularity="filter").names() if n.count(".") > 3]
    assert not inside_blocks  # composite sections keep their filters: folding cannot remove them


@pytest.mark.parametrize("scope", ["local", "global"])
def test_filter_prune_removes_whole_filters_by_l1_and_keeps_one_per_layer(scope):
    model = shifted_tiny()
    weights = dict(model.state_dict())
    masks = Masks.from_model(model, granularity="filter")
    kernels = [n for n in masks.names() if masks[n].dim() == 4]
    one = filter_prune(weights, masks, 0.5, scope)
    two = filter_prune(weights, one, 0.5, scope)
    for new, old in ((one, masks), (two, one)):
        alive_before = sum(int(old[k].flatten(1).all(1).sum()) for k in kernels)
        alive_after = sum(int(new[k].flatten(1).all(1).sum()) for k in kernels)
        if scope == "global":
            assert alive_before - alive_after == prune_count(alive_before, 0.5)
        for k in kernels:
            rows = new[k].flatten(1)
            keep = rows.all(1)
            assert (rows.any(1) == keep).all(), "a filter is pruned whole or not at all"
            assert keep.sum() >= 1 and not (keep & ~old[k].flatten(1).all(1)).any()  # pruned filters stay pruned
            prefix = k.rsplit(".", 2)[0]
            assert torch.equal(new[f"{prefix}.bn.weight"], keep) and torch.equal(new[f"{prefix}.bn.bias"], keep)
            if scope == "local":
                a = int(old[k].flatten(1).all(1).sum())
                assert a - int(keep.sum()) == min(prune_count(a, 0.5), a - 1)
    k = kernels[3]  # local: the filters that go are those of smallest L1 norm
    if scope == "local":
        l1 = weights[k].abs().flatten(1).sum(1)
        gone = ~one[k].flatten(1).all(1)
        assert float(l1[gone].max()) <= float(l1[~gone].min())


def test_filter_sparsity_counts_kernels_and_local_rounds_reach_the_expected_value():
    model = shifted_tiny()
    weights = dict(model.state_dict())
    consumers = filter_consumers(model)
    start = Masks.from_model(model, granularity="filter")
    masks = start
    for rounds in range(1, 4):
        masks = with_consumer_inputs(filter_prune(weights, masks, 0.3, "local"), consumers)
        kernels = [masks[n] for n in masks.names() if masks[n].dim() == 4]
        pruned = sum(int((~m).sum()) for m in kernels)
        assert masks.sparsity() == pytest.approx(pruned / sum(m.numel() for m in kernels), abs=1e-12)
        assert masks.sparsity() != pytest.approx(masks.pruned() / masks.numel(), abs=1e-9)  # BN entries left out
        assert expected_filter_sparsity(start, 0.3, rounds, consumers) == pytest.approx(masks.sparsity(), abs=1e-12)
    assert expected_filter_sparsity(masks, 0.3, 0, consumers) == pytest.approx(masks.sparsity(), abs=1e-12)  # a ticket
    assert expected_filter_sparsity(masks, 0.3, 1, {}) < masks.sparsity()  # the consumers' columns count


def test_consumers_lose_the_input_columns_of_pruned_filters_and_the_outputs_stay():
    """Issue 28: a filter mask covers the kernel, the BN channel and the matching input channels of every consumer
    (through tiny's route, max-pools and upsampling, and its output convs), so the ticket's non-zero weights are
    exactly the folded network's weights, and the outputs are those of the filter masks alone."""
    from utils.export import fold_empty_channels

    model = shifted_tiny()
    consumers = filter_consumers(model)
    assert {"module_list.15.conv.weight", "module_list.22.conv.weight"} <= set(consumers)  # the output convs
    route = consumers["module_list.21.conv.weight"]  # reads the route of layers 20 (upsampled 18) and 8
    assert set(route[1]) == {"module_list.18.conv.weight", "module_list.8.conv.weight"}
    rows = filter_prune(dict(model.state_dict()), Masks.from_model(model, granularity="filter"), 0.5, "local")
    full = with_consumer_inputs(rows, consumers)
    for k, (shape, fed) in consumers.items():
        gone = torch.zeros(shape[1], dtype=torch.bool)
        for p, (cols, filters) in fed.items():
            gone[cols] = ~filter_rows(rows[p])[filters]
        assert gone.any() and torch.equal(full[k].transpose(0, 1).flatten(1).any(1), ~gone)
    x = torch.rand(2, 3, 64, 64)
    a, b = shifted_tiny(), shifted_tiny()
    rows.apply(a)
    full.apply(b)
    with torch.no_grad():
        assert torch.equal(a(x)[0], b(x)[0])  # the masked inputs carried exact zeros
    folded, rep = fold_empty_channels(b, round_to=1)
    kernel_weights = sum(p.numel() for n, p in folded.named_parameters() if n.endswith("conv.weight"))
    assert kernel_weights == sum(int(full[k].sum()) for k in full.names() if full[k].dim() == 4)
    assert full.alive() < rows.alive()


def test_filter_prune_by_bn_gamma_ranks_by_the_scale():
    model = shifted_tiny()
    weights = dict(model.state_dict())
    masks = filter_prune(weights, Masks.from_model(model, granularity="filter"), 0.25, "local", criterion="bn")
    k = "module_list.2.conv.weight"
    gamma = weights["module_list.2.bn.weight"].abs()
    gone = ~masks[k].flatten(1).all(1)
    assert gone.any() and float(gamma[gone].max()) <= float(gamma[~gone].min())


@pytest.mark.parametrize("cfg, shrink", [("yolov3-tiny", 0.5), ("yolov3", 0.5), ("yolov3-spp", 0.5),
                                         ("yolo-nano", 1.0), ("mobilenetv3-yolo", 1.0)])
def test_a_filter_ticket_folds_into_a_smaller_network_with_the_same_outputs(cfg, shrink):
    """The pruned filters' BN scale and shift are masked too, so their channels are exactly 0 and export.py --fold
    removes them with no constant to approximate, even with BN shifts that would otherwise leave one. On every cfg
    family: only filters that fold are pruned (none summed by a shortcut, none read by a section folding keeps whole),
    so the compact families, whose plain convs mostly feed composite sections, barely shrink (YOLOv3-Mobile has no
    such filter: see the next test)."""
    from utils.export import compare_outputs, fold_empty_channels

    model = shifted_tiny(cfg=f"cfg/{cfg}.cfg")
    masks = filter_prune(dict(model.state_dict()), Masks.from_model(model, granularity="filter"), 0.5, "local")
    masks = with_consumer_inputs(masks, filter_consumers(model))
    masks.apply(model)
    pruned = sum(int((~filter_rows(masks[k])).sum()) for k in unit_kernels(masks))
    folded, rep = fold_empty_channels(model, round_to=1)
    assert rep["removed"] == pruned and rep["folded_constants"] == 0
    assert rep["params_after"] <= shrink * rep["params_before"]
    assert compare_outputs(model, folded, img_size=64)["raw"] < 1e-4


@pytest.mark.parametrize("cfg, scope", [("yolov3", "local"), ("yolov3-spp", "global")])
def test_filters_a_shortcut_sums_go_together_and_fold(cfg, scope):
    """--shortcut-filters together: the convs a [shortcut] sums lose the same channels (one unit each sum, ranked by
    the mean score), so their channels fold too: the folded network equals the masked one, every conv the exclude
    mode leaves whole loses filters, and a unit loses exactly prune_count(alive, rate) channels."""
    from utils.export import compare_outputs, fold_empty_channels, foldable_convs
    from utils.pruning import coupled_units, filter_groups, prune_count

    model = shifted_tiny(cfg=f"cfg/{cfg}.cfg")
    weights = dict(model.state_dict())
    apart = Masks.from_model(model, granularity="filter")
    start = Masks.from_model(model, granularity="filter", coupled=True)
    kernels = unit_kernels(start)
    groups = filter_groups(model, kernels)
    consumers = filter_consumers(model)
    masks = with_consumer_inputs(filter_prune(weights, start, 0.5, scope, groups=groups), consumers)
    if scope == "local":  # the formula of the rounds' expected sparsity holds with units and without
        kept = with_consumer_inputs(filter_prune(weights, apart, 0.5, scope), consumers)
        assert masks.sparsity() == pytest.approx(expected_filter_sparsity(start, 0.5, 1, consumers), abs=1e-9)
        assert kept.sparsity() == pytest.approx(expected_filter_sparsity(apart, 0.5, 1, consumers), abs=1e-9)
    coupled = set(foldable_convs(model, coupled=True)) - set(foldable_convs(model))
    assert len(coupled) >= 25 and not set(unit_kernels(apart)) & {f"module_list.{i}.conv.weight" for i in coupled}
    units = coupled_units(kernels, groups, {k: start[k].shape[0] for k in kernels})
    shared = [u for u in units if len(u) > 1]
    assert len(shared) == 5 and sum(len(u) for u in shared) == len(coupled)  # darknet-53's 5 residual stages
    for unit in shared:
        rows = [filter_rows(masks[k]) for k, _ in unit]
        assert all(torch.equal(r, rows[0]) for r in rows)  # the same channels in every conv of the sum
        if scope == "local":
            assert int((~rows[0]).sum()) == prune_count(len(rows[0]), 0.5)
    masks.apply(model)
    pruned = sum(int((~filter_rows(masks[k])).sum()) for k in unit_kernels(masks))
    folded, rep = fold_empty_channels(model, round_to=1)
    assert rep["removed"] == pruned and rep["folded_constants"] == 0
    assert all(rep["layers"][i][1] < rep["layers"][i][0] for i in coupled)  # every summed conv is narrower
    assert compare_outputs(model, folded, img_size=64)["raw"] < 1e-4


def test_without_groups_filter_prune_ranks_each_layer_alone():
    """filter_groups on a network with no [shortcut] gives each conv its own channels: the same ticket as none."""
    from utils.pruning import filter_groups

    model = shifted_tiny()
    weights, start = dict(model.state_dict()), Masks.from_model(model, granularity="filter")
    groups = filter_groups(model, unit_kernels(start))
    for scope in ("local", "global"):
        a, b = filter_prune(weights, start, 0.3, scope), filter_prune(weights, start, 0.3, scope, groups=groups)
        assert all(torch.equal(a[n], b[n]) for n in a.names()) and a.names() == b.names()


def test_filter_granularity_on_a_network_with_no_foldable_filter_is_a_one_line_error():
    from models import Darknet

    model = Darknet("cfg/yolov3-mobile.cfg", img_size=64)
    with pytest.raises(UserError, match="no conv of this network has filters that export.py --fold could remove"):
        Masks.from_model(model, granularity="filter")

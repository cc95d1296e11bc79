"""Unstructured pruning: binary masks, Lottery Ticket magnitude pruning with late rewinding, and the round runner.

Lottery Ticket with late rewinding (iterative magnitude pruning, IMP), after Frankle, Dziugaite, Roy & Carbin,
"Stabilizing the Lottery Ticket Hypothesis" (2019, arXiv 1903.01611), section 3 and Algorithm 1 with rewinding
to iteration k ("late resetting"):

1. Train the dense network f(x; θ_0) to θ_T, saving θ_k at an early iteration (or epoch) k.
2. Prune: with m ∈ {0, 1}^|θ| the current mask, remove the fraction p of the surviving weights (m = 1) with the
   smallest |θ_T|, over all prunable layers at once (``global``) or the same fraction in every layer (``local``).
3. Rewind: θ ← m ⊙ θ_k  (survivors take their values at iteration k; pruned weights are 0).
4. Retrain m ⊙ θ from θ_k with the original optimiser and schedule, and repeat from 2.

After r rounds the pruned fraction of the prunable weights is 1 − (1 − p)^r. Here the counts are exact: a round
removes ceil(p · alive) weights (so floor((1 − p) · alive) survive; p is read as the decimal it is written as, so
0.2 of 100 is 20, not 21 by a float rounding), and ties in |θ| are broken by position, so pruning is deterministic.

The pieces, each used by ``prune.py``:

- ``Masks``: per prunable tensor a boolean mask (True = alive). Chosen over ``torch.nn.utils.prune``
  (``custom_from_mask``), which re-parametrises ``weight`` as ``weight_orig * weight_mask`` in a forward pre-hook:
  that changes the state-dict keys (``weight_orig``/``weight_mask``), so every consumer of checkpoints
  (``test.py``, Darknet ``.weights``, the EMA, export, sparse storage) would have to know about it; the optimiser
  keeps updating ``weight_orig`` at pruned positions (weight decay and momentum move the hidden value, so only the
  recomputed product is zero); and it costs a multiplication in every forward. A plain mask applied in place to
  the real parameter (in the style of open_lth's ``Mask``) keeps state dicts ordinary and makes the weights
  themselves exactly zero, so ``model_summary`` can count them and sparse storage can pack them. Continuous
  Sparsification (Savarese et al. 2019, arXiv 1912.04427) uses a soft parametrisation only during its search and
  ends with the same binary ``Masks`` for its ticket.
- ``MaskPlugin``: the engine plug-in that keeps pruned weights at exactly 0. It masks the weights at setup (before
  the engine builds the EMA, so the EMA starts sparse), masks their gradients as they are computed (so momentum,
  weight decay and gradient clipping never see pruned entries), and after every optimiser step zeroes the pruned
  weights and their optimiser state (momentum buffer, Adam moments) again; the engine updates the EMA after that.
- ``RewindPlugin``: takes the snapshot θ_k once, in the dense run, after ``--rewind-epoch`` epochs or
  ``--rewind-iter`` optimiser steps, and writes it into every checkpoint of the run as the top-level ``rewind``
  entry ``{'model': state_dict, 'epoch': ..., 'step': ...}`` (the original project re-took it in every round, so its
  rewind point drifted).
- ``magnitude_prune`` and ``rewind``: steps 2 and 3.
- ``PruneRun`` + ``Strategy``: the run folder ``runs/prune/<name>/`` (``round_<r>/`` per round, ``rounds.csv``,
  ``rounds.png``) and the prune/rewind/retrain loop with resume; ``LotteryTicket`` is the LTH strategy. Another
  strategy (Continuous Sparsification) subclasses ``Strategy`` and reuses the runner, masks and rewind capture.
"""
import argparse
import csv
import io
import math
from fractions import Fraction
from pathlib import Path

import torch
import yaml

from models import Darknet, prunable_parameters
from utils import runlock
from utils.checkpoint import atomic_path, load_checkpoint, remove_stale_temporaries, write_atomic
from utils.datasets import create_dataloader, parse_data_cfg
from utils.engine import Plugin, Trainer, model_from_args
from utils.errors import UserError
from utils.evaluation import evaluate
from utils.export import channel_graph, foldable_convs, keeps_zero
from utils.general import increment_path, init_seeds, is_main_process, select_device
from utils.my_utils import hyp_from_args, save_args, upgrade_saved_args
from utils.settings import LTHSettings, scope_type
from utils.summary import model_summary
from utils.torch_utils import de_parallel, resolve_precision


# ------------------------------------------------------------------------------------------------------ masks
class Masks:
    """Boolean masks of prunable tensors: ``{parameter name: bool tensor}``, True where the weight is alive.

    Names are those of ``model.named_parameters()`` (without a DDP ``module.`` prefix), so a mask applies to any
    network built from the same cfg. The checkpoint's top-level ``masks`` entry is ``state_dict()``.
    """

    def __init__(self, masks):
        self.masks = {}
        for name, m in dict(masks).items():
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
                raise TypeError(f"mask {name!r} must be a bool tensor")
            self.masks[name] = m

    @classmethod
    def ones(cls, named_parameters):
        """Everything alive, for ``[(name, parameter)]`` (e.g. ``models.prunable_parameters(model)``)."""
        return cls({n: torch.ones(p.shape, dtype=torch.bool, device=p.device) for n, p in named_parameters})

    @classmethod
    def from_model(cls, model, include_output=False, skip_first=False, granularity="weight", coupled=False):
        """All-alive masks over ``models.prunable_parameters`` of ``model``; ``granularity="filter"``: over the
        kernels of the plain ``[convolutional]`` layers among them (``filter_units``; ``coupled``: with the convs a
        ``[shortcut]`` sums), with their BN scale and shift (or conv bias), so that a pruned filter's channel is
        exactly 0 and ``export.py --fold`` removes it."""
        named = prunable_parameters(model, include_output=include_output, skip_first=skip_first)
        if granularity == "weight":
            return cls.ones(named)
        params = dict(de_parallel(model).named_parameters())
        units = filter_units(model, [n for n, _ in named], coupled)
        if not units:
            raise UserError("--granularity filter: no conv of this network has filters that export.py --fold could "
                            "remove (its plain convs feed shortcuts, composite sections or the heads)")
        return cls.ones([(n, params[n]) for kernel, extra in units.items() for n in (kernel, *extra)])

    # -- a small mapping ------------------------------------------------------------------------------
    def __getitem__(self, name):
        return self.masks[name]

    def __contains__(self, name):
        return name in self.masks

    def __iter__(self):
        return iter(self.masks)

    def __len__(self):
        return len(self.masks)

    def items(self):
        return self.masks.items()

    def names(self):
        return list(self.masks)

    def to(self, device):
        return Masks({n: m.to(device) for n, m in self.masks.items()})

    def state_dict(self):
        """``{name: bool tensor}`` on the CPU, contiguous: what checkpoints store under ``masks``."""
        return {n: m.detach().cpu().contiguous().clone() for n, m in self.masks.items()}

    @classmethod
    def from_state_dict(cls, state):
        return cls({n: torch.as_tensor(m).bool() for n, m in state.items()})

    def merged(self, other):
        """These masks with ``other``'s entries (``Masks`` or dict) replacing or added to them."""
        out = dict(self.masks)
        out.update(other.masks if isinstance(other, Masks) else other)
        return Masks(out)

    # -- counts ---------------------------------------------------------------------------------------
    def numel(self):
        return sum(m.numel() for m in self.masks.values())

    def alive(self):
        return sum(int(torch.count_nonzero(m)) for m in self.masks.values())

    def pruned(self):
        return self.numel() - self.alive()

    def kernels(self):
        """The masked weight tensors (2-D and up): a filter mask's BN scale, shift and bias entries left out."""
        return [m for m in self.masks.values() if m.dim() > 1]

    def sparsity(self):
        """Pruned fraction of the masked (prunable) kernel weights; with filter masks, of their kernels only (their
        1-D BN and bias entries follow the filters and are not weights of the prunable convs)."""
        kernels = self.kernels()
        n = sum(m.numel() for m in kernels)
        return 1 - sum(int(torch.count_nonzero(m)) for m in kernels) / n if n else 0.0

    def layer_stats(self):
        """``[{'name', 'numel', 'alive', 'sparsity'}]`` per masked tensor, in order."""
        rows = []
        for n, m in self.masks.items():
            alive = int(torch.count_nonzero(m))
            rows.append({"name": n, "numel": m.numel(), "alive": alive, "sparsity": 1 - alive / max(m.numel(), 1)})
        return rows

    def report(self):
        """Per-layer table and the overall line, as text."""
        lines = [f"{'tensor':<40} {'weights':>12} {'alive':>12} {'sparsity':>9}"]
        for r in self.layer_stats():
            lines.append(f"{r['name']:<40} {r['numel']:>12,} {r['alive']:>12,} {r['sparsity']:>9.2%}")
        lines.append(f"{'all prunable':<40} {self.numel():>12,} {self.alive():>12,} "
                     f"{self.pruned() / max(self.numel(), 1):>9.2%}")
        return "\n".join(lines)

    # -- applying -------------------------------------------------------------------------------------
    def bind(self, model):
        """``[(parameter, mask)]`` of ``model`` (DDP unwrapped); a missing name or another shape is an error."""
        params = dict(de_parallel(model).named_parameters())
        pairs = []
        for n, m in self.masks.items():
            if n not in params:
                raise UserError(f"mask for '{n}' has no parameter of that name in the network")
            if params[n].shape != m.shape:
                raise UserError(f"mask for '{n}' is {tuple(m.shape)}, the parameter is {tuple(params[n].shape)}")
            pairs.append((params[n], m.to(params[n].device)))
        return pairs

    @torch.no_grad()
    def apply(self, model):
        """Set every pruned weight of ``model`` to exactly +0.0."""
        for p, m in self.bind(model):
            p.masked_fill_(~m, 0.0)

    def violations(self, model):
        """How many pruned positions of ``model`` hold a non-zero weight (0 when the invariant holds)."""
        return sum(int(torch.count_nonzero(p.detach()[~m])) for p, m in self.bind(model))


# --------------------------------------------------------------------------------------------- pruning, rewind
def prune_count(alive, rate):
    """Weights removed from ``alive`` at ``rate``: ceil(rate · alive), with ``rate`` read as its decimal literal."""
    return math.ceil(alive * Fraction(repr(float(rate))))


def expected_alive(n, rate, rounds):
    """Survivors of ``n`` weights after ``rounds`` rounds at ``rate`` under ``prune_count``'s rounding."""
    for _ in range(rounds):
        n -= prune_count(n, rate)
    return n


def expected_sparsity(rate, rounds, start=0.0):
    """1 − (1 − start)(1 − p)^r: the sparsity the formula gives after ``rounds`` rounds (Frankle et al. 2019)."""
    return 1 - (1 - start) * (1 - rate) ** rounds


def expected_filter_sparsity(masks, rate, rounds, consumers):
    """The kernel sparsity local filter pruning (``filter_prune`` + ``with_consumer_inputs``) reaches after
    ``rounds`` more rounds at ``rate`` from ``masks``: per layer ``min(prune_count(a, rate), a - 1)`` of its ``a``
    alive filters go each round, and each consumer loses one input column per filter gone (``filter_consumers``)."""
    alive = {}
    for k in unit_kernels(masks):
        a = int(filter_rows(masks[k]).sum())
        for _ in range(rounds):
            a -= min(prune_count(a, rate), a - 1)
        alive[k] = a
    consumers = {k: c for k, c in consumers.items() if any(p in alive for p in c[1])}  # the masked ones only
    shapes = {**{k: masks[k].shape for k in alive}, **{k: shape for k, (shape, _) in consumers.items()}}
    total = kept = 0
    for k, shape in shapes.items():
        # only counts matter: the columns fed by a producer's rows a.. stand for the rows that go
        dead = sum(int((rows >= alive[p]).sum()) for p, (_, rows) in consumers.get(k, (None, {}))[1].items()
                   if p in alive)
        total += shape.numel()
        kept += alive.get(k, shape[0]) * (shape[1] - dead) * shape[2] * shape[3]
    return 1 - kept / total if total else 0.0


def filter_rows(mask):
    """The alive filters (rows) of a 4-D kernel mask: those with any weight left."""
    return mask.flatten(1).any(1)


def unit_kernels(masks):
    """The kernels whose filters filter-level pruning removes: the 4-D entries with BN or bias companions (the
    entries ``with_consumer_inputs`` adds for other consumers have none)."""
    prefixes = {n.rsplit(".", 2)[0] for n in masks.names() if masks[n].dim() == 1}
    return [n for n in masks.names() if masks[n].dim() == 4 and n.rsplit(".", 2)[0] in prefixes]


def filter_consumers(model):
    """``{consumer kernel: (its shape, {producer kernel: (input columns, its filters they carry)})}``: for every plain conv,
    the input channels that carry a filter of a plain conv ``filter_units`` prunes (through routes, max-pools and
    upsampling), where that filter's channel is exactly 0 once pruned (its activation maps 0 to 0)."""
    net = de_parallel(model)
    params = dict(net.named_parameters())
    g, consumers, _ = channel_graph(net)
    roots = g.roots()
    where = {}  # channel root -> (producer kernel, filter)
    for k in filter_units(net, [n for n, p in params.items() if n.endswith(".conv.weight") and p.dim() == 4], True):
        j = int(k.split(".")[1])
        if not keeps_zero(getattr(net.module_list[j], "act", None)):
            continue
        for row, r in enumerate(roots[g.ids(j, net.channels[j])].tolist()):
            where[r] = (k, row)
    out = {}
    for i, src in consumers:
        width = net.channels[src] if src >= 0 else net.net["channels"]
        fed = {}  # producer kernel -> ([input columns], [its filters])
        for c, r in enumerate(roots[g.ids(src, width)].tolist()):
            if r in where:
                p, row = where[r]
                fed.setdefault(p, ([], []))[0].append(c)
                fed[p][1].append(row)
        if fed:
            k = f"module_list.{i}.conv.weight"
            out[k] = (params[k].shape, {p: (torch.tensor(c), torch.tensor(r)) for p, (c, r) in fed.items()})
    return out


def with_consumer_inputs(masks, consumers):
    """Filter ``masks`` extended to the consumers (``filter_consumers``): each consumer kernel's input columns that
    read a pruned filter are masked too, so the ticket's zeros are every weight that no longer matters (outputs do
    not change: those inputs are exactly 0). Consumers with no mask of their own get one (all filters alive)."""
    out = {k: masks[k] for k in masks.names()}
    alive = {p: filter_rows(masks[p]).cpu() for _, fed in consumers.values() for p in fed if p in masks}
    for k, (shape, fed) in consumers.items():
        if not any(p in alive for p in fed):
            continue
        keep = torch.ones(shape[1], dtype=torch.bool)
        for p, (cols, rows) in fed.items():
            if p in alive:
                keep[cols] = alive[p][rows]
        rows = filter_rows(masks[k]).cpu() if k in masks else torch.ones(shape[0], dtype=torch.bool)
        out[k] = (rows.view(-1, 1, 1, 1) & keep.view(1, -1, 1, 1)).expand(shape).clone()
    return Masks(out)


def check_rate(rate):
    if rate is None or not 0 < float(rate) < 1:
        raise UserError(f"--prune-rate must be in (0, 1), not {rate}")
    return float(rate)


def smallest(values, k):
    """Bool tensor marking the ``k`` smallest entries of the 1-D ``values``; ties go to the lowest positions."""
    out = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    if k <= 0:
        return out
    if k >= values.numel():
        return out.fill_(True)
    kth = torch.kthvalue(values, k).values
    out |= values < kth
    need = k - int(out.sum())
    out[torch.nonzero(values == kth).flatten()[:need]] = True
    return out


def magnitude_prune(weights, masks, rate, scope="global"):
    """Step 2 of IMP: new ``Masks`` with the fraction ``rate`` of the alive weights of smallest |w| removed.

    ``weights``: ``{name: tensor}`` holding (at least) every masked tensor, e.g. a checkpoint's ``model`` entry or
    ``dict(model.named_parameters())``. ``scope``: ``global`` ranks all alive weights together (one threshold),
    ``local`` prunes each tensor by the same fraction. Exactly ``prune_count(alive, rate)`` weights go (per tensor
    for ``local``); among equal magnitudes the earlier position (tensor order, then row-major index) goes first.
    Already-pruned weights stay pruned. ``masks`` is not modified.
    """
    rate, scope = check_rate(rate), scope_type(scope)
    names = masks.names()
    keys, alive = [], []
    for n in names:
        if n not in weights:
            raise UserError(f"no weights for the masked tensor '{n}'")
        w, m = weights[n].detach(), masks[n]
        if w.shape != m.shape:
            raise UserError(f"weights '{n}' are {tuple(w.shape)}, the mask {tuple(m.shape)}")
        # the sort key: |w| for alive weights, -1 for pruned ones (they rank first and are dropped again)
        key = w.float().abs().flatten().cpu().masked_fill_(~m.flatten().cpu(), -1.0)
        if key.numel() and not math.isfinite(float(key.max())):  # NaN and inf propagate to the max
            raise UserError(f"'{n}' holds non-finite weights: they cannot be ranked by magnitude")
        keys.append(key)
        alive.append(int(torch.count_nonzero(m)))
    if scope == "global":
        k = sum(k.numel() for k in keys) - sum(alive) + prune_count(sum(alive), rate)
        drops = smallest(torch.cat(keys), k).split([k.numel() for k in keys])
    else:
        drops = [smallest(key, key.numel() - a + prune_count(a, rate)) for key, a in zip(keys, alive)]
    return Masks({n: ~d.view(masks[n].shape) for n, d in zip(names, drops)})


def filter_units(model, kernels, coupled=False):
    """``{kernel name: (its BN weight and bias, or its conv bias)}`` for the ``kernels`` of the plain
    ``[convolutional]`` layers whose filters ``export.py --fold`` removes (``export.foldable_convs``): the filters
    whose removal makes a smaller dense network. Kernels inside composite sections (``[pep]``, ``[bottleneck]``, ...),
    convs read by a section folding keeps whole and (unless ``coupled``) convs summed by a ``[shortcut]`` are left
    out: pruning their filters would cost accuracy and save no time."""
    net = de_parallel(model)
    params = dict(net.named_parameters())
    foldable = set(foldable_convs(net, coupled))
    units = {}
    for name in kernels:
        parts = name.split(".")
        if len(parts) != 4 or parts[0] != "module_list" or parts[2:] != ["conv", "weight"]:
            continue
        if int(parts[1]) not in foldable:
            continue
        prefix = ".".join(parts[:2])
        extra = tuple(n for n in (f"{prefix}.bn.weight", f"{prefix}.bn.bias", f"{prefix}.conv.bias") if n in params)
        units[name] = extra
    return units


def filter_groups(model, kernels):
    """``{kernel: its filters' channel ids}`` for the conv ``kernels`` of ``model``: filters of different convs that a
    ``[shortcut]`` sums share an id (``export.channel_graph``), so ``filter_prune`` removes them together."""
    net = de_parallel(model)
    g, _, _ = channel_graph(net)
    roots = g.roots()
    layers = {k: int(k.split(".")[1]) for k in kernels}
    return {k: torch.from_numpy(roots[g.ids(i, net.channels[i])]) for k, i in layers.items()}


def coupled_units(kernels, groups, rows):
    """The units ``filter_prune`` ranks: lists of kernels whose filters ``groups`` ties, each kernel with the unit
    channel of every one of its ``rows[k]`` filters; a kernel with no group is a unit alone."""
    ids = {k: groups[k].tolist() if groups and k in groups else [(k, r) for r in range(rows[k])] for k in kernels}
    units = []  # [(kernels, {channel id: unit channel})]
    for k in kernels:
        hit = [u for u in units if any(i in u[1] for i in ids[k])]
        members, channels = [x for u in hit for x in u[0]] + [k], {}
        for i in [i for u in hit for i in u[1]] + ids[k]:
            channels.setdefault(i, len(channels))
        units = [u for u in units if u not in hit] + [(members, channels)]
    order = {k: n for n, k in enumerate(kernels)}
    return [[(k, torch.tensor([channels[i] for i in ids[k]])) for k in members]
            for members, channels in sorted(units, key=lambda u: min(order[k] for k in u[0]))]


def filter_scores(weights, masks, k, companions, criterion):
    """A kernel's filter scores (L1 of the kernel, or BN |gamma|) over their layer's mean; -1 for pruned filters."""
    w, keep = weights[k].detach().float().cpu(), filter_rows(masks[k].cpu())
    if criterion == "bn":
        bn = companions[0] if companions and companions[0].endswith("bn.weight") else None
        if bn is None:
            raise UserError(f"--filter-criterion bn: '{k}' has no BN to rank its filters by")
        score = weights[bn].detach().float().cpu().abs()
    else:
        score = w.abs().flatten(1).sum(1)
    if not torch.isfinite(score).all():
        raise UserError(f"'{k}' holds non-finite weights: its filters cannot be ranked")
    live = score[keep]
    return score.masked_fill(~keep, -1.0) / (float(live.mean()) if len(live) and live.mean() > 0 else 1.0)


def filter_prune(weights, masks, rate, scope="local", criterion="l1", groups=None):
    """Filter-level IMP: new ``Masks`` with the fraction ``rate`` of the alive filters removed, each with its BN scale
    and shift (or bias). A filter scores the L1 norm of its kernel (``l1``) or its BN |gamma| (``bn``, Liu et al.
    2017) over its layer's mean; filters that ``groups`` (``filter_groups``) ties, the same channel of a
    ``[shortcut]``'s sum, form one unit channel scored by their mean and go together. ``local`` prunes
    ``prune_count(alive, rate)`` channels in every unit (a layer, or the convs a shortcut sums), ``global`` the same
    count over all units by one threshold. Every unit keeps at least one channel; ties go to the lower channel
    index. ``masks``: from ``Masks.from_model(..., granularity="filter")`` (kernels are the 4-D entries, the 1-D
    entries their companions in order)."""
    rate, scope = check_rate(rate), scope_type(scope)
    kernels = unit_kernels(masks)
    companions = {k: [n for n in masks.names() if n.startswith(k.rsplit(".", 2)[0] + ".") and masks[n].dim() == 1]
                  for k in kernels}
    units = coupled_units(kernels, groups, {k: masks[k].shape[0] for k in kernels})
    scores, alive = [], []
    for unit in units:
        n = int(max(col.max() for _, col in unit)) + 1
        total, count = torch.zeros(n), torch.zeros(n)
        for k, col in unit:
            sc = filter_scores(weights, masks, k, companions[k], criterion)
            total.index_add_(0, col, sc.clamp(min=0))
            count.index_add_(0, col, (sc >= 0).float())
        score = torch.where(count > 0, total / count.clamp(min=1), -1.0)  # -1: pruned in every conv of the unit
        scores.append(score)
        alive.append(int((score >= 0).sum()))
    if scope == "local":
        drops = [smallest(sc, sc.numel() - a + min(prune_count(a, rate), a - 1)) for sc, a in zip(scores, alive)]
    else:
        allowed = [sc.clone() for sc in scores]
        for sc in allowed:  # each unit's best channel is never a candidate
            sc[int(torch.argmax(sc))] = float("inf")
        k = sum(sc.numel() for sc in scores) - sum(alive) + prune_count(sum(alive), rate)
        drops = list(smallest(torch.cat(allowed), k).split([sc.numel() for sc in scores]))
    out = {n: m for n, m in masks.items() if m.dim() == 1 or n in kernels}  # consumers' columns: re-derived
    for unit, d in zip(units, drops):
        for k, col in unit:
            keep = ~d[col]
            out[k] = keep.view(-1, 1, 1, 1).expand(masks[k].shape).clone()
            for c in companions[k]:
                out[c] = keep.clone()
    return Masks(out)


def lth_prune(weights, masks, settings, consumers=None, groups=None):
    """One Lottery Ticket pruning step, by ``settings`` (``LTHSettings``): new ``Masks`` with ``prune_rate`` of the
    alive weights (``granularity`` weight) or filters (filter) of smallest magnitude removed, within ``scope``;
    filters are masked with the input columns of their ``consumers`` (``filter_consumers``, needed for filters) and
    pruned with the filters ``groups`` ties to them (``filter_groups``)."""
    if settings.granularity == "filter":
        pruned = filter_prune(weights, masks, settings.prune_rate, settings.scope, settings.filter_criterion, groups)
        return with_consumer_inputs(pruned, consumers)
    return magnitude_prune(weights, masks, settings.prune_rate, settings.scope)


@torch.no_grad()
def rewind(model, rewind_state, masks):
    """Step 3 of IMP: every parameter and buffer ← θ_k (``rewind_state``), then pruned weights ← 0 (bit for bit)."""
    de_parallel(model).load_state_dict(rewind_state)
    masks.apply(model)


# ---------------------------------------------------------------------------------------------------- plug-ins
class MaskPlugin(Plugin):
    """Keeps the pruned weights of the trained model at exactly 0 through training (see the module docstring).

    Adds the ``masks`` entry to every checkpoint and a ``sparsity`` column to results.csv, writes the per-layer
    sparsity table to ``masks.txt`` in the run folder, and after each epoch checks that no pruned weight is
    non-zero (a ``RuntimeError`` if one is: that would be a bug).
    """

    name = "masks"

    def __init__(self, masks):
        self.masks = masks
        self.pairs, self.handles = [], []

    def setup(self, trainer):
        model = de_parallel(trainer.model)
        self.pairs = self.masks.bind(model)
        self.masks = Masks({n: m for n, (_, m) in zip(self.masks.names(), self.pairs)})
        self.apply_to_weights()
        self.close()
        if getattr(trainer, "main", False) and getattr(trainer, "save_dir", None) is not None:
            (Path(trainer.save_dir) / "masks.txt").write_text(self.masks.report() + "\n")
        for p, m in self.pairs:
            self.handles.append(p.register_hook(lambda g, m=m: g.masked_fill(~m, 0)))

    @torch.no_grad()
    def apply_to_weights(self, optimizer=None):
        for p, m in self.pairs:
            p.masked_fill_(~m, 0.0)
            state = optimizer.state.get(p, {}) if optimizer is not None else {}
            for v in state.values():
                if isinstance(v, torch.Tensor) and v.shape == p.shape:
                    v.masked_fill_(~m, 0.0)

    def after_step(self, trainer):
        self.apply_to_weights(trainer.optimizer)

    def after_epoch(self, trainer, epoch, metrics):
        bad = self.masks.violations(trainer.model)
        if bad:
            raise RuntimeError(f"{bad} pruned weights are non-zero after epoch {epoch + 1}")
        return {"sparsity": self.masks.sparsity()}

    def checkpoint_entries(self, trainer):
        return {"masks": self.masks.state_dict()}

    def close(self):
        """Remove the gradient hooks (the runner calls it when the round's training ends)."""
        for h in self.handles:
            h.remove()
        self.handles = []


class RewindPlugin(Plugin):
    """Captures θ_k once (after ``epoch`` epochs, or after ``iteration`` optimiser steps when that is given) and
    writes it, once captured or when given as ``snapshot``, into every checkpoint as the ``rewind`` entry.

    ``epoch=0`` (and no ``iteration``) captures the initial weights, which is the original Lottery Ticket rewind
    (Frankle & Carbin 2019). The snapshot is the raw (not EMA) model state: parameters and buffers.
    """

    name = "rewind"

    def __init__(self, epoch=None, iteration=None, snapshot=None):
        self.epoch = epoch
        self.iteration = iteration
        self.snapshot = snapshot
        self.steps = 0

    def capture(self, trainer, epoch):
        state = de_parallel(trainer.model).state_dict()
        self.snapshot = {"model": {k: v.detach().cpu().clone() for k, v in state.items()},
                         "epoch": epoch, "step": self.steps}
        if trainer.main:
            trainer.log(f"rewind point captured: {self.describe()}")

    def describe(self):
        if self.snapshot is None:
            return "not captured"
        return f"optimiser step {self.snapshot['step']} ({self.snapshot['epoch']} epochs completed)"

    def setup(self, trainer):
        if self.snapshot is None and trainer.resume_ckpt is None and self.iteration in (None, 0) and not self.epoch:
            self.capture(trainer, 0)

    def after_step(self, trainer):
        self.steps += 1
        if self.snapshot is None and self.iteration and self.steps == self.iteration:
            self.capture(trainer, trainer.epoch)

    def after_epoch(self, trainer, epoch, metrics):
        if self.snapshot is None and not self.iteration and self.epoch and epoch + 1 == self.epoch:
            self.capture(trainer, epoch + 1)
        return {}

    def checkpoint_entries(self, trainer):
        return {"rewind": self.snapshot} if self.snapshot is not None else {}

    def check_captured(self, last, epochs):
        """After the round that was to capture θ_k (``last``: its last.pt): a one-line error if it never did."""
        if self.snapshot is None:
            where = f"optimiser step {self.iteration}" if self.iteration else f"epoch {self.epoch}"
            raise UserError(f"{last}: the rewind point ({where}) was not reached in the round's {epochs} epochs; "
                            f"lower --rewind-iter/--rewind-epoch")

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = int(state.get("steps", 0))


# ------------------------------------------------------------------------------------------------- run folder
ROUND_COLUMNS = ("round", "kind", "sparsity", "expected_sparsity", "alive_params", "params", "dense_macs",
                 "sparse_macs", "map50", "map", "best_epoch", "seconds")


class PruneRun:
    """A prune.py run folder: ``args.yaml`` (the run's resolved arguments), ``round_<r>/`` (a Trainer save dir
    each: weights/last.pt, best.pt, results.csv), ``rounds.csv`` and ``rounds.png``.

    A round is finished exactly when rounds.csv has its row; rows are written after the round's last.pt, so a
    killed run redoes at most the row-writing of a round whose training had ended.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.csv = self.path / "rounds.csv"
        self.png = self.path / "rounds.png"

    @classmethod
    def create(cls, args):
        run = cls(increment_path(Path(args.project) / args.name, exist_ok=args.exist_ok))
        run.claim()  # before anything is written: a live run's folder is refused
        save_args(args, run.path / "args.yaml")
        return run

    def claim(self, log=print):
        """Take the folder's run lock (main process) and remove the temporary files a killed run left in it."""
        self.path.mkdir(parents=True, exist_ok=True)
        if is_main_process():
            runlock.acquire(self.path, log)
            remove_stale_temporaries(self.path)

    def release(self):
        """Give the folder's run lock back (a no-op where this process does not hold it)."""
        runlock.release(self.path / runlock.LOCK_NAME)

    @staticmethod
    def is_run(path):
        """A run folder holds args.yaml and round folders (a round folder holds args.yaml but no rounds)."""
        return (path / "args.yaml").is_file() and any(p.is_dir() for p in path.glob("round_*"))

    @classmethod
    def find(cls, resume, project):
        """The run folder of ``--resume`` (True: the most recent run below ``project``; or a path inside a run)."""
        if resume is True or resume == "True":
            runs = [p for p in Path(project).glob("*") if p.is_dir() and cls.is_run(p)]
            if not runs:
                raise UserError(f"{project}: no prune run to resume")
            return cls(max(runs, key=lambda p: max(f.stat().st_mtime for f in p.rglob("*"))))
        path = Path(resume).resolve()
        for candidate in [path, *path.parents]:
            if cls.is_run(candidate):
                return cls(candidate)
        raise UserError(f"{resume}: not inside a prune run folder (one with args.yaml and round_<r>/ folders)")

    def load_args(self):
        values = yaml.safe_load((self.path / "args.yaml").read_text()) or {}
        return upgrade_saved_args(argparse.Namespace(**values), str(self.path / "args.yaml"))

    def round_dir(self, r):
        return self.path / f"round_{r}"

    def rows(self):
        if not self.csv.is_file():
            return []
        with open(self.csv, newline="") as f:
            return list(csv.DictReader(f))

    def finished(self, r):
        return any(int(row["round"]) == r for row in self.rows())

    def record(self, row):
        """Add (or replace) the row of ``row['round']``, rewrite rounds.csv atomically and redraw rounds.png."""
        rows = [x for x in self.rows() if int(x["round"]) != row["round"]] + [row]
        rows.sort(key=lambda x: int(x["round"]))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(ROUND_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.csv, text.getvalue())
        plot_rounds(self.csv)


def plot_rounds(csv_path):
    """rounds.png: mAP@0.5 and AP@[.5:.95] of each round against its sparsity, rounds annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("map50") not in ("", None)]
    if not rows:
        return
    x = [100 * float(r["sparsity"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [float(r["map50"]) for r in rows], "o-", label="mAP@0.5")
    ax.plot(x, [float(r["map"]) for r in rows], "s--", label="AP@[.5:.95]")
    for xi, r in zip(x, rows):
        ax.annotate(r["round"], (xi, float(r["map50"])), textcoords="offset points", xytext=(0, 5), fontsize=7,
                    ha="center")
    ax.set_xlabel("sparsity of the prunable weights (%)")
    ax.set_ylabel("mAP")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{Path(csv_path).parent.name}: accuracy per round")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(Path(csv_path).with_suffix(".png")) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


# ------------------------------------------------------------------------------------------------- strategies
def build_model(ckpt, args):
    """A ``Darknet`` of a checkpoint's cfg text and class count, holding its inference weights."""
    model = Darknet.from_text(ckpt["cfg"], name=ckpt.get("cfg_name", "cfg"), img_size=args.img_size, nc=ckpt["nc"])
    model.load_state_dict(ckpt["model"])
    return model


def rewind_epochs(value, epochs):
    """``--rewind-epoch`` in epochs: 0 or a whole number of epochs, or a fraction of ``epochs`` below 1 (at least
    one epoch: 0.03 of 300 is 9, as the original project rewound; of 30 it is 1)."""
    value = float(value or 0)
    if 0 < value < 1:
        return max(1, round(value * epochs))
    if value != int(value) or value < 0:
        raise UserError(f"--rewind-epoch {value:g}: give a whole number of epochs, or a fraction of --epochs below 1")
    return int(value)


def checkpoint_masks(ckpt):
    return Masks.from_state_dict(ckpt["masks"]) if ckpt.get("masks") else None


class Strategy:
    """A pruning technique as a sequence of rounds, each one ``Trainer`` run in ``round_<r>/``.

    Subclasses say how a round starts fresh (``begin_round``) or from its own ``last.pt`` (``resume_round``):
    both return ``(model, plugins)``. ``trained(r)`` may say that a round needs no training (e.g. a given dense
    checkpoint); ``external_row(r)`` then describes it. ``kind(r)`` names a round in rounds.csv. The pruning itself
    is a function (``lth_prune``); ``run_rounds`` runs the rounds and writes rounds.csv, for every strategy alike.
    """

    name = "strategy"

    def __init__(self, args, run):
        self.args, self.run = args, run
        self.main = is_main_process()

    def num_rounds(self):
        raise NotImplementedError

    def kind(self, r):
        return "dense" if r == 0 else "pruned"

    def trained(self, r):
        return True

    def begin_round(self, r):
        raise NotImplementedError

    def resume_round(self, r, ckpt):
        raise NotImplementedError

    def expected_sparsity(self, r):
        return ""

    def external_row(self, r):
        raise NotImplementedError

    def describe_start(self, r):
        return f"round {r}/{self.num_rounds() - 1} ({self.kind(r)})"

    def round_args(self, r):
        """The arguments round ``r`` trains with (a strategy may change e.g. its epochs)."""
        return self.args

    def first_epoch(self, r):
        """The epoch of the schedule a fresh round ``r`` starts at (0: the whole schedule)."""
        return 0

    def row_checkpoint(self, r):
        """The checkpoint a trained round's rounds.csv row describes: best.pt, else last.pt."""
        wdir = self.run.round_dir(r) / "weights"
        return wdir / "best.pt" if (wdir / "best.pt").is_file() else wdir / "last.pt"


# --------------------------------------------------------------------------------------------- the round runner
def run_rounds(strategy, log=print):
    """Run (or continue) every round of ``strategy`` not yet in rounds.csv; returns the final round's checkpoint."""
    run = strategy.run
    for r in range(strategy.num_rounds()):
        if run.finished(r):
            continue
        row = train_round(strategy, r, log) if strategy.trained(r) else strategy.external_row(r)
        if strategy.main:
            run.record(row)
            log(progress_line(row, strategy.num_rounds() - 1, run.csv))
    run.release()  # claimed when the run folder was made or found for --resume
    last = strategy.num_rounds() - 1
    if not strategy.trained(last):
        return Path(strategy.args.weights)
    final = run.round_dir(last) / "weights"
    return final / "best.pt" if (final / "best.pt").is_file() else final / "last.pt"


def train_round(strategy, r, log):
    """One round: a ``Trainer`` run in ``round_<r>/``, fresh (``begin_round``) or resumed (``resume_round``)."""
    save_dir = strategy.run.round_dir(r)
    last = save_dir / "weights" / "last.pt"
    ckpt = load_checkpoint(last) if last.is_file() else None
    if ckpt is not None and "train_state" in ckpt:
        model, plugins = strategy.resume_round(r, ckpt)
        first = 0  # the checkpoint's scheduler state says where the round stands
        log(f"{strategy.describe_start(r)}: resuming {save_dir}")
    else:
        ckpt = None
        model, plugins = strategy.begin_round(r)
        epochs, first = strategy.round_args(r).epochs, strategy.first_epoch(r)
        what = f"epochs {first + 1}-{epochs} of {epochs}" if first else f"{epochs} epochs"
        log(f"{strategy.describe_start(r)}: training {what} in {save_dir}")
    trainer = Trainer(strategy.round_args(r), model, save_dir, plugins=plugins, resume_ckpt=ckpt, log=log,
                      first_epoch=first)
    try:
        trainer.fit()
    finally:
        for p in plugins:
            if hasattr(p, "close"):
                p.close()
    for p in plugins:
        if isinstance(p, RewindPlugin):
            p.check_captured(trainer.wdir / "last.pt", trainer.epochs)
    return trained_row(strategy, r, trainer)


# --------------------------------------------------------------------------------------------- rounds.csv rows
def trained_row(strategy, r, trainer):
    """The rounds.csv row of a trained round: ``row_checkpoint``'s (best.pt's) epoch and metrics (from results.csv),
    its weights' sparsity and MACs, and the round's wall time (sum of its epochs, across resumes)."""
    ckpt = load_checkpoint(strategy.row_checkpoint(r))
    epoch = ckpt["epoch"] + 1
    metrics = next((row for row in trainer.rows if int(row["epoch"]) == epoch), {})
    row = weights_row(strategy, r, ckpt)
    row.update(map50=metrics.get("metrics/map50", ""), map=metrics.get("metrics/map", ""), best_epoch=epoch,
               seconds=round(sum(float(x.get("seconds", 0)) for x in trainer.rows), 1))
    return row


def weights_row(strategy, r, ckpt):
    """Sparsity, parameter and MAC columns for a checkpoint (masks when it has them, else zero counts)."""
    model = build_model(ckpt, strategy.args)
    summary = model_summary(model, img_size=strategy.args.img_size)
    masks = checkpoint_masks(ckpt)
    if masks is not None:
        sparsity, alive = masks.sparsity(), summary["params"] - masks.pruned()
    else:
        sparsity, alive = summary["sparsity"], summary["nonzero_params"]
    return {"round": r, "kind": strategy.kind(r), "sparsity": round(sparsity, 6),
            "expected_sparsity": strategy.expected_sparsity(r), "alive_params": alive,
            "params": summary["params"], "dense_macs": int(summary["macs"]), "sparse_macs": summary["sparse_macs"]}


def progress_line(row, last, csv_path):
    """The line a finished round prints: sparsity (and its target), parameters, MACs, mAP, time, rounds left."""
    r = int(row["round"])
    target = f" (target {float(row['expected_sparsity']):.2%})" if row.get("expected_sparsity") != "" else ""
    score = (f"mAP@0.5 {float(row['map50']):.4f}, AP {float(row['map']):.4f}" if row.get("map50") != ""
             else "not evaluated")
    left = f"{last - r} round{'s' * (last - r != 1)} to go" if r < last else "done"
    return (f"round {r}/{last} ({row['kind']}): sparsity {float(row['sparsity']):.2%}{target}, "
            f"{int(row['alive_params']):,}/{int(row['params']):,} params alive, MACs {int(row['sparse_macs']):,} "
            f"sparse / {int(row['dense_macs']):,} dense, {score}, {float(row['seconds'] or 0):.0f}s; {left} "
            f"[{csv_path}]")


class LotteryTicket(Strategy):
    """Iterative magnitude pruning with late rewinding (Frankle et al. 2019, arXiv 1903.01611, Algorithm 1).

    Round 0 trains the dense network and captures θ_k (``RewindPlugin``), or takes ``--weights DENSE.pt`` that
    holds a ``rewind`` entry (then round 0 is not trained, only evaluated; a ``masks`` entry there is kept, so a
    pruned checkpoint can be pruned further). Round r ≥ 1 prunes the final weights of round r − 1 (its last.pt's
    ``model``: the EMA when the run uses one, the weights that were evaluated) by ``--prune-rate`` with
    ``--scope``, rewinds the survivors to θ_k and retrains with a fresh optimiser: from epoch k to ``--epochs``
    with the schedule continued from k (``--retrain-schedule continue``, Frankle et al. 2019's T − k iterations),
    or all ``--epochs`` with warm-up and cosine restarted (``restart``, the original project). ``--rank-weights``
    says which final weights are ranked: the EMA (``ema``, the weights evaluated and saved) or the raw ones.
    ``--rewind lr`` (learning-rate rewinding, Renda et al. 2020, arXiv 2003.02389) keeps the survivors' ranked final
    values instead of θ_k and replays the same schedule.
    """

    name = "lth"

    def __init__(self, args, run):
        super().__init__(args, run)
        self.settings = s = LTHSettings.from_args(args)
        self.rate, self.scope, self.rounds = float(s.prune_rate), scope_type(s.scope), int(s.rounds)
        self.rewind_iter = s.rewind_iter or None
        self.rewind_epoch = rewind_epochs(s.rewind_epoch, args.epochs)
        self.continued = s.retrain_schedule == "continue"
        self.rank_raw = s.rank_weights == "raw"
        self.lr_rewind = s.rewind == "lr"
        self.given = None
        weights = str(args.weights or "")
        if weights.endswith(".pt"):
            ckpt = load_checkpoint(weights)
            if ckpt.get("rewind"):
                self.given = ckpt  # a trained round: its rewind point is already taken
        if self.given is None and self.rewind_iter is None and not 0 <= self.rewind_epoch <= args.epochs:
            raise UserError(f"--rewind-epoch {self.rewind_epoch} is outside the dense run's {args.epochs} epochs")
        self._start_masks = None  # the masks round 1 prunes from, for the expected sparsity
        self._consumers = None  # filter_consumers of the network: one cfg, so the same in every round

    def num_rounds(self):
        return self.rounds + 1

    def trained(self, r):
        return not (r == 0 and self.given is not None)

    def kind(self, r):
        if r == 0:
            return "given" if self.given is not None else "dense"
        return f"lth-{self.scope}"

    def describe_start(self, r):
        if r == 0:
            where = (f"{self.rewind_iter} optimiser steps" if self.rewind_iter else f"epoch {self.rewind_epoch}")
            return f"round 0/{self.rounds} (dense; rewind point after {where})"
        filters = self.settings.granularity == "filter"
        what = "filters" if filters else "weights"
        if filters and self.settings.shortcut_filters == "together":
            what += ", a shortcut's summed convs together"
        by = "BN |gamma|" if filters and self.settings.filter_criterion == "bn" else "magnitudes"
        start = "kept their final values (learning-rate rewinding)" if self.lr_rewind else "rewound"
        return (f"round {r}/{self.rounds}: pruned {self.rate:g} of the surviving {what} ({self.scope}, by "
                f"{'raw' if self.rank_raw else 'EMA'} {by}), {start}")

    def first_epoch(self, r):
        """``continue``: a pruned round resumes the schedule at the epoch its θ_k was taken in (with
        ``--rewind-iter``, at the start of the epoch that held step k)."""
        if r == 0 or not self.continued:
            return 0
        k = int(self.previous(r)["rewind"]["epoch"])
        if k >= self.args.epochs:
            raise UserError(f"the rewind point (epoch {k}) leaves no epoch of the {self.args.epochs} to retrain "
                            f"with --retrain-schedule continue")
        return k

    # -- the state each round starts from ------------------------------------------------------------
    def previous(self, r):
        """The checkpoint round ``r`` starts from: round r − 1's last.pt (or the given dense checkpoint)."""
        if r == 1 and self.given is not None:
            return self.given
        return load_checkpoint(self.run.round_dir(r - 1) / "weights" / "last.pt")

    def start_masks(self, model):
        """All-alive masks over the prunable set (``--prune-output``, ``--keep-first-dense``), merged with those
        of a given checkpoint."""
        masks = Masks.from_model(model, include_output=self.settings.prune_output,
                                 skip_first=self.settings.keep_first_dense, granularity=self.settings.granularity,
                                 coupled=self.settings.shortcut_filters == "together")
        if self.given is not None and self.given.get("masks"):
            masks = masks.merged(checkpoint_masks(self.given))
        return masks

    def expected_sparsity(self, r):
        """The sparsity round ``r`` should reach: weights, 1 − (1 − start)(1 − p)^r; local filters, per layer
        (``expected_filter_sparsity``); global filters have no such formula (which layers lose filters decides)."""
        filters = self.settings.granularity == "filter"
        if filters and self.scope == "global":
            return ""
        if self._start_masks is None:
            model = build_model(self.previous(1), self.args) if filters or self.given is not None else None
            self._start_masks = self.start_masks(model) if model is not None else Masks({})
            if filters:
                self.consumers(model)
        if filters:
            return round(expected_filter_sparsity(self._start_masks, self.rate, r, self._consumers), 6)
        return round(expected_sparsity(self.rate, r, self._start_masks.sparsity()), 6)

    def consumers(self, model):
        """``filter_consumers`` of the network (its channel graph), found once per run."""
        if self._consumers is None:
            self._consumers = filter_consumers(model)
        return self._consumers

    # -- rounds ----------------------------------------------------------------------------------------
    def begin_round(self, r):
        if r == 0:
            init_seeds(self.args.seed, self.args.deterministic)  # the dense initialisation is reproducible

            model, _ = model_from_args(self.args)
            return model, [RewindPlugin(self.rewind_epoch, self.rewind_iter)]
        prev = self.previous(r)
        model = build_model(prev, self.args)
        masks = checkpoint_masks(prev) if r > 1 else self.start_masks(model)
        ranked = self.ranked_weights(prev, r)
        filters = self.settings.granularity == "filter"
        consumers = self.consumers(model) if filters else None
        groups = filter_groups(model, unit_kernels(masks)) if filters else None
        new = lth_prune(ranked, masks, self.settings, consumers, groups)
        rewind(model, ranked if self.lr_rewind else prev["rewind"]["model"], new)
        return model, [MaskPlugin(new), RewindPlugin(snapshot=prev["rewind"])]

    def ranked_weights(self, prev, r):
        """The state dict whose magnitudes decide round ``r``'s pruning: the EMA (``model``) or the raw weights."""
        if not self.rank_raw:
            return prev["model"]
        if "train_state" not in prev:
            raise UserError(f"round {r}: --rank-weights raw needs a last.pt with its training state "
                            f"(the given checkpoint has only its evaluated weights)")
        return prev["train_state"]["model"]

    def resume_round(self, r, ckpt):
        model = build_model(ckpt, self.args)
        plugins = [RewindPlugin(self.rewind_epoch, self.rewind_iter, snapshot=ckpt.get("rewind"))]
        masks = checkpoint_masks(ckpt)
        if r > 0:
            if masks is None:
                raise UserError(f"{self.run.round_dir(r)}: last.pt of a pruned round holds no masks")
            plugins.insert(0, MaskPlugin(masks))
        return model, plugins

    def external_row(self, r):
        """Round 0 from ``--weights``: evaluate the given checkpoint on the validation set."""
        row = weights_row(self, r, self.given)
        row.update(evaluate_checkpoint(self.given, self.args), best_epoch="", seconds=0.0)
        return row


def evaluate_checkpoint(ckpt, args):
    """``{'map50', 'map'}`` of a checkpoint's inference weights on ``args.data``'s validation set."""
    data = parse_data_cfg(args.data)
    device = select_device(args.device)
    model = build_model(ckpt, args).to(device)
    loader, _ = create_dataloader(data["valid"], args.img_size, args.batch_size * 2, model.max_stride,
                                  hyp=hyp_from_args(args), augment=False, rect=True, workers=args.workers,
                                  shuffle=False, nc=data["classes"])
    metrics = evaluate(model, loader, precision=resolve_precision(device, args.amp), names=data["names"])
    return {"map50": metrics["map50"], "map": metrics["map"]}


STRATEGIES = {"lth": LotteryTicket}

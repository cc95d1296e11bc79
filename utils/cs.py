"""Continuous Sparsification (``prune.py --cs``): soft masks learnt by gradient descent, then a rewound ticket.

After Savarese, Silva & Maire, "Winning the Lottery with Continuous Sparsification" (NeurIPS 2020,
arXiv 1912.04427), section 3 and Algorithm 1 ("ticket search"). Notation of the paper and of this module:

- every prunable conv kernel w (``models.prunable_parameters``, as for LTH) gets a logit tensor s of its shape,
  initialised to s₀ (``--mask-init``); the network computes with the soft-masked kernel

      w ⊙ m(s, β),   m(s, β) = σ(β·s) / σ(s₀)                                      (eq. 5 with the scale 1/σ(s₀))

  so at β = 1 and s = s₀ every gate is exactly 1 (σ(s₀)/σ(s₀)) and the network starts as the dense one;
- the objective is  L_det(w ⊙ m) + λ · ‖σ(β·s)‖₁ = L_det + λ · Σ σ(β·s)            (eq. 6, λ = ``--cs-lambda``),
  the L1 term depending on the logits only;
- within a search round of E epochs the temperature grows geometrically, β_e = β_T^(e/(E−1)) (β_T =
  ``--final-temperature``), so σ(β·s) tends to the step 1[s > 0]: a weight survives where training pushed its
  logit above 0;
- at the end of a search round ("iteration") s ← min(β_T·s, s₀) and β ← 1 (Algorithm 1, line 8): kept weights
  restart at s₀, removed ones stay below it; the weights are **not** rewound between search rounds;
- the ticket: after the last search round m = 1[s > 0] is frozen, the weights are rewound to θ_k (the weights after
  ``--rewind-epoch`` epochs of the first search round, Frankle et al.'s late rewinding) and the masked network is
  retrained (Algorithm 1, lines 10-11).

The classes (``SoftMasks``, ``SoftFilterMasks``, ``CSPlugin``, ``ContinuousSparsification``), the EMA and the
checkpoint format are described in docs/techniques.md ("Continuous Sparsification").
"""
import copy
import math
from pathlib import Path

import torch

from models import prunable_parameters
from utils.checkpoint import load_checkpoint, plugin_state
from utils.engine import Plugin, model_from_args
from utils.errors import UserError
from utils.general import init_seeds
from utils.pruning import (STRATEGIES, MaskPlugin, Masks, RewindPlugin, Strategy, build_model, coupled_units,
                           filter_consumers, filter_groups, filter_units, rewind, rewind_epochs, with_consumer_inputs)
from utils.settings import CSSettings
from utils.torch_utils import de_parallel

def temperature(epoch, epochs, final):
    """β_e = β_T^(e/(E−1)) for epoch ``epoch`` (0-based) of ``epochs``: 1 at the first epoch, β_T at the last."""
    if epochs < 2:
        return 1.0
    return float(final) ** (epoch / (epochs - 1))


def reset_logits(s, final_temperature, mask_init, rule="paper"):
    """The end-of-round rule, as a new tensor: s ← min(β_T·s, s₀) (``paper``: Savarese et al. 2019, Algorithm 1),
    or s ← min(s, s₀) (``original``: the original project's cs.py sets β to 1 before this step, so removed weights
    stay near 0 and can return)."""
    scale = float(final_temperature) if rule == "paper" else 1.0
    return torch.clamp(s * scale, max=float(mask_init))


# ------------------------------------------------------------------------------------------------ soft masks
class SoftMasks:
    """Mask logits ``{parameter name: float32 tensor}``, the temperature β and s₀; applies m = σ(β·s)/σ(s₀).

    The logits are leaf tensors with ``requires_grad``; they are not registered in any module, so neither the main
    optimiser, the EMA nor a state dict ever holds them. ``attach(model)`` hooks the masked convs (see the module
    docstring); a deep copy of the hooked model (the engine's EMA) shares this object, so it sees the same logits.
    """

    def __init__(self, logits, mask_init, beta=1.0):
        self.mask_init = float(mask_init)
        self.beta = float(beta)
        self.logits = {}
        for name, s in dict(logits).items():
            if not isinstance(s, torch.Tensor) or not s.is_floating_point():
                raise TypeError(f"logits {name!r} must be a float tensor")
            self.logits[name] = s.detach().float().clone().requires_grad_(True)
        self._sig0 = {}
        self._held = {}  # id(module) -> its weight parameter, while the module's forward runs
        self.handles = []

    def __deepcopy__(self, memo):
        return self  # a copied model (the EMA) keeps using the one set of logits

    @classmethod
    def init(cls, named_parameters, mask_init):
        """Logits s₀ for every ``(name, parameter)`` (e.g. ``models.prunable_parameters(model)``)."""
        return cls({n: torch.full(p.shape, float(mask_init), dtype=torch.float32, device=p.device)
                    for n, p in named_parameters}, mask_init)

    # -- a small mapping ------------------------------------------------------------------------------
    def names(self):
        return list(self.logits)

    def __len__(self):
        return len(self.logits)

    def numel(self):
        """The weights the gates cover (one per logit here)."""
        return sum(s.numel() for s in self.logits.values())

    def lr_scales(self):
        """``{name: factor of --mask-lr}`` for each logit tensor."""
        return {n: 1.0 for n in self.logits}

    def describe(self):
        return f"{len(self)} soft-masked tensors, {self.numel():,} logits"

    def folded_names(self):
        """The state-dict entries ``fold`` changes."""
        return list(self.logits)

    def to(self, device):
        """Move the logits (keeping them leaf tensors)."""
        for n, s in self.logits.items():
            if s.device != torch.device(device):
                self.logits[n] = s.detach().to(device).requires_grad_(True)
        self._sig0 = {}
        return self

    # -- the gates ------------------------------------------------------------------------------------
    def sig0(self, device):
        """σ(s₀) as the float32 value torch computes on ``device`` (so σ(1·s₀)/σ(s₀) is exactly 1 there)."""
        key = str(device)
        if key not in self._sig0:
            self._sig0[key] = float(torch.sigmoid(torch.tensor([self.mask_init], dtype=torch.float32, device=device)))
        return self._sig0[key]

    def lead(self, name):
        """The logits tensor that gates ``name`` (its own here; filter gates may share another's)."""
        return name

    def soft_gate(self, name):
        """σ(β·s)/σ(s₀) of one tensor (differentiable in s)."""
        s = self.logits[self.lead(name)]
        return torch.sigmoid(self.beta * s) / self.sig0(s.device)

    @torch.no_grad()
    def alive(self, name):
        """1[s > 0]: the entries the hard gate keeps."""
        return self.logits[self.lead(name)].detach() > 0

    @torch.no_grad()
    def hard_gate(self, name):
        """1[s > 0]/σ(s₀) of one tensor: the soft gate's limit for β → ∞."""
        s = self.logits[self.lead(name)]
        return self.alive(name).to(s.dtype) / self.sig0(s.device)

    def hard_weight(self, name, w):
        """w ⊙ 1[s > 0]/σ(s₀) with the removed entries at exactly +0.0 (w · 0 would leave −0.0 for negative w,
        which sparse storage keeps as a value)."""
        return (w * self.hard_gate(name)).masked_fill(~self.alive(name), 0.0)

    def l1(self, penalty="sigmoid"):
        """Σ σ(β·s) over every logit (the paper's ‖σ(βs)‖₁; differentiable), or with ``penalty="gate"`` the sum of the
        gates σ(β·s)/σ(s₀) (the original project's term)."""
        total = sum(torch.sigmoid(self.beta * s).sum() for s in self.logits.values())
        if penalty == "gate" and self.logits:
            total = total / self.sig0(next(iter(self.logits.values())).device)
        return total

    @torch.no_grad()
    def soft_sparsity(self):
        """1 − mean σ(β·s): the L1 term normalised; tends to the hard sparsity as β grows."""
        n = self.numel()
        return 1.0 - float(self.l1()) / n if n else 0.0

    def hard_masks(self):
        """The binary ``Masks`` 1[s > 0] (True = alive)."""
        return Masks({n: self.alive(n) for n in self.logits})

    def hard_sparsity(self):
        return self.hard_masks().sparsity()

    @torch.no_grad()
    def reset(self, final_temperature, rule="paper"):
        """End of a search round: s ← min(β_T·s, s₀) (or min(s, s₀), ``reset_logits``) and β ← 1, in place."""
        for s in self.logits.values():
            s.copy_(reset_logits(s, final_temperature, self.mask_init, rule))
        self.beta = 1.0

    # -- hooks ----------------------------------------------------------------------------------------
    def owners(self, model):
        """``[(name, conv module)]`` of ``model`` (DDP unwrapped); a missing name or another shape is an error."""
        model = de_parallel(model)
        params = dict(model.named_parameters())
        pairs = []
        for n, s in self.logits.items():
            if n not in params:
                raise UserError(f"mask logits for '{n}' have no parameter of that name in the network")
            if params[n].shape != s.shape:
                raise UserError(f"mask logits for '{n}' are {tuple(s.shape)}, the parameter {tuple(params[n].shape)}")
            path, _, attr = n.rpartition(".")
            if attr != "weight":
                raise UserError(f"'{n}': only conv kernels ('weight') can carry soft masks")
            pairs.append((n, model.get_submodule(path)))
        return pairs

    def attach(self, model):
        """Hook every masked conv of ``model``: training mode computes with w ⊙ σ(β·s)/σ(s₀), eval mode with
        w ⊙ 1[s > 0]/σ(s₀). Returns the hook handles (also kept in ``self.handles``)."""
        handles = []
        for name, module in self.owners(model):
            handles.append(module.register_forward_pre_hook(self._pre_hook(name)))
            handles.append(module.register_forward_hook(self._post_hook(), always_call=True))
        self.handles += handles
        return handles

    def _pre_hook(self, name):
        bank = self

        def apply_mask(module, args):
            weight = module._parameters["weight"]
            bank._held[id(module)] = weight
            if module.training and torch.is_grad_enabled():  # learning: the soft gate (its gradient moves s)
                module._parameters["weight"] = weight * bank.soft_gate(name)
            else:
                module._parameters["weight"] = bank.hard_weight(name, weight)

        return apply_mask

    def _post_hook(self):
        bank = self

        def restore(module, args, output):
            weight = bank._held.pop(id(module), None)
            if weight is not None:
                module._parameters["weight"] = weight

        return restore

    def detach(self, *models):
        """Remove the hooks from the model they were attached to and from copies of it (e.g. the EMA)."""
        ids = [h.id for h in self.handles]
        for h in self.handles:
            h.remove()
        for model in models:
            for m in de_parallel(model).modules():
                for hooks in (m._forward_pre_hooks, m._forward_hooks, getattr(m, "_forward_hooks_always_called", {})):
                    for i in ids:
                        hooks.pop(i, None)
        self.handles = []

    # -- the checkpoint -------------------------------------------------------------------------------
    @torch.no_grad()
    def fold(self, state):
        """A copy of the state dict ``state`` (raw weights) with every masked tensor replaced by ``hard_weight``:
        the weights of the network that eval mode computes, as a plain state dict (+0.0 where s ≤ 0)."""
        out = dict(state)
        for n in self.logits:
            out[n] = self.hard_weight(n, state[n].detach().float())
        return out

    def state_dict(self):
        return {"logits": {n: s.detach().cpu().clone() for n, s in self.logits.items()}, "beta": self.beta,
                "mask_init": self.mask_init}

    @classmethod
    def from_state_dict(cls, state):
        return cls(state["logits"], state["mask_init"], state.get("beta", 1.0))

    @torch.no_grad()
    def load_state_dict(self, state):
        for n, s in self.logits.items():
            s.copy_(state["logits"][n])
        self.beta = float(state.get("beta", 1.0))


class SoftFilterMasks(SoftMasks):
    """``--granularity filter``: one logit per output channel of each plain conv (``pruning.filter_units``).

    The gate multiplies the channel after its BN (or after the conv where it has no BN): a scale on a kernel that BN
    follows would be normalised away. The penalty weighs each gate by the kernel weights of its filter, and the
    logits of a layer learn at ``--mask-lr`` / (weights per filter), so λ and the mask lr keep their weight-level
    meaning: a filter's gate moves as the mean of its weights' gates would. The hard masks are ``filter_prune``'s
    (kernel rows + BN scale and shift), so the ticket and ``export.py --fold`` are those of filter-level LTH.
    ``tied`` ``{kernel: lead kernel}``: the convs a ``[shortcut]`` sums share their lead's gates, channel for
    channel, so a channel closes in all of them at once and the sum folds.
    """

    def __init__(self, logits, mask_init, beta=1.0, units=None, tied=None):
        super().__init__(logits, mask_init, beta)
        self.units = {k: (tuple(int(d) for d in shape), tuple(extra)) for k, (shape, extra) in dict(units).items()}
        self.tied = dict(tied or {})
        if set(self.units) != set(self.logits) | set(self.tied) or not set(self.tied.values()) <= set(self.logits):
            raise UserError("filter gates: the logits and their filter units name different kernels")

    @classmethod
    def init(cls, model, kernels, mask_init, coupled=False):
        """Logits s₀ for every filter of the plain convs among ``kernels`` (names of ``model``'s conv weights);
        ``coupled``: with the convs a ``[shortcut]`` sums, one gate per channel of the sum."""
        params = dict(de_parallel(model).named_parameters())
        units = {k: (tuple(params[k].shape), extra) for k, extra in filter_units(model, kernels, coupled).items()}
        if not units:
            raise UserError("--granularity filter: the network has no plain [convolutional] layer whose filters CS "
                            "could gate")
        tied = {}
        rows = {k: shape[0] for k, (shape, _) in units.items()}
        for unit in coupled_units(list(units), filter_groups(model, list(units)), rows):
            lead, first = unit[0]
            for k, col in unit[1:]:
                if not torch.equal(col, first):
                    raise UserError(f"filter gates: '{k}' is summed with '{lead}' channel for channel only in part")
                tied[k] = lead
        return cls({k: torch.full((shape[0],), float(mask_init), dtype=torch.float32, device=params[k].device)
                    for k, (shape, _) in units.items() if k not in tied}, mask_init, units=units, tied=tied)

    def lead(self, name):
        return self.tied.get(name, name)

    @torch.no_grad()
    def alive(self, name):
        """1[s > 0] over ``name``'s gates; where every gate is closed, the largest stays open (filter LTH too keeps
        a channel per unit): a conv with no filter would cut every path through it."""
        keep = super().alive(name)
        if not keep.any():
            keep[self.logits[self.lead(name)].argmax()] = True
        return keep

    def reopened(self):
        """The gated tensors whose every gate is closed (``alive`` keeps their largest)."""
        return [n for n, s in self.logits.items() if not (s.detach() > 0).any()]

    def per_gate(self, name):
        """Kernel weights of one gate of ``name``'s (all its tied convs' filters): its weight in the penalty."""
        return sum(math.prod(shape[1:]) for k, (shape, _) in self.units.items() if self.lead(k) == name)

    def numel(self):
        return sum(s.numel() * self.per_gate(n) for n, s in self.logits.items())

    def lr_scales(self):
        return {n: 1.0 / self.per_gate(n) for n in self.logits}

    def describe(self):
        tied = f" ({len(self.tied)} share the gates of a conv a [shortcut] sums them with)" if self.tied else ""
        return f"{sum(s.numel() for s in self.logits.values()):,} filter gates over {len(self.units)} convs{tied}"

    def l1(self, penalty="sigmoid"):
        total = sum(torch.sigmoid(self.beta * s).sum() * self.per_gate(n) for n, s in self.logits.items())
        if penalty == "gate" and self.logits:
            total = total / self.sig0(next(iter(self.logits.values())).device)
        return total

    def hard_masks(self):
        out = {}
        for n, (shape, extra) in self.units.items():
            keep = self.alive(n)
            out[n] = keep.view(-1, 1, 1, 1).expand(shape).clone()
            out.update({c: keep.clone() for c in extra})
        return Masks(out)

    def folded_names(self):
        return [x for n in self.units for x in (n, *self.units[n][1])]

    def owners(self, model):
        """``[(kernel name, the module whose output carries the channels)]``: the conv's BN, else the conv."""
        net = de_parallel(model)
        params = dict(net.named_parameters())
        pairs = []
        for n in self.units:
            s = self.logits[self.lead(n)]
            if n not in params or params[n].shape[0] != s.numel():
                raise UserError(f"filter gates for '{n}' do not match the network's parameter of that name")
            prefix = n.rsplit(".", 2)[0]
            bn = any(c.endswith(".bn.weight") for c in self.units[n][1])
            pairs.append((n, net.get_submodule(prefix + (".bn" if bn else ".conv"))))
        return pairs

    def attach(self, model):
        """Hook the module after each gated filter: its output channels × σ(β·s)/σ(s₀) while learning, × the hard
        gate otherwise."""
        handles = [module.register_forward_hook(self._gate_hook(name)) for name, module in self.owners(model)]
        self.handles += handles
        return handles

    def _gate_hook(self, name):
        bank = self

        def gate(module, args, output):
            g = bank.soft_gate(name) if module.training and torch.is_grad_enabled() else bank.hard_gate(name)
            return output * g.to(output.dtype).view(1, -1, 1, 1)

        return gate

    @torch.no_grad()
    def fold(self, state):
        """The gate folded into BN's scale and shift (or the conv's kernel and bias), the kernel rows of closed
        filters at +0.0: the network eval mode computes, as a plain state dict."""
        out = dict(state)
        for n, (_, extra) in self.units.items():
            h, keep = self.hard_gate(n), self.alive(n)
            scaled = extra if any(c.endswith(".bn.weight") for c in extra) else (n, *extra)
            for c in (n, *extra):
                v = state[c].detach().float()
                shape = (-1,) + (1,) * (v.dim() - 1)
                if c in scaled:
                    v = v * h.to(v.device).view(shape)
                out[c] = v.masked_fill(~keep.to(v.device).view(shape), 0.0)
        return out

    def state_dict(self):
        return {**super().state_dict(), "granularity": "filter", "tied": dict(self.tied),
                "units": {k: (list(shape), list(extra)) for k, (shape, extra) in self.units.items()}}

    @classmethod
    def from_state_dict(cls, state):
        return cls(state["logits"], state["mask_init"], state.get("beta", 1.0), units=state["units"],
                   tied=state.get("tied"))


def soft_masks_from_state(state):
    """``SoftMasks`` or ``SoftFilterMasks``, as the state saved by ``state_dict`` says."""
    kind = SoftFilterMasks if state.get("granularity") == "filter" else SoftMasks
    return kind.from_state_dict(state)


# ---------------------------------------------------------------------------------------------------- plug-in
class CSPlugin(Plugin):
    """One search round of Continuous Sparsification in the training engine (see the module docstring).

    The gate logits have their own SGD (``optimizers``), which the engine steps with the weights' optimiser.
    """

    name = "cs"

    def __init__(self, soft_masks, settings=None, **changes):
        """``settings``: a ``CSSettings`` (default: its fallbacks), ``changes``: fields to override."""
        self.masks = soft_masks
        self.settings = s = (settings or CSSettings()).but(**changes)
        self.cs_lambda, self.final_temperature = float(s.cs_lambda), float(s.final_temperature)
        self.mask_lr, self.mask_momentum = float(s.mask_lr), float(s.mask_momentum)
        self.penalty, self.nesterov = s.cs_penalty, bool(s.mask_nesterov)
        self.trainer = None
        self.optimizer = None

    def setup(self, trainer):
        self.trainer = trainer
        model = de_parallel(trainer.model)
        device = next(model.parameters()).device
        self.masks.to(device)
        self.masks.attach(model)
        momentum = self.mask_momentum
        self.optimizer = torch.optim.SGD(self.param_groups(), lr=self.mask_lr, momentum=momentum,
                                         nesterov=self.nesterov and momentum > 0, weight_decay=0.0)
        if getattr(trainer, "main", False) and getattr(trainer, "save_dir", None) is not None:
            trainer.log(f"continuous sparsification: {self.masks.describe()} at s0={self.masks.mask_init:g}, "
                        f"lambda={self.cs_lambda:g}, beta 1 -> {self.final_temperature:g}")

    def param_groups(self):
        """One group of every logit at --mask-lr, or (filter gates) one per tensor with its ``lr_scales`` factor."""
        scales = self.masks.lr_scales()
        if set(scales.values()) <= {1.0}:
            return [{"params": list(self.masks.logits.values())}]
        return [{"params": [s], "lr": self.mask_lr * scales[n], "scale": scales[n]}
                for n, s in self.masks.logits.items()]

    def before_epoch(self, trainer, epoch):
        self.masks.beta = temperature(epoch, trainer.epochs, self.final_temperature)
        factor = trainer.lf(epoch) if hasattr(trainer, "lf") else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = self.mask_lr * factor * group.get("scale", 1.0)

    def optimizers(self):
        return [self.optimizer]

    def extra_loss(self, trainer, imgs, targets, outputs, features):
        if self.cs_lambda == 0:
            return {}
        return {"cs_l1": self.cs_lambda * self.masks.l1(self.penalty)}

    def after_epoch(self, trainer, epoch, metrics):
        if getattr(trainer, "main", False) and getattr(trainer, "save_dir", None) is not None:
            (Path(trainer.save_dir) / "masks.txt").write_text(
                f"hard masks 1[s > 0] after epoch {epoch + 1} (beta {self.masks.beta:g})\n"
                + self.masks.hard_masks().report() + "\n")
        return {"cs/beta": self.masks.beta, "cs/soft_sparsity": self.masks.soft_sparsity(),
                "cs/hard_sparsity": self.masks.hard_sparsity()}

    def checkpoint_entries(self, trainer):
        """``model``: the evaluated network (EMA or raw weights ⊙ hard gate, see the module docstring) replacing
        the engine's raw entry; ``masks``: 1[s > 0]; ``cs``: β, s₀, β_T and the sparsities."""
        state = trainer.eval_model().state_dict()
        model = {k: v.detach().float().cpu() if v.dtype.is_floating_point else v.cpu() for k, v in state.items()}
        model.update({n: v.cpu() for n, v in self.masks.fold({n: state[n] for n in self.masks.folded_names()}).items()})
        return {"model": model, "masks": self.masks.hard_masks().state_dict(),
                "cs": {"beta": self.masks.beta, "mask_init": self.masks.mask_init,
                       "final_temperature": self.final_temperature, "cs_lambda": self.cs_lambda,
                       "soft_sparsity": self.masks.soft_sparsity(), "hard_sparsity": self.masks.hard_sparsity()}}

    def state_dict(self):
        state = {"masks": self.masks.state_dict(), "optimizer": self.optimizer.state_dict()}
        ema = getattr(self.trainer, "ema", None)
        if ema is not None:  # the checkpoint's model entry holds folded weights: keep the raw EMA for resume
            ema_state = ema.ema.state_dict()
            state["ema"] = {n: ema_state[n].detach().cpu().clone() for n in self.masks.folded_names()}
        return state

    @torch.no_grad()
    def load_state_dict(self, state):
        if not state:
            return
        self.masks.load_state_dict(state["masks"])
        self.optimizer.load_state_dict(state["optimizer"])
        ema = getattr(self.trainer, "ema", None)
        if ema is not None:
            if "ema" not in state:
                raise UserError("last.pt of a CS search round holds no raw EMA weights; cannot resume it")
            ema_state = ema.ema.state_dict()
            for n, v in state["ema"].items():
                ema_state[n].copy_(v)

    def close(self):
        """Remove the hooks (from the trained model and the engine's EMA copy)."""
        models = []
        if self.trainer is not None:
            models.append(self.trainer.model)
            if getattr(self.trainer, "ema", None) is not None:
                models.append(self.trainer.ema.ema)
        self.masks.detach(*models)


# --------------------------------------------------------------------------------------------------- strategy
class ContinuousSparsification(Strategy):
    """Continuous Sparsification ticket search (Savarese et al. 2019, arXiv 1912.04427, Algorithm 1).

    Rounds 0 … R−1 (R = ``--rounds``, the original's "iterations") are search rounds of ``--epochs`` each;
    round R trains the ticket for ``--ticket-epochs``. See the module docstring.
    """

    name = "cs"

    def __init__(self, args, run):
        super().__init__(args, run)
        self.settings = s = CSSettings.from_args(args)
        if args.epochs is None or args.epochs < 2:
            raise UserError(f"--epochs {args.epochs}: a CS search round needs at least 2 epochs (beta grows from 1 "
                            f"to --final-temperature over its epochs)")
        self.search_rounds = int(s.rounds)
        self.mask_init, self.final_temperature = float(s.mask_init), float(s.final_temperature)
        self.cs_lambda, self.reset_rule = float(s.cs_lambda), s.cs_reset
        self.ticket_epochs = int(s.ticket_epochs or args.epochs)
        self.rewind_iter = s.rewind_iter or None
        self.rewind_epoch = rewind_epochs(s.rewind_epoch, args.epochs)
        self.reopened = []  # the ticket's convs whose every filter gate had closed (set when the ticket is made)
        if self.rewind_iter is None and not 0 <= self.rewind_epoch <= args.epochs:
            raise UserError(f"--rewind-epoch {self.rewind_epoch} is outside the first search round's "
                            f"{args.epochs} epochs")

    def num_rounds(self):
        return self.search_rounds + 1

    def is_ticket(self, r):
        return r == self.search_rounds

    def kind(self, r):
        return "cs-ticket" if self.is_ticket(r) else "cs-search"

    def round_args(self, r):
        if not self.is_ticket(r):
            return self.args
        args = copy.copy(self.args)
        args.epochs = self.ticket_epochs
        return args

    def describe_start(self, r):
        n = self.num_rounds() - 1
        if self.is_ticket(r):
            shut = self.reopened
            kept = f"; {len(shut)} convs had every gate closed, each keeps its largest" if shut else ""
            return (f"round {r}/{n} (ticket: m = 1[s > 0] frozen, weights rewound to the first search round's "
                    f"rewind point{kept})")
        where = f"{self.rewind_iter} optimiser steps" if self.rewind_iter else f"epoch {self.rewind_epoch}"
        reset = "s <- min(beta_T s, s0)" if self.reset_rule == "paper" else "beta <- 1, s <- min(s, s0)"
        extra = f"; rewind point after {where}" if r == 0 else f"; {reset}, weights not rewound"
        gates = ", one gate per filter" if self.settings.granularity == "filter" else ""
        return (f"round {r}/{n} (CS search {r + 1}/{self.search_rounds}: beta 1 -> {self.final_temperature:g}, "
                f"lambda {self.cs_lambda:g}{gates}{extra})")

    # -- plug-ins and the state each round starts from -----------------------------------------------
    def plugin(self, soft_masks):
        return CSPlugin(soft_masks, self.settings)

    def last(self, r):
        return load_checkpoint(self.run.round_dir(r) / "weights" / "last.pt")

    @staticmethod
    def search_state(ckpt, where):
        """The CS logits a search round's last.pt holds."""
        return plugin_state(ckpt, "cs", where)["masks"]

    def ticket_model(self, prev):
        """The ticket from the last search round's last.pt: θ_k ⊙ 1[s > 0], and its binary ``Masks``."""
        soft = soft_masks_from_state(self.search_state(prev, "last search round"))
        model = build_model(prev, self.args)
        masks = soft.hard_masks()
        if isinstance(soft, SoftFilterMasks):  # the consumers' input columns of the pruned filters go too
            self.reopened = soft.reopened()
            masks = with_consumer_inputs(masks, filter_consumers(model))
        rewind(model, prev["rewind"]["model"], masks)  # θ_k with the pruned weights at exactly +0.0
        return model, masks

    def begin_round(self, r):
        if r == 0:
            init_seeds(self.args.seed, self.args.deterministic)  # the initial network is reproducible
            model, _ = model_from_args(self.args)
            named = prunable_parameters(model, include_output=self.settings.prune_output,
                                        skip_first=self.settings.keep_first_dense)
            if self.settings.granularity == "filter":
                soft = SoftFilterMasks.init(model, [n for n, _ in named], self.mask_init,
                                            coupled=self.settings.shortcut_filters == "together")
            else:
                soft = SoftMasks.init(named, self.mask_init)
            return model, [self.plugin(soft), RewindPlugin(self.rewind_epoch, self.rewind_iter)]
        prev = self.last(r - 1)
        if self.is_ticket(r):
            model, masks = self.ticket_model(prev)
            return model, [MaskPlugin(masks), RewindPlugin(snapshot=prev["rewind"])]
        model = build_model(prev, self.args)
        de_parallel(model).load_state_dict(prev["train_state"]["model"])  # raw weights, not rewound
        soft = soft_masks_from_state(self.search_state(prev, self.run.round_dir(r - 1)))
        soft.reset(self.final_temperature, self.reset_rule)
        return model, [self.plugin(soft), RewindPlugin(snapshot=prev["rewind"])]

    def resume_round(self, r, ckpt):
        model = build_model(ckpt, self.args)  # the engine then loads the raw weights of train_state
        if self.is_ticket(r):
            if not ckpt.get("masks"):
                raise UserError(f"{self.run.round_dir(r)}: last.pt of the ticket round holds no masks")
            masks = Masks.from_state_dict(ckpt["masks"])
            return model, [MaskPlugin(masks), RewindPlugin(snapshot=ckpt.get("rewind"))]
        soft = soft_masks_from_state(self.search_state(ckpt, self.run.round_dir(r)))
        return model, [self.plugin(soft), RewindPlugin(self.rewind_epoch, self.rewind_iter,
                                                       snapshot=ckpt.get("rewind"))]

    def row_checkpoint(self, r):
        """Search rounds: last.pt (the state the next round starts from); the ticket: best.pt."""
        wdir = self.run.round_dir(r) / "weights"
        if self.is_ticket(r) and (wdir / "best.pt").is_file():
            return wdir / "best.pt"
        return wdir / "last.pt"


STRATEGIES["cs"] = ContinuousSparsification

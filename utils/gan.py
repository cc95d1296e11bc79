"""GAN knowledge distillation for YOLO (Wang et al. 2020): per-pair discriminators and the adversarial plug-in of
``my_kd_gan.py``. How the game, its stages, labels and precision work: docs/techniques.md.
"""
import copy
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from utils.distill import AdaptationLayer, TeacherPlugin, _darknet, _fmt, hint_loss, load_teacher, match_heads
from utils.errors import UserError
from utils.settings import GANSettings, RunSettings
from utils.torch_utils import ddp, inverse_exp_lr

DEFAULT_WIDTHS = (256, 512, 256, 128, 64)
REAL_RANGE, FAKE_RANGE = (0.7, 1.0), (0.0, 0.3)


# ------------------------------------------------------------------------------------------------ discriminator
# The discriminator shapes ``--d-arch`` names: this project's compact one, and the original project's (its
# models.py Discriminator, read at 72bb656: conv biases, 7x7 pooling, 3136 -> 1024 -> 128 -> 1, leaky 0.1).
D_ARCHS = {"compact": dict(pool=4, hidden=(128,), slope=0.2, bias=False),
           "original": dict(pool=7, hidden=(1024, 128), slope=0.1, bias=True)}


class Discriminator(nn.Module):
    """Wang et al. 2020's discriminator of one feature pair: five conv + BN + leaky ReLU layers
    ``C -> 256 -> 512 -> 256 -> 128 -> 64`` (kernel ``kernel``, stride 1, "same" padding), adaptive average pooling to
    ``pool x pool`` and an MLP ``64 pool^2 -> hidden... -> 1``. ``forward(x (bs, C, H, W)) -> (bs,)`` logits.

    ``arch="compact"``: pool 4, one hidden layer of 128, leaky slope 0.2 (Radford et al. 2016's choice for
    discriminators), no conv biases (BN follows): 456,065 parameters at ``C = 75``, kernel 1 (kernel 3: 3,034,497).
    ``arch="original"``: the original project's, pool 7, hidden 1024 and 128, slope 0.1, conv biases: 3,669,569.
    """

    def __init__(self, channels, kernel=1, widths=DEFAULT_WIDTHS, arch="compact"):
        super().__init__()
        kernel = int(kernel)
        if kernel < 1 or kernel % 2 == 0:
            raise UserError(f"--d-kernel-size {kernel}: use an odd kernel size (1, 3, 5, ...)")
        if arch not in D_ARCHS:
            raise UserError(f"--d-arch {arch}: use one of {', '.join(D_ARCHS)}")
        a = D_ARCHS[arch]
        layers, c = [], int(channels)
        for w in widths:
            layers += [nn.Conv2d(c, w, kernel, 1, kernel // 2, bias=a["bias"]), nn.BatchNorm2d(w),
                       nn.LeakyReLU(a["slope"], inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(a["pool"])
        mlp, n = [nn.Flatten()], c * a["pool"] ** 2
        for h in a["hidden"]:
            mlp += [nn.Linear(n, h), nn.LeakyReLU(a["slope"], inplace=True)]
            n = h
        self.head = nn.Sequential(*mlp, nn.Linear(n, 1))
        self.channels, self.kernel, self.arch = int(channels), kernel, arch

    def forward(self, x):
        return self.head(self.pool(self.features(x))).squeeze(1)


class Discriminators(nn.Module):
    """One ``Discriminator`` per pair; ``forward(list of maps) -> list of (bs,) logits``."""

    def __init__(self, channels, kernels, arch="compact"):
        super().__init__()
        self.nets = nn.ModuleList(Discriminator(c, k, arch=arch) for c, k in zip(channels, kernels))

    def forward(self, maps):
        return [d(x) for d, x in zip(self.nets, maps)]


class PassThrough(nn.Identity):
    """The "adaptation" of a pair whose channels already match: the student's map itself (no parameters)."""

    def __init__(self, channels):
        super().__init__()
        self.in_channels = self.out_channels = int(channels)


class PairAdapters(nn.Module):
    """Per pair: an ``AdaptationLayer`` where student and teacher channels differ, else ``PassThrough``."""

    def __init__(self, student_channels, teacher_channels, kernel=1):
        super().__init__()
        self.layers = nn.ModuleList(PassThrough(cs) if cs == ct else AdaptationLayer(cs, ct, kernel)
                                    for cs, ct in zip(student_channels, teacher_channels))

    def forward(self, feats):
        return [m(f) for m, f in zip(self.layers, feats)]


def output_feature_pairs(student, teacher):
    """The raw prediction maps, paired by stride: the conv before each student ``[yolo]`` with the conv before the
    teacher's ``[yolo]`` of the same stride (``utils.distill.match_heads``); scales the teacher lacks are skipped.

    yolov3 -> YOLO Nano: ``([40, 44, 48], [105, 93, 81])``; yolov3-tiny -> YOLO Nano: ``([44, 48], [22, 15])``.
    """
    s_net, t_net = _darknet(student), _darknet(teacher)
    out_s, out_t = [], []
    for i, pair in zip(s_net.yolo_layers, match_heads(s_net, t_net)):
        if pair is not None:
            out_s.append(i - 1)
            out_t.append(t_net.yolo_layers[pair[0]] - 1)
    if not out_s:
        raise UserError("the teacher has no YOLO scale of the student's strides: give --student-features and "
                        "--teacher-features (layers of the same resolution)")
    return out_s, out_t


def _autocast_like_caller(device_type):
    """The caller's autocast (dtype, on/off) with the weight cache off: D's weights change inside the region."""
    enabled = torch.is_autocast_enabled(device_type)
    dtype = torch.get_autocast_dtype(device_type)
    return torch.autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=False)


# ------------------------------------------------------------------------------------------------------ plug-in
class GANPlugin(TeacherPlugin):
    """Wang et al. 2020 GAN distillation as an engine plug-in (module docstring).

    ``teacher``: a ``Teacher`` or Darknet; ``student_features``/``teacher_features``: one layer per pair (``None``:
    ``output_feature_pairs``); ``d_kernel_size``: an int or one per pair; ``d_lr``, ``d_momentum``: D's SGD;
    ``adv_weight``: weight of the adversarial term; ``second_stage``: epoch (0-based) where stage 2 starts, or a
    fraction (< 1) of ``epochs``; ``stage1_det_scale``: detection-loss scale in stage 1; ``soft_labels``,
    ``label_flip``: D's label noise; ``hint_weight``/``hint_kind``: the optional hint term; ``seed``: label noise.

    API used by tests and the engine: ``check(student, img_size)``, ``setup(trainer)``, ``losses(imgs, features)``
    (the terms of one stage-1 batch; steps D), ``discriminator_step(real, fake) -> stats``,
    ``generator_loss(fake, real) -> tensor``, ``stage(epoch) -> 1 | 2``, ``state_dict()/load_state_dict()``.
    """

    name = "gan"

    def __init__(self, teacher, settings=None, img_size=416, epochs=None, seed=0, **changes):
        """``settings``: a ``GANSettings`` (default: its fallbacks, what my_kd_gan.py does with no flags);
        ``epochs``/``seed``: the run's; ``changes``: settings fields to override."""
        self.settings = g = (settings or GANSettings()).but(**changes)
        super().__init__(teacher, g.student_features, g.teacher_features, g.adapt_kernel, img_size,
                         use_features=True)
        kernels = [g.d_kernel_size] if isinstance(g.d_kernel_size, int) else list(g.d_kernel_size or [1])
        self.d_kernels = [int(k) for k in kernels]
        self.d_lr, self.d_momentum = float(g.d_lr), float(g.d_momentum)
        self.d_arch, self.d_schedule = g.d_arch, g.d_optimizer
        self.adv_weight, self.stage1_det_scale = float(g.adv_weight), float(g.stage1_det_scale)
        self.second_stage, self.epochs = g.second_stage, epochs
        self.soft_labels, self.label_flip = bool(g.soft_labels), float(g.label_flip)
        self.hint_weight, self.hint_kind = float(g.hint_weight), g.hint_loss
        self.seed = int(seed)
        self.discriminators = None
        self.d_optimizer = None
        self.d_scaler = torch.amp.GradScaler("cuda", enabled=False)
        self._ddp_d = None
        self.device = torch.device("cpu")
        self.rank = 0
        self.rng = torch.Generator().manual_seed(self.seed)
        self.d_steps = 0
        self.d_skipped = 0
        self.batch_stats = {}  # the discriminator's figures of the last batch (step_metrics)
        self._reset_epoch_stats()

    @classmethod
    def from_args(cls, args, teacher=None):
        """The plug-in ``my_kd_gan.py`` builds from its resolved arguments (teacher loaded on the CPU if not given)."""
        g, run = GANSettings.from_args(args), RunSettings.from_args(args)
        teacher = teacher or load_teacher(g.teacher_cfg, g.teacher_weights)
        return cls(teacher, g, run.model.img_size, epochs=run.train.epochs, seed=run.device.seed)

    # -- validation, before training -------------------------------------------------------------------
    def check(self, student, img_size=None):
        """Validate against ``student`` (one-line errors); build adaptation layers and discriminators; ``self``."""
        if self.student_features is None and self.teacher_features is None:
            self.student_features, self.teacher_features = output_feature_pairs(student, self.teacher)
        super().check(student, img_size)
        if not self.pair_shapes:
            raise UserError("GAN distillation needs at least one feature pair (--student-features/--teacher-features)")
        s_ch = [s[0] for s, _ in self.pair_shapes]
        t_ch = [t[0] for _, t in self.pair_shapes]
        if not isinstance(self.adapters, PairAdapters) or \
                [m.in_channels for m in self.adapters.layers] != s_ch or \
                [m.out_channels for m in self.adapters.layers] != t_ch:
            self.adapters = PairAdapters(s_ch, t_ch, self.adapt_kernel)
        n = len(self.pair_shapes)
        if len(self.d_kernels) == 1:
            self.d_kernels = self.d_kernels * n
        if len(self.d_kernels) != n:
            raise UserError(f"--d-kernel-size has {len(self.d_kernels)} values for {n} feature pairs: give one, "
                            f"or one per pair")
        if self.discriminators is None or [d.channels for d in self.discriminators.nets] != t_ch or \
                [d.kernel for d in self.discriminators.nets] != self.d_kernels:
            self.discriminators = Discriminators(t_ch, self.d_kernels, self.d_arch).to(self.device)
            self.d_optimizer = torch.optim.SGD(self.discriminators.parameters(), lr=self.d_lr,
                                               momentum=self.d_momentum,
                                               nesterov=self.d_schedule == "original" and self.d_momentum > 0)
        return self

    def stage2_epoch(self, epochs=None):
        """The 0-based epoch where stage 2 (detection loss only) begins."""
        epochs = epochs or self.epochs
        if self.second_stage < 1:
            if not epochs:
                raise UserError(f"--second-stage {self.second_stage}: a fraction needs --epochs")
            return max(1, round(self.second_stage * epochs))
        return int(self.second_stage)

    def stage(self, epoch):
        """1 (adversarial game, scaled detection loss) or 2 (detection loss only) for a 0-based epoch."""
        return 1 if epoch < self.stage2_epoch() else 2

    def describe(self):
        lines = []
        for i, j, (ss, ts), a, d in zip(self.student_features, self.teacher_features, self.pair_shapes,
                                        self.adapters.layers, self.discriminators.nets):
            how = "directly" if isinstance(a, PassThrough) else f"via {self.adapt_kernel}x{self.adapt_kernel} adaptation"
            n = sum(p.numel() for p in d.parameters())
            lines.append(f"GAN pair: student {i} ({_fmt(ss)}) vs teacher {j} ({_fmt(ts)}) {how}; discriminator "
                         f"{d.kernel}x{d.kernel} ({d.arch}), {n:,} parameters")
        s2 = self.stage2_epoch()
        epochs = self.epochs or s2
        lines.append(f"stage 1 (adversarial, adv weight {self.adv_weight:g}, detection loss x{self.stage1_det_scale:g}"
                     f"{f', hint x{self.hint_weight:g}' if self.hint_weight else ''}): epochs 1-{min(s2, epochs)}; "
                     + (f"stage 2 (detection loss only): epochs {s2 + 1}-{epochs}" if s2 < epochs
                        else "no stage 2 (--second-stage >= --epochs)"))
        sgd = "nesterov SGD, inverse-exp lr" if self.d_schedule == "original" else "SGD, constant lr"
        lines.append(f"discriminator: {sgd} {self.d_lr:g} momentum {self.d_momentum:g}, "
                     f"{'soft labels' if self.soft_labels else 'hard labels'}, {self.label_flip:.0%} label flips")
        return lines

    # -- engine hooks ---------------------------------------------------------------------------------
    def setup(self, trainer):
        if not self.checked:
            self.check(trainer.model, trainer.img_size)
        self.epochs = trainer.epochs
        self.device = trainer.device
        self.rank = max(getattr(trainer, "rank", -1), 0)
        self.place(trainer)
        self.discriminators.to(trainer.device).to(memory_format=trainer.fmt)
        _optimizer_to(self.d_optimizer, trainer.device)
        scaled = trainer.precision.scaled  # fp16: D's gradients need their own scaler, as G's do
        if scaled != self.d_scaler.is_enabled():
            self.d_scaler = torch.amp.GradScaler(trainer.device.type, enabled=scaled)
        self._ddp_d = None
        if dist.is_available() and dist.is_initialized():
            self._ddp_d = ddp(self.discriminators, trainer.device)
        self.log_description(trainer)

    def modules(self):
        """The adaptation layers with parameters (main optimiser); never the discriminators (they have their own)."""
        return [self.adapters] if self.adapters is not None and any(True for _ in self.adapters.parameters()) else []

    def detection_loss_scale(self, trainer):
        return self.stage1_det_scale if self.stage(trainer.epoch) == 1 else 1.0

    def before_epoch(self, trainer, epoch):
        self.teacher.eval()
        if self.d_schedule == "original":  # D's learning rate follows the original's inverse-exp factor
            for group in self.d_optimizer.param_groups:
                group["lr"] = self.d_lr * inverse_exp_lr(self.epochs or trainer.epochs)(epoch)
        self.reseed(getattr(trainer, "seed", self.seed), epoch)
        self._reset_epoch_stats()

    def reseed(self, seed, epoch):
        """Label noise of epoch ``epoch`` depends on (seed, epoch, rank) alone: a resumed run draws the same."""
        self.rng.manual_seed((int(seed) * 1_000_003 + (epoch + 1) * 7919 + self.rank * 104_729) % (2**63))

    def extra_loss(self, trainer, imgs, targets, outputs, features):
        self.batch_stats = {}
        if self.stage(trainer.epoch) != 1:
            return {}
        return self.losses(imgs, features)

    def step_metrics(self, trainer):
        return self.batch_stats

    def losses(self, imgs, features):
        """One stage-1 batch: a discriminator step, then the student's terms.

        Returns ``{'adv': weighted adversarial term (gradient into the student), ['hint']}``; the discriminator's
        ``{'D_loss', 'D_real', 'D_fake'}`` go to ``batch_stats`` (logged, never back-propagated).
        """
        _, t_feats = self.run_teacher(imgs)
        real = [t_feats[j] for j in self.teacher_features]
        fake = self.adapt(features)
        stats = self.discriminator_step(real, fake)
        terms = {"adv": self.adv_weight * self.generator_loss(fake, real)}
        if self.hint_weight:
            with torch.autocast(imgs.device.type, enabled=False):
                h = [hint_loss(a, r, self.hint_kind) for a, r in zip(fake, real)]
                terms["hint"] = self.hint_weight * torch.stack(h).mean()
        self.batch_stats = stats
        return terms

    # -- the game -------------------------------------------------------------------------------------
    def labels(self, n, real, device):
        """Targets of ``n`` real (or fake) samples: hard 1/0 or soft U(0.7, 1)/U(0, 0.3), flipped with ``label_flip``."""
        if self.soft_labels:
            lo, hi = REAL_RANGE if real else FAKE_RANGE
            y = lo + (hi - lo) * torch.rand(n, generator=self.rng)
        else:
            y = torch.full((n,), 1.0 if real else 0.0)
        if self.label_flip:
            flip = torch.rand(n, generator=self.rng) < self.label_flip
            y = torch.where(flip, 1.0 - y, y)
        return y.to(device)

    def discriminator_step(self, real, fake):
        """One SGD step of every discriminator on teacher maps ``real`` vs (detached) student maps ``fake``.

        Each ``D`` sees one batch holding both (train-mode BN over the mixed batch); loss per pair
        ``BCE(D(x), y)`` averaged over the 2n samples, summed over the pairs (each ``D`` its own gradient).
        Returns floats ``{'D_loss' (mean over pairs), 'D_real', 'D_fake'}``; a non-finite loss skips the step.
        """
        real = [r.detach() for r in real]
        fake = [f.detach().to(r.dtype) for f, r in zip(fake, real)]
        n = real[0].shape[0]
        device = real[0].device
        net = self.discriminators
        net.train()
        for p in net.parameters():
            p.requires_grad_(True)
        self.d_optimizer.zero_grad(set_to_none=True)  # nothing of the student's loss may reach D's step
        with _autocast_like_caller(device.type):
            logits = (self._ddp_d or net)([torch.cat((r, f)) for r, f in zip(real, fake)])
        with torch.autocast(device.type, enabled=False):
            logits = [lg.float() for lg in logits]
            targets = [torch.cat((self.labels(n, True, device), self.labels(n, False, device))) for _ in logits]
            losses = [F.binary_cross_entropy_with_logits(lg, y) for lg, y in zip(logits, targets)]
            loss = torch.stack(losses).sum()
            if torch.isfinite(loss):
                self.d_scaler.scale(loss).backward()
                self.d_scaler.step(self.d_optimizer)
                self.d_scaler.update()
                self.d_steps += 1
            else:
                self.d_skipped += 1
            self.d_optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            acc_real = torch.stack([(lg[:n] > 0).float().mean() for lg in logits]).mean().item()
            acc_fake = torch.stack([(lg[n:] < 0).float().mean() for lg in logits]).mean().item()
        stats = {"D_loss": loss.item() / len(losses), "D_real": acc_real, "D_fake": acc_fake}
        self._record(stats)
        return stats

    def generator_loss(self, fake, real):
        """The student's adversarial term ``mean_pairs BCE(D(F_s), 1)``, gradient through ``D`` into ``fake``.

        Each ``D`` runs as in its own step (train mode, one batch ``[real (detached); fake]``) and the student half
        is scored. ``D``'s parameters have ``requires_grad=False`` meanwhile, so the term's backward reaches the
        student (and adaptation layers) and never ``D``.
        """
        net = self.discriminators
        flags = [p.requires_grad for p in net.parameters()]
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        try:
            n = fake[0].shape[0]
            device = fake[0].device
            with _autocast_like_caller(device.type):
                logits = net([torch.cat((r.detach(), f.to(r.dtype))) for r, f in zip(real, fake)])
            with torch.autocast(device.type, enabled=False):
                losses = [F.binary_cross_entropy_with_logits(lg[n:].float(), torch.ones(n, device=device))
                          for lg in logits]
                return torch.stack(losses).mean()
        finally:
            for p, f in zip(net.parameters(), flags):
                p.requires_grad_(f)

    # -- monitoring -----------------------------------------------------------------------------------
    def _reset_epoch_stats(self):
        self._epoch = {"n": 0, "min_acc": math.inf, "max_real": -math.inf, "max_fake": -math.inf}

    def _record(self, stats):
        e = self._epoch
        e["n"] += 1
        e["min_acc"] = min(e["min_acc"], stats["D_real"], stats["D_fake"])
        e["max_real"] = max(e["max_real"], stats["D_real"])
        e["max_fake"] = max(e["max_fake"], stats["D_fake"])

    def collapse(self):
        """Why the discriminator looks collapsed over this epoch's batches (``''`` when it does not)."""
        e = self._epoch
        if not e["n"]:
            return ""
        if e["min_acc"] >= 1.0:
            return ("discriminator accuracy was 1 on every batch: it separates teacher and student perfectly and "
                    "the student's adversarial signal saturates (lower --d-lr, raise --adv-weight or --label-flip)")
        if e["max_real"] <= 0.0 or e["max_fake"] <= 0.0:
            side = "teacher (real)" if e["max_real"] <= 0.0 else "student (fake)"
            return (f"discriminator accuracy on the {side} maps was 0 on every batch: it answers one class whatever "
                    f"it sees (raise --d-lr, or check the feature pairs)")
        return ""

    def after_epoch(self, trainer, epoch, metrics):
        stage = self.stage(epoch)
        row = {"gan/stage": stage}
        if stage == 1:
            why = self.collapse()
            row["gan/collapsed"] = int(bool(why))
            if why and trainer.main:
                trainer.log(f"warning: epoch {epoch + 1}: {why}")
        return row

    # -- resume ---------------------------------------------------------------------------------------
    def state_dict(self):
        state = super().state_dict()
        state.update({
            "discriminators": {k: v.detach().cpu() for k, v in self.discriminators.state_dict().items()},
            "d_optimizer": _to_cpu(self.d_optimizer.state_dict()),
            "d_scaler": self.d_scaler.state_dict(),
            "d_kernel_size": list(self.d_kernels),
            "d_steps": self.d_steps,
            "d_skipped": self.d_skipped,
        })
        return state

    def load_state_dict(self, state):
        if not state:
            return
        super().load_state_dict(state)
        if list(state.get("d_kernel_size", [])) != list(self.d_kernels):
            raise UserError(f"resume: the run's discriminators have kernels {state.get('d_kernel_size')}, "
                            f"not {self.d_kernels}")
        self.discriminators.load_state_dict(state["discriminators"])
        self.d_optimizer.load_state_dict(state["d_optimizer"])
        _optimizer_to(self.d_optimizer, self.device)
        if state.get("d_scaler"):
            self.d_scaler.load_state_dict(state["d_scaler"])
        self.d_steps = int(state.get("d_steps", 0))
        self.d_skipped = int(state.get("d_skipped", 0))


def _to_cpu(obj):
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return copy.copy(obj)


def _optimizer_to(optimizer, device):
    """Move an optimiser's state tensors (momentum buffers) to ``device``."""
    for st in optimizer.state.values():
        for k, v in st.items():
            if torch.is_tensor(v) and v.device != torch.device(device):
                st[k] = v.to(device)


__all__ = ["Discriminator", "Discriminators", "PassThrough", "PairAdapters", "output_feature_pairs", "GANPlugin"]

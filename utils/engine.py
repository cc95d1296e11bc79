"""The one training loop. Every technique (pruning, distillation, GAN distillation) plugs into it as a ``Plugin``.

One step:  batch -> model(imgs, features) -> YOLO loss (x plug-in scale) + plug-in loss terms -> backward
           -> (every ``accumulate`` batches) optimiser step -> plug-in ``after_step`` (masks, discriminator) -> EMA.
One epoch: train -> evaluate the EMA with ``test.evaluate`` -> results.csv (results.png at most once a minute, and at
the end) -> last.pt, best.pt.

Exact resume: each epoch reseeds every RNG from (seed, epoch), so an epoch's batches, augmentations and plug-in
noise do not depend on how many epochs ran before in the same process; ``last.pt`` holds everything else
(raw and EMA weights, optimiser, scheduler, grad scaler, plug-in states).
"""
import csv
import io
import math
import os
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from models import Darknet, load_darknet_weights
from utils import anchors, runlock
from utils.checkpoint import (atomic_path, load_checkpoint, remove_stale_temporaries, save_checkpoint, save_compact,
                              write_atomic)
from utils.datasets import create_dataloader, parse_data_cfg
from utils.errors import UserError
from utils.evaluation import evaluate
from utils.general import increment_path, init_seeds, is_main_process, select_device
from utils.loss import ComputeLoss
from utils.memory_format import choose_memory_format, machine_name
from utils.metrics import EVAL_BATCH_SIZE
from utils.my_utils import hyp_from_args, resume_args, save_args, upgrade_saved_args, vars_clean
from utils.settings import ModelSettings, RunSettings
from utils.torch_utils import (MEMORY_FORMATS, ModelEMA, autocast, build_optimizer, ddp, de_parallel, lr_schedule,
                               recompute_bn_stats, resolve_precision)

MAX_BAD_STEPS = 20  # consecutive non-finite losses before the run stops
PLOT_EVERY_S = 60  # results.png is redrawn after an epoch at most this often, and always after the last one


class Plugin:
    """Extension points of the training loop. A technique overrides the hooks it needs; the rest do nothing.
    Every hook's ``trainer`` is the run's ``PluginContext``: the model, device, precision, epoch and the few other
    things it names, read-only.

    ``extra_loss`` returns per-image loss terms (like the YOLO terms); the engine multiplies them by the batch
    size, as it does the detection loss, and logs each one by name. Values only to be logged come from
    ``step_metrics``.
    """

    name = "plugin"
    feature_layers = ()  # layer indexes whose outputs extra_loss receives, as {index: tensor}

    def setup(self, trainer):
        """Called once before training, after the model is on its device and before the optimiser exists."""

    def modules(self):
        """Extra modules trained by the main optimiser together with the model (e.g. adaptation layers)."""
        return []

    def optimizers(self):
        """Optimisers of parameters outside the model that the same backward pass trains (CS's gate logits). The
        engine steps them with the main one: through its grad scaler (unscaled, skipped when not finite), with their
        gradients averaged over DDP processes (DDP reduces only the model's), not clipped. A plug-in with a backward
        pass of its own (the GAN's discriminator) steps its optimiser itself."""
        return []

    def extra_loss(self, trainer, imgs, targets, outputs, features):
        return {}

    def step_metrics(self, trainer):
        """Floats of this batch shown in the progress bar and results.csv, never back-propagated."""
        return {}

    def detection_loss_scale(self, trainer):
        """A factor of the whole detection loss, or ``{'box' | 'obj' | 'cls': factor}`` for some of its terms."""
        return 1.0

    def after_step(self, trainer):
        """After each optimiser step, before the EMA update."""

    def before_epoch(self, trainer, epoch):
        pass

    def after_epoch(self, trainer, epoch, metrics):
        """Return extra results.csv columns for this epoch."""
        return {}

    def checkpoint_entries(self, trainer):
        """Top-level entries of every saved checkpoint (e.g. ``masks``)."""
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class PluginContext:
    """The run as the plug-ins see it: their hooks' ``trainer`` argument. Read-only, and only these names, so a
    plug-in depends on this list rather than on the Trainer's insides (a test may pass any object that has them)."""

    NAMES = ("model", "device", "precision", "fmt", "world", "rank", "main", "epoch", "epochs", "img_size", "seed",
             "hyp", "lf", "optimizer", "ema", "compute_loss", "resume_ckpt", "save_dir", "wdir", "log")

    def __init__(self, trainer):
        object.__setattr__(self, "_trainer", trainer)

    def __getattr__(self, name):
        if name not in PluginContext.NAMES:
            raise AttributeError(f"a plug-in sees {', '.join(PluginContext.NAMES)} and eval_model() of the run, "
                                 f"not {name!r}")
        return getattr(self._trainer, name)

    def __setattr__(self, name, value):
        raise AttributeError(f"the run is read-only to plug-ins ({name!r})")

    def eval_model(self):
        return self._trainer.eval_model()


# ------------------------------------------------------------------------------------------- run folders
def init_distributed(device):
    """Join the process group that ``torchrun`` describes (nccl on CUDA, gloo on CPU); no-op for one process.
    ``device``: ``--device`` as typed."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or dist.is_initialized():
        return
    device = select_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def make_save_dir(output):
    """``PROJECT/NAME`` of ``output`` (OutputSettings; incremented unless --exist-ok), chosen by rank 0 and shared
    with the other processes."""
    save_dir = [increment_path(Path(output.project) / output.name, exist_ok=output.exist_ok)]
    if dist.is_initialized():
        dist.broadcast_object_list(save_dir, src=0)
    save_dir = Path(save_dir[0])
    (save_dir / "weights").mkdir(parents=True, exist_ok=True)
    return save_dir


def prepare(args, nc=None):
    """What every training script does first: a fresh run or a resumed one.

    Returns (args, model, save_dir, resume_checkpoint or None); on resume, ``args`` are the saved ones.
    """
    init_distributed(args.device)
    if args.resume:
        args, ckpt, save_dir = load_for_resume(args)
        model = Darknet.from_text(ckpt["cfg"], name=ckpt.get("cfg_name", "cfg"), img_size=args.img_size, nc=ckpt["nc"])
        return args, model, save_dir, ckpt
    s = RunSettings.from_args(args)
    init_seeds(s.device.seed, s.device.deterministic)  # the initial weights depend on the seed alone
    model, _ = model_from_args(args, nc)
    return args, model, make_save_dir(s.output), None


def find_last(project):
    """The most recently written ``last.pt`` below ``project``."""
    runs = sorted(Path(project).rglob("last.pt"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise UserError(f"{project}: no last.pt to resume from")
    return runs[-1]


def resume_path(resume, project):
    """``--resume`` (most recent run), ``--resume RUN_FOLDER`` or ``--resume path/last.pt`` -> last.pt."""
    if resume is True or resume == "True":
        return find_last(project)
    path = Path(resume)
    if path.is_dir():
        path = path / "weights" / "last.pt" if (path / "weights").is_dir() else path / "last.pt"
    if not path.is_file():
        raise UserError(f"{resume}: nothing to resume (no last.pt there)")
    return path


def load_for_resume(args):
    """Replace ``args`` by those saved in the run to resume; returns (args, checkpoint, save_dir)."""
    import argparse

    path = resume_path(args.resume, args.project)
    ckpt = load_checkpoint(path)
    if "train_state" not in ckpt:
        raise UserError(f"{path}: holds no training state (only last.pt can be resumed)")
    saved = upgrade_saved_args(argparse.Namespace(**ckpt["args"]), str(path))
    saved.resume, saved.weights = str(path), ""
    log = print if is_main_process() else (lambda *a: None)
    saved = resume_args(saved, args, getattr(args, "_typed", ()), log=log)
    return saved, ckpt, path.parent.parent


# ------------------------------------------------------------------------------------------- the model
def load_state_checked(model, state, source, cfg_name):
    """Load ``state`` into ``model``; tensors whose shapes differ only because the class count changed are skipped.

    A checkpoint made for another network is a one-line error naming both.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        key = (missing or unexpected)[0]
        raise UserError(f"{source}: checkpoint was made for another network than {cfg_name} "
                        f"({len(missing)} missing, {len(unexpected)} unexpected tensors, e.g. '{key}')")
    skipped = [k for k, v in state.items() if v.shape != own[k].shape]
    heads = {f"module_list.{i - 1}." for i in de_parallel(model).yolo_layers}
    foreign = [k for k in skipped if not any(k.startswith(h) for h in heads)]
    if foreign:
        raise UserError(f"{source}: checkpoint was made for another network than {cfg_name} "
                        f"('{foreign[0]}' is {tuple(state[foreign[0]].shape)}, expected {tuple(own[foreign[0]].shape)})")
    model.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    if skipped:
        print(f"{source}: {len(skipped)} output-layer tensors not loaded (class count differs)")
    return skipped


def model_from_settings(settings, nc):
    """Build the network of ``--cfg`` for ``nc`` classes, starting from ``--weights`` when given (``settings``:
    ModelSettings).

    ``--weights`` may be a toolkit checkpoint (its own cfg is used when ``--cfg`` is not given) or Darknet
    ``.weights``. Returns (model, checkpoint or None).
    """
    weights = str(settings.weights or "")
    if weights.endswith(".pt"):
        ckpt = load_checkpoint(weights)
        if settings.cfg:
            model = Darknet(settings.cfg, img_size=settings.img_size, nc=nc)
            load_state_checked(model, ckpt["model"], weights, settings.cfg)
        else:
            model = Darknet.from_text(ckpt["cfg"], name=ckpt.get("cfg_name", "cfg"), img_size=settings.img_size, nc=nc)
            load_state_checked(model, ckpt["model"], weights, ckpt.get("cfg_name", "its cfg"))
        return model, ckpt
    if not settings.cfg:
        raise UserError("--cfg is required (or --weights CHECKPOINT.pt that holds its cfg)")
    model = Darknet(settings.cfg, img_size=settings.img_size, nc=nc)
    if weights:
        load_darknet_weights(model, weights)
    return model, None


def model_from_args(args, nc=None):
    """``model_from_settings`` for parsed arguments: ``--cfg``/``--weights`` for ``nc`` classes (default: the
    class count of ``--data``)."""
    return model_from_settings(ModelSettings.from_args(args), nc or parse_data_cfg(args.data)["classes"])


# ------------------------------------------------------------------------------------------- the trainer
class Trainer:
    """Trains ``model`` on ``--data`` with the run's settings (``args``); plug-ins add loss terms, masks and extra
    optimisers."""

    def __init__(self, args, model, save_dir, plugins=(), resume_ckpt=None, log=print, first_epoch=0):
        self.args, self.plugins, self.log = args, list(plugins), log
        self.save_dir, self.wdir = Path(save_dir), Path(save_dir) / "weights"
        self.wdir.mkdir(parents=True, exist_ok=True)
        self.rank, self.world = int(os.environ.get("RANK", -1)), int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", -1))
        self.main = self.rank in (-1, 0)
        self.lock = runlock.acquire(self.save_dir, log) if self.main else None  # one run per folder
        if self.main and remove_stale_temporaries(self.wdir) + remove_stale_temporaries(self.save_dir):
            log(f"note: {self.save_dir}: removed temporary files an interrupted run left behind")
        self.settings = s = RunSettings.from_args(args)  # what the loop reads; ``args`` is saved as args.yaml
        self.device = select_device(s.device.device)
        self.precision = resolve_precision(self.device, s.device.amp, warn=log if self.main else (lambda *_: None))
        self.hyp = hyp_from_args(args)
        self.optim = s.optim  # the optimiser, its schedule and warm-up
        self.data = parse_data_cfg(s.data.data)
        self.names = self.data["names"]
        self.model = model
        self.resume_ckpt = resume_ckpt
        self.epochs = s.train.epochs
        self.img_size, self.seed = s.model.img_size, s.device.seed  # the run's final training size and its seed
        self.first_epoch = first_epoch  # a fresh run may start later in the schedule (LTH's continued retraining)
        self.epoch = 0
        self.rows = []
        self.best_fitness = -1.0
        self.bad_steps = 0
        self.skipped_steps = 0
        self.saved_epoch = resume_ckpt["epoch"] if resume_ckpt else None  # what last.pt holds (checked finite)
        self.best_epoch = None  # the epoch best.pt holds, when this process wrote it
        self.context = PluginContext(self)  # what the plug-ins' hooks receive

    # -- setup ---------------------------------------------------------------------------------------
    def setup(self):
        s = self.settings
        net = de_parallel(self.model)
        self.stride = net.max_stride
        net.check_img_size(self.img_size)  # before anything runs the network (the memory-format probe)
        init_seeds(self.seed, s.device.deterministic)
        if self.world > 1:
            self._init_distributed()
        self.check_anchors()
        self.batch_size = max(s.data.batch_size // max(self.world, 1), 1)
        self.choose_memory_format()
        self.plotted_at = time.monotonic()
        self.model.to(self.device).to(memory_format=self.fmt)
        self.model.hyp = self.hyp
        for plugin in self.plugins:
            plugin.setup(self.context)
        self.feature_layers = sorted({i for p in self.plugins for i in p.feature_layers})
        self.plugin_optimizers = [o for p in self.plugins for o in p.optimizers()]
        stride = self.stride
        self.img_size_start = start = start_img_size(s.train.img_size_start, self.img_size, stride)
        if start and not stride <= start < self.img_size:
            raise UserError(f"--img-size-start {s.train.img_size_start:g} must be at least the stride {stride} and "
                            f"below --img-size {self.img_size}")
        if self.main and start:
            self.log(f"progressive resizing: {start} px in the first epoch to {self.img_size} px in the last")
        self.first_scored = first = first_scored_epoch(s.output.eval_from, self.epochs)
        if self.main and first > 1 and not s.output.notest:
            self.log(f"mAP after epochs {min(first, self.epochs)}-{self.epochs} (--eval-from {s.output.eval_from:g})")
        optim = self.optim
        self.accumulate = max(round(optim.nominal_batch_size / s.data.batch_size), 1)
        self.optimizer = build_optimizer([self.model] + [m for p in self.plugins for m in p.modules()],
                                         optim.optimizer, optim.lr0, optim.momentum, optim.weight_decay)
        self.lf = lr_schedule(optim.lr_schedule, self.epochs, optim.lrf)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaled)
        self.ema = None if s.train.no_ema else ModelEMA(self.model)
        self.compute_loss = ComputeLoss(self.model, self.hyp)
        if self.world > 1:
            if s.device.sync_bn and self.device.type == "cuda":
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.model = ddp(self.model, self.device)
        self.train_loader, self.train_set = create_dataloader(
            self.data["train"], self.img_size, self.batch_size, stride, hyp=self.hyp, augment=True,
            rect=s.train.rect, workers=s.data.workers, shuffle=True, rank=self.rank if self.world > 1 else -1,
            cache=s.data.cache_images, seed=self.seed, nc=self.data["classes"])
        self.val_loader = None
        if self.main:
            self.val_loader, _ = create_dataloader(
                self.data["valid"], self.img_size, EVAL_BATCH_SIZE, stride, hyp=self.hyp, augment=False,
                rect=True, workers=s.data.workers, shuffle=False, nc=self.data["classes"])
            save_args(self.args, self.save_dir / "args.yaml")
        self.start_epoch = 0
        if self.resume_ckpt is not None:
            self._restore(self.resume_ckpt)
        elif self.first_epoch:
            self.continue_schedule_from(self.first_epoch)
        self.writer = self._tensorboard()

    def continue_schedule_from(self, epoch):
        """Start a fresh run at ``epoch`` of the schedule: the learning rate as the cosine has it there, the
        warm-up only where it reaches past that epoch."""
        if not 0 < epoch < self.epochs:
            raise UserError(f"a run of {self.epochs} epochs cannot start at epoch {epoch + 1}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # stepping the scheduler before any optimiser step
            for _ in range(epoch):
                self.scheduler.step()
        self.start_epoch = epoch
        if self.main:
            self.log(f"schedule continued from epoch {epoch + 1}/{self.epochs} (lr factor {self.lf(epoch):.3g})")

    def choose_memory_format(self):
        """``self.fmt``: ``--memory-format``, or the faster layout timed on this machine (rank 0's choice under DDP).
        Prints the run's header (device, precision, memory format, each with its reason) and records both choices
        in args.yaml and results.csv."""
        choice = [None]
        if self.main:
            choice[0] = choose_memory_format(self.model, self.device, self.precision, self.img_size, self.batch_size,
                                             self.settings.train.memory_format)
        if self.world > 1:
            dist.broadcast_object_list(choice, src=0)
        name, why = choice[0]
        self.fmt = MEMORY_FORMATS[name]
        self.args.precision_chosen, self.args.memory_format_chosen = self.precision.name, name  # for args.yaml
        if self.main:
            self.log(f"device {self.device}: {machine_name(self.device)}")
            self.log(f"precision {self.precision}")
            self.log(f"memory format {name} ({why})")

    def check_anchors(self):
        """``--autoanchor`` on a fresh network: k-means anchors for this data (``utils.anchors``); else a warning
        when the cfg's anchors cannot match every target. Networks from ``--weights`` or a resume keep theirs."""
        if self.resume_ckpt is not None or self.settings.model.weights:
            return
        model, log = de_parallel(self.model), (self.log if self.main else (lambda *_: None))
        size, thr, nc = self.img_size, self.hyp["anchor_t"], self.data["classes"]
        if self.settings.train.autoanchor:
            anchors.autoanchor(model, self.data["train"], size, thr, nc, self.seed, log)
        elif self.main:
            anchors.warn_if_poor(model, self.data["train"], size, thr, nc, log)

    def _init_distributed(self):
        init_distributed(self.settings.device.device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.local_rank)

    def _tensorboard(self):
        if not self.main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.save_dir))

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self):
        """Train from ``start_epoch`` to ``epochs``; returns the last epoch's metrics."""
        self.setup()
        metrics = {}
        for epoch in range(self.start_epoch, self.epochs):
            self.epoch = epoch
            t0 = time.time()
            losses, img_per_s = self.train_one_epoch(epoch)
            self.scheduler.step()
            metrics = self.validate(epoch)
            self.end_epoch(epoch, losses, metrics, img_per_s, time.time() - t0)
        if self.world > 1:
            dist.destroy_process_group()
        if self.writer:
            self.writer.close()
        if self.lock:
            runlock.release(self.lock)
        return metrics

    def train_one_epoch(self, epoch):
        s, model = self.settings, self.model
        init_seeds(self.seed + 1000 * (epoch + 1) + max(self.rank, 0), s.device.deterministic)
        model.train()
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        for plugin in self.plugins:
            plugin.before_epoch(self.context, epoch)
        nb = len(self.train_loader)
        n_warmup = round(self.optim.warmup_epochs * nb)
        size = self.epoch_img_size(epoch)
        if hasattr(self.train_set, "set_img_size") and not self.train_set.rect:
            self.train_set.set_img_size(size)  # the workers, started below, build this epoch's size
        sums, count, n_images, t0 = defaultdict(float), 0, 0, time.time()
        desc = f"{epoch + 1}/{self.epochs}" + (f" {size}px" if size != self.img_size else "")
        bar = tqdm(self.train_loader, total=nb, disable=not self.main, ncols=120, desc=desc,
                   bar_format="{l_bar}{bar:10}{r_bar}")
        self.optimizer.zero_grad(set_to_none=True)
        last_step = nb * epoch - 1
        for i, (imgs, targets, _, _) in enumerate(bar):
            ni = i + nb * epoch
            imgs = self.to_input(imgs)
            targets = targets.to(self.device)
            if ni <= n_warmup:
                self._warmup(ni, n_warmup, epoch)
            if size != self.img_size or s.train.multi_scale:
                imgs = self._rescale(imgs, size)
            total, terms = self.step_loss(imgs, targets)
            if not torch.isfinite(total):
                self._bad_step(epoch)
                continue
            self.bad_steps = 0
            self.scaler.scale(total).backward()
            if ni - last_step >= self.accumulate:
                self.optimizer_step()
                last_step = ni
            for k, v in terms.items():
                sums[k] += v
            count += 1
            n_images += imgs.shape[0]
            if self.main:
                bar.set_postfix_str(self._postfix(sums, count, n_images / (time.time() - t0)))
        if last_step != nb - 1 + nb * epoch and count:
            self.optimizer_step()  # do not carry half-accumulated gradients into the next epoch
        means = {k: v / max(count, 1) for k, v in sums.items()}
        return means, n_images * max(self.world, 1) / max(time.time() - t0, 1e-9)

    def to_input(self, imgs):
        """A loader batch (uint8) as the network's input: on the device, float in [0, 1], the run's memory format."""
        return imgs.to(self.device, non_blocking=True).float().div_(255).contiguous(memory_format=self.fmt)

    def step_loss(self, imgs, targets):
        """Forward pass and every loss term of one batch: returns (total to back-propagate, {term: float})."""
        with autocast(self.device, self.precision):
            if self.feature_layers:
                outputs, feats = self.model(imgs, features=self.feature_layers)
                features = dict(zip(self.feature_layers, feats))
            else:
                outputs, features = self.model(imgs), {}
            total, terms = self.compute_loss(outputs, targets, detection_scales(self.plugins, self.context))
            bs = imgs.shape[0]
            for plugin in self.plugins:
                for k, v in plugin.extra_loss(self.context, imgs, targets, outputs, features).items():
                    total = total + v * bs
                    terms[k] = float(v.detach())
                terms.update(plugin.step_metrics(self.context))
        if self.world > 1:
            total = total * self.world  # DDP averages gradients over processes
        return total, terms

    def optimizer_step(self):
        """Unscale, clip, step, zero (the plug-ins' optimisers too); then plug-ins (masks) and the EMA."""
        if self.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.optimizer_parameters(), self.optim.grad_clip)
        self.scaler.step(self.optimizer)
        for optimizer in self.plugin_optimizers:
            self.average_gradients(optimizer)
            self.scaler.step(optimizer)
        self.scaler.update()
        for optimizer in [self.optimizer, *self.plugin_optimizers]:
            optimizer.zero_grad(set_to_none=True)
        for plugin in self.plugins:
            plugin.after_step(self.context)
        if self.ema:
            self.ema.update(self.model)

    @torch.no_grad()
    def average_gradients(self, optimizer):
        """Under DDP: a plug-in optimiser's gradients averaged over the processes, as DDP does the model's."""
        if self.world <= 1 or not dist.is_initialized():
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad.div_(self.world)

    def optimizer_parameters(self):
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _warmup(self, ni, n_warmup, epoch):
        """Linear warm-up of the learning rate (biases from warmup_bias_lr down), momentum and accumulation."""
        optim, x = self.optim, [0, n_warmup]
        self.accumulate = max(1, round(np.interp(ni, x, [1, optim.nominal_batch_size / self.settings.data.batch_size])))
        for j, group in enumerate(self.optimizer.param_groups):
            start = optim.warmup_bias_lr if j == 2 else 0.0
            group["lr"] = float(np.interp(ni, x, [start, group["initial_lr"] * self.lf(epoch)]))
            if "momentum" in group:
                group["momentum"] = float(np.interp(ni, x, [optim.warmup_momentum, optim.momentum]))

    def epoch_img_size(self, epoch):
        """Training image size of ``epoch``: ``--img-size``, or growing from ``--img-size-start`` (progressive)."""
        return progressive_img_size(epoch, self.epochs, self.img_size_start, self.img_size, self.stride)

    def _rescale(self, imgs, size):
        """``imgs`` resized to ``size`` (long side, stride multiples), or with ``--multi-scale`` to a random size
        in [0.5, 1.5] x ``size``; labels are normalised, so they stay valid."""
        stride = self.stride
        if self.settings.train.multi_scale:
            size = int(np.random.uniform(size * 0.5, size * 1.5 + stride)) // stride * stride
        scale = size / max(imgs.shape[2:])
        if scale == 1:
            return imgs
        shape = [math.ceil(x * scale / stride) * stride for x in imgs.shape[2:]]
        return nn.functional.interpolate(imgs, size=shape, mode="bilinear", align_corners=False)

    def _bad_step(self, epoch):
        self.bad_steps += 1
        self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.bad_steps >= MAX_BAD_STEPS:
            raise UserError(f"{self.save_dir}: {self.bad_steps} consecutive non-finite losses in epoch {epoch + 1}; "
                            f"stopped (lower --lr0 or check the data); {self.files_held()}")

    def files_held(self):
        """What the run's checkpoint files hold, for the message of a run stopped by non-finite values."""
        last = ("no last.pt was written" if self.saved_epoch is None
                else f"last.pt holds epoch {self.saved_epoch + 1}, the last finite state")
        if self.best_epoch is not None:
            return f"{last}, best.pt epoch {self.best_epoch + 1}"
        return last + (", best.pt an earlier epoch" if (self.wdir / "best.pt").is_file() else ", no best.pt")

    def health_problems(self, metrics):
        """Names of the non-finite values the next save would write: weights and BN buffers (trained and EMA),
        optimiser moments, validation losses and metrics."""
        problems = []
        states = [("weights", de_parallel(self.model).state_dict())]
        if self.ema:
            states.append(("EMA", self.ema.ema.state_dict()))
        for what, state in states:
            problems += [f"{what} {k}" for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        moments = sum(1 for st in self.optimizer.state.values() for v in st.values()
                      if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all())
        problems += [f"{moments} optimiser moments"] if moments else []
        values = {f"validation loss {k}": v for k, v in metrics.get("loss", {}).items()}
        values.update({f"metric {k}": metrics[k] for k in ("precision", "recall", "map50", "map") if k in metrics})
        return problems + [k for k, v in values.items() if not math.isfinite(float(v))]

    def stop_if_unhealthy(self, epoch, metrics):
        """Stop the run (one-line ``UserError``) before a save would write non-finite values; every process stops."""
        problems = self.health_problems(metrics)
        flag = torch.tensor([float(bool(problems))], device=self.device)
        if self.world > 1 and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item():
            shown = ", ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")
            raise UserError(f"{self.save_dir}: non-finite values after epoch {epoch + 1} "
                            f"({shown or 'on another process'}); stopped (lower --lr0 or check the data); "
                            f"{self.files_held()}")

    @staticmethod
    def _postfix(sums, count, img_per_s):
        mem = torch.cuda.memory_reserved() / 2**30 if torch.cuda.is_available() else 0
        losses = " ".join(f"{k}={v / max(count, 1):.4g}" for k, v in sums.items())
        return f"{losses} {img_per_s:.1f}img/s" + (f" {mem:.1f}G" if mem else "")

    # -- evaluation and logging ----------------------------------------------------------------------
    def eval_model(self):
        return self.ema.ema if self.ema else de_parallel(self.model)

    def validate(self, epoch):
        last = epoch == self.epochs - 1
        if not self.main or (not last and (self.settings.output.notest or epoch + 1 < self.first_scored)):
            return {}
        if self.settings.train.precise_bn:
            self.recompute_bn_stats(self.eval_model(), self.settings.train.precise_bn)
        # fp32, as test.py scores by default: the per-epoch mAP and test.py's agree whatever precision trained it
        return evaluate(self.eval_model(), self.val_loader, precision="fp32", names=self.names,
                        compute_loss=self.compute_loss)

    def recompute_bn_stats(self, model, n_batches):
        """Precise BN before evaluation (``--precise-bn N``): the evaluated (EMA) model's BN statistics become the
        mean over the first N training batches of this epoch, under the training autocast; saved with the weights."""
        def batches():
            for i, (imgs, *_) in enumerate(self.train_loader):
                if i == n_batches:
                    return
                yield self.to_input(imgs)

        with autocast(self.device, self.precision):
            recompute_bn_stats(model, batches())

    def end_epoch(self, epoch, losses, metrics, img_per_s, seconds):
        self.stop_if_unhealthy(epoch, metrics)
        if self.main:
            row = {"epoch": epoch + 1}
            row.update({f"train/{k}": v for k, v in losses.items()})
            row.update({f"val/{k}": v for k, v in metrics.get("loss", {}).items()})
            for k in ("precision", "recall", "map50", "map"):
                if k in metrics:
                    row[f"metrics/{k}"] = metrics[k]
            row["lr"] = self.optimizer.param_groups[1]["lr"]
            row["img_per_s"] = img_per_s
            row["seconds"] = seconds
            row["skipped_steps"] = self.skipped_steps
            row["dtype"], row["memory_format"] = self.args.precision_chosen, self.args.memory_format_chosen
            for plugin in self.plugins:
                row.update(plugin.after_epoch(self.context, epoch, metrics))
            self.rows.append(row)
            self.write_results(final=epoch + 1 == self.epochs)
            fitness = fitness_of(metrics) if metrics else -1.0
            best = fitness > self.best_fitness
            self.best_fitness = max(self.best_fitness, fitness)
            self.save(epoch, metrics, best=best)
            if self.writer:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        self.writer.add_scalar(k, v, epoch + 1)
            summary = " ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in row.items()
                               if k.startswith("metrics/"))
            self.log(f"epoch {epoch + 1}/{self.epochs}: {summary} ({seconds:.0f}s)")
        else:
            for plugin in self.plugins:
                plugin.after_epoch(self.context, epoch, metrics)
        if self.world > 1:
            dist.barrier()

    def write_results(self, final=True):
        """results.csv after every epoch, results.png after the last one and when ``PLOT_EVERY_S`` have passed (a
        figure costs about a second on a 2-core CPU: most of a short run's time), each written atomically."""
        keys = []
        for row in self.rows:
            keys += [k for k in row if k not in keys]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomic(self.save_dir / "results.csv", text.getvalue())
        if final or time.monotonic() - self.plotted_at >= PLOT_EVERY_S:
            plot_results(self.save_dir / "results.csv")
            self.plotted_at = time.monotonic()

    # -- checkpoints ---------------------------------------------------------------------------------
    def checkpoint(self, epoch, train_state):
        """The checkpoint dict of docs/architecture.md; ``train_state`` only for last.pt."""
        model = de_parallel(self.model)
        ckpt = {
            "cfg": model.cfg_text,
            "cfg_name": Path(model.cfg_path).name if getattr(model, "cfg_path", None) else "cfg",
            "nc": model.nc,
            "names": list(self.names),
            "img_size": self.img_size,
            "model": {k: v.detach().float().cpu() if v.dtype.is_floating_point else v.cpu()
                      for k, v in self.eval_model().state_dict().items()},
            "epoch": epoch,
            "best_fitness": self.best_fitness,
            "args": vars_clean(self.args),
        }
        for plugin in self.plugins:
            ckpt.update(plugin.checkpoint_entries(self.context))
        if train_state:
            ckpt["train_state"] = {
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "ema_updates": self.ema.updates if self.ema else 0,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "plugins": {p.name: p.state_dict() for p in self.plugins},
                "rows": self.rows,
                "skipped_steps": self.skipped_steps,
            }
        return ckpt

    def save(self, epoch, metrics, best):
        # best.pt before the last.pt that records its fitness: a kill between the two leaves the old last.pt, whose
        # resume re-runs this epoch and judges it again, instead of a last.pt claiming a best.pt never written
        if best:
            save_compact(self.checkpoint(epoch, train_state=False), self.wdir / "best.pt")  # pruned: zeros not stored
            self.best_epoch = epoch
        save_checkpoint(self.checkpoint(epoch, train_state=True), self.wdir / "last.pt")
        self.saved_epoch = epoch

    def _restore(self, ckpt):
        """Continue exactly where ``last.pt`` stopped."""
        state = ckpt["train_state"]
        model = de_parallel(self.model)
        model.load_state_dict(state["model"])
        if self.ema:
            self.ema.ema.load_state_dict(ckpt["model"])
            self.ema.updates = state["ema_updates"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for plugin in self.plugins:
            plugin.load_state_dict(state["plugins"].get(plugin.name, {}))
        self.rows = list(state.get("rows", []))
        self.skipped_steps = state.get("skipped_steps", 0)
        self.best_fitness = ckpt["best_fitness"]
        self.start_epoch = ckpt["epoch"] + 1
        if self.main:
            self.log(f"resuming {self.save_dir} at epoch {self.start_epoch + 1}/{self.epochs}")


def detection_scales(plugins, trainer):
    """``{'box', 'obj', 'cls'}``: the product over plug-ins of their ``detection_loss_scale`` for each term."""
    scales = dict.fromkeys(("box", "obj", "cls"), 1.0)
    for plugin in plugins:
        s = plugin.detection_loss_scale(trainer)
        for k in scales:
            scales[k] *= s.get(k, 1.0) if isinstance(s, dict) else s
    return scales


def first_scored_epoch(eval_from, epochs):
    """The first epoch (1-based) evaluated after training: ``--eval-from``, a fraction below 1 being of ``epochs``."""
    value = float(eval_from or 0)
    return max(1, math.ceil(value * epochs)) if value < 1 else int(value)


def start_img_size(start, img_size, stride):
    """``--img-size-start`` in pixels: a value below 1 is a fraction of ``img_size``, rounded down to ``stride``
    (0, no progressive resizing, where that is not below ``img_size``: a fraction in params/ fits any size)."""
    if 0 < start < 1:
        size = max(stride, int(start * img_size) // stride * stride)
        return size if size < img_size else 0
    return int(start)


def progressive_img_size(epoch, epochs, start, end, stride):
    """Progressive resizing (EfficientNetV2's progressive learning, Tan & Le 2021, Sec. 4, with the image size only):
    the training image size of ``epoch`` (0-based) grows linearly from ``start`` in the first epoch to ``end`` in the
    last, rounded down to a multiple of ``stride``; ``end`` throughout when ``start`` is 0 or not below ``end``."""
    if not start or start >= end or epochs <= 1:
        return end
    return max(stride, int(start + (end - start) * epoch / (epochs - 1)) // stride * stride)


def fitness_of(metrics):
    """The number best.pt maximises: 0.1 * mAP@0.5 + 0.9 * AP@[.5:.95]."""
    return 0.1 * metrics.get("map50", 0.0) + 0.9 * metrics.get("map", 0.0)


def plot_results(csv_path):
    """results.png: one small panel per numeric column of results.csv, against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    keys = [k for k in rows[0] if k != "epoch" and _is_number(rows[0][k])]
    cols = 5
    fig, axes = plt.subplots(math.ceil(len(keys) / cols), cols, figsize=(3 * cols, 2.4 * math.ceil(len(keys) / cols)),
                             squeeze=False)
    epochs = [int(float(r["epoch"])) for r in rows]
    for ax, key in zip(axes.flat, keys):
        ax.plot(epochs, [float(r[key]) if _is_number(r.get(key, "")) else np.nan for r in rows], marker=".")
        ax.set_title(key, fontsize=9)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(Path(csv_path).with_suffix(".png")) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _is_number(s):
    try:
        float(s)
        return True
    except (TypeError, ValueError):
        return False

"""Torch helpers for the training engine: precision, optimiser parameter groups, precise BN, the weight EMA."""
import contextlib
import copy
import math
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn

from utils.settings import PRECISION_CHOICES


def ddp(module, device):
    """``module`` wrapped in DistributedDataParallel for a process on ``device`` (its GPU, or none on the CPU)."""
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def de_parallel(model):
    """The bare model inside DataParallel / DistributedDataParallel."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
_warned = set()


@dataclass(frozen=True)
class Precision:
    """The arithmetic a run computes in: ``name`` is bf16, fp16 (autocast) or fp32; ``reason`` says why."""

    name: str
    reason: str

    @property
    def amp(self):
        return self.name != "fp32"

    @property
    def scaled(self):
        """fp16 gradients underflow without a GradScaler; bf16 has fp32's exponent range and needs none."""
        return self.name == "fp16"

    def __str__(self):
        return f"{self.name} ({self.reason})"


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        return next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    except OSError:
        return []


def cpu_isa(native=True):
    """The CPU's bf16-relevant ISA for messages: AMX or AVX512-BF16 (from /proc/cpuinfo's flags where it exists),
    else the vector ISA torch dispatches to (AVX512, AVX2, ...). ``native=False`` (oneDNN runs no bf16 here) names
    the ISA torch dispatches to, and a bf16 flag the CPU lists that torch does not use (e.g. ONEDNN_MAX_CPU_ISA)."""
    flags = cpu_flags()
    listed = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else None
    if native and listed:
        return listed
    isa = torch.backends.cpu.get_cpu_capability()
    return f"{isa}; the CPU lists {listed}, unused by oneDNN here" if listed else isa


def native_low_precision(name):
    """Whether oneDNN runs ``name`` (bf16 or fp16) natively on this CPU; without it torch emulates it, ~11x slower
    than fp32 for bf16 on an AVX2 Zen 2 EPYC (BENCHMARKS.md)."""
    check = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[name]
    return bool(getattr(torch.ops.mkldnn, check)())


def resolve_precision(device, choice="auto", warn=None):
    """``--amp`` as a :class:`Precision` on ``device``.

    ``auto``: fp16 + GradScaler on CUDA; bf16 on a CPU with native bf16 (AMX or AVX512-BF16); fp32 elsewhere.
    A forced bf16/fp16 that this CPU can only emulate still runs, with one warning per process.
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    cuda = device.type == "cuda"
    if choice in ("off", "fp32"):
        return Precision("fp32", "--amp off")
    if choice == "auto":
        if cuda:
            return Precision("fp16", "CUDA: fp16 autocast with a gradient scaler")
        if native_low_precision("bf16"):
            return Precision("bf16", f"CPU has native bf16: {cpu_isa()}")
        return Precision("fp32", f"CPU has no native bf16: {cpu_isa(native=False)}")
    if choice not in DTYPES:
        raise ValueError(f"--amp must be one of {', '.join(PRECISION_CHOICES)}, not {choice!r}")
    if cuda:
        return Precision(choice, f"--amp {choice} on CUDA")
    if native_low_precision(choice):
        return Precision(choice, f"--amp {choice}, native on this CPU: {cpu_isa()}")
    if choice not in _warned:
        _warned.add(choice)
        warn(f"warning: --amp {choice} on a CPU without native {choice} ({cpu_isa(native=False)}): torch emulates "
             f"it, often several times slower than fp32 (--amp auto picks fp32 here)")
    return Precision(choice, f"--amp {choice}, emulated on this CPU: {cpu_isa(native=False)}")


def autocast(device, precision="fp32"):
    """Autocast to ``precision`` (a :class:`Precision` or its name) on ``device``; a no-op for fp32."""
    name = getattr(precision, "name", precision)
    if DTYPES[name] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[name])


MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


@torch.no_grad()
def recompute_bn_stats(model, batches):
    """Precise BatchNorm (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", arXiv 2105.07576, section 3.1):
    replace every BN layer's running mean and variance by their plain average over ``batches`` (an iterable of input
    tensors), computed with the model's current weights in train mode; returns the number of batches used.

    Running statistics kept with momentum 0.03 lag the weights by ~30 steps, and in a deep stack of thin BN layers
    (YOLO Nano: 117) the lag compounds: an eval-mode Nano scored as if untrained while its train-mode outputs
    already fit (docs/models.md). Only the BN buffers change; the model's mode and the layers' momenta are restored.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: the plain mean over the batches
    model.train()
    n = 0
    try:
        for x in batches:
            model(x)
            n += 1
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)
    return n


def parameter_groups(modules):
    """Split parameters into (BN weights, conv/linear weights, biases); only the middle group gets weight decay."""
    bn, decay, bias = [], [], []
    seen = set()
    for module in modules:
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                if id(p) in seen or not p.requires_grad:
                    continue
                seen.add(id(p))
                if name == "bias":
                    bias.append(p)
                elif isinstance(m, nn.modules.batchnorm._NormBase) or p.ndim <= 1:
                    bn.append(p)
                else:
                    decay.append(p)
    return bn, decay, bias


def build_optimizer(modules, name, lr, momentum, weight_decay):
    """SGD (nesterov) or Adam over the parameters of ``modules``, weight decay on weights only."""
    bn, decay, bias = parameter_groups(modules)
    if name == "adam":
        opt = torch.optim.Adam(bn, lr=lr, betas=(momentum, 0.999))
    else:
        opt = torch.optim.SGD(bn, lr=lr, momentum=momentum, nesterov=True)
    opt.add_param_group({"params": decay, "weight_decay": weight_decay})
    opt.add_param_group({"params": bias})
    return opt


def cosine_lr(epochs, lrf):
    """Learning-rate factor for epoch e: cosine from 1 to ``lrf`` over ``epochs`` (Loshchilov & Hutter 2017)."""
    return lambda e: ((1 - math.cos(e * math.pi / max(epochs, 1))) / 2) * (lrf - 1) + 1


def inverse_exp_lr(epochs, exponent=4.0):
    """The original project's factor 1 - 10^(-4 (1 - e/epochs)) (its ``lrf: -4``): about 1 for most of the run,
    0.9 at 75%, 0 at the end."""
    return lambda e: 1 - 10 ** (-exponent * (1 - e / max(epochs, 1)))




def lr_schedule(name, epochs, lrf):
    """The learning-rate factor of ``--lr-schedule``: ``cosine`` (to ``lrf``) or the original's ``inverse-exp``."""
    return inverse_exp_lr(epochs) if name == "inverse-exp" else cosine_lr(epochs, lrf)


class ModelEMA:
    """Exponential moving average of the weights (and buffers) used for evaluation and saving.

    decay(n) = d * (1 - exp(-n / tau)) ramps up so that the first updates follow the model closely.
    """

    def __init__(self, model, decay=0.9999, tau=2000, updates=0):
        self.ema = copy.deepcopy(de_parallel(model)).eval()
        self.decay, self.tau, self.updates = decay, tau, updates
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        state = de_parallel(model).state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(state[k].detach(), alpha=1 - d)
            else:
                v.copy_(state[k])

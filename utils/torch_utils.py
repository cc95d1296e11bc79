"""Torch helpers for the training engine: mixed precision, optimiser parameter groups, the weight EMA."""
import contextlib
import copy
import math

import torch
import torch.nn as nn


def ddp(module, device):
    """``module`` wrapped in DistributedDataParallel for a process on ``device`` (its GPU, or none on the CPU)."""
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def de_parallel(model):
    """The bare model inside DataParallel / DistributedDataParallel."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


def autocast(device, enabled=True):
    """bf16 autocast on CPU (AMX/AVX-512 make it ~3x faster here), fp16 autocast on CUDA; a no-op if disabled."""
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", dtype=torch.bfloat16)


MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def memory_format(device, amp, choice="auto"):
    """The training tensors' memory format: ``--memory-format`` when given, else (``auto``) channels_last with
    autocast (CPU bf16 and CUDA AMP) and contiguous in fp32.

    ``auto`` is right for the YOLOv3 family; depthwise-heavy nets depend on the CPU: on the 2-core Sapphire Rapids
    (AMX) of BENCHMARKS.md YOLO Nano's bf16 step is ~1.4x faster contiguous (yolov3-tiny's ~1.3x slower); on a
    2-core Zen 4 EPYC channels_last is faster for all of them (256 px: Nano 1.1x, YOLOv3-Mobile 1.3x,
    MobileNetV3-YOLO 1.6x, tiny 1.4x).
    """
    if choice != "auto":
        return MEMORY_FORMATS[choice]
    return torch.channels_last if amp else torch.contiguous_format


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

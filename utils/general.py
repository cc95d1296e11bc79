"""Small helpers shared by every module: box conversions, seeding, run folders."""
import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def project_path(path):
    """``path`` as given, or, when it is relative and not found from the working folder, the same path inside the
    toolkit's folder: the defaults (cfg/yolov3-tiny.cfg, data/shapes.data) then work from any folder."""
    p = Path(path)
    if p.exists() or p.is_absolute() or not (ROOT / p).exists():
        return p
    return ROOT / p


def xywh2xyxy(x):
    """Boxes from centre/size ``[x, y, w, h]`` to corners ``[x1, y1, x2, y2]`` (torch or numpy, last dim 4)."""
    y = x.clone() if isinstance(x, torch.Tensor) else np.copy(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xyxy2xywh(x):
    """Boxes from corners ``[x1, y1, x2, y2]`` to centre/size ``[x, y, w, h]`` (torch or numpy, last dim 4)."""
    y = x.clone() if isinstance(x, torch.Tensor) else np.copy(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def init_seeds(seed=0, deterministic=False):
    """Seed python, numpy and torch; ``deterministic`` also asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def increment_path(path, exist_ok=False):
    """``runs/train/exp`` -> the first of ``exp, exp2, exp3, ...`` that does not exist yet (or ``path`` itself)."""
    path = Path(path)
    if exist_ok or not path.exists():
        return path
    n = 2
    while Path(f"{path}{n}").exists():
        n += 1
    return Path(f"{path}{n}")


def is_main_process():
    """True outside torchrun and on its rank 0: the process that logs and writes files."""
    return int(os.environ.get("RANK", -1)) in (-1, 0)


def select_device(device=""):
    """``''`` -> cuda:0 when available else cpu; ``'cpu'``, ``'0'``, ``'cuda:1'`` as given."""
    device = str(device).strip().lower()
    if device in ("", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.isdigit():
        device = f"cuda:{device}"
    return torch.device(device)


def cpu_name(cpuinfo="/proc/cpuinfo"):
    """The CPU's model name with its family and model numbers, e.g. 'AMD EPYC (family 25 model 17)': a virtual
    machine often names only 'AMD EPYC', which Zen 2, 4 and 5 share (/proc/cpuinfo where it exists, else what
    ``platform`` says)."""
    try:
        fields = {}
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            if not line.strip():
                break  # the first processor is enough
            fields.setdefault(key.strip(), value.strip())
        if "model name" in fields:
            numbers = (f" (family {fields['cpu family']} model {fields['model']})"
                       if "cpu family" in fields and "model" in fields else "")
            return fields["model name"] + numbers
    except OSError:
        pass
    return platform.processor() or platform.machine()


def user_cache_dir():
    """The toolkit's cache folder (label caches of read-only data sets, memory-format probes):
    ``$YOLO_COMPRESSION_CACHE`` (``$YOLOC_CACHE_DIR``, its earlier name, still read), else
    ``$XDG_CACHE_HOME/yolo-compression`` or ``~/.cache/yolo-compression``."""
    base = os.environ.get("YOLO_COMPRESSION_CACHE") or os.environ.get("YOLOC_CACHE_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "yolo-compression"

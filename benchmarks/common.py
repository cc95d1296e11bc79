"""Helpers shared by the benchmark scripts."""
from pathlib import Path


def data_path(a, out):
    """``a.data``, or with ``a.n_train`` / ``a.n_val`` a smaller shapes set (defaults 128 / 32) written under ``out``
    (reused when it is already there)."""
    if a.n_train is None and a.n_val is None:
        return a.data
    from utils.shapes import make_shapes

    n_train, n_val = a.n_train or 128, a.n_val or 32
    return str(make_shapes(Path(out) / f"shapes_{n_train}_{n_val}", n_train=n_train, n_val=n_val, img_size=320,
                           seed=0))

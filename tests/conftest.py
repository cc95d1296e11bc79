"""Shared test fixtures. Tests run on CPU, on tiny images, and never reach the network."""
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
COCO128 = ROOT.parent / "shared" / "data" / "coco128"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def coco128():
    """The 128 real COCO images beside the project (../shared/data/coco128); skip where absent."""
    if not (COCO128 / "images" / "train2017").is_dir():
        pytest.skip(f"coco128 not found at {COCO128} (it lies in ../shared/data beside the checkout)")
    return COCO128


@pytest.fixture(scope="session")
def shapes_tiny(tmp_path_factory):
    """A tiny shapes set (16 train + 8 val images, 96-128 px, 6 classes, seed 0) in a temporary folder.

    Returns the ``pathlib.Path`` of its ``shapes.data`` (relative paths inside; ``parse_data_cfg`` reads it).
    Built once per test session (about a second); tests must not modify it.
    """
    from utils.shapes import make_shapes

    return make_shapes(tmp_path_factory.mktemp("shapes_tiny"), n_train=16, n_val=8, img_size=128, seed=0)

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

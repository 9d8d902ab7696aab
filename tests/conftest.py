"""Shared fixtures: one tiny random Qwen2.5-VL checkpoint per test session (written offline)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download

VQA_RAD = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "vqa_rad")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from vitos.models.tiny import write_tiny_model

    return str(write_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0))


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model_dir):
    from vitos.models import load_model

    return load_model(tiny_model_dir, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a whole test module (use: pytestmark = pytest.mark.usefixtures(...)).
    Other jobs share these 2 cores; torch's 2-thread kernels then spin and run ~50x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def random_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def vqa_rad_dir():
    path = os.path.abspath(VQA_RAD)
    if not os.path.isdir(path):
        pytest.skip("../shared/data/vqa_rad is not present beside the checkout")
    return path

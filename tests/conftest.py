"""Shared fixtures: one tiny random Qwen2.5-VL checkpoint per test session (written offline).

The `sensitive_*` fixtures are the position-sensitive variants of the tiny Qwen2.5-VL and HuatuoGPT-Vision
checkpoints (`position_sensitive=True`, see `vitos.models.tiny`): the default random models barely depend on
positions, so a position test must run on these to be able to fail. `reindexed` and
`plant_decode_after_length` are planted position bugs with which a test proves that a position check is live
(the check must fail under them); apply them explicitly inside one test, never globally.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download

VQA_RAD_SUBSET = Path(__file__).resolve().parent / "data" / "vqa_rad"
"""11 VQA-RAD images + their 85 QA records, shipped with the tests (CC0; see its PROVENANCE.md)."""
VQA_RAD_JSON = "VQA_RAD Dataset Public.json"


def vqa_rad_path() -> Path:
    """The VQA-RAD folder every test reads: $VITOS_VQA_RAD_DIR (e.g. the full release, the optional larger run)
    when set, else the shipped subset. A set variable that points at no release is an error, not a skip."""
    env = os.environ.get("VITOS_VQA_RAD_DIR")
    if not env:
        return VQA_RAD_SUBSET
    path = Path(env).expanduser().resolve()
    if not (path / VQA_RAD_JSON).is_file():
        raise pytest.UsageError(f"VITOS_VQA_RAD_DIR={env!r}: no {VQA_RAD_JSON!r} in {path} (unset it to use {VQA_RAD_SUBSET})")
    return path


def vqa_rad_is_subset(path: Path) -> bool:
    return Path(path).resolve() == VQA_RAD_SUBSET


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from vitos.models.tiny import write_tiny_model

    return str(write_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0))


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model_dir):
    from vitos.models import load_model

    return load_model(tiny_model_dir, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def sensitive_model_dir(tmp_path_factory):
    """Tiny Qwen2.5-VL whose outputs depend strongly on positions (q/k x8, LM head x20, rope_theta 100)."""
    from vitos.models.tiny import write_tiny_model

    return str(write_tiny_model(tmp_path_factory.mktemp("tiny_sensitive") / "model", seed=0, position_sensitive=True))


@pytest.fixture(scope="session")
def sensitive_adapter(sensitive_model_dir):
    """Shared by the whole session: do not change its weights (zero any gradients you make)."""
    from vitos.models import load_model

    return load_model(sensitive_model_dir, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def sensitive_huatuo_dir(tmp_path_factory):
    """Tiny HuatuoGPT-Vision (original llava_qwen2 format) whose outputs depend strongly on positions."""
    from vitos.models.tiny_huatuo import write_tiny_huatuo

    out = tmp_path_factory.mktemp("huatuo_sensitive") / "HuatuoGPT-Vision-7B"
    return str(write_tiny_huatuo(out, seed=0, position_sensitive=True))


@pytest.fixture(scope="session")
def sensitive_huatuo(sensitive_huatuo_dir):
    """Shared by the whole session: do not change its weights (zero any gradients you make)."""
    from vitos.models import load_model

    return load_model(sensitive_huatuo_dir, dtype="float32", device="cpu")


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
def vqa_rad_dir() -> str:
    """VQA-RAD in its OSF layout: the shipped subset, or $VITOS_VQA_RAD_DIR (see `vqa_rad_path`)."""
    return str(vqa_rad_path())


# ---------------------------------------------------------------------------- positions: truth and planted bugs
def original_positions(prompt, keeps, extra=None):
    """(P, L') the positions a pruned sequence must carry, built from the unpruned prompt WITHOUT `assemble`:
    the prompt's positions at every text column and at the kept cells of each image (`keeps[i]`: (H, W) bool,
    or None for a whole image). `extra[i]`: (P, E) positions appended after image i's kept tokens (the
    extra tokens of contextual fusion have no column of their own; tests/test_fusion.py checks them)."""
    import torch

    pieces, cursor = [], 0
    for i, ((start, end), keep) in enumerate(zip(prompt.image_spans, keeps)):
        pieces.append(prompt.positions[:, cursor:start])
        image = prompt.positions[:, start:end]
        pieces.append(image if keep is None else image[:, keep.reshape(-1)])
        if extra is not None and extra[i] is not None:
            pieces.append(extra[i])
        cursor = end
    pieces.append(prompt.positions[:, cursor:])
    return torch.cat(pieces, dim=1)


def reindexed(seq):
    """Planted bug: `seq` with its positions re-indexed 0..L-1 on every rotary row (what pruning must never do)."""
    import torch

    positions = torch.arange(seq.length, device=seq.positions.device).expand_as(seq.positions).clone()
    return dataclasses.replace(seq, positions=positions)


def plant_decode_after_length(monkeypatch):
    """Planted bug, for this test only: the engine decodes from the sequence length (re-indexed decode positions)
    instead of max position + 1. `monkeypatch` undoes it when the test ends."""
    import vitos.engine

    monkeypatch.setattr(vitos.engine, "next_positions", lambda positions, mask: mask.sum(-1))

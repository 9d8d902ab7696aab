"""The warm start (vitos.sft) on a real tiny Qwen2.5-VL: what each stage trains, and that it learns.

Each test runs a handful of optimizer steps on 2-4 MedPhantom samples (seconds on a CPU).
"""

from __future__ import annotations

import math

import pytest
import torch

from vitos.data.medphantom import PhantomConfig, generate
from vitos.data.sample import Sample
from vitos.pipeline import PruneConfig
from vitos.sft import (
    SFTConfig,
    VisionPretrainConfig,
    pretrain_vision,
    targets,
    token_boxes,
    warm_start,
    where_target,
)


@pytest.fixture()
def adapter(tiny_model_dir):
    """A fresh copy per test: these tests train the weights."""
    from vitos.models import load_model

    torch.manual_seed(0)
    return load_model(tiny_model_dir, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def phantom():
    return generate(PhantomConfig(seed=0, n_train=4, n_test=1, image_size=112))["train"]


def _snapshot(model, vision: bool) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ("visual." in n) == vision}


def _max_change(model, before: dict[str, torch.Tensor]) -> float:
    params = dict(model.named_parameters())
    return max(float((params[n].detach() - p).abs().max()) for n, p in before.items())


def test_where_target_is_the_box_block_of_the_grounding_target():
    s = Sample(id="a", images=[], question="q", answer="no", kind="yes_no", boxes=[[0.1, 0.2, 0.333, 0.5]])
    assert where_target(s) == "<box>[[0.10,0.20,0.33,0.50]]</box>"
    assert where_target(s) in targets(s, "none")[0]  # the same box text the grounding branch is taught


def test_token_boxes_give_each_evidence_token_its_box_and_nan_elsewhere():
    s = Sample(id="a", images=[], question="q", answer="no", kind="yes_no", boxes=[[0.0, 0.0, 0.5, 0.5]])
    out = token_boxes(s, (2, 2))  # 4 cells; the box covers the upper-left one only
    assert out.shape == (4, 4)
    assert out[0].tolist() == [0.0, 0.0, 0.5, 0.5]
    assert torch.isnan(out[1:]).all()


def test_sequences_are_validated():
    with pytest.raises(ValueError, match="sequences"):
        SFTConfig(sequences=("grounding", "caption"))


def test_warm_start_fits_a_fixed_batch_and_leaves_a_frozen_tower_untouched(adapter, phantom):
    vision = _snapshot(adapter.model, vision=True)
    lm = _snapshot(adapter.model, vision=False)
    cfg = SFTConfig(steps=12, batch_size=2, lr=3e-3, warmup_steps=1, freeze_vision=True,
                    sequences=("grounding", "sparse", "full", "where"))
    losses = warm_start(adapter, phantom[:2], cfg, PruneConfig(min_keep=1))
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3  # the same two samples every step: it must fit
    assert _max_change(adapter.model, vision) == 0.0  # frozen
    assert _max_change(adapter.model, lm) > 0.0


def test_vision_pretraining_trains_the_tower_only_and_lowers_its_loss(adapter, phantom):
    vision = _snapshot(adapter.model, vision=True)
    lm = _snapshot(adapter.model, vision=False)
    losses = pretrain_vision(adapter, phantom, VisionPretrainConfig(steps=15, batch_size=4, lr=3e-3, box_weight=10.0))
    assert len(losses) == 15 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
    assert _max_change(adapter.model, vision) > 0.0
    assert _max_change(adapter.model, lm) == 0.0  # the language model is not touched

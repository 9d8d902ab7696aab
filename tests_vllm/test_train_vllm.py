"""`vitos train` with rollout.engine=vllm: rollouts from vLLM, weights synced after every optimiser step.

What would notice a broken sync: the trainer's `{branch}/logprob_diff_max` compares vLLM's recorded
log-probs with the trainer's own before each update. With the sync it stays at float rounding (< 1e-3 on
CPU float32) at every step, after weights changed; with the sync removed (checked once by planting it) the
second step's diff is large and the truncated-IS weight departs from 1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def phantom_jsonl(tmp_path_factory):
    from vitos.data.medphantom import PhantomConfig, write_dataset

    return write_dataset(PhantomConfig(seed=0, n_train=8, n_test=0), tmp_path_factory.mktemp("phantom"))["train"]


def lower_fraction(text, sample, branch):
    """A dense reward: every completion scores differently, so every step has a gradient."""
    return sum(c.islower() for c in text) / max(1, len(text))


@pytest.mark.parametrize("setup", [["schedule.name=interleaved", "model.lora=false"],
                                   ["schedule.name=joint", "model.lora=false"],
                                   ["schedule.name=joint", "model.lora=true"]], ids=["interleaved", "joint", "joint-lora"])
def test_train_with_vllm_rollouts_keeps_engine_and_trainer_in_step(setup, tmp_path, vllm_model_dir, phantom_jsonl):
    from vitos.config import load_config
    from vitos.rl.checkpoint import read_metrics
    from vitos.rl.config import TrainConfig
    from vitos.rl.trainer import train

    cfg = load_config(TrainConfig, CONFIGS / "tiny_cpu.yaml", [
        f"model.name_or_path={vllm_model_dir}", f"data.train_path={phantom_jsonl}", f"checkpoint.out_dir={tmp_path}",
        "rollout.group_size=2", "rollout.max_new_tokens=8", "data.batch_size=1", "schedule.total_steps=2",
        "logging.progress=false", "checkpoint.every=0", "optim.lr=0.01", "rollout.engine=vllm",
        "rollout.vllm_max_model_len=1024", "grpo.tis_cap=2.0", "logging.log_grad_cosine=false", *setup])
    train(cfg, reward_override=lower_fraction)
    metrics = read_metrics(tmp_path / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        for b in ("grounding", "sparse"):
            assert m[f"{b}/logprob_diff_max"] is not None and m[f"{b}/logprob_diff_max"] < 1e-3, (m["step"], b)
            assert abs(m[f"{b}/is_weight_mean"] - 1.0) < 1e-3
    assert (tmp_path / "final" / "config.json").is_file()

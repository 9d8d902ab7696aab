"""bf16 updates survive: full fine-tuning at the paper's lr 1e-6 with float32 master weights + bf16 compute.

Bug it catches: bf16 weights updated in place (bf16 keeps 8 mantissa bits, so w + 1e-6 * w rounds back to
w and the update vanishes). The negative control (fp32_master_weights=false) must show that bug, so the
test would notice if the master copy went missing.

All three runs update the SAME fixed rollouts (sampled once by the fp32 model) with the same rewards, so
their parameter trajectories are comparable step by step.
"""

from __future__ import annotations

import pytest
import torch

from vitos.config import load_config
from vitos.models import load_model
from vitos.rl import rollout as ro
from vitos.rl.config import TrainConfig, precision_plan
from vitos.rl.policy import PolicyView, build_policy
from vitos.rl.update import Updater

from test_update import _samples

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 10


def _cfg(dtype: str, master: bool) -> TrainConfig:
    return load_config(TrainConfig, None, [
        f"model.dtype={dtype}", "model.lora=false", "model.freeze_vision=true", f"optim.fp32_master_weights={str(master).lower()}",
        "optim.lr=1e-6", "optim.max_grad_norm=0", "rollout.group_size=2", "rollout.sparse_group_size=2",
        "rollout.max_new_tokens=6", "rollout.temperature=1.0", "schedule.name=joint", "device=cpu"])


def _fixed_rollouts(model_dir):
    adapter = load_model(model_dir, "float32", device="cpu")
    cfg = _cfg("float32", True)
    samples = _samples()
    with torch.no_grad():
        step = ro.collect(adapter, samples, cfg.rollout, cfg.prune, torch.Generator().manual_seed(0))
    rewards = ro.score(step)
    rewards.grounding = torch.arange(len(step.grounding), dtype=torch.float32) % 3  # dense: every advantage != 0
    rewards.sparse = torch.arange(len(step.sparse), dtype=torch.float32) % 4
    return step, rewards


def _trajectory(model_dir, cfg: TrainConfig, step, rewards) -> list[torch.Tensor]:
    """Flattened float32 trainable parameters before and after each of STEPS updates on the fixed rollouts."""
    from accelerate import Accelerator

    load_dtype, compute = precision_plan(cfg)
    adapter = load_model(model_dir, load_dtype, device="cpu")
    policy = build_policy(adapter, cfg.prune, lora=False, freeze_vision=True,
                          autocast_dtype=torch.bfloat16 if compute == "bf16" else None)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=0.0)
    acc = Accelerator(cpu=True)
    policy, optimizer = acc.prepare(policy, optimizer)
    up = Updater(acc, policy, optimizer, params, cfg, vision_trainable=False)
    flat = lambda: torch.cat([p.detach().float().flatten() for p in params])  # noqa: E731
    out = [flat()]
    for _ in range(STEPS):
        up.update(step, rewards, ["grounding", "sparse"])
        out.append(flat())
    return out


@pytest.fixture(scope="module")
def trajectories(tiny_model_dir):
    step, rewards = _fixed_rollouts(tiny_model_dir)
    return {name: _trajectory(tiny_model_dir, _cfg(*args), step, rewards)
            for name, args in {"fp32": ("float32", True), "bf16_master": ("bfloat16", True),
                               "bf16_inplace": ("bfloat16", False)}.items()}


def test_precision_plan_keeps_float32_master_weights_for_bf16_full_fine_tuning():
    assert precision_plan(_cfg("bfloat16", True)) == ("float32", "bf16")
    assert precision_plan(_cfg("bfloat16", False)) == ("bfloat16", None)
    assert precision_plan(_cfg("float32", True)) == ("float32", None)


def _changed_fraction(traj: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """Share of the elements the fp32 run moved that this run moved too (after all steps)."""
    moved_ref = reference[-1] != reference[0]
    moved = traj[-1] != traj[0]
    return float((moved & moved_ref).sum() / moved_ref.sum())


def test_bf16_with_master_weights_changes_every_parameter_the_fp32_run_changes(trajectories):
    fp32, master, inplace = trajectories["fp32"], trajectories["bf16_master"], trajectories["bf16_inplace"]
    assert float((fp32[-1] != fp32[0]).float().mean()) > 0.5  # the fp32 run moves most weights
    frac_master = _changed_fraction(master, fp32)
    frac_inplace = _changed_fraction(inplace, fp32)
    print(f"changed (share of the fp32 run's moved weights): bf16 + fp32 master {frac_master:.4f}, "
          f"bf16 in place {frac_inplace:.4f}")
    assert frac_master >= 0.99
    assert frac_inplace < 0.5  # negative control: the bug this test exists for is visible


def test_bf16_master_trajectory_tracks_the_fp32_trajectory(trajectories):
    """cos(theta_k - theta_0) between the runs at every step, and the displacement norms agree."""
    fp32, master = trajectories["fp32"], trajectories["bf16_master"]
    for k in range(1, STEPS + 1):
        d32, d16 = fp32[k] - fp32[0], master[k] - master[0]
        cos = float(d32 @ d16 / (d32.norm() * d16.norm()))
        ratio = float(d16.norm() / d32.norm())
        assert cos > 0.9 and 0.8 < ratio < 1.25, (k, cos, ratio)

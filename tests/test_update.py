"""The policy update (vitos.rl.update) on real rollouts with REAL pruning, both model families.

What each test would catch:
* invariant (sampling-time vs update-time log-probs <= 1e-4 per token): a branch scored on a view it
  was not sampled on (grounding on the pruned view), log-probs that ignore the sampling temperature or
  the suppressed vocabulary, wrong positions or padding in the re-scoring layout;
* liveness: each of those bugs, planted, is detected by the same comparison;
* mu = 1: the gradient is the REINFORCE gradient -sum A_i grad logp / N (hand-written, independent of
  grpo_loss); mu >= 2: old log-probs are fixed before the first step, so ratios move and clipping fires.
"""

from __future__ import annotations

import copy

import pytest
import torch

from vitos.data.sample import Sample
from vitos.models import load_model
from vitos.pipeline import PruneConfig
from vitos.rl.config import TrainConfig
from vitos.rl.policy import PolicyView, build_policy
from vitos.rl import rollout as ro
from vitos.rl.update import Updater, branch_rows
from vitos.config import load_config

from conftest import random_image, reindexed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEMPERATURE = 0.7
QWEN_SIZES = [(112, 84), (168, 140)]  # two image sizes -> two visual token counts -> left padding
GRID_KEEP = 0.25  # a quarter of each image's grid is kept: pruning is real


def _write(family: str, out):
    """Position-sensitive tiny checkpoints (q/k and head scaled, low rope theta): wrong positions show."""
    if family == "qwen":
        from vitos.models.tiny import write_tiny_model as write
    else:
        from vitos.models.tiny_huatuo import write_tiny_huatuo as write
    return write(out, seed=0, position_sensitive=True)


@pytest.fixture(scope="module", params=["qwen", "huatuo"])
def model_dir(request, tmp_path_factory):
    return str(_write(request.param, tmp_path_factory.mktemp(request.param) / "model"))


def _samples() -> list[Sample]:
    return [
        Sample(id=f"q{k}", images=[random_image(w, h, seed=k)], question=q, answer="yes", kind="yes_no")
        for k, ((w, h), q) in enumerate(zip(QWEN_SIZES, ["Is there a lesion?", "Is the left kidney enlarged here?"]))
    ]


def _quarter_mask(grid_hw) -> torch.Tensor:
    h, w = grid_hw
    m = torch.zeros(h, w, dtype=torch.bool)
    m[: max(1, h // 2), : max(1, w // 2)] = True  # top-left quadrant
    return m


def _cfg(**over) -> TrainConfig:
    args = ["rollout.group_size=2", "rollout.sparse_group_size=2", "rollout.max_new_tokens=6",
            f"rollout.temperature={TEMPERATURE}", "prune.fusion=merge", "model.lora=true", "model.lora_r=4",
            "optim.lr=0.05", "optim.max_grad_norm=0", "device=cpu"] + [f"{k}={v}" for k, v in over.items()]
    return load_config(TrainConfig, None, args)


def _setup(model_dir, cfg: TrainConfig):
    """A LoRA policy under a 1-process Accelerator, plus one step of real rollouts with pruned sparse views."""
    from accelerate import Accelerator

    adapter = load_model(model_dir, "float32", device="cpu")
    policy = build_policy(adapter, cfg.prune, lora=cfg.model.lora, lora_r=cfg.model.lora_r, lora_alpha=8)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=0.0)
    acc = Accelerator(cpu=True, gradient_accumulation_steps=cfg.optim.micro_batches)
    policy, optimizer = acc.prepare(policy, optimizer)
    view = PolicyView(policy, adapter)
    step = _rollouts(view, cfg)
    return acc, policy, optimizer, params, step


def _rollouts(view, cfg: TrainConfig) -> ro.StepRollouts:
    """collect(), with the grounding rollouts' boxes replaced by a kept quadrant (a random model writes no box)."""
    samples = _samples()
    images = [ro.load_sample_images(s) for s in samples]
    encoded = ro.encode(view, images)
    step = ro.StepRollouts(samples, images, encoded, ro.build_prompts(view, samples, encoded),
                           cfg.rollout.group_size, cfg.sparse_group_size)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        step.grounding = ro.sample_grounding(step, view, cfg.rollout, cfg.prune, gen)
        for o in step.grounding:
            o.keeps = [_quarter_mask(e.grid_hw) for e in step.encoded[o.question]]
        step.sparse = ro.sample_sparse(step, view, cfg.rollout, cfg.prune, gen)
    kept = [o.n_visual_kept / o.n_visual_total for o in step.sparse]
    assert max(kept) < 0.5, f"pruning must be real in this fixture, kept ratios {kept}"
    return step


def _max_diff(policy, step, branch, temperature=TEMPERATURE, keeps_of=None) -> float:
    """max |sampling-time - update-time| log-prob over every sampled token of a branch (no optimiser step)."""
    rewards = ro.score(step)
    rows = branch_rows(step, rewards, branch)
    worst = 0.0
    with torch.no_grad():
        for k, row in enumerate(rows):
            req = row.request
            if keeps_of is not None:  # planted bug: score on another view
                req = copy.copy(req)
                req.keeps = keeps_of((step.grounding if branch == "grounding" else step.sparse)[k])
            enc = [step.flat_encoded[i] for i in req.image_ids]
            req = copy.copy(req)
            req.image_ids = list(range(len(enc)))
            lp, mask = policy("logprobs", [req], enc, None, temperature=temperature)
            n = int(mask.sum())
            assert n == row.sample_logprobs.numel()
            worst = max(worst, float((lp[0, :n] - row.sample_logprobs).abs().max()))
    return worst


@pytest.fixture(scope="module")
def setup(model_dir):
    return _setup(model_dir, _cfg())


@pytest.mark.parametrize("branch", ["grounding", "sparse"])
def test_update_time_logprobs_equal_sampling_time_logprobs_with_real_pruning(setup, branch):
    acc, policy, _, _, step = setup
    assert _max_diff(policy, step, branch) <= 1e-4


def test_planted_view_and_temperature_bugs_are_detected(setup):
    """Liveness: the invariant notices a grounding rollout scored on its children's pruned view, a sparse
    rollout scored on all tokens, and log-probs that ignore the sampling temperature."""
    acc, policy, _, _, step = setup
    assert _max_diff(policy, step, "grounding", keeps_of=lambda o: o.keeps) > 1e-3  # the old trainer's bug
    assert _max_diff(policy, step, "sparse", keeps_of=lambda o: [None] * len(o.keeps)) > 1e-3
    assert _max_diff(policy, step, "sparse", temperature=1.0) > 1e-3


def test_planted_reindexed_positions_in_scoring_are_detected(setup, monkeypatch):
    """Liveness for positions (position-sensitive models): re-scoring the pruned sparse view with plain
    0..L-1 positions instead of the kept tokens' original ones breaks the invariant."""
    import vitos.rl.policy as policy_module

    acc, policy, _, _, step = setup
    original = policy_module.assemble
    monkeypatch.setattr(policy_module, "assemble", lambda *a, **k: reindexed(original(*a, **k)))
    assert _max_diff(policy, step, "sparse") > 1e-3


def test_update_logs_the_rollout_vs_trainer_alarm_per_branch(model_dir):
    cfg = _cfg(**{"schedule.name": "joint"})
    acc, policy, optimizer, params, step = _setup(model_dir, cfg)
    out = Updater(acc, policy, optimizer, params, cfg, vision_trainable=False).update(step, ro.score(step), ["grounding", "sparse"])
    for b in ("grounding", "sparse"):
        assert 0 <= out[f"{b}/logprob_diff_max"] <= 1e-4
        assert 0 <= out[f"{b}/logprob_diff_mean"] <= out[f"{b}/logprob_diff_max"]
        assert out[f"{b}/ratio_max"] == out[f"{b}/ratio_min"] == 1.0  # mu = 1: ratio exactly 1
        assert out[f"{b}/clip_frac"] == 0.0


def _dense_rewards(step):
    """Rewards that differ between rollouts, so every advantage is non-zero (a random model is never right)."""
    rewards = ro.score(step)
    rewards.grounding = torch.arange(len(step.grounding), dtype=torch.float32) % 3
    rewards.sparse = torch.arange(len(step.sparse), dtype=torch.float32) % 4
    return rewards


def test_mu_one_gradient_is_the_hand_written_reinforce_gradient(model_dir):
    """token-mean, ratio 1: grad L = -sum_i A_i sum_t grad logp_it / sum_i T_i, with two micro-batches."""
    cfg = _cfg(**{"optim.micro_batches": 2})
    acc, policy, optimizer, params, step = _setup(model_dir, cfg)
    rewards = _dense_rewards(step)
    up = Updater(acc, policy, optimizer, params, cfg, vision_trainable=False)
    rows = branch_rows(step, rewards, "sparse")
    up.backward(step, rows, ["sparse"], up.norms(rows, ["sparse"]), record_diff=False, diffs={})
    got = [p.grad.clone() for p in params]
    optimizer.zero_grad(set_to_none=True)

    # independent expectation: one full-batch pass, the REINFORCE surrogate written out by hand
    reqs = [r.request for r in rows]
    lp, mask = policy("logprobs", reqs, step.flat_encoded, None, temperature=TEMPERATURE)  # (N, T)
    adv = torch.tensor([r.advantage for r in rows])[:, None]  # (N, 1)
    assert adv.abs().sum() > 0
    surrogate = -(adv * lp * mask).sum() / mask.sum()
    want = torch.autograd.grad(surrogate, params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-3 * float(w.abs().max()))  # a 2x or sign bug is 100 %


def test_mu_two_fixes_old_logprobs_so_ratios_move_and_clipping_fires(model_dir):
    cfg = _cfg(**{"grpo.epochs": 3, "schedule.name": "joint"})
    acc, policy, optimizer, params, step = _setup(model_dir, cfg)
    out = Updater(acc, policy, optimizer, params, cfg, vision_trainable=False).update(
        step, _dense_rewards(step), ["grounding", "sparse"])
    for b in ("grounding", "sparse"):
        assert out[f"{b}/logprob_diff_max"] <= 1e-4  # old log-probs are taken before the first step
        assert out[f"{b}/clip_frac_last_epoch"] > 0.0, out  # epochs 2 and 3 see ratios != 1 and clip
        assert out[f"{b}/ratio_max"] > 1.0 or out[f"{b}/ratio_min"] < 1.0


def test_grads_cosine_equals_the_cosine_of_the_concatenated_gradients(monkeypatch):
    """Per-parameter, chunked reduction == F.cosine_similarity of the two flattened vectors (None = zeros), in
    bf16 too; a zero gradient gives None."""
    import vitos.rl.update as U

    g = torch.Generator().manual_seed(0)
    shapes = [(3, 5), (7,), (2, 2, 2)]
    a = [torch.randn(s, generator=g) for s in shapes]
    b = [torch.randn(s, generator=g) for s in shapes]
    b[1] = None  # a parameter the second branch never reached
    flat_a = torch.cat([x.flatten() for x in a])
    flat_b = torch.cat([(y if y is not None else torch.zeros(s)).flatten() for y, s in zip(b, shapes)])
    want = float(torch.nn.functional.cosine_similarity(flat_a.double(), flat_b.double(), dim=0))
    monkeypatch.setattr(U, "COSINE_CHUNK", 4)  # several chunks per parameter
    assert U.grads_cosine(a, b) == pytest.approx(want, abs=1e-6)  # fp32 dot products, fp64 sums
    bf = [x.bfloat16() for x in a], [y.bfloat16() if y is not None else None for y in b]
    want_bf = float(torch.nn.functional.cosine_similarity(
        torch.cat([x.flatten() for x in bf[0]]).double(),
        torch.cat([(y if y is not None else torch.zeros(s, dtype=torch.bfloat16)).flatten() for y, s in zip(bf[1], shapes)]).double(), dim=0))
    assert U.grads_cosine(*bf) == pytest.approx(want_bf, abs=1e-6)
    assert U.grads_cosine(a, [None] * 3) is None
    assert U.grads_cosine(a, [x.neg() for x in a]) == pytest.approx(-1.0)

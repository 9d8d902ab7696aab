"""Rollout grouping and the reward -> advantage plumbing of the dual-stream trainer (vitos.rl.rollout)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import random_image
from vitos.data.sample import Sample
from vitos.engine import Generation
from vitos.pipeline import PruneConfig
from vitos.rl import rollout as ro
from vitos.rl.config import RolloutSection, TrainConfig, branches_for_step, lr_factor
from vitos.rl.grpo import group_advantages, policy_loss
from vitos.rl.trainer import batch_indices


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _row(branch, q, i, j, text):
    return ro.Rollout(branch, q, i, j, text, torch.tensor([1, 2]), [None], 4, 4, True)


def _step(sample, ground_texts, sparse_texts):
    g, g2 = len(ground_texts), len(sparse_texts[0])
    step = ro.StepRollouts([sample], [[None]], [[]], [{}], g, g2)
    step.grounding = [_row("grounding", 0, i, -1, t) for i, t in enumerate(ground_texts)]
    step.sparse = [_row("sparse", 0, i, j, t) for i, row in enumerate(sparse_texts) for j, t in enumerate(row)]
    return step


GOOD_GROUND = "<think>a</think><box>[[0,0,0.5,0.5]]</box><answer>yes</answer>"
GOOD_SPARSE = "<think>x</think><answer>yes</answer>"


def test_group_ids_by_question_and_by_parent():
    g, s = ro.group_ids(n_questions=2, g=2, g2=3, sparse_grouping="question")
    assert g.tolist() == [0, 0, 1, 1]
    assert s.tolist() == [0] * 6 + [1] * 6
    _, s = ro.group_ids(2, 2, 3, "parent")
    assert s.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    with pytest.raises(ValueError, match="sparse_grouping"):
        ro.group_ids(1, 2, 2, "batch")


def test_score_places_cross_feedback_and_averages_pair_rewards():
    sample = Sample("s", [], "Is there a lesion?", "yes", kind="yes_no", boxes=[[0.0, 0.0, 0.5, 0.5]])
    # O_0: format 1, IoU 1, acc 1.  O_1: no tags -> format 0, IoU 0, acc 0.
    step = _step(sample, [GOOD_GROUND, "no"], [[GOOD_SPARSE, "<answer>no</answer>"], [GOOD_SPARSE, GOOD_SPARSE]])
    r = ro.score(step)
    # r_0j = 1 + 1 + 1 + acc(O'_0j) = [4, 3] -> 3.5 ;  r_1j = 0 + 0 + 0 + [1, 1] -> 1
    assert r.grounding.tolist() == [3.5, 1.0]
    assert [p["cross"] for p in r.grounding_parts] == [0.5, 1.0]
    # r'_ij = format + acc + acc(O_i): [1+1+1, 0+0+1, 1+1+0, 1+1+0]
    assert r.sparse.tolist() == [3.0, 1.0, 2.0, 2.0]
    assert [p["cross"] for p in r.sparse_parts] == [1.0, 1.0, 0.0, 0.0]

    a_g = group_advantages(r.grounding, r.grounding_groups)
    assert torch.allclose(a_g, torch.tensor([1.0, -1.0]) / math.sqrt(2), atol=1e-5)  # +-1.25 / std 1.768
    a_q = group_advantages(r.sparse, r.sparse_groups)  # one group of 4: mean 2, unbiased std sqrt(2/3)
    assert torch.allclose(a_q, torch.tensor([1.0, -1.0, 0.0, 0.0]) / math.sqrt(2 / 3), atol=1e-5)
    r_parent = ro.score(step, sparse_grouping="parent")
    a_p = group_advantages(r_parent.sparse, r_parent.sparse_groups)  # [3, 1] and [2, 2]: the cross term cancels
    assert torch.allclose(a_p, torch.tensor([1.0, -1.0, 0.0, 0.0]) / math.sqrt(2), atol=1e-5)


def test_reward_override_replaces_totals_but_keeps_real_components():
    sample = Sample("s", [], "q", "yes", kind="yes_no")
    step = _step(sample, [GOOD_GROUND, "ab"], [[GOOD_SPARSE, "c"], ["d", "e"]])
    r = ro.score(step, override=lambda text, s, branch: float(len(text)) if branch == "sparse" else -1.0)
    assert r.grounding.tolist() == [-1.0, -1.0]
    assert r.sparse.tolist() == [float(len(GOOD_SPARSE)), 1.0, 1.0, 1.0]
    assert r.grounding_parts[0]["accuracy"] == 1.0 and r.sparse_parts[0]["format"] == 1.0
    assert r.grounding_parts[0]["iou"] is None  # the sample has no ground-truth box


def test_score_rejects_an_incomplete_rollout_tree():
    sample = Sample("s", [], "q", "yes", kind="yes_no")
    step = _step(sample, ["a", "b"], [["c", "d"], ["e", "f"]])
    step.sparse = step.sparse[:3]
    with pytest.raises(ValueError, match="G x G'"):
        ro.score(step)


def test_split_rows_gives_contiguous_near_equal_chunks():
    assert ro.split_rows(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]
    assert ro.split_rows(2, 2) == [range(0, 1), range(1, 2)]
    for bad in (0, 3):
        with pytest.raises(ValueError, match="micro_batches"):
            ro.split_rows(2, bad)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean", "dr-grpo"])
def test_weighted_micro_batch_losses_sum_to_the_full_batch_loss(agg):
    gen = torch.Generator().manual_seed(0)
    lengths = [5, 1, 3, 0, 4, 2, 5]
    t = max(lengths)
    mask = torch.tensor([[1] * n + [0] * (t - n) for n in lengths])  # (7, T)
    logp = -torch.rand(7, t, generator=gen)
    old = logp + 0.3 * torch.randn(7, t, generator=gen)  # ratios != 1 so clipping is exercised
    adv = torch.randn(7, generator=gen)
    full, _ = policy_loss(logp, old, adv, mask, agg=agg, max_len=t)
    total = 0.0
    for chunk in ro.split_rows(7, 3):
        idx = list(chunk)
        part, _ = policy_loss(logp[idx], old[idx], adv[idx], mask[idx], agg=agg, max_len=t)
        total += ro.chunk_weight([lengths[k] for k in idx], lengths, agg) * part
    assert torch.allclose(total, full, atol=1e-6)


def test_batch_indices_cover_every_row_once_per_epoch_and_cross_epochs():
    rows = [batch_indices(5, 3, pos, seed=7) for pos in (0, 3, 6, 9)]
    flat = [i for idx, _ in rows for i in idx]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert [e for _, e in rows] == [0, 0, 1, 1]
    assert batch_indices(5, 3, 3, seed=7) == rows[1]  # a pure function of the position: resumable
    assert flat[:5] != flat[5:10] or batch_indices(5, 5, 0, seed=8)[0] != flat[:5]  # epochs are reshuffled


def test_lr_factor_warms_up_decays_and_restarts_at_stage_two():
    cfg = TrainConfig()
    cfg.optim.warmup_steps, cfg.optim.scheduler = 2, "linear"
    cfg.schedule.name, cfg.schedule.total_steps, cfg.schedule.stage1_steps = "stagewise", 10, 4
    # stage 1: 4 updates, warm-up 1/2, 2/2, then linear over the remaining 2: 1 - 0/2, 1 - 1/2
    assert [lr_factor(cfg, t) for t in range(4)] == [0.5, 1.0, 1.0, 0.5]
    # stage 2 (6 updates) restarts: 1/2, 1, then 1 - k/4
    assert [lr_factor(cfg, t) for t in range(4, 10)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    cfg.optim.warmup_steps, cfg.optim.scheduler, cfg.schedule.name = 0, "cosine", "joint"
    assert lr_factor(cfg, 0) == 1.0 and lr_factor(cfg, 5) == pytest.approx(0.5)


def test_branches_per_step_follow_the_schedule():
    cfg = TrainConfig()
    cfg.schedule.total_steps, cfg.schedule.stage1_steps = 4, 2
    assert [branches_for_step(cfg, s) for s in (1, 2, 3, 4)] == [["grounding"]] * 2 + [["sparse"]] * 2
    for name in ("interleaved", "joint"):
        cfg.schedule.name = name
        assert branches_for_step(cfg, 1) == ["grounding", "sparse"]


# ------------------------------------------------------------------------------ on the tiny model


def _phantom(n):
    from vitos.data.medphantom import PhantomConfig, generate

    return generate(PhantomConfig(seed=0, n_train=n, n_test=0))["train"]


def test_collect_builds_the_g_by_g_prime_tree_and_encodes_each_image_once(tiny_adapter):
    samples = _phantom(2)
    samples[1].images = [random_image(112, 168, 1), random_image(140, 112, 2)]  # a two-image question
    calls = []
    hook = tiny_adapter.model.model.visual.register_forward_hook(
        lambda mod, args, kwargs, out: calls.append(int(kwargs["grid_thw"].shape[0])), with_kwargs=True)
    try:
        step = ro.collect(tiny_adapter, samples, RolloutSection(group_size=2, sparse_group_size=3, max_new_tokens=4),
                          PruneConfig(), torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert calls == [3], "one vision-tower call per step, over all 3 images"
    assert [(o.question, o.parent, o.child) for o in step.grounding] == [(0, 0, -1), (0, 1, -1), (1, 0, -1), (1, 1, -1)]
    assert [(o.question, o.parent, o.child) for o in step.sparse] == [
        (q, i, j) for q in range(2) for i in range(2) for j in range(3)]
    for o in step.sparse:
        assert o.keeps is step.grounding[o.question * 2 + o.parent].keeps
    assert all(0 < o.token_ids.numel() <= 4 for o in step.grounding + step.sparse)
    assert step.image_ids(1) == [1, 2]


def test_sparse_rollouts_see_only_the_tokens_their_parent_boxes_keep(tiny_adapter, monkeypatch):
    samples = _phantom(1)
    texts = ["<think>t</think><box>[[0.0,0.0,0.5,0.5]]</box><answer>yes</answer>", "<answer>no</answer>"]

    calls = []

    def fake_generate(adapter, seqs, sampling=None, generator=None, samples_per_seq=1):  # grounding: fixed texts
        calls.append((len(seqs), samples_per_seq))
        if len(calls) == 1:  # the grounding call: 1 question, its G = 2 samples from one prefill
            return Generation([torch.tensor([5, 6])] * 2, texts, [True, True])
        return real_generate(adapter, seqs, sampling, generator, samples_per_seq=samples_per_seq)

    real_generate = ro.generate
    monkeypatch.setattr(ro, "generate", fake_generate)
    step = ro.collect(tiny_adapter, samples, RolloutSection(group_size=2, sparse_group_size=2, max_new_tokens=3),
                      PruneConfig(fusion="none"), torch.Generator().manual_seed(0))
    h, w = step.encoded[0][0].grid_hw
    boxed, unboxed = step.grounding
    assert boxed.fallback is None and int(boxed.keeps[0].sum()) == (h // 2) * (w // 2)
    assert unboxed.keeps == [None] and "no <box>" in unboxed.fallback
    assert [o.n_visual_kept for o in step.sparse] == [(h // 2) * (w // 2)] * 2 + [h * w] * 2
    assert all(o.n_visual_total == h * w for o in step.sparse)
    assert calls == [(1, 2), (2, 2)]  # one prefill per question, then one per grounding rollout

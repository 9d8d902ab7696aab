"""GRPO maths against hand-computed values (plain Python floats, never the function under test)."""

from __future__ import annotations

import math

import pytest
import torch

from vitos.rl.grpo import aggregate, group_advantages, grpo_loss, kl_k3, policy_loss


def _t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


# ---------------------------------------------------------------- group_advantages


def test_group_advantage_is_centred_and_scaled_by_unbiased_group_std():
    rewards = _t([1.0, 2.0, 3.0, 10.0, 10.0, 4.0])
    ids = torch.tensor([7, 7, 7, 3, 3, 3])
    # group 7: mean 2, unbiased std sqrt(((1)^2 + 0 + 1^2) / 2) = 1
    # group 3: mean 8, deviations 2, 2, -4 -> unbiased var (4 + 4 + 16) / 2 = 12
    s3 = math.sqrt(12.0)
    expected = [-1 / (1 + 1e-6), 0.0, 1 / (1 + 1e-6), 2 / (s3 + 1e-6), 2 / (s3 + 1e-6), -4 / (s3 + 1e-6)]
    adv = group_advantages(rewards, ids)
    assert adv.shape == (6,)
    assert adv.tolist() == pytest.approx(expected, rel=1e-12)


def test_group_advantage_without_scaling_is_dr_grpo_centring():
    adv = group_advantages(_t([1.0, 2.0, 6.0, 0.5, 1.5]), torch.tensor([0, 0, 0, 1, 1]), scale=False)
    assert adv.tolist() == pytest.approx([-2.0, -1.0, 3.0, -0.5, 0.5])


@pytest.mark.parametrize("scale", [True, False])
def test_zero_spread_and_single_member_groups_get_exactly_zero(scale):
    # 0.1 * 3 / 3 != 0.1 in floating point: a naive (r - mean) / (0 + eps) would give ~1e-11, not 0.
    rewards = _t([0.1, 0.1, 0.1, 5.0, 1.0, 2.0], dtype=torch.float32)
    ids = torch.tensor([0, 0, 0, 1, 2, 2])
    adv = group_advantages(rewards, ids, scale=scale)
    assert adv[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert not torch.isnan(adv).any()
    assert adv[4].item() < 0 < adv[5].item()


def test_group_advantage_accepts_integer_rewards_and_detaches():
    r = _t([0.0, 1.0]).requires_grad_()
    adv = group_advantages(r, torch.tensor([0, 0]))
    assert not adv.requires_grad
    assert group_advantages(torch.tensor([0, 1]), torch.tensor([0, 0])).dtype.is_floating_point


def test_group_advantage_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same length"):
        group_advantages(_t([1.0, 2.0]), torch.tensor([0, 0, 0]))


# ---------------------------------------------------------------- aggregate


VALUES = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
MASK = [[1, 1, 0], [1, 0, 0]]


def test_token_mean_weighs_every_masked_token_equally():
    assert aggregate(_t(VALUES), _t(MASK), "token-mean").item() == pytest.approx((1 + 2 + 4) / 3)


def test_seq_mean_averages_per_sequence_means():
    assert aggregate(_t(VALUES), _t(MASK), "seq-mean").item() == pytest.approx(((1 + 2) / 2 + 4 / 1) / 2)


def test_seq_mean_excludes_sequences_without_tokens():
    mask = [[1, 1, 0], [0, 0, 0]]
    assert aggregate(_t(VALUES), _t(mask), "seq-mean").item() == pytest.approx(1.5)


def test_dr_grpo_divides_by_batch_times_max_len():
    assert aggregate(_t(VALUES), _t(MASK), "dr-grpo").item() == pytest.approx(7 / (2 * 3))
    assert aggregate(_t(VALUES), _t(MASK), "dr-grpo", max_len=10).item() == pytest.approx(7 / (2 * 10))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean", "dr-grpo"])
def test_masked_out_nan_and_inf_do_not_leak(mode):
    values = [[1.0, 2.0, math.inf], [4.0, -math.inf, math.nan]]  # non-finite only where MASK is 0
    out = aggregate(_t(values), _t(MASK).bool(), mode)
    assert out.item() == pytest.approx(aggregate(_t(VALUES), _t(MASK), mode).item())


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean", "dr-grpo"])
def test_empty_mask_gives_zero_not_nan(mode):
    assert aggregate(_t(VALUES), torch.zeros(2, 3), mode).item() == 0.0


def test_unknown_aggregation_is_rejected():
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(_t(VALUES), _t(MASK), "sum")


# ---------------------------------------------------------------- policy_loss


def _ref_token_loss(lp: float, old: float, a: float, lo=0.2, hi=0.3, dual=3.0) -> tuple[float, bool]:
    """Scalar reference of the per-token clipped loss and whether the clipped branch was taken."""
    rho = math.exp(lp - old)
    unclipped = -a * rho
    clipped = -a * min(max(rho, 1 - lo), 1 + hi)
    loss = max(unclipped, clipped)
    if a < 0:
        loss = min(loss, -a * dual)
    return loss, clipped > unclipped


def test_policy_loss_matches_hand_computed_clipped_surrogate():
    old = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    new = [[0.5, -0.5, 0.1], [0.5, -0.5, 0.05]]
    adv = [1.0, -2.0]
    mask = [[1, 1, 1], [1, 1, 0]]
    # Row 0 (A=+1): rho e^.5=1.65 -> clipped at 1.3 (taken); e^-.5=0.61 -> unclipped (-0.61 > -0.8); e^.1 inside.
    # Row 1 (A=-2): rho 1.65 -> unclipped 3.30 > clipped 2.6 (not taken); 0.61 -> clipped 1.6 (taken).
    refs = [_ref_token_loss(new[b][t], old[b][t], adv[b]) for b in range(2) for t in range(3) if mask[b][t]]
    expected_loss = sum(r[0] for r in refs) / len(refs)
    expected_clip = sum(r[1] for r in refs) / len(refs)
    loss, stats = policy_loss(_t(new), _t(old), _t(adv), _t(mask))
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected_loss)
    # by hand: tokens 1 (row 0, t=0) and 5 (row 1, t=1) are clipped: 2 of 5
    assert expected_clip == pytest.approx(2 / 5)
    assert stats["clip_frac"] == pytest.approx(2 / 5)
    ratios = [math.exp(new[b][t] - old[b][t]) for b in range(2) for t in range(3) if mask[b][t]]
    assert stats["ratio_mean"] == pytest.approx(sum(ratios) / 5)
    kls = [old[b][t] - new[b][t] for b in range(2) for t in range(3) if mask[b][t]]
    assert stats["approx_kl"] == pytest.approx(sum(kls) / 5)


def test_hand_values_for_a_single_token_each_branch():
    # A=+1, rho=e^1=2.718 -> loss = -1.3 (upper clip); A=-1, rho=e^-1=0.368 -> loss = 0.8 (lower clip)
    loss, _ = policy_loss(_t([[1.0]]), _t([[0.0]]), _t([1.0]), _t([[1.0]]))
    assert loss.item() == pytest.approx(-1.3)
    loss, _ = policy_loss(_t([[-1.0]]), _t([[0.0]]), _t([-1.0]), _t([[1.0]]))
    assert loss.item() == pytest.approx(0.8)


def test_dual_clip_bounds_loss_for_large_ratio_and_negative_advantage():
    # rho = e^2 = 7.39, A = -1: unclipped loss 7.39 > dual bound 3 -> loss 3 and no gradient
    logp = _t([[2.0]]).requires_grad_()
    loss, stats = policy_loss(logp, _t([[0.0]]), _t([-1.0]), _t([[1.0]]), dual_clip=3.0)
    assert loss.item() == pytest.approx(3.0)
    assert stats["dual_clip_frac"] == 1.0
    loss.backward()
    assert logp.grad.item() == 0.0
    # without dual clip the same token costs e^2
    loss, _ = policy_loss(_t([[2.0]]), _t([[0.0]]), _t([-1.0]), _t([[1.0]]), dual_clip=None)
    assert loss.item() == pytest.approx(math.exp(2.0))


def test_dual_clip_never_touches_positive_advantages():
    # rho = e^3, A = +5: clipped loss -5 * 1.3 = -6.5; a dual bound applied by mistake would give -15
    loss, stats = policy_loss(_t([[3.0]]), _t([[0.0]]), _t([5.0]), _t([[1.0]]), dual_clip=3.0)
    assert loss.item() == pytest.approx(-6.5)
    assert stats["dual_clip_frac"] == 0.0


def test_masked_tokens_change_neither_loss_nor_stats():
    base = policy_loss(_t([[0.5, 0.1]]), _t([[0.0, 0.0]]), _t([1.0]), _t([[1, 0]]))
    wild = policy_loss(_t([[0.5, 9.0]]), _t([[0.0, -9.0]]), _t([1.0]), _t([[1, 0]]))
    assert base[0].item() == pytest.approx(wild[0].item()) == pytest.approx(-1.3)
    assert base[1] == pytest.approx(wild[1])
    assert wild[1]["clip_frac"] == 1.0  # only the one masked-in token counts, and it is clipped


def test_gradient_flows_to_logp_only():
    logp = _t([[0.1, -0.1]]).requires_grad_()
    old = _t([[0.0, 0.0]]).requires_grad_()
    adv = _t([1.0]).requires_grad_()
    ref = _t([[0.2, 0.3]]).requires_grad_()
    loss, _ = grpo_loss(logp, old, adv, _t([[1, 1]]), ref_logp=ref, beta=0.1)
    loss.backward()
    assert logp.grad is not None and logp.grad.abs().sum() > 0
    assert old.grad is None and adv.grad is None and ref.grad is None


def test_unclipped_gradient_is_minus_advantage_times_ratio_over_tokens():
    # d/dlogp of -A*exp(logp - old) = -A*rho; token-mean over 2 tokens halves it.
    logp = _t([[0.1, -0.1]]).requires_grad_()
    loss, _ = policy_loss(logp, _t([[0.0, 0.0]]), _t([2.0]), _t([[1, 1]]))
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([-2.0 * math.exp(0.1) / 2, -2.0 * math.exp(-0.1) / 2])


def test_policy_loss_rejects_per_token_advantages():
    with pytest.raises(ValueError, match=r"advantages must be \(B,\)"):
        policy_loss(_t([[0.0]]), _t([[0.0]]), _t([[1.0]]), _t([[1.0]]))


# ---------------------------------------------------------------- KL and the combined loss


def test_kl_k3_matches_formula_and_is_zero_on_equal_policies():
    logp, ref = [[-1.0, -2.0, -0.5]], [[-1.5, -1.0, -0.5]]
    expected = [math.exp(r - lp) - (r - lp) - 1 for lp, r in zip(logp[0], ref[0])]
    out = kl_k3(_t(logp), _t(ref))
    assert out.shape == (1, 3)
    assert out[0].tolist() == pytest.approx(expected)
    assert out[0, 2].item() == 0.0
    assert (out >= 0).all()


def test_grpo_loss_adds_beta_times_mean_kl():
    logp, old, ref = [[-1.0, -2.0]], [[-1.0, -2.0]], [[-1.5, -1.0]]
    # rho = 1 everywhere -> policy term = -A = -0.5 per token
    kl = [math.exp(r - lp) - (r - lp) - 1 for lp, r in zip(logp[0], ref[0])]
    loss, stats = grpo_loss(_t(logp), _t(old), _t([0.5]), _t([[1, 1]]), ref_logp=_t(ref), beta=0.04)
    assert loss.item() == pytest.approx(-0.5 + 0.04 * sum(kl) / 2)
    assert stats["kl"] == pytest.approx(sum(kl) / 2)


def test_grpo_loss_without_beta_needs_no_reference_and_equals_policy_loss():
    args = (_t([[0.3, -0.2]]), _t([[0.0, 0.0]]), _t([-1.0]), _t([[1, 1]]))
    loss, stats = grpo_loss(*args, ref_logp=None, beta=0.0)
    assert loss.item() == pytest.approx(policy_loss(*args)[0].item())
    assert "kl" not in stats


def test_grpo_loss_with_beta_but_no_reference_is_an_error():
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(_t([[0.0]]), _t([[0.0]]), _t([1.0]), _t([[1.0]]), beta=0.1)


def test_truncated_is_weights_are_the_capped_probability_ratio():
    from vitos.rl.grpo import truncated_is_weights

    old = _t([[math.log(0.5), math.log(0.2)], [math.log(0.9), 0.0]])
    sample = _t([[math.log(0.25), math.log(0.4)], [math.log(0.3), 0.0]])
    w = truncated_is_weights(old, sample, cap=2.5)
    # by hand: 0.5 / 0.25 = 2, 0.2 / 0.4 = 0.5, 0.9 / 0.3 = 3 -> capped at 2.5, equal -> 1
    assert w.flatten().tolist() == pytest.approx([2.0, 0.5, 2.5, 1.0])
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_is_weights(old, sample, cap=0.0)


def test_is_weights_scale_each_tokens_loss_before_aggregation():
    """token-mean of w_t * l_t: a planted weighting after aggregation (or of the ratio) gives other values."""
    new, old, adv, mask = [[0.1, -0.2, 0.3]], [[0.0, 0.0, 0.0]], [1.0], [[1, 1, 0]]
    w = [[2.0, 0.5, 9.0]]  # the masked token's weight must not count
    loss, stats = policy_loss(_t(new), _t(old), _t(adv), _t(mask), is_weights=_t(w))
    l0, l1 = (_ref_token_loss(new[0][t], old[0][t], adv[0])[0] for t in range(2))
    assert loss.item() == pytest.approx((2.0 * l0 + 0.5 * l1) / 2)
    assert stats["is_weight_mean"] == pytest.approx(1.25)
    plain, st = policy_loss(_t(new), _t(old), _t(adv), _t(mask))
    assert plain.item() == pytest.approx((l0 + l1) / 2) and st["is_weight_mean"] == 1.0


def test_tis_weights_of_rows_default_to_one_without_recorded_logprobs():
    from vitos.rl.update import Row, tis_weights

    old = _t([[math.log(0.5), math.log(0.5)], [math.log(0.5), math.log(0.5)]])
    rows = [Row(None, 0.0, "sparse", _t([math.log(0.25), math.log(0.5)])), Row(None, 0.0, "sparse", None)]
    assert tis_weights(old, rows, cap=3.0).flatten().tolist() == pytest.approx([2.0, 1.0, 1.0, 1.0])

"""GRPO as pure tensor functions: group advantages, clipped surrogate, k3 KL, loss aggregation.

ViToS optimises each branch with its own GRPO objective (REFERENCE.md sections 1 and 5); both branches
call the same functions here, with their own rewards and group ids. Nothing in this file knows about
models, prompts or branches: tensors in, tensors out, so every formula can be checked by hand.

Conventions follow EasyR1 (verl/trainer/core_algos.py), the authors' stack:
* advantage A_i = (r_i - mean_g) / (std_g + eps) with the UNBIASED group std (``torch.std`` default), as
  EasyR1 and TRL do; groups with zero spread or a single member get exactly 0 (no signal, no noise).
  ``scale=False`` gives Dr.GRPO's A_i = r_i - mean_g.
* clipped surrogate with asymmetric clip (eps_low 0.2, eps_high 0.3) and dual clip 3.0 for A < 0.
* the log-ratio is clamped to [-20, 20] before ``exp`` (as EasyR1 does) so one wild token cannot make inf.

Usage::

    adv = group_advantages(rewards, group_ids)                       # (N,)
    loss, stats = grpo_loss(logp, old_logp, adv, mask)               # logp etc. (N, T)
    loss.backward()
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["group_advantages", "policy_loss", "kl_k3", "aggregate", "grpo_loss", "AggMode"]

AggMode = Literal["token-mean", "seq-mean", "dr-grpo"]
_LOG_RATIO_CLAMP = 20.0


def group_advantages(rewards: Tensor, group_ids: Tensor, eps: float = 1e-6, scale: bool = True) -> Tensor:
    """Group-relative advantages.

    Args:
        rewards: (N,) scalar reward per rollout.
        group_ids: (N,) long; rollouts with the same id answer the same prompt (ids need not be contiguous).
        eps: added to the group std to avoid division by ~0.
        scale: divide by the group std (GRPO) or not (Dr.GRPO).

    Returns:
        (N,) advantages, same dtype as ``rewards``; exactly 0 for groups whose rewards are all equal
        (including single-member groups, whose unbiased std is undefined).
    """
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must both be 1-D of the same length, got {tuple(rewards.shape)} "
            f"and {tuple(group_ids.shape)}"
        )
    r = rewards.detach()  # advantages are constants for the policy gradient
    if not r.is_floating_point():
        r = r.float()
    _, inv = torch.unique(group_ids, return_inverse=True)  # (N,) dense group index
    n_groups = int(inv.max().item()) + 1 if inv.numel() else 0
    count = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, inv, torch.ones_like(r))  # (G,)
    mean = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, inv, r) / count  # (G,)
    centred = r - mean[inv]  # (N,)
    g_max = torch.full((n_groups,), -torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(0, inv, r, "amax")
    g_min = torch.full((n_groups,), torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(0, inv, r, "amin")
    # Exact test on the raw rewards: `r - mean` can be a rounding crumb (~1e-17) that eps would not kill.
    flat = (g_max == g_min)[inv]  # (N,)
    if scale:
        sq = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, inv, centred * centred)  # (G,)
        std = (sq / (count - 1).clamp_min(1)).sqrt()  # (G,) unbiased
        adv = centred / (std[inv] + eps)  # (N,)
    else:
        adv = centred
    return torch.where(flat, torch.zeros_like(adv), adv)


def aggregate(values: Tensor, mask: Tensor, mode: AggMode = "token-mean", max_len: int | None = None) -> Tensor:
    """Reduce per-token values to a scalar over the tokens where ``mask`` is set.

    Args:
        values: (B, T) per-token values (loss, KL ...). Values under mask 0 are ignored even if NaN/inf.
        mask: (B, T) bool or 0/1; 1 marks response tokens.
        mode: "token-mean"  sum(v*m) / sum(m)            (every token weighs the same; EasyR1 "token")
              "seq-mean"    mean over sequences of their token means; sequences with no tokens excluded
              "dr-grpo"     sum(v*m) / (B * max_len)      (Dr.GRPO: no length normalisation bias)
        max_len: dr-grpo denominator per sequence; defaults to T.

    Returns:
        () scalar; 0 (still attached to the graph) when no token is masked in.
    """
    if values.shape != mask.shape or values.dim() != 2:
        raise ValueError(f"values and mask must both be (B, T), got {tuple(values.shape)} and {tuple(mask.shape)}")
    m = mask.bool()  # (B, T)
    v = torch.where(m, values, torch.zeros_like(values))  # (B, T) masked-out NaNs cannot leak through
    if mode == "token-mean":
        return v.sum() / m.sum().clamp_min(1)
    if mode == "seq-mean":
        n_tok = m.sum(dim=-1)  # (B,)
        seq_mean = v.sum(dim=-1) / n_tok.clamp_min(1)  # (B,)
        has = n_tok > 0  # (B,)
        return (seq_mean * has).sum() / has.sum().clamp_min(1)
    if mode == "dr-grpo":
        length = values.shape[1] if max_len is None else max_len
        if length <= 0:
            raise ValueError(f"dr-grpo needs max_len > 0, got {length}")
        return v.sum() / (values.shape[0] * length)
    raise ValueError(f"unknown aggregation {mode!r}; expected 'token-mean', 'seq-mean' or 'dr-grpo'")


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.3,
    dual_clip: float | None = 3.0,
    agg: AggMode = "token-mean",
    max_len: int | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO/GRPO clipped surrogate with asymmetric clip and dual clip.

    per token: l = max(-A*rho, -A*clip(rho, 1-clip_low, 1+clip_high)), rho = exp(logp - old_logp);
    for A < 0 additionally l = min(l, -A*dual_clip), which bounds the push-down of a token whose ratio
    exploded (Dual-clip PPO, arXiv 1912.09729). ``dual_clip=None`` turns it off.

    Args:
        logp: (B, T) current policy log-probs of the sampled tokens (carries the gradient).
        old_logp: (B, T) log-probs under the sampling policy (treated as constants).
        advantages: (B,) one advantage per sequence, broadcast over its tokens.
        mask: (B, T) response-token mask.
        is_weights: (B, T) constant per-token weights multiplied into the loss before aggregation (truncated
            importance sampling of a separate rollout engine: `truncated_is_weights`); None = 1.

    Returns:
        loss: () scalar aggregated with ``agg``.
        stats: ``clip_frac`` (masked tokens where the clipped branch was the max), ``dual_clip_frac``
        (masked tokens where the dual clip bound), ``ratio_mean``, ``ratio_max``, ``ratio_min`` (over masked
        tokens; 1.0 when none), ``approx_kl`` (mean of old_logp - logp), ``is_weight_mean`` (masked mean
        of is_weights; 1.0 without them).
    """
    if logp.shape != old_logp.shape or logp.shape != mask.shape or logp.dim() != 2:
        raise ValueError(
            f"logp, old_logp and mask must all be (B, T), got {tuple(logp.shape)}, "
            f"{tuple(old_logp.shape)}, {tuple(mask.shape)}"
        )
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be (B,) = {tuple(logp.shape[:1])}, got {tuple(advantages.shape)}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (got {dual_clip}); pass None to disable it")
    old_logp = old_logp.detach()
    adv = advantages.detach()[:, None]  # (B, 1)
    log_ratio = (logp - old_logp).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)  # (B, T)
    ratio = log_ratio.exp()  # (B, T)
    loss_unclipped = -adv * ratio  # (B, T)
    loss_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # (B, T)
    loss_tok = torch.maximum(loss_unclipped, loss_clipped)  # (B, T)
    dual_taken = torch.zeros_like(mask, dtype=torch.bool)  # (B, T)
    if dual_clip is not None:
        bound = -adv * dual_clip  # (B, 1)
        dual_taken = (adv < 0) & (loss_tok > bound)  # (B, T)
        loss_tok = torch.where(adv < 0, torch.minimum(loss_tok, bound), loss_tok)  # (B, T)
    if is_weights is not None:
        if is_weights.shape != logp.shape:
            raise ValueError(f"is_weights must be (B, T) = {tuple(logp.shape)}, got {tuple(is_weights.shape)}")
        loss_tok = loss_tok * is_weights.detach()  # (B, T)
    loss = aggregate(loss_tok, mask, agg, max_len)

    with torch.no_grad():
        m = mask.bool()  # (B, T)
        n = m.sum().clamp_min(1)
        stats = {
            "clip_frac": ((loss_clipped > loss_unclipped) & m).sum().div(n).item(),
            "dual_clip_frac": (dual_taken & m).sum().div(n).item(),
            "ratio_mean": torch.where(m, ratio, 0.0).sum().div(n).item(),
            "ratio_max": torch.where(m, ratio, -torch.inf).max().item() if m.any() else 1.0,
            "ratio_min": torch.where(m, ratio, torch.inf).min().item() if m.any() else 1.0,
            "approx_kl": torch.where(m, old_logp - logp, 0.0).sum().div(n).item(),
            "is_weight_mean": 1.0 if is_weights is None else torch.where(m, is_weights, 0.0).sum().div(n).item(),
        }
    return loss, stats


def truncated_is_weights(old_logp: Tensor, sample_logp: Tensor, cap: float) -> Tensor:
    """Truncated importance-sampling weights min(pi_old / pi_sample, cap) per token (TRL's vLLM correction,
    Yao et al. 2025 "Your efficient RL framework secretly brings you off-policy RL training").

    A separate rollout engine (vLLM) samples from slightly different probabilities than the trainer computes
    (kernels, dtype); weighting each token's loss by the ratio of the trainer's old-policy probability to the
    engine's corrects the gradient, and the cap bounds its variance.

    Args: old_logp, sample_logp: (B, T) trainer old-policy and engine log-probs of the sampled tokens;
    cap: > 0. Returns (B, T) weights in (0, cap], no gradient (the log-ratio is clamped to [-20, 20]).
    """
    if cap <= 0:
        raise ValueError(f"the truncated-IS cap must be > 0, got {cap}")
    if old_logp.shape != sample_logp.shape:
        raise ValueError(f"old_logp and sample_logp must match, got {tuple(old_logp.shape)}, {tuple(sample_logp.shape)}")
    d = (old_logp.detach() - sample_logp.detach()).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)  # (B, T)
    return d.exp().clamp(max=cap)


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 estimator of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1 >= 0.

    Args: logp, ref_logp: (B, T). Returns (B, T). The log-ratio is clamped to [-20, 20] before exp.
    """
    d = (ref_logp.detach() - logp).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)  # (B, T)
    return d.exp() - d - 1.0


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    ref_logp: Tensor | None = None,
    beta: float = 0.0,
    clip_low: float = 0.2,
    clip_high: float = 0.3,
    dual_clip: float | None = 3.0,
    agg: AggMode = "token-mean",
    max_len: int | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Full GRPO objective for one branch: policy_loss + beta * aggregate(kl_k3(logp, ref_logp)).

    All tensors (B, T) except advantages (B,). With ``beta == 0`` no reference is needed (many recipes,
    ViTAR included, train without KL); ``beta > 0`` without ``ref_logp`` is an error. The KL term uses the
    same aggregation as the policy term; ``is_weights`` (B, T) weight the policy term only (truncated IS).
    Returns (() loss, stats) with ``kl`` added when the term is used.
    """
    loss, stats = policy_loss(logp, old_logp, advantages, mask, clip_low, clip_high, dual_clip, agg, max_len, is_weights)
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError(
                f"beta={beta} needs ref_logp (reference-policy log-probs); pass beta=0 to train without KL"
            )
        if ref_logp.shape != logp.shape:
            raise ValueError(f"ref_logp must be {tuple(logp.shape)}, got {tuple(ref_logp.shape)}")
        kl = aggregate(kl_k3(logp, ref_logp), mask, agg, max_len)
        loss = loss + beta * kl
        stats["kl"] = kl.item()
    return loss, stats

"""Fold the pruned visual tokens of one image into the kept ones (pure tensor functions, no model).

ViToS's sparse branch answers from the tokens inside the predicted boxes; the paper's figure shows the
grey pruned tokens merged into a few tokens rather than dropped. The exact rule is not public, so three
modes are offered **(ours; `merge` is the default)**:

  none        drop pruned tokens: kept tokens only, raster order, original positions.
  merge       each pruned token joins its most cosine-similar kept token; a kept token becomes the weighted
              mean of itself (weight 1) and its pruned joiners (weight = cosine similarity clamped to [0, 1]).
              A dissimilar joiner contributes little, so merging can never wash out a kept evidence token;
              ToMe-style size weighting (weight 1 per joiner) would let a large background group dominate.
              Sequence length and positions are those of `none`.
  contextual  VisionZip-style "contextual tokens": kept tokens unchanged, then K = min(num_contextual,
              n_pruned) extra tokens. K pruned tokens at uniformly spaced indices floor(i * P / K) of the
              pruned list (raster order) are centres; every other pruned token joins its most cosine-similar
              centre; an extra token is the plain mean of its group. VisionZip spaces centres by P // K from
              the start; floor(i * P / K) spreads them over the whole pruned list instead.

Positions: kept tokens keep their ORIGINAL M-RoPE (t, h, w) positions -- never re-indexed, which destroys
spatial information (see REFERENCE.md section 2). An extra contextual token sits at the rounded
(half up) mean of its group members' original positions, i.e. where its content came from.

If every token is kept, every mode returns the input unchanged (no extra tokens). Keeping none is an
error: callers guarantee at least one kept token (`boxes_to_keep_mask(..., min_keep>=1)`).

Similarities and means are computed in at least float32 (bf16 inputs are upcast) and cast back to the
input dtype. Everything is vectorised; gradients flow to `features` through the means (the discrete
assignments are not differentiable).

Usage:
    fused = fuse_tokens(features, keep_mask.flatten(), positions, mode="merge")
    fused.embeds     # (M, D) rows to splice into the sparse sequence
    fused.positions  # (3, M) their position ids
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

FusionMode = Literal["none", "merge", "contextual"]
FUSION_MODES: tuple[str, ...] = ("none", "merge", "contextual")


@dataclass
class FusedTokens:
    """The visual tokens of one image after pruning and fusion (M = n_kept + n_extra rows)."""

    embeds: torch.Tensor
    """(M, D) token embeddings, input dtype/device: kept tokens in raster order, then extra tokens."""
    positions: torch.Tensor
    """(3, M) long M-RoPE (t, h, w) positions: originals for kept tokens, group means for extra tokens."""
    n_kept: int
    """Number of kept tokens (the first n_kept rows)."""
    n_extra: int
    """Number of extra (contextual) tokens appended after the kept ones; 0 for 'none' and 'merge'."""
    source_index: torch.Tensor
    """(M,) long raster index of the kept token each row comes from; -1 for extra tokens."""


def fuse_tokens(
    features: torch.Tensor,
    keep: torch.Tensor,
    positions: torch.Tensor,
    mode: FusionMode = "merge",
    num_contextual: int = 4,
) -> FusedTokens:
    """Prune one image's visual tokens to the kept ones and fold the pruned ones in as `mode` says.

    Args:
        features: (N, D) merged visual features of one image, raster order.
        keep: (N,) bool, True for tokens to keep (e.g. `boxes_to_keep_mask(...).flatten()`).
        positions: (P, N) long original rotary position of each token (P = 3: M-RoPE (t, h, w); P = 1: 1-D).
        mode: 'none', 'merge' or 'contextual' (see the module docstring).
        num_contextual: number of extra tokens in 'contextual' mode (capped at the number pruned).

    Returns:
        FusedTokens with M = n_kept (+ n_extra for 'contextual') rows.
    """
    n = _check_inputs(features, keep, positions, mode, num_contextual)
    keep = keep.to(features.device)
    kept_idx = keep.nonzero().squeeze(1)  # (K,)
    pruned_idx = (~keep).nonzero().squeeze(1)  # (P,)
    n_kept = int(kept_idx.numel())
    if n_kept == 0:
        raise ValueError(
            f"keep mask keeps none of the {n} tokens; build it with boxes_to_keep_mask(..., min_keep>=1)"
        )

    kept_feat = features.index_select(0, kept_idx)  # (K, D)
    kept_pos = positions.index_select(1, kept_idx.to(positions.device))  # (3, K)
    if pruned_idx.numel() == 0 or mode == "none":
        return FusedTokens(kept_feat, kept_pos, n_kept, 0, kept_idx.clone())

    pruned_feat = features.index_select(0, pruned_idx)  # (P, D)
    if mode == "merge":
        merged = _merge_into_kept(kept_feat, pruned_feat)  # (K, D)
        return FusedTokens(merged, kept_pos, n_kept, 0, kept_idx.clone())

    # mode == "contextual"
    n_extra = min(int(num_contextual), int(pruned_idx.numel()))
    if n_extra == 0:
        return FusedTokens(kept_feat, kept_pos, n_kept, 0, kept_idx.clone())
    pruned_pos = positions.index_select(1, pruned_idx.to(positions.device))  # (3, P)
    extra_feat, extra_pos = _contextual_tokens(pruned_feat, pruned_pos, n_extra)  # (E, D), (3, E)
    source = torch.cat([kept_idx, torch.full((n_extra,), -1, dtype=torch.long, device=kept_idx.device)])  # (M,)
    return FusedTokens(
        embeds=torch.cat([kept_feat, extra_feat], dim=0),  # (K + E, D)
        positions=torch.cat([kept_pos, extra_pos], dim=1),  # (3, K + E)
        n_kept=n_kept,
        n_extra=n_extra,
        source_index=source,
    )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32 for similarities and means (bf16 cosine ties and sums are too coarse)."""
    return torch.promote_types(dtype, torch.float32)


def _merge_into_kept(kept: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """Similarity-weighted merge. kept: (K, D), pruned: (P, D) -> (K, D) in kept's dtype."""
    cdt = _compute_dtype(kept.dtype)
    k32, p32 = kept.to(cdt), pruned.to(cdt)
    sim = F.normalize(p32, dim=1) @ F.normalize(k32, dim=1).T  # (P, K) cosine similarity
    best_sim, assign = sim.max(dim=1)  # (P,), (P,) ties -> lowest kept index
    weight = best_sim.clamp(0.0, 1.0)  # (P,) dissimilar tokens contribute ~nothing
    numer = k32.index_add(0, assign, weight[:, None] * p32)  # (K, D) kept (weight 1) + weighted joiners
    denom = torch.ones(k32.shape[0], dtype=cdt, device=k32.device).index_add(0, assign, weight)  # (K,)
    return (numer / denom[:, None]).to(kept.dtype)  # (K, D)


def _contextual_tokens(
    pruned: torch.Tensor, pruned_pos: torch.Tensor, n_extra: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip-style contextual tokens. pruned: (P, D), pruned_pos: (3, P) -> (E, D), (3, E) long."""
    p = pruned.shape[0]
    cdt = _compute_dtype(pruned.dtype)
    p32 = pruned.to(cdt)
    centres = (torch.arange(n_extra, device=pruned.device) * p) // n_extra  # (E,) distinct, spread over P
    sim = F.normalize(p32, dim=1) @ F.normalize(p32[centres], dim=1).T  # (P, E)
    group = sim.argmax(dim=1)  # (P,) ties -> lowest centre
    # A centre always leads its own group, even if an identical vector is an earlier centre.
    group[centres] = torch.arange(n_extra, device=pruned.device)
    sums = torch.zeros(n_extra, p32.shape[1], dtype=cdt, device=p32.device).index_add(0, group, p32)  # (E, D)
    ones = torch.ones_like(group, dtype=cdt)  # (P,)
    counts = torch.zeros(n_extra, dtype=cdt, device=p32.device).index_add(0, group, ones)  # (E,) >= 1 each
    extra = (sums / counts[:, None]).to(pruned.dtype)  # (E, D) plain group means

    g_pos = group.to(pruned_pos.device)
    pos_sum = torch.zeros(pruned_pos.shape[0], n_extra, dtype=torch.float64, device=pruned_pos.device).index_add(
        1, g_pos, pruned_pos.to(torch.float64)
    )  # (3, E)
    pos_mean = pos_sum / counts.to(device=pruned_pos.device, dtype=torch.float64)[None, :]  # (3, E)
    extra_pos = torch.floor(pos_mean + 0.5).to(pruned_pos.dtype)  # (3, E) round half up
    return extra, extra_pos


def _check_inputs(
    features: torch.Tensor, keep: torch.Tensor, positions: torch.Tensor, mode: str, num_contextual: int
) -> int:
    if mode not in FUSION_MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; choose one of {FUSION_MODES}")
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D) for one image, got shape {tuple(features.shape)}")
    n = features.shape[0]
    if keep.dtype != torch.bool or keep.shape != (n,):
        raise ValueError(
            f"keep must be a ({n},) bool tensor matching features, got {keep.dtype} {tuple(keep.shape)}; "
            "pass keep_mask.flatten()"
        )
    if positions.ndim != 2 or positions.shape[1] != n or positions.dtype.is_floating_point:
        raise ValueError(
            f"positions must be a (P, {n}) integer tensor (P = 3 for M-RoPE (t, h, w), 1 for 1-D RoPE), "
            f"got {positions.dtype} {tuple(positions.shape)}"
        )
    if num_contextual < 0:
        raise ValueError(f"num_contextual must be >= 0, got {num_contextual}")
    return n

"""Pruned-token fusion: hand-computed cases for each mode plus invariants (lengths, positions, identity,
dtype, gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from vitos.pruning.fusion import FUSION_MODES, FusedTokens, fuse_tokens


def _grid_positions(h: int, w: int, t: int = 0) -> torch.Tensor:
    """(3, h*w) M-RoPE ids of one image in raster order: t constant, h = row, w = column."""
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    return torch.stack([torch.full_like(rows, t), rows, cols])


# ----------------------------------------------------------------------------- hand-computed cases


def test_none_keeps_kept_rows_and_their_original_positions():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [-1.0, 0.0]])
    keep = torch.tensor([False, True, False, True])
    pos = _grid_positions(2, 2, t=5)
    out = fuse_tokens(feats, keep, pos, mode="none")
    assert isinstance(out, FusedTokens)
    assert torch.equal(out.embeds, torch.tensor([[0.0, 1.0], [-1.0, 0.0]]))
    assert torch.equal(out.positions, torch.tensor([[5, 5], [0, 1], [1, 1]]))
    assert out.source_index.tolist() == [1, 3]
    assert (out.n_kept, out.n_extra) == (2, 0)


def test_merge_weights_joiners_by_clamped_cosine_similarity():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [-1.0, 0.0]])
    keep = torch.tensor([True, True, False, False])
    pos = _grid_positions(2, 2)
    out = fuse_tokens(feats, keep, pos, mode="merge")
    # token 2 = [2, 1]: cos to kept 0 is 2/sqrt(5), to kept 1 is 1/sqrt(5) -> joins kept 0 with weight 2/sqrt(5)
    # token 3 = [-1, 0]: cos -1 to kept 0, 0 to kept 1 -> joins kept 1 with weight clamp(0) = 0
    s = 2 / math.sqrt(5)
    expected0 = [(1 + 2 * s) / (1 + s), (0 + 1 * s) / (1 + s)]
    assert out.embeds.shape == (2, 2)
    torch.testing.assert_close(out.embeds[0], torch.tensor(expected0))
    torch.testing.assert_close(out.embeds[1], torch.tensor([0.0, 1.0]))
    assert torch.equal(out.positions, pos[:, :2])
    assert out.source_index.tolist() == [0, 1]
    assert (out.n_kept, out.n_extra) == (2, 0)


def test_merge_similarity_tie_goes_to_the_earliest_kept_token():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    keep = torch.tensor([True, True, False])
    out = fuse_tokens(feats, keep, _grid_positions(1, 3), mode="merge")
    w = 1 / math.sqrt(2)
    torch.testing.assert_close(out.embeds, torch.tensor([[1.0, w / (1 + w)], [0.0, 1.0]]))


def test_merge_cannot_wash_out_a_dissimilar_kept_token():
    # one kept evidence token among 50 opposite / orthogonal background tokens stays exactly itself
    kept = torch.tensor([[3.0, 0.0]])
    background = torch.cat([torch.tensor([[-1.0, 0.0]]).repeat(25, 1), torch.tensor([[0.0, 2.0]]).repeat(25, 1)])
    feats = torch.cat([kept, background])
    keep = torch.zeros(51, dtype=torch.bool)
    keep[0] = True
    out = fuse_tokens(feats, keep, _grid_positions(3, 17), mode="merge")
    torch.testing.assert_close(out.embeds, kept)


def test_contextual_groups_pruned_tokens_around_spaced_centres():
    # 2 x 3 grid; tokens 0, 1 kept; pruned list [2, 3, 4, 5]; K = 2 centres at pruned indices 0 and 2,
    # i.e. raster tokens 2 and 4. Token 3 is closest to 2, token 5 to 4.
    feats = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 1.0]])
    keep = torch.tensor([True, True, False, False, False, False])
    pos = _grid_positions(2, 3, t=7)  # raster 2 -> (0, 2), 3 -> (1, 0), 4 -> (1, 1), 5 -> (1, 2)
    out = fuse_tokens(feats, keep, pos, mode="contextual", num_contextual=2)
    assert (out.n_kept, out.n_extra) == (2, 2)
    assert out.embeds.shape == (4, 2) and out.positions.shape == (3, 4)
    torch.testing.assert_close(out.embeds[:2], feats[:2])  # kept tokens untouched
    torch.testing.assert_close(out.embeds[2], torch.tensor([0.95, 0.05]))  # mean of tokens 2, 3
    torch.testing.assert_close(out.embeds[3], torch.tensor([0.1, 1.0]))  # mean of tokens 4, 5
    # group {2, 3}: h mean 0.5 -> 1 (half up), w mean 1 -> 1; group {4, 5}: h 1, w mean 1.5 -> 2
    assert out.positions[:, 2:].tolist() == [[7, 7], [1, 1], [1, 2]]
    assert torch.equal(out.positions[:, :2], pos[:, :2])
    assert out.source_index.tolist() == [0, 1, -1, -1]
    assert out.positions.dtype == torch.long


def test_contextual_with_more_slots_than_pruned_tokens_copies_each_pruned_token():
    feats = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    keep = torch.tensor([True, False, False])
    pos = _grid_positions(1, 3)
    out = fuse_tokens(feats, keep, pos, mode="contextual", num_contextual=10)
    assert out.n_extra == 2
    torch.testing.assert_close(out.embeds, feats)
    assert torch.equal(out.positions, pos)


def test_contextual_with_zero_slots_equals_none():
    feats = torch.randn(6, 4)
    keep = torch.tensor([True, False, True, False, False, True])
    pos = _grid_positions(2, 3)
    a = fuse_tokens(feats, keep, pos, mode="contextual", num_contextual=0)
    b = fuse_tokens(feats, keep, pos, mode="none")
    assert torch.equal(a.embeds, b.embeds) and torch.equal(a.positions, b.positions) and a.n_extra == 0


def test_contextual_duplicate_centres_each_keep_their_own_group():
    # all pruned tokens identical: every centre still leads a non-empty group, so no NaN means
    feats = torch.cat([torch.tensor([[0.0, 1.0]]), torch.ones(6, 2)])
    keep = torch.tensor([True] + [False] * 6)
    out = fuse_tokens(feats, keep, _grid_positions(1, 7), mode="contextual", num_contextual=3)
    assert torch.isfinite(out.embeds).all()
    torch.testing.assert_close(out.embeds[1:], torch.ones(3, 2))


# ----------------------------------------------------------------------------- invariants


def _random_case(seed: int, n: int = 24, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, generator=g)
    keep = torch.rand(n, generator=g) < 0.4
    keep[int(torch.randint(n, (1,), generator=g))] = True  # at least one kept
    return feats, keep, _grid_positions(4, n // 4, t=2)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("mode", FUSION_MODES)
def test_lengths_positions_and_order_invariants(seed, mode):
    feats, keep, pos = _random_case(seed)
    n_kept, n_pruned = int(keep.sum()), int((~keep).sum())
    out = fuse_tokens(feats, keep, pos, mode=mode, num_contextual=3)
    n_extra = min(3, n_pruned) if mode == "contextual" else 0
    assert (out.n_kept, out.n_extra) == (n_kept, n_extra)
    m = n_kept + n_extra
    assert out.embeds.shape == (m, feats.shape[1])
    assert out.positions.shape == (3, m) and out.source_index.shape == (m,)
    kept_idx = keep.nonzero().flatten()
    # kept rows come first, in raster order, at their original positions
    assert torch.equal(out.source_index[:n_kept], kept_idx)
    assert torch.equal(out.positions[:, :n_kept], pos[:, kept_idx])
    assert (out.source_index[n_kept:] == -1).all()
    if mode == "contextual":
        torch.testing.assert_close(out.embeds[:n_kept], feats[kept_idx])
        # extra positions are means of pruned positions, so they lie inside the grid's range
        assert (out.positions[1, n_kept:] >= 0).all() and (out.positions[1, n_kept:] <= 3).all()
        assert (out.positions[0, n_kept:] == 2).all()


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_keep_all_returns_input_exactly(mode):
    feats, _, pos = _random_case(0)
    keep = torch.ones(feats.shape[0], dtype=torch.bool)
    out = fuse_tokens(feats, keep, pos, mode=mode)
    assert torch.equal(out.embeds, feats)
    assert torch.equal(out.positions, pos)
    assert out.n_extra == 0 and torch.equal(out.source_index, torch.arange(feats.shape[0]))


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_keep_none_raises(mode):
    feats, _, pos = _random_case(0)
    with pytest.raises(ValueError, match="min_keep"):
        fuse_tokens(feats, torch.zeros(feats.shape[0], dtype=torch.bool), pos, mode=mode)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("mode", FUSION_MODES)
def test_dtype_and_device_are_preserved(dtype, mode):
    feats, keep, pos = _random_case(1)
    out = fuse_tokens(feats.to(dtype), keep, pos, mode=mode)
    assert out.embeds.dtype == dtype and out.embeds.device == feats.device
    assert out.positions.dtype == torch.long and out.source_index.dtype == torch.long
    ref = fuse_tokens(feats.double(), keep, pos, mode=mode)
    tol = 1e-12 if dtype == torch.float64 else 3e-2
    torch.testing.assert_close(out.embeds.double(), ref.embeds, atol=tol, rtol=tol)


@pytest.mark.parametrize("mode", ["merge", "contextual"])
def test_gradients_reach_pruned_features(mode):
    feats, keep, pos = _random_case(2)
    feats = feats.abs().requires_grad_(True)  # positive features: every similarity > 0, every joiner counts
    out = fuse_tokens(feats, keep, pos, mode=mode)
    out.embeds.sum().backward()
    assert feats.grad is not None
    assert (feats.grad[~keep].abs().sum(dim=1) > 0).all(), "a pruned token received no gradient"
    assert (feats.grad[keep].abs().sum(dim=1) > 0).all()


def test_gradients_flow_in_none_mode_only_to_kept_tokens():
    feats, keep, pos = _random_case(3)
    feats.requires_grad_(True)
    fuse_tokens(feats, keep, pos, mode="none").embeds.sum().backward()
    assert (feats.grad[keep] == 1).all() and (feats.grad[~keep] == 0).all()


def test_bad_inputs_are_rejected_with_a_message():
    feats, keep, pos = _random_case(0)
    with pytest.raises(ValueError, match="unknown fusion mode"):
        fuse_tokens(feats, keep, pos, mode="tome")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bool"):
        fuse_tokens(feats, keep.long(), pos)
    with pytest.raises(ValueError, match="positions"):
        fuse_tokens(feats, keep, pos[:, :-1])
    with pytest.raises(ValueError, match="positions"):
        fuse_tokens(feats, keep, pos.float())


@pytest.mark.parametrize("mode", ["none", "merge", "contextual"])
def test_one_row_positions_for_1d_rope_families(mode):
    """LLaVA-style families carry (1, N) positions; the kept rows keep their original index."""
    feats, keep, pos = _random_case(1)
    pos1 = pos[:1]  # (1, N)
    fused = fuse_tokens(feats, keep, pos1, mode=mode, num_contextual=2)
    assert fused.positions.shape == (1, fused.embeds.shape[0])
    kept = keep.nonzero().squeeze(1)
    assert torch.equal(fused.positions[:, : fused.n_kept], pos1[:, kept])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        fuse_tokens(feats[None], keep, pos)

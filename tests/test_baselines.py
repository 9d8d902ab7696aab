"""Training-free baselines: budgets, keep-mask selectors, and FastV's attention against eager attention."""

from __future__ import annotations

import pytest
import torch

from conftest import random_image
from vitos.eval.baselines import (
    budget_from_ratio,
    budgets_from_records,
    center_keep,
    fastv_keep,
    fastv_scores,
    random_keep,
    split_budget,
    top_k_mask,
    visionzip_keep,
)
from vitos.pruning.fusion import fuse_tokens
from vitos.pruning.sparse import assemble


def _cells(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(r), int(c)) for r, c in mask.nonzero().tolist()}


# ---------------------------------------------------------------------------------------------- budgets


@pytest.mark.parametrize(
    "n, ratio, expected",
    [(256, 0.25, 64), (5, 0.5, 3), (3, 0.5, 2), (10, 0.01, 1), (7, 1.0, 7), (256, 0.77, 197)],
)
def test_budget_from_ratio_rounds_half_up_and_keeps_at_least_one(n, ratio, expected):
    assert budget_from_ratio(n, ratio) == expected


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, float("nan")])
def test_budget_from_ratio_rejects_ratios_outside_zero_one(ratio):
    with pytest.raises(ValueError, match="keep ratio"):
        budget_from_ratio(10, ratio)


def test_split_budget_is_proportional_exact_and_gives_each_image_a_token():
    # one each, then 34 over capacities 99 and 43: 23.70 -> 23 (+1 for the larger remainder), 10.29 -> 10
    assert split_budget(36, [100, 44]) == [25, 11]
    assert split_budget(1, [3, 3]) == [1, 1]  # never an image without a token
    assert split_budget(99, [4]) == [4]  # never more than the image holds
    parts = split_budget(50, [17, 64, 9])
    assert sum(parts) == 50 and all(1 <= p <= s for p, s in zip(parts, [17, 64, 9]))


def test_budgets_from_records_reads_kept_counts_by_id():
    recs = [{"id": 7, "visual_tokens_kept": 12}, {"id": "a", "visual_tokens_kept": 3}]
    assert budgets_from_records(recs) == {"7": 12, "a": 3}
    with pytest.raises(ValueError, match="visual_tokens_kept"):
        budgets_from_records([{"id": "x"}])


# ---------------------------------------------------------------------------------------------- selectors


def test_random_keep_draws_exactly_the_budget_reproducibly():
    a = random_keep((16, 16), 64, torch.Generator().manual_seed(1))
    b = random_keep((16, 16), 64, torch.Generator().manual_seed(1))
    c = random_keep((16, 16), 64, torch.Generator().manual_seed(2))
    assert a.shape == (16, 16) and a.dtype == torch.bool
    assert int(a.sum()) == 64
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_center_keep_picks_the_cells_nearest_the_image_centre():
    assert _cells(center_keep((4, 4), 4)) == {(1, 1), (1, 2), (2, 1), (2, 2)}
    assert _cells(center_keep((5, 5), 1)) == {(2, 2)}
    assert _cells(center_keep((5, 5), 5)) == {(2, 2), (1, 2), (3, 2), (2, 1), (2, 3)}
    # 2 x 6 grid: cells (0,2) (0,3) (1,2) (1,3) are equally near the centre; raster order breaks the tie
    assert _cells(center_keep((2, 6), 2)) == {(0, 2), (0, 3)}


def test_top_k_mask_breaks_ties_by_raster_index():
    assert _cells(top_k_mask(torch.tensor([1.0, 3.0, 1.0, 3.0]), (2, 2), 3)) == {(0, 1), (1, 1), (0, 0)}


def test_visionzip_keeps_highest_norm_tokens_and_contextual_fusion_fills_the_budget():
    norms = torch.tensor([1.0, 9.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0, 5.0])
    features = torch.eye(9) * norms[:, None]  # (9, 9): token i has norm norms[i]
    mask = visionzip_keep(features, (3, 3), budget=5, num_contextual=2)
    # dominant = 5 - 2 = 3 tokens: norms 9, 8, 7 at raster indices 1, 3, 5
    assert mask.flatten().nonzero().flatten().tolist() == [1, 3, 5]
    positions = torch.arange(9).expand(3, 9).clone()
    fused = fuse_tokens(features, mask.flatten(), positions, mode="contextual", num_contextual=2)
    assert fused.embeds.shape == (5, 9)  # the LM sees exactly the budget
    assert torch.equal(visionzip_keep(features, (3, 3), budget=9, num_contextual=2), torch.ones(3, 3, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------- FastV


@pytest.fixture(scope="module")
def eager_adapter(tiny_model_dir):
    from vitos.models import load_model

    return load_model(tiny_model_dir, dtype="float32", device="cpu", attn_implementation="eager")


def _two_sequences(ad):
    with torch.no_grad():
        enc = [ad.encode_images([random_image(224, 168, 11)]), ad.encode_images([random_image(112, 140, 12)])]
    prompts = [ad.build_prompt(q, e) for q, e in zip(["Is there a mass in the left lung?", "Normal?"], enc)]
    seqs = [assemble(ad, p, e) for p, e in zip(prompts, enc)]
    assert seqs[0].length != seqs[1].length, "different lengths exercise the left padding"
    return enc, prompts, seqs


@pytest.mark.parametrize("layer", [0, 1])
def test_fastv_scores_equal_the_eager_attention_of_the_last_token(tiny_adapter, eager_adapter, layer):
    enc, prompts, seqs = _two_sequences(tiny_adapter)
    scores = fastv_scores(tiny_adapter, seqs, [p.image_spans for p in prompts], layer=layer)

    # Independent reference: the eager attention module's own weights (B, H, L, L), via a forward hook.
    from vitos.pruning.sparse import collate

    seen = {}
    attn = eager_adapter.model.model.language_model.layers[layer].self_attn

    def keep_weights(module, args, output):  # returns None: the module's output is left as it is
        seen["w"] = output[1]

    handle = attn.register_forward_hook(keep_weights)
    embeds, positions, mask = collate(seqs)
    with torch.no_grad():
        eager_adapter.lm_forward(embeds, positions, mask)
    handle.remove()
    weights = seen["w"]  # (B, H, L, L)
    length = embeds.shape[1]
    for b, (seq, prompt) in enumerate(zip(seqs, prompts)):
        (s, e), = prompt.image_spans
        offset = length - seq.length
        expected = weights[b, :, -1, offset + s : offset + e].mean(0)  # (N,)
        assert scores[b][0].shape == (enc[b][0].num_tokens,)
        assert torch.allclose(scores[b][0], expected, atol=1e-6)


def test_fastv_stops_the_forward_at_the_ranking_layer(tiny_adapter):
    _, prompts, seqs = _two_sequences(tiny_adapter)
    later = tiny_adapter.model.model.language_model.layers[1]
    calls = []
    handle = later.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        fastv_scores(tiny_adapter, seqs, [p.image_spans for p in prompts], layer=0)
    finally:
        handle.remove()
    assert calls == []
    with pytest.raises(ValueError, match="fastv layer"):
        fastv_scores(tiny_adapter, seqs, [p.image_spans for p in prompts], layer=2)


def test_fastv_keep_keeps_the_top_scored_tokens_of_each_image(tiny_adapter):
    ad = tiny_adapter
    with torch.no_grad():
        enc = ad.encode_images([random_image(224, 224, 13), random_image(112, 112, 14)])
    prompt = ad.build_prompt("Compare the two scans.", enc)
    seq = assemble(ad, prompt, enc)
    scores = fastv_scores(ad, [seq], [prompt.image_spans])[0]
    sizes = [e.num_tokens for e in enc]  # 64 and 16
    masks = fastv_keep(ad, [seq], [prompt.image_spans], [[e.grid_hw for e in enc]], [20])[0]
    assert [int(m.sum()) for m in masks] == split_budget(20, sizes) == [16, 4]
    for m, s in zip(masks, scores):
        kept, dropped = s[m.flatten()], s[~m.flatten()]
        assert kept.min() >= dropped.max()

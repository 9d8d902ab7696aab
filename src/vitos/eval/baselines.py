"""Training-free visual-token pruning baselines, as keep-mask selectors at a given token budget.

Every selector returns one (H, W) bool keep mask per image (True = the LM sees this token), so a baseline
answers through exactly the ViToS answer path: `vitos.pipeline.run(..., keeps_override=masks)` ->
`vitos.pruning.sparse.assemble` (kept tokens keep their ORIGINAL positions) -> `vitos.engine.generate`.
Only the choice of tokens differs between modes, which is what a matched-budget comparison needs.

    random     `random_keep(grid_hw, budget, generator)`: a uniformly random subset.
    center     `center_keep(grid_hw, budget)`: the tokens whose cells are nearest the image centre
               (normalised coordinates, ties by raster index): `boxes_to_keep_mask` with no box.
    fastv      `fastv_keep(adapter, seqs, spans, budgets, layer)`: FastV (Chen et al., ECCV 2024) ranks the
               image tokens by the attention the LAST prompt token pays them in one decoder layer (mean
               over heads) and keeps the top `budget`.
    visionzip  `visionzip_keep(features, grid_hw, budget, num_contextual, scores)`: VisionZip (Yang et al.,
               CVPR 2025) keeps the top "dominant" tokens and summarises the rest in a few "contextual"
               tokens; dominant = budget - num_contextual, so dominant + contextual = budget.

Where we depart from the papers (so that every mode runs through one answer path):
* FastV prunes INSIDE the LM: layers < K see every token, layers >= K see only the kept ones, and the
  ranking is the attention map of layer K - 1 (1-based K=2 in the paper reads layer index 1). We rank from
  the same map -- `layer` is the 0-based index of the decoder layer whose attention is read, default 1 ==
  FastV's K=2 -- but then the answer pass runs ALL layers on the kept tokens, like every other mode. The
  ranking costs a prefill of layers 0..`layer` on the full sequence; a forward pre-hook on that layer
  captures its input and stops the forward there. We recompute that layer's attention row of the last
  token from its own `input_layernorm`, `q_proj`, `k_proj` and the rotary (cos, sin) the model passes to
  it, so it works with sdpa/flash attention (no `output_attentions`, no patched classes).
* VisionZip ranks by the [CLS] token's attention in the vision tower; Qwen2.5-VL's tower has no [CLS]
  token. Our proxy is the L2 norm of each merged visual token (the features the LM receives): the tokens
  a ViT's [CLS] attends to most are its high-norm "attention sink" tokens (Darcet et al., ICLR 2024,
  "Vision Transformers Need Registers"; VisionZip's own analysis finds its dominant tokens are those).
  Pass `scores` to rank differently. The contextual tokens are `fusion="contextual"` of
  `vitos.pruning.fusion` (its grouping rule is documented there), not re-implemented here.

Budgets count the visual tokens the LM sees per sample (kept + fused extra tokens): from a ratio
(`budget_from_ratio`) or from a ViToS run's per-sample `visual_tokens_kept` (`budgets_from_records`), so
a baseline sees exactly as many tokens as ViToS did on the same question. `split_budget` shares a
sample's budget among its images in proportion to their token counts (at least one token each).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from vitos.models.base import ModelAdapter
from vitos.pruning.boxes import boxes_to_keep_mask
from vitos.pruning.sparse import SequenceInputs, collate

__all__ = [
    "BASELINE_MODES",
    "BASELINE_FUSION",
    "budget_from_ratio",
    "split_budget",
    "budgets_from_records",
    "top_k_mask",
    "random_keep",
    "center_keep",
    "visionzip_scores",
    "visionzip_keep",
    "fastv_scores",
    "fastv_keep",
]

BASELINE_MODES = ("random", "center", "fastv", "visionzip")
BASELINE_FUSION = {"random": "none", "center": "none", "fastv": "none", "visionzip": "contextual"}
"""How each baseline treats its pruned tokens, as in its paper: dropped, or VisionZip's contextual tokens."""


# --------------------------------------------------------------------------------------------------
# budgets
# --------------------------------------------------------------------------------------------------


def budget_from_ratio(n: int, ratio: float) -> int:
    """Visual tokens to keep out of `n` at keep `ratio` in (0, 1]: round half up, at least 1, at most n.

    256 tokens at 0.25 -> 64; 5 tokens at 0.5 -> 3; 10 tokens at 0.01 -> 1.
    """
    if n < 1:
        raise ValueError(f"an image grid must hold at least one token, got n={n}")
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and 0 < ratio <= 1):
        raise ValueError(f"keep ratio must be in (0, 1], got {ratio!r} (e.g. 0.25 keeps a quarter of the tokens)")
    return min(n, max(1, math.floor(n * ratio + 0.5)))


def split_budget(budget: int, sizes: Sequence[int]) -> list[int]:
    """Share `budget` tokens among images of `sizes` tokens: one each, the rest in proportion to size - 1.

    Largest-remainder rounding in exact integers (ties to the earlier image), so the parts sum to the
    budget, clamped to [len(sizes), sum(sizes)]. [100, 44] with budget 36 -> [25, 11].
    """
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError(f"every image needs at least one token, got sizes {list(sizes)}")
    k = len(sizes)
    budget = min(max(int(budget), k), sum(sizes))
    rest = budget - k
    capacity = [s - 1 for s in sizes]
    total = sum(capacity)
    if total == 0:
        return [1] * k
    base = [rest * c // total for c in capacity]
    remainder = [rest * c % total for c in capacity]
    left = rest - sum(base)
    for i in sorted(range(k), key=lambda i: (-remainder[i], i))[:left]:
        base[i] += 1
    return [1 + b for b in base]


def budgets_from_records(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Sample id -> `visual_tokens_kept` from prediction records (a ViToS run's predictions.jsonl lines)."""
    budgets: dict[str, int] = {}
    for i, rec in enumerate(records):
        if "id" not in rec or "visual_tokens_kept" not in rec:
            raise ValueError(f"prediction record {i} has no 'id' or 'visual_tokens_kept'; is it a vitos eval file?")
        budgets[str(rec["id"])] = int(rec["visual_tokens_kept"])
    return budgets


# --------------------------------------------------------------------------------------------------
# selectors
# --------------------------------------------------------------------------------------------------


def _grid(grid_hw: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(v) for v in grid_hw)
    if h < 1 or w < 1:
        raise ValueError(f"grid_hw must be positive (H, W), got {grid_hw!r}")
    return h, w


def _check_budget(budget: int, n: int) -> int:
    if budget < 1:
        raise ValueError(f"budget must be >= 1 token (the answer pass needs something to look at), got {budget}")
    return min(int(budget), n)


def top_k_mask(scores: torch.Tensor, grid_hw: tuple[int, int], k: int) -> torch.Tensor:
    """(H, W) mask of the `k` highest of `scores` (N,) = (H*W,), raster order; ties go to the lower index."""
    h, w = _grid(grid_hw)
    if scores.shape != (h * w,):
        raise ValueError(f"scores must be ({h * w},) for a {h}x{w} grid, got {tuple(scores.shape)}")
    k = _check_budget(k, h * w)
    order = torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices  # (N,)
    mask = torch.zeros(h * w, dtype=torch.bool)
    mask[order[:k]] = True
    return mask.view(h, w)


def random_keep(grid_hw: tuple[int, int], budget: int, generator: torch.Generator) -> torch.Tensor:
    """(H, W) mask of `budget` tokens drawn uniformly without replacement (CPU `generator` fixes the draw)."""
    h, w = _grid(grid_hw)
    k = _check_budget(budget, h * w)
    mask = torch.zeros(h * w, dtype=torch.bool)
    mask[torch.randperm(h * w, generator=generator)[:k]] = True
    return mask.view(h, w)


def center_keep(grid_hw: tuple[int, int], budget: int) -> torch.Tensor:
    """(H, W) mask of the `budget` tokens whose cell centres are nearest the image centre (ties: raster order).

    Distances are in normalised image coordinates, so a non-square grid keeps an image-centred disc.
    """
    h, w = _grid(grid_hw)
    return boxes_to_keep_mask([], (h, w), margin=0.0, min_keep=_check_budget(budget, h * w))


def visionzip_scores(features: torch.Tensor) -> torch.Tensor:
    """Dominance proxy (N,) of merged visual tokens (N, D): their L2 norm (see the module docstring)."""
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D) for one image, got {tuple(features.shape)}")
    return features.detach().float().norm(dim=-1)  # (N,)


def visionzip_keep(
    features: torch.Tensor,
    grid_hw: tuple[int, int],
    budget: int,
    num_contextual: int,
    scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """(H, W) mask of VisionZip's dominant tokens: the top max(1, budget - num_contextual) by `scores`.

    Run the mask with `fusion="contextual", num_contextual=num_contextual` (what `BASELINE_FUSION` says) to
    add the contextual tokens; the LM then sees `budget` tokens whenever budget > num_contextual (a smaller
    budget keeps 1 dominant + min(num_contextual, N - 1) contextual tokens). features: (N, D), scores: (N,).
    """
    h, w = _grid(grid_hw)
    n = h * w
    if features.shape[0] != n:
        raise ValueError(f"features hold {features.shape[0]} tokens but the grid {h}x{w} has {n}")
    budget = _check_budget(budget, n)
    if budget >= n:
        return torch.ones(h, w, dtype=torch.bool)
    scores = visionzip_scores(features) if scores is None else scores
    return top_k_mask(scores, (h, w), max(1, budget - max(0, int(num_contextual))))


# --------------------------------------------------------------------------------------------------
# FastV: attention of the last prompt token in one decoder layer
# --------------------------------------------------------------------------------------------------


class _StopForward(Exception):
    """Raised by the capture hook: the layers after the ranking layer are not needed."""


def _decoder_layers(adapter: ModelAdapter) -> Any:
    try:
        return adapter.model.model.language_model.layers
    except AttributeError:
        raise TypeError(
            f"fastv needs the decoder layers at adapter.model.model.language_model.layers (Qwen2.5-VL layout); "
            f"{type(adapter).__name__} has none"
        ) from None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, hd), cos/sin (B, L, hd) -> rotated x; the rotate-half convention of Qwen/Llama."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


@torch.no_grad()
def fastv_scores(
    adapter: ModelAdapter,
    seqs: list[SequenceInputs],
    image_spans: list[list[tuple[int, int]]],
    layer: int = 1,
) -> list[list[torch.Tensor]]:
    """Attention of each sequence's last token to its image tokens in decoder layer `layer` (0-based).

    `seqs` are UNPRUNED sequences (`assemble` without keeps) and `image_spans[b]` the [start, end) of each
    image in sequence b (`Prompt.image_spans`). Returns per sequence, per image, a (N_i,) float tensor:
    softmax(q_last . k / sqrt(hd)) over the sequence's real (unpadded) tokens, mean over heads (GQA keys
    shared as the model shares them). The forward stops at `layer`: later layers never run.
    """
    layers = _decoder_layers(adapter)
    if not 0 <= layer < len(layers):
        raise ValueError(f"fastv layer must be in [0, {len(layers) - 1}] for this {len(layers)}-layer LM, got {layer}")
    for b, seq in enumerate(seqs):
        if seq.n_visual_kept != seq.n_visual_total:
            raise ValueError(f"sequence {b} is already pruned; fastv ranks tokens of the unpruned sequence")
    embeds, positions, mask = collate(seqs)  # (B, L, D), (P, B, L), (B, L)
    captured: dict[str, Any] = {}

    def capture(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]  # (B, L, D) input of `layer`
        captured["rope"] = kwargs["position_embeddings"]  # (cos, sin), each (B, L, hd)
        raise _StopForward

    handle = layers[layer].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        adapter.lm_forward(embeds, positions, mask)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if "hidden" not in captured:
        raise RuntimeError(f"decoder layer {layer} never ran; cannot rank tokens for fastv")

    block = layers[layer]
    attn = block.self_attn
    hd = attn.head_dim
    h = block.input_layernorm(captured["hidden"])  # (B, L, D)
    b, length, _ = h.shape
    cos, sin = captured["rope"]  # (B, L, hd)
    q = attn.q_proj(h[:, -1:]).view(b, 1, -1, hd).transpose(1, 2)  # (B, Hq, 1, hd) last token only
    k = attn.k_proj(h).view(b, length, -1, hd).transpose(1, 2)  # (B, Hkv, L, hd)
    q = _apply_rope(q.float(), cos[:, -1:].float(), sin[:, -1:].float())  # (B, Hq, 1, hd)
    k = _apply_rope(k.float(), cos.float(), sin.float())  # (B, Hkv, L, hd)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # (B, Hq, L, hd) query head i uses kv head i // rep
    logits = (q @ k.transpose(-1, -2)).squeeze(2) * attn.scaling  # (B, Hq, L)
    logits = logits.masked_fill(~mask.bool()[:, None, :].to(logits.device), float("-inf"))  # padding keys
    probs = logits.softmax(dim=-1).mean(dim=1).cpu()  # (B, L) mean over heads

    out = []
    for row, (seq, spans) in enumerate(zip(seqs, image_spans)):
        offset = length - seq.length  # left padding
        out.append([probs[row, offset + s : offset + e].clone() for s, e in spans])  # (N_i,) each
    return out


def fastv_keep(
    adapter: ModelAdapter,
    seqs: list[SequenceInputs],
    image_spans: list[list[tuple[int, int]]],
    grids: list[list[tuple[int, int]]],
    budgets: list[int],
    layer: int = 1,
) -> list[list[torch.Tensor]]:
    """Per sequence, per image (H, W) masks of the tokens with the highest `fastv_scores`.

    A sample's budget is split among its images by `split_budget`; grids[b][i] is image i's (H, W).
    """
    scores = fastv_scores(adapter, seqs, image_spans, layer)
    masks = []
    for per_image, grid_list, budget in zip(scores, grids, budgets):
        parts = split_budget(budget, [g[0] * g[1] for g in grid_list])
        masks.append([top_k_mask(s, g, k) for s, g, k in zip(per_image, grid_list, parts)])
    return masks

"""Assemble token-sparse (or full) input sequences and batch them with left padding.

A prompt is text segments and image spans. For each image we either keep all its merged tokens (full
branch, or a fallback) or keep the tokens selected by a keep mask, with the pruned ones fused in
(`vitos.pruning.fusion`). Every kept token carries its ORIGINAL position (index-select, never
re-index); the text after an image keeps its original positions too, so the gap the pruned tokens
leave is simply a gap in position space, exactly as if they were masked out.

The features come from `EncodedImage`s computed once per image: the grounding pass and every sparse
pass of the same image reuse them, so the vision tower never runs twice for one image.

    seq = assemble(adapter, prompt, images, keeps=[mask], fusion="merge")
    embeds, positions, attention_mask = collate([seq, ...])   # (B, L, D), (P, B, L), (B, L)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vitos.models.base import EncodedImage, ModelAdapter, Prompt
from vitos.pruning.fusion import fuse_tokens


@dataclass
class SequenceInputs:
    """One model input sequence, ready to batch."""

    embeds: torch.Tensor
    """(L, D) input embeddings: text embeddings and (kept, fused) visual features."""
    positions: torch.Tensor
    """(P, L) original rotary positions of each row of `embeds`."""
    n_visual_total: int
    """Visual tokens the unpruned prompt holds (all images)."""
    n_visual_kept: int
    """Visual tokens this sequence feeds the LM (kept + fused extra tokens)."""
    keep_masks: list[torch.Tensor | None] = field(default_factory=list)
    """Per image: (H, W) bool keep mask, or None when the image was kept whole."""

    @property
    def length(self) -> int:
        return self.embeds.shape[0]


@dataclass
class VisualSegment:
    """One image's rows of an assembled sequence: what replaces its placeholder span."""

    span: tuple[int, int]
    """[start, end) of the image's placeholders in the unpruned prompt."""
    embeds: torch.Tensor
    """(M, D) visual rows fed to the LM: all N tokens, or kept (+ fused extra) tokens."""
    positions: torch.Tensor
    """(P, M) their ORIGINAL rotary positions (extra tokens: their group's mean position)."""


def visual_segments(
    adapter: ModelAdapter,
    prompt: Prompt,
    images: list[EncodedImage],
    keeps: list[torch.Tensor | None] | None = None,
    fusion: str = "merge",
    num_contextual: int = 4,
) -> list[VisualSegment]:
    """Per image, the rows `assemble` splices in for it; `keeps[i]` is image i's (H, W) keep mask or None
    (keep all). Shared by `assemble` and the vLLM request builder (vitos.vllm_engine.requests), so both
    feed the same rows at the same positions."""
    keeps = keeps if keeps is not None else [None] * len(images)
    if len(keeps) != len(images) or len(prompt.image_spans) != len(images):
        raise ValueError(
            f"{len(images)} images, {len(keeps)} keep masks and {len(prompt.image_spans)} image slots must agree"
        )
    out = []
    for (start, end), image, keep in zip(prompt.image_spans, images, keeps):
        feats = image.features.to(adapter.dtype)  # (N, D)
        pos = prompt.positions[:, start:end]  # (P, N)
        if keep is None:
            out.append(VisualSegment((start, end), feats, pos))
            continue
        if tuple(keep.shape) != tuple(image.grid_hw):
            raise ValueError(f"keep mask shape {tuple(keep.shape)} does not match the image grid {image.grid_hw}")
        fused = fuse_tokens(feats, keep.reshape(-1).to(feats.device), pos, mode=fusion, num_contextual=num_contextual)
        out.append(VisualSegment((start, end), fused.embeds, fused.positions.to(pos.device)))  # (M, D), (P, M)
    return out


def assemble(
    adapter: ModelAdapter,
    prompt: Prompt,
    images: list[EncodedImage],
    keeps: list[torch.Tensor | None] | None = None,
    fusion: str = "merge",
    num_contextual: int = 4,
) -> SequenceInputs:
    """Build one sequence; `keeps[i]` is image i's (H, W) keep mask or None (keep all)."""
    keeps = keeps if keeps is not None else [None] * len(images)
    segments = visual_segments(adapter, prompt, images, keeps, fusion, num_contextual)
    embeds, positions = [], []
    cursor = 0
    for seg in segments:
        start, end = seg.span
        if start > cursor:  # text before this image
            embeds.append(adapter.embed_tokens(prompt.input_ids[cursor:start]))  # (l, D)
            positions.append(prompt.positions[:, cursor:start])  # (P, l)
        embeds.append(seg.embeds)  # (M, D)
        positions.append(seg.positions)  # (P, M)
        cursor = end
    if cursor < prompt.input_ids.numel():  # text after the last image
        embeds.append(adapter.embed_tokens(prompt.input_ids[cursor:]))
        positions.append(prompt.positions[:, cursor:])
    device = embeds[0].device
    return SequenceInputs(
        embeds=torch.cat([e.to(device) for e in embeds]),  # (L', D)
        positions=torch.cat([p.to(device) for p in positions], dim=1),  # (P, L')
        n_visual_total=sum(im.num_tokens for im in images),
        n_visual_kept=sum(seg.embeds.shape[0] for seg in segments),
        keep_masks=list(keeps),
    )


def next_positions(positions: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(P, B, L) positions, (B, L) mask -> (B,) the position of the first token after each prompt.

    Max over the row's valid positions + 1: for Qwen that is the last text token + 1 (text follows the
    image), for a pruned sequence it is (max kept position + 1).
    """
    valid = attention_mask.bool()[None].expand_as(positions)  # (P, B, L)
    masked = positions.masked_fill(~valid, -1)
    return masked.amax(dim=(0, 2)) + 1  # (B,)


def collate(seqs: list[SequenceInputs]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad sequences to a common length Lp.

    Returns embeds (B, Lp, D), positions (P, B, Lp) and attention mask (B, Lp); padding has zero
    embeddings, position 0 and mask 0.
    """
    lp = max(s.length for s in seqs)
    d = seqs[0].embeds.shape[-1]
    p = seqs[0].positions.shape[0]
    device, dtype = seqs[0].embeds.device, seqs[0].embeds.dtype
    b = len(seqs)
    embeds = torch.zeros(b, lp, d, device=device, dtype=dtype)
    positions = torch.zeros(p, b, lp, device=device, dtype=torch.long)
    mask = torch.zeros(b, lp, device=device, dtype=torch.long)
    for i, s in enumerate(seqs):
        embeds[i, lp - s.length :] = s.embeds
        positions[:, i, lp - s.length :] = s.positions
        mask[i, lp - s.length :] = 1
    return embeds, positions, mask

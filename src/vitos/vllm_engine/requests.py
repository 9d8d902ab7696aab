"""vitos prompt + keep masks -> one vLLM request that feeds the same rows at the same positions (no vLLM here).

vLLM's Qwen2.5-VL expands each image's single `<|image_pad|>` into one placeholder per merged token of the
FULL grid and numbers them with its own M-RoPE rule; a pruned image has fewer rows, and those rows must keep
their original positions (REFERENCE §2). So a request carries, per image:

    counts      M_i = rows fed for image i (kept + fused extra; N_i when the image is whole)
    embeds      (sum M_i, D) the rows themselves (vitos' vision tower ran once; vLLM's does not run)
    grid_index  (sum M_i, 3) each row's (t, h, w) position relative to the image's origin
    grid_thw    (n, 3) the image's full patch grid: text after the image resumes where it would unpruned

and the plugin (vitos.vllm_engine.plugin) replaces each placeholder by M_i tokens and computes positions
with `mrope_positions` below, which equals `vitos.pruning.sparse.assemble(...).positions` (tested).

    req = build_request(adapter, prompt, encoded_images, keeps, fusion="merge")
    llm.generate([req.as_vllm()], sampling_params)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vitos.models.base import EncodedImage, ModelAdapter, Prompt
from vitos.pruning.sparse import visual_segments


@dataclass
class ImageSegment:
    """Where one image's rows sit in the expanded token sequence, and their relative positions."""

    offset: int
    """Index of the image's first row in the expanded sequence."""
    grid_index: torch.Tensor
    """(M, 3) long (t, h, w) positions relative to the image origin."""
    llm_grid: tuple[int, int, int]
    """(t, h, w) of the full merged grid: the span of positions the unpruned image occupies."""


@dataclass
class VllmRequest:
    """One prompt for vLLM: token ids with ONE placeholder per image, and the vitos fields per image."""

    prompt_token_ids: list[int]
    """Prompt ids; each image is a single `image_token_id` that vLLM expands to counts[i] tokens."""
    image_embeds: torch.Tensor
    """(sum M_i, D) visual rows, images in order."""
    image_grid_thw: torch.Tensor
    """(n, 3) long full patch grids (t, h, w in 14-px patches, before the 2 x 2 merge)."""
    counts: list[int]
    """M_i rows per image."""
    grid_index: torch.Tensor
    """(sum M_i, 3) long positions of the rows relative to their image's origin."""
    image_token_id: int
    """The placeholder id (`<|image_pad|>`)."""
    merge: int = 2
    """Spatial merge size of the vision tower (patch grid / merge = token grid)."""

    def expanded_token_ids(self) -> list[int]:
        """The ids vLLM runs: each placeholder repeated counts[i] times."""
        out: list[int] = []
        k = 0
        for tok in self.prompt_token_ids:
            if tok == self.image_token_id:
                out.extend([tok] * self.counts[k])
                k += 1
            else:
                out.append(tok)
        return out

    def segments(self) -> list[ImageSegment]:
        """Per image: its offset in `expanded_token_ids()`, relative positions and full merged grid."""
        out, pos, k, row = [], 0, 0, 0
        for tok in self.prompt_token_ids:
            if tok == self.image_token_id:
                m = self.counts[k]
                t, h, w = (int(v) for v in self.image_grid_thw[k])
                out.append(ImageSegment(pos, self.grid_index[row : row + m], (t, h // self.merge, w // self.merge)))
                pos, row, k = pos + m, row + m, k + 1
            else:
                pos += 1
        return out

    def as_vllm(self) -> dict[str, Any]:
        """The `vllm.LLM.generate` prompt dict (the plugin's fields ride in multi_modal_data)."""
        if not self.counts:
            return {"prompt_token_ids": list(self.prompt_token_ids)}
        return {"prompt_token_ids": list(self.prompt_token_ids), "multi_modal_data": {"image": {
            "image_embeds": self.image_embeds, "image_grid_thw": self.image_grid_thw,
            "vitos_counts": torch.tensor(self.counts, dtype=torch.long), "vitos_grid_index": self.grid_index}}}


def build_request(
    adapter: ModelAdapter,
    prompt: Prompt,
    images: list[EncodedImage],
    keeps: list[torch.Tensor | None] | None = None,
    fusion: str = "merge",
    num_contextual: int = 4,
) -> VllmRequest:
    """The vLLM request for `assemble(adapter, prompt, images, keeps, fusion, num_contextual)`: same rows,
    same positions. Qwen2.5-VL family only (M-RoPE); another family is a ValueError naming the supported one."""
    if getattr(adapter, "num_position_rows", None) != 3 or not hasattr(adapter, "image_token_id"):
        raise ValueError(f"the vLLM engine supports Qwen2.5-VL models (M-RoPE) only, not {type(adapter).__name__}; "
                         "use the default Python engine (engine=python)")
    segs = visual_segments(adapter, prompt, images, keeps, fusion, num_contextual)
    ids: list[int] = []
    cursor = 0
    grid_index = []
    for seg, im in zip(segs, images):
        start, end = seg.span
        ids.extend(prompt.input_ids[cursor:start].tolist())
        ids.append(adapter.image_token_id)
        origin = prompt.positions[0, start]  # the first placeholder sits at (o, o, o): t = h = w = 0
        grid_index.append((seg.positions - origin).T.long())  # (M, 3)
        cursor = end
    ids.extend(prompt.input_ids[cursor:].tolist())
    d = adapter.model.config.get_text_config().hidden_size
    embeds = torch.cat([s.embeds.detach().float().cpu() for s in segs]) if segs else torch.zeros(0, d)
    thw = torch.stack([im.extra["grid_thw"].long().cpu() for im in images]) if images else torch.zeros(0, 3, dtype=torch.long)
    return VllmRequest(ids, embeds, thw, [s.embeds.shape[0] for s in segs],
                       torch.cat(grid_index).cpu() if grid_index else torch.zeros(0, 3, dtype=torch.long),
                       adapter.image_token_id, getattr(adapter, "merge", 2))


def mrope_positions(num_tokens: int, segments: list[ImageSegment]) -> tuple[torch.Tensor, int]:
    """(3, num_tokens) M-RoPE positions of an expanded request and vLLM's `mrope_position_delta`.

    Text runs count up by one from where the previous run (or image) ended; an image's rows sit at
    origin + grid_index, origin = the position the next text token would have had; text after an image
    resumes at origin + max(full merged grid extent) + 1, as if the image were whole (Qwen2.5-VL's
    get_rope_index). delta = max position + 1 - num_tokens: the first generated token's position is
    num_tokens + delta = max + 1 (vitos.pruning.sparse.next_positions)."""
    pos = torch.empty(3, num_tokens, dtype=torch.long)
    nxt, cursor = 0, 0
    for seg in sorted(segments, key=lambda s: s.offset):
        n_text = seg.offset - cursor
        pos[:, cursor : seg.offset] = torch.arange(nxt, nxt + n_text)
        origin = nxt + n_text
        m = seg.grid_index.shape[0]
        pos[:, seg.offset : seg.offset + m] = origin + seg.grid_index.T
        nxt = origin + max(seg.llm_grid[0] - 1, seg.llm_grid[1] - 1, seg.llm_grid[2] - 1) + 1
        cursor = seg.offset + m
    pos[:, cursor:] = torch.arange(nxt, nxt + num_tokens - cursor)
    top = int(pos.max()) + 1 if num_tokens else 0
    return pos, top - num_tokens

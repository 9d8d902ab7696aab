"""The model-family adapter contract: everything the pruning engine needs from a VLM, and nothing more.

A family (Qwen2.5-VL, LLaVA-Qwen2, ...) is one module implementing `ModelAdapter` plus a loader, registered
by one entry in `vitos.models.FAMILIES` (docs/adding_a_model_family.md walks through it). The engine, the
pipeline, the trainer and the evaluator only ever talk to this interface:

    encode_images(images)                  -> list[EncodedImage]  processor + vision tower, ONCE per image
    build_prompt(text, images, system)     -> Prompt              chat format, placeholders expanded, positions
    embed_tokens(ids)                      -> (..., L, D)         text embeddings
    lm_forward(embeds, positions, mask, cache, logits_to_keep) -> (logits, cache)   LM + head, no vision
    lm_hidden(embeds, positions, mask, cache, keep_last)       -> (hidden, cache)   LM only (final norm)
    lm_head                                                     (D -> V) module    lm_forward = lm_head(lm_hidden)
    eos_token_ids, suppressed_token_ids, pad_token_id, dtype, model, tokenizer, num_position_rows

`model.config.get_text_config()` must describe the language model: the decoder builds its KV cache from it.

Positions are a (P, L) long tensor: P = 3 for Qwen's M-RoPE (temporal, height, width), P = 1 for 1-D RoPE
(LLaVA-Qwen2). Every visual token carries its ORIGINAL position; pruning index-selects, never re-indexes
(REFERENCE §2: re-indexing destroys the spatial code the model was trained with). A token appended after
the prompt gets position max(prompt positions) + 1, on every row. `lm_forward` always receives a 2-D
padding mask; with 1-D positions it must pass it on (transformers reads a position gap without a mask as
a packed-sequence boundary).

User text never becomes a control token: `build_prompt` renders the chat template around a placeholder
(`USER_TEXT`) and `encode_with_user_text` tokenizes the question with special-token splitting, so a typed
`<|im_start|>system`, `<|image_pad|>` or `<|endoftext|>` is ordinary text while the template's own control
tokens stay real (ids are unchanged for every text without such strings).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from vitos.models.compat import cache_kwarg, returned_cache

USER_TEXT = "\ue000vitos-user-text\ue001"
"""Stands for the user's text while a chat template is rendered (private-use characters: in no real text)."""


def special_token_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special (control) tokens: chat turns, vision placeholders, end of text, ..."""
    ids = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return ids | {i for i in tokenizer.all_special_ids if i is not None}


def encode_with_user_text(tokenizer: Any, rendered: str, text: str) -> list[int]:
    """Ids of `rendered` (a rendered chat prompt holding `USER_TEXT` once) with `text` in place of it.

    The template's own special tokens (those written in `rendered`) become their ids; `text` is tokenized
    with `split_special_tokens=True`, so nothing a user types can become a special token. The plain text
    between two template control tokens is tokenized as one piece, exactly as the tokenizer splits on
    special tokens itself: ids equal `tokenizer(filled_in_prompt)` for any text without special tokens.
    """
    if rendered.count(USER_TEXT) != 1:
        raise ValueError(f"the chat template must place the user text exactly once, it did {rendered.count(USER_TEXT)} times")
    specials = sorted({tokenizer.convert_ids_to_tokens(i) for i in special_token_ids(tokenizer)}, key=len, reverse=True)
    control = re.compile("|".join(re.escape(t) for t in specials)) if specials else None
    forbidden = special_token_ids(tokenizer)
    ids: list[int] = []
    pending = ""

    def flush() -> None:
        nonlocal pending
        if pending:
            piece = tokenizer(pending, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            if forbidden.intersection(piece):  # cannot happen with a tokenizer that honours the flag
                raise ValueError("the tokenizer turned plain text into a special token; it ignores split_special_tokens")
            ids.extend(piece)
            pending = ""

    head, tail = rendered.split(USER_TEXT)
    for part, trusted in ((head, True), (text, False), (tail, True)):
        if not trusted or control is None:
            pending += part
            continue
        pos = 0
        for m in control.finditer(part):  # the template's control tokens: real ids
            pending += part[pos:m.start()]
            flush()
            ids.append(tokenizer.convert_tokens_to_ids(m.group()))
            pos = m.end()
        pending += part[pos:]
    flush()
    return ids


@dataclass
class EncodedImage:
    """One image after the vision tower: merged visual tokens in raster order over the merged grid."""

    features: torch.Tensor
    """(N, D) merged visual token features, N = grid_hw[0] * grid_hw[1], raster (row-major) order."""
    grid_hw: tuple[int, int]
    """(H, W) of the merged token grid."""
    image_size: tuple[int, int]
    """(width, height) of the image as loaded, before the processor resized it."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Family-specific data (Qwen's `grid_thw` for its positions)."""
    grid_region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    """Normalised [x1, y1, x2, y2] of the grid that the image fills: the whole grid for Qwen2.5-VL (resize),
    a centred band for LLaVA (pad to square). Image boxes go through
    `vitos.pruning.boxes.image_box_to_grid_box(box, grid_region)` before they select tokens."""

    @property
    def num_tokens(self) -> int:
        return self.grid_hw[0] * self.grid_hw[1]


@dataclass
class Prompt:
    """A tokenised chat prompt with image placeholders expanded to one token per merged visual token."""

    input_ids: torch.Tensor
    """(L,) token ids; each image occupies `num_tokens` consecutive placeholder ids."""
    positions: torch.Tensor
    """(P, L) original rotary positions of every token of the unpruned prompt."""
    image_spans: list[tuple[int, int]]
    """[start, end) of each image's placeholders in `input_ids`, in image order."""


class ModelAdapter(Protocol):
    """What a model family provides. References: `vitos.models.qwen2_5_vl.QwenVLAdapter` (M-RoPE, dynamic
    grid) and `vitos.models.llava_qwen2.LlavaQwen2Adapter` (1-D RoPE, fixed 24 x 24 grid)."""

    model: torch.nn.Module
    """The full HF model (vision tower + language model + head); the object LoRA/FSDP wrap."""
    tokenizer: Any
    """The HF tokenizer (with chat template)."""
    num_position_rows: int
    """P: rows of the position tensor (3 for M-RoPE, 1 for 1-D RoPE)."""

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the input embeddings (visual features are cast to it when spliced in)."""

    @property
    def pad_token_id(self) -> int:
        """Id the decoder writes after a row has finished (never fed to the model)."""

    def encode_images(self, images: list[Any]) -> list[EncodedImage]:
        """Run the processor and the vision tower ONCE over all `images` (PIL, RGB)."""

    def build_prompt(self, text: str, images: list[EncodedImage], system: str | None = None) -> Prompt:
        """The family's chat format for one user turn holding `len(images)` images then `text`, ending with
        the generation prompt; each image's placeholder expanded to `num_tokens` ids."""

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(..., L) ids -> (..., L, D) text embeddings (the LM's input embedding table)."""

    def lm_forward(
        self,
        inputs_embeds: torch.Tensor,
        positions: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: Any = None,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, Any]:
        """Language model + head on embeddings. (B, L, D), (P, B, L), (B, L_total) -> logits (B, L|k, V), cache."""

    def lm_hidden(
        self,
        inputs_embeds: torch.Tensor,
        positions: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: Any = None,
        keep_last: int = 0,
    ) -> tuple[torch.Tensor, Any]:
        """`lm_forward` without the head: final (normed) hidden states (B, L|k, D), cache. The chunked
        log-probs (`vitos.engine.chunked_token_logprobs`) apply `lm_head` to them a few positions at a time."""

    @property
    def lm_head(self) -> torch.nn.Module:
        """The output projection (D -> V) that turns `lm_hidden`'s states into `lm_forward`'s logits."""

    @property
    def eos_token_ids(self) -> list[int]:
        """Ids that end a completion."""

    @property
    def suppressed_token_ids(self) -> list[int]:
        """Ids never to sample (vision placeholders and markers: emitting one breaks the next forward)."""


class AdapterBase:
    """Plumbing every family shares: special ids, dtype/device, text embeddings, and the LM + head call.

    A family subclass sets `num_position_rows`, implements `encode_images` and `build_prompt`, and
    overrides `lm_position_ids` when its language model takes positions in another shape.
    """

    num_position_rows: int = 1

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, suppressed: set[int], eos_tokens: tuple[str, ...]):
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        unk = tokenizer.unk_token_id
        eos = {tokenizer.eos_token_id, *(tokenizer.convert_tokens_to_ids(t) for t in eos_tokens)}
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self._eos = sorted(i for i in eos if isinstance(i, int) and i >= 0 and i != unk)
        self._suppressed = sorted(i for i in suppressed if isinstance(i, int) and i >= 0 and i != unk)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def eos_token_ids(self) -> list[int]:
        return self._eos

    @property
    def suppressed_token_ids(self) -> list[int]:
        return self._suppressed

    @property
    def pad_token_id(self) -> int:
        pid = self.tokenizer.pad_token_id
        return pid if pid is not None else self._eos[0]

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids.to(self.device))

    def lm_position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """(P, B, L) engine positions -> what the language model's `position_ids` takes (default: as is)."""
        return positions

    @property
    def lm_head(self) -> torch.nn.Module:
        """The model's own output projection (`model.lm_head`, D -> V)."""
        return self.model.lm_head

    def lm_hidden(
        self,
        inputs_embeds: torch.Tensor,
        positions: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: Any = None,
        keep_last: int = 0,
    ) -> tuple[torch.Tensor, Any]:
        """(B, L, D) embeddings, (P, B, L) positions, (B, L_past + L) mask -> (B, L or k, D) final hidden
        states (after the decoder's last norm: what `lm_head` takes), cache. keep_last = k > 0 keeps the
        last k columns only.

        The 2-D mask is always passed: without it transformers reads a jump in position ids (a pruned
        gap) as the start of a new packed sequence and blocks attention across it.
        """
        if positions.shape[0] != self.num_position_rows:
            raise ValueError(f"expected ({self.num_position_rows}, B, L) positions, got {tuple(positions.shape)}")
        decoder = self.model.model.language_model
        out = decoder(
            inputs_embeds=inputs_embeds,
            position_ids=self.lm_position_ids(positions),
            attention_mask=attention_mask,
            use_cache=cache is not None,
            **{cache_kwarg(decoder): cache},  # transformers 5.24 renamed past_key_values (vitos.models.compat)
        )
        hidden = out.last_hidden_state  # (B, L, D)
        if keep_last:
            hidden = hidden[:, -keep_last:]  # (B, k, D)
        return hidden, returned_cache(out)

    def lm_forward(
        self,
        inputs_embeds: torch.Tensor,
        positions: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: Any = None,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, Any]:
        """(B, L, D) embeddings, (P, B, L) positions, (B, L_past + L) mask -> (B, L or k, V) logits, cache:
        `lm_head(lm_hidden(...))` (generation; log-probs of long completions use the hidden states in chunks)."""
        hidden, cache = self.lm_hidden(inputs_embeds, positions, attention_mask, cache, keep_last=logits_to_keep)
        return self.lm_head(hidden), cache

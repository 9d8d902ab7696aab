"""Single-pass ViToS (`--mode vitos-evict`): ground and answer after ONE prefill, evicting pruned tokens.

    state  = prefill(grounding prompts on all visual tokens)             # the only prefill
    ground = decode(state, stop at "</box>")                             # <think> ... <box>[[...]]</box>
    keeps  = keep_masks(parse_output(ground), encoded, prune)           # as the two-pass path
    evict(state, keep)      # drop the pruned visual tokens' cache entries (and padding / tokens fed after a stop)
    append(state, extras + the "</box>" token)   # fusion="contextual": its summary tokens, at their positions
    answer = decode(state)                                               # <answer> ... </answer>

An APPROXIMATION of the two-pass sparse branch, and measured as one (bench/speed.py, README, Benchmarks): the
kept tokens' cache entries were computed while every visual token was visible, so from the second layer
on they still carry what the pruned tokens contributed; the prompt stays the grounding prompt (the answer
continues the grounding output after its boxes) instead of the sparse prompt; and `fusion="merge"`, which
rewrites the kept tokens' embeddings, cannot be applied to entries already in the cache, so under merge the
pruned tokens are just dropped (as `fusion="none"`). What it saves: the sparse pass's whole prefill, and the
grounding pass's <answer> (it stops after the boxes, as grounding="short").

Rows whose grounding output ends without a box tag (EOS, or the token limit) are finished after the first
decode: their answer is whatever the grounding output holds (`parse_output(..., "grounding")`), and they do
not take part in the second decode. A row whose box does not parse keeps every visual token and continues.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vitos.engine import DecodeState, SamplingConfig, append, decode, evict, prefill
from vitos.models.base import EncodedImage, ModelAdapter, Prompt
from vitos.pipeline import GROUNDING_STOP
from vitos.pruning.fusion import fuse_tokens
from vitos.pruning.sparse import assemble

STOP = GROUNDING_STOP
"""Where the first decode stops: the short grounding pass's stop strings."""


@dataclass
class SinglePass:
    """One sample's single-pass output."""

    grounding_text: str
    """The first decode: the grounding output up to and with `</box>` (or all of it, without a box tag)."""
    answer_text: str
    """The second decode, continuing after the boxes ("" when the row ended in the first decode)."""
    grounding_tokens: int
    """Tokens of the first decode."""
    keeps: list[torch.Tensor | None]
    """Per image: (H, W) keep mask applied to the cache, or None (kept whole; every image of a row that ended
    in the first decode)."""
    visual_tokens_kept: int
    """Visual cache entries the answer was decoded with: kept tokens + appended contextual tokens."""
    continued: bool
    """True when the row reached `</box>` and was answered by the second decode."""
    token_ids: torch.Tensor
    """(T,) every generated id: the first decode's, then the second's."""
    logprobs: torch.Tensor
    """(T,) their sampling-time log-probs (`Generation.logprobs`)."""


def _image_columns(prompt: Prompt, keeps: list[torch.Tensor | None], offset: int, width: int) -> torch.Tensor:
    """(width,) bool: False on the cache columns of the pruned visual tokens of a prompt whose column 0 sits
    at cache column `offset` (left padding), True elsewhere."""
    keep = torch.ones(width, dtype=torch.bool)
    for (start, end), k in zip(prompt.image_spans, keeps):
        if k is not None:
            keep[offset + start : offset + end] = k.reshape(-1).cpu()
    return keep


def _extras(adapter: ModelAdapter, prompt: Prompt, images: list[EncodedImage], keeps: list[torch.Tensor | None],
            fusion: str, num_contextual: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The contextual summary tokens of every pruned image: (E, D) embeddings, (P, E) positions (E = 0 unless
    fusion == "contextual")."""
    d = images[0].features.shape[-1] if images else 0
    embeds = [torch.zeros(0, d, dtype=adapter.dtype)]
    positions = [torch.zeros(prompt.positions.shape[0], 0, dtype=torch.long)]
    if fusion == "contextual":
        for (start, end), image, k in zip(prompt.image_spans, images, keeps):
            if k is None:
                continue
            fused = fuse_tokens(image.features.to(adapter.dtype), k.reshape(-1), prompt.positions[:, start:end],
                                mode="contextual", num_contextual=num_contextual)
            embeds.append(fused.embeds[fused.n_kept :].cpu())  # (E_i, D)
            positions.append(fused.positions[:, fused.n_kept :].cpu())  # (P, E_i)
    return torch.cat(embeds), torch.cat(positions, dim=1)


@torch.no_grad()
def run_single_pass(adapter: ModelAdapter, prompts: list[Prompt], encoded: list[list[EncodedImage]],
                    keeps_for, sampling: SamplingConfig, fusion: str = "merge", num_contextual: int = 4,
                    stop_strings: tuple[str, ...] = STOP) -> list[SinglePass]:
    """Ground, evict, answer (the module docstring) for a batch of grounding `prompts` and their images.

    keeps_for(i, grounding_text) -> per-image keep masks (None = keep whole) for row i, from its grounding
    output (the pipeline passes `keep_masks(parse_output(...))`). The first decode and the second each get
    `sampling.max_new_tokens`. stop_strings: where the first decode ends (tests use others)."""
    seqs = [assemble(adapter, p, enc, None) for p, enc in zip(prompts, encoded)]  # all visual tokens
    state = prefill(adapter, seqs, 2 * sampling.max_new_tokens, kv_cache="dynamic")  # evict needs a dynamic one
    ground = decode(adapter, state, sampling, stop_strings=stop_strings, compact=False)  # rows stay aligned with the batch
    lp = max(s.length for s in seqs)  # prompt columns of the cache; generated token k sits at lp + k
    n = [int(ids.numel()) for ids in ground.token_ids]
    keeps = [keeps_for(i, text) for i, text in enumerate(ground.texts)]
    go = [i for i, r in enumerate(ground.stop_reasons) if r == "stop_string"]
    out = [SinglePass(ground.texts[i], "", n[i], [None] * len(encoded[i]), seqs[i].n_visual_total, False,
                      ground.token_ids[i], ground.logprobs[i]) for i in range(len(seqs))]  # a row that ends here used every token
    if not go:
        return out

    width = state.mask.shape[1]  # lp + state.fed
    rows = torch.tensor(go, dtype=torch.long, device=state.mask.device)
    state.cache.reorder_cache(rows)  # only the rows that reached their boxes decode on
    state.mask, state.alive = state.mask[rows], torch.arange(len(go), device=rows.device)
    keep = torch.zeros(len(go), width, dtype=torch.bool)
    blocks = []
    for a, i in enumerate(go):
        keep[a] = _image_columns(prompts[i], keeps[i], lp - seqs[i].length, width)
        keep[a, lp + n[i] - 1 :] = False  # the last box token is fed again below; pads fed after a stop go
        e_emb, e_pos = _extras(adapter, prompts[i], encoded[i], keeps[i], fusion, num_contextual)
        last = ground.token_ids[i][-1:]  # (1,) the token that closed the box tag
        last_pos = (state.nxt[i] + n[i] - 1).view(1, 1).expand(e_pos.shape[0], 1).cpu()  # (P, 1)
        blocks.append((torch.cat([e_emb.to(adapter.device), adapter.embed_tokens(last)]), torch.cat([e_pos, last_pos], 1)))
        out[i].keeps = keeps[i]
        out[i].visual_tokens_kept = sum(im.num_tokens if k is None else int(k.sum())
                                        for im, k in zip(encoded[i], keeps[i])) + e_emb.shape[0]
    evict(state, keep.to(state.mask.device))
    la = max(b[0].shape[0] for b in blocks)
    d, p_rows = blocks[0][0].shape[1], blocks[0][1].shape[0]
    emb = torch.zeros(len(go), la, d, dtype=adapter.dtype, device=adapter.device)  # (A, La, D) left-padded block
    pos = torch.zeros(p_rows, len(go), la, dtype=torch.long, device=adapter.device)  # (P, A, La)
    bmask = torch.zeros(len(go), la, dtype=torch.long, device=adapter.device)  # (A, La)
    for a, (e, p) in enumerate(blocks):
        emb[a, la - e.shape[0] :], pos[:, a, la - e.shape[0] :], bmask[a, la - e.shape[0] :] = e, p.to(pos.device), 1
    append(adapter, state, emb, pos, bmask)
    state.nxt = torch.stack([state.nxt[i] + n[i] for i in go])  # (A,) position of the answer's first token
    answer = decode(adapter, state, sampling)
    for a, i in enumerate(go):
        out[i].answer_text, out[i].continued = answer.texts[a], True
        out[i].token_ids = torch.cat([ground.token_ids[i], answer.token_ids[a]])
        out[i].logprobs = torch.cat([ground.logprobs[i], answer.logprobs[a]])
    return out

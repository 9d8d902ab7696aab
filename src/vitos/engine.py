"""Generation and log-probabilities on assembled (full or token-sparse) sequences.

One decode loop serves inference, evaluation and RL rollouts, so the positions rule is written once:

    prefill   the left-padded batch of prompt embeddings with their original positions
    step t    feed the sampled token at position next_positions + t on every rotary row

`generate` never samples the vision special tokens (a policy that emits `<|image_pad|>` would break the
next forward). `completion_logprobs` re-scores completions with gradients for GRPO, on the same layout
(prompt left-padded, completion appended, right-padded), so the rollout and the update see identical
positions.

The distribution a rollout is drawn from is softmax(logits / T) over the non-suppressed vocabulary
(then top-k / top-p truncated). `generate` records, per sampled token, its log-prob under the tempered,
suppressed, UNtruncated distribution; `completion_logprobs(..., temperature=T, suppress=True)` computes
exactly that quantity, so the two agree to float rounding (the trainer logs their difference). Top-k /
top-p truncation is not in either number, as in TRL and verl: with top_p < 1 the importance ratio is
taken against the untruncated tempered policy (the truncated one is that policy renormalised over the
nucleus; the difference is the log of the nucleus mass, the same for every ratio at one token).

We use our own loop instead of `model.generate` because `generate` cannot take a pruned, non-rectangular
image grid (its M-RoPE comes from `image_grid_thw`) and because a 40-line loop can be stepped through
with `breakpoint()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import torch

from vitos.config import Range
from vitos.models.base import ModelAdapter
from vitos.pruning.sparse import SequenceInputs, collate, next_positions


@dataclass
class SamplingConfig:
    """How to pick each next token."""

    max_new_tokens: Annotated[int, Range(ge=1)] = 256
    """Upper bound on generated tokens per sequence (EOS stops earlier)."""
    temperature: Annotated[float, Range(ge=0)] = 0.0
    """0 = greedy decoding; > 0 samples from softmax(logits / temperature)."""
    top_p: Annotated[float, Range(gt=0, le=1)] = 1.0
    """Nucleus sampling mass (1.0 = off). Only used when temperature > 0."""
    top_k: Annotated[int, Range(ge=0)] = 0
    """Keep the k most likely tokens (0 = off). Only used when temperature > 0."""


@dataclass
class Generation:
    """Completions of one batch, in input order."""

    token_ids: list[torch.Tensor]
    """Per row: (T_i,) generated ids, ending with the EOS id when the model stopped by itself."""
    texts: list[str]
    """Per row: decoded text, special tokens removed."""
    stopped: list[bool]
    """Per row: True when EOS was produced before max_new_tokens."""
    logprobs: list[torch.Tensor] | None = None
    """Per row: (T_i,) fp32 log-prob of each generated token under softmax(logits / T) over the
    non-suppressed vocabulary (T = 1 when greedy), before top-k / top-p truncation."""


def token_logprobs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(..., V) logits -> (..., V) fp32 log-probs of the tempered distribution (T <= 0 is read as 1, greedy)."""
    t = temperature if temperature > 0 else 1.0
    return torch.log_softmax(logits.float() / t, dim=-1)


def _pick(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits -> (B,) next ids."""
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k > 0:
        kth = torch.topk(logits, min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    if cfg.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > cfg.top_p  # keep the smallest prefix with mass >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    gen_device = generator.device if generator is not None else probs.device
    return torch.multinomial(probs.to(gen_device), 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def generate(
    adapter: ModelAdapter,
    seqs: list[SequenceInputs],
    sampling: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
    sync: Callable[[bool], bool] | None = None,
) -> Generation:
    """Decode a batch of assembled sequences with a KV cache.

    sync: for sharded weights (FSDP, ZeRO-3) every rank must make the same number of forward calls;
    `sync(local_done) -> all_done` is called once per token and the loop runs until every rank is done
    (finished rows keep feeding pad tokens, as transformers' `synced_gpus`). None: the adapter's own
    `generation_sync` (the trainer's `PolicyView` sets it under sharded weights), else stop when local rows are.
    """
    sync = sync if sync is not None else getattr(adapter, "generation_sync", None)
    from transformers import DynamicCache

    cfg = sampling or SamplingConfig()
    embeds, positions, mask = collate(seqs)  # (B, L, D), (P, B, L), (B, L)
    b = embeds.shape[0]
    device = embeds.device
    nxt = next_positions(positions, mask)  # (B,)
    suppressed = torch.tensor(adapter.suppressed_token_ids, dtype=torch.long, device=device)
    eos = torch.tensor(adapter.eos_token_ids, dtype=torch.long, device=device)
    pad_id = adapter.pad_token_id

    cache = DynamicCache(config=adapter.model.config.get_text_config())
    logits, cache = adapter.lm_forward(embeds, positions, mask, cache, logits_to_keep=1)  # (B, 1, V)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    out = torch.full((b, cfg.max_new_tokens), pad_id, dtype=torch.long, device=device)
    out_lp = torch.zeros(b, cfg.max_new_tokens, dtype=torch.float32, device=device)
    lengths = torch.full((b,), cfg.max_new_tokens, dtype=torch.long, device=device)
    for t in range(cfg.max_new_tokens):
        step_logits = logits[:, -1].float()  # (B, V)
        if suppressed.numel():
            step_logits[:, suppressed] = float("-inf")
        tok = _pick(step_logits, cfg, generator)  # (B,)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        out[:, t] = tok
        out_lp[:, t] = token_logprobs(step_logits, cfg.temperature).gather(-1, tok[:, None]).squeeze(-1)  # (B,)
        hit_eos = torch.isin(tok, eos) & ~done
        lengths = torch.where(hit_eos, torch.full_like(lengths, t + 1), lengths)
        done |= hit_eos
        local_done = bool(done.all())
        if (sync(local_done) if sync is not None else local_done) or t == cfg.max_new_tokens - 1:
            break
        step_pos = (nxt + t).view(1, b, 1).expand(positions.shape[0], b, 1)  # (P, B, 1)
        mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype, device=device)], dim=1)  # (B, L + t + 1)
        logits, cache = adapter.lm_forward(adapter.embed_tokens(tok[:, None]), step_pos, mask, cache)
    token_ids = [out[i, : int(lengths[i])].cpu() for i in range(b)]
    logprobs = [out_lp[i, : int(lengths[i])].cpu() for i in range(b)]
    texts = adapter.tokenizer.batch_decode(token_ids, skip_special_tokens=True)
    return Generation(token_ids, texts, done.cpu().tolist(), logprobs)


def completion_logprobs(
    adapter: ModelAdapter,
    seqs: list[SequenceInputs],
    completions: list[torch.Tensor],
    temperature: float = 1.0,
    suppress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of `completions[i]` given `seqs[i]` (with gradients when enabled).

    temperature: score softmax(logits / T), the distribution `generate` sampled at T (<= 0 reads as 1).
    suppress: renormalise over the vocabulary `generate` may sample (vision special tokens excluded).
    Both are what the RL policy is; the SFT loss uses the defaults (plain next-token log-probs).

    Layout: [left pad | prompt | completion | right pad]; completion token k of row b sits at column
    Lp + k with position next_positions[b] + k, and is predicted by the logits at column Lp + k - 1.
    Returns logp (B, T) and mask (B, T) (1 on real completion tokens).
    """
    embeds, positions, mask = collate(seqs)  # (B, Lp, D), (P, B, Lp), (B, Lp)
    b = embeds.shape[0]
    device = embeds.device
    t_max = max(1, max(int(c.numel()) for c in completions))
    comp = torch.full((b, t_max), adapter.pad_token_id, dtype=torch.long, device=device)
    comp_mask = torch.zeros(b, t_max, dtype=torch.long, device=device)
    for i, c in enumerate(completions):
        comp[i, : c.numel()] = c.to(device)
        comp_mask[i, : c.numel()] = 1
    nxt = next_positions(positions, mask)  # (B,)
    comp_pos = nxt[:, None] + torch.arange(t_max, device=device)[None]  # (B, T)
    comp_pos = comp_pos[None].expand(positions.shape[0], b, t_max)  # (P, B, T)
    full_embeds = torch.cat([embeds, adapter.embed_tokens(comp)], dim=1)  # (B, Lp + T, D)
    full_pos = torch.cat([positions, comp_pos], dim=2)  # (P, B, Lp + T)
    full_mask = torch.cat([mask, comp_mask], dim=1)  # (B, Lp + T)
    # Only the last T + 1 columns feed the head: the vocabulary projection of the prompt (thousands of
    # visual tokens) is never materialised.
    logits, _ = adapter.lm_forward(full_embeds, full_pos, full_mask, logits_to_keep=t_max + 1)  # (B, T + 1, V)
    logits = logits[:, :-1].float()  # (B, T, V): column Lp - 1 + k predicts completion token k
    if suppress and adapter.suppressed_token_ids:
        logits = logits.index_fill(-1, torch.tensor(adapter.suppressed_token_ids, device=device), float("-inf"))
    logp = token_logprobs(logits, temperature).gather(-1, comp[..., None]).squeeze(-1)  # (B, T)
    return logp * comp_mask, comp_mask

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

Log-probs in chunks (`chunked_token_logprobs`): the re-scoring pass never builds the (B, T, V) fp32
logits. The decoder's final hidden states of the real completion tokens are flattened to (N, D) and the head
runs on `chunk_size` of them at a time; each chunk keeps only its (n,) log-probs, and under autograd its
logits are recomputed in the backward (`torch.utils.checkpoint`) instead of being saved. At Qwen2.5's
vocabulary (151,936) that turns ~0.6 GB per 1,000 completion tokens and fp32 copy into a bound of
~5 x chunk_size x V x 4 B (0.78 GB at the default 256), whatever the batch.

We use our own loop instead of `model.generate` because `generate` cannot take a pruned, non-rectangular
image grid (its M-RoPE comes from `image_grid_thw`) and because a 40-line loop can be stepped through
with `breakpoint()`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

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
    """Per row: True when the row stopped by itself (EOS or a stop string) before max_new_tokens."""
    logprobs: list[torch.Tensor] | None = None
    """Per row: (T_i,) fp32 log-prob of each generated token under softmax(logits / T) over the
    non-suppressed vocabulary (T = 1 when greedy), before top-k / top-p truncation."""
    stop_reasons: list[str] | None = None
    """Per row: "eos", "stop_string" (the completion ends with the token that completed one) or "length"."""


STOP_TAIL_SLACK = 4
"""Extra tokens in the decoded tail that a stop string is looked for in (`generate`): a string of n characters
ends in the last n tokens, plus a few for tokens that decode to nothing (special tokens) or to a part of a
multi-byte character."""


def _stop_hits(tokenizer, out: torch.Tensor, t: int, live: torch.Tensor, stop_strings: Sequence[str],
               window: int) -> torch.Tensor:
    """(B, T_max) ids written so far (columns 0..t), (B,) rows still live -> (B,) rows whose decoded tail
    (the last `window` ids) now contains a stop string. Rows not live are never hit."""
    hit = torch.zeros_like(live)  # (B,) bool
    rows = live.nonzero().flatten().tolist()
    if not rows:
        return hit
    tails = out[rows, max(0, t + 1 - window) : t + 1].tolist()  # (R, <= window)
    texts = tokenizer.batch_decode(tails, skip_special_tokens=True)
    for r, text in zip(rows, texts):
        if any(s in text for s in stop_strings):
            hit[r] = True
    return hit


def token_logprobs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(..., V) logits -> (..., V) fp32 log-probs of the tempered distribution (T <= 0 is read as 1, greedy)."""
    t = temperature if temperature > 0 else 1.0
    return torch.log_softmax(logits.float() / t, dim=-1)


LOGPROB_CHUNK = 256
"""Default `chunk_size` of `completion_logprobs`: completion positions (rows x tokens flattened, padding
skipped) whose logits exist at once. Counted over the flattened batch, not per row, so the bound does not
grow with the batch or the completion length: ~5 fp32 (chunk, V) copies live in a chunk's backward
(measured, tests/test_logprob_chunks.py), 5 x 256 x 151,936 x 4 B = 0.78 GB at Qwen2.5's vocabulary,
against 3 x rows x T x V x 4 B unchunked (4 x 512 tokens: 3.7 GB). At 7B (D = 3,584) one chunk's head
matmul is still ~0.28 TFLOP, enough to fill a GPU, so the chunking costs no throughput; the recomputation
costs one extra head forward (~7 % of a 7B model's FLOPs per token, on the completion only)."""


def _head_logits(head: torch.nn.Module | torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """(n, D) hidden states -> (n, V) logits in the head's (or autocast's) dtype."""
    if isinstance(head, torch.Tensor):
        return F.linear(hidden, head)  # head: (V, D) weight
    return head(hidden)  # the module itself, so FSDP / ZeRO-3 hooks and LoRA on the head apply


def _chunk_logprobs(
    hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module | torch.Tensor, temperature: float,
    suppressed: torch.Tensor | None,
) -> torch.Tensor:
    """One chunk: (n, D) hidden, (n,) ids -> (n,) fp32 log p(id) under softmax(head(h) / T), suppressed ids out."""
    logits = _head_logits(head, hidden).float()  # (n, V) fp32
    if temperature != 1.0:
        logits = logits / temperature  # (n, V)
    if suppressed is not None:
        logits = logits.index_fill(-1, suppressed, float("-inf"))  # (n, V)
    picked = logits.gather(-1, targets[:, None]).squeeze(-1)  # (n,)
    return picked - torch.logsumexp(logits, dim=-1)  # (n,)


def chunked_token_logprobs(
    hidden: torch.Tensor,
    head: torch.nn.Module | torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    suppressed_ids: torch.Tensor | Sequence[int] | None = None,
    chunk: int = LOGPROB_CHUNK,
    recompute: bool | None = None,
) -> torch.Tensor:
    """Selective log-softmax: (..., D) final hidden states, (...) target ids -> (...) fp32 log-probs.

    Equal (to float rounding) to `token_logprobs(head(hidden) [suppressed = -inf], T).gather(targets)`, but the
    head runs on `chunk` flattened positions at a time, so no (..., V) tensor ever exists: per chunk,
    logits_c = head(h_c).float() / T, suppressed columns -inf, logp_c = logits_c[target] - logsumexp(logits_c).

    head: the output projection, a module (called as is: keeps FSDP / ZeRO-3 gathering and LoRA) or a
        (V, D) weight. Its output is cast to fp32 after the matmul, as `generate` does with `lm_forward`'s
        logits, so rollout and re-scoring agree to rounding.
    temperature: T <= 0 reads as 1 (greedy), as in `token_logprobs`.
    suppressed_ids: vocabulary ids renormalised away (None or empty: the whole vocabulary).
    chunk: positions per head call (>= 1); `chunk >= N` is one chunk.
    recompute: wrap each chunk in a non-reentrant `torch.utils.checkpoint`, so autograd saves only the
        chunk's (n, D) input and recomputes its (n, V) logits in the backward (without it every chunk's
        logits stay alive until the backward and chunking saves nothing). None = exactly when a gradient
        can flow (grad mode on and the hidden states or the head require grad).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 position, got {chunk}; pass e.g. LOGPROB_CHUNK ({LOGPROB_CHUNK})")
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree: "
                         "targets must have hidden's shape without its last (feature) dimension")
    lead = targets.shape
    flat_h = hidden.reshape(-1, hidden.shape[-1])  # (N, D)
    flat_t = targets.reshape(-1).to(device=hidden.device, dtype=torch.long)  # (N,)
    t = temperature if temperature > 0 else 1.0
    suppressed = None
    if suppressed_ids is not None and len(suppressed_ids) > 0:
        suppressed = torch.as_tensor(suppressed_ids, dtype=torch.long, device=hidden.device)  # (S,)
    if recompute is None:
        head_grad = head.requires_grad if isinstance(head, torch.Tensor) else any(
            p.requires_grad for p in head.parameters())
        recompute = torch.is_grad_enabled() and (hidden.requires_grad or head_grad)
    pieces = []
    for h_c, t_c in zip(flat_h.split(chunk), flat_t.split(chunk)):  # (n, D), (n,); one empty chunk when N = 0
        if recompute:
            pieces.append(checkpoint(_chunk_logprobs, h_c, t_c, head, t, suppressed, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(h_c, t_c, head, t, suppressed))
    return torch.cat(pieces).reshape(lead)  # (...)


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


KV_CACHES = ("static", "dynamic")
"""`generate(kv_cache=...)`: "static" (default) preallocates every layer's keys / values for prompt +
max_new_tokens and writes each step in place (transformers' StaticCache; masking pads the 2-D mask with
zeros over the unwritten slots); "dynamic" grows them by concatenation every step (DynamicCache: a copy of
the whole cache per token, per layer), the reference the tests compare against."""


def _new_cache(adapter: ModelAdapter, kind: str, max_len: int):
    """An empty KV cache of `kind` (KV_CACHES) for the adapter's language model, `max_len` tokens long."""
    from transformers import DynamicCache, StaticCache

    text_cfg = adapter.model.config.get_text_config()
    if kind == "static":
        return StaticCache(config=text_cfg, max_cache_len=max_len)
    if kind == "dynamic":
        return DynamicCache(config=text_cfg)
    raise ValueError(f"kv_cache={kind!r}: expected one of {KV_CACHES}")


def group_rows(n_prompts: int, n: int) -> torch.Tensor:
    """(n_prompts * n,) prompt index of each generated row: prompt i's n samples are rows i * n .. i * n + n - 1
    (0, 0, 1, 1, ... for n = 2), the layout of passing every prompt n times in a row."""
    return torch.arange(n_prompts).repeat_interleave(n)


@dataclass
class DecodeState:
    """A batch between two forwards: its KV cache and what the next decode step needs (`prefill`, `decode`).
    A = rows still in the cache (`alive`), B = rows of the batch."""

    cache: Any
    """The transformers Cache (StaticCache or DynamicCache) of the A rows."""
    logits: torch.Tensor
    """(A, 1, V) next-token logits of the A rows."""
    mask: torch.Tensor
    """(A, Lc) attention mask over the cache's Lc columns (0 = padding or evicted)."""
    nxt: torch.Tensor
    """(B,) position of each row's generated token 0 (the next one is at nxt + tokens generated)."""
    alive: torch.Tensor
    """(A,) batch row (0..B-1) of each cache row."""
    fed: int = 0
    """Generated tokens fed back so far (`decode` steps): cache column Lc - fed + k holds generated token k."""


def prefill(adapter: ModelAdapter, seqs: list[SequenceInputs], max_new_tokens: int, kv_cache: str = "static",
            samples_per_seq: int = 1) -> DecodeState:
    """Prefill the left-padded batch of `seqs` once; with samples_per_seq = n the cache rows of each prompt are
    then repeated n times (row i * n + j = sample j of seqs[i], `group_rows`)."""
    if samples_per_seq < 1:
        raise ValueError(f"samples_per_seq must be >= 1, got {samples_per_seq}")
    embeds, positions, mask = collate(seqs)  # (B0, L, D), (P, B0, L), (B0, L)
    device = embeds.device
    cache = _new_cache(adapter, kv_cache, mask.shape[1] + max_new_tokens)
    logits, cache = adapter.lm_forward(embeds, positions, mask, cache, logits_to_keep=1)  # (B0, 1, V)
    nxt = next_positions(positions, mask)  # (B0,)
    if samples_per_seq > 1:  # one prefill per distinct prompt, its cache rows repeated for the group
        rep = group_rows(embeds.shape[0], samples_per_seq).to(device)  # (B,)
        cache.reorder_cache(rep)
        logits, mask, nxt = logits[rep], mask[rep], nxt[rep]
    return DecodeState(cache, logits, mask, nxt, torch.arange(logits.shape[0], device=device))


@torch.no_grad()
def generate(
    adapter: ModelAdapter,
    seqs: list[SequenceInputs],
    sampling: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
    sync: Callable[[bool], bool] | None = None,
    stop_strings: Sequence[str] = (),
    samples_per_seq: int = 1,
    kv_cache: str = "static",
    compact: bool = True,
) -> Generation:
    """Decode a batch of assembled sequences with a KV cache: `prefill`, then `decode`.

    samples_per_seq: n completions per sequence (a rollout group): each distinct prompt is prefilled ONCE and
    its cache rows repeated n times; the result has len(seqs) * n rows, row i * n + j = sample j of seqs[i]
    (what passing every sequence n times would give, without n prefills).

    stop_strings: a row stops (like at EOS, but its completion has no EOS) at the first token after which
    its decoded tail contains one of them; checked per row, so rows stop independently. Empty (the default,
    and training): EOS / max_new_tokens only.

    kv_cache: "static" (preallocated, written in place) or "dynamic" (grown by concatenation); KV_CACHES.
    compact: a finished row leaves the batch (its cache rows are dropped, `Cache.reorder_cache`) at the step
    it finishes, so the remaining rows decode alone; False keeps feeding it pad tokens (the reference).
    Neither changes a generated token beyond float rounding of a smaller batch (tests/test_engine.py).

    sync: for sharded weights (FSDP, ZeRO-3) every rank must make the same number of forward calls;
    `sync(local_done) -> all_done` is called once per token and the loop runs until every rank is done
    (a rank whose rows have all finished keeps one of them in the batch, fed pad tokens, as transformers'
    `synced_gpus`). None: the adapter's own `generation_sync` (the trainer's `PolicyView` sets it under
    sharded weights), else stop when local rows are. One host sync per token remains (`done` read to stop,
    to compact and to check stop strings); the decode step's forward dominates it at any real model size.
    """
    cfg = sampling or SamplingConfig()
    state = prefill(adapter, seqs, cfg.max_new_tokens, kv_cache, samples_per_seq)
    return decode(adapter, state, cfg, generator, sync, stop_strings, compact)


@torch.no_grad()
def decode(
    adapter: ModelAdapter,
    state: DecodeState,
    sampling: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
    sync: Callable[[bool], bool] | None = None,
    stop_strings: Sequence[str] = (),
    compact: bool = True,
) -> Generation:
    """Sample up to max_new_tokens per row from `state` (see `generate` for the arguments). `state` is left
    as the loop ends (its cache holds the fed tokens, `state.fed` counts them), so a caller may change the
    cache and decode on (`vitos.single_pass`)."""
    sync = sync if sync is not None else getattr(adapter, "generation_sync", None)
    cfg = sampling or SamplingConfig()
    device = state.logits.device
    n_rows = adapter.num_position_rows
    suppressed = torch.tensor(adapter.suppressed_token_ids, dtype=torch.long, device=device)
    eos = torch.tensor(adapter.eos_token_ids, dtype=torch.long, device=device)
    pad_id = adapter.pad_token_id
    stop_strings = [s for s in stop_strings if s]
    window = max((len(s) for s in stop_strings), default=0) + STOP_TAIL_SLACK  # tail ids decoded per live row

    b = state.nxt.shape[0]
    done = torch.ones(b, dtype=torch.bool, device=device)  # (B,) rows not in the cache count as done
    done[state.alive] = False
    out = torch.full((b, cfg.max_new_tokens), pad_id, dtype=torch.long, device=device)
    out_lp = torch.zeros(b, cfg.max_new_tokens, dtype=torch.float32, device=device)
    lengths = torch.zeros(b, dtype=torch.long, device=device)
    lengths[state.alive] = cfg.max_new_tokens
    by_stop = torch.zeros(b, dtype=torch.bool, device=device)  # (B,) rows ended by a stop string
    ended = torch.zeros(b, dtype=torch.bool, device=device)  # (B,) rows that ended by EOS or a stop string
    for t in range(cfg.max_new_tokens):
        alive = state.alive
        step_logits = state.logits[:, -1].float()  # (A, V)
        if suppressed.numel():
            step_logits[:, suppressed] = float("-inf")
        was_done = done[alive]  # (A,)
        tok = _pick(step_logits, cfg, generator)  # (A,)
        tok = torch.where(was_done, torch.full_like(tok, pad_id), tok)
        out[alive, t] = tok
        out_lp[alive, t] = token_logprobs(step_logits, cfg.temperature).gather(-1, tok[:, None]).squeeze(-1)
        hit = torch.isin(tok, eos) & ~was_done  # (A,)
        if stop_strings:
            live = torch.zeros(b, dtype=torch.bool, device=device)
            live[alive] = ~was_done & ~hit
            hit_stop = _stop_hits(adapter.tokenizer, out, t, live, stop_strings, window)[alive]  # (A,)
            by_stop[alive] |= hit_stop
            hit = hit | hit_stop
        lengths[alive] = torch.where(hit, torch.full_like(tok, t + 1), lengths[alive])
        ended[alive] |= hit
        done[alive] = was_done | hit
        local_done = bool(done.all())
        if (sync(local_done) if sync is not None else local_done) or t == cfg.max_new_tokens - 1:
            break
        if compact and bool(done[alive].any()):  # finished rows leave the batch (one stays if all did: sync)
            stay = (~done[alive]).nonzero().flatten()  # (A',)
            stay = stay if stay.numel() else torch.zeros(1, dtype=torch.long, device=device)
            if stay.numel() < alive.numel():
                state.cache.reorder_cache(stay)
                state.alive, state.mask, tok = alive[stay], state.mask[stay], tok[stay]
        a = state.alive.numel()
        step_pos = (state.nxt[state.alive] + t).view(1, a, 1).expand(n_rows, a, 1)  # (P, A, 1)
        state.mask = torch.cat([state.mask, torch.ones(a, 1, dtype=state.mask.dtype, device=device)], dim=1)
        state.logits, state.cache = adapter.lm_forward(adapter.embed_tokens(tok[:, None]), step_pos, state.mask,
                                                       state.cache)
        state.fed = t + 1
    token_ids = [out[i, : int(lengths[i])].cpu() for i in range(b)]
    logprobs = [out_lp[i, : int(lengths[i])].cpu() for i in range(b)]
    texts = adapter.tokenizer.batch_decode(token_ids, skip_special_tokens=True)
    reasons = ["stop_string" if s else "eos" if e else "length" for e, s in zip(ended.tolist(), by_stop.tolist())]
    return Generation(token_ids, texts, ended.cpu().tolist(), logprobs, reasons)


def evict(state: DecodeState, keep: torch.Tensor) -> None:
    """Drop cache columns in place: (A, Lc) bool `keep` per cache row; each row's kept columns move to the
    right end (left padding, mask 0), so rows with different counts share one (A, Lk) cache. Only a
    DynamicCache can shrink (`prefill(kv_cache="dynamic")`)."""
    from transformers import DynamicCache

    if not isinstance(state.cache, DynamicCache):
        raise TypeError("evict needs a DynamicCache: prefill(..., kv_cache='dynamic')")
    if tuple(keep.shape) != tuple(state.mask.shape):
        raise ValueError(f"keep {tuple(keep.shape)} must match the cache mask {tuple(state.mask.shape)}")
    keep = keep.bool() & state.mask.bool()  # (A, Lc) a padding column is never kept
    counts = keep.sum(1)  # (A,)
    lk = int(counts.max())
    # target column of each kept entry: right-aligned, in order
    dest = lk - counts[:, None] + keep.long().cumsum(1) - 1  # (A, Lc), valid where keep
    rows, cols = keep.nonzero(as_tuple=True)  # (N,), (N,)
    for layer in state.cache.layers:
        for name in ("keys", "values"):
            old = getattr(layer, name)  # (A, H, Lc, hd)
            new = old.new_zeros(old.shape[0], old.shape[1], lk, old.shape[3])  # (A, H, Lk, hd)
            new[rows, :, dest[rows, cols]] = old[rows, :, cols]
            setattr(layer, name, new)
    mask = torch.zeros(keep.shape[0], lk, dtype=state.mask.dtype, device=state.mask.device)  # (A, Lk)
    mask[rows, dest[rows, cols]] = 1
    state.mask = mask


def append(adapter: ModelAdapter, state: DecodeState, embeds: torch.Tensor, positions: torch.Tensor,
           block_mask: torch.Tensor) -> None:
    """Feed a block of tokens to every cache row, in place: (A, La, D) embeddings at (P, A, La) positions,
    (A, La) mask (0 = a row's padding inside the block); `state.logits` becomes the block's last column's."""
    state.mask = torch.cat([state.mask, block_mask.to(state.mask.dtype)], dim=1)  # (A, Lk + La)
    logits, state.cache = adapter.lm_forward(embeds, positions, state.mask, state.cache, logits_to_keep=1)
    state.logits = logits  # (A, 1, V)


def completion_logprobs(
    adapter: ModelAdapter,
    seqs: list[SequenceInputs],
    completions: list[torch.Tensor],
    temperature: float = 1.0,
    suppress: bool = False,
    chunk_size: int = LOGPROB_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of `completions[i]` given `seqs[i]` (with gradients when enabled).

    temperature: score softmax(logits / T), the distribution `generate` sampled at T (<= 0 reads as 1).
    suppress: renormalise over the vocabulary `generate` may sample (vision special tokens excluded).
    Both are what the RL policy is; the SFT loss uses the defaults (plain next-token log-probs).
    chunk_size: completion positions (all rows' real tokens, flattened) projected onto the vocabulary at
    once (`chunked_token_logprobs`, LOGPROB_CHUNK); the values do not depend on it.

    Layout: [left pad | prompt | completion | right pad]; completion token k of row b sits at column
    Lp + k with position next_positions[b] + k, and is predicted by the hidden state at column Lp + k - 1.
    Returns logp (B, T) fp32 (0 on padding) and mask (B, T) (1 on real completion tokens).
    Under a wrapped policy (DDP / FSDP / ZeRO-3) call it inside `Policy.forward` (op="logprobs"): the head
    is called once per chunk, and again in the backward.
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
    # Only the last T + 1 hidden states are kept, and only the T real-token predictors of each row reach
    # the head: the vocabulary projection of the prompt (thousands of visual tokens) and of the padding is
    # never computed.
    hidden, _ = adapter.lm_hidden(full_embeds, full_pos, full_mask, keep_last=t_max + 1)  # (B, T + 1, D)
    hidden = hidden[:, :-1]  # (B, T, D): column Lp - 1 + k predicts completion token k
    real = comp_mask.bool()  # (B, T)
    suppressed = adapter.suppressed_token_ids if suppress else None
    lp = chunked_token_logprobs(hidden[real], adapter.lm_head, comp[real], temperature, suppressed,
                                chunk_size)  # (N,), N = real completion tokens
    logp = torch.zeros(b, t_max, dtype=torch.float32, device=device).masked_scatter(real, lp)  # (B, T)
    return logp, comp_mask

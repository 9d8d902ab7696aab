"""The pruning engine against the unmodified transformers forward and a cache-free reference decoder."""

from __future__ import annotations

import pytest
import torch

from conftest import original_positions, plant_decode_after_length, random_image, reindexed
from vitos.engine import SamplingConfig, completion_logprobs, generate, group_rows
from vitos.pruning.boxes import boxes_to_keep_mask
from vitos.pruning.sparse import assemble, collate, next_positions

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Position checks run on the default tiny model AND its position-sensitive variant (conftest): the default
# random model barely depends on positions, so only the sensitive one makes them able to fail (the
# *_notices_* tests plant wrong positions and show each check fails on it).
MODELS = ["tiny_adapter", "sensitive_adapter"]
KEEP_RATIOS = [0.77, 0.5, 0.25]


def _same(seq):
    return seq


def _expanded_text(tok, question: str, n_tokens: list[int]) -> str:
    """What Qwen2_5_VLProcessor does: one <|image_pad|> per merged token, at the string level."""
    content = [{"type": "image"} for _ in n_tokens] + [{"type": "text", "text": question}]
    text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    parts = text.split("<|image_pad|>")
    assert len(parts) == len(n_tokens) + 1
    out = parts[0]
    for n, rest in zip(n_tokens, parts[1:]):
        out += "<|image_pad|>" * n + rest
    return out


def _keep_all_vs_transformers(ad, plant=_same):
    """(ours, ref) logits on every valid row: keep-all sequences through assemble + lm_forward (then
    `plant`ed) vs the unmodified transformers forward, which computes M-RoPE itself from image_grid_thw."""
    # Three prompts: different image sizes, one with two images, different text lengths -> left padding.
    images = [[random_image(224, 224, 0)], [random_image(280, 168, 1)], [random_image(112, 196, 2), random_image(140, 140, 3)]]
    questions = ["Is there a lesion?", "Which organ is shown in this scan, and is it enlarged today?", "Compare."]
    with torch.no_grad():
        enc = [ad.encode_images(ims) for ims in images]
        seqs = [plant(assemble(ad, ad.build_prompt(q, e), e)) for q, e in zip(questions, enc)]
        embeds, positions, mask = collate(seqs)
        ours, _ = ad.lm_forward(embeds, positions, mask)  # (B, L, V)

        tok = ad.tokenizer
        tok.padding_side = "left"
        texts = [_expanded_text(tok, q, [e.num_tokens for e in es]) for q, es in zip(questions, enc)]
        batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        flat = [im for ims in images for im in ims]
        pix = ad.image_processor(images=flat, return_tensors="pt")
        ref = ad.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            pixel_values=pix.pixel_values,
            image_grid_thw=pix.image_grid_thw,
            mm_token_type_ids=(batch.input_ids == ad.image_token_id).int(),
        ).logits
    assert ours.shape == ref.shape
    assert len({s.length for s in seqs}) == 3, "the prompts must differ in length so left padding is exercised"
    valid = mask.bool()
    assert torch.equal(valid, batch.attention_mask.bool())
    return ours[valid], ref[valid]


@pytest.mark.parametrize("model", MODELS)
def test_keep_all_forward_equals_unmodified_transformers_forward(model, request):
    ours, ref = _keep_all_vs_transformers(request.getfixturevalue(model))
    assert (ours - ref).abs().max().item() <= 1e-5


def test_keep_all_check_notices_reindexed_positions(sensitive_adapter):
    ours, ref = _keep_all_vs_transformers(sensitive_adapter, plant=reindexed)
    shift = (torch.log_softmax(ours, -1) - torch.log_softmax(ref, -1)).abs().max().item()
    assert shift > 1.0  # nats; the real check allows 1e-5 on the logits


def test_sensitive_model_notices_reindexed_kept_positions(tiny_adapter, sensitive_adapter):
    """The reason for the sensitive variant: one next-token distribution, a pruned image, kept tokens at their
    original positions vs re-indexed 0..L-1. The default random model barely moves; the sensitive one moves by nats."""
    def max_shift(ad):
        with torch.no_grad():
            enc = ad.encode_images([random_image(224, 224, 6)])
            keep = boxes_to_keep_mask([[0.1, 0.2, 0.6, 0.7]], enc[0].grid_hw)
            seq = assemble(ad, ad.build_prompt("Is it normal?", enc), enc, [keep])
            lps = [torch.log_softmax(ad.lm_forward(*collate([s]), logits_to_keep=1)[0][0, -1], -1)
                   for s in (seq, reindexed(seq))]
        return (lps[0] - lps[1]).abs().max().item()

    assert max_shift(tiny_adapter) < 0.05  # measured 0.002 nat: why a position test needs the sensitive model
    assert max_shift(sensitive_adapter) > 2.0  # measured 5.8 nats


def _reference_greedy(ad, embeds, positions, start: int, max_new: int) -> list[int]:
    """Feed the whole sequence + generated tokens every step, explicit positions (`positions` (3, L) for the
    prompt, then start, start + 1, ...), no cache, through the unmodified top-level HF forward."""
    embeds = embeds[None]  # (1, L, D)
    pos = positions[:, None]  # (3, 1, L)
    out: list[int] = []
    suppressed = set(ad.suppressed_token_ids)
    for t in range(max_new):
        with torch.no_grad():
            logits = ad.model(inputs_embeds=embeds, position_ids=pos, attention_mask=torch.ones(1, embeds.shape[1], dtype=torch.long)).logits
        last = logits[0, -1].clone()
        last[list(suppressed)] = float("-inf")
        nxt = int(last.argmax())
        out.append(nxt)
        if nxt in ad.eos_token_ids:
            break
        embeds = torch.cat([embeds, ad.embed_tokens(torch.tensor([[nxt]]))], dim=1)
        pos = torch.cat([pos, torch.full((3, 1, 1), start + t)], dim=2)
    return out


def _pruned_greedy(ad, keep_ratio, fusion, plant=_same) -> list[tuple[list[int], list[int]]]:
    """Per prompt (generated, reference): batched KV-cache `generate` on the assembled (then `plant`ed) pruned
    sequences vs the cache-free reference on the same embeddings with positions built WITHOUT assemble
    (`original_positions`) and decoding from the unpruned prompt's max position + 1."""
    images = [random_image(224, 224, 4), random_image(280, 196, 5)]
    with torch.no_grad():
        enc = ad.encode_images(images)
    seqs, refs, kept = [], [], []
    for i, (e, q) in enumerate(zip(enc, ["Is there a mass?", "Where is the lesion located in this image?"])):
        h, w = e.grid_hw
        g = torch.Generator().manual_seed(i)
        keep = torch.zeros(h * w, dtype=torch.bool)
        keep[torch.randperm(h * w, generator=g)[: max(1, round(keep_ratio * h * w))]] = True
        keep = keep.view(h, w)
        with torch.no_grad():
            prompt = ad.build_prompt(q, [e])
            seq = assemble(ad, prompt, [e], [keep], fusion=fusion, num_contextual=3)
        k, (start, _) = int(keep.sum()), prompt.image_spans[0]
        extra = seq.positions[:, start + k : start + seq.n_visual_kept]  # contextual's extra tokens (none otherwise)
        refs.append((seq.embeds, original_positions(prompt, [keep], [extra]), int(prompt.positions.max()) + 1))
        seqs.append(plant(seq))
        kept.append(k)
    n_extra = 3 if fusion == "contextual" else 0
    assert [s.n_visual_kept for s in seqs] == [k + n_extra for k in kept]
    gen = generate(ad, seqs, SamplingConfig(max_new_tokens=12))  # batched, KV cache, left padding
    return [(got.tolist(), _reference_greedy(ad, *ref, 12)) for got, ref in zip(gen.token_ids, refs)]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("keep_ratio", KEEP_RATIOS)
@pytest.mark.parametrize("fusion", ["none", "merge", "contextual"])
def test_pruned_greedy_generation_matches_stepwise_reference(model, keep_ratio, fusion, request):
    for got, ref in _pruned_greedy(request.getfixturevalue(model), keep_ratio, fusion):
        assert got == ref


@pytest.mark.parametrize("plant", ["reindexed", "decode_after_length"])
@pytest.mark.parametrize("keep_ratio", KEEP_RATIOS)
@pytest.mark.parametrize("fusion", ["none", "merge", "contextual"])
def test_pruned_greedy_check_notices_wrong_positions(sensitive_adapter, keep_ratio, fusion, plant, monkeypatch):
    """Liveness: with re-indexed kept positions, or decoding resumed at the sequence length, the check above fails."""
    if plant == "decode_after_length":
        plant_decode_after_length(monkeypatch)
    pairs = _pruned_greedy(sensitive_adapter, keep_ratio, fusion, reindexed if plant == "reindexed" else _same)
    assert [got for got, _ in pairs] != [ref for _, ref in pairs]


def _decode_positions(ad, plant=_same) -> list[tuple[str, object, object]]:
    """(what, observed, expected) for a box-pruned prompt: kept tokens and the text after the image keep the
    unpruned prompt's positions, and decoding resumes at max position + 1 on every M-RoPE row."""
    with torch.no_grad():
        enc = ad.encode_images([random_image(224, 224, 6)])
    prompt = ad.build_prompt("Is it normal?", enc)
    keep = boxes_to_keep_mask([[0.0, 0.0, 0.5, 0.5]], enc[0].grid_hw)
    seq = plant(assemble(ad, prompt, enc, [keep], fusion="none"))
    # Original positions, never re-indexed: the kept image tokens are a subset of the unpruned ones and
    # the text after the image keeps its unpruned positions, so decoding resumes where it would have.
    start, end = prompt.image_spans[0]
    kept_pos = prompt.positions[:, start:end][:, keep.view(-1)]
    checks = [
        ("kept image positions", seq.positions[:, start : start + kept_pos.shape[1]].tolist(), kept_pos.tolist()),
        ("text after the image", seq.positions[:, start + kept_pos.shape[1] :].tolist(),
         prompt.positions[:, end:].tolist()),
        ("length", seq.length, prompt.input_ids.numel() - (end - start) + int(keep.sum())),
    ]

    seen = []
    original = ad.lm_forward

    class Recorder:
        def __getattr__(self, name):
            return getattr(ad, name)

        def lm_forward(self, embeds, positions, mask, cache=None, logits_to_keep=0):
            seen.append(positions.clone())
            return original(embeds, positions, mask, cache, logits_to_keep)

    generate(Recorder(), [seq], SamplingConfig(max_new_tokens=4))
    top = int(prompt.positions.max())
    checks.append(("decode steps", len(seen) > 2, True))
    checks += [(f"decode step {t}", s.flatten().tolist(), [top + t] * 3) for t, s in enumerate(seen[1:3], 1)]
    return checks


@pytest.mark.parametrize("model", MODELS)
def test_decode_positions_continue_after_max_kept_position(model, request):
    for what, observed, expected in _decode_positions(request.getfixturevalue(model)):
        assert observed == expected, what


@pytest.mark.parametrize("plant", ["reindexed", "decode_after_length"])
def test_decode_positions_check_notices_wrong_positions(sensitive_adapter, plant, monkeypatch):
    if plant == "decode_after_length":
        plant_decode_after_length(monkeypatch)
    checks = _decode_positions(sensitive_adapter, reindexed if plant == "reindexed" else _same)
    assert any(observed != expected for _, observed, expected in checks)


def test_next_positions_hand_computed():
    positions = torch.tensor([[[0, 0, 5, 6, 9]], [[0, 0, 5, 7, 9]], [[0, 0, 5, 8, 9]]])  # (3, 1, 5)
    positions = torch.cat([positions, torch.tensor([[[1, 2, 3, 4, 0]]] * 3)], dim=1)  # (3, 2, 5)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert next_positions(positions, mask).tolist() == [10, 5]


def test_vision_special_tokens_are_never_sampled(tiny_adapter):
    ad = tiny_adapter
    with torch.no_grad():
        enc = ad.encode_images([random_image(112, 112, 7)])
        seq = assemble(ad, ad.build_prompt("q", enc), enc)
    banned = ad.suppressed_token_ids
    assert ad.image_token_id in banned

    class Tempting:
        """Makes the image placeholder the most likely token by a wide margin."""

        def __getattr__(self, name):
            return getattr(ad, name)

        def lm_forward(self, *a, **k):
            logits, cache = ad.lm_forward(*a, **k)
            logits = logits.clone()
            logits[..., banned] += 1e4
            return logits, cache

    for temperature in (0.0, 1.0):
        gen = generate(Tempting(), [seq], SamplingConfig(max_new_tokens=16, temperature=temperature),
                       generator=torch.Generator().manual_seed(0))
        assert not set(gen.token_ids[0].tolist()) & set(banned)


def _completion_vs_reference(ad, plant=_same):
    """Greedy completions of a pruned (merge) and a whole prompt, re-scored by `completion_logprobs` on the
    assembled (then `plant`ed) sequences, vs the cache-free reference: the same embeddings at positions built
    WITHOUT assemble, completion token k at the unpruned prompt's max position + 1 + k.
    Returns [(logp, ref)] per row, the completion mask, the completions and the sequences."""
    with torch.no_grad():
        enc = ad.encode_images([random_image(224, 224, 8), random_image(168, 168, 9)])
    h, w = enc[0].grid_hw
    keep = torch.zeros(h, w, dtype=torch.bool)
    keep[1 : h // 2, w // 3 :] = True
    keeps = [keep, None]
    prompts = [ad.build_prompt(q, [e]) for q, e in zip(["a?", "longer question here?"], enc)]
    with torch.no_grad():
        clean = [assemble(ad, p, [e], [k], fusion="merge") for p, e, k in zip(prompts, enc, keeps)]
    seqs = [plant(s) for s in clean]
    gen = generate(ad, seqs, SamplingConfig(max_new_tokens=6))
    logp, mask = completion_logprobs(ad, seqs, gen.token_ids)
    assert logp.shape == mask.shape == (2, max(t.numel() for t in gen.token_ids))
    pairs = []
    for b, (seq, prompt, k, toks) in enumerate(zip(clean, prompts, keeps, gen.token_ids)):
        embeds = torch.cat([seq.embeds, ad.embed_tokens(toks[:-1])], dim=0)[None]
        start = int(prompt.positions.max()) + 1
        decode = torch.arange(start, start + toks.numel() - 1).expand(3, -1)
        pos = torch.cat([original_positions(prompt, [k]), decode], dim=1)[:, None]  # (3, 1, L + T - 1)
        ones = torch.ones(1, embeds.shape[1], dtype=torch.long)  # explicit: the pruned gap is not a packing boundary
        with torch.no_grad():
            logits = ad.model(inputs_embeds=embeds, position_ids=pos, attention_mask=ones).logits
        ref = torch.log_softmax(logits[0].float(), -1)
        ref_lp = ref[seq.length - 1 :].gather(-1, toks[:, None]).squeeze(-1)
        pairs.append((logp[b, : toks.numel()], ref_lp))
    return pairs, mask, gen.token_ids, seqs


@pytest.mark.parametrize("model", MODELS)
def test_completion_logprobs_match_the_decoder_and_carry_gradients(model, request):
    ad = request.getfixturevalue(model)
    pairs, mask, completions, seqs = _completion_vs_reference(ad)
    # Every completion token's log-prob is the cache-free reference decoder's, on every row.
    for b, (logp, ref_lp) in enumerate(pairs):
        assert torch.allclose(logp, ref_lp, atol=1e-5)
        assert mask[b].sum() == completions[b].numel()
    lp, _ = completion_logprobs(ad, seqs[1:], completions[1:])
    lp.sum().backward()
    grad = ad.model.lm_head.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    ad.model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("plant", ["reindexed", "decode_after_length"])
def test_completion_logprobs_check_notices_wrong_positions(sensitive_adapter, plant, monkeypatch):
    if plant == "decode_after_length":
        plant_decode_after_length(monkeypatch)
    with torch.no_grad():
        pairs, *_ = _completion_vs_reference(sensitive_adapter, reindexed if plant == "reindexed" else _same)
    assert max((logp - ref).abs().max().item() for logp, ref in pairs) > 0.1  # nats; the real check allows 1e-5


# ------------------------------------------------------------------ rollouts without repeated work
class _Eos:
    """The adapter with another EOS set: makes rows of a random model finish at different steps."""

    def __init__(self, adapter, eos: list[int]):
        self._a, self._eos = adapter, eos

    def __getattr__(self, name):
        return getattr(self._a, name)

    @property
    def eos_token_ids(self):
        return self._eos


def _pruned_seqs(ad, n: int = 3):
    images = [random_image(224, 224, 10 + i) for i in range(n)]
    questions = ["Is there a mass?", "Where is the lesion located in this image?", "Normal?"][:n]
    with torch.no_grad():
        enc = ad.encode_images(images)
        seqs = []
        for i, (e, q) in enumerate(zip(enc, questions)):
            keep = boxes_to_keep_mask([[0.1 * i, 0.0, 0.6 + 0.1 * i, 0.7]], e.grid_hw)
            seqs.append(assemble(ad, ad.build_prompt(q, [e]), [e], [keep], fusion="merge"))
    return seqs


def _staggered_eos(ad, seqs, max_new: int) -> list[int]:
    """An EOS set under which the rows' greedy completions end at different steps (one never does)."""
    ref = generate(ad, seqs, SamplingConfig(max_new_tokens=max_new), kv_cache="dynamic", compact=False)
    rows = [r.tolist() for r in ref.token_ids]
    eos = [rows[0][2], rows[1][6]]  # row 0 ends by step 3, row 1 by step 7 unless it meets rows[0][2] first
    if all(any(t in eos for t in r) for r in rows):
        pytest.skip("every row meets the chosen EOS set; the fixture needs a row that runs to the limit")
    return eos


def _assert_same(a, b, what: str):
    assert [x.tolist() for x in a.token_ids] == [x.tolist() for x in b.token_ids], what
    assert a.stopped == b.stopped and a.stop_reasons == b.stop_reasons, what
    for x, y in zip(a.logprobs, b.logprobs):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


def test_static_cache_and_compaction_match_the_dynamic_reference(sensitive_adapter):
    """Preallocated cache + finished rows leaving the batch == the concatenating, fixed-batch engine: same
    tokens, same stop reasons, log-probs within 1e-5, with rows that end at different steps."""
    seqs = _pruned_seqs(sensitive_adapter)
    ad = _Eos(sensitive_adapter, _staggered_eos(sensitive_adapter, seqs, 12))
    cfg = SamplingConfig(max_new_tokens=12)
    ref = generate(ad, seqs, cfg, kv_cache="dynamic", compact=False)
    lengths = sorted(len(r) for r in ref.token_ids)
    assert lengths[0] < lengths[-1] == 12  # rows really end at different steps, one at the limit
    for kv in ("static", "dynamic"):
        for compact in (True, False):
            _assert_same(generate(ad, seqs, cfg, kv_cache=kv, compact=compact), ref, f"{kv}, compact={compact}")


def test_compaction_check_notices_rows_mixed_up(sensitive_adapter, monkeypatch):
    """Liveness: a cache whose compaction keeps the wrong rows' keys / values fails the check above."""
    import vitos.engine

    seqs = _pruned_seqs(sensitive_adapter)
    ad = _Eos(sensitive_adapter, _staggered_eos(sensitive_adapter, seqs, 12))
    cfg = SamplingConfig(max_new_tokens=12)
    ref = generate(ad, seqs, cfg, kv_cache="dynamic", compact=False)
    make = vitos.engine._new_cache

    def wrong_rows(adapter, kind, max_len):
        cache = make(adapter, kind, max_len)
        keep = cache.reorder_cache

        def reorder(idx):  # a shrinking selection keeps the FIRST rows' cache instead of the live ones'
            return keep(idx if idx.numel() >= cache.layers[0].keys.shape[0] else torch.arange(idx.numel()))
        cache.reorder_cache = reorder
        return cache

    monkeypatch.setattr(vitos.engine, "_new_cache", wrong_rows)
    got = generate(ad, seqs, cfg, compact=True)
    assert [x.tolist() for x in got.token_ids] != [x.tolist() for x in ref.token_ids]


def test_one_prefill_per_prompt_equals_repeating_the_prompt(sensitive_adapter):
    """samples_per_seq = n: row i * n + j is sample j of seqs[i], as if every prompt were passed n times — the
    same tokens under greedy decoding and, drawn from one generator seed, under sampling (log-probs <= 1e-5)."""
    seqs = _pruned_seqs(sensitive_adapter)
    n = 3
    repeated = [s for s in seqs for _ in range(n)]
    greedy = SamplingConfig(max_new_tokens=8)
    _assert_same(generate(sensitive_adapter, seqs, greedy, samples_per_seq=n),
                 generate(sensitive_adapter, repeated, greedy, kv_cache="dynamic", compact=False), "greedy")
    hot = SamplingConfig(max_new_tokens=8, temperature=1.5)
    a = generate(sensitive_adapter, seqs, hot, torch.Generator().manual_seed(3), samples_per_seq=n, compact=False)
    b = generate(sensitive_adapter, repeated, hot, torch.Generator().manual_seed(3), kv_cache="dynamic", compact=False)
    _assert_same(a, b, "sampled")
    assert len({tuple(x.tolist()) for x in a.token_ids[:n]}) > 1  # the n samples of one prompt differ


def test_one_prefill_check_notices_groups_in_the_wrong_order(sensitive_adapter, monkeypatch):
    """Liveness: rows laid out 0,1,2,0,1,2 instead of 0,0,1,1,2,2 (`group_rows`) put other prompts' samples
    in a group, and the check above fails."""
    seqs = _pruned_seqs(sensitive_adapter)
    greedy = SamplingConfig(max_new_tokens=8)
    ref = generate(sensitive_adapter, [s for s in seqs for _ in range(3)], greedy, kv_cache="dynamic", compact=False)
    import vitos.engine

    monkeypatch.setattr(vitos.engine, "group_rows", lambda n_prompts, n: torch.arange(n_prompts).repeat(n))
    got = generate(sensitive_adapter, seqs, greedy, samples_per_seq=3)
    assert [x.tolist() for x in got.token_ids] != [x.tolist() for x in ref.token_ids]


def test_generate_rejects_unknown_cache_and_zero_samples(tiny_adapter):
    seqs = _pruned_seqs(tiny_adapter, 1)
    with pytest.raises(ValueError, match="kv_cache='paged'"):
        generate(tiny_adapter, seqs, SamplingConfig(max_new_tokens=2), kv_cache="paged")
    with pytest.raises(ValueError, match="samples_per_seq must be >= 1"):
        generate(tiny_adapter, seqs, SamplingConfig(max_new_tokens=2), samples_per_seq=0)


def test_group_rows_hand_computed():
    assert group_rows(3, 2).tolist() == [0, 0, 1, 1, 2, 2] and group_rows(2, 1).tolist() == [0, 1]

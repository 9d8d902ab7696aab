"""The pruning engine against the unmodified transformers forward and a cache-free reference decoder."""

from __future__ import annotations

import pytest
import torch

from conftest import random_image
from vitos.engine import SamplingConfig, completion_logprobs, generate
from vitos.pruning.boxes import boxes_to_keep_mask
from vitos.pruning.sparse import assemble, collate, next_positions


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


def test_keep_all_forward_equals_unmodified_transformers_forward(tiny_adapter):
    ad = tiny_adapter
    # Three prompts: different image sizes, one with two images, different text lengths -> left padding.
    images = [[random_image(224, 224, 0)], [random_image(280, 168, 1)], [random_image(112, 196, 2), random_image(140, 140, 3)]]
    questions = ["Is there a lesion?", "Which organ is shown in this scan, and is it enlarged today?", "Compare."]
    with torch.no_grad():
        enc = [ad.encode_images(ims) for ims in images]
        seqs = [assemble(ad, ad.build_prompt(q, e), e) for q, e in zip(questions, enc)]
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
    assert (ours[valid] - ref[valid]).abs().max().item() <= 1e-5


def _reference_greedy(ad, seq, max_new: int) -> list[int]:
    """Feed the whole pruned sequence + generated tokens every step, explicit positions, no cache,
    through the unmodified top-level HF forward (inputs_embeds + position_ids)."""
    embeds = seq.embeds[None]  # (1, L, D)
    pos = seq.positions[:, None]  # (3, 1, L)
    start = int(seq.positions.max()) + 1
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


@pytest.mark.parametrize("keep_ratio", [0.77, 0.5, 0.25])
@pytest.mark.parametrize("fusion", ["none", "merge", "contextual"])
def test_pruned_greedy_generation_matches_stepwise_reference(tiny_adapter, keep_ratio, fusion):
    ad = tiny_adapter
    images = [random_image(224, 224, 4), random_image(280, 196, 5)]
    with torch.no_grad():
        enc = ad.encode_images(images)
    seqs, kept = [], []
    for i, (e, q) in enumerate(zip(enc, ["Is there a mass?", "Where is the lesion located in this image?"])):
        h, w = e.grid_hw
        g = torch.Generator().manual_seed(i)
        keep = torch.zeros(h * w, dtype=torch.bool)
        keep[torch.randperm(h * w, generator=g)[: max(1, round(keep_ratio * h * w))]] = True
        keep = keep.view(h, w)
        with torch.no_grad():
            seqs.append(assemble(ad, ad.build_prompt(q, [e]), [e], [keep], fusion=fusion, num_contextual=3))
        kept.append(int(keep.sum()))
    extra = 3 if fusion == "contextual" else 0
    assert [s.n_visual_kept for s in seqs] == [k + extra for k in kept]
    gen = generate(ad, seqs, SamplingConfig(max_new_tokens=12))  # batched, KV cache, left padding
    for seq, got in zip(seqs, gen.token_ids):
        assert got.tolist() == _reference_greedy(ad, seq, 12)


def test_decode_positions_continue_after_max_kept_position(tiny_adapter):
    ad = tiny_adapter
    with torch.no_grad():
        enc = ad.encode_images([random_image(224, 224, 6)])
    prompt = ad.build_prompt("Is it normal?", enc)
    keep = boxes_to_keep_mask([[0.0, 0.0, 0.5, 0.5]], enc[0].grid_hw)
    seq = assemble(ad, prompt, enc, [keep], fusion="none")
    # Original positions, never re-indexed: the kept image tokens are a subset of the unpruned ones and
    # the text after the image keeps its unpruned positions, so decoding resumes where it would have.
    start, end = prompt.image_spans[0]
    kept_pos = prompt.positions[:, start:end][:, keep.view(-1)]
    assert torch.equal(seq.positions[:, start : start + kept_pos.shape[1]], kept_pos)
    assert seq.length == prompt.input_ids.numel() - (end - start) + int(keep.sum())

    seen = []
    original = ad.lm_forward

    class Recorder:
        def __getattr__(self, name):
            return getattr(ad, name)

        def lm_forward(self, embeds, positions, mask, cache=None, logits_to_keep=0):
            seen.append(positions.clone())
            return original(embeds, positions, mask, cache, logits_to_keep)

    generate(Recorder(), [seq], SamplingConfig(max_new_tokens=4))
    first_decode = seen[1]  # (3, 1, 1)
    assert first_decode.flatten().tolist() == [int(seq.positions.max()) + 1] * 3
    assert int(seq.positions.max()) == int(prompt.positions.max())
    if len(seen) > 2:
        assert seen[2].flatten().tolist() == [int(seq.positions.max()) + 2] * 3


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


def test_completion_logprobs_match_the_decoder_and_carry_gradients(tiny_adapter):
    ad = tiny_adapter
    with torch.no_grad():
        enc = ad.encode_images([random_image(224, 224, 8), random_image(168, 168, 9)])
    seqs = [assemble(ad, ad.build_prompt(q, [e]), [e]) for q, e in zip(["a?", "longer question here?"], enc)]
    gen = generate(ad, seqs, SamplingConfig(max_new_tokens=6))
    logp, mask = completion_logprobs(ad, seqs, gen.token_ids)
    assert logp.shape == mask.shape == (2, max(t.numel() for t in gen.token_ids))
    # Greedy tokens are the argmax, so each must have the highest log-prob of its step: check by
    # recomputing one row's step logits with the cache-free reference decoder.
    for b, (seq, toks) in enumerate(zip(seqs, gen.token_ids)):
        embeds = torch.cat([seq.embeds, ad.embed_tokens(toks[:-1])], dim=0)[None]
        start = int(seq.positions.max()) + 1
        pos = torch.cat([seq.positions, torch.arange(start, start + toks.numel() - 1).expand(3, -1)], dim=1)[:, None]
        with torch.no_grad():
            ref = torch.log_softmax(ad.model(inputs_embeds=embeds, position_ids=pos).logits[0].float(), -1)
        ref_lp = ref[seq.length - 1 :].gather(-1, toks[:, None]).squeeze(-1)
        assert torch.allclose(logp[b, : toks.numel()], ref_lp, atol=1e-5)
        assert mask[b].sum() == toks.numel()
    seqs_grad = [assemble(ad, ad.build_prompt("a?", [enc[0]]), [enc[0]])]
    lp, _ = completion_logprobs(ad, seqs_grad, [gen.token_ids[0]])
    lp.sum().backward()
    grad = ad.model.lm_head.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    ad.model.zero_grad(set_to_none=True)

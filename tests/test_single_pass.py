"""Single-pass ViToS (vitos.single_pass) and the cache surgery it rests on (engine.evict / append)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from conftest import random_image
from vitos.engine import DecodeState, SamplingConfig, evict, generate
from vitos.pruning.boxes import boxes_to_keep_mask
from vitos.pruning.sparse import assemble
from vitos.single_pass import run_single_pass

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cache(keys: torch.Tensor) -> DynamicCache:
    """A one-layer DynamicCache holding `keys` (A, H, L, hd) as keys and -keys as values."""
    cache = DynamicCache()
    cache.update(keys, -keys, 0)
    return cache


def test_evict_right_aligns_each_rows_kept_columns_hand_computed():
    keys = torch.arange(2 * 5, dtype=torch.float32).view(2, 1, 5, 1)  # row 0: 0..4, row 1: 5..9
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])  # row 0 left-padded by one column
    state = DecodeState(_cache(keys), torch.zeros(2, 1, 3), mask, torch.zeros(2, dtype=torch.long), torch.arange(2))
    keep = torch.tensor([[True, True, False, True, False],  # column 0 is padding: never kept
                         [True, False, True, True, True]])
    evict(state, keep)
    layer = state.cache.layers[0]
    assert layer.keys[:, 0, :, 0].tolist() == [[0.0, 0.0, 1.0, 3.0], [5.0, 7.0, 8.0, 9.0]]
    assert layer.values[:, 0, :, 0].tolist() == [[0.0, 0.0, -1.0, -3.0], [-5.0, -7.0, -8.0, -9.0]]
    assert state.mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]


def test_evict_refuses_a_static_cache_and_a_wrong_mask():
    from transformers import StaticCache

    state = DecodeState(StaticCache.__new__(StaticCache), torch.zeros(1, 1, 3), torch.ones(1, 4, dtype=torch.long),
                        torch.zeros(1, dtype=torch.long), torch.arange(1))
    with pytest.raises(TypeError, match="kv_cache='dynamic'"):
        evict(state, torch.ones(1, 4, dtype=torch.bool))
    state.cache = _cache(torch.zeros(1, 1, 4, 1))
    with pytest.raises(ValueError, match="must match the cache mask"):
        evict(state, torch.ones(1, 3, dtype=torch.bool))


def _prompts(ad, n=3):
    from vitos.prompts import grounding_prompt

    images = [random_image(224, 224, 20 + i) for i in range(n)]
    with torch.no_grad():
        enc = [[e] for e in ad.encode_images(images)]
    qs = ["Is there a mass?", "Where is the lesion located in this image?", "Normal?"][:n]
    return [ad.build_prompt(grounding_prompt(q, None, "yes_no", 1), e) for q, e in zip(qs, enc)], enc


def _stop_tokens(ad, prompts, enc, max_new):
    """A stop string the random model writes at different steps in different rows (the fixture's </box>)."""
    seqs = [assemble(ad, p, e, None) for p, e in zip(prompts, enc)]
    ref = generate(ad, seqs, SamplingConfig(max_new_tokens=max_new), kv_cache="dynamic", compact=False)
    rows = [r.tolist() for r in ref.token_ids]
    for k in range(1, 6):
        text = ad.tokenizer.decode([rows[0][k]])
        hits = [next((j for j, t in enumerate(r) if text in ad.tokenizer.decode(r[: j + 1])), None) for r in rows]
        if text.strip() and hits[0] is not None and len({h for h in hits}) > 1:
            return text, ref, hits
    pytest.skip("no token of row 0 stops the rows at different steps")


def test_keep_all_single_pass_continues_exactly_the_full_grounding_output(sensitive_adapter):
    """With nothing pruned, evicting (the padding, the pads fed after a row stopped, the re-fed last token) and
    appending that token again must leave each row's cache as an unbroken decode would: the two decodes
    together write the same greedy tokens as one decode of the grounding prompt, row by row, in a batch
    whose rows stop at different steps."""
    ad = sensitive_adapter
    prompts, enc = _prompts(ad)
    stop, ref, _ = _stop_tokens(ad, prompts, enc, 24)
    outs = run_single_pass(ad, prompts, enc, lambda i, text: [None], SamplingConfig(max_new_tokens=12),
                           fusion="none", stop_strings=(stop,))
    assert sum(o.continued for o in outs) >= 2 and len({o.grounding_tokens for o in outs}) > 1
    for o, r, lp in zip(outs, ref.token_ids, ref.logprobs):
        assert o.token_ids.tolist() == r.tolist()[: o.token_ids.numel()]
        torch.testing.assert_close(o.logprobs, lp[: o.token_ids.numel()], atol=1e-4, rtol=0)
        assert o.token_ids.numel() == (o.grounding_tokens + 12 if o.continued else o.grounding_tokens)


def test_keep_all_check_notices_an_answer_decoded_at_the_wrong_position(sensitive_adapter, monkeypatch):
    """Liveness: the answer's first token one position late (the `nxt` bookkeeping off by one) fails the check."""
    import vitos.single_pass as sp

    ad = sensitive_adapter
    prompts, enc = _prompts(ad)
    stop, ref, _ = _stop_tokens(ad, prompts, enc, 24)
    real = sp.append

    def late(adapter, state, embeds, positions, block_mask):
        real(adapter, state, embeds, positions + 1, block_mask)

    monkeypatch.setattr(sp, "append", late)
    outs = run_single_pass(ad, prompts, enc, lambda i, text: [None], SamplingConfig(max_new_tokens=12),
                           fusion="none", stop_strings=(stop,))
    same = [o.token_ids.tolist() == r.tolist()[: o.token_ids.numel()] for o, r in zip(outs, ref.token_ids) if o.continued]
    assert same and not all(same)


@pytest.mark.parametrize("fusion", ["none", "merge", "contextual"])
def test_pruned_single_pass_counts_the_tokens_it_answers_from(tiny_adapter, fusion):
    ad = tiny_adapter
    prompts, enc = _prompts(ad, 2)
    stop, _, _ = _stop_tokens(ad, prompts, enc, 24)
    masks = [boxes_to_keep_mask([[0.0, 0.0, 0.5, 0.5]], e[0].grid_hw) for e in enc]
    outs = run_single_pass(ad, prompts, enc, lambda i, text: [masks[i]], SamplingConfig(max_new_tokens=6),
                           fusion=fusion, num_contextual=3, stop_strings=(stop,))
    assert any(o.continued for o in outs)
    for o, m in zip(outs, masks):
        if o.continued:  # answered from the kept tokens (+ the contextual ones)
            assert o.keeps[0] is m and o.visual_tokens_kept == int(m.sum()) + (3 if fusion == "contextual" else 0)
        else:  # ended in the first decode: answered from every token
            assert o.keeps == [None] and o.visual_tokens_kept == m.numel() and o.answer_text == ""


def test_pipeline_vitos_evict_answers_and_refuses_given_boxes(tiny_adapter):
    from vitos.data.sample import Sample
    from vitos.pipeline import run

    samples = [Sample(id="a", images=[random_image(112, 112, 1)], question="Is it normal?", answer="yes", kind="yes_no")]
    res = run(tiny_adapter, samples, "vitos-evict", sampling=SamplingConfig(max_new_tokens=6))
    assert res[0].grounding == "short" and res[0].visual_tokens_total > 0
    assert res[0].fallback is not None  # a random model writes no box: every token kept, the reason given
    with pytest.raises(ValueError, match="need mode 'vitos'"):
        run(tiny_adapter, samples, "vitos-evict", given_boxes=[None])
    with pytest.raises(ValueError, match="unknown mode"):
        run(tiny_adapter, samples, "vitos-evicted")

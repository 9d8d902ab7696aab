"""vLLM (through the vitos plugin) against the reference decode loop `vitos.engine.generate`, on pruned grids.

Each test would notice one bug: wrong positions (the re-indexed planted request must decode differently),
wrong rows or counts (pruned / fused grids, two boxes, two images, mixed batches), log-probs at the wrong
temperature or over the wrong vocabulary (sampled log-probs against `completion_logprobs`), and a weight sync
that does not take (outputs must follow the new weights exactly as the Python engine does).
"""

from __future__ import annotations

import pytest
import torch

from conftest import random_image
from vitos.engine import SamplingConfig, completion_logprobs, generate
from vitos.pruning.boxes import boxes_to_keep_mask
from vitos.pruning.sparse import assemble
from vitos.vllm_engine.requests import build_request

GREEDY = SamplingConfig(max_new_tokens=20)


def _cases(adapter):
    """(name, prompt, encoded, keeps, fusion) covering the shapes a rollout batch mixes."""
    one = adapter.encode_images([random_image(224, 168, seed=1)])
    two = adapter.encode_images([random_image(224, 168, seed=2), random_image(140, 196, seed=3)])
    p1 = adapter.build_prompt("Where is the lesion?", one)
    p2 = adapter.build_prompt("Compare the two scans.", two)
    box = boxes_to_keep_mask([[0.1, 0.2, 0.5, 0.7]], one[0].grid_hw)
    boxes = boxes_to_keep_mask([[0.0, 0.0, 0.3, 0.3], [0.6, 0.5, 1.0, 1.0]], one[0].grid_hw)
    k2 = [boxes_to_keep_mask([[0.2, 0.2, 0.6, 0.6]], two[0].grid_hw), None]
    return [("full", p1, one, None, "merge"), ("one box, none", p1, one, [box], "none"),
            ("one box, merge", p1, one, [box], "merge"), ("two boxes, contextual", p1, one, [boxes], "contextual"),
            ("two images, one pruned", p2, two, k2, "merge"), ("two images, full", p2, two, None, "merge")]


def test_greedy_tokens_equal_the_python_engine_in_one_mixed_batch(vllm_adapter, vllm_engine):
    cases = _cases(vllm_adapter)
    seqs = [assemble(vllm_adapter, p, e, k, fusion=f, num_contextual=3) for _, p, e, k, f in cases]
    ref = generate(vllm_adapter, seqs, GREEDY)
    reqs = [build_request(vllm_adapter, p, e, k, fusion=f, num_contextual=3) for _, p, e, k, f in cases]
    out = vllm_engine.generate_for(vllm_adapter, reqs, GREEDY)
    for (name, *_), a, b, la, lb in zip(cases, ref.token_ids, out.token_ids, ref.logprobs, out.logprobs):
        assert a.tolist() == b.tolist(), name
        assert torch.allclose(la, lb, atol=1e-4), name
    assert out.texts == ref.texts and out.stopped == ref.stopped


def test_reindexed_positions_decode_differently(vllm_adapter, vllm_engine):
    """The planted bug: the kept rows numbered as a compact grid. The fixture must notice it."""
    _, p, e, k, f = _cases(vllm_adapter)[1]
    ref = generate(vllm_adapter, [assemble(vllm_adapter, p, e, k, fusion=f)], GREEDY)
    req = build_request(vllm_adapter, p, e, k, fusion=f)
    m, w = req.counts[0], 4
    req.grid_index = torch.stack([torch.zeros(m, dtype=torch.long), torch.arange(m) // w, torch.arange(m) % w], 1)
    out = vllm_engine.generate_for(vllm_adapter, [req], GREEDY)
    assert out.token_ids[0].tolist() != ref.token_ids[0].tolist()


def test_sampled_logprobs_are_the_trainers_at_the_sampling_temperature(vllm_adapter, vllm_engine):
    """T = 0.7, n = 4 per request: vLLM's recorded log-probs = the trainer's teacher-forced log-probs."""
    cases = _cases(vllm_adapter)[1:3]
    sampling = SamplingConfig(max_new_tokens=16, temperature=0.7)
    reqs = [build_request(vllm_adapter, p, e, k, fusion=f) for _, p, e, k, f in cases]
    out = vllm_engine.generate_for(vllm_adapter, reqs, sampling, n=4, seed=123)
    assert len(out.token_ids) == 8 and len({tuple(t.tolist()) for t in out.token_ids}) > 2  # really sampled
    seqs = [assemble(vllm_adapter, p, e, k, fusion=f) for _, p, e, k, f in cases for _ in range(4)]
    lp, mask = completion_logprobs(vllm_adapter, seqs, out.token_ids, temperature=0.7, suppress=True)
    for i, rec in enumerate(out.logprobs):
        assert torch.allclose(lp[i, : rec.numel()].float(), rec, atol=1e-4), i
    wrong, _ = completion_logprobs(vllm_adapter, seqs, out.token_ids, temperature=1.0, suppress=True)  # planted: no T
    assert not all(torch.allclose(wrong[i, : r.numel()].float(), r, atol=1e-4) for i, r in enumerate(out.logprobs))
    again = vllm_engine.generate_for(vllm_adapter, reqs, sampling, n=4, seed=123)  # seeded: repeats itself
    assert [t.tolist() for t in again.token_ids] == [t.tolist() for t in out.token_ids]


def test_weight_sync_changes_outputs_exactly_as_the_new_weights_do(vllm_model_dir, vllm_engine):
    """Perturb the LM's weights, sync, and compare with the Python engine on the perturbed model; then restore."""
    from vitos.models import load_model
    from vitos.rl.policy import merged_weights

    ad = load_model(vllm_model_dir, dtype="float32", device="cpu")
    _, p, e, k, f = _cases(ad)[2]
    before = vllm_engine.generate_for(ad, [build_request(ad, p, e, k, fusion=f)], GREEDY).token_ids[0].tolist()
    original = {n: t.clone() for n, t in ad.model.state_dict().items()}
    torch.manual_seed(5)
    with torch.no_grad():
        for n, t in ad.model.named_parameters():
            if "language_model" in n:
                t.add_(0.05 * torch.randn_like(t))
    try:
        vllm_engine.load_weights(merged_weights({f"model.{n}": t for n, t in ad.model.state_dict().items()}, None))
        e2 = ad.encode_images([random_image(224, 168, seed=1)])  # vision untouched: the same features
        ref = generate(ad, [assemble(ad, p, e2, k, fusion=f)], GREEDY).token_ids[0].tolist()
        got = vllm_engine.generate_for(ad, [build_request(ad, p, e2, k, fusion=f)], GREEDY).token_ids[0].tolist()
        assert got == ref and got != before
    finally:
        vllm_engine.load_weights(original)
    assert vllm_engine.generate_for(ad, [build_request(ad, p, e, k, fusion=f)], GREEDY).token_ids[0].tolist() == before


def test_eos_and_stop_strings_stop_rows_like_the_python_engine(vllm_adapter, vllm_engine):
    """A stop string that the greedy completion contains: both engines stop after the same token."""
    cases = _cases(vllm_adapter)[:3]
    seqs = [assemble(vllm_adapter, p, e, k, fusion=f) for _, p, e, k, f in cases]
    full = generate(vllm_adapter, seqs, GREEDY)
    stop = full.texts[0][3:6]  # a substring of row 0's text
    assert stop.strip()
    ref = generate(vllm_adapter, seqs, GREEDY, stop_strings=[stop])
    reqs = [build_request(vllm_adapter, p, e, k, fusion=f) for _, p, e, k, f in cases]
    out = vllm_engine.generate_for(vllm_adapter, reqs, GREEDY, stop_strings=[stop])
    assert [t.tolist() for t in out.token_ids] == [t.tolist() for t in ref.token_ids]
    assert out.stop_reasons[0] == ref.stop_reasons[0] == "stop_string"
    assert out.texts == ref.texts


def test_a_non_qwen_model_is_refused_with_the_supported_family(vllm_adapter):
    class Llava:
        num_position_rows = 1

    with pytest.raises(ValueError, match="Qwen2.5-VL"):
        build_request(Llava(), None, [])

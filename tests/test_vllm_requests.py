"""vitos.vllm_engine.requests (no vLLM needed): a request feeds exactly the rows and positions of `assemble`.

The plugin (tests_vllm/, `bash .ci/vllm`) computes positions with `mrope_positions` and splices in
`image_embeds`; if these equal assemble's positions and visual rows, vLLM runs the sequence the Python engine
runs. Planted check: re-indexing the kept rows (grid_index = their rank) must break the equality.
"""

from __future__ import annotations

import pytest
import torch

from conftest import random_image
from vitos.pruning.boxes import boxes_to_keep_mask
from vitos.pruning.sparse import assemble, next_positions
from vitos.vllm_engine.requests import build_request, mrope_positions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _case(adapter, n_images=2):
    imgs = [random_image(224, 168, seed=1), random_image(140, 196, seed=2)][:n_images]
    enc = adapter.encode_images(imgs)
    prompt = adapter.build_prompt("Where is the lesion?", enc)
    keeps = [boxes_to_keep_mask([[0.1, 0.2, 0.5, 0.7]], e.grid_hw) for e in enc]
    keeps[-1] = None if n_images > 1 else keeps[-1]  # the second image whole: a mixed request
    return enc, prompt, keeps


@pytest.mark.parametrize("fusion", ["none", "merge", "contextual"])
def test_request_positions_and_rows_equal_assembles(sensitive_adapter, fusion):
    enc, prompt, keeps = _case(sensitive_adapter)
    seq = assemble(sensitive_adapter, prompt, enc, keeps, fusion=fusion, num_contextual=3)
    req = build_request(sensitive_adapter, prompt, enc, keeps, fusion=fusion, num_contextual=3)
    ids = req.expanded_token_ids()
    assert len(ids) == seq.length and req.prompt_token_ids.count(sensitive_adapter.image_token_id) == 2
    pos, delta = mrope_positions(len(ids), req.segments())
    assert torch.equal(pos, seq.positions)
    assert len(ids) + delta == int(next_positions(seq.positions[:, None], torch.ones(1, seq.length))[0])
    visual = torch.tensor(ids) == sensitive_adapter.image_token_id  # (L,)
    assert torch.allclose(req.image_embeds, seq.embeds[visual].float())
    text = sensitive_adapter.embed_tokens(torch.tensor(ids)[~visual])
    assert torch.allclose(text, seq.embeds[~visual])
    assert req.counts[1] == enc[1].num_tokens and req.counts[0] < enc[0].num_tokens


def test_reindexed_rows_are_detected(sensitive_adapter):
    """The planted bug vLLM's own embedding path has: pruned rows numbered as if they were a full grid."""
    enc, prompt, keeps = _case(sensitive_adapter, n_images=1)
    seq = assemble(sensitive_adapter, prompt, enc, keeps, fusion="none")
    req = build_request(sensitive_adapter, prompt, enc, keeps, fusion="none")
    m = req.counts[0]
    w = enc[0].grid_hw[1]
    req.grid_index = torch.stack([torch.zeros(m, dtype=torch.long), torch.arange(m) // w, torch.arange(m) % w], 1)
    pos, _ = mrope_positions(len(req.expanded_token_ids()), req.segments())
    assert not torch.equal(pos, seq.positions)


def test_a_text_only_request_and_a_non_qwen_family():
    class Llava:
        num_position_rows = 1

    with pytest.raises(ValueError, match="Qwen2.5-VL"):
        build_request(Llava(), None, [])
    pos, delta = mrope_positions(5, [])
    assert torch.equal(pos, torch.arange(5).expand(3, 5)) and delta == 0

"""A grounding pass that stops once its boxes are written (`grounding="short"`, `generate(stop_strings=...)`).

Two models: the shipped demo warm start (a tiny trained model that does write `<box>...</box>`, so the short
and full ViToS paths can be compared end to end), and the random position-sensitive tiny model under a
planted completion (`Planted`: its logits are replaced by a one-hot of a scripted token per row and step),
which writes exactly the rows a test needs: one that closes the box tag early, one late, one never.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vitos.data.sample import Sample
from vitos.engine import SamplingConfig, generate
from vitos.pipeline import GROUNDING_STOP, encode, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WARM_START = Path(__file__).resolve().parents[1] / "src" / "vitos" / "assets" / "demo_warm_start"


@pytest.fixture(scope="module")
def warm():
    from vitos.models import load_model

    return load_model(str(WARM_START), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def phantom_test():
    from vitos.data.medphantom import PHANTOM_V3, PhantomConfig
    from vitos.data.medphantom import generate as make_phantoms

    return make_phantoms(PhantomConfig(**PHANTOM_V3, seed=0, n_train=0, n_test=6))["test"]


def test_short_grounding_is_the_full_one_cut_after_its_box_tag(warm, phantom_test):
    """Greedy: short grounding text = full text up to (and with) the token that closes </box>; the boxes,
    kept tokens and sparse answers are identical."""
    sampling = SamplingConfig(max_new_tokens=256)
    encoded = encode(warm, [[im for im in s.images] for s in phantom_test])
    full = run(warm, phantom_test, "vitos", sampling=sampling, encoded=encoded, grounding="full")
    short = run(warm, phantom_test, "vitos", sampling=sampling, encoded=encoded, grounding="short")
    tok = warm.tokenizer
    closed = 0
    for f, s in zip(full, short):
        assert f.grounding == "full" and s.grounding == "short"
        assert f.grounding_text.startswith(s.grounding_text)
        if "</box>" in f.grounding_text:
            closed += 1
            cut = f.grounding_text.index("</box>") + len("</box>")
            assert s.grounding_text == f.grounding_text[:cut]  # this tokenizer writes </box> as one token
            assert len(s.grounding_text) < len(f.grounding_text)  # the full one goes on to its <answer>
        assert s.boxes == f.boxes and s.box_images == f.box_images and s.fallback == f.fallback
        assert s.visual_tokens_kept == f.visual_tokens_kept
        assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(s.keep_masks, f.keep_masks))
        assert s.answer_text == f.answer_text and s.answer == f.answer
    assert closed >= len(phantom_test) - 1, "the warm start writes a closed box tag on its own phantoms"


def test_full_grounding_still_writes_its_own_answer(warm, phantom_test):
    from vitos.prompts import parse_output

    a = run(warm, phantom_test[:2], "vitos", sampling=SamplingConfig(max_new_tokens=256), grounding="full")
    assert any(parse_output(x.grounding_text, "grounding").answer is not None for x in a)
    with pytest.raises(ValueError, match="grounding"):
        run(warm, phantom_test[:1], "vitos", grounding="brief")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ planted completions
class Planted:
    """An adapter whose next-token logits are a one-hot of plans[row][step] (then `filler` forever): the real
    model still runs every forward (cache, positions), only its logits are replaced. Rows are batch rows, so
    the generations below keep a fixed batch (`compact=False`; compaction has its own tests in test_engine)."""

    def __init__(self, adapter, plans: list[list[int]], filler: int):
        self._a, self.plans, self.filler, self.step = adapter, plans, filler, 0

    def __getattr__(self, name):
        return getattr(self._a, name)

    def lm_forward(self, *args, **kwargs):
        logits, cache = self._a.lm_forward(*args, **kwargs)  # (B, 1, V)
        forced = torch.full_like(logits, -1e4)
        for b, plan in enumerate(self.plans):
            forced[b, -1, plan[self.step] if self.step < len(plan) else self.filler] = 0.0
        self.step += 1
        return forced, cache


def _seqs(adapter, n: int):
    from PIL import Image

    from vitos.pipeline import _prompt_seqs
    from vitos.prompts import grounding_prompt

    samples = [Sample(id=str(i), images=[Image.new("RGB", (56, 56), (40 * i, 90, 160))], question="Is it dark?",
                      answer="", kind="yes_no") for i in range(n)]
    enc = encode(adapter, [s.images for s in samples])
    return _prompt_seqs(adapter, samples, enc, grounding_prompt, [None] * n, _prune())


def _prune():
    from vitos.pipeline import PruneConfig

    return PruneConfig()


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def _chars(tok, text: str) -> list[int]:
    """`text` one character per token (a split the tokenizer itself would not choose, but may sample)."""
    return [i for ch in text for i in _ids(tok, ch)]


def _end_of(tok, ids: list[int], stop: str) -> int:
    """Number of ids up to and with the one whose decoding first contains `stop`."""
    for k in range(1, len(ids) + 1):
        if stop in tok.decode(ids[:k], skip_special_tokens=True):
            return k
    raise AssertionError(f"{stop!r} not in the plan")


def test_rows_stop_independently_and_an_unclosed_row_runs_to_the_limit(sensitive_adapter):
    tok = sensitive_adapter.tokenizer
    early = _ids(tok, "<think>dark</think><box>[[0.1,0.2,0.3,0.4]]</box><answer>yes</answer>")
    late = (_ids(tok, "<think>a much longer line of thought here</think><box>[[0.1,0.2,0.3,0.4],[0.5,0.5,0.9,0.9]]")
            + _chars(tok, "</box>") + _ids(tok, "<answer>no</answer>"))  # the closing tag in 6 tokens
    never = _ids(tok, "<think>no box at all</think><box>[[0.1,0.2,0.3,0.4]]")
    filler = _ids(tok, " a")[0]
    assert len(_chars(tok, "</box>")) == 6 and len(_ids(tok, "</box>")) == 1
    n = max(len(early), len(late)) + 10
    plans = [early, late, never]
    cfg = SamplingConfig(max_new_tokens=n)
    seqs = _seqs(sensitive_adapter, 3)

    whole = generate(Planted(sensitive_adapter, plans, filler), seqs, cfg)
    cut = generate(Planted(sensitive_adapter, plans, filler), seqs, cfg, stop_strings=GROUNDING_STOP, compact=False)
    assert [len(x) for x in whole.token_ids] == [n, n, n] and whole.stop_reasons == ["length"] * 3

    k_early, k_late = _end_of(tok, early, "</box>"), _end_of(tok, late, "</box>")
    assert k_early < k_late
    assert [len(x) for x in cut.token_ids] == [k_early, k_late, n]
    assert cut.stop_reasons == ["stop_string", "stop_string", "length"]
    assert cut.stopped == [True, True, False]
    for c, w in zip(cut.token_ids, whole.token_ids):  # every cut row is a prefix of its whole row
        assert torch.equal(c, w[: len(c)])
    assert cut.texts[0].endswith("</box>") and cut.texts[1].endswith("</box>") and "</box>" not in cut.texts[2]
    assert all(len(lp) == len(ids) for lp, ids in zip(cut.logprobs, cut.token_ids))


def test_a_stop_string_of_many_tokens_and_eos_first(sensitive_adapter):
    tok = sensitive_adapter.tokenizer
    plan = _ids(tok, "<think>x</think><box>[[0.12,0.34,0.56,0.78]]</box><answer>yes</answer>")  # </box>: 1 token
    eos_plan = _ids(tok, "<think>x</think>") + [sensitive_adapter.eos_token_ids[0]]
    filler = _ids(tok, " a")[0]
    stop = "0.56,0.78]]</box>"
    assert len(_ids(tok, stop)) >= 4
    cfg = SamplingConfig(max_new_tokens=len(plan) + 5)
    gen = generate(Planted(sensitive_adapter, [plan, eos_plan], filler), _seqs(sensitive_adapter, 2), cfg,
                   stop_strings=(stop, "never written"), compact=False)
    assert len(gen.token_ids[0]) == _end_of(tok, plan, stop) and gen.texts[0].endswith(stop)
    assert gen.token_ids[1].tolist() == eos_plan and gen.stop_reasons == ["stop_string", "eos"]

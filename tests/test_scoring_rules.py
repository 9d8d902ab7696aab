"""docs/scoring.md, rule by rule: every case of tests/scoring_cases.py through `judge_completion`, and a
check that every rule id of the document has a case."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from scoring_cases import CASES, OPTIONS, choice, open_, yes_no

from vitos.answers import clean_text, judge, judge_completion, locate_answer, normalize_text, unwrap_answer

DOC = Path(__file__).resolve().parents[1] / "docs" / "scoring.md"


def verdict(j) -> str:
    return "fail" if j.parse_failure else ("right" if j.correct else "wrong")


@pytest.mark.parametrize("case", CASES, ids=[f"{c.rules[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_case(case):
    j = judge_completion(case.completion, case.sample)
    assert verdict(j) == case.expected, (case.completion, j)
    if case.parsed is not None:
        assert j.parsed == case.parsed
    if case.expected == "fail":
        assert j.correct is False and j.parsed is None and j.reason


def test_every_rule_of_the_document_has_a_case():
    ids = set(re.findall(r"\*\*([A-Z]\d+)\*\*", DOC.read_text()))
    assert len(ids) >= 35, ids
    covered = {rule for c in CASES for rule in c.rules}
    assert ids - covered == set(), f"rules without a case: {sorted(ids - covered)}"
    assert covered - ids == set(), f"cases name rules the document lacks: {sorted(covered - ids)}"


def test_enough_varied_cases():
    assert len(CASES) >= 100
    assert {c.sample.kind for c in CASES} == {"yes_no", "choice", "open"}
    assert {c.expected for c in CASES} == {"right", "wrong", "fail"}


# ---------------------------------------------------------------- the pieces, directly
def test_locate_answer_sources():
    assert locate_answer("<answer>B</answer>").source == "answer_tag"
    assert locate_answer("<answer>B").source == "answer_tag_unclosed"
    assert locate_answer("<think>x</think>B").source == "after_think"
    assert locate_answer("<think>x").text is None and locate_answer("<think>x").source == "none"
    assert locate_answer("B").source == "bare"
    assert locate_answer(None).text is None
    # an unclosed answer stops at the next tag
    assert locate_answer("<answer>B<think>no</think>").text == "B"
    # a think reopened after the last close is still a cut-off
    assert locate_answer("<think>a</think>x<think>b").text is None


def test_no_answer_reason_and_parse_failure_counted_for_every_kind():
    for sample in (yes_no("yes"), choice("A"), open_("liver")):
        j = judge_completion("<think>I believe the answer is", sample)
        assert (j.correct, j.parse_failure, j.reason) == (False, True, "no_answer")


def test_unwrap_answer_order():
    assert unwrap_answer("The answer is A. \\boxed{ B }", "choice") == "B"
    assert unwrap_answer("\\boxed{\\text{left}}", "open") == "left"
    assert unwrap_answer("answer: left lung. more", "open") == "left lung"
    assert unwrap_answer("answer: left lung. more", "choice") == "left lung. more"
    assert unwrap_answer("plain", "open") == "plain"


def test_clean_text_is_nfkc_without_format_characters():
    assert clean_text("Ｂ\u200b\u00a0x") == "B x"
    assert normalize_text("ＴＨＥ\u00a0Liver") == "liver"


def test_judge_on_a_located_answer_matches_judge_completion():
    # The reward path hands judge() the <answer> content; evaluation hands judge_completion() the output.
    for text, sample in [("B", choice("B")), ("The answer is no.", yes_no("no")), ("Liver", open_("liver"))]:
        assert judge(text, sample) == judge_completion(f"<think>t</think><answer>{text}</answer>", sample)


def test_options_with_duplicate_texts_are_ambiguous_by_text():
    j = judge("yes", choice("A", {"A": "Yes", "B": "yes", "C": "No"}))
    assert (j.parse_failure, j.reason) == (True, "ambiguous")


def test_open_metrics_are_token_overlap_of_the_unwrapped_answer():
    j = judge("The answer is the left upper lung.", open_("left lung"))
    assert (j.correct, j.parsed) == (False, "left upper lung")
    assert j.recall == pytest.approx(1.0) and j.f1 == pytest.approx(0.8)


def test_options_used_as_given_letters_upper_cased():
    lower = {"a": "Glioma", "b": "Meningioma"}
    assert judge("b", Sample_choice(lower, "B")).parsed == "B"


def Sample_choice(options, answer):
    from vitos.data.sample import Sample

    return Sample(id="x", images=[], question="q", answer=answer, kind="choice", options=options)


def test_case_fixtures_use_the_standard_options():
    assert OPTIONS["B"] == "Meningioma"

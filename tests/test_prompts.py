"""Prompt templates and the output parser, on hand-written completions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitos.prompts import (
    SYSTEM_PROMPT,
    answer_or_raw,
    format_grounding_target,
    format_sparse_target,
    grounding_prompt,
    parse_boxes,
    parse_output,
    sparse_prompt,
)

def _flat(boxes):
    return [v for box in boxes for v in box]


GOOD = "<think>The lesion is in the left lung.</think><box>[[0.1,0.2,0.5,0.6]]</box><answer>yes</answer>"


# ---------------------------------------------------------------- prompts


def test_system_prompt_is_short_text():
    assert isinstance(SYSTEM_PROMPT, str) and 0 < len(SYSTEM_PROMPT) < 300


def test_grounding_prompt_lists_options_as_letter_lines_and_asks_for_all_three_tags():
    p = grounding_prompt("Which tumour?", {"A": "Glioma", "B": "Meningioma"}, kind="choice")
    lines = p.splitlines()
    assert lines[0] == "Which tumour?"
    assert "A. Glioma" in lines and "B. Meningioma" in lines
    for tag in ("<think></think>", "<box></box>", "<answer></answer>"):
        assert tag in p
    assert "option's letter" in p
    assert "[x1,y1,x2,y2]" in p and "normalised" in p


@pytest.mark.parametrize(
    ("kind", "style"), [("yes_no", "yes or no"), ("choice", "the option's letter"), ("open", "a concise phrase")]
)
def test_answer_style_follows_question_kind(kind, style):
    assert style in grounding_prompt("Q?", kind=kind)
    assert style in sparse_prompt("Q?", kind=kind)


def test_sparse_prompt_does_not_ask_for_boxes():
    p = sparse_prompt("Is there a fracture?", kind="yes_no")
    assert "<box>" not in p and "<think></think>" in p and "<answer></answer>" in p


def test_multi_image_prompt_explains_image_numbered_boxes_and_single_image_prompt_does_not():
    assert "[k,x1,y1,x2,y2]" in grounding_prompt("Q?", n_images=3)
    assert "[k,x1,y1,x2,y2]" not in grounding_prompt("Q?", n_images=1)


def test_prompt_without_options_has_no_letter_lines():
    assert "A. " not in grounding_prompt("What organ is shown?")


def test_unknown_kind_is_rejected_with_the_allowed_values():
    with pytest.raises(ValueError, match="yes_no"):
        grounding_prompt("Q?", kind="multiple")


# ---------------------------------------------------------------- well-formed outputs


def test_well_formed_grounding_output_parses_every_field():
    out = parse_output(GOOD, "grounding")
    assert out.format_ok
    assert out.think == "The lesion is in the left lung."
    assert out.boxes == [[0.1, 0.2, 0.5, 0.6]]
    assert out.box_images == [0]
    assert out.answer == "yes"
    assert out.box_error is None


def test_well_formed_sparse_output_parses_and_has_no_boxes():
    out = parse_output("<think>small nodule</think><answer>B</answer>", "sparse")
    assert out.format_ok and out.answer == "B" and out.think == "small nodule"
    assert out.boxes is None and out.box_images is None and out.box_error is None


def test_whitespace_and_newlines_everywhere_are_tolerated_and_answer_is_stripped():
    text = "\n  <think>\n a \n</think>\n\n<box>\n [ [ 0.1 , 0.2 , 0.5 , 0.6 ] ]\n</box>\n<answer>\n  no \n</answer>\n"
    out = parse_output(text, "grounding")
    assert out.format_ok and out.answer == "no" and out.think == "a"
    assert out.boxes == [[0.1, 0.2, 0.5, 0.6]]


def test_tag_case_and_inner_spaces_are_tolerated():
    out = parse_output("<THINK>x</Think><Box>[0.1,0.2,0.3,0.4]</BOX>< Answer >Yes</answer >", "grounding")
    assert out.format_ok and out.answer == "Yes" and out.boxes == [[0.1, 0.2, 0.3, 0.4]]


def test_text_outside_the_tags_does_not_break_format():
    out = parse_output("Sure. <think>x</think> then <answer>yes</answer> done", "sparse")
    assert out.format_ok and out.answer == "yes"


# ---------------------------------------------------------------- broken tag structure


def test_missing_answer_tag_gives_none_answer_and_bad_format():
    out = parse_output("<think>x</think><box>[[0.1,0.2,0.3,0.4]]</box> The answer is yes.", "grounding")
    assert out.answer is None and not out.format_ok
    assert out.boxes == [[0.1, 0.2, 0.3, 0.4]]  # what is readable is still read


def test_missing_box_tag_fails_grounding_format_but_is_fine_for_sparse():
    text = "<think>x</think><answer>yes</answer>"
    assert not parse_output(text, "grounding").format_ok
    assert parse_output(text, "sparse").format_ok


def test_box_tag_in_sparse_output_breaks_sparse_format():
    assert not parse_output(GOOD, "sparse").format_ok


def test_missing_think_tag_fails_format_but_answer_is_read():
    out = parse_output("<box>[[0.1,0.2,0.3,0.4]]</box><answer>no</answer>", "grounding")
    assert not out.format_ok and out.think is None and out.answer == "no"


def test_tags_out_of_order_fail_format():
    text = "<think>x</think><answer>yes</answer><box>[[0.1,0.2,0.3,0.4]]</box>"
    out = parse_output(text, "grounding")
    assert not out.format_ok
    assert out.answer == "yes" and out.boxes == [[0.1, 0.2, 0.3, 0.4]]


def test_duplicated_tags_fail_format_and_the_last_answer_wins():
    text = "<think>a</think><box>[[0.1,0.2,0.3,0.4]]</box><answer>no</answer><answer>yes</answer>"
    out = parse_output(text, "grounding")
    assert not out.format_ok and out.answer == "yes"


def test_nested_tags_fail_format():
    assert not parse_output("<think>x<answer>yes</answer></think>", "sparse").format_ok


def test_unclosed_final_answer_is_read_to_the_end_but_fails_format():
    out = parse_output("<think>x</think><answer> B ", "sparse")
    assert out.answer == "B" and not out.format_ok


def test_closing_tag_without_opening_tag_gives_no_answer():
    assert parse_output("yes</answer>", "sparse").answer is None


def test_empty_answer_tag_gives_empty_string_not_none():
    assert parse_output("<think>x</think><answer>  </answer>", "sparse").answer == ""


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "\x00\x01\xff garbage \ud800",
        "<<<<>>>></answer><answer",
        "<box>" * 1000,
        "<box>" + "[" * 100_000 + "</box>",
        "<think>" + "é漢字🙂" * 10_000 + "</think><answer>是</answer>",
        "<box>[[nan, 0, 1, 1]]</box>",
        "<box>{\"bbox_2d\": {\"x\": 1}}</box>",
        "x" * 2_000_000,
    ],
)
def test_parser_never_raises_on_hostile_strings(text):
    out = parse_output(text, "grounding")
    assert isinstance(out.format_ok, bool)
    assert (out.boxes is None) == (out.box_images is None)


def test_parser_returns_nothing_for_empty_string():
    out = parse_output("", "grounding")
    assert (out.think, out.boxes, out.answer, out.box_error, out.format_ok) == (None, None, None, None, False)


def test_unicode_answer_survives():
    assert parse_output("<think>思考</think><answer>是</answer>", "sparse").answer == "是"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>/[](){},.-e 0123456789thinkboxanswerTHINK\":\n")), max_size=200))
def test_parser_never_raises_on_tag_and_number_soup(text):
    for branch in ("grounding", "sparse"):
        out = parse_output(text, branch)
        assert (out.boxes is None) == (out.box_images is None)
        if out.boxes is not None:
            assert out.box_error is None
            for x1, y1, x2, y2 in out.boxes:
                assert 0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0


# ---------------------------------------------------------------- box syntax variants


def _boxes(content: str):
    return parse_output(f"<think>t</think><box>{content}</box><answer>a</answer>", "grounding")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[[0.1,0.2,0.3,0.4]]", [[0.1, 0.2, 0.3, 0.4]]),
        ("[0.1,0.2,0.3,0.4]", [[0.1, 0.2, 0.3, 0.4]]),
        ("[0.1, 0.2, 0.3, 0.4]", [[0.1, 0.2, 0.3, 0.4]]),
        ("[0.1,0.2,0.3,0.4],[0.5,0.5,0.9,1]", [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 1.0]]),
        ("(0.1, 0.2, 0.3, 0.4)", [[0.1, 0.2, 0.3, 0.4]]),
        ("[(0.1, 0.2, 0.3, 0.4), (0.2, 0.2, 0.6, 0.7)]", [[0.1, 0.2, 0.3, 0.4], [0.2, 0.2, 0.6, 0.7]]),
        ("[[0, 0, 1, 1]]", [[0.0, 0.0, 1.0, 1.0]]),
        ("[.5, .25, .75, 1]", [[0.5, 0.25, 0.75, 1.0]]),
        ("[1e-1, 2e-1, 3E-1, 4e-1]", [[0.1, 0.2, 0.3, 0.4]]),
        ("0.1, 0.2, 0.3, 0.4", [[0.1, 0.2, 0.3, 0.4]]),
        ('{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "label": "liver"}', [[0.1, 0.2, 0.3, 0.4]]),
        (
            '[{"bbox_2d": [0.1,0.2,0.3,0.4]}, {"bbox_2d": [0.5,0.6,0.7,0.8], "label": "kidney"}]',
            [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]],
        ),
        ('{"bbox_2d": [.1, .2, .3, .4]}', [[0.1, 0.2, 0.3, 0.4]]),
        ('{"bbox": [0.1,0.2,0.3,0.4]}', [[0.1, 0.2, 0.3, 0.4]]),
    ],
)
def test_box_syntax_variants_are_read(content, expected):
    out = _boxes(content)
    assert out.box_error is None, out.box_error
    assert len(out.boxes) == len(expected)
    assert _flat(out.boxes) == pytest.approx(_flat(expected))
    assert out.box_images == [0] * len(expected)
    assert out.format_ok


def test_values_within_tolerance_are_clipped_to_unit_range():
    out = _boxes("[[-0.005, 0.2, 1.008, 0.4]]")
    assert out.boxes == [[0.0, 0.2, 1.0, 0.4]]


def test_five_number_boxes_carry_a_one_based_image_number():
    out = _boxes("[[2, 0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.6, 0.6], [1, 0.0, 0.0, 0.5, 0.5]]")
    assert out.boxes == [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.6, 0.6], [0.0, 0.0, 0.5, 0.5]]
    assert out.box_images == [1, 0, 0]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("[[0.1,0.2,0.3]]", "3 numbers"),
        ("[[0.1,0.2,0.3,0.4,0.5,0.6]]", "6 numbers"),
        ("[[0.1,0.2,0.3,0.4],[0.1,0.2]]", "box 2 [0.1, 0.2] has 2 numbers"),
        ("[[0, 0.1, 0.2, 0.3, 0.4]]", "image number"),
        ("[[1.5, 0.1, 0.2, 0.3, 0.4]]", "image number"),
        ("[[NaN, 0.1, 0.3, 0.4]]", "NaN"),
        ("[0.1, nan, 0.3, 0.4]", "NaN"),
        ("[[0.1, 0.2, Infinity, 0.4]]", "infinity"),
        ("[[12, 40, 200, 180]]", "normalised"),
        ("[[0.1, 0.2, 0.3, 345]]", "normalised"),
        ("[[0.5, 0.2, 0.3, 0.4]]", "inverted"),
        ("[[0.1, 0.4, 0.3, 0.4]]", "inverted"),
        ("[[0.1, 0.2, 1.2, 0.4]]", "leaves [0, 1]"),
        ("[[-0.05, 0.2, 0.3, 0.4]]", "leaves [0, 1]"),
        ("", "empty"),
        ("[]", "empty"),
        ("the left lung", "number"),
        ('{"label": "liver"}', "keys"),
        ("[[true, 0, 1, 1]]", "not a number"),
        ('[["0.1", 0.2, 0.3, 0.4]]', "not a number"),
        ("[[[0.1,0.2,0.3,0.4]]]", "not a number"),
    ],
)
def test_invalid_boxes_are_rejected_with_a_reason(content, reason):
    out = _boxes(content)
    assert out.boxes is None and out.box_images is None
    assert out.box_error is not None and reason.lower() in out.box_error.lower(), out.box_error
    assert out.format_ok  # the tags themselves are fine; format_ok is about tags only


def test_one_bad_box_rejects_the_whole_tag():
    assert _boxes("[[0.1,0.2,0.3,0.4],[0.9,0.2,0.3,0.4]]").boxes is None


def test_image_number_beyond_the_prompt_images_is_rejected_when_the_count_is_known():
    text = "<think>t</think><box>[[3,0.1,0.2,0.3,0.4]]</box><answer>a</answer>"
    assert parse_output(text, "grounding").boxes == [[0.1, 0.2, 0.3, 0.4]]
    out = parse_output(text, "grounding", n_images=2)
    assert out.boxes is None and "1..2" in out.box_error


def test_parse_boxes_is_usable_on_its_own():
    boxes, images, error = parse_boxes("[0.25,0.25,0.75,0.75]")
    assert (boxes, images, error) == ([[0.25, 0.25, 0.75, 0.75]], [0], None)


# ---------------------------------------------------------------- targets and round trips


def test_grounding_target_has_exact_format_without_spaces_in_boxes():
    t = format_grounding_target("look", [[0.123, 0.3, 0.551, 0.709]], "yes")
    assert t == "<think>look</think><box>[[0.12,0.30,0.55,0.71]]</box><answer>yes</answer>"


def test_sparse_target_has_exact_format():
    assert format_sparse_target("look", "B") == "<think>look</think><answer>B</answer>"


@pytest.mark.parametrize("decimals", [2, 3, 4])
def test_grounding_target_round_trips_through_the_parser(decimals):
    boxes = [[0.1234, 0.2, 0.5678, 0.9], [2, 0.0, 0.05, 1.0, 0.5]]
    t = format_grounding_target("reason\nover lines", boxes, "Meningioma", decimals=decimals)
    out = parse_output(t, "grounding")
    assert out.format_ok and out.think == "reason\nover lines" and out.answer == "Meningioma"
    assert _flat(out.boxes) == pytest.approx([round(v, decimals) for v in boxes[0]] + boxes[1][1:])
    assert out.box_images == [0, 1]


def test_sparse_target_round_trips_through_the_parser():
    out = parse_output(format_sparse_target("why", "no"), "sparse")
    assert out.format_ok and (out.think, out.answer) == ("why", "no")


def test_grounding_target_refuses_a_box_that_collapses_at_the_given_precision():
    with pytest.raises(ValueError, match="decimals"):
        format_grounding_target("t", [[0.101, 0.1, 0.104, 0.5]], "a", decimals=2)


def test_grounding_target_refuses_invalid_input_boxes_and_tags_in_text():
    with pytest.raises(ValueError, match="normalised"):
        format_grounding_target("t", [[10, 10, 100, 100]], "a")
    with pytest.raises(ValueError, match="at least one box"):
        format_grounding_target("t", [], "a")
    with pytest.raises(ValueError, match="tag"):
        format_sparse_target("t", "<answer>yes")


# ---------------------------------------------------------------- answer_or_raw


def test_answer_or_raw_prefers_the_answer_tag():
    assert answer_or_raw("<think>...</think><answer> B </answer>") == "B"


def test_answer_or_raw_falls_back_to_the_stripped_text():
    assert answer_or_raw("  The answer is B.\n") == "The answer is B."

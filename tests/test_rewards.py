"""Reward functions on hand-written completions, with IoU values computed by hand."""

from __future__ import annotations

import pytest

from vitos.data.sample import Sample
from vitos.rl.rewards import (
    REWARD_FUNCTIONS,
    RewardWeights,
    accuracy_reward,
    box_iou_reward,
    format_reward,
    grounding_rewards,
    iou,
    iou_reward,
    sparse_rewards,
)

YES_NO = Sample(
    id="q1", images=["a.png"], question="Is there a mass?", answer="yes", kind="yes_no",
    boxes=[[0.0, 0.0, 0.5, 0.5]],
)
CHOICE = Sample(
    id="q2", images=["b.png"], question="Which tumour?", answer="B", kind="choice",
    options={"A": "Glioma", "B": "Meningioma"},
)


def g(think: str, box: str, answer: str) -> str:
    return f"<think>{think}</think><box>{box}</box><answer>{answer}</answer>"


def s(think: str, answer: str) -> str:
    return f"<think>{think}</think><answer>{answer}</answer>"


# ---------------------------------------------------------------- format


def test_format_reward_is_one_for_well_formed_outputs_of_each_branch():
    assert format_reward(g("x", "[[0.1,0.1,0.4,0.4]]", "yes"), "grounding") == 1.0
    assert format_reward(s("x", "yes"), "sparse") == 1.0


def test_grounding_format_needs_parseable_boxes():
    assert format_reward(g("x", "[[10,10,200,200]]", "yes"), "grounding") == 0.0
    assert format_reward(g("x", "", "yes"), "grounding") == 0.0


@pytest.mark.parametrize(
    ("text", "branch"),
    [
        ("yes", "sparse"),
        ("<answer>yes</answer>", "sparse"),
        ("<think>x</think><answer>yes</answer>", "grounding"),
        (g("x", "[[0.1,0.1,0.4,0.4]]", "yes"), "sparse"),
        ("<answer>yes</answer><think>x</think>", "sparse"),
        ("<think>x</think><answer>yes</answer><answer>no</answer>", "sparse"),
        ("", "grounding"),
    ],
)
def test_format_reward_is_zero_for_malformed_outputs(text, branch):
    assert format_reward(text, branch) == 0.0


# ---------------------------------------------------------------- IoU


def test_iou_of_hand_computed_overlaps():
    assert iou([0, 0, 1, 1], [0, 0, 1, 1]) == pytest.approx(1.0)
    # intersection 0.5 x 0.5 = 0.25; union 0.25 + 1 - 0.25 = 1
    assert iou([0, 0, 1, 1], [0, 0, 0.5, 0.5]) == pytest.approx(0.25)
    # intersection [0.25,0.25,0.5,0.5] = 0.0625; union 0.25 + 0.25 - 0.0625 = 0.4375
    assert iou([0, 0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75]) == pytest.approx(0.0625 / 0.4375)
    assert iou([0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]) == 0.0  # touching corners
    assert iou([0, 0, 0.2, 0.2], [0.6, 0.6, 1, 1]) == 0.0


def test_iou_is_symmetric():
    a, b = [0.1, 0.2, 0.6, 0.9], [0.3, 0.0, 0.8, 0.5]
    assert iou(a, b) == pytest.approx(iou(b, a))


def test_box_iou_reward_is_none_without_ground_truth_and_zero_without_prediction():
    assert box_iou_reward([[0, 0, 1, 1]], []) is None
    assert box_iou_reward(None, [[0, 0, 1, 1]]) == 0.0
    assert box_iou_reward([], [[0, 0, 1, 1]]) == 0.0


def test_box_iou_reward_averages_best_match_per_ground_truth_box():
    gt = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]
    pred = [[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.25, 0.25]]
    # GT1 best: exact match 1.0; GT2: no overlap with either -> 0.0; mean 0.5
    assert box_iou_reward(pred, gt) == pytest.approx(0.5)


def test_box_iou_reward_does_not_penalise_extra_boxes():
    gt = [[0.0, 0.0, 0.5, 0.5]]
    assert box_iou_reward([[0.0, 0.0, 0.5, 0.5], [0.7, 0.7, 0.9, 0.9]], gt) == pytest.approx(1.0)


def test_iou_reward_reads_boxes_from_text_and_skips_rows_without_boxes():
    # pred [0,0,1,1] vs GT [0,0,.5,.5]: 0.25
    assert iou_reward(g("x", "[[0,0,1,1]]", "yes"), YES_NO) == pytest.approx(0.25)
    assert iou_reward(g("x", "[[0,0,1,1]]", "B"), CHOICE) is None
    assert iou_reward(g("x", "[[10,10,300,300]]", "yes"), YES_NO) == 0.0
    assert iou_reward(s("x", "yes"), YES_NO, branch="sparse") is None


def test_iou_reward_ignores_boxes_drawn_on_other_images():
    two = Sample(id="q3", images=["a.png", "b.png"], question="?", answer="yes", kind="yes_no",
                 boxes=[[0.0, 0.0, 0.5, 0.5]])
    assert iou_reward(g("x", "[[2,0,0,0.5,0.5]]", "yes"), two) == 0.0
    assert iou_reward(g("x", "[[1,0,0,0.5,0.5]]", "yes"), two) == pytest.approx(1.0)


# ---------------------------------------------------------------- accuracy


def test_accuracy_reward_judges_the_answer_tag():
    assert accuracy_reward(s("x", "Yes"), YES_NO, "sparse") == 1.0
    assert accuracy_reward(s("x", "no"), YES_NO, "sparse") == 0.0
    assert accuracy_reward(g("x", "[[0,0,1,1]]", "B"), CHOICE, "grounding") == 1.0
    assert accuracy_reward(g("x", "[[0,0,1,1]]", "A"), CHOICE, "grounding") == 0.0


def test_accuracy_reward_never_guesses_an_answer_outside_the_tag():
    assert accuracy_reward("<think>x</think> yes", YES_NO, "sparse") == 0.0
    assert accuracy_reward("yes", YES_NO, "sparse") == 0.0


def test_registry_exposes_per_rollout_rewards_with_one_signature():
    text = g("x", "[[0,0,1,1]]", "yes")
    assert set(REWARD_FUNCTIONS) == {"format", "iou", "accuracy"}
    assert REWARD_FUNCTIONS["format"](text, YES_NO, "grounding") == 1.0
    assert REWARD_FUNCTIONS["iou"](text, YES_NO, "grounding") == pytest.approx(0.25)
    assert REWARD_FUNCTIONS["accuracy"](text, YES_NO, "grounding") == 1.0


# ---------------------------------------------------------------- paired rewards with cross-feedback


def test_grounding_rewards_sum_own_terms_with_each_sparse_accuracy():
    texts = [
        g("x", "[[0,0,1,1]]", "yes"),  # format 1, IoU 0.25, acc 1
        "the answer is yes",  # format 0, IoU 0 (no box), acc 0 (no tag)
    ]
    sparse_correct = [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    rows = grounding_rewards(texts, sparse_correct, YES_NO, RewardWeights())
    assert [len(r) for r in rows] == [3, 3]
    assert rows[0][0] == pytest.approx({"format": 1.0, "iou": 0.25, "accuracy": 1.0, "cross": 1.0, "total": 3.25})
    assert rows[0][1]["total"] == pytest.approx(2.25)
    assert rows[1][0] == pytest.approx({"format": 0.0, "iou": 0.0, "accuracy": 0.0, "cross": 0.0, "total": 0.0})
    assert rows[1][2]["total"] == pytest.approx(1.0)


def test_grounding_rewards_skip_iou_on_rows_without_boxes():
    rows = grounding_rewards([g("x", "[[0,0,1,1]]", "B")], [[1.0]], CHOICE)
    assert rows[0][0]["iou"] is None
    assert rows[0][0]["total"] == pytest.approx(3.0)


def test_grounding_rewards_apply_weights():
    w = RewardWeights(format=0.5, iou=2.0, accuracy=3.0, cross=0.25)
    rows = grounding_rewards([g("x", "[[0,0,1,1]]", "yes")], [[1.0, 0.0]], YES_NO, w)
    assert rows[0][0]["total"] == pytest.approx(0.5 * 1 + 2.0 * 0.25 + 3.0 * 1 + 0.25 * 1)
    assert rows[0][1]["total"] == pytest.approx(0.5 * 1 + 2.0 * 0.25 + 3.0 * 1)


def test_grounding_rewards_reject_mismatched_cross_rows():
    with pytest.raises(ValueError, match="row i"):
        grounding_rewards([g("x", "[[0,0,1,1]]", "yes")], [[1.0], [0.0]], YES_NO)


def test_sparse_rewards_sum_own_terms_with_the_grounding_accuracy():
    texts = [[s("x", "B"), s("x", "A")], ["B", s("x", "(B) Meningioma")]]
    rows = sparse_rewards(texts, [1.0, 0.0], CHOICE, RewardWeights())
    assert rows[0][0] == pytest.approx({"format": 1.0, "accuracy": 1.0, "cross": 1.0, "total": 3.0})
    assert rows[0][1] == pytest.approx({"format": 1.0, "accuracy": 0.0, "cross": 1.0, "total": 2.0})
    assert rows[1][0] == pytest.approx({"format": 0.0, "accuracy": 0.0, "cross": 0.0, "total": 0.0})
    assert rows[1][1] == pytest.approx({"format": 1.0, "accuracy": 1.0, "cross": 0.0, "total": 2.0})
    assert "iou" not in rows[0][0]


def test_sparse_rewards_apply_weights_and_reject_mismatched_rows():
    w = RewardWeights(format=0.1, accuracy=2.0, cross=0.0)
    rows = sparse_rewards([[s("x", "B")]], [1.0], CHOICE, w)
    assert rows[0][0]["total"] == pytest.approx(0.1 + 2.0)
    with pytest.raises(ValueError, match="one grounding accuracy per row"):
        sparse_rewards([[s("x", "B")]], [1.0, 0.0], CHOICE)

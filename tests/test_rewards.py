"""Reward functions on hand-written completions, with IoU, union areas and budgets computed by hand."""

from __future__ import annotations

import pytest
import torch

from vitos.data.sample import Sample
from vitos.models.base import EncodedImage
from vitos.rl import rollout as ro
from vitos.rl.rewards import (
    REWARD_FUNCTIONS,
    RewardWeights,
    accuracy_reward,
    box_iou_reward,
    format_reward,
    grounding_rewards,
    iou,
    iou_reward,
    kept_ratio,
    sparse_rewards,
    union_area,
    union_iou,
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
    # the evaluation mIoU (vitos.demo) keeps its recall-only meaning; the training reward uses union_iou
    gt = [[0.0, 0.0, 0.5, 0.5]]
    assert box_iou_reward([[0.0, 0.0, 0.5, 0.5], [0.7, 0.7, 0.9, 0.9]], gt) == pytest.approx(1.0)


# ---------------------------------------------------------------- union area and union IoU


@pytest.mark.parametrize(
    ("boxes", "area"),
    [
        ([], 0.0),
        ([[0.0, 0.0, 0.5, 0.5]], 0.25),
        # overlapping: 0.25 + 0.25 - [0.25,0.25,0.5,0.5] 0.0625
        ([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75]], 0.4375),
        # nested: the inner box adds nothing
        ([[0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.4, 0.4]], 1.0),
        # disjoint: 0.2 x 0.2 + 0.4 x 0.4
        ([[0.0, 0.0, 0.2, 0.2], [0.6, 0.6, 1.0, 1.0]], 0.2),
        # identical: counted once
        ([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5]], 0.25),
        # sharing an edge: two halves make the square
        ([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]], 1.0),
        # zero-area boxes (a segment, a point) add nothing, alone or beside a real box
        ([[0.3, 0.3, 0.3, 0.8]], 0.0),
        ([[0.0, 0.0, 0.5, 0.5], [0.3, 0.3, 0.3, 0.8], [0.9, 0.9, 0.9, 0.9]], 0.25),
        # three pairwise-overlapping boxes: 3 x 0.25 - (0.125 + 0.125 + 0.0625) + 0.0625 (inclusion-exclusion)
        ([[0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.75, 0.5], [0.0, 0.25, 0.5, 0.75]], 0.5),
    ],
)
def test_union_area_of_hand_computed_unions(boxes, area):
    assert union_area(boxes) == pytest.approx(area)


def test_union_area_rejects_malformed_boxes():
    with pytest.raises(ValueError, match=r"boxes\[1\].*x2 < x1"):
        union_area([[0.0, 0.0, 0.5, 0.5], [0.6, 0.0, 0.4, 0.5]])
    with pytest.raises(ValueError, match="3 numbers"):
        union_area([[0.0, 0.0, 0.5]])


def test_union_iou_of_hand_computed_unions():
    # one box each: the plain IoU, 0.0625 / 0.4375
    assert union_iou([[0, 0, 0.5, 0.5]], [[0.25, 0.25, 0.75, 0.75]]) == pytest.approx(0.0625 / 0.4375)
    # pred: two diagonal quarters (area 0.5); gt: the top half (area 0.5); overlap: the top-left quarter 0.25;
    # union 0.5 + 0.5 - 0.25 = 0.75
    pred = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]
    gt = [[0.0, 0.0, 1.0, 0.5]]
    assert union_iou(pred, gt) == pytest.approx(0.25 / 0.75)
    assert union_iou(gt, pred) == pytest.approx(0.25 / 0.75)  # symmetric
    # pred [0,0,0.75,0.5] (area 0.375) vs the GT quarters [0,0,.5,.5] + [.5,.5,1,1] (0.5): it overlaps only
    # the first (0.25); union 0.375 + 0.5 - 0.25 = 0.625
    quarters = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]
    assert union_iou([[0.0, 0.0, 0.75, 0.5]], quarters) == pytest.approx(0.25 / 0.625)
    # one box over the bounding box of two GT quarters: 0.5 / 1
    assert union_iou([[0, 0, 1, 1]], quarters) == pytest.approx(0.5)
    assert union_iou([], [[0, 0, 0.5, 0.5]]) == 0.0
    assert union_iou([[0.2, 0.2, 0.2, 0.6]], [[0, 0, 0.5, 0.5]]) == 0.0  # a zero-area prediction covers nothing
    assert union_iou([], []) == 0.0  # no area anywhere: 0, not a division by zero


def test_union_iou_rejects_malformed_boxes():
    with pytest.raises(ValueError, match=r"gt_boxes\[0\]"):
        union_iou([[0, 0, 1, 1]], [[0.5, 0.5, 0.4, 0.9]])


def test_extra_full_image_box_lowers_the_iou_reward():
    """The exploit of a recall-only IoU: a correct box plus [0,0,1,1] kept IoU 1.0 while nothing was pruned."""
    correct = g("x", "[[0,0,0.5,0.5]]", "yes")
    spray = g("x", "[[0,0,0.5,0.5],[0,0,1,1]]", "yes")
    assert iou_reward(correct, YES_NO) == pytest.approx(1.0)
    # U_pred is the whole image (area 1) and contains the GT (area 0.25): IoU = area(gt) / 1
    assert iou_reward(spray, YES_NO) == pytest.approx(0.25)
    assert iou_reward(spray, YES_NO) < iou_reward(correct, YES_NO)
    totals = [r[0]["total"] for r in grounding_rewards([correct, spray], [[1.0], [1.0]], YES_NO)]
    assert totals == pytest.approx([4.0, 3.25])


def test_two_ground_truth_boxes_covered_by_two_predictions_score_one():
    two = Sample(id="q4", images=["a.png"], question="Where?", answer="yes", kind="yes_no",
                 boxes=[[0.0, 0.0, 0.25, 0.25], [0.5, 0.5, 1.0, 1.0]])
    assert iou_reward(g("x", "[[0.5,0.5,1,1],[0,0,0.25,0.25]]", "yes"), two) == pytest.approx(1.0)
    # covering only one: 0.25 / (0.0625 + 0.25)
    assert iou_reward(g("x", "[[0.5,0.5,1,1]]", "yes"), two) == pytest.approx(0.25 / 0.3125)


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
    assert rows[0][0] == pytest.approx(
        {"format": 1.0, "iou": 0.25, "accuracy": 1.0, "budget": None, "cross": 1.0, "total": 3.25}
    )
    assert rows[0][1]["total"] == pytest.approx(2.25)
    assert rows[1][0] == pytest.approx(
        {"format": 0.0, "iou": 0.0, "accuracy": 0.0, "budget": None, "cross": 0.0, "total": 0.0}
    )
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


# ---------------------------------------------------------------- token budget


def test_kept_ratio_over_all_images_of_a_question():
    assert kept_ratio([None], [100]) == 1.0  # no mask: the image is kept whole
    assert kept_ratio([25], [100]) == pytest.approx(0.25)
    assert kept_ratio([25, None], [100, 50]) == pytest.approx(75 / 150)  # token-weighted, not a mean of ratios
    assert kept_ratio([0, 0], [100, 50]) == 0.0
    assert kept_ratio([], []) == 1.0  # no visual token: nothing was pruned


def test_kept_ratio_rejects_inconsistent_counts():
    with pytest.raises(ValueError, match="one per image"):
        kept_ratio([None], [100, 50])
    with pytest.raises(ValueError, match="keeps 101 of its 100"):
        kept_ratio([101], [100])
    with pytest.raises(ValueError, match="keeps -1"):
        kept_ratio([-1], [100])


def test_budget_makes_a_full_image_box_cost_on_rows_without_boxes():
    full = g("x", "[[0,0,1,1]]", "B")  # keeps every token
    tight = g("x", "[[0.25,0.25,0.5,0.5]]", "B")  # keeps 4 of 16 tokens, say
    ratios = [kept_ratio([None], [16]), kept_ratio([4], [16])]  # [1.0, 0.25]
    rows = grounding_rewards([full, tight], [[1.0], [1.0]], CHOICE, RewardWeights(budget=1.0), kept_ratios=ratios)
    assert rows[0][0]["iou"] is None and rows[1][0]["iou"] is None  # no GT box: IoU cannot tell them apart
    assert rows[0][0]["budget"] == 0.0
    assert rows[1][0]["budget"] == pytest.approx(0.75)
    assert rows[0][0]["total"] == pytest.approx(3.0)  # format + acc + cross
    assert rows[1][0]["total"] == pytest.approx(3.75)
    assert rows[1][0]["total"] > rows[0][0]["total"]
    half = grounding_rewards([tight], [[1.0]], CHOICE, RewardWeights(budget=0.5), kept_ratios=[0.25])
    assert half[0][0]["total"] == pytest.approx(3.0 + 0.5 * 0.75)


def test_budget_is_off_by_default_and_totals_keep_the_paper_formula():
    assert RewardWeights().budget == 0.0
    # pred: the GT quarter plus the opposite quarter -> union IoU 0.25 / 0.5 = 0.5
    text = g("x", "[[0,0,0.5,0.5],[0.5,0.5,1,1]]", "yes")
    for kw in ({}, {"kept_ratios": [0.5]}):  # ratios given but weight 0: still skipped
        rows = grounding_rewards([text], [[1.0, 0.0]], YES_NO, **kw)
        assert rows[0][0]["budget"] is None
        assert rows[0][0]["iou"] == pytest.approx(0.5)
        assert [c["total"] for c in rows[0]] == pytest.approx([1 + 0.5 + 1 + 1, 1 + 0.5 + 1 + 0])
    rows = grounding_rewards([text], [[1.0]], YES_NO, RewardWeights(budget=1.0))  # weight on, no ratios
    assert rows[0][0]["budget"] is None and rows[0][0]["total"] == pytest.approx(3.5)


def test_grounding_rewards_reject_bad_kept_ratios():
    texts = [g("x", "[[0,0,1,1]]", "B")]
    with pytest.raises(ValueError, match="one kept-token ratio per grounding rollout"):
        grounding_rewards(texts, [[1.0]], CHOICE, RewardWeights(budget=1.0), kept_ratios=[0.5, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        grounding_rewards(texts, [[1.0]], CHOICE, RewardWeights(budget=1.0), kept_ratios=[1.5])


@pytest.mark.usefixtures("one_torch_thread")
def test_score_passes_each_grounding_rollouts_kept_ratio_from_its_keep_masks():
    sample = Sample("s", ["a.png", "b.png"], "Which tumour?", "B", kind="choice", options={"A": "x", "B": "y"})
    enc = [EncodedImage(torch.zeros(16, 2), (4, 4), (8, 8)), EncodedImage(torch.zeros(8, 2), (2, 4), (8, 4))]
    tight = torch.zeros(4, 4, dtype=torch.bool)
    tight[:2, :2] = True  # 4 of image 1's 16 tokens; image 2 (8 tokens) kept whole -> 12 / 24
    texts = [g("x", "[[1,0,0,0.5,0.5]]", "B"), g("x", "[[1,0,0,1,1],[2,0,0,1,1]]", "B")]
    keeps = [[tight, None], [torch.ones(4, 4, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool)]]
    step = ro.StepRollouts([sample], [[None, None]], [enc], [{}], 2, 1)
    step.grounding = [ro.Rollout("grounding", 0, i, -1, t, torch.tensor([1]), k, 24, 24, True)
                      for i, (t, k) in enumerate(zip(texts, keeps))]
    step.sparse = [ro.Rollout("sparse", 0, i, 0, s("x", "B"), torch.tensor([1]), k, 24, 24, True)
                   for i, k in enumerate(keeps)]
    on = ro.score(step, RewardWeights(budget=1.0))
    assert [p["budget"] for p in on.grounding_parts] == pytest.approx([0.5, 0.0])
    assert on.grounding.tolist() == pytest.approx([3.5, 3.0])  # format + acc + cross + budget (no GT box)
    assert all("budget" not in p for p in on.sparse_parts)  # the sparse branch chooses no boxes
    off = ro.score(step)
    assert [p["budget"] for p in off.grounding_parts] == [None, None]
    assert off.grounding.tolist() == pytest.approx([3.0, 3.0])


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


# ---------------------------------------------------------------- collapse guard (iou_reference)


def test_iou_reference_pays_only_the_iou_above_the_reference_box():
    # GT [0,0,.5,.5]; reference [0,0,1,1] has IoU 0.25 with it (hand-computed: .25 / 1).
    w = RewardWeights(iou_reference=[0.0, 0.0, 1.0, 1.0])
    texts = [g("x", "[[0,0,0.5,0.5]]", "yes"),   # IoU 1.0  -> 1.0 - 0.25 = 0.75
             g("x", "[[0,0,1,1]]", "yes"),       # the reference itself -> 0
             g("x", "[[0.5,0.5,1,1]]", "yes")]   # IoU 0 -> clipped at 0, never negative
    rows = grounding_rewards(texts, [[1.0], [1.0], [1.0]], YES_NO, w)
    assert [r[0]["iou"] for r in rows] == pytest.approx([0.75, 0.0, 0.0])
    assert rows[0][0]["total"] == pytest.approx(1.0 + 0.75 + 1.0 + 1.0)
    # without the guard the reference box itself is paid its 0.25
    assert grounding_rewards(texts[1:2], [[1.0]], YES_NO)[0][0]["iou"] == pytest.approx(0.25)


def test_iou_reference_is_skipped_on_rows_without_boxes():
    rows = grounding_rewards([g("x", "[[0,0,1,1]]", "B")], [[1.0]], CHOICE, RewardWeights(iou_reference=[0, 0, 1, 1]))
    assert rows[0][0]["iou"] is None


@pytest.mark.parametrize("bad", [[0, 0, 1], [0.5, 0, 0.2, 1], [0, 0, 1.5, 1]])
def test_iou_reference_rejects_malformed_boxes(bad):
    with pytest.raises(ValueError, match="iou_reference"):
        RewardWeights(iou_reference=bad)

"""ViToS rewards as plain functions: format, box IoU, answer accuracy and the cross-feedback term.

Paper (REFERENCE.md section 1, framework figure). For a question the grounding branch samples
O_1..O_G; from the tokens kept by O_i's boxes the sparse branch samples O'_{i,1..G'}. Then

    grounding  r_ij  = format(O_i) + IoU(O_i, GT) + acc(O_i) + acc(O'_ij)     (cross-feedback: sparse answer)
    sparse     r'_ij = format(O'_ij) + acc(O'_ij) + acc(O_i)                  (cross-feedback: grounding answer)

Our choices where the paper is silent (all configurable through ``RewardWeights``):
* every term has weight 1 by default, as the paper's plain sums suggest;
* IoU is continuous (VLM-R1 style), not thresholded at 0.5 (MedGround-R1 style): a partial overlap still
  carries gradient signal early in training;
* rows without ground-truth boxes skip the IoU term (``None``) instead of scoring 0, so most VQA rows are
  trained through format, accuracy and cross-feedback only (REFERENCE.md section 4); totals are then on a
  different scale than rows with boxes, which is harmless because GRPO compares rollouts of one question;
* predicted boxes that point into another image than images[0] are ignored for IoU, because
  ``Sample.boxes`` are relative to images[0];
* the format reward of the grounding branch also requires the boxes to parse: a well-tagged but unusable
  <box> cannot drive pruning;
* an output without an <answer> tag is wrong (0): the answer is never guessed from free text.

Answer judging lives in ``vitos.answers.judge`` (one judge for training and evaluation).

Usage::

    rows = grounding_rewards(ground_texts, sparse_correct, sample, RewardWeights())
    totals = [[c["total"] for c in row] for row in rows]             # (G, G')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vitos.answers import judge
from vitos.data.sample import Sample
from vitos.prompts import ParsedOutput, parse_output

__all__ = [
    "RewardWeights",
    "format_reward",
    "iou",
    "box_iou_reward",
    "iou_reward",
    "accuracy_reward",
    "grounding_rewards",
    "sparse_rewards",
    "REWARD_FUNCTIONS",
]


@dataclass
class RewardWeights:
    """Weights of the reward components; the total is their weighted sum."""

    format: float = 1.0
    """Weight of format(O): 1 when the completion has exactly the branch's tags (and, for grounding, valid boxes)."""
    iou: float = 1.0
    """Weight of the grounding IoU with the ground-truth boxes (skipped on rows without boxes)."""
    accuracy: float = 1.0
    """Weight of the rollout's own answer accuracy."""
    cross: float = 1.0
    """Weight of the cross-feedback term: the other branch's accuracy on the linked rollout."""


# --------------------------------------------------------------------------------------------------
# Per-rollout rewards
# --------------------------------------------------------------------------------------------------


def _format_from_parsed(parsed: ParsedOutput, branch: str) -> float:
    ok = parsed.format_ok and (branch != "grounding" or parsed.boxes is not None)
    return 1.0 if ok else 0.0


def format_reward(text: str, branch: str) -> float:
    """1.0 if the completion has the branch's tags in order (grounding: and its boxes parse), else 0.0."""
    return _format_from_parsed(parse_output(text, branch), branch)


def iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes; 0.0 when they do not overlap or have no area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_iou_reward(pred_boxes: list[list[float]] | None, gt_boxes: list[list[float]]) -> float | None:
    """Mean over ground-truth boxes of the best IoU any predicted box reaches with it.

    None when ``gt_boxes`` is empty (nothing to compare; the caller skips the term); 0.0 when nothing was
    predicted. Recall-oriented on purpose: every GT box must be covered by some prediction, because a
    missed evidence region is pruned away before the sparse pass. Extra predicted boxes are not penalised
    here, so a spray of boxes could raise this score; it does not pay in the whole system, because pruning
    keeps the union of all boxes and a large union saves no tokens (and dilutes the sparse pass), but a
    precision term would be needed if the token budget were not otherwise enforced.
    """
    if not gt_boxes:
        return None
    if not pred_boxes:
        return 0.0
    return sum(max(iou(p, g) for p in pred_boxes) for g in gt_boxes) / len(gt_boxes)


def _iou_from_parsed(parsed: ParsedOutput, sample: Sample) -> float | None:
    if not sample.boxes:
        return None
    if parsed.boxes is None:
        return 0.0
    # Sample.boxes refer to images[0]; a box drawn on another image cannot match them.
    first_image = [b for b, k in zip(parsed.boxes, parsed.box_images or []) if k == 0]
    return box_iou_reward(first_image, sample.boxes)


def iou_reward(text: str, sample: Sample, branch: str = "grounding") -> float | None:
    """IoU term of one completion: ``box_iou_reward`` on its parsed image-1 boxes; None for the sparse branch
    or a sample without ground-truth boxes."""
    if branch != "grounding":
        return None
    return _iou_from_parsed(parse_output(text, branch, n_images=len(sample.images) or None), sample)


def _accuracy_from_parsed(parsed: ParsedOutput, sample: Sample) -> float:
    if parsed.answer is None:
        return 0.0
    return 1.0 if judge(parsed.answer, sample).correct else 0.0


def accuracy_reward(text: str, sample: Sample, branch: str) -> float:
    """1.0 if the <answer> of the completion is judged correct by ``vitos.answers.judge``, else 0.0."""
    return _accuracy_from_parsed(parse_output(text, branch), sample)


def _format_rollout(text: str, sample: Sample, branch: str) -> float:
    return format_reward(text, branch)


RolloutReward = Callable[[str, Sample, str], "float | None"]

REWARD_FUNCTIONS: dict[str, RolloutReward] = {
    "format": _format_rollout,
    "iou": iou_reward,
    "accuracy": accuracy_reward,
}
"""Per-rollout rewards by name, all called as ``fn(text, sample, branch) -> float | None`` (None = skipped)."""


# --------------------------------------------------------------------------------------------------
# Paired rewards with cross-feedback
# --------------------------------------------------------------------------------------------------


def _total(parts: dict[str, float | None], w: RewardWeights) -> float:
    return sum(getattr(w, name) * value for name, value in parts.items() if value is not None)


def grounding_rewards(
    ground_texts: list[str],
    sparse_correct: list[list[float]],
    sample: Sample,
    w: RewardWeights | None = None,
) -> list[list[dict[str, float | None]]]:
    """Grounding-branch rewards r_ij = format(O_i) + IoU(O_i) + acc(O_i) + acc(O'_ij), weighted by ``w``.

    Args:
        ground_texts: (G,) grounding completions O_i.
        sparse_correct: (G, G') accuracy (0/1) of sparse completion O'_ij launched from O_i.
        sample: the question (answer, kind, ground-truth boxes).

    Returns:
        (G, G') dicts ``{"format", "iou" (None when the sample has no box), "accuracy", "cross", "total"}``.

    Unlike ``format_reward(text, branch)``, which knows no sample, boxes here are also checked against the
    sample's image count, so ``[3, x1, y1, x2, y2]`` on a two-image question fails format and IoU.
    """
    w = w or RewardWeights()
    if len(sparse_correct) != len(ground_texts):
        raise ValueError(
            f"sparse_correct has {len(sparse_correct)} rows but there are {len(ground_texts)} grounding "
            "rollouts; row i must hold the accuracies of the sparse rollouts launched from grounding rollout i"
        )
    n_images = len(sample.images) or None
    out: list[list[dict[str, float | None]]] = []
    for text, cross_row in zip(ground_texts, sparse_correct):
        parsed = parse_output(text, "grounding", n_images=n_images)
        own = {
            "format": _format_from_parsed(parsed, "grounding"),
            "iou": _iou_from_parsed(parsed, sample),
            "accuracy": _accuracy_from_parsed(parsed, sample),
        }
        row = []
        for cross in cross_row:
            parts = {**own, "cross": float(cross)}
            row.append({**parts, "total": _total(parts, w)})
        out.append(row)
    return out


def sparse_rewards(
    sparse_texts: list[list[str]],
    ground_correct: list[float],
    sample: Sample,
    w: RewardWeights | None = None,
) -> list[list[dict[str, float | None]]]:
    """Sparse-branch rewards r'_ij = format(O'_ij) + acc(O'_ij) + acc(O_i), weighted by ``w``.

    Args:
        sparse_texts: (G, G') sparse completions O'_ij, row i launched from grounding rollout O_i.
        ground_correct: (G,) accuracy (0/1) of grounding rollout O_i.
        sample: the question.

    Returns:
        (G, G') dicts ``{"format", "accuracy", "cross", "total"}``.
    """
    w = w or RewardWeights()
    if len(sparse_texts) != len(ground_correct):
        raise ValueError(
            f"sparse_texts has {len(sparse_texts)} rows but ground_correct has {len(ground_correct)} entries; "
            "there must be one grounding accuracy per row of sparse rollouts"
        )
    out: list[list[dict[str, float | None]]] = []
    for texts, cross in zip(sparse_texts, ground_correct):
        row = []
        for text in texts:
            parsed = parse_output(text, "sparse")
            parts = {
                "format": _format_from_parsed(parsed, "sparse"),
                "accuracy": _accuracy_from_parsed(parsed, sample),
                "cross": float(cross),
            }
            row.append({**parts, "total": _total(parts, w)})
        out.append(row)
    return out

"""ViToS rewards as plain functions: format, box IoU, answer accuracy, cross-feedback, an optional token budget.

Paper (REFERENCE.md section 1, framework figure). For a question the grounding branch samples
O_1..O_G; from the tokens kept by O_i's boxes the sparse branch samples O'_{i,1..G'}. Then

    grounding  r_ij  = format(O_i) + IoU(O_i, GT) + acc(O_i) + acc(O'_ij)     (cross-feedback: sparse answer)
    sparse     r'_ij = format(O'_ij) + acc(O'_ij) + acc(O_i)                  (cross-feedback: grounding answer)

Our choices where the paper is silent (all configurable through ``RewardWeights``):
* every term has weight 1 by default, as the paper's plain sums suggest;
* IoU is continuous (VLM-R1 style), not thresholded at 0.5 (MedGround-R1 style): a partial overlap still
  carries gradient signal early in training;
* IoU is that of the UNION of the predicted boxes with the UNION of the ground-truth boxes, computed exactly
  (``union_iou``), because pruning keeps the union of all boxes: the reward sees the region the sparse
  branch will actually get. A per-GT best-match mean (``box_iou_reward``, kept as the evaluation mIoU) is
  recall-only and can be gamed: an extra full-image box beside a correct one keeps it at 1.0 while the
  sparse branch keeps every token. With unions that spray scores area(GT) / 1 instead;
* an optional token-budget term ``1 - kept_ratio`` for the grounding branch (``RewardWeights.budget``,
  off by default because the paper has none): the union IoU cannot punish spray on rows without
  ground-truth boxes, where a full-image box would otherwise be free;
* rows without ground-truth boxes skip the IoU term (``None``) instead of scoring 0, so most VQA rows are
  trained through format, accuracy and cross-feedback only (REFERENCE.md section 4; plus the budget term
  when it is on); totals are then on a different scale than rows with boxes, which is harmless because
  GRPO compares rollouts of one question;
* predicted boxes that point into another image than images[0] are ignored for IoU, because
  ``Sample.boxes`` are relative to images[0];
* the format reward of the grounding branch also requires the boxes to parse: a well-tagged but unusable
  <box> cannot drive pruning;
* an output without an <answer> tag is wrong (0): the answer is never guessed from free text.

Answer judging lives in ``vitos.answers.judge`` (one judge for training and evaluation).

Usage::

    rows = grounding_rewards(ground_texts, sparse_correct, sample, RewardWeights())
    rows = grounding_rewards(ground_texts, sparse_correct, sample, RewardWeights(budget=0.5),
                             kept_ratios=[kept_ratio(counts, n_tokens) for counts in kept_counts])  # (G,) ratios
    totals = [[c["total"] for c in row] for row in rows]             # (G, G')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vitos.answers import judge
from vitos.data.sample import Sample
from vitos.prompts import ParsedOutput, parse_output

__all__ = [
    "RewardWeights",
    "format_reward",
    "iou",
    "union_area",
    "union_iou",
    "box_iou_reward",
    "kept_ratio",
    "iou_reward",
    "accuracy_reward",
    "grounding_rewards",
    "guarded_iou_floor",
    "sparse_rewards",
    "REWARD_FUNCTIONS",
]


@dataclass
class RewardWeights:
    """Weights of the reward components; the total is their weighted sum."""

    format: float = 1.0
    """Weight of format(O): 1 when the completion has exactly the branch's tags (and, for grounding, valid boxes)."""
    iou: float = 1.0
    """Weight of the grounding IoU, union of predicted boxes vs union of ground-truth boxes (``union_iou``;
    skipped on rows without boxes)."""
    accuracy: float = 1.0
    """Weight of the rollout's own answer accuracy."""
    cross: float = 1.0
    """Weight of the cross-feedback term: the other branch's accuracy on the linked rollout."""
    iou_reference: list[float] | None = None
    """Collapse guard: a reference box [x1, y1, x2, y2] (normalised). When set, the IoU term of a question
    is ``max(0, union_iou(pred) - union_iou(reference))``: a box earns only what it finds beyond one box
    that ignores the image, so collapsing onto the typical box pays nothing. `vitos demo` / `vitos study`
    set it to the best constant box of the RL pool (``best_constant_box``). None: the paper's plain IoU.
    (A per-question constant alone would not matter: GRPO subtracts the group mean; the clip at 0 does.)"""
    budget: float = 0.0
    """Weight of the grounding branch's token-budget term ``1 - kept_ratio`` (the fraction of the question's
    visual tokens its boxes prune away), on every row, with or without ground-truth boxes, so a full-image
    box is no longer free. Off (0) by default: the paper has no such term, and the union IoU already
    punishes a spray of boxes on rows with boxes. The sparse branch never gets it (it chooses no boxes)."""

    def __post_init__(self) -> None:
        if self.iou_reference is not None:
            ref = [float(v) for v in self.iou_reference]
            if len(ref) != 4 or not all(0.0 <= v <= 1.0 for v in ref) or ref[2] <= ref[0] or ref[3] <= ref[1]:
                raise ValueError(f"rewards.iou_reference = {self.iou_reference!r}: give one box [x1, y1, x2, y2] "
                                 "normalised to [0, 1] with x1 < x2 and y1 < y2, or null to turn the guard off")
            self.iou_reference = ref


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


def _check_boxes(boxes: list[list[float]], name: str) -> None:
    for k, b in enumerate(boxes):
        if len(b) != 4:
            raise ValueError(f"{name}[{k}] = {b!r} has {len(b)} numbers; a box is [x1, y1, x2, y2]")
        if b[2] < b[0] or b[3] < b[1]:
            raise ValueError(f"{name}[{k}] = {b!r} has x2 < x1 or y2 < y1; a box is [x1, y1, x2, y2], corners in order")


def _merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Union of 1-D intervals as sorted, disjoint (lo, hi) intervals; empty ones dropped."""
    out: list[tuple[float, float]] = []
    for lo, hi in sorted(i for i in intervals if i[1] > i[0]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _length(intervals: list[tuple[float, float]]) -> float:
    return sum(hi - lo for lo, hi in intervals)


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Length of the intersection of two sorted, disjoint interval lists (two pointers)."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def _union_areas(a: list[list[float]], b: list[list[float]]) -> tuple[float, float, float]:
    """Exact (area(U_a), area(U_b), area(U_a ∩ U_b)) of two sets of boxes, by coordinate compression.

    The x-coordinates of all boxes cut the plane into vertical slabs; inside a slab every box either spans
    it or misses it, so each union is a set of y-intervals there, and areas are slab width x lengths.
    """
    xs = sorted({x for box in (*a, *b) for x in (box[0], box[2])})
    area_a = area_b = area_ab = 0.0
    for x0, x1 in zip(xs, xs[1:]):  # x1 > x0: the coordinates are distinct
        ya = _merged([(box[1], box[3]) for box in a if box[0] <= x0 and box[2] >= x1])
        yb = _merged([(box[1], box[3]) for box in b if box[0] <= x0 and box[2] >= x1])
        width = x1 - x0
        area_a += width * _length(ya)
        area_b += width * _length(yb)
        area_ab += width * _overlap(ya, yb)
    return area_a, area_b, area_ab


def union_area(boxes: list[list[float]]) -> float:
    """Exact area of the union of [x1, y1, x2, y2] boxes (overlaps counted once); 0.0 for no box.

    Zero-area boxes add nothing; a box with x2 < x1 or y2 < y1, or not 4 numbers, raises ValueError.
    """
    _check_boxes(boxes, "boxes")
    return _union_areas(boxes, [])[0]


def union_iou(pred_boxes: list[list[float]], gt_boxes: list[list[float]]) -> float:
    """area(U_pred ∩ U_gt) / area(U_pred ∪ U_gt), U_* the union of each list's boxes, computed exactly.

    0.0 when both unions have no area (e.g. both lists empty). Pruning keeps the union of the predicted
    boxes, so this scores the region the sparse branch will see: extra boxes outside the evidence lower it,
    and several predictions jointly covering several GT boxes reach 1.0.
    """
    _check_boxes(pred_boxes, "pred_boxes")
    _check_boxes(gt_boxes, "gt_boxes")
    area_p, area_g, inter = _union_areas(pred_boxes, gt_boxes)
    union = area_p + area_g - inter
    return inter / union if union > 0 else 0.0


def box_iou_reward(pred_boxes: list[list[float]] | None, gt_boxes: list[list[float]]) -> float | None:
    """Mean over ground-truth boxes of the best IoU any predicted box reaches with it (evaluation mIoU).

    None when ``gt_boxes`` is empty (nothing to compare); 0.0 when nothing was predicted. Recall-only:
    extra predicted boxes are not penalised, so a correct box plus a full-image box still scores 1.0. That
    is why the training reward uses ``union_iou`` instead; this per-box score stays the evaluation metric
    (``vitos.demo`` mIoU), whose meaning must not change between runs.
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
    return union_iou(first_image, sample.boxes)


def iou_reward(text: str, sample: Sample, branch: str = "grounding") -> float | None:
    """IoU term of one completion: ``union_iou`` of its parsed image-1 boxes with the ground-truth boxes;
    0.0 when its boxes do not parse; None for the sparse branch or a sample without ground-truth boxes."""
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


def kept_ratio(kept_counts: Sequence[int | None], num_tokens: Sequence[int]) -> float:
    """Fraction of a question's visual tokens that a grounding rollout's keep masks keep, over all images.

    Args:
        kept_counts: (n_images,) tokens kept per image (a keep mask's sum); None = the image is kept whole.
        num_tokens: (n_images,) visual tokens per image.

    Returns sum(kept) / sum(num_tokens); 1.0 for a question without visual tokens (nothing was pruned).
    """
    if len(kept_counts) != len(num_tokens):
        raise ValueError(
            f"{len(kept_counts)} kept counts for {len(num_tokens)} images; give one per image (None = kept whole)"
        )
    kept = 0
    for k, (n, total) in enumerate(zip(kept_counts, num_tokens)):
        if n is not None and not 0 <= n <= total:
            raise ValueError(f"image {k} keeps {n} of its {total} visual tokens; a kept count is in [0, {total}]")
        kept += total if n is None else n
    total = sum(num_tokens)
    return kept / total if total > 0 else 1.0


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


def guarded_iou_floor(reference: list[float] | None, sample: Sample) -> float | None:
    """The collapse guard's floor for one question: union IoU of the reference box with its GT boxes
    (None without a reference or without GT boxes)."""
    if reference is None or not sample.boxes:
        return None
    _check_boxes([list(reference)], "iou_reference")
    return union_iou([list(reference)], sample.boxes)


def grounding_rewards(
    ground_texts: list[str],
    sparse_correct: list[list[float]],
    sample: Sample,
    w: RewardWeights | None = None,
    kept_ratios: list[float] | None = None,
) -> list[list[dict[str, float | None]]]:
    """Grounding rewards r_ij = format(O_i) + IoU(O_i) + acc(O_i) + acc(O'_ij) [+ budget(O_i)], weighted by ``w``.

    Args:
        ground_texts: (G,) grounding completions O_i.
        sparse_correct: (G, G') accuracy (0/1) of sparse completion O'_ij launched from O_i.
        sample: the question (answer, kind, ground-truth boxes).
        w: weights; default ``RewardWeights()`` (budget off).
        kept_ratios: (G,) optional ``kept_ratio`` of O_i's keep masks, for the budget term.

    Returns:
        (G, G') dicts ``{"format", "iou", "accuracy", "budget", "cross", "total"}``, every key always present;
        ``iou`` is the union IoU (None when the sample has no box; with ``w.iou_reference`` the guarded
        ``max(0, IoU - IoU(reference))``), ``budget`` is ``1 - kept_ratios[i]``
        (None, skipped, when ``w.budget`` is 0 or ``kept_ratios`` is None).

    Unlike ``format_reward(text, branch)``, which knows no sample, boxes here are also checked against the
    sample's image count, so ``[3, x1, y1, x2, y2]`` on a two-image question fails format and IoU.
    """
    w = w or RewardWeights()
    if len(sparse_correct) != len(ground_texts):
        raise ValueError(
            f"sparse_correct has {len(sparse_correct)} rows but there are {len(ground_texts)} grounding "
            "rollouts; row i must hold the accuracies of the sparse rollouts launched from grounding rollout i"
        )
    if kept_ratios is not None:
        if len(kept_ratios) != len(ground_texts):
            raise ValueError(
                f"kept_ratios has {len(kept_ratios)} entries but there are {len(ground_texts)} grounding rollouts; "
                "give one kept-token ratio per grounding rollout, or None"
            )
        bad = [r for r in kept_ratios if not 0.0 <= r <= 1.0]
        if bad:
            raise ValueError(f"kept_ratios must lie in [0, 1] (fraction of visual tokens kept), got {bad}")
    budgets: list[float | None] = (
        [1.0 - r for r in kept_ratios] if kept_ratios is not None and w.budget != 0 else [None] * len(ground_texts)
    )
    n_images = len(sample.images) or None
    floor = guarded_iou_floor(w.iou_reference, sample)
    out: list[list[dict[str, float | None]]] = []
    for text, cross_row, budget in zip(ground_texts, sparse_correct, budgets):
        parsed = parse_output(text, "grounding", n_images=n_images)
        raw = _iou_from_parsed(parsed, sample)
        own = {
            "format": _format_from_parsed(parsed, "grounding"),
            "iou": raw if raw is None or floor is None else max(0.0, raw - floor),
            "accuracy": _accuracy_from_parsed(parsed, sample),
            "budget": budget,
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

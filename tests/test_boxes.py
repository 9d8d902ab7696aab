"""Box -> token-grid keep masks: hand-computed masks plus property tests of the keep rule."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitos.pruning.boxes import (
    boxes_to_keep_mask,
    grid_cell_boxes,
    keep_mask_to_indices,
    keep_ratio,
    validate_boxes,
)

EPS = 1e-9  # the documented "touching, not intersecting" threshold


def _mask(rows: list[str]) -> torch.Tensor:
    """Readable expected masks: '#' kept, '.' pruned."""
    return torch.tensor([[ch == "#" for ch in row] for row in rows], dtype=torch.bool)


def _cell_intersects(r: int, c: int, h: int, w: int, box: list[float], margin: float) -> bool:
    """Independent scalar reference: does cell (r, c) overlap the dilated, clipped box with positive area?"""
    x1, y1 = max(box[0] - margin, 0.0), max(box[1] - margin, 0.0)
    x2, y2 = min(box[2] + margin, 1.0), min(box[3] + margin, 1.0)
    ox = min(x2, (c + 1) / w) - max(x1, c / w)
    oy = min(y2, (r + 1) / h) - max(y1, r / h)
    return ox > EPS and oy > EPS


# ----------------------------------------------------------------------------- hand-computed masks


def test_top_left_quarter_box_keeps_top_left_2x2_of_4x4():
    mask = boxes_to_keep_mask([[0.0, 0.0, 0.5, 0.5]], (4, 4))
    assert mask.shape == (4, 4)
    assert torch.equal(mask, _mask(["##..", "##..", "....", "...."]))


def test_thin_vertical_box_across_a_column_edge_keeps_both_columns():
    mask = boxes_to_keep_mask([[0.24, 0.0, 0.26, 1.0]], (4, 4))
    assert torch.equal(mask, _mask(["##..", "##..", "##..", "##.."]))


def test_box_touching_a_cell_edge_does_not_keep_that_cell():
    # x2 = 0.5 touches column 2 (starting at 0.5) with zero area
    mask = boxes_to_keep_mask([[0.3, 0.3, 0.5, 0.5]], (4, 4))
    assert torch.equal(mask, _mask(["....", ".#..", "....", "...."]))


def test_margin_grows_the_kept_region_by_one_cell_each_side():
    mask = boxes_to_keep_mask([[0.4, 0.4, 0.6, 0.6]], (5, 5), margin=0.2)
    # dilated box [0.2, 0.8] covers cells 1..3 exactly (touching 0.2 and 0.8 only)
    assert torch.equal(mask, _mask([".....", ".###.", ".###.", ".###.", "....."]))


def test_margin_round_off_does_not_add_a_row():
    # 0.3 - 0.1 = 0.19999999999999998 in floating point; cell [0.1, 0.2] must stay pruned
    mask = boxes_to_keep_mask([[0.3, 0.3, 0.4, 0.4]], (10, 10), margin=0.1)
    kept_rows = mask.any(dim=1).nonzero().flatten().tolist()
    assert kept_rows == [2, 3, 4]


def test_non_square_grid_uses_rows_for_y_and_columns_for_x():
    mask = boxes_to_keep_mask([[0.0, 0.5, 0.2, 1.0]], (2, 6))  # bottom row, x in [0, 0.2] -> columns 0, 1
    assert torch.equal(mask, _mask(["......", "##...."]))


def test_empty_box_list_keeps_nothing_without_min_keep():
    mask = boxes_to_keep_mask([], (3, 3), min_keep=0)
    assert mask.shape == (3, 3) and not mask.any()


def test_empty_box_list_with_min_keep_takes_cells_nearest_the_image_centre():
    mask = boxes_to_keep_mask([], (3, 3), min_keep=1)
    assert torch.equal(mask, _mask(["...", ".#.", "..."]))


def test_min_keep_tie_break_is_raster_order():
    # 4x4 grid: the four centre cells are equidistant from the image centre; min_keep=2 takes the
    # first two in raster order, (1, 1) and (1, 2)
    mask = boxes_to_keep_mask([], (4, 4), min_keep=2)
    assert torch.equal(mask, _mask(["....", ".##.", "....", "...."]))


def test_degenerate_box_falls_back_to_nearest_cell_of_its_centre():
    mask = boxes_to_keep_mask([[0.9, 0.1, 0.9, 0.1]], (4, 4), min_keep=1)  # point at (0.9, 0.1)
    assert torch.equal(mask, _mask(["...#", "....", "....", "...."]))


def test_min_keep_is_capped_at_grid_size():
    assert boxes_to_keep_mask([], (2, 3), min_keep=100).all()


def test_grid_cell_boxes_match_the_documented_cell_rule():
    cells = grid_cell_boxes((2, 4))
    assert cells.shape == (8, 4)
    # raster index 6 = row 1, column 2 -> [2/4, 1/2, 3/4, 2/2]
    assert cells[6].tolist() == [0.5, 0.5, 0.75, 1.0]
    assert cells[0].tolist() == [0.0, 0.0, 0.25, 0.5]


def test_keep_mask_to_indices_and_ratio():
    mask = _mask(["#..", ".#.", "..#", "..."])
    idx = keep_mask_to_indices(mask)
    assert idx.dtype == torch.long
    assert idx.tolist() == [0, 4, 8]
    assert keep_ratio(mask) == pytest.approx(3 / 12)
    with pytest.raises(TypeError, match="bool"):
        keep_mask_to_indices(mask.long())


def test_bad_arguments_are_rejected_with_a_hint():
    with pytest.raises(ValueError, match="margin"):
        boxes_to_keep_mask([[0, 0, 1, 1]], (2, 2), margin=-0.1)
    with pytest.raises(ValueError, match="grid_hw"):
        boxes_to_keep_mask([[0, 0, 1, 1]], (0, 2))
    with pytest.raises(ValueError, match="validate_boxes"):
        boxes_to_keep_mask([[0, 0, 1]], (2, 2))
    with pytest.raises(ValueError, match="validate_boxes"):
        boxes_to_keep_mask([[0, 0, float("nan"), 1]], (2, 2))


# ----------------------------------------------------------------------------- validate_boxes


def test_validate_boxes_accepts_good_boxes_and_clips_small_overshoot():
    valid, err = validate_boxes([[0.1, 0.2, 0.5, 0.6], [-0.005, 0.0, 1.008, 1.0]])
    assert err is None
    assert valid == [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]]


@pytest.mark.parametrize(
    "bad, reason",
    [
        ([0.1, 0.2, 0.3], "4 numbers"),
        ([0.1, 0.2, 0.3, 0.4, 0.5], "4 numbers"),
        ([0.1, float("nan"), 0.3, 0.4], "non-finite"),
        ([0.1, 0.2, float("inf"), 0.4], "non-finite"),
        ([0.5, 0.2, 0.3, 0.4], "inverted"),
        ([0.1, 0.4, 0.3, 0.2], "inverted"),
        ([0.1, 0.2, 0.1, 0.4], "zero area"),
        ([10, 20, 300, 400], "outside \\[0, 1\\]"),
        ([0.1, 0.2, 1.2, 0.4], "outside \\[0, 1\\]"),
        (["a", 0.2, 0.3, 0.4], "numbers"),
        ([True, 0.2, 0.3, 0.4], "numbers"),
        ("0.1 0.2 0.3 0.4", "list of 4 numbers"),
        (0.5, "single number"),
        ([1.005, 0.0, 1.01, 1.0], "empty after clipping"),
    ],
)
def test_validate_boxes_rejects_garbage_with_a_reason(bad, reason):
    valid, err = validate_boxes([[0.0, 0.0, 0.5, 0.5], bad])
    assert valid == [[0.0, 0.0, 0.5, 0.5]]  # the good box survives
    assert err is not None
    assert "box 1" in err and "1 of 2" in err
    assert re.search(reason, err), err


def test_validate_boxes_rejects_non_list_input():
    valid, err = validate_boxes("0.1, 0.2, 0.3, 0.4")
    assert valid == [] and "list of [x1, y1, x2, y2]" in err
    assert validate_boxes(None) == ([], None)
    assert validate_boxes([]) == ([], None)


def test_validate_boxes_accepts_tensors_and_tuples():
    valid, err = validate_boxes(torch.tensor([[0.0, 0.25, 0.5, 0.75]]))
    assert err is None and valid == [[0.0, 0.25, 0.5, 0.75]]
    assert validate_boxes([(0.0, 0.25, 0.5, 0.75)]) == ([[0.0, 0.25, 0.5, 0.75]], None)


# ----------------------------------------------------------------------------- property tests

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def boxes_st(draw):
    x1, x2 = sorted([draw(unit), draw(unit)])
    y1, y2 = sorted([draw(unit), draw(unit)])
    return [x1, y1, x2, y2]


grids = st.tuples(st.integers(1, 12), st.integers(1, 12))
margins = st.floats(min_value=0.0, max_value=0.3, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(box=boxes_st(), grid=grids, margin=margins)
def test_mask_equals_the_scalar_intersection_rule(box, grid, margin):
    h, w = grid
    mask = boxes_to_keep_mask([box], grid, margin=margin, min_keep=0)
    assert mask.shape == (h, w) and mask.dtype == torch.bool
    expected = torch.tensor(
        [[_cell_intersects(r, c, h, w, box, margin) for c in range(w)] for r in range(h)], dtype=torch.bool
    )
    assert torch.equal(mask, expected)


@settings(max_examples=60, deadline=None)
@given(grid=grids, margin=margins)
def test_full_image_box_keeps_every_token(grid, margin):
    assert boxes_to_keep_mask([[0.0, 0.0, 1.0, 1.0]], grid, margin=margin).all()


@settings(max_examples=150, deadline=None)
@given(box=boxes_st(), grid=grids, m1=margins, m2=margins)
def test_kept_set_grows_monotonically_with_margin(box, grid, m1, m2):
    small, large = sorted([m1, m2])
    a = boxes_to_keep_mask([box], grid, margin=small, min_keep=0)
    b = boxes_to_keep_mask([box], grid, margin=large, min_keep=0)
    assert not (a & ~b).any(), "a token kept at a smaller margin was dropped at a larger one"


@settings(max_examples=150, deadline=None)
@given(b1=boxes_st(), b2=boxes_st(), grid=grids, margin=margins)
def test_mask_of_two_boxes_is_the_union_of_their_masks(b1, b2, grid, margin):
    both = boxes_to_keep_mask([b1, b2], grid, margin=margin, min_keep=0)
    one = boxes_to_keep_mask([b1], grid, margin=margin, min_keep=0)
    two = boxes_to_keep_mask([b2], grid, margin=margin, min_keep=0)
    assert torch.equal(both, one | two)


@settings(max_examples=150, deadline=None)
@given(boxes=st.lists(boxes_st(), max_size=3), grid=grids, margin=margins, min_keep=st.integers(0, 200))
def test_min_keep_is_honoured_and_only_adds_tokens(boxes, grid, margin, min_keep):
    h, w = grid
    plain = boxes_to_keep_mask(boxes, grid, margin=margin, min_keep=0)
    mask = boxes_to_keep_mask(boxes, grid, margin=margin, min_keep=min_keep)
    target = min(min_keep, h * w)
    assert int(mask.sum()) == max(int(plain.sum()), target)
    assert not (plain & ~mask).any(), "min_keep removed a token the boxes kept"


@settings(max_examples=100, deadline=None)
@given(box=boxes_st(), grid=grids, min_keep=st.integers(1, 20))
def test_min_keep_adds_the_cells_nearest_the_box_centre(box, grid, min_keep):
    h, w = grid
    plain = boxes_to_keep_mask([box], grid, min_keep=0)
    mask = boxes_to_keep_mask([box], grid, min_keep=min_keep)
    added = (mask & ~plain).flatten().nonzero().flatten().tolist()
    if not added:
        return
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2

    def d2(i: int) -> float:
        r, c = divmod(i, w)
        return ((c + 0.5) / w - cx) ** 2 + ((r + 0.5) / h - cy) ** 2

    left_out = [i for i in range(h * w) if not mask.flatten()[i]]
    if left_out:
        assert max(d2(i) for i in added) <= min(d2(i) for i in left_out) + 1e-12


@settings(max_examples=100, deadline=None)
@given(
    boxes=st.lists(st.lists(st.one_of(st.floats(), st.integers(-5, 5), st.text(max_size=2)), max_size=6), max_size=4)
)
def test_validate_boxes_output_is_always_usable(boxes):
    valid, err = validate_boxes(boxes)
    for box in valid:
        assert len(box) == 4 and all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in box)
        assert box[2] > box[0] and box[3] > box[1]
    assert (err is None) == (len(valid) == len(boxes))
    boxes_to_keep_mask(valid, (3, 3))  # never raises on validated boxes

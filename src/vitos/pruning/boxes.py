"""Box <-> visual-token-grid geometry: which tokens an evidence box keeps (pure functions, no model).

ViToS's sparse branch keeps the visual tokens covered by the grounding branch's boxes. Boxes are
normalised `[x1, y1, x2, y2]` in [0, 1] relative to the image; a vision tower's merged token grid is
H x W in raster order (Qwen2.5-VL's merger output, LLaVA's 24 x 24 patches), so token (r, c) -- raster
index r * W + c -- covers the cell

    [c / W, (c + 1) / W] x [r / H, (r + 1) / H]      (normalised x-range x y-range).

Keep rule **(ours; the paper gives no rule)**: a token is kept when its cell *intersects with positive
area* the union of the boxes, each dilated by `margin` on every side and clipped to [0, 1].
Intersection rather than "cell centre inside the box": a box that cuts through a cell never loses the
evidence at its border, and a box thinner than one cell still keeps the tokens it crosses. Touching an
edge only (zero-area overlap) does not keep a cell; overlaps under 1e-9 are treated as touching so that
floating-point round-off (0.3 - 0.1 = 0.19999999999999998) does not add a row or column.

If fewer than `min_keep` tokens are kept (no boxes, degenerate boxes, a tiny margin-free box), the
tokens whose cell centres are nearest to a box centre (the image centre when there are no boxes) are
added, ties broken by raster index, so the sparse branch always has something to look at.

Usage:
    boxes, err = validate_boxes(parsed_boxes)              # drop malformed boxes, keep the message
    mask = boxes_to_keep_mask(boxes, (16, 16), margin=0.02, min_keep=4)   # (16, 16) bool
    idx = keep_mask_to_indices(mask)                      # (K,) raster indices of kept tokens
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import torch

BOX_TOLERANCE = 0.01
"""Coordinates within this distance outside [0, 1] are clipped, not rejected (models overshoot slightly)."""

_OVERLAP_EPS = 1e-9
"""Overlaps at or below this (normalised units, per axis) count as touching, not intersecting."""


def validate_boxes(boxes: Any) -> tuple[list[list[float]], str | None]:
    """Split `boxes` into usable ones and a message describing the rejected ones.

    A usable box has 4 finite numbers, every coordinate within [-0.01, 1.01] (clipped to [0, 1]), and
    x2 > x1, y2 > y1 after clipping.

    Returns:
        (valid boxes as lists of 4 floats, in input order; None if nothing was rejected, else one message
        listing each rejected box by index with the reason and a fix).
    """
    if boxes is None:
        return [], None
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.tolist()
    if isinstance(boxes, (str, bytes)) or not isinstance(boxes, Sequence):
        return [], (
            f"boxes must be a list of [x1, y1, x2, y2] lists, got {type(boxes).__name__}; "
            "wrap each box in a list, e.g. [[0.1, 0.2, 0.5, 0.6]]"
        )

    valid: list[list[float]] = []
    problems: list[str] = []
    for i, box in enumerate(boxes):
        reason = _box_problem(box)
        if reason is None:
            clipped = [min(max(float(v), 0.0), 1.0) for v in box]
            x1, y1, x2, y2 = clipped
            if x2 <= x1 or y2 <= y1:
                reason = f"empty after clipping to [0, 1] ({clipped})"
            else:
                valid.append(clipped)
                continue
        problems.append(f"box {i} {box!r}: {reason}")

    if not problems:
        return valid, None
    return valid, f"{len(problems)} of {len(boxes)} boxes rejected: " + "; ".join(problems)


def _box_problem(box: Any) -> str | None:
    """Why `box` is unusable before clipping, or None if its values are acceptable."""
    if isinstance(box, Real) and not isinstance(box, bool):
        return "expected a list of 4 numbers, got a single number (did you pass one box? wrap it: [[x1, y1, x2, y2]])"
    if isinstance(box, (str, bytes)) or not isinstance(box, Sequence):
        return f"expected a list of 4 numbers, got {type(box).__name__}"
    if len(box) != 4:
        return f"expected 4 numbers [x1, y1, x2, y2], got {len(box)}"
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in box):
        return "coordinates must be numbers"
    values = [float(v) for v in box]
    if not all(math.isfinite(v) for v in values):
        return "non-finite coordinate (nan or inf)"
    if any(v < -BOX_TOLERANCE or v > 1.0 + BOX_TOLERANCE for v in values):
        return (
            "coordinate far outside [0, 1]; boxes are normalised to the image size "
            "(divide pixel coordinates by width/height)"
        )
    x1, y1, x2, y2 = values
    if x2 < x1 or y2 < y1:
        return "inverted (need x1 <= x2 and y1 <= y2; the order is [x1, y1, x2, y2])"
    if x2 == x1 or y2 == y1:
        return "zero area (x1 == x2 or y1 == y2)"
    return None


def grid_cell_boxes(grid_hw: tuple[int, int], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised [x1, y1, x2, y2] of every cell of an H x W grid in raster order: (H*W, 4)."""
    h, w = _check_grid(grid_hw)
    ys = torch.arange(h + 1, dtype=torch.float64) / h  # (H+1,) row edges
    xs = torch.arange(w + 1, dtype=torch.float64) / w  # (W+1,) column edges
    y1 = ys[:-1].repeat_interleave(w)  # (H*W,)
    y2 = ys[1:].repeat_interleave(w)  # (H*W,)
    x1 = xs[:-1].repeat(h)  # (H*W,)
    x2 = xs[1:].repeat(h)  # (H*W,)
    return torch.stack([x1, y1, x2, y2], dim=1).to(dtype)  # (H*W, 4)


def boxes_to_keep_mask(
    boxes: Sequence[Sequence[float]] | torch.Tensor,
    grid_hw: tuple[int, int],
    margin: float = 0.0,
    min_keep: int = 1,
) -> torch.Tensor:
    """Keep mask (H, W) bool of the tokens whose cells intersect the margin-dilated boxes.

    Args:
        boxes: (n, 4) normalised [x1, y1, x2, y2]; run `validate_boxes` first on model output. An empty
            list keeps nothing before `min_keep` applies.
        grid_hw: (H, W) of the merged token grid.
        margin: dilation of each box side in normalised units (>= 0), clipped to [0, 1].
        min_keep: lower bound on kept tokens (capped at H*W); the nearest tokens to the box centres
            (image centre without boxes) are added, ties broken by raster index.
    """
    h, w = _check_grid(grid_hw)
    if not (isinstance(margin, Real) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0 (normalised units), got {margin!r}")
    if min_keep < 0:
        raise ValueError(f"min_keep must be >= 0, got {min_keep}")
    box_t = _as_box_tensor(boxes)  # (n, 4) float64

    # Dilate and clip each box: (n, 4).
    grown = box_t + torch.tensor([-margin, -margin, margin, margin], dtype=torch.float64)
    grown = grown.clamp(0.0, 1.0)

    xs = torch.arange(w + 1, dtype=torch.float64) / w  # (W+1,) column edges
    ys = torch.arange(h + 1, dtype=torch.float64) / h  # (H+1,) row edges
    # Overlap length of every box with every column / row interval.
    ov_x = torch.minimum(grown[:, 2:3], xs[None, 1:]) - torch.maximum(grown[:, 0:1], xs[None, :-1])  # (n, W)
    ov_y = torch.minimum(grown[:, 3:4], ys[None, 1:]) - torch.maximum(grown[:, 1:2], ys[None, :-1])  # (n, H)
    hit = (ov_y > _OVERLAP_EPS)[:, :, None] & (ov_x > _OVERLAP_EPS)[:, None, :]  # (n, H, W)
    mask = hit.any(dim=0) if box_t.shape[0] > 0 else torch.zeros(h, w, dtype=torch.bool)  # (H, W)

    target = min(int(min_keep), h * w)
    n_kept = int(mask.sum())
    if n_kept < target:
        mask = _add_nearest(mask, box_t, target - n_kept)
    return mask


def _add_nearest(mask: torch.Tensor, box_t: torch.Tensor, n_add: int) -> torch.Tensor:
    """Add the `n_add` unkept cells nearest to any box centre; ties by raster index. mask: (H, W)."""
    h, w = mask.shape
    if box_t.shape[0] > 0:
        centres = torch.stack([(box_t[:, 0] + box_t[:, 2]) / 2, (box_t[:, 1] + box_t[:, 3]) / 2], dim=1)  # (n, 2)
    else:
        centres = torch.tensor([[0.5, 0.5]], dtype=torch.float64)  # (1, 2) image centre
    cells = grid_cell_boxes((h, w))  # (H*W, 4)
    cell_c = torch.stack([(cells[:, 0] + cells[:, 2]) / 2, (cells[:, 1] + cells[:, 3]) / 2], dim=1)  # (H*W, 2)
    dist2 = ((cell_c[:, None, :] - centres[None, :, :]) ** 2).sum(dim=2).min(dim=1).values  # (H*W,)
    # Rounding turns round-off near-ties into exact ties, so the raster tie-break is what decides them.
    dist2 = torch.round(dist2, decimals=12)
    dist2[mask.flatten()] = float("inf")  # already kept cells are never "added"
    order = torch.sort(dist2, stable=True).indices  # (H*W,) stable: raster order breaks ties
    flat = mask.flatten().clone()
    flat[order[:n_add]] = True
    return flat.view(h, w)


def image_box_to_grid_box(box: Sequence[float], region: Sequence[float] = (0.0, 0.0, 1.0, 1.0)) -> list[float]:
    """A box normalised to the image -> the same box normalised to the token grid.

    `region` is the normalised [x1, y1, x2, y2] of the grid the image fills: (0, 0, 1, 1) when the grid
    covers exactly the image (Qwen2.5-VL), a centred sub-rectangle when the processor pads to a square
    (LLaVA / HuatuoGPT-Vision).
    """
    x0, y0, x1, y1 = (float(v) for v in region)
    return [x0 + box[0] * (x1 - x0), y0 + box[1] * (y1 - y0), x0 + box[2] * (x1 - x0), y0 + box[3] * (y1 - y0)]


def keep_mask_to_indices(mask: torch.Tensor) -> torch.Tensor:
    """Raster indices (K,) long of the kept tokens of a keep mask (H, W) (or already flat (N,))."""
    if mask.dtype != torch.bool:
        raise TypeError(f"keep mask must be a bool tensor, got {mask.dtype}; build it with boxes_to_keep_mask")
    return mask.flatten().nonzero().squeeze(1)  # (K,)


def keep_ratio(mask: torch.Tensor) -> float:
    """Fraction of kept tokens in a keep mask (0.0 for an empty mask)."""
    if mask.numel() == 0:
        return 0.0
    return float(mask.sum().item()) / mask.numel()


def _check_grid(grid_hw: tuple[int, int]) -> tuple[int, int]:
    if len(grid_hw) != 2:
        raise ValueError(f"grid_hw must be (H, W), got {grid_hw!r}")
    h, w = (int(v) for v in grid_hw)
    if h <= 0 or w <= 0:
        raise ValueError(f"grid_hw must be positive (H, W), got {grid_hw!r}")
    return h, w


def _as_box_tensor(boxes: Sequence[Sequence[float]] | torch.Tensor) -> torch.Tensor:
    """(n, 4) float64 tensor of boxes; raise a clear error on wrong shape or non-finite values."""
    if len(boxes) == 0:
        return torch.zeros(0, 4, dtype=torch.float64)
    try:
        box_t = torch.as_tensor(boxes, dtype=torch.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"boxes must be an (n, 4) list of numbers ({err}); run validate_boxes first") from err
    if box_t.ndim != 2 or box_t.shape[1] != 4:
        raise ValueError(
            f"boxes must have shape (n, 4) as [x1, y1, x2, y2], got {tuple(box_t.shape)}; run validate_boxes first"
        )
    if not torch.isfinite(box_t).all():
        raise ValueError("boxes contain nan/inf; run validate_boxes first")
    return box_t

"""Draw what the sparse branch sees: pruned token cells greyed out, kept cells clear, evidence boxes outlined.

One picture answers "did the boxes keep the evidence?": the image keeps its size; every pruned cell of the
H x W token grid is blended towards grey with weight `alpha`; kept cells are left untouched except for a
thin 1-pixel grid on the cell edges (omitted when cells are under 4 pixels, where it would hide the
image); the boxes are drawn as coloured rectangles (normalised -> pixel coordinates, one colour each).
Cell (r, c) spans pixels [round(c * width / W), round((c + 1) * width / W)) horizontally, the same
partition `vitos.pruning.boxes` uses in normalised units.

Usage:
    from vitos.overlay import draw_overlay
    draw_overlay(image, boxes, keep_mask, alpha=0.45).save("overlay.png")
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from vitos.pruning.boxes import validate_boxes

logger = logging.getLogger(__name__)

PRUNED_TINT = (30, 30, 30)
"""Dark grey that pruned cells are blended towards: dims them, so kept cells stand out on grey scans too."""
GRID_COLOUR = (255, 255, 255)
GRID_ALPHA = 0.35
"""Grid lines are blended, not painted, so the image stays readable under them."""
BOX_COLOURS = ((255, 40, 40), (40, 220, 40), (40, 160, 255), (255, 210, 0), (255, 0, 255), (0, 230, 230))
_MIN_CELL_PX_FOR_GRID = 4


def draw_overlay(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    keep_mask: torch.Tensor | None = None,
    alpha: float = 0.45,
    grid_region: Sequence[float] = (0.0, 0.0, 1.0, 1.0),
) -> Image.Image:
    """Return an RGB copy of `image` (same size) with pruned cells greyed, a grid, and boxes drawn.

    Args:
        image: any PIL image (converted to RGB).
        boxes: normalised [x1, y1, x2, y2] boxes; malformed ones are skipped with a logged warning.
        keep_mask: (H, W) bool keep mask of the token grid, or None to draw boxes only.
        alpha: blend weight of the grey tint on pruned cells, in [0, 1] (1 = solid grey).
        grid_region: normalised [x1, y1, x2, y2] of the token grid that the image fills ((0, 0, 1, 1) for
            Qwen2.5-VL; LLaVA pads to a square, so its grid extends past a non-square image).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = image.convert("RGB")
    width, height = base.size
    pixels = np.asarray(base, dtype=np.float32).copy()  # (height, width, 3)

    if keep_mask is not None:
        if keep_mask.ndim != 2 or keep_mask.dtype != torch.bool:
            raise ValueError(
                f"keep_mask must be an (H, W) bool tensor, got {keep_mask.dtype} {tuple(keep_mask.shape)}"
            )
        grid_h, grid_w = keep_mask.shape
        rx1, ry1, rx2, ry2 = (float(v) for v in grid_region)
        # Cell edges in image pixels; with a padded grid some edges fall outside the image.
        x_edges = np.round((np.arange(grid_w + 1) / grid_w - rx1) / (rx2 - rx1) * width).astype(int)  # (W+1,)
        y_edges = np.round((np.arange(grid_h + 1) / grid_h - ry1) / (ry2 - ry1) * height).astype(int)  # (H+1,)
        col_of_x = np.clip(np.searchsorted(x_edges, np.arange(width), side="right") - 1, 0, grid_w - 1)  # (width,)
        row_of_y = np.clip(np.searchsorted(y_edges, np.arange(height), side="right") - 1, 0, grid_h - 1)  # (height,)
        keep_np = keep_mask.detach().cpu().numpy()
        pruned_px = ~keep_np[row_of_y[:, None], col_of_x[None, :]]  # (height, width)
        tint = np.asarray(PRUNED_TINT, dtype=np.float32)
        pixels[pruned_px] = (1.0 - alpha) * pixels[pruned_px] + alpha * tint

        cell_w, cell_h = np.diff(x_edges).min(), np.diff(y_edges).min()
        if cell_w >= _MIN_CELL_PX_FOR_GRID and cell_h >= _MIN_CELL_PX_FOR_GRID:
            line = np.zeros((height, width), dtype=bool)
            xs, ys = x_edges[1:-1], y_edges[1:-1]
            line[:, xs[(xs >= 0) & (xs < width)]] = True
            line[ys[(ys >= 0) & (ys < height)], :] = True
            colour = np.asarray(GRID_COLOUR, dtype=np.float32)
            pixels[line] = (1.0 - GRID_ALPHA) * pixels[line] + GRID_ALPHA * colour

    out = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), mode="RGB")

    valid, error = validate_boxes(list(boxes))
    if error:
        logger.warning("draw_overlay: %s", error)
    draw = ImageDraw.Draw(out)
    line_width = max(2, round(min(width, height) / 200))
    for i, (x1, y1, x2, y2) in enumerate(valid):
        rect = [
            min(int(round(x1 * width)), width - 1),
            min(int(round(y1 * height)), height - 1),
            max(int(round(x2 * width)) - 1, 0),
            max(int(round(y2 * height)) - 1, 0),
        ]
        rect[2], rect[3] = max(rect[2], rect[0]), max(rect[3], rect[1])
        draw.rectangle(rect, outline=BOX_COLOURS[i % len(BOX_COLOURS)], width=line_width)
    return out

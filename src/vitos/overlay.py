"""Draw what the sparse branch sees: pruned token cells greyed out, kept cells outlined, evidence boxes drawn.

One picture answers "did the boxes keep the evidence?". `draw_overlay` keeps the image's size: every pruned
cell of the H x W token grid is blended towards dark grey with weight `alpha` (with a faint white grid on
its edges); the kept region is outlined in opaque cyan (`KEPT_OUTLINE`, 1-2 px inside its border cells)
and the edges between two kept cells are drawn as a 1-px half-transparent cyan line, so kept tokens show on
a black scan as well as on a white one; kept cell interiors are untouched. Grid lines are omitted when
cells are under 4 pixels (they would hide the image). Predicted boxes are solid rectangles (one colour
each, `BOX_COLOURS`); ground-truth boxes are dashed white/black (visible on any background).
Cell (r, c) spans pixels [round(c * width / W), round((c + 1) * width / W)) horizontally, the same
partition `vitos.pruning.boxes` uses in normalised units.

`render_overlay` is the picture for a reader: the overlay enlarged to a readable width, with a caption
band under it (question, answer, correct / wrong against the reference, kept-token count) and a legend
(predicted box, ground-truth box, kept tokens, pruned tokens), text at a size that scales with the width.

Usage:
    from vitos.overlay import draw_overlay, render_overlay
    draw_overlay(image, boxes, keep_mask, alpha=0.45).save("overlay.png")
    render_overlay(image, boxes, keep_mask, gt_boxes=[[...]], question="Is there ...?", answer="yes",
                   reference="yes", correct=True, kept_tokens=(52, 256)).save("overlay_captioned.png")
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from vitos.pruning.boxes import validate_boxes

logger = logging.getLogger(__name__)

PRUNED_TINT = (30, 30, 30)
"""Dark grey that pruned cells are blended towards: dims them, so kept cells stand out on grey scans too."""
GRID_COLOUR = (255, 255, 255)
GRID_ALPHA = 0.35
"""Grid lines are blended, not painted, so the image stays readable under them."""
KEPT_OUTLINE = (0, 255, 255)
"""Cyan outline of kept cells: opaque on the kept region's border, blended with KEPT_INNER_ALPHA inside it."""
KEPT_INNER_ALPHA = 0.5
BOX_COLOURS = ((255, 40, 40), (255, 150, 0), (255, 0, 255), (40, 120, 255), (170, 255, 0), (255, 120, 170))
"""Predicted boxes, one colour each (none is cyan, white or black: those mark kept cells and ground truth)."""
GT_DASH = ((255, 255, 255), (0, 0, 0))
"""Ground-truth boxes: dashes alternating white and black."""
_MIN_CELL_PX_FOR_GRID = 4


def draw_overlay(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    keep_mask: torch.Tensor | None = None,
    alpha: float = 0.45,
    grid_region: Sequence[float] = (0.0, 0.0, 1.0, 1.0),
    gt_boxes: Sequence[Sequence[float]] | None = None,
) -> Image.Image:
    """Return an RGB copy of `image` (same size) with pruned cells greyed, kept cells outlined, boxes drawn.

    Args:
        image: any PIL image (converted to RGB).
        boxes: normalised [x1, y1, x2, y2] boxes; malformed ones are skipped with a logged warning.
        keep_mask: (H, W) bool keep mask of the token grid, or None to draw boxes only.
        alpha: blend weight of the grey tint on pruned cells, in [0, 1] (1 = solid grey).
        grid_region: normalised [x1, y1, x2, y2] of the token grid that the image fills ((0, 0, 1, 1) for
            Qwen2.5-VL; LLaVA pads to a square, so its grid extends past a non-square image).
        gt_boxes: normalised ground-truth boxes, drawn dashed white/black (None: none).
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
        grid_ok = cell_w >= _MIN_CELL_PX_FOR_GRID and cell_h >= _MIN_CELL_PX_FOR_GRID
        if grid_ok:
            line = np.zeros((height, width), dtype=bool)
            xs, ys = x_edges[1:-1], y_edges[1:-1]
            line[:, xs[(xs >= 0) & (xs < width)]] = True
            line[ys[(ys >= 0) & (ys < height)], :] = True
            line &= pruned_px  # kept cells get the cyan outline instead
            colour = np.asarray(GRID_COLOUR, dtype=np.float32)
            pixels[line] = (1.0 - GRID_ALPHA) * pixels[line] + GRID_ALPHA * colour
        inner, border = _kept_outline(keep_np, x_edges, y_edges, col_of_x, row_of_y, width, height, grid_ok)
        cyan = np.asarray(KEPT_OUTLINE, dtype=np.float32)
        pixels[inner] = (1.0 - KEPT_INNER_ALPHA) * pixels[inner] + KEPT_INNER_ALPHA * cyan
        pixels[border] = cyan

    out = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), mode="RGB")

    valid, error = validate_boxes(list(boxes))
    if error:
        logger.warning("draw_overlay: %s", error)
    draw = ImageDraw.Draw(out)
    line_width = max(2, round(min(width, height) / 200))
    if gt_boxes:
        gt_valid, gt_error = validate_boxes(list(gt_boxes))
        if gt_error:
            logger.warning("draw_overlay: ground truth: %s", gt_error)
        for box in gt_valid:
            _dashed_rectangle(draw, _pixel_rect(box, width, height), line_width, dash=max(4, 3 * line_width))
    for i, box in enumerate(valid):
        draw.rectangle(_pixel_rect(box, width, height), outline=BOX_COLOURS[i % len(BOX_COLOURS)], width=line_width)
    return out


def _pixel_rect(box: Sequence[float], width: int, height: int) -> list[int]:
    """Normalised [x1, y1, x2, y2] -> inclusive pixel rectangle inside the image (at least one pixel)."""
    x1, y1, x2, y2 = box
    rect = [
        min(int(round(x1 * width)), width - 1),
        min(int(round(y1 * height)), height - 1),
        max(int(round(x2 * width)) - 1, 0),
        max(int(round(y2 * height)) - 1, 0),
    ]
    rect[2], rect[3] = max(rect[2], rect[0]), max(rect[3], rect[1])
    return rect


def _dashed_rectangle(draw: ImageDraw.ImageDraw, rect: list[int], width: int, dash: int) -> None:
    """Rectangle outline `width` px wide inside `rect`, in dashes of `dash` px alternating GT_DASH colours."""
    x1, y1, x2, y2 = rect
    w = max(1, min(width, (x2 - x1 + 1) // 2 or 1, (y2 - y1 + 1) // 2 or 1))
    for k, start in enumerate(range(x1, x2 + 1, dash)):
        end, colour = min(start + dash - 1, x2), GT_DASH[k % 2]
        draw.rectangle([start, y1, end, y1 + w - 1], fill=colour)  # top
        draw.rectangle([start, y2 - w + 1, end, y2], fill=colour)  # bottom
    for k, start in enumerate(range(y1, y2 + 1, dash)):
        end, colour = min(start + dash - 1, y2), GT_DASH[k % 2]
        draw.rectangle([x1, start, x1 + w - 1, end], fill=colour)  # left
        draw.rectangle([x2 - w + 1, start, x2, end], fill=colour)  # right


def _kept_outline(keep, x_edges, y_edges, col_of_x, row_of_y, width, height, inner_lines):
    """(inner, border) pixel masks of the kept cells' outline: `border` = the pixels within `w` of a kept
    cell's edge that faces a pruned cell or the image border (w = 2 px for cells of 8+ px, else 1);
    `inner` = the first pixel row / column of a kept cell whose top / left neighbour is kept too."""
    grid_h, grid_w = keep.shape
    # Cell extents clipped to the image (a padded grid's border cells end at the image edge).
    left = np.clip(x_edges[:-1], 0, width)[col_of_x]  # (width,) first pixel of each column's cell
    right = np.clip(x_edges[1:], 0, width)[col_of_x]  # (width,) one past its last pixel
    top = np.clip(y_edges[:-1], 0, height)[row_of_y]
    bottom = np.clip(y_edges[1:], 0, height)[row_of_y]
    xs, ys = np.arange(width), np.arange(height)
    dl, dr, dt, db = xs - left, right - 1 - xs, ys - top, bottom - 1 - ys
    cell = min(int(np.diff(x_edges).min()), int(np.diff(y_edges).min()))
    w = 2 if cell >= 8 else 1
    padded = np.pad(keep, 1, constant_values=False)  # neighbours of border cells are "not kept"
    r, c = row_of_y[:, None] + 1, col_of_x[None, :] + 1
    kept = padded[r, c]
    border = kept & (
        ((dl < w)[None, :] & ~padded[r, c - 1])
        | ((dr < w)[None, :] & ~padded[r, c + 1])
        | ((dt < w)[:, None] & ~padded[r - 1, c])
        | ((db < w)[:, None] & ~padded[r + 1, c])
    )
    if not inner_lines:
        return np.zeros_like(border), border
    inner = kept & (((dl == 0)[None, :] & padded[r, c - 1]) | ((dt == 0)[:, None] & padded[r - 1, c])) & ~border
    return inner, border


# ---------------------------------------------------------------------------------------------- for a reader
CAPTION_BG = (18, 18, 18)
CAPTION_TEXT = (240, 240, 240)
RIGHT_COLOUR = (60, 220, 90)
WRONG_COLOUR = (255, 80, 80)


def caption_font_size(width: int) -> int:
    """Caption text height in pixels for a picture `width` pixels wide: 1/36 of it, at least 16."""
    return max(16, width // 36)


def render_overlay(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    keep_mask: torch.Tensor | None = None,
    *,
    gt_boxes: Sequence[Sequence[float]] | None = None,
    alpha: float = 0.45,
    grid_region: Sequence[float] = (0.0, 0.0, 1.0, 1.0),
    title: str | None = None,
    question: str | None = None,
    answer: str | None = None,
    reference: str | None = None,
    correct: bool | None = None,
    kept_tokens: tuple[int, int] | None = None,
    min_width: int = 512,
    max_width: int = 1024,
) -> Image.Image:
    """`draw_overlay` at a readable size with a caption band and a legend under the image.

    The image is resized to a width in [min_width, max_width] (aspect kept; nearest-neighbour when enlarged
    2x or more, so small scans stay crisp) BEFORE the overlay is drawn, so outlines keep their pixel width.
    The band holds, when given: `title`; the question; the answer with CORRECT / WRONG (`correct`, judged by
    the caller) and the reference; "kept k / n visual tokens"; then a legend of what is drawn (predicted
    box, ground-truth box, kept tokens, pruned tokens). Returns a new RGB image, taller than the overlay.
    """
    base = image.convert("RGB")
    width = min(max(base.width, min_width), max_width)
    if width != base.width:
        height = max(1, round(base.height * width / base.width))
        resample = Image.NEAREST if width >= 2 * base.width else Image.LANCZOS
        base = base.resize((width, height), resample)
    panel = draw_overlay(base, boxes, keep_mask, alpha=alpha, grid_region=grid_region, gt_boxes=gt_boxes)

    size = caption_font_size(width)
    font = ImageFont.load_default(size=size)
    pad, gap = size // 2, max(2, size // 4)
    lines: list[list[tuple[str, tuple[int, int, int]]]] = []  # each line: (text, colour) runs
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrap = width - 2 * pad

    def add(text: str, colour=CAPTION_TEXT) -> None:
        for piece in _wrap(measure, text, font, wrap):
            lines.append([(piece, colour)])

    if title:
        add(title)
    if question:
        add(f"Q: {question}")
    if answer is not None or correct is not None:
        runs = [(f"A: {answer if answer is not None else '(no answer)'}", CAPTION_TEXT)]
        if correct is not None:
            runs.append(("   CORRECT" if correct else "   WRONG", RIGHT_COLOUR if correct else WRONG_COLOUR))
        if reference is not None:
            runs.append((f"   (reference: {reference})", CAPTION_TEXT))
        text = "".join(t for t, _ in runs)
        if measure.textlength(text, font=font) <= wrap:
            lines.append(runs)
        else:  # too long for one line: wrap it plainly, the verdict on its own line
            add(runs[0][0])
            lines.extend([[run] for run in runs[1:]])
    if kept_tokens is not None:
        kept, total = kept_tokens
        add(f"kept {kept} / {total} visual tokens ({100 * kept / max(1, total):.0f}%)")

    legend = []  # (kind, label)
    if boxes:
        legend.append(("pred", "predicted box"))
    if gt_boxes:
        legend.append(("gt", "ground-truth box"))
    if keep_mask is not None:
        legend += [("kept", "kept tokens"), ("pruned", "pruned tokens")]
    swatch = size
    legend_rows: list[list[tuple[str, str]]] = [[]]
    x = 0
    for kind, label in legend:
        item = swatch + gap + int(measure.textlength(label, font=font)) + 2 * size
        if legend_rows[-1] and x + item > wrap:
            legend_rows.append([])
            x = 0
        legend_rows[-1].append((kind, label))
        x += item
    legend_rows = [row for row in legend_rows if row]

    line_h = size + gap
    band_h = pad + line_h * (len(lines) + len(legend_rows)) + pad if (lines or legend_rows) else 0
    canvas = Image.new("RGB", (width, panel.height + band_h), CAPTION_BG)
    canvas.paste(panel, (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = panel.height + pad
    for runs in lines:
        x = pad
        for text, colour in runs:
            draw.text((x, y), text, font=font, fill=colour)
            x += int(draw.textlength(text, font=font))
        y += line_h
    for row in legend_rows:
        x = pad
        for kind, label in row:
            _legend_swatch(draw, kind, [x, y + 1, x + swatch - 1, y + swatch - 1], alpha)
            x += swatch + gap
            draw.text((x, y), label, font=font, fill=CAPTION_TEXT)
            x += int(draw.textlength(label, font=font)) + 2 * size
        y += line_h
    return canvas


def _legend_swatch(draw: ImageDraw.ImageDraw, kind: str, rect: list[int], alpha: float) -> None:
    w = max(2, (rect[2] - rect[0]) // 8)
    if kind == "pred":
        draw.rectangle(rect, outline=BOX_COLOURS[0], width=w)
    elif kind == "gt":
        _dashed_rectangle(draw, rect, w, dash=max(3, (rect[2] - rect[0]) // 4))
    elif kind == "kept":
        draw.rectangle(rect, fill=(90, 90, 90), outline=KEPT_OUTLINE, width=w)
    else:  # pruned: the same grey, tinted as pruned cells are, in a faint grid-line frame (visible on the dark band)
        tinted = tuple(round((1 - alpha) * 90 + alpha * t) for t in PRUNED_TINT)
        frame = tuple(round((1 - GRID_ALPHA) * t + GRID_ALPHA * g) for t, g in zip(tinted, GRID_COLOUR))
        draw.rectangle(rect, fill=tinted, outline=frame, width=1)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap of `text` to lines at most `width` pixels wide (a longer single word stays whole)."""
    out, line = [], ""
    for word in text.split():
        trial = f"{line} {word}" if line else word
        if line and draw.textlength(trial, font=font) > width:
            out.append(line)
            line = word
        else:
            line = trial
    out.append(line)
    return out

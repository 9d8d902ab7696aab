"""draw_overlay: same size RGB; pruned cells tinted, kept cell interiors untouched, box outlines drawn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitos.overlay import draw_overlay

COLOUR = (10, 200, 30)  # far from the grey tint, the white grid and every box colour


def _image(w: int = 80, h: int = 60) -> Image.Image:
    return Image.new("RGB", (w, h), COLOUR)


def test_output_is_rgb_and_same_size_for_grey_input():
    grey = Image.new("L", (33, 21), 90)
    out = draw_overlay(grey, [[0.1, 0.1, 0.5, 0.5]], torch.ones(3, 3, dtype=torch.bool))
    assert out.mode == "RGB" and out.size == (33, 21)


def test_pruned_cells_are_tinted_and_kept_interiors_untouched():
    img = _image(80, 60)  # 4 x 3 grid -> cells of 20 x 20 pixels
    keep = torch.tensor([[True, False, False, False], [False, False, False, False], [False, False, False, True]])
    out = np.asarray(draw_overlay(img, [], keep)).astype(int)
    src = np.asarray(img).astype(int)
    assert out.shape == src.shape
    # interiors (2 px away from every cell edge) of kept cells (0, 0) and (2, 3) are unchanged
    assert (out[2:18, 2:18] == src[2:18, 2:18]).all()
    assert (out[42:58, 62:78] == src[42:58, 62:78]).all()
    # every pixel of a pruned cell changed, towards grey (green channel falls, red rises)
    pruned = out[22:38, 22:38]
    assert (pruned != src[22:38, 22:38]).any(axis=2).all()
    assert (pruned[..., 1] < COLOUR[1]).all() and (pruned[..., 0] > COLOUR[0]).all()


def test_alpha_zero_leaves_pruned_cells_unchanged_and_alpha_one_makes_them_uniform():
    img = _image(40, 40)
    keep = torch.tensor([[True, False], [False, False]])
    clear = np.asarray(draw_overlay(img, [], keep, alpha=0.0))
    assert (clear[25:35, 25:35] == np.asarray(img)[25:35, 25:35]).all()
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    solid = np.asarray(draw_overlay(noise, [], keep, alpha=1.0))
    cell = solid[25:35, 25:35].reshape(-1, 3)
    assert (cell == cell[0]).all(), "alpha=1 must hide the image under a uniform tint"


def test_box_outline_pixels_change_and_box_interior_of_kept_cells_does_not():
    img = _image(100, 100)
    box = [0.2, 0.3, 0.6, 0.7]  # pixels x 20..59, y 30..69
    out = np.asarray(draw_overlay(img, [box], keep_mask=None)).astype(int)
    src = np.asarray(img).astype(int)
    assert out.shape == src.shape
    assert (out[30, 20:60] != src[30, 20:60]).any(axis=1).all()  # top edge
    assert (out[69, 20:60] != src[69, 20:60]).any(axis=1).all()  # bottom edge
    assert (out[30:70, 20] != src[30:70, 20]).any(axis=1).all()  # left edge
    assert (out[30:70, 59] != src[30:70, 59]).any(axis=1).all()  # right edge
    assert (out[40:60, 30:50] == src[40:60, 30:50]).all()  # inside, away from the outline
    assert (out[:25] == src[:25]).all()  # outside the box nothing changes without a mask


def test_malformed_boxes_are_skipped_not_fatal():
    img = _image(20, 20)
    out = draw_overlay(img, [[0.5, 0.5, 0.1, 0.1], [1, 2, 3]], None)
    assert (np.asarray(out) == np.asarray(img)).all()


def test_bad_mask_and_alpha_are_rejected():
    with pytest.raises(ValueError, match="bool"):
        draw_overlay(_image(), [], torch.ones(2, 2))
    with pytest.raises(ValueError, match="alpha"):
        draw_overlay(_image(), [], None, alpha=1.5)


def test_padded_grid_region_maps_cells_onto_the_image_band():
    """LLaVA pads to a square: with the image filling y in [0.25, 0.75] of a 2 x 2 grid, grid row 0 covers
    the image's top half and row 1 its bottom half."""
    image = Image.new("RGB", (100, 50), (200, 200, 200))
    keep = torch.tensor([[True, True], [False, False]])
    out = np.asarray(draw_overlay(image, [], keep, grid_region=(0.0, 0.25, 1.0, 0.75)), dtype=np.int16)
    src = np.asarray(image, dtype=np.int16)
    assert out.shape == src.shape
    assert np.array_equal(out[2:20, 2:45], src[2:20, 2:45])  # kept top half, away from grid lines
    assert (np.abs(out[30:48, 2:45] - src[30:48, 2:45]) > 20).all()  # pruned bottom half tinted


# ------------------------------------------------------------------- kept-cell outline, ground truth, caption
from vitos.overlay import (  # noqa: E402
    BOX_COLOURS,
    CAPTION_BG,
    KEPT_OUTLINE,
    RIGHT_COLOUR,
    WRONG_COLOUR,
    render_overlay,
)


def _near(pixels: np.ndarray, colour, tol: int = 12) -> np.ndarray:
    return (np.abs(pixels.astype(int) - np.asarray(colour)) <= tol).all(axis=-1)


def test_kept_cells_are_outlined_in_cyan_on_a_black_scan():
    """On black, tint and image are both ~black: only the outline tells kept from pruned cells."""
    black = Image.new("RGB", (80, 80), (0, 0, 0))  # 4 x 4 grid, 20 px cells
    keep = torch.zeros(4, 4, dtype=torch.bool)
    keep[1, 1] = keep[1, 2] = True  # one 2-cell region: x 20..59, y 20..39
    out = np.asarray(draw_overlay(black, [], keep)).astype(int)
    cyan = np.asarray(KEPT_OUTLINE)
    # region border: 2 px, opaque, on all four sides of the region
    assert (out[20:22, 20:60] == cyan).all() and (out[38:40, 20:60] == cyan).all()  # top, bottom
    assert (out[20:40, 20:22] == cyan).all() and (out[20:40, 58:60] == cyan).all()  # left, right
    # the edge between the two kept cells: a 1-px half-transparent cyan line, not the opaque border
    line = out[22:38, 40]
    assert (line[:, 0] == 0).all() and (line[:, 1] > 100).all() and (line[:, 1] < 200).all()
    assert (out[22:38, 41] == 0).all()  # one pixel wide
    # interiors of kept cells untouched; no pruned pixel is cyan-ish (green high, red low)
    assert (out[23:37, 23:39] == 0).all() and (out[23:37, 42:57] == 0).all()
    pruned = np.ones((80, 80), dtype=bool)
    pruned[20:40, 20:60] = False
    assert not ((out[..., 1] > 100) & (out[..., 0] < 50))[pruned].any()


def test_ground_truth_box_is_dashed_white_and_black_and_predicted_box_is_not():
    grey = Image.new("RGB", (100, 100), (128, 128, 128))
    out = np.asarray(draw_overlay(grey, [[0.1, 0.1, 0.4, 0.4]], None, gt_boxes=[[0.5, 0.5, 0.9, 0.9]]))
    gt_top = out[50, 50:90]
    assert _near(gt_top, (255, 255, 255), 0).sum() >= 10 and _near(gt_top, (0, 0, 0), 0).sum() >= 10
    pred_top = out[10, 10:40]
    assert _near(pred_top, BOX_COLOURS[0], 0).all()


@pytest.mark.parametrize("correct", [True, False])
def test_render_overlay_is_readable_and_states_the_verdict_and_the_legend(correct):
    img = Image.new("RGB", (64, 48), (0, 0, 0))  # small scan: enlarged to min_width
    keep = torch.zeros(3, 4, dtype=torch.bool)
    keep[1, 1] = True
    out = render_overlay(img, [[0.25, 0.33, 0.5, 0.66]], keep, gt_boxes=[[0.3, 0.4, 0.45, 0.6]],
                         question="Is there a lesion?", answer="yes", reference="yes" if correct else "no",
                         correct=correct, kept_tokens=(1, 12), min_width=512)
    arr = np.asarray(out)
    assert out.width == 512 and out.height > 384  # 64 x 48 -> 512 x 384 image + caption band
    image, band = arr[:384], arr[384:]
    # the image part is the overlay drawn at display size (outlines keep their pixel width when enlarged)
    assert (image == np.asarray(draw_overlay(img.resize((512, 384), Image.NEAREST), [[0.25, 0.33, 0.5, 0.66]],
                                             keep, gt_boxes=[[0.3, 0.4, 0.45, 0.6]]))).all()
    # the verdict in its colour, and only that one
    assert _near(band, RIGHT_COLOUR if correct else WRONG_COLOUR, 30).sum() > 30
    assert _near(band, WRONG_COLOUR if correct else RIGHT_COLOUR, 30).sum() == 0
    # legend swatches: predicted box colour, kept-cell cyan, dashed white
    for colour in (BOX_COLOURS[0], KEPT_OUTLINE, (255, 255, 255)):
        assert _near(band, colour, 10).any(), colour
    # captions at a readable size: the first text line is at least 12 px tall
    text_rows = np.nonzero((~_near(band, CAPTION_BG, 40)).any(axis=1))[0]
    first_run = np.split(text_rows, np.nonzero(np.diff(text_rows) > 1)[0] + 1)[0]
    assert len(first_run) >= 12


def test_render_overlay_without_a_mask_or_ground_truth_shows_no_kept_or_gt_legend():
    img = Image.new("RGB", (600, 400), (128, 128, 128))
    out = np.asarray(render_overlay(img, [[0.1, 0.1, 0.5, 0.5]], None, answer="no"))
    band = out[400:]
    assert not _near(band, KEPT_OUTLINE, 10).any() and not _near(band, (255, 255, 255), 0).any()
    assert _near(band, BOX_COLOURS[0], 10).any()

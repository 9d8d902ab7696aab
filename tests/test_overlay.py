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

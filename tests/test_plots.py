"""The demo's pictures (vitos.study.plots): what a reader needs is on them, checked on the matplotlib
artists before saving (error bars, chance line, labels, fixed axes, markers that do not hide each other) and
on the overlay pixels (captions, verdict colours)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402
from PIL import Image  # noqa: E402

from vitos.data.sample import Sample  # noqa: E402
from vitos.overlay import RIGHT_COLOUR, WRONG_COLOUR  # noqa: E402
from vitos.stats import wilson_interval  # noqa: E402
from vitos.study.plots import (  # noqa: E402
    accuracy_vs_kept_figure,
    dodge,
    moving_band,
    plot_accuracy_vs_kept,
    plot_reward_curves,
    reward_curves_figure,
    save_overlays,
)

ROWS = [
    {"name": "full tokens (warm start)", "accuracy": 0.62, "kept": 1.0, "n": 100},
    {"name": "ViToS, warm start", "accuracy": 0.64, "kept": 0.30, "n": 100},
    {"name": "ViToS after RL", "accuracy": 0.64, "kept": 0.30, "n": 100},  # the same point: must stay visible
    {"name": "center baseline (same budget)", "accuracy": 0.50, "kept": 0.30, "n": 100},
]
POINTS = [{"name": "center@0.25", "accuracy": 0.47, "kept": 0.25, "n": 100},
          {"name": "center@0.5", "accuracy": 0.55, "kept": 0.5, "n": 100}]


def _labels_on_every_panel(fig) -> None:
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()


def test_accuracy_plot_has_wilson_error_bars_a_chance_line_labels_and_fixed_axes():
    fig = accuracy_vs_kept_figure(ROWS, POINTS, chance=0.55, chance_label="per-type majority answer")
    ax = fig.axes[0]
    try:
        _labels_on_every_panel(fig)
        assert ax.get_xlim()[0] == 0 and ax.get_xlim()[1] >= 1 and ax.get_ylim() == (0.0, 1.0)
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == len(ROWS) + 1  # every row, then the fixed-ratio curve
        for row, bar in zip(ROWS, bars):
            assert bar.has_yerr
            segment = bar.lines[2][0].get_segments()[0]  # (x, low), (x, high)
            low, high = wilson_interval(64 if row["accuracy"] == 0.64 else round(row["accuracy"] * 100), 100)
            assert sorted(segment[:, 1]) == pytest.approx([low, high])
        curve_segments = bars[-1].lines[2][0].get_segments()
        assert len(curve_segments) == len(POINTS)
        chance = [line for line in ax.lines if line.get_gid() == "chance"]
        assert len(chance) == 1 and set(chance[0].get_ydata()) == {0.55}
        assert "per-type majority answer (55%)" in chance[0].get_label()
        assert "per-type majority answer (55%)" in [t.get_text() for t in ax.get_legend().get_texts()]
    finally:
        plt.close(fig)


def test_coincident_points_are_dodged_and_drawn_in_different_sizes():
    fig = accuracy_vs_kept_figure(ROWS, [])
    try:
        bars = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
        warm, rl = bars[1].lines[0], bars[2].lines[0]
        assert warm.get_xdata()[0] != rl.get_xdata()[0]  # set apart sideways...
        assert abs(warm.get_xdata()[0] - rl.get_xdata()[0]) <= 0.03  # ...by a hair, not a misreading
        assert warm.get_markersize() > rl.get_markersize() and warm.get_markerfacecolor() == "none"
        assert any("dodged" in t.get_text() for t in fig.texts)
    finally:
        plt.close(fig)
    assert dodge([0.3, 0.31, 0.3, 0.8]) == pytest.approx([-0.015, 0.0, 0.015, 0.0])  # a group of 3, a lone point


def test_without_a_known_majority_the_chance_line_is_half_and_says_so():
    fig = accuracy_vs_kept_figure([{k: v for k, v in r.items() if k != "n"} for r in ROWS[:2]], [], n=20)
    try:
        ax = fig.axes[0]
        (chance,) = [line for line in ax.lines if line.get_gid() == "chance"]
        assert set(chance.get_ydata()) == {0.5} and "not known" in chance.get_label()
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert all(b.has_yerr for b in bars)  # n passed for the whole plot
    finally:
        plt.close(fig)


def test_reward_curves_have_bands_labels_and_do_not_zoom_into_noise():
    curve = [{"step": i + 1, "grounding/reward": 3.0 + 0.02 * (i % 3), "sparse/reward": 1.2 + 0.01 * (i % 2),
              "grounding/iou": 0.4, "sparse/accuracy": 0.6, "kept_token_ratio": 0.3} for i in range(12)]
    fig = reward_curves_figure(curve)
    try:
        _labels_on_every_panel(fig)
        left, right = fig.axes
        assert len(left.collections) == 2  # one 95 % band per branch
        assert left.get_ylim()[0] <= 0.0  # a 0.02 wiggle stays a wiggle
        assert right.get_ylim() == (0.0, 1.0)
    finally:
        plt.close(fig)
    low, high = moving_band([1.0, 3.0, 1.0, 3.0], 2)
    assert low[0] == high[0] == 1.0  # one point: no spread
    assert high[1] - low[1] == pytest.approx(2 * 1.96 * np.sqrt(2.0) / np.sqrt(2))


def test_plots_are_written_as_png(tmp_path):
    plot_accuracy_vs_kept(ROWS, POINTS, tmp_path / "a.png", chance=0.55)
    plot_reward_curves([{"step": i, "grounding/reward": 1.0, "sparse/reward": 0.5} for i in range(5)], tmp_path / "r.png")
    for name in ("a.png", "r.png"):
        assert Image.open(tmp_path / name).format == "PNG"


def test_demo_overlays_are_captioned_with_the_verdict_of_each_panel(tmp_path):
    sample = Sample(id="p0", images=[], question="Is there a lesion in the kidney?", answer="yes", kind="yes_no",
                    boxes=[[0.25, 0.25, 0.5, 0.5]])
    image = Image.new("RGB", (224, 224), (40, 40, 40))
    keep = torch.zeros(8, 8, dtype=torch.bool)
    keep[2:4, 2:4] = True
    rec = {"answer": "yes", "correct": True, "boxes": [[0.25, 0.25, 0.5, 0.5]], "iou": 1.0, "keep_masks": [keep],
           "visual_tokens_kept": 4, "visual_tokens_total": 64}
    wrong = {**rec, "answer": "no", "correct": False, "iou": 0.2}
    (path,) = save_overlays([sample], [[image]], [wrong], [rec], tmp_path / "ov", 1)
    out = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert out.shape[1] >= 2 * 512 and out.shape[0] > 512  # two readable panels with caption bands
    left, right = out[512:, :512], out[512:, -512:]

    def has(band, colour):
        return (np.abs(band - np.asarray(colour)) <= 30).all(axis=-1).sum() > 30

    assert has(left, WRONG_COLOUR) and not has(left, RIGHT_COLOUR)  # warm start: wrong
    assert has(right, RIGHT_COLOUR) and not has(right, WRONG_COLOUR)  # after RL: correct

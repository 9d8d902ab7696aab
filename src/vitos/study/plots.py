"""Plots and overlays shared by `vitos demo` and `vitos study` (matplotlib, Agg; PNG files).

    plot_reward_curves(metrics_records, "reward_curves.png")      # per-branch reward of an RL run
    plot_accuracy_vs_kept(rows, curve_points, "accuracy_vs_kept.png", chance=0.55)  # rows: name, accuracy, kept, n
    save_overlays(samples, images, warm_records, rl_records, folder, n)   # captioned (vitos.overlay.render_overlay)
    plot_study_rows(rows, "study_accuracy.png", chance=0.5)       # accuracy with 95 % intervals per row
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` points (same length as `values`)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def moving_band(values: list[float], window: int, z: float = 1.96) -> tuple[list[float], list[float]]:
    """(low, high) of a band around the trailing moving average: mean +- z standard errors of the points in
    the window (sample standard deviation / sqrt(points); 0 for a single point)."""
    low, high = [], []
    for i in range(len(values)):
        pts = values[max(0, i - window + 1): i + 1]
        mean = sum(pts) / len(pts)
        sd = math.sqrt(sum((v - mean) ** 2 for v in pts) / (len(pts) - 1)) if len(pts) > 1 else 0.0
        half = z * sd / math.sqrt(len(pts))
        low.append(mean - half)
        high.append(mean + half)
    return low, high


def reward_curves_figure(curve: list[dict[str, Any]]) -> Any:
    """The figure of `plot_reward_curves` (not saved, not closed: tests inspect its artists).

    Left: mean reward per RL step of each branch (thin), its trailing moving average (thick) and a 95 % band
    of that average (+- 1.96 standard errors of the steps in the window). The y axis starts at 0 (or the
    lowest value), so noise does not fill the panel. Right: rollout IoU, sparse accuracy and kept-token ratio
    (moving averages) on a fixed 0-1 axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in curve]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.0))
    window = max(2, len(steps) // 6)
    lows, highs = [0.0], [1.0]
    for b, colour in (("grounding", "tab:blue"), ("sparse", "tab:orange")):
        ys = [m.get(f"{b}/reward") for m in curve]
        if not ys or any(y is None for y in ys):
            continue
        axes[0].plot(steps, ys, color=colour, alpha=0.3, lw=1, label=f"{b}: per step")
        axes[0].plot(steps, moving_average(ys, window), color=colour, lw=2.2, label=f"{b}: moving average ({window} steps)")
        lo, hi = moving_band(ys, window)
        axes[0].fill_between(steps, lo, hi, color=colour, alpha=0.15, lw=0, label=f"{b}: 95 % band of the average")
        lows.append(min(ys))
        highs.append(max(ys))
    axes[0].set_ylim(min(lows) - 0.05 * (max(highs) - min(lows)), max(highs) * 1.08)
    axes[0].set(xlabel="RL step", ylabel="mean reward of the step's rollouts", title="reward per branch")
    axes[0].legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below: hides no curve
    for key, colour, label in (("grounding/iou", "tab:green", "grounding IoU (rollout boxes vs GT)"),
                               ("sparse/accuracy", "tab:red", "sparse-branch accuracy"),
                               ("kept_token_ratio", "tab:gray", "kept-token ratio")):
        ys = [m.get(key) for m in curve]
        if ys and all(y is not None for y in ys):
            axes[1].plot(steps, moving_average(ys, window), color=colour, lw=2, label=label)
    axes[1].set(xlabel="RL step", ylabel="fraction (moving average)", ylim=(0, 1),
                title="rollout statistics")
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(11)
    fig.tight_layout()
    return fig


def plot_reward_curves(curve: list[dict[str, Any]], path: Path) -> None:
    """Mean reward per RL step of each branch (thin), its moving average (thick) with a 95 % band; IoU,
    sparse accuracy and kept ratio (reward_curves_figure)."""
    import matplotlib.pyplot as plt

    fig = reward_curves_figure(curve)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_interval(point: dict[str, Any], n: int | None = None) -> tuple[float, float] | None:
    """95 % Wilson interval of a point's accuracy from its `n` questions (the point's "n", else `n`), or None
    when neither is known. correct = round(accuracy * n)."""
    from vitos.stats import wilson_interval

    count = point.get("n", n)
    if not count:
        return None
    return wilson_interval(int(round(point["accuracy"] * count)), int(count))


def dodge(xs: list[float], near: float = 0.03, step: float = 0.015) -> list[float]:
    """x offsets that set points apart sideways: points whose x lie within `near` of each other (chained) form
    a group, spread symmetrically by `step` in list order (k points: (i - (k - 1) / 2) * step), so their
    markers and vertical error bars stay visible even when the values coincide; a lone point keeps its x."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and xs[i] - xs[groups[-1][-1]] < near:
            groups[-1].append(i)
        else:
            groups.append([i])
    offsets = [0.0] * len(xs)
    for group in groups:
        for rank, i in enumerate(sorted(group)):
            offsets[i] = (rank - (len(group) - 1) / 2) * step
    return offsets


def accuracy_vs_kept_figure(rows: list[dict[str, Any]], curve_points: list[dict[str, Any]],
                            chance: float | None = None, chance_label: str | None = None, n: int | None = None) -> Any:
    """The figure of `plot_accuracy_vs_kept` (not saved, not closed: tests inspect its artists).

    Every row and curve point is drawn with its 95 % Wilson interval (vertical error bar, from the row's "n"
    or `n` test questions), on fixed 0-1 axes. Markers are hollow and of decreasing size in row order, and a
    point that would sit on an earlier one is dodged sideways (the note under the plot says so), so the warm
    start and the RL model stay visible when they score alike. The chance line is `chance` (labelled with
    `chance_label`, e.g. the per-type majority answer) or, when that is unknown, 0.5 labelled as such."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 5.4))
    markers = "osD^v<>p*"
    colours = [f"C{k}" for k in range(10)]
    xs, ys = [r["kept"] for r in rows], [r["accuracy"] for r in rows]
    offsets = dodge(xs)
    for k, r in enumerate(rows):
        ci = accuracy_interval(r, n)
        yerr = None if ci is None else [[r["accuracy"] - ci[0]], [ci[1] - r["accuracy"]]]
        size = max(6.0, 15.0 - 2.5 * k)
        ax.errorbar(xs[k] + offsets[k], r["accuracy"], yerr=yerr, fmt=markers[k % len(markers)], ms=size,
                    mfc="none", mew=2, color=colours[k % 10], ecolor=colours[k % 10], elinewidth=1.2, capsize=4,
                    zorder=4 + k, label=f"{r['name']} ({r['accuracy']:.0%})")
    if curve_points:
        pts = sorted(curve_points, key=lambda p: p["kept"])
        cis = [accuracy_interval(p, n) for p in pts]
        yerr = None if any(c is None for c in cis) else [[p["accuracy"] - c[0] for p, c in zip(pts, cis)],
                                                          [c[1] - p["accuracy"] for p, c in zip(pts, cis)]]
        ax.errorbar([p["kept"] for p in pts], [p["accuracy"] for p in pts], yerr=yerr, fmt="--.", ms=8, color="gray",
                    capsize=3, zorder=2, label=pts[0]["name"].split("@")[0] + " baseline at fixed ratios")
    if chance is None:
        chance, chance_label = 0.5, "0.5 (per-type majority not known)"
    else:
        chance_label = f"{chance_label or 'chance'} ({chance:.0%})"
    ax.axhline(chance, color="tab:red", ls=":", lw=1.5, zorder=1, label=chance_label, gid="chance")
    ax.set(xlabel="kept visual tokens (fraction of all)", ylabel="accuracy on the test questions",
           xlim=(0, 1.04), ylim=(0, 1.0))
    ax.set_title("MedPhantom test: accuracy vs kept tokens", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)  # beside: hides no point
    count = n or next((r.get("n") for r in rows if r.get("n")), None)
    note = "error bars: 95 % Wilson interval" + (f" over {count} questions" if count else "")
    if any(offsets):
        note += f"; points that would overlap are dodged sideways by {max(abs(o) for o in offsets):.2g} at most"
    fig.text(0.01, 0.01, note, fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def plot_accuracy_vs_kept(rows: list[dict[str, Any]], curve_points: list[dict[str, Any]], path: Path,
                          chance: float | None = None, chance_label: str | None = None, n: int | None = None) -> None:
    """Accuracy against the kept-token ratio of every evaluated mode, with 95 % intervals and a chance line
    (accuracy_vs_kept_figure). Rows: {name, accuracy, kept, n (test questions; or pass `n`)}."""
    import matplotlib.pyplot as plt

    fig = accuracy_vs_kept_figure(rows, curve_points, chance, chance_label, n)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def overlay_panel(sample: Any, image: Any, record: dict[str, Any], title: str) -> Any:
    """One captioned overlay (vitos.overlay.render_overlay) of an evaluation record: kept tokens, predicted
    and ground-truth boxes, question, answer with CORRECT / WRONG and the reference, kept-token count, legend."""
    from vitos.overlay import render_overlay

    mask = record["keep_masks"][0] if record.get("keep_masks") else None
    iou = record.get("iou")
    head = f"{title}: IoU {iou:.2f} with the ground-truth box" if iou is not None else title
    kept = (int(record["visual_tokens_kept"]), int(record["visual_tokens_total"])) if "visual_tokens_total" in record else None
    return render_overlay(image, record.get("boxes") or [], mask, gt_boxes=sample.boxes or None, title=head,
                          question=sample.question, answer=record.get("answer"), reference=sample.answer,
                          correct=bool(record["correct"]), kept_tokens=kept)


def save_overlays(samples: list[Any], images: list[list[Any]], warm: list[dict[str, Any]], rl: list[dict[str, Any]],
                  folder: Path, n: int) -> list[Path]:
    """Per test image, <id>.png: [warm start | after RL] side by side, each a captioned overlay (overlay_panel)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for k in range(min(n, len(samples))):
        s, image = samples[k], images[k][0]
        panels = [overlay_panel(s, image, rec, title) for rec, title in ((warm[k], "warm start"), (rl[k], "after RL"))]
        gap = 8
        canvas = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), max(p.height for p in panels)),
                           (255, 255, 255))
        x = 0
        for p in panels:
            canvas.paste(p, (x, 0))
            x += p.width + gap
        path = folder / f"{s.id}.png"
        canvas.save(path)
        written.append(path)
    return written


def plot_study_rows(rows: list[dict[str, Any]], path: Path, chance: float | None = None) -> None:
    """Accuracy of every study row with its pooled 95 % interval (error bars) and the majority-answer line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.28 * len(rows) + 1)))
    ys = list(range(len(rows)))[::-1]
    acc = [r["accuracy"] for r in rows]
    err = [[a - r["ci_low"] for a, r in zip(acc, rows)], [r["ci_high"] - a for a, r in zip(acc, rows)]]
    ax.errorbar(acc, ys, xerr=err, fmt="o", color="tab:blue", ecolor="tab:gray", capsize=3, label="accuracy, 95 % CI")
    if chance is not None:
        ax.axvline(chance, color="tab:red", ls="--", lw=1, label=f"per-type majority answer ({chance:.1%})")
    ax.set_yticks(ys, [r["name"] for r in rows], fontsize=7)
    ax.set(xlabel="accuracy (pooled over seeds and test questions)", ylabel="study row", xlim=(0, 1),
           title="vitos study\n")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=2, borderaxespad=0)  # above: hides no row
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_grad_cosine(runs: list[dict[str, Any]], path: Path) -> None:
    """cos(grad L_grounding, grad L_sparse) over RL steps, one line per run (colour per variant)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    variants = sorted({r["variant"] for r in runs})
    colours = {v: f"C{k % 10}" for k, v in enumerate(variants)}
    for v in variants:
        for k, r in enumerate(x for x in runs if x["variant"] == v):
            pts = [(s, c) for s, c in r["grad_cosine"] if c is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=3, color=colours[v], alpha=0.7,
                        label=v if k == 0 else None)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set(xlabel="RL step", ylabel="cos(grad grounding, grad sparse)", ylim=(-1, 1), title="branch gradient cosine")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


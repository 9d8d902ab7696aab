"""Plots and overlays shared by `vitos demo` and `vitos study` (matplotlib, Agg; PNG files).

    plot_reward_curves(metrics_records, "reward_curves.png")      # per-branch reward of an RL run
    plot_accuracy_vs_kept(rows, curve_points, "accuracy_vs_kept.png")
    save_overlays(samples, images, warm_records, rl_records, folder, n)
    plot_study_rows(rows, "study_accuracy.png", chance=0.5)       # accuracy with 95 % intervals per row
"""

from __future__ import annotations

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


def plot_reward_curves(curve: list[dict[str, Any]], path: Path) -> None:
    """Mean reward per RL step of each branch (thin) and its moving average (thick); IoU and kept ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in curve]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    window = max(2, len(steps) // 6)
    for b, colour in (("grounding", "tab:blue"), ("sparse", "tab:orange")):
        ys = [m.get(f"{b}/reward") for m in curve]
        if not ys or any(y is None for y in ys):
            continue
        axes[0].plot(steps, ys, color=colour, alpha=0.3, lw=1)
        axes[0].plot(steps, moving_average(ys, window), color=colour, lw=2, label=f"{b} branch")
    axes[0].set(xlabel="RL step", ylabel="mean reward", title="reward per branch")
    axes[0].legend()
    for key, colour, label in (("grounding/iou", "tab:green", "grounding IoU"),
                               ("sparse/accuracy", "tab:red", "sparse accuracy"),
                               ("kept_token_ratio", "tab:gray", "kept-token ratio")):
        ys = [m.get(key) for m in curve]
        if ys and all(y is not None for y in ys):
            axes[1].plot(steps, moving_average(ys, window), color=colour, lw=2, label=label)
    axes[1].set(xlabel="RL step", ylim=(0, 1), title="rollout statistics (moving average)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy_vs_kept(rows: list[dict[str, Any]], curve_points: list[dict[str, Any]], path: Path) -> None:
    """Accuracy against the kept-token ratio of every evaluated mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    markers = "o*sD^v<>"
    for k, r in enumerate(rows):
        ax.scatter(r["kept"], r["accuracy"], s=140 if "RL" in r["name"] else 70, marker=markers[k % len(markers)],
                   label=r["name"], zorder=3)
    if curve_points:
        pts = sorted(curve_points, key=lambda p: p["kept"])
        ax.plot([p["kept"] for p in pts], [p["accuracy"] for p in pts], "--", color="gray", zorder=2,
                label=pts[0]["name"].split("@")[0] + " at fixed ratios")
    ax.set(xlabel="kept visual tokens (fraction)", ylabel="accuracy", xlim=(0, 1.05), ylim=(0, 1.0),
           title="MedPhantom test: accuracy vs kept tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_overlays(samples: list[Any], images: list[list[Any]], warm: list[dict[str, Any]], rl: list[dict[str, Any]],
                  folder: Path, n: int) -> list[Path]:
    """Per test image: [warm start | after RL] overlays of the kept tokens, GT box in white, a caption."""
    from PIL import Image, ImageDraw

    from vitos.overlay import draw_overlay

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for k in range(min(n, len(samples))):
        s, image = samples[k], images[k][0]
        panels = []
        for rec, title in ((warm[k], "warm start"), (rl[k], "after RL")):
            mask = rec["keep_masks"][0] if rec["keep_masks"] else None
            panel = draw_overlay(image, rec["boxes"], mask).resize((2 * image.width, 2 * image.height), Image.NEAREST)
            draw = ImageDraw.Draw(panel)
            for x1, y1, x2, y2 in s.boxes:  # ground truth, white
                draw.rectangle([x1 * panel.width, y1 * panel.height, x2 * panel.width - 1, y2 * panel.height - 1],
                               outline=(255, 255, 255), width=1)
            verdict = "right" if rec["correct"] else "wrong"
            draw.text((6, 4), f"{title}: {rec['answer']!s} ({verdict}), IoU {rec['iou'] or 0:.2f}", fill=(255, 255, 0))
            panels.append(panel)
        canvas = Image.new("RGB", (sum(p.width for p in panels), panels[0].height + 22), (0, 0, 0))
        x = 0
        for p in panels:
            canvas.paste(p, (x, 22))
            x += p.width
        ImageDraw.Draw(canvas).text((6, 5), f"{s.question}  (reference: {s.answer})", fill=(255, 255, 255))
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
    ax.set(xlabel="accuracy (pooled over seeds and test questions)", xlim=(0, 1), title="vitos study")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
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


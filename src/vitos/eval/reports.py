"""Reports of `vitos eval`: the run's Markdown table, the table of sibling runs and the accuracy plot.

Every accuracy is a percentage with its n and a 95 % Wilson interval (`vitos.stats.wilson_interval`,
stored by `vitos.eval.scoring.score_benchmark` as `accuracy_ci95`); the mean over benchmarks carries a
normal-approximation interval (`mean_ci95`, see `vitos.eval.scoring.aggregate`).

    md = run_markdown(title, scores)            # DIR/scores.md
    runs = collect_runs("runs/lingshu")         # folder name -> scores.json of each sibling run
    print(runs_table(runs))
    plot_accuracy_vs_kept(runs, "runs/lingshu/full/accuracy_vs_kept.png")
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["run_markdown", "collect_runs", "runs_table", "plot_accuracy_vs_kept", "format_ci", "benchmark_entries"]


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def format_ci(ci: Sequence[float] | None) -> str:
    """"[56.1, 66.0]" (percent, one decimal) or "–"."""
    if not ci or ci[0] is None or ci[1] is None:
        return "–"
    return f"[{ci[0]:.1f}, {ci[1]:.1f}]"


def benchmark_entries(scores: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The per-benchmark score dicts of a scores.json (top-level mappings holding an 'accuracy')."""
    return {k: v for k, v in scores.items() if isinstance(v, Mapping) and "accuracy" in v}


def run_markdown(title: str, settings: str, scores: Mapping[str, Any]) -> str:
    """DIR/scores.md: one row per benchmark with n, accuracy and its 95 % interval, closed / open accuracy,
    parse failures, rows the loader skipped and the kept-token ratio; then the mean over benchmarks."""
    lines = [
        f"# {title}",
        "",
        settings + " Accuracy in percent with its 95 % Wilson interval; kept = kept visual tokens / all visual "
        "tokens; skipped = release rows the loader could not read (see <benchmark>/skipped.jsonl).",
        "",
        "| benchmark | n | accuracy | 95 % CI | closed | open | parse failures | skipped | kept |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in benchmark_entries(scores).items():
        lines.append(
            f"| {name} | {s['n']} | {_pct(s['accuracy'])} | {format_ci(s.get('accuracy_ci95'))} | "
            f"{_pct(s.get('closed_accuracy'))} | {_pct(s.get('open_accuracy'))} | {s.get('parse_failures', '–')} | "
            f"{s.get('skipped_rows', 0)} | {_ratio(s.get('kept_token_ratio'))} |"
        )
    n_total = sum(s["n"] for s in benchmark_entries(scores).values())
    lines.append(
        f"| mean | {n_total} | {_pct(scores.get('mean'))} | {format_ci(scores.get('mean_ci95'))} | | | | | "
        f"{_ratio(scores.get('kept_token_ratio'))} |"
    )
    return "\n".join(lines) + "\n"


def collect_runs(parent: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Folder name -> scores.json content of every run folder directly under `parent`."""
    runs: dict[str, dict[str, Any]] = {}
    root = Path(parent)
    if not root.is_dir():
        return runs
    for sub in sorted(root.iterdir()):
        path = sub / "scores.json"
        if sub.is_dir() and path.is_file():
            try:
                runs[sub.name] = json.loads(path.read_text())
            except json.JSONDecodeError:
                continue  # a run being written right now; it will show up next time
    return runs


def _cell(s: Mapping[str, Any] | None) -> str:
    if not s or s.get("accuracy") is None:
        return "–"
    ci = s.get("accuracy_ci95")
    return f"{s['accuracy']:.1f} {format_ci(ci)} n={s.get('n', '?')}" if ci else f"{s['accuracy']:.1f}"


def runs_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: one row per run (mode, kept-token ratio, accuracy with 95 % CI and n per benchmark, mean)."""
    benchmarks: list[str] = []
    for scores in runs.values():
        benchmarks += [k for k in benchmark_entries(scores) if k not in benchmarks]
    lines = [
        "| run | mode | kept | " + " | ".join(benchmarks) + " | mean |",
        "|---|---|---:|" + "---:|" * (len(benchmarks) + 1),
    ]
    for name, scores in runs.items():
        cells = [_cell(scores.get(b)) for b in benchmarks]
        mean = _pct(scores.get("mean"))
        if scores.get("mean_ci95"):
            mean += " " + format_ci(scores["mean_ci95"])
        lines.append(
            f"| {name} | {scores.get('mode', '?')} | {_ratio(scores.get('kept_token_ratio'))} | "
            + " | ".join(cells)
            + f" | {mean} |"
        )
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_kept(runs: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]) -> None:
    """Scatter of mean accuracy (large markers, labelled) and per-benchmark accuracy (small markers)
    against the kept-token ratio, one point per run. Rendered by matplotlib's Agg canvas through a bare
    `Figure` (no pyplot, no display, no change to the caller's matplotlib backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    colors: dict[str, str] = {}
    for name, scores in runs.items():
        kept, mean = scores.get("kept_token_ratio"), scores.get("mean")
        if kept is None or mean is None:
            continue
        for bench, s in scores.items():
            if isinstance(s, Mapping) and s.get("accuracy") is not None and s.get("kept_token_ratio") is not None:
                first = bench not in colors  # label each benchmark once in the legend
                color = colors.setdefault(bench, f"C{len(colors) % 10}")
                label = bench if first else None
                ax.scatter(s["kept_token_ratio"], s["accuracy"], s=14, color=color, alpha=0.6, label=label)
        ax.scatter(kept, mean, s=60, color="black", marker="D")
        mode = scores.get("mode", "?")
        text = name if name == mode else f"{name} ({mode})"
        ax.annotate(text, (kept, mean), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("kept visual-token ratio")
    ax.set_ylabel("accuracy (%)  [black: mean over benchmarks]")
    ax.set_xlim(0, 1.05)
    ax.grid(alpha=0.3)
    if colors:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)

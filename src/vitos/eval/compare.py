"""`vitos compare RUN BASELINE`: relative performance of one eval run against another, per benchmark.

    vitos compare runs/lingshu/vitos runs/lingshu/full          # the paper's "relative performance"
    vitos compare runs/lingshu/vitos runs/lingshu/full --json   # machine-readable

Both arguments are `vitos eval` output folders (or their scores.json files). Relative performance is
100 * run accuracy / baseline accuracy (100 = on par) over the benchmarks both runs scored. The paper does
not say how it averages over benchmarks, so both readings are printed (`vitos.eval.scoring.
relative_performance`): the mean of per-benchmark ratios and the ratio of mean accuracies. A benchmark
whose baseline accuracy is 0 has no ratio; it is listed as skipped. Kept-token ratios are shown beside.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitos.eval.scoring import relative_performance

__all__ = ["load_scores", "compare_runs", "format_comparison", "main_compare"]


def load_scores(run: str | os.PathLike[str]) -> dict[str, Any]:
    """scores.json of a run folder (or the file itself); FileNotFoundError / ValueError say what is wrong."""
    path = Path(run).expanduser()
    if path.is_dir():
        path = path / "scores.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is {run} a finished `vitos eval` output folder?")
    try:
        scores = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(scores, dict):
        raise ValueError(f"{path} does not hold a scores object")
    return scores


def compare_runs(run: str | os.PathLike[str], baseline: str | os.PathLike[str]) -> dict[str, Any]:
    """Relative performance of `run` against `baseline` plus per-benchmark accuracies and kept ratios."""
    a, b = load_scores(run), load_scores(baseline)
    rel = relative_performance(a, b)
    rows = []
    for name in sorted(set(rel["per_benchmark"]) | set(rel["skipped"])):
        rows.append(
            {
                "benchmark": name,
                "run_accuracy": a[name].get("accuracy"),
                "baseline_accuracy": b[name].get("accuracy"),
                "relative": rel["per_benchmark"].get(name),
                "run_kept": a[name].get("kept_token_ratio"),
                "baseline_kept": b[name].get("kept_token_ratio"),
            }
        )
    return {
        "run": str(run),
        "baseline": str(baseline),
        "run_mode": a.get("mode"),
        "baseline_mode": b.get("mode"),
        "rows": rows,
        **rel,
    }


def _f(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def format_comparison(result: Mapping[str, Any]) -> str:
    """A markdown table of `compare_runs` output and the two averages."""
    lines = [
        f"run {result['run']} ({result.get('run_mode') or '?'}) vs baseline {result['baseline']} "
        f"({result.get('baseline_mode') or '?'})",
        "",
        "| benchmark | run acc | baseline acc | relative % | run kept | baseline kept |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['benchmark']} | {_f(r['run_accuracy'], '.1f')} | {_f(r['baseline_accuracy'], '.1f')} | "
            f"{_f(r['relative'], '.2f')} | {_f(r['run_kept'], '.3f')} | {_f(r['baseline_kept'], '.3f')} |"
        )
    lines += [
        "",
        f"relative performance, mean of per-benchmark ratios: {result['mean_of_ratios']:.2f}%",
        f"relative performance, ratio of mean accuracies:     {result['ratio_of_means']:.2f}%",
    ]
    for name, reason in result["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    return "\n".join(lines) + "\n"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise _UsageError(message)


def main_compare(argv: list[str]) -> int:
    """`vitos compare RUN BASELINE [--json]`; returns the exit status (2 + one line for fixable errors)."""
    p = _Parser(prog="vitos compare", description="Relative performance of RUN against BASELINE (100 = on par).")
    p.add_argument("run", help="vitos eval output folder (or its scores.json)")
    p.add_argument("baseline", help="the run to compare against, e.g. the full-token run")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    try:
        args = p.parse_args(argv)
    except _UsageError as err:
        print(f"vitos compare: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    try:
        result = compare_runs(args.run, args.baseline)
    except (ValueError, FileNotFoundError) as err:
        print(f"vitos compare: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_comparison(result), end="\n" if args.json else "")
    return 0

"""`vitos compare RUN BASELINE`: relative performance of one eval run against another, with paired intervals.

    vitos compare runs/lingshu/vitos runs/lingshu/full          # the paper's "relative performance"
    vitos compare runs/lingshu/vitos runs/lingshu/full --json   # machine-readable

Both arguments are `vitos eval` output folders (or their scores.json files). Relative performance is
100 * run accuracy / baseline accuracy (100 = on par) over the benchmarks both runs scored. The paper does
not say how it averages over benchmarks, so both readings are printed (`vitos.eval.scoring.
relative_performance`): the mean of per-benchmark ratios and the ratio of mean accuracies. A benchmark
whose baseline accuracy is 0 has no ratio; it is listed as skipped. Kept-token ratios are shown beside.

Same questions: the two runs must have scored the same questions of every common benchmark (the ids in
their predictions.jsonl, or the `questions_sha1` of their scores.json); otherwise compare refuses, unless
`--allow-different-questions` (then the paired statistics use the questions both scored and say so).

Intervals (95 %): each accuracy with its Wilson interval (from scores.json); per benchmark the paired
bootstrap interval of the ratio run/baseline and its p-value (`vitos.stats.paired_bootstrap_ratio`, H0
ratio = 1, on the per-question 0/1 verdicts of both runs) and the exact McNemar p (`mcnemar_exact`); for
the two averages a stratified paired bootstrap (each benchmark's questions resampled on their own, the
same replicates as the per-benchmark intervals). `--n-boot` replicates (default 2000), `--seed`.
Without predictions.jsonl (a scores.json given) there are no paired intervals.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vitos.config import error_line
from vitos.eval.predictions import read_predictions
from vitos.eval.scoring import relative_performance
from vitos.stats import bootstrap_replicate_means, mcnemar_exact, paired_bootstrap_ratio

__all__ = ["load_scores", "check_scores", "compare_runs", "format_comparison", "main_compare", "DifferentQuestionsError"]


class DifferentQuestionsError(ValueError):
    """The two runs scored different question sets; comparing them needs `allow_different_questions`."""


def _scores_path(run: str | os.PathLike[str]) -> Path:
    path = Path(run).expanduser()
    return path / "scores.json" if path.is_dir() else path


def load_scores(run: str | os.PathLike[str]) -> dict[str, Any]:
    """scores.json of a run folder (or the file itself); FileNotFoundError / ValueError say what is wrong."""
    path = _scores_path(run)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is {run} a finished `vitos eval` output folder?")
    try:
        scores = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(scores, dict):
        raise ValueError(f"{path} does not hold a scores object")
    check_scores(scores, path)
    return scores


# Numbers of a benchmark's scores that compare reads, and their valid range (accuracies are percentages,
# kept-token ratios fractions).
_CHECKED = {"accuracy": (0.0, 100.0), "kept_token_ratio": (0.0, 1.0)}


def check_scores(scores: Mapping[str, Any], where: str | os.PathLike[str] = "scores") -> None:
    """Refuse (ValueError, one line naming the file, benchmark, field and value) a scores object whose
    accuracies are not numbers in [0, 100] or kept-token ratios not in [0, 1]: NaN, infinite, negative,
    too large, strings and booleans; `n` must be a whole number >= 0. Missing values are allowed
    (a benchmark without an accuracy is skipped and listed)."""
    from vitos.eval.benchmarks import BENCHMARKS

    for name, entry in scores.items():
        if not isinstance(entry, Mapping):
            if name in BENCHMARKS:
                raise ValueError(f"{where}: {name} is {type(entry).__name__} {entry!r:.60}, not a benchmark's scores "
                                 "object; the file is damaged or edited: rerun `vitos eval` into that folder")
            continue
        for key in ("accuracy_ci95",):
            ci = entry.get(key)
            if ci is not None and not (isinstance(ci, (list, tuple)) and len(ci) == 2 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 100
                    for v in ci)):
                raise ValueError(f"{where}: {name}.{key} is {ci!r:.60}, not an interval [low, high] within [0, 100]")
        for key, (low, high) in _CHECKED.items():
            value = entry.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}: {name}.{key} is {value!r}, not a number; it must lie in [{low:g}, {high:g}] "
                                 "(is it a `vitos eval` scores.json?)")
            if not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"{where}: {name}.{key} = {value!r} is outside [{low:g}, {high:g}]; the file is "
                                 "damaged or edited: rerun `vitos eval` into that folder to rewrite it")
        n = entry.get("n")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"{where}: {name}.n = {n!r} must be a whole number >= 0")


def _verdicts(run: str | os.PathLike[str], benchmark: str) -> dict[str, float] | None:
    """id -> 1.0/0.0 from RUN/<benchmark>/predictions.jsonl, or None when the file is not there."""
    path = _scores_path(run).parent / benchmark / "predictions.jsonl"
    if not path.is_file():
        return None
    return {i: float(bool(r.get("correct"))) for i, r in read_predictions(path).items()}


def _ci(reps: np.ndarray) -> list[float] | None:
    finite = reps[np.isfinite(reps)]
    if finite.size == 0:
        return None
    low, high = np.quantile(finite, [0.025, 0.975])
    return [float(low), float(high)]


def compare_runs(
    run: str | os.PathLike[str],
    baseline: str | os.PathLike[str],
    allow_different_questions: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Relative performance of `run` against `baseline`, per-benchmark accuracies (with intervals), kept
    ratios, paired intervals and tests (module docstring). Raises DifferentQuestionsError when the runs
    scored different questions and `allow_different_questions` is False."""
    a, b = load_scores(run), load_scores(baseline)
    rel = relative_performance(a, b)
    names = sorted(set(rel["per_benchmark"]) | set(rel["skipped"]))

    paired: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    notes: list[str] = []
    mismatched: list[str] = []
    for name in names:
        va, vb = _verdicts(run, name), _verdicts(baseline, name)
        if va is not None and vb is not None:
            same = set(va) == set(vb)
            common = sorted(set(va) & set(vb))
        else:
            ha, hb = a[name].get("questions_sha1"), b[name].get("questions_sha1")
            same = ha is None or hb is None or ha == hb
            common = []
        if not same:
            mismatched.append(f"{name} ({len(va or {})} vs {len(vb or {})} questions, {len(common)} in common)"
                              if va is not None and vb is not None else f"{name} (questions_sha1 differ)")  # fmt: skip
        if common:
            paired[name] = (np.array([va[i] for i in common]), np.array([vb[i] for i in common]))  # type: ignore[index]
    if mismatched and not allow_different_questions:
        raise DifferentQuestionsError(
            f"the runs scored different questions: {', '.join(mismatched)}; compare runs over the same "
            "questions (same --split, --limit, data), or pass --allow-different-questions"
        )
    if mismatched:
        notes.append(f"different question sets ({', '.join(mismatched)}): paired statistics use the common questions")

    rows = []
    reps_run: dict[str, np.ndarray] = {}
    reps_base: dict[str, np.ndarray] = {}
    for name in names:
        row = {
            "benchmark": name,
            "n_run": a[name].get("n"),
            "n_baseline": b[name].get("n"),
            "run_accuracy": a[name].get("accuracy"),
            "run_accuracy_ci95": a[name].get("accuracy_ci95"),
            "baseline_accuracy": b[name].get("accuracy"),
            "baseline_accuracy_ci95": b[name].get("accuracy_ci95"),
            "relative": rel["per_benchmark"].get(name),
            "relative_ci95": None,
            "relative_p": None,
            "mcnemar_p": None,
            "n_paired": 0,
            "run_kept": a[name].get("kept_token_ratio"),
            "baseline_kept": b[name].get("kept_token_ratio"),
        }
        if name in paired:
            x, y = paired[name]
            bench_seed = seed + zlib.crc32(name.encode())
            row["n_paired"] = int(x.size)
            row["mcnemar_p"] = mcnemar_exact(int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum()))
            if name in rel["per_benchmark"]:
                _, low, high, p = paired_bootstrap_ratio(x, y, n_boot=n_boot, seed=bench_seed)
                row["relative_ci95"] = None if np.isnan(low) else [100 * low, 100 * high]
                row["relative_p"] = None if np.isnan(p) else p
                reps_run[name], reps_base[name] = bootstrap_replicate_means(x, y, n_boot=n_boot, seed=bench_seed)
        rows.append(row)

    used = rel["benchmarks"]
    aggregate_ci: dict[str, list[float] | None] = {"mean_of_ratios_ci95": None, "ratio_of_means_ci95": None}
    if used and all(n in reps_run for n in used):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.stack([reps_run[n] / reps_base[n] for n in used])  # (B, n_boot)
            mean_of_ratios = 100 * ratios.mean(axis=0)
            ratio_of_means = 100 * np.stack([reps_run[n] for n in used]).mean(0) / np.stack(
                [reps_base[n] for n in used]
            ).mean(0)
        aggregate_ci = {"mean_of_ratios_ci95": _ci(mean_of_ratios), "ratio_of_means_ci95": _ci(ratio_of_means)}
    elif used:
        notes.append("no predictions.jsonl for every benchmark of both runs: no paired intervals")

    return {
        "run": str(run),
        "baseline": str(baseline),
        "run_mode": a.get("mode"),
        "baseline_mode": b.get("mode"),
        "rows": rows,
        **rel,
        **aggregate_ci,
        "n_boot": n_boot,
        "seed": seed,
        "notes": notes,
    }


def _f(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _ci_text(ci: list[float] | None, fmt: str = ".1f") -> str:
    return "–" if not ci else f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def format_comparison(result: Mapping[str, Any]) -> str:
    """A markdown table of `compare_runs` output and the two averages, with 95 % intervals."""
    lines = [
        f"run {result['run']} ({result.get('run_mode') or '?'}) vs baseline {result['baseline']} "
        f"({result.get('baseline_mode') or '?'})",
        "",
        "| benchmark | n | run acc [95 % CI] | baseline acc [95 % CI] | relative % [95 % CI] | p (bootstrap) | "
        "p (McNemar) | run kept | baseline kept |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        n = r["n_paired"] or r["n_run"]
        lines.append(
            f"| {r['benchmark']} | {n if n is not None else '–'} | {_f(r['run_accuracy'], '.1f')} "
            f"{_ci_text(r['run_accuracy_ci95'])} | {_f(r['baseline_accuracy'], '.1f')} "
            f"{_ci_text(r['baseline_accuracy_ci95'])} | {_f(r['relative'], '.2f')} {_ci_text(r['relative_ci95'], '.2f')} | "
            f"{_f(r['relative_p'], '.3g')} | {_f(r['mcnemar_p'], '.3g')} | {_f(r['run_kept'], '.3f')} | "
            f"{_f(r['baseline_kept'], '.3f')} |"
        )
    lines += [
        "",
        f"relative performance, mean of per-benchmark ratios: {result['mean_of_ratios']:.2f}% "
        f"{_ci_text(result.get('mean_of_ratios_ci95'), '.2f')}",
        f"relative performance, ratio of mean accuracies:     {result['ratio_of_means']:.2f}% "
        f"{_ci_text(result.get('ratio_of_means_ci95'), '.2f')}",
        f"(95 % intervals: Wilson for accuracies, paired bootstrap with {result.get('n_boot')} replicates for ratios)",
    ]
    for name, reason in result["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The `vitos compare` argument parser."""
    p = _Parser(prog="vitos compare", description="Relative performance of RUN against BASELINE (100 = on par).")
    p.add_argument("run", help="vitos eval output folder (or its scores.json)")
    p.add_argument("baseline", help="the run to compare against, e.g. the full-token run")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (default: a markdown table)")
    p.add_argument("--allow-different-questions", action="store_true",
                   help="compare runs that scored different questions (paired statistics on the common ones) "
                        "(default: refuse)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates for the paired intervals (default: 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    return p


def main_compare(argv: list[str]) -> int:
    """`vitos compare RUN BASELINE [--json] [--allow-different-questions]`; returns the exit status (2 + one
    line for fixable errors)."""
    try:
        args = build_parser().parse_args(argv)
        if args.n_boot < 1:
            raise _UsageError(f"--n-boot {args.n_boot} must be >= 1")
    except _UsageError as err:
        print(f"vitos compare: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    try:
        result = compare_runs(args.run, args.baseline, args.allow_different_questions, args.n_boot, args.seed)
    except (ValueError, OSError) as err:  # FileNotFoundError is an OSError; EvalError a ValueError
        print(f"vitos compare: error: {error_line(err)}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_comparison(result), end="\n" if args.json else "")
    return 0

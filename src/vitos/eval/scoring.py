"""Turn per-question judgements into benchmark scores, aggregates, relative performance and tables.

Units: every accuracy, recall and F1 here is a PERCENTAGE in [0, 100] (the papers' tables use percent);
`kept_token_ratio` is a FRACTION in [0, 1] (kept visual tokens / all visual tokens, mean over questions).

Closed vs open: a question is closed when `sample.meta["closed"]` says so -- set by loaders whose release
labels questions itself (SLAKE's answer_type, where "Which is larger, liver or spleen?" is CLOSED but judged
as text) -- and otherwise when `sample.kind` is 'yes_no' or 'choice' (`Sample.closed`). The split only
decides which sub-score a question lands in; correctness always comes from `vitos.answers.judge`.

Intervals: every accuracy comes with a 95 % Wilson interval (`accuracy_ci95`, `closed_accuracy_ci95`,
`open_accuracy_ci95`, percent; `vitos.stats.wilson_interval`), and the mean over benchmarks with
`mean_ci95` = mean ± 1.96 * sqrt(sum_b p_b (1 - p_b) / n_b) / B (independent benchmarks, normal
approximation; p_b the accuracy fraction of benchmark b, B the number of benchmarks). Paired intervals for
comparing two runs on the same questions are `vitos.eval.compare`'s.

"Relative performance" (the paper's 108.27% / 104.16%) is not defined in public material, so
`relative_performance` reports both readings (REFERENCE.md section 1):
    mean_of_ratios = mean_b (100 * run_b / base_b)
    ratio_of_means = 100 * mean_b(run_b) / mean_b(base_b)

Usage::

    judgements = [judge(pred, s) for pred, s in zip(preds, samples)]
    scores = {"vqa_rad": score_benchmark(judgements, samples)}
    table = markdown_table({"Lingshu-7B": aggregate(scores)}, ["vqa_rad"])
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from statistics import fmean
from typing import Any

from vitos.answers import Judgement
from vitos.data.sample import Sample
from vitos.stats import Z95, wilson_interval

__all__ = [
    "is_closed",
    "score_benchmark",
    "aggregate",
    "relative_performance",
    "markdown_table",
    "questions_digest",
]


def is_closed(sample: Sample) -> bool:
    """The benchmark's own closed label when its loader set `meta['closed']`, else `sample.closed`."""
    label = sample.meta.get("closed")
    return bool(label) if label is not None else sample.closed


def _percent(values: Sequence[float]) -> float | None:
    return 100.0 * fmean(values) if values else None


def _wilson_percent(values: Sequence[float]) -> list[float] | None:
    if not values:
        return None
    low, high = wilson_interval(int(sum(values)), len(values))
    return [100.0 * low, 100.0 * high]


def questions_digest(ids: Iterable[str]) -> str:
    """sha1 of the sorted question ids (one per line): two runs over the same questions share it."""
    return hashlib.sha1("\n".join(sorted(map(str, ids))).encode("utf-8")).hexdigest()


def score_benchmark(
    judgements: Sequence[Judgement],
    samples: Sequence[Sample],
    kept_ratios: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Scores of one benchmark run; judgements[i] judges samples[i].

    Returns accuracy, closed_accuracy, open_accuracy (percent; None when the benchmark has no such
    questions) each with its 95 % Wilson interval (`*_ci95`, [low, high] in percent), n_correct,
    parse_failures (count) and parse_failure_reasons ({reason: count}, `Judgement.reason`), n, n_closed, n_open, open_recall, open_f1 (percent, mean over open questions;
    None without open questions), kept_token_ratio (fraction; None when not given) and questions_sha1
    (`questions_digest` of the sample ids).
    """
    if len(judgements) != len(samples):
        raise ValueError(f"{len(judgements)} judgements for {len(samples)} samples; they must pair one to one")
    if not samples:
        raise ValueError("cannot score an empty benchmark run (0 samples)")
    if kept_ratios is not None and len(kept_ratios) != len(samples):
        raise ValueError(f"{len(kept_ratios)} kept_ratios for {len(samples)} samples; give one per sample or None")

    closed_flags = [is_closed(s) for s in samples]
    correct = [float(j.correct) for j in judgements]
    closed = [c for c, flag in zip(correct, closed_flags) if flag]
    open_ = [c for c, flag in zip(correct, closed_flags) if not flag]
    open_judgements = [j for j, flag in zip(judgements, closed_flags) if not flag]
    return {
        "accuracy": _percent(correct),
        "accuracy_ci95": _wilson_percent(correct),
        "closed_accuracy": _percent(closed),
        "closed_accuracy_ci95": _wilson_percent(closed),
        "open_accuracy": _percent(open_),
        "open_accuracy_ci95": _wilson_percent(open_),
        "n_correct": int(sum(correct)),
        "parse_failures": sum(1 for j in judgements if j.parse_failure),
        "parse_failure_reasons": dict(
            sorted(Counter(j.reason or "unknown" for j in judgements if j.parse_failure).items())
        ),
        "n": len(samples),
        "n_closed": len(closed),
        "n_open": len(open_),
        "open_recall": _percent([j.recall for j in open_judgements]),
        "open_f1": _percent([j.f1 for j in open_judgements]),
        "kept_token_ratio": fmean(kept_ratios) if kept_ratios else None,
        "questions_sha1": questions_digest(s.id for s in samples),
    }


def _benchmark_scores(scores: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Only the per-benchmark entries: `aggregate` adds a float 'mean' beside the score dicts."""
    return {name: value for name, value in scores.items() if isinstance(value, Mapping)}


def aggregate(scores: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A copy of `scores` (benchmark -> score dict) with `mean` = mean accuracy over the benchmarks (percent)
    and `mean_ci95` (module docstring; None when a benchmark lacks its n)."""
    per_benchmark = _benchmark_scores(scores)
    used = [s for s in per_benchmark.values() if s.get("accuracy") is not None]
    if not used:
        raise ValueError(f"no benchmark with an accuracy among {sorted(per_benchmark)}; nothing to average")
    mean = fmean(s["accuracy"] for s in used)
    ci = None
    if all(s.get("n") for s in used):
        var = sum((s["accuracy"] / 100) * (1 - s["accuracy"] / 100) / s["n"] for s in used)
        half = 100.0 * Z95 * math.sqrt(var) / len(used)
        ci = [max(0.0, mean - half), min(100.0, mean + half)]
    return {**per_benchmark, "mean": mean, "mean_ci95": ci}


def relative_performance(
    run: Mapping[str, Mapping[str, Any]],
    baseline: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """Run vs baseline accuracy over their common benchmarks, in percent (100 = on par).

    Returns {'mean_of_ratios', 'ratio_of_means', 'per_benchmark': {name: ratio}, 'benchmarks': [used],
    'skipped': {name: reason}}. A benchmark whose baseline accuracy is 0 or missing cannot give a ratio:
    it is skipped and listed. Raises ValueError when nothing is left to compare.
    """
    run_scores, base_scores = _benchmark_scores(run), _benchmark_scores(baseline)
    common = sorted(set(run_scores) & set(base_scores))
    if not common:
        raise ValueError(
            f"no common benchmarks: run has {sorted(run_scores)}, baseline has {sorted(base_scores)}; "
            "score both on the same benchmark names"
        )
    per_benchmark: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for name in common:
        base_acc, run_acc = base_scores[name].get("accuracy"), run_scores[name].get("accuracy")
        if not base_acc:
            skipped[name] = f"baseline accuracy is {base_acc!r}; a ratio to it is undefined"
        elif run_acc is None:
            skipped[name] = "run has no accuracy"
        else:
            per_benchmark[name] = 100.0 * run_acc / base_acc
    if not per_benchmark:
        raise ValueError(f"no benchmark left to compare after skipping {skipped}")
    used = list(per_benchmark)
    return {
        "mean_of_ratios": fmean(per_benchmark.values()),
        "ratio_of_means": 100.0
        * fmean(run_scores[b]["accuracy"] for b in used)
        / fmean(base_scores[b]["accuracy"] for b in used),
        "per_benchmark": per_benchmark,
        "benchmarks": used,
        "skipped": skipped,
    }


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def markdown_table(rows: Mapping[str, Mapping[str, Any]], benchmarks: Sequence[str]) -> str:
    """A Markdown table of accuracy (percent, one decimal): one row per run, one column per benchmark + mean.

    `rows` maps run name -> {benchmark: score dict} (a 'mean' entry from `aggregate` is ignored: the mean
    column is recomputed over `benchmarks` so that every row averages the same columns). A missing score is
    shown as '–', and then the row's mean is '–' too.
    """
    if not benchmarks:
        raise ValueError("markdown_table needs at least one benchmark column")
    lines = [
        "| run | " + " | ".join(benchmarks) + " | mean |",
        "|---|" + "---:|" * (len(benchmarks) + 1),
    ]
    for run_name, scores in rows.items():
        per_benchmark = _benchmark_scores(scores)
        values = [per_benchmark.get(b, {}).get("accuracy") for b in benchmarks]
        mean = None if any(v is None for v in values) else fmean(values)  # type: ignore[arg-type]
        lines.append(f"| {run_name} | " + " | ".join(_cell(v) for v in values) + f" | {_cell(mean)} |")
    return "\n".join(lines) + "\n"

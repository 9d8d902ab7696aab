"""Aggregate a study's rows over seeds, run the paired tests, check the targets, write study.md / study.json.

Inputs are plain dicts (what `vitos.study.run` collects); every statistic comes from `vitos.stats`:

    cell(name, [per-seed result, ...])   pooled accuracy over seeds x questions with a Wilson 95 % interval
                                         (n = seeds x questions), the seed mean with a Student-t interval
    compare(name_a, runs_a, name_b, runs_b)
                                         paired over the same questions of the same seeds, pooled over seeds:
                                         exact McNemar p on the discordant counts, and the paired-bootstrap
                                         95 % interval of the accuracy difference

A per-seed result is a dict with `correct` (0/1 per test question, in question order), `kept`, and
optionally `miou`, `distinct_boxes`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import fmean
from typing import Any

from vitos.stats import mcnemar_exact, mean_ci, paired_bootstrap, wilson_interval


def cell(name: str, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row: accuracy pooled over seeds and questions, its Wilson interval, the seed mean +- t-interval."""
    pooled = [bool(c) for r in per_seed for c in r["correct"]]
    n, k = len(pooled), sum(pooled)
    low, high = wilson_interval(k, n)
    accs = [sum(r["correct"]) / max(1, len(r["correct"])) for r in per_seed]
    seed_mean, seed_low, seed_high = mean_ci(accs) if len(accs) >= 2 else (accs[0], math.nan, math.nan) if accs else (math.nan,) * 3
    miou = [r["miou"] for r in per_seed if r.get("miou") is not None]
    boxes = [r["distinct_boxes"] for r in per_seed if r.get("distinct_boxes") is not None]
    return {
        "name": name, "accuracy": k / n if n else math.nan, "ci_low": low, "ci_high": high, "n": n,
        "seeds": len(per_seed), "seed_accuracies": accs, "seed_mean": seed_mean, "seed_ci_low": seed_low,
        "seed_ci_high": seed_high, "kept_ratio": fmean(r["kept"] for r in per_seed) if per_seed else math.nan,
        "miou": fmean(miou) if miou else None, "distinct_boxes": fmean(boxes) if boxes else None,
    }


def compare(name_a: str, runs_a: list[dict[str, Any]], name_b: str, runs_b: list[dict[str, Any]],
            seed: int = 0) -> dict[str, Any]:
    """Paired test of row a against row b, pooled over seeds (run k of a pairs with run k of b)."""
    if len(runs_a) != len(runs_b):
        raise ValueError(f"{name_a} has {len(runs_a)} runs and {name_b} {len(runs_b)}; pair them seed by seed")
    a = [float(c) for r in runs_a for c in r["correct"]]
    b = [float(c) for r in runs_b for c in r["correct"]]
    if len(a) != len(b):
        raise ValueError(f"{name_a} and {name_b} were evaluated on different numbers of questions")
    only_a = sum(x > y for x, y in zip(a, b))
    only_b = sum(y > x for x, y in zip(a, b))
    diff, low, high, _ = paired_bootstrap(a, b, seed=seed) if a else (math.nan,) * 4
    return {"a": name_a, "b": name_b, "n": len(a), "difference": diff, "ci_low": low, "ci_high": high,
            "only_a": only_a, "only_b": only_b, "p_value": mcnemar_exact(only_a, only_b)}


def targets(rows: dict[str, dict[str, Any]], comparisons: dict[str, dict[str, Any]], main: str) -> dict[str, Any]:
    """The issue's targets for the main variant's after-RL ViToS row, each True / False with the figures."""
    def sig_better(key: str) -> bool | None:
        c = comparisons.get(key)
        return None if c is None else bool(c["difference"] > 0 and c["p_value"] < 0.05)

    vit, full, maj, warm = (rows.get(f"{main}/vitos"), rows.get(f"{main}/full"), rows.get("majority"),
                            rows.get("warm_start/vitos"))
    out: dict[str, Any] = {
        "beats_warm_start_p<0.05": sig_better(f"{main}: after RL vs warm start"),
        "beats_center_p<0.05": sig_better(f"{main}: vitos vs center"),
        "beats_constant_box_p<0.05": sig_better(f"{main}: vitos vs constant box"),
        "beats_majority": None if vit is None or maj is None else bool(vit["accuracy"] > maj["accuracy"]),
        "relative_to_full_ge_1": None if vit is None or full is None or not full["accuracy"] else
        bool(vit["accuracy"] / full["accuracy"] >= 1.0),
        "miou_above_warm_start": None if vit is None or warm is None or vit["miou"] is None or warm["miou"] is None
        else bool(vit["miou"] > warm["miou"]),
        "distinct_boxes_ge_warm_start": None if vit is None or warm is None or vit["distinct_boxes"] is None
        or warm["distinct_boxes"] is None else bool(vit["distinct_boxes"] >= warm["distinct_boxes"]),
    }
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def markdown(study: dict[str, Any]) -> str:
    """study.md: the rows with intervals, the paired tests, the targets, the design report."""
    lines = [f"# vitos study ({study['meta']['date']}, {study['meta']['machine']})", "",
             f"Command: `{study['meta']['command']}`", "",
             "| row | accuracy % | 95 % CI (pooled) | seed mean % | 95 % CI (seeds) | n | kept % | mIoU | distinct boxes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in study["rows"]:
        miou = "–" if r["miou"] is None else f"{r['miou']:.3f}"
        boxes = "–" if r["distinct_boxes"] is None else f"{r['distinct_boxes']:.0f}"
        lines.append(f"| {r['name']} | {_pct(r['accuracy'])} | {_pct(r['ci_low'])}–{_pct(r['ci_high'])} | "
                     f"{_pct(r['seed_mean'])} | {_pct(r['seed_ci_low'])}–{_pct(r['seed_ci_high'])} | {r['n']} | "
                     f"{_pct(r['kept_ratio'])} | {miou} | {boxes} |")
    lines += ["", "| paired comparison (pooled over seeds) | a − b (pts) | 95 % CI | only a | only b | McNemar p |",
              "|---|---|---|---|---|---|"]
    for c in study["comparisons"]:
        lines.append(f"| {c['a']} vs {c['b']} | {100 * c['difference']:+.1f} | {100 * c['ci_low']:+.1f} to "
                     f"{100 * c['ci_high']:+.1f} | {c['only_a']} | {c['only_b']} | {c['p_value']:.3g} |")
    lines += ["", "Targets (main variant `" + study["meta"]["main"] + "`): " +
              ", ".join(f"{k} = {v}" for k, v in study["targets"].items()), ""]
    if study.get("design"):
        lines += ["Design report (before RL, seed-pooled):", "```", json.dumps(study["design"], indent=1), "```"]
    return "\n".join(lines) + "\n"


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN / inf -> null, tuples -> lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write(study: dict[str, Any], out: Path) -> None:
    """study.json (rows, comparisons, targets, runs, design, meta) and study.md."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "study.json", "w") as fh:
        json.dump(_clean(study), fh, indent=1)
    (out / "study.md").write_text(markdown(study))

"""Aggregate a study's rows over seeds, run the paired tests, check the targets, write study.md / study.json.

Inputs are plain dicts (what `vitos.study.run` collects); every statistic comes from `vitos.stats`:

    cell(name, [per-seed result, ...])   pooled accuracy over seeds x questions with a Wilson 95 % interval
                                         (n = seeds x questions), the seed mean with a Student-t interval
    compare(name_a, runs_a, name_b, runs_b)
                                         paired over the same questions of the same seeds, pooled over seeds:
                                         exact McNemar p on the discordant counts, and the paired-bootstrap
                                         95 % interval of the accuracy difference

    paired_tests(per_seed, variants)     every comparison of the study (and of `vitos demo`, one seed), by label
    targets(rows, comparisons, main)     the issue's targets; target_figures(...) the figures behind each

A per-seed result is a dict with `correct` (0/1 per test question, in question order), `kept`, and
optionally `miou`, `distinct_boxes`. Row names: `majority`, `warm_start/<row>`, `<variant>/<row>` with
<variant> = variant_name(schedule, cross, iou), e.g. `interleaved+cross+iou/vitos`.
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


def variant_name(schedule: str, cross: bool, iou: bool) -> str:
    """An RL run's name: `<schedule>+cross|nocross+iou|noiou` (cross-feedback and IoU reward on / off)."""
    return f"{schedule}+{'cross' if cross else 'nocross'}+{'iou' if iou else 'noiou'}"


def comparison_pairs(variants: list[str]) -> list[tuple[str, str, str]]:
    """(label, row a, row b) of every paired test between the given variants' rows: per variant after RL vs
    warm start, ViToS vs center, ViToS vs constant box; a sequential schedule vs joint, cross-feedback on
    vs off and IoU reward on vs off where the other variant is among `variants`."""
    names = set(variants)
    pairs = []
    for v in sorted(names):
        pairs.append((f"{v}: after RL vs warm start", f"{v}/vitos", "warm_start/vitos"))
        pairs.append((f"{v}: vitos vs center", f"{v}/vitos", f"{v}/center"))
        pairs.append((f"{v}: vitos vs constant box", f"{v}/vitos", f"{v}/constant box"))
        sch, cross, iou = v.split("+")
        if sch != "joint" and f"joint+{cross}+{iou}" in names:
            pairs.append((f"{v}: sequential vs joint", f"{v}/vitos", f"joint+{cross}+{iou}/vitos"))
        if cross == "cross" and f"{sch}+nocross+{iou}" in names:
            pairs.append((f"{v}: cross-feedback on vs off", f"{v}/vitos", f"{sch}+nocross+{iou}/vitos"))
        if iou == "iou" and f"{sch}+{cross}+noiou" in names:
            pairs.append((f"{v}: IoU reward on vs off", f"{v}/vitos", f"{sch}+{cross}+noiou/vitos"))
    return pairs


def paired_tests(per_seed: dict[str, list[dict[str, Any]]], variants: list[str]) -> dict[str, dict[str, Any]]:
    """label -> compare(row a, row b) + {"label"} for every comparison_pairs(variants) whose two rows were
    evaluated (a pair with a missing row is left out: its target is then None)."""
    tests = {}
    for label, a, b in comparison_pairs(variants):
        if a in per_seed and b in per_seed:
            tests[label] = {**compare(a, per_seed[a], b, per_seed[b]), "label": label}
    return tests


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


def target_figures(rows: dict[str, dict[str, Any]], comparisons: dict[str, dict[str, Any]],
                   main: str) -> dict[str, str]:
    """The figures behind each of `targets`, as text (e.g. "+2.0 pts, McNemar p = 0.41, n = 100")."""
    def test(key: str) -> str:
        c = comparisons.get(key)
        return "no test" if c is None else (f"{100 * c['difference']:+.1f} pts, McNemar p = {c['p_value']:.2g}, "
                                            f"n = {c['n']}")

    def acc(name: str) -> str:
        r = rows.get(name)
        return "–" if r is None else f"{100 * r['accuracy']:.1f} %"

    def value(name: str, key: str, fmt: str) -> str:
        r = rows.get(name)
        return "–" if r is None or r.get(key) is None else format(r[key], fmt)

    vit, full = rows.get(f"{main}/vitos"), rows.get(f"{main}/full")
    ok = vit is not None and full is not None and bool(full["accuracy"])
    rel = f"{100 * vit['accuracy'] / full['accuracy']:.1f} %" if ok else "–"  # type: ignore[index]
    return {
        "beats_warm_start_p<0.05": test(f"{main}: after RL vs warm start"),
        "beats_center_p<0.05": test(f"{main}: vitos vs center"),
        "beats_constant_box_p<0.05": test(f"{main}: vitos vs constant box"),
        "beats_majority": f"{acc(f'{main}/vitos')} vs majority {acc('majority')}",
        "relative_to_full_ge_1": f"{rel} = {acc(f'{main}/vitos')} / {acc(f'{main}/full')} (same model, all tokens)",
        "miou_above_warm_start": f"mIoU {value(f'{main}/vitos', 'miou', '.3f')} vs "
                                 f"{value('warm_start/vitos', 'miou', '.3f')}",
        "distinct_boxes_ge_warm_start": f"{value(f'{main}/vitos', 'distinct_boxes', '.0f')} vs "
                                        f"{value('warm_start/vitos', 'distinct_boxes', '.0f')} distinct boxes",
    }


def target_lines(targets_: dict[str, Any], figures: dict[str, str]) -> list[str]:
    """One line per target: `name = value (figures)`."""
    return [f"{k} = {v}" + (f" ({figures[k]})" if k in figures else "") for k, v in targets_.items()]


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
    main = study["meta"]["main"]
    figures = target_figures(study["rows_by_name"], {c["label"]: c for c in study["comparisons"]}, main)
    lines += ["", f"Targets (main variant `{main}`):", ""] + [f"- {t}" for t in target_lines(study["targets"], figures)]
    lines += [""]
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

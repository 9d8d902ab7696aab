"""`vitos demo`'s report: the summary dict (summary.json), the metrics table (summary.md), plots, overlays.

    summary = build_summary(cfg, Results(...))    # every figure, the study's rows / comparisons / targets
    write_outputs(summary, results, data, cfg, out)   # summary.json, summary.md, the PNGs, overlays/

Summary keys (README and tests read them):
  accuracy_full, accuracy_vitos_warm_start   the warm start on all tokens / through ViToS
  accuracy_full_rl, accuracy_vitos           the RL model on all tokens / through ViToS
  relative_performance                       accuracy_vitos / accuracy_full_rl (the SAME model's all tokens);
                                             relative_performance_warm_start the warm start's
  kept_token_ratio(_warm_start), miou_warm_start, miou_rl, accuracy_majority, accuracy_constant_box,
  accuracy_oracle, accuracy_baseline (first baseline), accuracy_baselines, accuracy_by_type, reward_rise
  (reported, not a target), curve_points, timings_s, config, table
  rows, comparisons, targets, target_figures  vitos.study.report on the study's row names (one seed)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from vitos.demo.config import DemoConfig
from vitos.demo.stages import DemoData, WarmStart


def relative_performance(accuracy: float, reference: float) -> float | None:
    """accuracy / reference, None when the reference is 0 (no ratio is defined)."""
    return accuracy / reference if reference > 0 else None


def reward_rise(values: list[float]) -> tuple[float, float] | None:
    """(mean of the first third, mean of the last third) of a reward curve; None under 3 points.

    Thirds, not the first and last step: one RL step holds a handful of questions, so single steps are
    noisy; thirds of the run average that out while still comparing "early" with "late".
    """
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if len(vals) < 3:
        return None
    k = len(vals) // 3
    return fmean(vals[:k]), fmean(vals[-k:])


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of evaluation rows {name, accuracy, relative, kept, miou, latency_ms}."""
    head = "| mode | accuracy | relative perf. | kept visual tokens | grounding mIoU | latency ms/question |"
    lines = [head, "|---|---|---|---|---|---|"]

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for r in rows:
        lines.append(
            f"| {r['name']} | {f(r['accuracy'], '.1%')} | {f(r.get('relative'), '.1%')} | {f(r['kept'], '.1%')} | "
            f"{f(r.get('miou'), '.3f')} | {f(r.get('latency_ms'), '.0f')} |"
        )
    return "\n".join(lines)


@dataclass
class Results:
    """What the stages measured: the study rows of the warm start and the RL model (evaluate_run), the
    majority row, the curve points, the RL metrics, the warm start, the main variant's name, the tests."""

    warm: dict[str, dict[str, Any]]
    rl: dict[str, dict[str, Any]]
    majority: dict[str, Any]
    constant_box: list[float]
    points: list[dict[str, Any]]
    curve: list[dict[str, Any]]
    warm_start: WarmStart
    main: str
    cells: dict[str, dict[str, Any]]
    comparisons: dict[str, dict[str, Any]]
    targets: dict[str, Any]


def _row(name: str, res: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
    """A table / plot row; `relative` against `reference` (the same model's full-token row)."""
    rel = relative_performance(res["accuracy"], reference["accuracy"]) if reference is not None else None
    return {"name": name, "accuracy": res["accuracy"], "kept": res["kept"], "miou": res["miou"],
            "latency_ms": res["latency_ms"], "n": res["n"], "relative": rel}


def table_rows(r: Results, baselines: list[str]) -> list[dict[str, Any]]:
    """The table's model rows in order: warm start (all tokens, ViToS), RL model (all tokens, ViToS, each
    baseline at ViToS's budget, constant box, GT boxes)."""
    w, m = r.warm, r.rl
    return [
        _row("full tokens (warm start)", w["full"], w["full"]),
        _row("ViToS, warm start", w["vitos"], w["full"]),
        _row("full tokens (after RL)", m["full"], m["full"]),
        _row("ViToS after RL", m["vitos"], m["full"]),
        *[_row(f"{k} baseline (same budget)", m[k], m["full"]) for k in baselines],
        _row("constant box (after RL)", m["constant box"], m["full"]),
        _row("GT boxes (oracle, after RL)", m["oracle"], m["full"]),
    ]


def build_summary(cfg: DemoConfig, r: Results, timings: dict[str, float]) -> dict[str, Any]:
    """summary.json's dict (see the module docstring for its keys)."""
    from vitos.study.report import _clean, target_figures

    w, m = r.warm, r.rl
    baselines = list(cfg.baselines)
    first = baselines[0] if baselines else None
    rises = {b: reward_rise([s.get(f"{b}/reward") for s in r.curve]) for b in ("grounding", "sparse")}
    rows = table_rows(r, baselines)
    losses, vision = r.warm_start.losses, r.warm_start.vision_losses
    summary: dict[str, Any] = {
        "relative_performance": relative_performance(m["vitos"]["accuracy"], m["full"]["accuracy"]),
        "relative_performance_warm_start": relative_performance(w["vitos"]["accuracy"], w["full"]["accuracy"]),
        "kept_token_ratio": m["vitos"]["kept"], "kept_token_ratio_warm_start": w["vitos"]["kept"],
        "miou_warm_start": w["vitos"]["miou"], "miou_rl": m["vitos"]["miou"],
        "distinct_boxes": {"warm_start": w["vitos"]["distinct_boxes"], "rl": m["vitos"]["distinct_boxes"]},
        "accuracy_full": w["full"]["accuracy"], "accuracy_vitos": m["vitos"]["accuracy"],
        "accuracy_vitos_warm_start": w["vitos"]["accuracy"], "accuracy_full_rl": m["full"]["accuracy"],
        "accuracy_baseline": m[first]["accuracy"] if first else None, "baseline": first,
        "accuracy_majority": r.majority["accuracy"],
        "accuracy_constant_box": {"warm_start": w["constant box"]["accuracy"], "rl": m["constant box"]["accuracy"]},
        "constant_box": r.constant_box,
        "accuracy_oracle": {"warm_start": w["oracle"]["accuracy"], "rl": m["oracle"]["accuracy"]},
        "accuracy_grounding_pass": {"warm_start": w["vitos"]["accuracy_grounding_pass"],
                                    "rl": m["vitos"]["accuracy_grounding_pass"]},
        "accuracy_baselines": {k: m[k]["accuracy"] for k in baselines},
        "accuracy_by_type": {"full": w["full"]["accuracy_by_type"], "full_rl": m["full"]["accuracy_by_type"],
                             "vitos": m["vitos"]["accuracy_by_type"],
                             **{k: m[k]["accuracy_by_type"] for k in baselines}},
        "box_fallbacks": {"warm_start": w["vitos"]["fallbacks"], "rl": m["vitos"]["fallbacks"]},
        "latency_ms": {"full": w["full"]["latency_ms"], "vitos": m["vitos"]["latency_ms"],
                       **{k: m[k]["latency_ms"] for k in baselines}},
        "reward_rise": {b: (None if x is None else {"first_third": x[0], "last_third": x[1], "rise": x[1] - x[0]})
                        for b, x in rises.items()},
        "sft_loss": {"first": losses[0], "last10": fmean(losses[-10:])},
        "vision_pretrain_loss": {"first": vision[0], "last10": fmean(vision[-10:])},
        "rl_steps": len(r.curve),
        "curve_points": r.points,
        "main_variant": r.main,
        "targets": r.targets,
        "target_figures": target_figures(r.cells, r.comparisons, r.main),
        "comparisons": list(r.comparisons.values()),
        "rows": list(r.cells.values()),
        "timings_s": timings,
        "config": asdict(cfg),
        "table": format_table(rows),
    }
    return _clean(summary)


def write_outputs(summary: dict[str, Any], r: Results, data: DemoData, cfg: DemoConfig, out: Path) -> None:
    """summary.json, summary.md (the table), reward_curves.png, accuracy_vs_kept.png (every model row with its
    95 % interval, the majority line), overlays/ (warm start vs RL on the first cfg.n_overlays test images)."""
    from vitos.study.plots import plot_accuracy_vs_kept, plot_reward_curves, save_overlays

    (out / "summary.md").write_text(summary["table"] + "\n")
    with open(out / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=1)
    plot_reward_curves(r.curve, out / "reward_curves.png")
    plot_accuracy_vs_kept(table_rows(r, list(cfg.baselines)), r.points, out / "accuracy_vs_kept.png",
                          chance=r.majority["accuracy"], chance_label="per-type majority answer")
    save_overlays(data.test, data.images, r.warm["vitos"]["records"], r.rl["vitos"]["records"], out / "overlays",
                  cfg.n_overlays)

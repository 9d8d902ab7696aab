"""`vitos demo`'s evaluation stages and targets: the study's evaluation and the study's tests on one seed.

    rows, enc = evaluate_model(adapter, data, cfg, constant, ["center"], say, "warm start")  # study rows
    points = curve_points(adapter, data, cfg, enc)          # first baseline at cfg.curve_ratios (the plot)
    per_seed = study_rows(majority, warm_rows, rl_rows, main)   # {"warm_start/vitos": [row], ...}: one seed
    cells, comparisons, targets = demo_targets(per_seed, main)  # vitos.study.report, exactly as the study

Every row comes from vitos.study.evaluate.evaluate_run (vitos, full = the SAME model on all tokens, oracle =
GT boxes, constant box = best constant box of the training split, training-free baselines at ViToS's
per-question budget), the per-type majority from evaluate_majority. The targets are report.targets on
report.cell rows and report.paired_tests comparisons, with the study's row names, so the demo's targets
are the study's targets on one seed (n = cfg.n_test questions): the same test, far less power.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from vitos.demo.config import DemoConfig, eval_settings
from vitos.demo.stages import DemoData, Say


def main_variant(cfg: DemoConfig) -> str:
    """The study's name of the demo's RL run (cross-feedback on; IoU reward on unless iou_weight = 0), e.g.
    `interleaved+cross+iou`."""
    from vitos.study.report import variant_name

    return variant_name(cfg.schedule, True, cfg.iou_weight > 0)


def rl_baselines(cfg: DemoConfig) -> list[str]:
    """The RL model's training-free rows: cfg.baselines, plus `center` (a target's comparison) if missing."""
    return list(cfg.baselines) + ([] if "center" in cfg.baselines else ["center"])


def evaluate_mode(adapter: Any, samples: list[Any], images: list[list[Any]], mode: str, cfg: DemoConfig,
                  keeps: list[list[torch.Tensor | None]] | None = None, fusion: str | None = None,
                  encoded: list[list[Any]] | None = None) -> dict[str, Any]:
    """One row of the shared evaluation (vitos.study.evaluate.evaluate_mode) with the demo's settings."""
    from vitos.study.evaluate import evaluate_mode as shared

    return shared(adapter, samples, images, mode, eval_settings(cfg), keeps, fusion, encoded)


def evaluate_model(adapter: Any, data: DemoData, cfg: DemoConfig, constant: list[float], baselines: list[str],
                   say: Say, what: str) -> tuple[dict[str, dict[str, Any]], list[list[Any]]]:
    """Every study row of one model on the test split (evaluate_run; the ViToS row keeps its per-question
    records for the overlays) and the model's encoding of the test images (one vision-tower pass)."""
    from vitos.pipeline import encode
    from vitos.study.evaluate import evaluate_run

    t0 = time.perf_counter()
    say.started(f"evaluation: {what} on {len(data.test)} test questions (ViToS, all tokens, GT boxes, constant box, "
                f"{', '.join(baselines)} at ViToS's budget)")
    encoded = encode(adapter, data.images)
    rows = evaluate_run(adapter, data.test, data.images, eval_settings(cfg), baselines, cfg.seed, constant, encoded,
                        keep_records=("vitos",))
    vit, full = rows["vitos"], rows["full"]
    miou = "-" if vit["miou"] is None else f"{vit['miou']:.3f}"
    say.log(f"{what}: full-token accuracy {full['accuracy']:.1%}, ViToS accuracy {vit['accuracy']:.1%} at "
            f"{vit['kept']:.1%} kept tokens, mIoU {miou}, GT boxes {rows['oracle']['accuracy']:.1%}, "
            f"constant box {rows['constant box']['accuracy']:.1%} ({time.perf_counter() - t0:.0f} s)")
    return rows, encoded


def curve_points(adapter: Any, data: DemoData, cfg: DemoConfig, encoded: list[list[Any]]) -> list[dict[str, Any]]:
    """The first baseline (or `center`) at each fixed keep ratio of cfg.curve_ratios: the dashed curve of
    accuracy_vs_kept.png. Each point: {name "<baseline>@<ratio>", accuracy, kept, n}."""
    from vitos.eval.baselines import BASELINE_FUSION, budget_from_ratio
    from vitos.study.evaluate import baseline_keeps

    name = cfg.baselines[0] if cfg.baselines else "center"
    points = []
    for ratio in cfg.curve_ratios:
        budgets = [budget_from_ratio(sum(e.num_tokens for e in enc), ratio) for enc in encoded]
        keeps = baseline_keeps(name, encoded, budgets, cfg.seed)
        res = evaluate_mode(adapter, data.test, data.images, "baseline", cfg, keeps, BASELINE_FUSION[name], encoded)
        points.append({"name": f"{name}@{ratio:g}", "accuracy": res["accuracy"], "kept": res["kept"], "n": res["n"]})
    return points


def study_rows(majority: dict[str, Any], warm: dict[str, dict[str, Any]], rl: dict[str, dict[str, Any]],
               main: str) -> dict[str, list[dict[str, Any]]]:
    """The demo's rows under the study's names, as the study's per-seed lists (one seed): `majority`,
    `warm_start/<row>` and `<main>/<row>` for every row of evaluate_run."""
    per_seed: dict[str, list[dict[str, Any]]] = {"majority": [majority]}
    per_seed.update({f"warm_start/{k}": [v] for k, v in warm.items()})
    per_seed.update({f"{main}/{k}": [v] for k, v in rl.items()})
    return per_seed


def demo_targets(per_seed: dict[str, list[dict[str, Any]]], main: str
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any]]:
    """(rows, comparisons, targets) of vitos.study.report on the per-seed lists, exactly as `vitos study`
    builds them: rows = report.cell per row, comparisons = report.paired_tests for the main variant,
    targets = report.targets."""
    from vitos.study import report

    cells = {name: report.cell(name, res) for name, res in per_seed.items()}
    comparisons = report.paired_tests(per_seed, [main])
    return cells, comparisons, report.targets(cells, comparisons, main)

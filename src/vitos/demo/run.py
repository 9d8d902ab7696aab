"""`run_demo`: every stage of `vitos demo` in order (vitos.demo.stages, .evaluation, .summary).

    from vitos.demo import quick_config, run_demo
    summary = run_demo(quick_config(out_dir="runs/demo-quick"))     # what `vitos demo --quick` runs
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from vitos.demo.config import DemoConfig
from vitos.demo.evaluation import curve_points, demo_targets, evaluate_model, main_variant, rl_baselines, study_rows
from vitos.demo.stages import Say, make_data, make_warm_start, run_rl, write_provenance
from vitos.demo.summary import Results, build_summary, write_outputs


def run_demo(cfg: DemoConfig, quiet: bool = False) -> dict[str, Any]:
    """Run every stage; returns the summary (also written to <out_dir>/summary.json).

    data -> model + warm start -> evaluate the warm start -> RL -> evaluate the RL model -> the study's
    tests and targets on this one seed -> summary, table, plots, overlays. Progress (off with `quiet`): every
    long loop shows a bar (terminal) or `[progress]` lines (log); the `[demo]` result lines are printed
    either way."""
    from vitos.models import load_model
    from vitos.study.evaluate import best_constant_box, evaluate_majority

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    say, out, timings, t_all = Say(quiet), Path(cfg.out_dir), {}, time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)

    data = make_data(cfg, out, say)                                                     # 1. data
    timings["data_s"] = data.seconds
    warm = make_warm_start(cfg, data, out, say)                                         # 2-3. model + warm start
    timings["warm_start_s"] = warm.seconds

    t0 = time.perf_counter()                                                            # evaluate the warm start
    constant = best_constant_box([s.boxes for s in data.train])  # what an image-blind policy would learn
    warm_rows, _ = evaluate_model(warm.adapter, data, cfg, constant, ["center"], say, "warm start")
    write_provenance(warm, cfg, warm_rows)
    warm.adapter = None  # free the model before RL loads its own copy
    timings["eval_warm_start_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()                                                            # 4. RL
    curve = run_rl(cfg, data, warm.folder, out, say)
    timings["rl_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()                                                            # 5. evaluate the RL model
    rl_model = load_model(str(out / "rl" / "final"), dtype="float32", device="cpu")
    rl_rows, encoded = evaluate_model(rl_model, data, cfg, constant, rl_baselines(cfg), say, "the RL model")
    points = curve_points(rl_model, data, cfg, encoded)
    majority = evaluate_majority(data.test, data.train)  # no model: each type's most frequent training answer
    timings["eval_rl_s"] = time.perf_counter() - t0

    main = main_variant(cfg)                                                            # the study's tests
    cells, comparisons, targets = demo_targets(study_rows(majority, warm_rows, rl_rows, main), main)
    results = Results(warm_rows, rl_rows, majority, constant, points, curve, warm, main, cells, comparisons, targets)

    say.started("plots and overlays")                                                   # 6. report
    timings["total_s"] = time.perf_counter() - t_all
    summary = build_summary(cfg, results, timings)
    write_outputs(summary, results, data, cfg, out)
    return summary

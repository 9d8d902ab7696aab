"""`vitos eval`, by concern: this module only gathers the public names of the three modules that do it.

* `vitos.eval.loop`        the evaluation loop: `EvalConfig`, protocol presets (`PROTOCOLS`,
                           `apply_protocol`), batches, judging, `evaluate` (the module docstring lists the
                           output folder);
* `vitos.eval.predictions` the resumable prediction log (`read_predictions`, `load_budgets`, `EvalError`);
* `vitos.eval.reports`     scores.md, the sibling-runs table and the accuracy-vs-kept plot;
* `vitos.eval.cli`         the command line (`main_eval`).

    from vitos.eval.runner import EvalConfig, evaluate
    scores = evaluate(EvalConfig(model="/tmp/tiny", benchmarks=["vqa_rad"], mode="full", out="runs/x"))
"""

from __future__ import annotations

from vitos.eval.cli import main_eval
from vitos.eval.loop import MODES, PROTOCOLS, RECORD_FIELDS, EvalConfig, apply_protocol, evaluate, make_benchmark
from vitos.eval.predictions import EvalError, load_budgets, read_predictions
from vitos.eval.reports import collect_runs, plot_accuracy_vs_kept, runs_table

__all__ = [
    "MODES",
    "PROTOCOLS",
    "RECORD_FIELDS",
    "EvalConfig",
    "EvalError",
    "apply_protocol",
    "make_benchmark",
    "evaluate",
    "read_predictions",
    "load_budgets",
    "collect_runs",
    "runs_table",
    "plot_accuracy_vs_kept",
    "main_eval",
]

"""`vitos demo`: the whole ViToS pipeline on a laptop CPU, in minutes, with nothing to download.

    vitos demo                          # defaults: <= 15 min on 2 CPU cores, every stage
    vitos demo --quick                  # <= 3 min (CI): RL from the shipped warm start, then evaluation
    vitos demo --json demo.json --out runs/demo --seed 0 [--config my_demo.yaml] [key=value ...]
    vitos demo --quiet                  # no progress bars / lines (results and summary only)

Stages (each printed as it runs; everything lands in --out):

    1. data        MedPhantom (vitos.data.medphantom): scan-like images whose answer lives in one rimmed
                   organ while look-alike spots elsewhere mislead a model that reads the whole image.
    2. model       a tiny random Qwen2.5-VL (vitos.models.tiny), loaded through the real-model code path.
    3. warm start  supervised stages (vitos.sft; `warm_start_stages`): the random vision tower learns to
                   see (dense per-token targets), then the LM learns to read kept tokens (read), to
                   write the organ's box (locate), then every target of both branches (both). A random
                   model cannot sample a box, and RL needs rollouts that sometimes succeed. `--quick`
                   skips stages 2-3 and loads the warm start shipped in the package (BUILTIN_WARM_START),
                   which is what these stages write with the defaults.
    4. RL          the paper's dual-stream GRPO with cross-feedback (vitos.rl.trainer.train), started
                   from the warm start.
    5. evaluation  `vitos study`'s rows (vitos.study.evaluate.evaluate_run) on the MedPhantom test split,
                   greedy decoding, one answer path (vitos.pipeline.run), for the warm start and for the
                   RL model: vitos (ground -> prune -> answer), full (the SAME model on all visual tokens),
                   oracle (GT boxes), constant box (the best constant box of the training split), the
                   training-free baselines (`center`, ...) at ViToS's per-question budget; plus the
                   per-type majority answer (no model).
    6. targets     `vitos study`'s paired tests and targets (vitos.study.report.paired_tests / targets) on
                   those rows under the study's names: after-RL ViToS beats the warm start, the centre crop
                   and the constant box (McNemar p < 0.05), beats the majority, >= 100 % of the same
                   model's full-token accuracy, mIoU and distinct boxes above the warm start's. One seed at
                   n = 100 is a noisy check of those targets, not the study.

Modules: config (DemoConfig, QUICK_PRESET, BUILTIN_WARM_START, build_config), stages (data, warm start,
RL), evaluation (the study's rows and targets), summary (summary.json, table, plots), run (run_demo), cli
(main_demo).

Outputs in --out: summary.json (also written to --json), metrics table in summary.md, plots
reward_curves.png and accuracy_vs_kept.png (95 % Wilson intervals, the per-type majority line), overlays/
(what the sparse branch sees on a few test images, captioned: warm start vs after RL), the RL run directory
rl/ (metrics.jsonl, config.yaml, final/), the warm-started checkpoint warm_start/, the data set data/. Both
checkpoints carry vitos_settings.json (fusion, margin, min_keep, max_new_tokens, greedy, synthetic), so
`vitos infer --model runs/demo/rl/final ...` runs them as the demo did.

Progress: long loops show a bar with rate and ETA on a terminal, plain `[progress] ...` lines in a log;
`--quiet` turns both off.

Reported figures (the JSON holds each, plus per-stage timings and the config; vitos.demo.summary lists
the keys):
  relative_performance   accuracy_vitos / accuracy_full_rl: the RL model's ViToS over the SAME model on all
                         tokens (the paper's "relative performance"; relative_performance_warm_start the
                         warm start's)
  kept_token_ratio       visual tokens the ViToS answer pass saw / all visual tokens (kept + fused)
  miou_warm_start, miou_rl   mean over test questions of the best IoU of a predicted box with the GT
                         box (0 when the grounding pass gave no usable box)
  reward_rise            per branch, mean reward over the last third of RL steps minus the first third
                         (a reported figure, not a target)

Departures from the paper, all because a CPU must finish in minutes: a 64-wide two-layer model instead
of a 7B one, a supervised warm start the paper does not need, a few thousand RL rollouts from a pool of
160 questions with the IoU reward weighted 5 (see `DemoConfig` for why), and a synthetic task. The demo
shows the *mechanism*, not the paper's numbers: on this budget the warm start does the grounding and the
RL stage changes the test figures by less than their noise (README, "The embedded default").
"""

from __future__ import annotations

from vitos.demo.cli import main_demo, print_results
from vitos.demo.config import (BUILTIN_WARM_START, QUICK_PRESET, DemoConfig, build_config, eval_settings, quick_config,
                               resolve_warm_start)
from vitos.demo.evaluation import (curve_points, demo_targets, evaluate_mode, evaluate_model, main_variant,
                                   rl_baselines, study_rows)
from vitos.demo.run import run_demo
from vitos.demo.stages import (DEMO_SETTINGS_NOTE, DemoData, Say, WarmStart, _save_model, _train_config, demo_settings,
                               make_data, make_warm_start, rl_pool, run_rl, save_warm_start, warm_start_stages,
                               write_provenance)
from vitos.demo.summary import Results, build_summary, format_table, relative_performance, reward_rise, write_outputs
from vitos.study.evaluate import baseline_keeps  # noqa: F401  (re-exported: one set of baselines for demo and study)
from vitos.study.plots import moving_average, plot_accuracy_vs_kept, plot_reward_curves, save_overlays  # noqa: F401

__all__ = [
    "BUILTIN_WARM_START", "DEMO_SETTINGS_NOTE", "QUICK_PRESET", "DemoConfig", "DemoData", "Results", "Say", "WarmStart",
    "baseline_keeps", "build_config", "build_summary", "curve_points", "demo_settings", "demo_targets",
    "eval_settings", "evaluate_mode", "evaluate_model", "format_table", "main_demo", "main_variant", "make_data",
    "make_warm_start", "moving_average", "plot_accuracy_vs_kept", "plot_reward_curves", "print_results",
    "quick_config", "relative_performance", "resolve_warm_start", "reward_rise", "rl_baselines", "rl_pool",
    "run_demo", "run_rl", "save_overlays", "save_warm_start", "study_rows", "warm_start_stages", "write_outputs",
    "write_provenance",
]

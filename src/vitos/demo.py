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
    5. evaluation  on the MedPhantom test split, greedy decoding, same answer path for every mode
                   (vitos.pipeline.run):
                     full      the warm-started model on ALL visual tokens (the reference)
                     vitos     the RL model: ground -> prune -> answer
                     baseline  a training-free pruning rule (vitos.eval.baselines; `center` by default)
                               fed the RL model's per-sample token counts: same budget, other tokens
                   plus the warm start's own ViToS path (its grounding mIoU is the "before" figure).

Outputs in --out: summary.json (also written to --json), metrics table in summary.md, plots
reward_curves.png and accuracy_vs_kept.png (95 % Wilson intervals, the per-type majority line), overlays/
(what the sparse branch sees on a few test images, captioned: warm start vs after RL), the RL run directory
rl/ (metrics.jsonl, config.yaml, final/), the warm-started checkpoint warm_start/, the data set data/. Both
checkpoints carry vitos_settings.json (fusion, margin, min_keep, max_new_tokens, greedy, synthetic), so
`vitos infer --model runs/demo/rl/final ...` runs them as the demo did.

Progress: long loops show a bar with rate and ETA on a terminal, plain `[progress] ...` lines in a log;
`--quiet` turns both off.

Reported figures (the JSON holds each, plus per-stage timings and the config):
  relative_performance   accuracy_vitos / accuracy_full (the paper's "relative performance", one
                         benchmark so both of its definitions coincide)
  kept_token_ratio       visual tokens the ViToS answer pass saw / all visual tokens (kept + fused)
  miou_warm_start, miou_rl   mean over test questions of the best IoU of a predicted box with the GT
                         box (0 when the grounding pass gave no usable box)
  reward_rise            per branch, mean reward over the last third of RL steps minus the first third

Departures from the paper, all because a CPU must finish in minutes: a 64-wide two-layer model instead
of a 7B one, a supervised warm start the paper does not need, a few thousand RL rollouts from a pool of
160 questions with the IoU reward weighted 5 (see `DemoConfig` for why), and a synthetic task. The demo
shows the *mechanism*, not the paper's numbers: on this budget the warm start does the grounding and the
RL stage changes the test figures by less than their noise (README, "The embedded default").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

import torch

from vitos.study.evaluate import baseline_keeps  # noqa: F401  (re-exported: one set of baselines for demo and study)
from vitos.study.plots import moving_average, plot_accuracy_vs_kept, plot_reward_curves, save_overlays  # noqa: F401

QUICK_PRESET: dict[str, Any] = {
    "reuse_warm_start": "builtin",
    "n_train": 160,
    "n_test": 60,
    "curve_ratios": [],
    "baselines": ["center"],
    "n_overlays": 2,
}
"""What `--quick` changes (CI, <= 3 min): RL starts from the warm start shipped in the package (the one the
default demo writes, BUILTIN_WARM_START) instead of making one; 160 training questions (exactly the
default's RL pool, so the RL stage is the default run's, step for step), 60 test questions, one baseline."""


@dataclass
class DemoConfig:
    """Every knob of `vitos demo` (defaults: the full demo; `--quick` applies QUICK_PRESET first)."""

    seed: int = 0
    """Seeds the data, the tiny model's weights, the warm start's order and the RL sampler."""
    out_dir: str = "runs/demo"
    """Where every artefact goes (see the module docstring)."""
    threads: int = 1
    """torch CPU threads (0 = torch's default). 1 by default: every figure in the README is then
    reproducible bit for bit, and the tiny model's small matrices gain little from a second thread."""

    # --- data ---------------------------------------------------------------------------------------
    n_train: int = 400
    """MedPhantom training questions (warm start and RL draw from the same pool)."""
    n_test: int = 100
    """MedPhantom test questions every figure is measured on."""
    question_mix: dict[str, float] = field(
        default_factory=lambda: {"presence": 0.4, "brightness_choice": 0.3, "brightness_open": 0.15, "count": 0.15}
    )
    """MedPhantom question types and weights (see vitos.data.medphantom.QUESTION_TYPES)."""

    # --- model --------------------------------------------------------------------------------------
    hidden: int = 64
    """Width of the tiny model (language model and vision tower)."""
    layers: int = 2
    """Language-model layers of the tiny model."""
    vision_depth: int = 2
    """Vision-tower blocks of the tiny model."""
    image_pixels: int = 224 * 224
    """Processor pixel cap: 224 x 224 = an 8 x 8 grid of 64 visual tokens per image."""

    # --- pruning (shared by warm start, RL and evaluation) --------------------------------------------
    margin: float = 0.0
    """Box dilation (normalised units) before tokens are selected."""
    min_keep: int = 1
    """Fewest tokens kept per image."""
    fusion: str = "none"
    """How pruned tokens are folded in: none, merge or contextual (vitos.pruning.fusion). `none` here: the
    tiny model's features are alike enough that `merge` folds the distractors into the kept tokens."""

    # --- warm start (vitos.sft) ---------------------------------------------------------------------
    vision_steps: int = 150
    """Dense pre-training steps of the random vision tower (spot class, evidence flag, cell position per
    token; vitos.sft.pretrain_vision). The tower is then frozen."""
    vision_box_weight: float = 10.0
    """Weight of the dense box-regression target of that pre-training (VisionPretrainConfig.box_weight):
    evidence tokens then carry their box, and the LM only has to find them and read it out."""
    read_steps: int = 300
    """Warm-start steps on short targets first (2 x sft_batch_size questions each, `read_sequences`): the
    LM learns to read the kept tokens before anything else."""
    read_sequences: list[str] = field(default_factory=lambda: ["sparse"])
    """Targets of those steps (vitos.sft.SFTConfig.sequences)."""
    locate_steps: int = 300
    """Then steps on box targets alone (2 x sft_batch_size questions each, `locate_sequences`, constant lr):
    the LM learns to write the box of the organ it sees."""
    locate_sequences: list[str] = field(default_factory=lambda: ["where", "grounding"])
    """Targets of those steps: 'where' (short prompt) beside 'grounding' (full prompt) in every batch."""
    sft_steps: int = 200
    """Then steps on every target of both branches (cosine decay)."""
    sft_sequences: list[str] = field(default_factory=lambda: ["grounding", "sparse", "full", "where"])
    """Targets of those steps (vitos.sft.SFTConfig.sequences); 'full' trains the full-token baseline's input."""
    sft_batch_size: int = 8
    """Questions per warm-start step."""
    sft_lr: float = 2e-3
    """Warm-start peak learning rate (cosine decay)."""
    think: str = "compact"
    """Reasoning targets of the warm start (vitos.sft.SFTConfig.think)."""
    box_jitter: float = 0.03
    """Warm start: jitter of the GT box the sparse target is pruned with (robustness to real boxes)."""

    # --- RL (vitos.rl.trainer) ----------------------------------------------------------------------
    rl_steps: int = 60
    """GRPO steps (one step = rl_batch_size questions, G grounding and G x G' sparse rollouts each)."""
    rl_questions: int = 160
    """RL draws its questions from the first this-many training questions (0 = all), so its steps
    revisit each one (60 x 4 / 160 = 1.5 epochs) and the reward curve compares like with like. Measured
    from one warm start: all 400 -> neither branch's reward rose; 64 -> both rose, but the test accuracy
    and mIoU fell (the pool was memorised); 160 -> both rose, test figures held."""
    rl_batch_size: int = 4
    """Questions per RL step."""
    group_size: int = 8
    """G: grounding rollouts per question."""
    sparse_group_size: int = 2
    """G': sparse rollouts per grounding rollout."""
    rl_lr: float = 1e-4
    """RL learning rate (full fine-tuning of the language model; the vision tower is frozen)."""
    schedule: str = "interleaved"
    """Branch schedule: stagewise (authors), interleaved or joint (vitos.rl.config.ScheduleSection)."""
    stage1_fraction: float = 0.5
    """Stagewise only: fraction of rl_steps spent on the grounding objective."""
    iou_weight: float = 5.0
    """Weight of the grounding branch's IoU reward (vitos.rl.rewards.RewardWeights.iou; the other terms stay
    1, as in the paper). Why 5: within a group of G boxes the IoU varies by a few hundredths while the
    accuracy and cross-feedback terms jump by 1, so at weight 1-2 the grounding advantage is all about
    answers (measured: rollout IoU flat over RL); at 5 the rollouts' IoU rose (0.40 -> 0.43)."""
    temperature: float = 0.7
    """Rollout sampling temperature (below 1: fewer malformed boxes, rollouts nearer the greedy policy
    that evaluation decodes; at 1.0 a third of the tiny model's sampled boxes did not parse)."""
    max_new_tokens: int = 64
    """Longest completion, rollouts and evaluation alike."""

    reuse_warm_start: str | None = None
    """Skip stages 2-3 and start RL from this warm-started checkpoint: a previous run's warm_start/, or
    'builtin' for the one shipped in the package (BUILTIN_WARM_START; `--quick` uses it)."""

    # --- evaluation ---------------------------------------------------------------------------------
    baselines: list[str] = field(default_factory=lambda: ["center", "random"])
    """Training-free baselines at ViToS's per-sample token budget; the first is `accuracy_baseline`."""
    curve_ratios: list[float] = field(default_factory=lambda: [0.25, 0.5])
    """Extra fixed keep ratios at which the first baseline is run, for the accuracy-vs-kept plot."""
    eval_batch_size: int = 25
    """Test questions per generate call."""
    n_overlays: int = 4
    """Test images drawn with their kept tokens (warm start vs RL)."""


BUILTIN_WARM_START = Path(__file__).parent / "assets" / "demo_warm_start"
"""The warm start shipped with the package: `vitos demo` with its defaults (seed 0) wrote it to
runs/demo/warm_start/, and it was copied here unchanged (provenance.json inside says what made it and what
it scored). Refresh it after changing the model, MedPhantom or the warm start:
`vitos demo --out runs/demo && cp runs/demo/warm_start/* src/vitos/assets/demo_warm_start/`."""


def resolve_warm_start(value: str) -> Path:
    """`reuse_warm_start` as a folder: 'builtin' -> BUILTIN_WARM_START; a missing folder is an error."""
    path = BUILTIN_WARM_START if value == "builtin" else Path(value)
    if not (path / "config.json").is_file():
        hint = ("the package was installed without its assets; reinstall it (pip install -e .)" if value == "builtin"
                else "pass the warm_start/ folder of a finished `vitos demo` run, or 'builtin'")
        raise FileNotFoundError(f"reuse_warm_start={value!r}: no checkpoint (config.json) in {path}; {hint}")
    return path


def quick_config(**overrides: Any) -> DemoConfig:
    """DemoConfig with QUICK_PRESET applied, then `overrides`."""
    return DemoConfig(**{**QUICK_PRESET, **overrides})


# --------------------------------------------------------------------------------------------------
# Small pure helpers (tested without running the demo)
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


def eval_settings(cfg: DemoConfig) -> Any:
    """The demo's decoding and pruning settings for the shared evaluation (vitos.study.evaluate)."""
    from vitos.study.evaluate import EvalSettings

    return EvalSettings(margin=cfg.margin, min_keep=cfg.min_keep, fusion=cfg.fusion, max_new_tokens=cfg.max_new_tokens,
                        batch_size=cfg.eval_batch_size)


def evaluate_mode(adapter: Any, samples: list[Any], images: list[list[Any]], mode: str, cfg: DemoConfig,
                  keeps: list[list[torch.Tensor | None]] | None = None, fusion: str | None = None) -> dict[str, Any]:
    """One row of the shared evaluation (vitos.study.evaluate.evaluate_mode) with the demo's settings."""
    from vitos.study.evaluate import evaluate_mode as shared

    return shared(adapter, samples, images, mode, eval_settings(cfg), keeps, fusion)


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _save_model(adapter: Any, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    adapter.model.save_pretrained(path)
    adapter.tokenizer.save_pretrained(path)
    adapter.image_processor.save_pretrained(path)


def rl_pool(train_jsonl: Path, n: int) -> Path:
    """The first `n` rows of a row file, written beside it as rl_train.jsonl (relative image paths stay
    valid); n <= 0, or n >= the number of rows, returns the file itself."""
    lines = [line for line in train_jsonl.read_text().splitlines() if line.strip()]
    if n <= 0 or n >= len(lines):
        return train_jsonl
    out = train_jsonl.with_name("rl_train.jsonl")
    out.write_text("\n".join(lines[:n]) + "\n")
    return out


def warm_start_stages(cfg: DemoConfig) -> list[tuple[str, Any]]:
    """The warm start's stages in order, as (name, vitos.sft.SFTConfig); stages with 0 steps are left out.

    read    short targets (`read_sequences`), constant lr, 2 x sft_batch_size questions per step
    locate  box targets (`locate_sequences`), constant lr, 2 x sft_batch_size questions per step
    both    every branch's target (`sft_sequences`), cosine decay, sft_batch_size questions per step
    """
    from vitos.sft import SFTConfig

    common = dict(lr=cfg.sft_lr, think=cfg.think, box_jitter=cfg.box_jitter, freeze_vision=True)
    stages = [
        ("read", SFTConfig(steps=max(1, cfg.read_steps), batch_size=2 * cfg.sft_batch_size, schedule="constant",
                           sequences=tuple(cfg.read_sequences), seed=cfg.seed, **common), cfg.read_steps),
        ("locate", SFTConfig(steps=max(1, cfg.locate_steps), batch_size=2 * cfg.sft_batch_size, schedule="constant",
                             sequences=tuple(cfg.locate_sequences), warmup_steps=0, seed=cfg.seed + 2, **common),
         cfg.locate_steps),
        ("both", SFTConfig(steps=max(1, cfg.sft_steps), batch_size=cfg.sft_batch_size, schedule="cosine",
                           sequences=tuple(cfg.sft_sequences), warmup_steps=0, seed=cfg.seed + 1, **common),
         cfg.sft_steps),
    ]
    return [(name, c) for name, c, steps in stages if steps > 0]


DEMO_SETTINGS_NOTE = "trained on MedPhantom phantoms by `vitos demo`: a synthetic toy model, not a medical one"


def demo_settings(cfg: DemoConfig) -> Any:
    """The vitos_settings.json of a demo checkpoint (vitos.models.settings): the pruning and completion length
    it was trained and evaluated with, greedy decoding (evaluation's; `temperature` is the RL rollouts'), and
    the provenance flag of a synthetic model."""
    from vitos.models.settings import ModelSettings

    return ModelSettings(fusion=cfg.fusion, margin=cfg.margin, min_keep=cfg.min_keep, max_new_tokens=cfg.max_new_tokens,
                         temperature=0.0, synthetic=True, made_by="vitos demo")


def save_warm_start(adapter: Any, path: Path, cfg: DemoConfig) -> None:
    """The warm-started model (weights, tokenizer, processor) and its vitos_settings.json (demo_settings):
    `vitos infer` / `eval` / `app` then run it as the demo does by default."""
    from vitos.models.settings import write_settings

    _save_model(adapter, path)
    write_settings(path, demo_settings(cfg), note=DEMO_SETTINGS_NOTE)


def _train_config(cfg: DemoConfig, model_dir: Path, train_path: Path, out: Path) -> Any:
    from vitos.pipeline import PruneConfig
    from vitos.rl.rewards import RewardWeights
    from vitos.rl.config import (CheckpointSection, DataSection, GRPOSection, LoggingSection, ModelSection,
                                 OptimSection, RolloutSection, ScheduleSection, TrainConfig)

    stage1 = max(1, min(cfg.rl_steps - 1, round(cfg.rl_steps * cfg.stage1_fraction)))
    return TrainConfig(
        model=ModelSection(name_or_path=str(model_dir), dtype="float32", lora=False, freeze_vision=True),
        data=DataSection(train_path=str(train_path), batch_size=cfg.rl_batch_size, shuffle_seed=cfg.seed),
        rollout=RolloutSection(group_size=cfg.group_size, sparse_group_size=cfg.sparse_group_size,
                               max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature),
        prune=PruneConfig(margin=cfg.margin, min_keep=cfg.min_keep, fusion=cfg.fusion),  # type: ignore[arg-type]
        grpo=GRPOSection(),
        rewards=RewardWeights(iou=cfg.iou_weight),
        optim=OptimSection(lr=cfg.rl_lr),
        schedule=ScheduleSection(name=cfg.schedule, total_steps=cfg.rl_steps, stage1_steps=stage1),  # type: ignore[arg-type]
        checkpoint=CheckpointSection(out_dir=str(out)),
        logging=LoggingSection(log_grad_cosine=False, progress=False),
        seed=cfg.seed,
        device="cpu",
    )


def run_demo(cfg: DemoConfig, quiet: bool = False) -> dict[str, Any]:
    """Run every stage; returns the summary (also written to <out_dir>/summary.json).

    Progress (off with `quiet`): every long loop (vision pre-training, each warm-start stage, RL) shows a
    bar with rate and ETA when stderr is a terminal, else a plain `[progress] ...` line every tenth of it
    (vitos.sft.StageProgress); every other stage that takes seconds says what it starts and waits for.
    The `[demo]` result lines are printed either way."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from vitos.data.medphantom import PhantomConfig, write_dataset
    from vitos.data.readers import read_rows
    from vitos.models import load_model
    from vitos.models.tiny import write_tiny_model
    from vitos.pipeline import PruneConfig, encode, load_sample_images
    from vitos.rl.checkpoint import read_metrics
    from vitos.rl.trainer import train
    from vitos.sft import StageProgress, VisionPretrainConfig, pretrain_vision, warm_start
    from vitos.study.evaluate import evaluate_majority

    def started(what: str) -> None:  # a stage that takes seconds: say what it waits for
        if not quiet:
            _log(f"{what} ...")

    def bar(total: int, desc: str) -> Any:
        return StageProgress(total, desc, enabled=not quiet)

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    # 1. data --------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    started(f"data: writing {cfg.n_train} train / {cfg.n_test} test MedPhantom questions to {out / 'data'}")
    phantom = PhantomConfig(seed=cfg.seed, n_train=cfg.n_train, n_test=cfg.n_test, question_mix=dict(cfg.question_mix))
    paths = write_dataset(phantom, out / "data")
    train_set = read_rows(paths["train"]).samples
    test_set = read_rows(paths["test"]).samples
    test_images = [load_sample_images(s) for s in test_set]
    prune = PruneConfig(margin=cfg.margin, min_keep=cfg.min_keep, fusion=cfg.fusion)  # type: ignore[arg-type]
    timings["data_s"] = time.perf_counter() - t0
    _log(f"data: {len(train_set)} train / {len(test_set)} test MedPhantom questions in {out / 'data'}")

    # 2-3. tiny model + warm start -------------------------------------------------------------------
    t0 = time.perf_counter()
    if cfg.reuse_warm_start:
        warm_dir = resolve_warm_start(cfg.reuse_warm_start)
        started(f"warm start: loading {warm_dir}")
        adapter = load_model(str(warm_dir), dtype="float32", device="cpu")
        losses, vision_losses = [float("nan")], [float("nan")]
        _log(f"warm start: reusing {warm_dir}")
    else:
        started(f"model: writing a random {cfg.hidden}-wide tiny Qwen2.5-VL to {out / 'tiny-model'} and loading it")
        tiny = write_tiny_model(out / "tiny-model", seed=cfg.seed, hidden=cfg.hidden, layers=cfg.layers,
                                vision_depth=cfg.vision_depth, image_max_pixels=cfg.image_pixels)
        adapter = load_model(str(tiny), dtype="float32", device="cpu")
        vision_cfg = VisionPretrainConfig(steps=cfg.vision_steps, box_weight=cfg.vision_box_weight, seed=cfg.seed)
        vision_losses = pretrain_vision(adapter, train_set, vision_cfg,
                                        progress=bar(cfg.vision_steps, "vision pre-training"))
        timings["vision_pretrain_s"] = time.perf_counter() - t0
        _log(f"vision pre-training: loss {vision_losses[0]:.2f} -> {fmean(vision_losses[-10:]):.2f} "
             f"in {timings['vision_pretrain_s']:.0f} s")
        # Short targets first: the sparse branch (find spots among the kept tokens) and 'where' (the box
        # under a 5-word prompt). Measured: answers written from ALL tokens, mixed in from step 0, taught
        # the LM to ignore the spots (nothing learned in 400 steps), and boxes under the ~200-token
        # grounding prompt alone stayed the same for every image (mIoU 0.33); with 'where' beside them
        # they follow the organ (mIoU 0.48 on the long prompt after 350 mixed steps).
        losses = []
        stages = warm_start_stages(cfg)
        for k, (name, sft_cfg) in enumerate(stages):
            losses += warm_start(adapter, train_set, sft_cfg, prune,
                                 progress=bar(sft_cfg.steps, f"warm start {k + 1}/{len(stages)} ({name})"))
            _log(f"warm start ({name}): {sft_cfg.steps} steps, loss {losses[-sft_cfg.steps]:.3f} -> "
                 f"{fmean(losses[-min(10, sft_cfg.steps):]):.3f}")
        warm_dir = out / "warm_start"
        save_warm_start(adapter, warm_dir, cfg)
        _log(f"warm start: loss {losses[0]:.2f} -> {fmean(losses[-10:]):.2f}")
    timings["warm_start_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    started(f"evaluation: warm start on {len(test_set)} test questions, all tokens then ViToS (ground -> prune -> answer)")
    full = evaluate_mode(adapter, test_set, test_images, "full", cfg)
    warm_vitos = evaluate_mode(adapter, test_set, test_images, "vitos", cfg)
    timings["eval_warm_start_s"] = time.perf_counter() - t0
    _log(f"warm start: full-token accuracy {full['accuracy']:.1%}, ViToS accuracy {warm_vitos['accuracy']:.1%}, "
         f"mIoU {warm_vitos['miou']:.3f}")
    if not cfg.reuse_warm_start:  # what made this checkpoint and what it scored, for anyone who reuses it
        _write_json(warm_dir / "provenance.json", {
            "made_by": "vitos demo " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["demo"] else sys.argv[1:]),
            "config": asdict(cfg),
            "test_split": {"n_test": cfg.n_test, "seed": cfg.seed, "accuracy_full": full["accuracy"],
                           "accuracy_vitos": warm_vitos["accuracy"], "kept_token_ratio": warm_vitos["kept"],
                           "miou": warm_vitos["miou"]},
            "versions": {"torch": torch.__version__, "transformers": _version("transformers")},
        })
    del adapter

    # 4. RL ------------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    rl_rows = rl_pool(Path(paths["train"]), cfg.rl_questions)
    tcfg = _train_config(cfg, warm_dir, rl_rows, out / "rl")
    metrics_path = out / "rl" / "metrics.jsonl"
    started(f"RL: loading {warm_dir} into the trainer ({cfg.rl_steps} steps of {cfg.rl_batch_size} questions, "
            f"{cfg.group_size} x {cfg.sparse_group_size} rollouts each)")
    with bar(cfg.rl_steps, "RL") as rl_bar:
        train(tcfg, overwrite=True, on_step_end=lambda step, m: rl_bar.update(  # a rerun replaces the previous RL run
            reward_grounding=m.get("grounding/reward"), reward_sparse=m.get("sparse/reward"),
            iou=m.get("grounding/iou"), kept=m.get("kept_token_ratio")))
    timings["rl_s"] = time.perf_counter() - t0
    curve = read_metrics(metrics_path)
    _log(f"RL: {len(curve)} steps in {timings['rl_s']:.0f} s, model in {out / 'rl' / 'final'}")

    # 5. evaluation of the RL model ---------------------------------------------------------------------
    t0 = time.perf_counter()
    n_evals = 2 + len(cfg.baselines) + len(cfg.curve_ratios)
    started(f"evaluation: the RL model on {len(test_set)} test questions ({n_evals} passes: ViToS, "
            f"{len(cfg.baselines)} baseline(s), {len(cfg.curve_ratios)} fixed ratio(s), all tokens)")
    rl_adapter = load_model(str(out / "rl" / "final"), dtype="float32", device="cpu")
    vitos = evaluate_mode(rl_adapter, test_set, test_images, "vitos", cfg)
    budgets = [r["visual_tokens_kept"] for r in vitos["records"]]
    encoded = encode(rl_adapter, test_images)
    from vitos.eval.baselines import BASELINE_FUSION, budget_from_ratio

    baselines: dict[str, dict[str, Any]] = {}
    for name in cfg.baselines:
        keeps = baseline_keeps(name, encoded, budgets, cfg.seed)
        baselines[name] = evaluate_mode(rl_adapter, test_set, test_images, "baseline", cfg, keeps, BASELINE_FUSION[name])
    curve_points = []
    for ratio in cfg.curve_ratios:
        name = cfg.baselines[0] if cfg.baselines else "center"
        ratio_budgets = [budget_from_ratio(sum(e.num_tokens for e in enc), ratio) for enc in encoded]
        keeps = baseline_keeps(name, encoded, ratio_budgets, cfg.seed)
        res = evaluate_mode(rl_adapter, test_set, test_images, "baseline", cfg, keeps, BASELINE_FUSION[name])
        curve_points.append({"name": f"{name}@{ratio:g}", "accuracy": res["accuracy"], "kept": res["kept"], "n": res["n"]})
    rl_full = evaluate_mode(rl_adapter, test_set, test_images, "full", cfg)
    majority = evaluate_majority(test_set, train_set)  # no model: each type's most frequent training answer
    timings["eval_rl_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_all

    # --- summary, table, plots, overlays -----------------------------------------------------------------
    first = cfg.baselines[0] if cfg.baselines else None
    rises = {b: reward_rise([m.get(f"{b}/reward") for m in curve]) for b in ("grounding", "sparse")}
    summary: dict[str, Any] = {
        "relative_performance": relative_performance(vitos["accuracy"], full["accuracy"]),
        "kept_token_ratio": vitos["kept"],
        "miou_warm_start": warm_vitos["miou"],
        "miou_rl": vitos["miou"],
        "accuracy_full": full["accuracy"],
        "accuracy_vitos": vitos["accuracy"],
        "accuracy_baseline": baselines[first]["accuracy"] if first else None,
        "baseline": first,
        "accuracy_vitos_warm_start": warm_vitos["accuracy"],
        "kept_token_ratio_warm_start": warm_vitos["kept"],
        "accuracy_full_rl": rl_full["accuracy"],
        "accuracy_majority": majority["accuracy"],
        "accuracy_grounding_pass": {"warm_start": warm_vitos["accuracy_grounding_pass"],
                                    "rl": vitos["accuracy_grounding_pass"]},
        "accuracy_baselines": {k: v["accuracy"] for k, v in baselines.items()},
        "accuracy_by_type": {"full": full["accuracy_by_type"], "vitos": vitos["accuracy_by_type"],
                             **{k: v["accuracy_by_type"] for k, v in baselines.items()}},
        "box_fallbacks": {"warm_start": warm_vitos["fallbacks"], "rl": vitos["fallbacks"]},
        "latency_ms": {"full": full["latency_ms"], "vitos": vitos["latency_ms"],
                       **{k: v["latency_ms"] for k, v in baselines.items()}},
        "reward_rise": {b: (None if r is None else {"first_third": r[0], "last_third": r[1], "rise": r[1] - r[0]})
                        for b, r in rises.items()},
        "sft_loss": {"first": losses[0], "last10": fmean(losses[-10:])},
        "vision_pretrain_loss": {"first": vision_losses[0], "last10": fmean(vision_losses[-10:])} if vision_losses else None,
        "rl_steps": len(curve),
        "curve_points": curve_points,
        "timings_s": timings,
        "config": asdict(cfg),
    }
    summary["targets"] = check_targets(summary)
    rows = [
        {"name": "full tokens (warm start)", **_row(full), "relative": 1.0 if full["accuracy"] > 0 else None},
        {"name": "ViToS, warm start", **_row(warm_vitos), "relative": relative_performance(warm_vitos["accuracy"], full["accuracy"])},
        {"name": "ViToS after RL", **_row(vitos), "relative": summary["relative_performance"]},
    ] + [
        {"name": f"{k} baseline (same budget)", **_row(v), "relative": relative_performance(v["accuracy"], full["accuracy"])}
        for k, v in baselines.items()
    ]
    table = format_table(rows)
    summary["table"] = table
    (out / "summary.md").write_text(table + "\n")
    with open(out / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=1)
    started("plots and overlays")
    plot_reward_curves(curve, out / "reward_curves.png")
    plot_accuracy_vs_kept(rows, curve_points, out / "accuracy_vs_kept.png", chance=majority["accuracy"],
                          chance_label="per-type majority answer")
    save_overlays(test_set, test_images, warm_vitos["records"], vitos["records"], out / "overlays", cfg.n_overlays)
    return summary


def _row(res: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy": res["accuracy"], "kept": res["kept"], "miou": res["miou"], "latency_ms": res["latency_ms"],
            "n": res["n"]}


def check_targets(s: dict[str, Any]) -> dict[str, bool | None]:
    """The issue's targets, evaluated on a summary: True/False, None where a figure is missing."""
    rise = s.get("reward_rise") or {}

    def rose(b: str) -> bool | None:
        r = rise.get(b)
        return None if r is None else r["rise"] > 0

    rel, kept = s.get("relative_performance"), s.get("kept_token_ratio")
    mw, mr = s.get("miou_warm_start"), s.get("miou_rl")
    return {
        "relative_performance_ge_1_at_le_77pct_tokens": None if rel is None or kept is None else bool(rel >= 1.0 and kept <= 0.77),
        "miou_rl_gt_warm_start": None if mw is None or mr is None else bool(mr > mw),
        "grounding_reward_rises": rose("grounding"),
        "sparse_reward_rises": rose("sparse"),
    }


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def build_config(quick: bool = False, config_path: str | None = None, overrides: list[str] | None = None,
                 seed: int | None = None, out_dir: str | None = None) -> DemoConfig:
    """Defaults <- QUICK_PRESET (with --quick) <- YAML file <- key=value overrides <- --seed / --out."""
    from vitos.config import load_config

    preset = [f"{k}={json.dumps(v)}" for k, v in QUICK_PRESET.items()] if quick else []
    cfg = load_config(DemoConfig, None, preset) if quick else DemoConfig()
    if config_path or overrides:
        # Re-apply the preset under the user's values: YAML and overrides win over --quick.
        import yaml

        values = {**(asdict(cfg)), **(yaml.safe_load(Path(config_path).read_text()) if config_path else {})}
        tmp = [f"{k}={json.dumps(v)}" for k, v in values.items()] + list(overrides or [])
        cfg = load_config(DemoConfig, None, tmp)
    if seed is not None:
        cfg.seed = seed
    if out_dir is not None:
        cfg.out_dir = out_dir
    return cfg


def main_demo(argv: list[str] | None = None) -> int:
    """`vitos demo [--quick] [--json OUT] [--out DIR] [--seed N] [--config YAML] [key=value ...]`."""
    p = argparse.ArgumentParser(prog="vitos demo", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI preset: <= 3 min on 2 CPU cores")
    p.add_argument("--json", dest="json_out", default=None, help="also write the summary JSON here")
    p.add_argument("--out", default=None, help="output folder (default runs/demo, or runs/demo-quick with --quick)")
    p.add_argument("--seed", type=int, default=None, help="seed of data, model, warm start and RL (default 0)")
    p.add_argument("--config", default=None, help="YAML file of DemoConfig values (e.g. my_demo.yaml)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars or progress lines (the stage results and the summary are still printed)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of DemoConfig fields, e.g. rl_steps=60")
    args = p.parse_args(argv)
    from vitos.config import ConfigError

    try:
        out = args.out or ("runs/demo-quick" if args.quick else None)
        cfg = build_config(args.quick, args.config, args.overrides, args.seed, out)
    except (ConfigError, FileNotFoundError) as err:
        print(f"vitos demo: error: {err}", file=sys.stderr)
        return 2
    summary = run_demo(cfg, quiet=args.quiet)
    print()
    print(summary["table"])
    print()
    def f(key: str, fmt: str) -> str:  # None (e.g. no relative performance at 0 % full-token accuracy) -> "-"
        return "-" if summary.get(key) is None else format(summary[key], fmt)

    print(f"relative performance {f('relative_performance', '.1%')} at {f('kept_token_ratio', '.1%')} kept visual "
          f"tokens; grounding mIoU {f('miou_warm_start', '.3f')} (warm start) -> {f('miou_rl', '.3f')} (RL)")
    for b, r in summary["reward_rise"].items():
        if r is not None:
            print(f"{b} reward: {r['first_third']:.3f} (first third of RL) -> {r['last_third']:.3f} (last third)")
    print("targets: " + ", ".join(f"{k}={v}" for k, v in summary["targets"].items()))
    print(f"outputs in {cfg.out_dir} ({summary['timings_s']['total_s']:.0f} s)")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json_out, "w") as fh:
            json.dump(summary, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main_demo(sys.argv[1:]))

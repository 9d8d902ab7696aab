"""`vitos demo`'s training stages: data, tiny model + warm start, RL (each one function, run in order by
vitos.demo.run.run_demo; the evaluation stages are vitos.demo.evaluation).

    say = Say(quiet=False)
    data = make_data(cfg, out, say)                       # 1. MedPhantom rows and the test images
    warm = make_warm_start(cfg, data, out, say)           # 2-3. tiny model -> vision pre-training -> SFT stages
    curve = run_rl(cfg, data, warm.folder, out, say)      # 4. dual-stream GRPO; per-step metrics
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

import torch

from vitos.demo.config import DemoConfig, resolve_warm_start


class Say:
    """The demo's output: `[demo]` result lines always; with `quiet`, no 'starting ...' lines or bars."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def log(self, msg: str) -> None:
        """A result line (printed even with `quiet`)."""
        print(f"[demo] {msg}", flush=True)

    def started(self, what: str) -> None:
        """A stage that takes seconds: say what it waits for."""
        if not self.quiet:
            self.log(f"{what} ...")

    def bar(self, total: int, desc: str) -> Any:
        """A progress bar (terminal) or `[progress]` lines (log) of a long loop (vitos.progress.StageProgress)."""
        from vitos.sft import StageProgress

        return StageProgress(total, desc, enabled=not self.quiet)


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


def pool_constant_box(rows: Path) -> list[float]:
    """The best constant box of an RL pool's GT boxes (vitos.study.evaluate.best_constant_box): the collapse
    guard's reference (DemoConfig.iou_guard)."""
    from vitos.data.readers import read_rows
    from vitos.study.evaluate import best_constant_box

    return best_constant_box([s.boxes for s in read_rows(rows).samples])


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
        rewards=RewardWeights(iou=cfg.iou_weight, iou_reference=pool_constant_box(train_path) if cfg.iou_guard else None),
        optim=OptimSection(lr=cfg.rl_lr),
        schedule=ScheduleSection(name=cfg.schedule, total_steps=cfg.rl_steps, stage1_steps=stage1),  # type: ignore[arg-type]
        checkpoint=CheckpointSection(out_dir=str(out)),
        logging=LoggingSection(log_grad_cosine=False, progress=False),
        seed=cfg.seed,
        device="cpu",
    )


# --------------------------------------------------------------------------------------------------
# The stages
# --------------------------------------------------------------------------------------------------


@dataclass
class DemoData:
    """The data stage's output: row files, training and test samples, the test images (loaded once)."""

    paths: dict[str, str]
    train: list[Any]
    test: list[Any]
    images: list[list[Any]]
    seconds: float = 0.0


def make_data(cfg: DemoConfig, out: Path, say: Say) -> DemoData:
    """1. MedPhantom: `cfg.n_train` training and `cfg.n_test` test questions written under out/data."""
    from vitos.data.medphantom import PhantomConfig, write_dataset
    from vitos.data.readers import read_rows
    from vitos.pipeline import load_sample_images

    t0 = time.perf_counter()
    say.started(f"data: writing {cfg.n_train} train / {cfg.n_test} test MedPhantom questions to {out / 'data'}")
    phantom = PhantomConfig(**{**cfg.phantom, "seed": cfg.seed, "n_train": cfg.n_train, "n_test": cfg.n_test,
                               "question_mix": dict(cfg.question_mix)})
    paths = write_dataset(phantom, out / "data")
    train_set, test_set = read_rows(paths["train"]).samples, read_rows(paths["test"]).samples
    data = DemoData({k: str(v) for k, v in paths.items()}, train_set, test_set, [load_sample_images(s) for s in test_set],
                    time.perf_counter() - t0)
    say.log(f"data: {len(train_set)} train / {len(test_set)} test MedPhantom questions in {out / 'data'}")
    return data


@dataclass
class WarmStart:
    """The warm-start stage's output: its folder, the loaded model and the loss curves (NaN when reused)."""

    folder: Path
    adapter: Any
    trained: bool
    losses: list[float] = field(default_factory=lambda: [float("nan")])
    vision_losses: list[float] = field(default_factory=lambda: [float("nan")])
    seconds: float = 0.0


def make_warm_start(cfg: DemoConfig, data: DemoData, out: Path, say: Say) -> WarmStart:
    """2-3. The warm-started model: `cfg.reuse_warm_start` loaded, or a random tiny Qwen2.5-VL written to
    out/tiny-model, its vision tower pre-trained and frozen, then the SFT stages (warm_start_stages); saved
    to out/warm_start with its vitos_settings.json."""
    from vitos.models import load_model
    from vitos.models.tiny import write_tiny_model
    from vitos.pipeline import PruneConfig
    from vitos.sft import VisionPretrainConfig, pretrain_vision, warm_start

    t0 = time.perf_counter()
    if cfg.reuse_warm_start:
        folder = resolve_warm_start(cfg.reuse_warm_start)
        say.started(f"warm start: loading {folder}")
        adapter = load_model(str(folder), dtype="float32", device="cpu")
        say.log(f"warm start: reusing {folder}")
        return WarmStart(folder, adapter, trained=False, seconds=time.perf_counter() - t0)
    say.started(f"model: writing a random {cfg.hidden}-wide tiny Qwen2.5-VL to {out / 'tiny-model'} and loading it")
    tiny = write_tiny_model(out / "tiny-model", seed=cfg.seed, hidden=cfg.hidden, layers=cfg.layers,
                            vision_depth=cfg.vision_depth, image_max_pixels=cfg.image_pixels)
    adapter = load_model(str(tiny), dtype="float32", device="cpu")
    vision_cfg = VisionPretrainConfig(steps=cfg.vision_steps, box_weight=cfg.vision_box_weight,
                                      mask_spot_cells=cfg.vision_mask_spot_cells, seed=cfg.seed)
    vision_losses = pretrain_vision(adapter, data.train, vision_cfg,
                                    progress=say.bar(cfg.vision_steps, "vision pre-training"))
    say.log(f"vision pre-training: loss {vision_losses[0]:.2f} -> {fmean(vision_losses[-10:]):.2f} "
            f"in {time.perf_counter() - t0:.0f} s")
    # Short targets first: the sparse branch (find spots among the kept tokens) and 'where' (the box under a
    # 5-word prompt). Measured: answers written from ALL tokens, mixed in from step 0, taught the LM to ignore
    # the spots (nothing learned in 400 steps), and boxes under the ~200-token grounding prompt alone stayed the
    # same for every image (mIoU 0.33); with 'where' beside them they follow the organ (mIoU 0.48 on the long
    # prompt after 350 mixed steps).
    prune = PruneConfig(margin=cfg.margin, min_keep=cfg.min_keep, fusion=cfg.fusion)  # type: ignore[arg-type]
    losses: list[float] = []
    stages = warm_start_stages(cfg)
    for k, (name, sft_cfg) in enumerate(stages):
        losses += warm_start(adapter, data.train, sft_cfg, prune,
                             progress=say.bar(sft_cfg.steps, f"warm start {k + 1}/{len(stages)} ({name})"))
        say.log(f"warm start ({name}): {sft_cfg.steps} steps, loss {losses[-sft_cfg.steps]:.3f} -> "
                f"{fmean(losses[-min(10, sft_cfg.steps):]):.3f}")
    folder = out / "warm_start"
    save_warm_start(adapter, folder, cfg)
    say.log(f"warm start: loss {losses[0]:.2f} -> {fmean(losses[-10:]):.2f}")
    return WarmStart(folder, adapter, True, losses, vision_losses, time.perf_counter() - t0)


def write_provenance(warm: WarmStart, cfg: DemoConfig, rows: dict[str, dict[str, Any]]) -> None:
    """provenance.json in a warm start this run trained: the command, the config, what it scored (`rows`:
    its evaluate_run rows) and the package versions, for anyone who reuses it. A reused one is left alone."""
    if not warm.trained:
        return
    full, vitos = rows["full"], rows["vitos"]
    _write_json(warm.folder / "provenance.json", {
        "made_by": "vitos demo " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["demo"] else sys.argv[1:]),
        "config": asdict(cfg),
        "test_split": {"n_test": cfg.n_test, "seed": cfg.seed, "accuracy_full": full["accuracy"],
                       "accuracy_vitos": vitos["accuracy"], "kept_token_ratio": vitos["kept"], "miou": vitos["miou"]},
        "versions": {"torch": torch.__version__, "transformers": _version("transformers")},
    })


def run_rl(cfg: DemoConfig, data: DemoData, warm_dir: Path, out: Path, say: Say) -> list[dict[str, Any]]:
    """4. The paper's dual-stream GRPO from the warm start (vitos.rl.trainer.train) into out/rl (a rerun
    replaces the previous RL run); returns its per-step metrics (out/rl/metrics.jsonl)."""
    from vitos.rl.checkpoint import read_metrics
    from vitos.rl.trainer import train

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    tcfg = _train_config(cfg, warm_dir, rl_pool(Path(data.paths["train"]), cfg.rl_questions), out / "rl")
    say.started(f"RL: loading {warm_dir} into the trainer ({cfg.rl_steps} steps of {cfg.rl_batch_size} questions, "
                f"{cfg.group_size} x {cfg.sparse_group_size} rollouts each)")
    with say.bar(cfg.rl_steps, "RL") as rl_bar:
        train(tcfg, overwrite=True, on_step_end=lambda step, m: rl_bar.update(
            reward_grounding=m.get("grounding/reward"), reward_sparse=m.get("sparse/reward"),
            iou=m.get("grounding/iou"), kept=m.get("kept_token_ratio")))
    curve = read_metrics(out / "rl" / "metrics.jsonl")
    say.log(f"RL: {len(curve)} steps in {time.perf_counter() - t0:.0f} s, model in {out / 'rl' / 'final'}")
    return curve

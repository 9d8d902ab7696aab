"""`vitos train`: the ViToS dual-stream GRPO loop, read top to bottom.

    per step:  batch of questions
               -> rollouts   (vitos.rl.rollout: encode once, G grounding, G x G' sparse)
               -> rewards    (vitos.rl.rewards via rollout.score: cross-feedback between the branches)
               -> advantages (vitos.rl.grpo.group_advantages, per branch)
               -> loss/step  (vitos.rl.grpo.grpo_loss, per branch, as the schedule says)
               -> log / save (vitos.rl.checkpoint)

Schedules (`schedule.name`): `stagewise` (authors: grounding objective for stage1_steps, then the sparse
objective; both branches are still sampled every step, since sparse rollouts need grounding boxes and
give the grounding reward its cross-feedback), `interleaved` (grounding update, then fresh sparse
rollouts from the updated policy and a sparse update), `joint` (one summed loss; the paper's ablation).
Each step can also log cos(grad L_grounding, grad L_sparse): a measured answer to "do they conflict?".

Departures from the authors' stack (EasyR1: Ray + vLLM + FSDP): rollouts use our own batched decoder
(vitos.engine), because vLLM cannot take a pruned, non-rectangular image grid; one policy update per
rollout batch (old log-probs = current ones, ratio 1 at the update), as EasyR1's default.

Run:  vitos train --config configs/tiny_cpu.yaml [schedule.name=joint ...]     (one process; breakpoint() works)
      accelerate launch --config_file configs/accelerate/ddp.yaml -m vitos.cli train --config configs/lingshu7b_8gpu.yaml
      vitos train --config configs/tiny_cpu.yaml --resume runs/tiny_cpu          (continue the latest checkpoint)
      vitos train --config configs/tiny_cpu.yaml --overwrite                     (delete the run there, start over)

The run folder is protected (vitos.rl.checkpoint.plan_run_folder): a folder holding a run is refused
unless --resume (continue it; a run whose last checkpoint is its last step only finishes its export) or
--overwrite (delete the run's files first, listing them); a run killed before its first checkpoint is
started over. No output may be or contain an input (vitos.paths): the data file, the model folder.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from vitos.config import ConfigError, describe, error_line, load_config, to_dict
from vitos.data.sample import Sample
from vitos.pipeline import encode
from vitos.paths import atomic_write_text, check_output_dir, check_writable_dir, replace_dir, same_or_inside
from vitos.rl.checkpoint import (
    FINAL, CheckpointError, MetricsWriter, apply_run_plan, final_complete, find_checkpoint, load_checkpoint,
    plan_run_folder, publish_final, read_metrics, register_trainable_only_hooks, rewind_metrics,
    save_checkpoint, verify_checkpoint,
)
from vitos.rl.config import TrainConfig, branches_for_step, lr_factor, precision_plan, stage_of, validate
from vitos.models.settings import write_settings
from vitos.rl.policy import PolicyView, build_policy, export_model, merged_weights
from vitos.rl.rollout import RewardOverride, StepRewards, StepRollouts, collect, sample_sparse, score
from vitos.rl.update import Updater

StepCallback = Callable[[int, dict[str, Any]], None]
UPDATE_KEYS = [f"{b}/{k}" for b in ("grounding", "sparse") for k in (
    "loss", "kl", "approx_kl", "clip_frac", "clip_frac_last_epoch", "dual_clip_frac", "ratio_mean", "ratio_max",
    "ratio_min", "is_weight_mean", "grad_norm", "logprob_diff_max", "logprob_diff_mean")]
"""Per-branch update statistics (null when the branch is not updated that step); `kl` is the k3 KL to the
reference (null when grpo.beta = 0); `logprob_diff_*` compare sampling-time and update-time log-probs of
the sampled tokens before the update's first optimiser step (the rollout-vs-trainer alarm); `is_weight_mean`
is the mean truncated-IS weight (1.0 with grpo.tis_cap = None)."""


def train(cfg: TrainConfig, resume: str | None = None, reward_override: RewardOverride | None = None,
          on_step_end: StepCallback | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train as `cfg` says; returns the metrics of the last step.

    resume: a run directory (its latest checkpoint) or a checkpoints/step-N folder.
    overwrite: delete the run files in checkpoint.out_dir first (a used folder is refused without it or resume).
    reward_override: diagnostic hook replacing every rollout's total reward (see vitos.rl.rollout).
    on_step_end: called as fn(step, metrics) after each step's logging and checkpointing.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from vitos.progress import StageProgress

    from vitos.models import load_model

    validate(cfg)
    load_dtype, compute = precision_plan(cfg)  # bf16 full fine-tuning: fp32 weights, bf16 autocast
    acc = Accelerator(cpu=cfg.device == "cpu", gradient_accumulation_steps=cfg.optim.micro_batches,
                      step_scheduler_with_optimizer=False, mixed_precision="fp16" if compute == "fp16" else None)
    set_seed(cfg.seed, device_specific=True)  # seed + process index: ranks sample differently
    run_dir = Path(cfg.checkpoint.out_dir)
    check_writable_dir(run_dir, "checkpoint.out_dir")
    check_run_paths(cfg)
    plan = plan_run_folder(run_dir, resume, overwrite)  # read-only on every rank; refuses a used folder
    resume = plan.resume
    if resume:
        verify_checkpoint(resume, acc.process_index)  # a damaged checkpoint fails now, not after the model loads
    config_yaml = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    acc.wait_for_everyone()
    if acc.is_main_process:
        if plan.message:
            print(f"vitos train: {plan.message}", file=sys.stderr)
        apply_run_plan(plan)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", config_yaml)  # marks the folder as used from the start
    acc.wait_for_everyone()
    samples, n_skipped = _load_data(cfg, acc)

    # --- policy, optimiser, schedule --------------------------------------------------------------
    base_model = _model_path(cfg, acc)  # every process: it may wait on the others (tiny model written once)
    adapter = load_model(base_model, load_dtype, device=str(acc.device), attn_implementation=cfg.model.attn,
                         max_pixels=cfg.model.max_pixels)
    m = cfg.model
    policy = build_policy(adapter, cfg.prune, m.lora, m.lora_r, m.lora_alpha, m.lora_dropout, m.freeze_vision,
                          m.gradient_checkpointing, need_reference=cfg.grpo.beta > 0,
                          autocast_dtype=torch.bfloat16 if compute == "bf16" else None)
    if cfg.optim.fp32_master_weights:  # the optimiser must update float32 weights (see precision_plan)
        for p in policy.parameters():
            if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
                p.data = p.data.float()
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: lr_factor(cfg, t))
    _configure_deepspeed(acc, cfg)
    policy, optimizer, scheduler = acc.prepare(policy, optimizer, scheduler)
    register_trainable_only_hooks(acc)
    view = PolicyView(policy, adapter, _generation_sync(acc))  # rollouts call the wrapped module, never bare submodules
    generator = torch.Generator(acc.device).manual_seed(cfg.seed + acc.process_index)
    vision_trainable = not m.freeze_vision

    state: dict[str, Any] = {"step": 0, "position": 0, "num_processes": acc.num_processes}
    if resume:
        state = load_checkpoint(acc, policy, resume, generator)
        if acc.is_main_process:
            rewind_metrics(run_dir / "metrics.jsonl", state["step"])
    writer = MetricsWriter(run_dir, cfg.logging.tensorboard, cfg.logging.wandb, cfg.logging.wandb_project,
                           to_dict(cfg), enabled=acc.is_main_process)
    stage1_ckpt = {cfg.schedule.stage1_steps} if cfg.schedule.name == "stagewise" else set()
    local_b = cfg.data.batch_size // acc.num_processes
    # a bar on a terminal, plain "[progress] train: step k/n ..." lines in logs (metrics.jsonl has everything)
    bar = StageProgress(cfg.schedule.total_steps - state["step"], f"train (from step {state['step']})" if state["step"]
                        else "train", enabled=acc.is_main_process and cfg.logging.progress)

    updater = Updater(acc, policy, optimizer, params, cfg, vision_trainable)
    engine = _rollout_engine(cfg, base_model, torch.bfloat16 if compute == "bf16" else load_dtype, acc)  # None: Python loop

    def sync_engine() -> None:  # vLLM decodes from its own copy of the weights: refresh it after every step
        if engine is not None:
            engine.load_weights(policy_weights(acc, policy, cfg))

    sync_engine()  # the engine starts from the policy's weights (a resumed checkpoint's, the LoRA merge, ...)

    # --- the loop ------------------------------------------------------------------------------------
    metrics: dict[str, Any] = {}
    for step in range(state["step"] + 1, cfg.schedule.total_steps + 1):
        t0 = time.perf_counter()
        batch, epoch = _local_batch(samples, state["position"], cfg.data.batch_size, cfg.data.shuffle_seed, acc, local_b)
        policy.eval()
        step_r = collect(view, batch, cfg.rollout, cfg.prune, generator, cfg.sparse_group_size, engine)
        t_gen = time.perf_counter() - t0
        t1 = time.perf_counter()
        rewards = score(step_r, cfg.rewards, cfg.grpo.sparse_grouping, reward_override)
        t_score = time.perf_counter() - t1
        t_update = t_extra_gen = 0.0

        policy.train()
        metrics = {"stage": stage_of(cfg, step), "lr": scheduler.get_last_lr()[0]}
        t2 = time.perf_counter()
        every = cfg.logging.grad_cosine_every
        if cfg.logging.log_grad_cosine and every and step % every == 0:
            metrics["grad_cosine"] = updater.grad_cosine(step_r, rewards)
        if (cfg.schedule.name == "stagewise" and cfg.optim.fresh_optimizer_at_stage2
                and step == cfg.schedule.stage1_steps + 1 and step > 1):
            _clear_optimizer_state(optimizer)
        if cfg.schedule.name == "joint":  # one summed loss, one optimiser step
            metrics.update(updater.update(step_r, rewards, ["grounding", "sparse"]))
            sync_engine()
        else:
            for b in branches_for_step(cfg, step):  # stagewise: one branch; interleaved: grounding then sparse
                if b == "sparse" and cfg.schedule.name == "interleaved":  # fresh sparse rollouts from the updated policy
                    t3 = time.perf_counter()
                    policy.eval()
                    if vision_trainable:
                        step_r.encoded = encode(view, step_r.images)
                    step_r.sparse = sample_sparse(step_r, view, cfg.rollout, cfg.prune, generator, engine)
                    rewards = score(step_r, cfg.rewards, cfg.grpo.sparse_grouping, reward_override)
                    policy.train()
                    t_extra_gen = time.perf_counter() - t3
                metrics.update(updater.update(step_r, rewards, [b]))
                sync_engine()
        scheduler.step()
        t_update = time.perf_counter() - t2 - t_extra_gen
        state["position"] += cfg.data.batch_size

        dt = time.perf_counter() - t0
        metrics.update(_rollout_metrics(step_r, rewards))
        for key in [*UPDATE_KEYS, "grad_cosine"]:  # null: branch not updated this step (stagewise) / not measured
            metrics.setdefault(key, None)
        n_rollouts = len(step_r.grounding) + len(step_r.sparse) * (2 if cfg.schedule.name == "interleaved" else 1)
        metrics.update({
            "data/epoch": epoch, "data/skipped_rows": n_skipped,
            "time/step_s": dt, "time/generation_s": t_gen + t_extra_gen, "time/scoring_s": t_score,
            "time/update_s": t_update, "rollouts_per_s": n_rollouts * acc.num_processes / dt,
        })
        metrics = _mean_over_processes(metrics, acc)
        state["step"] = step
        if step % cfg.logging.every == 0 or step == cfg.schedule.total_steps:
            writer.write(step, metrics)
        if ((cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or step == cfg.schedule.total_steps
                or step in stage1_ckpt):
            save_checkpoint(acc, run_dir, {**state, "epoch": epoch}, generator, config_yaml, cfg.checkpoint.keep_last,
                            stage1_ckpt)
        bar.update(1, reward_grounding=metrics["grounding/reward"], reward_sparse=metrics["sparse/reward"])
        if on_step_end is not None:
            on_step_end(step, metrics)
    bar.close()
    writer.close()

    # --- a loadable model: written to .tmp-final/, renamed to final/ when complete --------------------
    full_state = acc.get_state_dict(policy)  # gathers shards; every process must call it
    if acc.is_main_process and (metrics or not final_complete(run_dir / FINAL)):  # resumed: finish the export
        scale = m.lora_alpha / m.lora_r if m.lora else None

        def export(folder: Path) -> None:  # the model, then the settings it was trained with (infer/app defaults)
            export_model(acc.unwrap_model(policy), full_state, folder, scale)
            write_settings(folder, trained_settings(cfg, base_model))  # main process only: no barrier here

        publish_final(run_dir, export)
    acc.wait_for_everyone()
    if not metrics and (run_dir / "metrics.jsonl").exists():  # resumed a finished run: report its last step
        metrics = read_metrics(run_dir / "metrics.jsonl")[-1]
    return metrics


# --------------------------------------------------------------------------------------------------
# Helpers: data, built-in offline sources, metrics
# --------------------------------------------------------------------------------------------------


def check_run_paths(cfg: TrainConfig) -> None:
    """The run folder must not be, contain or lie inside the data or the model (its outputs and --overwrite
    could replace them); the built-in `tiny` model and `medphantom:N` data are generated inside it."""
    inputs = [("model folder (model.name_or_path)", None if cfg.model.name_or_path == "tiny" else cfg.model.name_or_path),
              ("data (data.train_path)", None if cfg.data.train_path.startswith("medphantom:") else cfg.data.train_path)]
    check_output_dir(cfg.checkpoint.out_dir, "checkpoint.out_dir", inputs)
    if cfg.data.image_root:  # a run folder inside a broad image folder is fine; one containing it is not
        check_output_dir(cfg.checkpoint.out_dir, "checkpoint.out_dir", [("image folder (data.image_root)", cfg.data.image_root)],
                         inside_ok=True)


def _generate_once(path: Path, write: Callable[[Path], Any], complete: Callable[[Path], bool]) -> None:
    """Write a generated input (tiny model, MedPhantom data) into `.tmp-<name>` and rename it: a kill never
    leaves a half-written folder that a rerun would take for a complete one."""
    if complete(path):
        return
    tmp = path.parent / f".tmp-{path.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    write(tmp)
    replace_dir(tmp, path)


def _rollout_engine(cfg: TrainConfig, base_model: str, dtype: Any, acc: Any) -> Any:
    """rollout.engine=vllm: a colocated VllmEngine on this process's device (None for the Python loop)."""
    if cfg.rollout.engine != "vllm":
        return None
    from vitos.vllm_engine.engine import VllmEngine

    try:
        return VllmEngine(base_model, dtype=dtype, seed=cfg.seed + acc.process_index,
                          gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization,
                          max_model_len=cfg.rollout.vllm_max_model_len)
    except ImportError as err:
        raise ConfigError(f"rollout.engine=vllm: {err}") from err


def policy_weights(acc: Any, policy: Any, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The policy's current weights under the base model's parameter names (LoRA merged in), for the rollout
    engine; gathered from shards (FSDP / ZeRO-3) by accelerate (every process must call it)."""
    return merged_weights(acc.get_state_dict(policy), cfg.model.lora_alpha / cfg.model.lora_r if cfg.model.lora else None)


def _model_path(cfg: TrainConfig, acc: Any) -> str:
    """`tiny` -> write (once) and return a tiny random checkpoint inside the run directory."""
    if cfg.model.name_or_path != "tiny":
        return cfg.model.name_or_path
    path = Path(cfg.checkpoint.out_dir) / "tiny-model"
    if acc.is_main_process:
        from vitos.models.tiny import write_tiny_model

        _generate_once(path, lambda tmp: write_tiny_model(tmp, seed=0), final_complete)
    acc.wait_for_everyone()
    return str(path)


def _load_data(cfg: TrainConfig, acc: Any) -> tuple[list[Sample], int]:
    """Read the training rows (`medphantom:N` generates N MedPhantom rows first); returns samples, #skipped."""
    from vitos.data.readers import read_rows

    path = cfg.data.train_path
    if path.startswith("medphantom:"):
        from vitos.data.medphantom import PhantomConfig, write_dataset

        n_text = path.split(":", 1)[1]
        if not n_text.isdigit() or int(n_text) < 1:
            raise ConfigError(f"data.train_path {path!r}: medphantom:N needs a whole number N >= 1 of rows")
        n = int(n_text)
        folder = Path(cfg.checkpoint.out_dir) / "data" / f"medphantom-{n}"
        if acc.is_main_process:
            _generate_once(folder, lambda tmp: write_dataset(PhantomConfig(seed=0, n_train=n, n_test=0), tmp),
                           lambda f: (f / "train.jsonl").is_file())
        acc.wait_for_everyone()
        path = str(folder / "train.jsonl")
    result = read_rows(path, image_root=cfg.data.image_root, skip_bad_rows=cfg.data.skip_bad_rows, limit=cfg.data.limit)
    if not result.samples:
        raise ConfigError(f"data.train_path {cfg.data.train_path!r} yielded no usable rows ({len(result.skipped)} skipped)")
    if cfg.data.batch_size % acc.num_processes:
        raise ConfigError(f"data.batch_size {cfg.data.batch_size} must be divisible by the {acc.num_processes} processes")
    return result.samples, len(result.skipped)


def batch_indices(n: int, batch_size: int, position: int, seed: int) -> tuple[list[int], int]:
    """Rows of the batch that starts `position` questions into the run: a seeded permutation per epoch
    (epoch e: generator seeded with seed * 1_000_003 + e), crossing into the next epoch when needed.
    Returns (indices, epoch of the first row)."""
    out: list[int] = []
    first_epoch = position // n
    while len(out) < batch_size:
        epoch, offset = divmod(position, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
        take = perm[offset : offset + batch_size - len(out)]
        out += take
        position += len(take)
    return out, first_epoch


def _local_batch(samples: list[Sample], position: int, batch_size: int, seed: int, acc: Any, local_b: int):
    idx, epoch = batch_indices(len(samples), batch_size, position, seed)
    mine = idx[acc.process_index * local_b : (acc.process_index + 1) * local_b]
    return [samples[i] for i in mine], epoch


def trained_settings(cfg: TrainConfig, base: str) -> Any:
    """What `vitos infer` / `vitos app` should default to for the exported model: the run's pruning, its
    completion length, greedy decoding; `synthetic` carried over from the base model (tiny-model, demo)."""
    from vitos.models.settings import ModelSettings, read_settings

    try:
        saved = read_settings(base)
    except ValueError:
        saved = None
    return ModelSettings(fusion=cfg.prune.fusion, margin=cfg.prune.margin, min_keep=cfg.prune.min_keep,
                         num_contextual=cfg.prune.num_contextual, max_new_tokens=cfg.rollout.max_new_tokens,
                         temperature=0.0, synthetic=bool(saved and saved.synthetic), made_by="vitos train")


def _sharded(acc: Any) -> bool:
    """Weights sharded across ranks (FSDP, DeepSpeed ZeRO-3): every rank must make the same forward calls."""
    plugin = acc.state.deepspeed_plugin
    return acc.distributed_type.name == "FSDP" or bool(plugin and plugin.zero_stage == 3)


def _generation_sync(acc: Any) -> Callable[[bool], bool] | None:
    """`fn(local_done) -> every rank done` for the decode loop under sharded weights (one all-reduce per
    token, as transformers' `synced_gpus`); None when each rank may stop on its own (1 process, DDP, ZeRO-2)."""
    if acc.num_processes == 1 or not _sharded(acc):
        return None

    def all_done(local_done: bool) -> bool:
        running = torch.tensor([0.0 if local_done else 1.0], device=acc.device)
        return float(acc.reduce(running, reduction="sum")) == 0.0

    return all_done


def _configure_deepspeed(acc: Any, cfg: TrainConfig) -> None:
    """DeepSpeed owns gradient accumulation: its count must be our micro-batch count; and with no
    dataloader to infer it from, its per-GPU micro-batch size must be set (one prompt group per pass)."""
    plugin = acc.state.deepspeed_plugin
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    if acc.gradient_accumulation_steps != cfg.optim.micro_batches:
        raise ConfigError(
            f"the DeepSpeed config accumulates {acc.gradient_accumulation_steps} micro-batches but "
            f"optim.micro_batches is {cfg.optim.micro_batches}; set both to the same value"
        )
    if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds["train_micro_batch_size_per_gpu"] = 1


def _clear_optimizer_state(optimizer: Any) -> None:
    """Drop AdamW moments (stage 2 starts like the authors' separate run); DeepSpeed keeps its own."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if isinstance(inner, torch.optim.Optimizer):
        inner.state.clear()


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _rollout_metrics(step_r: StepRollouts, rewards: StepRewards) -> dict[str, Any]:
    """Rewards per component and branch, IoU, accuracy, kept-token ratio, response lengths."""
    out: dict[str, Any] = {}
    for b, parts, rolls in (("grounding", rewards.grounding_parts, step_r.grounding),
                            ("sparse", rewards.sparse_parts, step_r.sparse)):
        out[f"{b}/reward"] = _mean([p["total"] for p in parts])
        out[f"{b}/reward_format"] = _mean([p["format"] for p in parts])
        out[f"{b}/reward_cross"] = _mean([p["cross"] for p in parts])
        out[f"{b}/accuracy"] = _mean([p["accuracy"] for p in parts])
        lengths = [int(o.token_ids.numel()) for o in rolls]
        out[f"{b}/response_length"] = _mean(lengths)
        out[f"{b}/response_length_max"] = max(lengths)
        out[f"{b}/stopped_frac"] = _mean([float(o.stopped) for o in rolls])
    out["grounding/iou"] = _mean([p["iou"] for p in rewards.grounding_parts if p["iou"] is not None])
    out["grounding/reward_budget"] = _mean([p["budget"] for p in rewards.grounding_parts if p.get("budget") is not None])
    out["kept_token_ratio"] = _mean([o.n_visual_kept / max(1, o.n_visual_total) for o in step_r.sparse])
    out["box_fallback_frac"] = _mean([float(o.fallback is not None) for o in step_r.grounding])
    return out


def _mean_over_processes(metrics: dict[str, Any], acc: Any) -> dict[str, Any]:
    """Average numeric metrics over processes (nulls ignored); a no-op in one process."""
    if acc.num_processes == 1:
        return metrics
    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) or v is None)
    local = torch.tensor([math.nan if metrics[k] is None else float(metrics[k]) for k in keys], device=acc.device)
    every = acc.gather(local[None])  # (P, K)
    mean = every.nanmean(dim=0)
    present = ~every.isnan()
    hi = every.masked_fill(~present, -math.inf).amax(dim=0)  # extrema are reduced as extrema, not averaged
    lo = every.masked_fill(~present, math.inf).amin(dim=0)
    out = {}
    for k, m, h, low in zip(keys, mean.tolist(), hi.tolist(), lo.tolist()):
        v = h if k.endswith("_max") else low if k.endswith("_min") else m
        out[k] = None if math.isnan(m) else v
    return {**metrics, **out}


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `vitos train` argument parser (every option has a help line with its default)."""
    p = argparse.ArgumentParser(prog="vitos train", description="ViToS dual-stream GRPO training.")
    p.add_argument("--config", help="YAML file of TrainConfig values, e.g. configs/tiny_cpu.yaml "
                                    "(default: none, the built-in defaults; or the checkpoint's own with --resume)")
    p.add_argument("--resume", help="run directory (latest checkpoint) or checkpoints/step-N folder (default: none, "
                                    "a new run)")
    p.add_argument("--overwrite", action="store_true",
                   help="checkpoint.out_dir holds a run: delete its files (listed first) and start over "
                        "(default: a used folder is refused)")
    p.add_argument("--help-config", action="store_true",
                   help="print every config key with its built-in default (TrainConfig's, not a --config file's "
                        "values), its valid range and meaning, then exit")
    p.add_argument("overrides", nargs="*",
                   help="key=value overrides, e.g. schedule.name=joint rollout.group_size=4 (default: none)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar or [progress] lines (same as logging.progress=false; default: shown)")
    p.add_argument("--dry-run", action="store_true",
                   help="build the model on the meta device (config.json only), print the per-GPU memory and disk "
                        "estimate and exit (0 = fits, 1 = does not fit) without training (default: train)")
    p.add_argument("--gpu-memory-gb", type=float, default=80.0, help="--dry-run: memory of one GPU in GiB (default: 80)")
    p.add_argument("--num-processes", type=int, default=None,
                   help="--dry-run: processes (GPUs); overrides the accelerate config's num_processes "
                        "(default: the accelerate config's, else 1)")
    p.add_argument("--accelerate-config", metavar="FILE", default=None,
                   help="--dry-run: accelerate config yaml to read distributed type, mixed precision and process count "
                        "from (default: none)")
    return p


def main_train(argv: list[str]) -> int:
    """`vitos train --config FILE [--resume RUN_OR_CKPT | --overwrite] [key=value ...]` / `vitos train --help-config`;
    `--dry-run [--accelerate-config FILE] [--num-processes N] [--gpu-memory-gb 80]`: memory estimate only.
    Every error a user can fix (bad value, used or unwritable folder, damaged checkpoint or weights) is one
    line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    if args.help_config:
        print("# TrainConfig's built-in defaults (not the values of a --config file or of key=value overrides)")
        for key, default, doc in describe(TrainConfig):
            print(f"{key} = {default}\n    {doc}")
        return 0
    from vitos.models import ModelLoadError

    try:
        if args.resume and args.overwrite:
            raise ConfigError("--resume continues a run and --overwrite deletes it: give only one")
        config_path, run_of_resume = args.config, None
        if config_path is None and args.resume:  # resume alone: the checkpoint's own config
            config_path, run_of_resume = _config_of_resume(args.resume)
        cfg = load_config(TrainConfig, config_path, args.overrides)
        if args.quiet:
            cfg.logging.progress = False
        if run_of_resume is not None and not any(o.startswith("checkpoint.out_dir=") for o in args.overrides):
            cfg.checkpoint.out_dir = str(run_of_resume)  # the folder the run is in now, even if it was moved
        if args.dry_run:  # returns before anything of training starts (no Accelerator, no weights, no run dir)
            from vitos.rl.estimate import dry_run, read_launch

            validate(cfg)
            if not (math.isfinite(args.gpu_memory_gb) and args.gpu_memory_gb > 0):
                raise ConfigError(f"--gpu-memory-gb {args.gpu_memory_gb} must be a finite number > 0")
            if args.num_processes is not None and args.num_processes < 1:
                raise ConfigError(f"--num-processes {args.num_processes} must be >= 1")
            report, fits = dry_run(cfg, read_launch(args.accelerate_config, args.num_processes), args.gpu_memory_gb)
            print(report)
            return 0 if fits else 1
        if args.overwrite and config_path is not None and same_or_inside(config_path, cfg.checkpoint.out_dir):
            raise ConfigError(f"--config {config_path} lies inside checkpoint.out_dir {cfg.checkpoint.out_dir}, which "
                              "--overwrite would delete; copy the config elsewhere first")
        final = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, CheckpointError, ModelLoadError, ValueError, OSError) as err:
        print(f"vitos train: error: {error_line(err)}", file=sys.stderr)
        return 2
    shown = {k: final.get(k) for k in ("grounding/reward", "sparse/reward", "grounding/accuracy", "sparse/accuracy",
                                        "kept_token_ratio", "grad_cosine")}
    print(f"done: {cfg.schedule.total_steps} steps, run directory {cfg.checkpoint.out_dir}; last step: {shown}")
    return 0


def _config_of_resume(resume: str) -> tuple[str, Path]:
    """(config file, run folder) for `--resume` without `--config`: the checkpoint's config.yaml, or, for a
    run killed before its first checkpoint, the run folder's own config.yaml."""
    try:
        ckpt = find_checkpoint(resume)
        return str(ckpt / "config.yaml"), ckpt.parent.parent
    except CheckpointError:
        run = Path(resume)
        if (run / "config.yaml").is_file():
            return str(run / "config.yaml"), run
        raise


if __name__ == "__main__":
    sys.exit(main_train(sys.argv[1:]))

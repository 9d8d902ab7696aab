"""Checkpoints and the run directory: atomic saves, exact resume, metrics.jsonl (+ TensorBoard / W&B).

A run directory holds::

    config.yaml                  the resolved TrainConfig of the run
    metrics.jsonl                one JSON object per logged step
    checkpoints/step-000010/     one complete checkpoint per saved step
    final/                       a model folder `vitos.models.load_model` loads (LoRA merged; adapter/ too)

A checkpoint is written by `accelerator.save_state` (model, optimizer, scheduler, python/numpy/torch/CUDA
RNG of every process; sharded under FSDP/DeepSpeed) plus our files: `sampler_rng_{rank}.pt` (the
rollout sampler's generator), `config.yaml` and `trainer_state.json` (step, data position, ...).
Only trainable parameters are stored (LoRA: the adapters, a few MB for a 7B model).

Atomicity: everything goes to `checkpoints/.tmp-step-N/`, `trainer_state.json` is written last, and the
folder is renamed to `step-N` only when complete (`os.replace`, atomic on POSIX). A save killed midway
leaves only a `.tmp-*` folder, which `find_checkpoint` never returns and `load_checkpoint` refuses.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match the run; the message says which and why."""


# --------------------------------------------------------------------------------------------------
# Trainable-only model state
# --------------------------------------------------------------------------------------------------


def register_trainable_only_hooks(accelerator: Any) -> None:
    """Make `accelerator.save_state` store only parameters that require grad (frozen ones come from the
    base checkpoint the run starts from). A no-op under FSDP/DeepSpeed, which save their own sharded states."""

    def keep_trainable(models: list[torch.nn.Module], weights: list[dict[str, torch.Tensor]], output_dir: str) -> None:
        for k, (model, state) in enumerate(zip(models, weights)):
            names = {n for n, p in model.named_parameters() if p.requires_grad}
            weights[k] = {n: v for n, v in state.items() if n in names}

    accelerator.register_save_state_pre_hook(keep_trainable)


def _check_trainable_file(model: torch.nn.Module, path: Path) -> None:
    """Every trainable parameter must be in the saved model file (load_state runs with strict=False)."""
    file = path / "model.safetensors"
    if not file.exists():
        return  # FSDP / DeepSpeed layouts: their loaders check themselves
    from safetensors import safe_open

    with safe_open(str(file), "pt") as fh:
        saved = set(fh.keys())
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(names - saved)
    if missing:
        raise CheckpointError(
            f"{path} lacks {len(missing)} trainable parameters (e.g. {missing[0]}); it was written by a run "
            "with another model.lora / model.freeze_vision setting or another model"
        )


# --------------------------------------------------------------------------------------------------
# Save / find / load
# --------------------------------------------------------------------------------------------------


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(accelerator: Any, run_dir: str | Path, state: dict[str, Any], generator: torch.Generator,
                    config_yaml: str, keep_last: int, protect: set[int] | None = None) -> Path:
    """Write checkpoint `step-{state['step']}` atomically (all processes call this), then prune old ones."""
    final = checkpoint_dir(run_dir, int(state["step"]))
    tmp = final.parent / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    torch.save(generator.get_state(), tmp / f"sampler_rng_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "config.yaml").write_text(config_yaml)
        with open(tmp / STATE_FILE, "w") as fh:  # written last: its presence marks a complete folder
            json.dump(state, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        if final.exists():  # re-saving a step after a resume: the new copy replaces the old one
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        _prune(final.parent, keep_last, protect or set())
    accelerator.wait_for_everyone()
    return final


def _prune(ckpt_root: Path, keep_last: int, protect: set[int]) -> None:
    steps = sorted(int(m.group(1)) for p in ckpt_root.iterdir() if (m := _STEP_DIR.match(p.name)))
    for step in steps[:-keep_last] if keep_last > 0 else []:
        if step not in protect:
            shutil.rmtree(ckpt_root / f"step-{step:06d}", ignore_errors=True)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or the latest complete checkpoint of a run directory."""
    p = Path(path)
    if (p / STATE_FILE).is_file() and _STEP_DIR.match(p.name):
        return p
    if p.name.startswith(".tmp-"):
        raise CheckpointError(f"{p} is an incomplete checkpoint (a save was interrupted); resume from an earlier one")
    root = p / "checkpoints"
    steps = sorted(
        (int(m.group(1)), c) for c in (root.iterdir() if root.is_dir() else [])
        if (m := _STEP_DIR.match(c.name)) and (c / STATE_FILE).is_file()
    )
    if not steps:
        raise CheckpointError(f"no complete checkpoint under {p}: pass a run directory or a checkpoints/step-N folder")
    return steps[-1][1]


def load_checkpoint(accelerator: Any, model: torch.nn.Module, path: str | Path, generator: torch.Generator) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and every RNG from `path` (`model`: the prepared policy);
    returns the trainer state."""
    p = find_checkpoint(path)
    state = json.loads((p / STATE_FILE).read_text())
    if state.get("num_processes", 1) != accelerator.num_processes:
        raise CheckpointError(
            f"{p} was written by {state.get('num_processes')} processes, this run has {accelerator.num_processes}; "
            "exact resume needs the same number (each process restores its own RNG and data shard)"
        )
    _check_trainable_file(accelerator.unwrap_model(model), p)  # saved names are the unwrapped module's
    accelerator.load_state(str(p), strict=False)
    generator.set_state(torch.load(p / f"sampler_rng_{accelerator.process_index}.pt", weights_only=True))
    return state


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> null, tensors -> numbers."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def rewind_metrics(path: str | Path, step: int) -> None:
    """Drop records after `step` (a resumed run rewrites them); keeps the file otherwise untouched."""
    p = Path(path)
    if not p.exists():
        return
    kept = [line for line in p.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = p.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, p)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class MetricsWriter:
    """metrics.jsonl always; TensorBoard and W&B when enabled (imported lazily). Main process only."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = False, wandb: bool = False, wandb_project: str = "vitos",
                 config: dict[str, Any] | None = None, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = self.wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError("logging.tensorboard=true needs the tensorboard package: pip install tensorboard") from err
            self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
        if wandb:
            try:
                import wandb as wb
            except ImportError as err:
                raise ImportError("logging.wandb=true needs the wandb package: pip install wandb") from err
            self.wandb = wb.init(project=wandb_project, config=config, dir=str(run_dir), resume="allow")

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        numeric = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        if self.tb is not None:
            for k, v in numeric.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(numeric, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()

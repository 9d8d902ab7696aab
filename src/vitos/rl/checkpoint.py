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
`final/` is published the same way (`publish_final`: `.tmp-final/`, then renamed), old checkpoints are
renamed away before they are deleted, and a metrics line cut by a kill is dropped on resume.

The run folder (`inspect_run`, `plan_run_folder`) is one of: empty; partial (a run killed before its first
checkpoint: config.yaml / metrics.jsonl only; a rerun starts it over); checkpointed (complete checkpoints,
no complete final/: --resume continues it and finishes the export); finished (a complete final/). A used
folder is refused unless --resume or --overwrite says what to do with it.

`load_checkpoint` checks every file it needs before restoring (trainer_state.json, the model file, the
optimizer / scheduler / RNG files of this process) and names the damaged or missing one.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitos.paths import replace_dir

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
    saved = _check_safetensors(file)
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
        replace_dir(tmp, final)  # re-saving a step after a resume: the new copy replaces the old one
        _prune(final.parent, keep_last, protect or set())
    accelerator.wait_for_everyone()
    return final


def _prune(ckpt_root: Path, keep_last: int, protect: set[int]) -> None:
    """Delete all but the last `keep_last` checkpoints (and `protect`); each is renamed to `.del-*` first,
    so a kill during the deletion never leaves a half-deleted `step-N` that looks like a checkpoint."""
    for stale in ckpt_root.glob(".del-*"):
        shutil.rmtree(stale, ignore_errors=True)
    steps = sorted(int(m.group(1)) for p in ckpt_root.iterdir() if (m := _STEP_DIR.match(p.name)))
    for step in steps[:-keep_last] if keep_last > 0 else []:
        if step not in protect:
            doomed = ckpt_root / f".del-step-{step:06d}"
            os.replace(ckpt_root / f"step-{step:06d}", doomed)
            shutil.rmtree(doomed, ignore_errors=True)


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
        damaged = sorted(c for c in (root.iterdir() if root.is_dir() else []) if _STEP_DIR.match(c.name))
        if damaged:
            raise CheckpointError(f"{damaged[-1] / STATE_FILE} is missing: checkpoint {damaged[-1].name} is damaged and "
                                  "the run has no complete one; restore the file or start over with --overwrite")
        if not p.exists():
            raise CheckpointError(f"nothing to resume in {p}: it does not exist; check the path, or drop --resume to "
                                  "start a new run")
        raise CheckpointError(f"no complete checkpoint under {p}: pass a run directory or a checkpoints/step-N folder")
    return steps[-1][1]


def _fix_hint(p: Path) -> str:
    """What to do about a damaged checkpoint `p`: the other complete checkpoints of its run, if any."""
    others = sorted(c.name for c in p.parent.iterdir() if _STEP_DIR.match(c.name) and c != p
                    and (c / STATE_FILE).is_file()) if p.parent.is_dir() else []
    if others:
        return f"resume from an earlier checkpoint instead (--resume {p.parent / others[-1]}) or delete {p}"
    return "this run has no other checkpoint: start it over with --overwrite"


def _read_state(p: Path) -> dict[str, Any]:
    file = p / STATE_FILE
    try:
        state = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{file} is damaged (not readable JSON: {err}); {_fix_hint(p)}") from err
    ok = isinstance(state, dict) and all(
        isinstance(state.get(k), int) and not isinstance(state.get(k), bool) and state[k] >= 0
        for k in ("step", "position"))
    if not ok:
        raise CheckpointError(f"{file} is damaged (it needs non-negative integers 'step' and 'position', got "
                              f"{str(state)[:80]}); {_fix_hint(p)}")
    return state


def _check_safetensors(file: Path) -> set[str]:
    """Tensor names of a safetensors file; CheckpointError when it is truncated or not safetensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), "pt") as fh:
            return set(fh.keys())
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for every kind of damage
        raise CheckpointError(f"{file} is damaged (truncated or not a safetensors file: {err}); "
                              f"{_fix_hint(file.parent)}") from err


def _check_pickle(file: Path, keys: tuple[str, ...] = ()) -> None:
    from accelerate.utils import load

    try:
        obj = load(file, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - torch.load raises many types for garbage
        raise CheckpointError(f"{file} is damaged ({type(err).__name__}: {str(err)[:120]}); "
                              f"{_fix_hint(file.parent)}") from err
    if keys and not (isinstance(obj, dict) and all(k in obj for k in keys)):
        raise CheckpointError(f"{file} is damaged (it lacks {', '.join(keys)}); {_fix_hint(file.parent)}")


def check_checkpoint_files(p: Path, process_index: int) -> None:
    """Every file this process restores from checkpoint `p` is present and readable (accelerate would skip a
    missing or damaged RNG file silently, which breaks exact resume); raises CheckpointError naming it."""
    needed = [f"random_states_{process_index}.pkl", f"sampler_rng_{process_index}.pt"]
    single = (p / "model.safetensors").exists()  # the one-process / DDP layout (FSDP / DeepSpeed shard their own)
    if single:
        needed += ["optimizer.bin", "scheduler.bin"]
    for name in needed:
        if not (p / name).is_file():
            raise CheckpointError(f"{p / name} is missing: exact resume needs it; {_fix_hint(p)}")
    _check_pickle(p / f"random_states_{process_index}.pkl", ("random_state", "numpy_random_seed", "torch_manual_seed"))
    if single:
        _check_safetensors(p / "model.safetensors")


def verify_checkpoint(path: str | Path, process_index: int = 0) -> Path:
    """The checkpoint `path` resolves to, after checking its trainer_state.json and the files this process
    needs (cheap: headers and small files only); raises CheckpointError naming what is wrong."""
    p = find_checkpoint(path)
    _read_state(p)
    check_checkpoint_files(p, process_index)
    return p


def load_checkpoint(accelerator: Any, model: torch.nn.Module, path: str | Path, generator: torch.Generator) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and every RNG from `path` (`model`: the prepared policy);
    returns the trainer state. A missing or damaged file is a CheckpointError that names it."""
    p = find_checkpoint(path)
    state = _read_state(p)
    if state.get("num_processes", 1) != accelerator.num_processes:
        raise CheckpointError(
            f"{p} was written by {state.get('num_processes')} processes, this run has {accelerator.num_processes}; "
            "exact resume needs the same number (each process restores its own RNG and data shard)"
        )
    check_checkpoint_files(p, accelerator.process_index)
    _check_trainable_file(accelerator.unwrap_model(model), p)  # saved names are the unwrapped module's
    try:
        accelerator.load_state(str(p), strict=False)
    except Exception as err:  # noqa: BLE001 - find the file that broke it, then say so
        for name in ("optimizer.bin", "scheduler.bin"):
            if (p / name).is_file():
                _check_pickle(p / name)
        raise CheckpointError(f"cannot restore {p} ({type(err).__name__}: {str(err)[:160]}); {_fix_hint(p)}") from err
    rng = p / f"sampler_rng_{accelerator.process_index}.pt"
    try:
        generator.set_state(torch.load(rng, weights_only=True))
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{rng} is damaged ({type(err).__name__}: {str(err)[:120]}); {_fix_hint(p)}") from err
    return state


# --------------------------------------------------------------------------------------------------
# The final export and the run folder
# --------------------------------------------------------------------------------------------------

FINAL = "final"
_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints", FINAL, "tb", ".tmp-final", ".old-final")
"""Entries whose presence means a run used the folder."""
_GENERATED = ("wandb", "tiny-model", "data", "metrics.tmp")
"""Entries a run writes besides the markers (built-in model and data; --overwrite removes them too)."""


def final_complete(folder: str | Path) -> bool:
    """True when `folder` is a complete export: config.json, tokenizer config, and every weight file whole."""
    f = Path(folder)
    try:
        json.loads((f / "config.json").read_text())
    except (OSError, ValueError):
        return False
    if not (f / "tokenizer_config.json").is_file():
        return False
    index = f / "model.safetensors.index.json"
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
        for shard in shards:
            _check_safetensors(f / shard)
    except (CheckpointError, OSError, ValueError, KeyError, TypeError):
        return False
    return True


def publish_final(run_dir: str | Path, write: Callable[[Path], Any]) -> Path:
    """Write the export with `write(folder)` into `.tmp-final/`, then rename it to `final/` (replacing an
    older export): a kill at any moment leaves the old complete final/, none, or the new one."""
    run = Path(run_dir)
    tmp, final = run / ".tmp-final", run / FINAL
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    replace_dir(tmp, final)
    return final


@dataclass
class RunFolder:
    """What a run folder holds (see the module docstring)."""

    path: Path
    kind: str
    """empty | partial | checkpointed | finished"""
    entries: list[str] = field(default_factory=list)
    """The run's entries present (markers and generated ones), in a fixed order."""
    latest: Path | None = None
    """The latest complete checkpoint."""

    def describe(self) -> str:
        if self.kind == "finished":
            ckpt = f", checkpoints up to {self.latest.name}" if self.latest else ""
            return f"a finished run (final/{ckpt})"
        if self.kind == "checkpointed":
            if self.latest is None:
                return "a run whose checkpoints are damaged (no step-N folder holds trainer_state.json)"
            return f"an unfinished run (latest checkpoint {self.latest.name}, no complete final/)"
        if self.kind == "partial":
            present = [e for e in self.entries if e in _MARKERS]
            return f"a run killed before its first checkpoint ({', '.join(present)})"
        return "nothing of a run"


def inspect_run(run_dir: str | Path) -> RunFolder:
    """Classify a run folder without changing it."""
    run = Path(run_dir)
    if not run.is_dir():
        return RunFolder(run, "empty")
    entries = [e for e in (*_MARKERS, *_GENERATED) if (run / e).exists()]
    if "data" in entries and (not (run / "data").is_dir() or any(
            not c.name.lstrip(".").removeprefix("tmp-").startswith("medphantom-") for c in (run / "data").iterdir())):
        entries.remove("data")  # not (only) the built-in MedPhantom data: someone else's folder, never touched
    try:
        latest: Path | None = find_checkpoint(run)
    except CheckpointError:
        latest = None
    damaged = (run / "checkpoints").is_dir() and any(_STEP_DIR.match(c.name) for c in (run / "checkpoints").iterdir())
    if final_complete(run / FINAL):
        kind = "finished"
    elif latest is not None or damaged:  # a step-N folder without trainer_state.json is damage, never a restart
        kind = "checkpointed"
    elif any(e in _MARKERS for e in entries):
        kind = "partial"
    else:
        kind = "empty"
    return RunFolder(run, kind, entries, latest)


@dataclass
class RunPlan:
    """What `train` does with its run folder before it starts."""

    resume: str | None
    """The checkpoint (or run folder) to resume from; None = start at step 0."""
    remove: list[Path] = field(default_factory=list)
    """Entries to delete first (main process)."""
    message: str | None = None
    """What is being done, for the user (printed by the main process)."""


def _listing(run: Path, names: list[str]) -> str:
    return ", ".join(n + ("/" if (run / n).is_dir() else "") for n in names)


def plan_run_folder(run_dir: str | Path, resume: str | None = None, overwrite: bool = False) -> RunPlan:
    """Decide, read-only, how a run may use `run_dir`: raises CheckpointError for a used folder without
    --resume / --overwrite, for --resume with nothing to resume, and for --resume together with --overwrite
    on the same run. A partial folder (killed before its first checkpoint) is restarted cleanly."""
    info = inspect_run(run_dir)
    run = info.path
    own = resume is not None and (Path(resume).resolve() == run.resolve() or run.resolve() in Path(resume).resolve().parents)
    if overwrite and own:
        raise CheckpointError("--resume continues the run in the folder and --overwrite deletes it: give only one")
    restart = [n for n in info.entries if n not in ("tiny-model", "data")]  # the built-in model/data are reusable
    if overwrite:
        msg = f"--overwrite: removing {_listing(run, info.entries)} from {run}" if info.entries else None
        kept = sorted(set(p.name for p in run.iterdir()) - set(info.entries)) if run.is_dir() else []
        if msg and kept:
            msg += f" (keeping {len(kept)} other entries: {', '.join(kept[:5])}{', ...' if len(kept) > 5 else ''})"
        return RunPlan(resume if resume and not own else None, [run / n for n in info.entries], msg)
    restart_msg = f"{run} holds {info.describe()}: starting it over from step 0 (removing {_listing(run, restart)})"
    if own:
        if info.kind == "empty":
            raise CheckpointError(f"nothing to resume in {run}: it holds no checkpoint and no config.yaml; "
                                  "drop --resume to start a new run there")
        if info.kind == "partial" and Path(resume).resolve() == run.resolve():
            return RunPlan(None, [run / n for n in restart], restart_msg + "; it had no checkpoint to resume")
        find_checkpoint(resume)  # a step folder that is not complete: its own clear error
        return RunPlan(resume)
    if resume is not None:  # another run's checkpoint, continued in this folder
        find_checkpoint(resume)
        if info.kind in ("checkpointed", "finished"):
            raise CheckpointError(f"checkpoint.out_dir {run} already holds {info.describe()}; resuming {resume} there "
                                  "would mix two runs: choose an empty checkpoint.out_dir, or add --overwrite to delete it")
    if info.kind == "partial":
        return RunPlan(resume, [run / n for n in restart], restart_msg)
    if info.kind == "checkpointed":
        raise CheckpointError(f"{run} already holds {info.describe()}: add --resume to continue it (and finish its "
                              "export), --overwrite to delete it and start over, or choose another checkpoint.out_dir")
    if info.kind == "finished":
        raise CheckpointError(f"{run} already holds {info.describe()}: add --overwrite to delete it and start over, "
                              "or choose another checkpoint.out_dir (--resume only reports it done)")
    return RunPlan(resume)


def apply_run_plan(plan: RunPlan) -> None:
    """Delete what the plan removes (call on the main process only)."""
    for path in plan.remove:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


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


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of every line of a metrics file. A last line that is not JSON (an append cut by a
    kill) is dropped; a bad line before it is damage, reported with its number."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    out = []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError as err:
            if n == len(lines):
                break
            raise CheckpointError(f"{path} line {n} is not a JSON record ({err}); delete that line or start the run "
                                  "over with --overwrite") from err
        out.append((line, record))
    return out


def rewind_metrics(path: str | Path, step: int) -> None:
    """Drop records after `step` (a resumed run rewrites them); keeps the file otherwise untouched."""
    p = Path(path)
    if not p.exists():
        return
    kept = [line for line, r in _records(p) if r.get("step", 0) <= step]
    tmp = p.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, p)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file (a last line cut by a kill is left out)."""
    return [r for _, r in _records(Path(path))]


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

"""`TrainConfig`: every knob of `vitos train`, as nested dataclasses with a docstring per field.

    from vitos.config import load_config
    cfg = load_config(TrainConfig, "configs/tiny_cpu.yaml", ["schedule.name=joint", "rollout.group_size=4"])

`vitos train --help-config` prints every key with its default and meaning (from the docstrings below).
YAML files under configs/ hold values only; the two schedule helpers at the bottom (`branches_for_step`,
`lr_factor`) are the only logic here, kept next to the fields they interpret.

Defaults are the authors' recipe where it is public (REFERENCE §1, ViTAR: GRPO, lr 1e-6, no KL, stagewise
schedule); everything else is marked (ours) in the field docs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Literal

from vitos.config import ConfigError, Range, check_ranges
from vitos.pipeline import PruneConfig
from vitos.rl.rewards import RewardWeights

ScheduleName = Literal["stagewise", "interleaved", "joint"]
Branch = Literal["grounding", "sparse"]


@dataclass
class ModelSection:
    """Which policy to train and which of its parameters move."""

    name_or_path: str = "tiny"
    """Hub id or local folder of a supported VLM. `tiny` writes a tiny random Qwen2.5-VL (seed 0) into
    `<checkpoint.out_dir>/tiny-model` and trains that (offline; CI and debugging)."""
    dtype: str = "auto"
    """Weight dtype: auto (bf16 on a bf16-capable GPU, else fp32), bfloat16, float16 or float32. For full
    fine-tuning on GPU prefer float32 weights with accelerate's `mixed_precision: bf16`."""
    attn: str = "sdpa"
    """Attention implementation: sdpa, eager or flash_attention_2."""
    lora: bool = True
    """Train LoRA adapters on the language model only (peft); False = full fine-tuning."""
    lora_r: Annotated[int, Range(ge=1)] = 16
    """LoRA rank."""
    lora_alpha: Annotated[int, Range(ge=1)] = 32
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0
    """Dropout on the LoRA input; 0 keeps CPU runs bit-reproducible."""
    freeze_vision: bool = True
    """Freeze the vision tower and merger. Must be True with LoRA (the adapters sit on the LM only)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% slower update)."""
    max_pixels: Annotated[int, Range(ge=28 * 28)] | None = None
    """Qwen2.5-VL: cap on the pixels an image is resized to (the processor's max_pixels / longest_edge),
    so one image gives at most max_pixels / (28 x 28) visual tokens (1003520 = 1280 tokens). None = the
    checkpoint's preprocessor_config.json (Qwen2.5-VL's: 12845056 = 16384 tokens). LLaVA
    (HuatuoGPT-Vision) ignores it: its image is always 336 x 336 = 576 tokens."""


@dataclass
class DataSection:
    """Where the training questions come from and how they are batched."""

    train_path: str = "medphantom:64"
    """A .json/.jsonl/.parquet file or a folder (vitos.data.readers). `medphantom:N` generates N
    MedPhantom training rows into `<checkpoint.out_dir>/data` (offline)."""
    image_root: str | None = None
    """Folder relative image paths are resolved against (default: the folder of the row file)."""
    skip_bad_rows: bool = False
    """Skip rows that fail validation (counted in metrics as data/skipped_rows) instead of stopping."""
    limit: Annotated[int, Range(ge=1)] | None = None
    """Read at most this many rows (None = all)."""
    batch_size: Annotated[int, Range(ge=1)] = 2
    """Questions per training step, over all processes (each process takes batch_size / num_processes).
    The authors use 128."""
    shuffle_seed: Annotated[int, Range(ge=0)] = 0
    """Seed of the per-epoch permutation of the rows (epoch e uses a generator seeded with (seed, e))."""


@dataclass
class RolloutSection:
    """How completions are sampled for both branches."""

    group_size: Annotated[int, Range(ge=2)] = 4
    """G: grounding rollouts per question (the authors use 8)."""
    sparse_group_size: Annotated[int, Range(ge=0)] = 0
    """G': sparse rollouts per grounding rollout (0 = G, the paper's G x G)."""
    max_new_tokens: Annotated[int, Range(ge=1)] = 256
    """Upper bound on the length of every completion."""
    temperature: Annotated[float, Range(gt=0)] = 1.0
    """Sampling temperature (> 0: GRPO needs diverse rollouts)."""
    top_p: Annotated[float, Range(gt=0, le=1)] = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    generation_batch_size: Annotated[int, Range(ge=0)] = 0
    """Generated rows per `generate` call (0 = all rows of a branch at once; a prompt's G or G' samples share one
    prefill and are never split, so a call holds at least one group); lower it when the KV cache does not fit."""
    engine: Literal["python", "vllm"] = "python"
    """Who decodes rollouts: python (vitos.engine, the reference: log-probs from the trainer's own forward) or
    vllm (vitos.vllm_engine, `pip install -e ".[vllm]"`, Qwen2.5-VL models: colocated on the training devices,
    weights synced after every optimiser step; see grpo.tis_cap and the `logprob_diff_*` metrics)."""
    vllm_gpu_memory_utilization: Annotated[float, Range(gt=0, le=1)] = 0.3
    """Share of each GPU's memory vLLM may take for weights + KV cache (the trainer needs the rest)."""
    vllm_max_model_len: Annotated[int, Range(ge=64)] = 4096
    """Longest prompt + completion vLLM reserves KV cache for."""


@dataclass
class GRPOSection:
    """The per-branch GRPO objective (vitos.rl.grpo)."""

    clip_low: Annotated[float, Range(ge=0, lt=1)] = 0.2
    """Lower clip of the ratio (1 - clip_low); EasyR1 default."""
    clip_high: Annotated[float, Range(ge=0)] = 0.3
    """Upper clip of the ratio (1 + clip_high); EasyR1 default (DAPO suggests 0.28)."""
    dual_clip: Annotated[float, Range(gt=1)] | None = 3.0
    """Dual-clip bound for negative advantages (None = off)."""
    beta: Annotated[float, Range(ge=0)] = 0.0
    """KL (k3) weight to the reference policy; 0 = no reference model is loaded (authors' recipe). With
    LoRA the reference is the base model with adapters disabled, else a frozen copy of the model."""
    agg: Literal["token-mean", "seq-mean", "dr-grpo"] = "token-mean"
    """How per-token losses are reduced (see vitos.rl.grpo.aggregate)."""
    scale_advantages: bool = True
    """Divide advantages by the group std (GRPO); False = Dr.GRPO's mean-centred rewards."""
    epochs: Annotated[int, Range(ge=1)] = 1
    """mu: optimiser passes over one batch of rollouts (EasyR1 `ppo_epochs`, TRL `num_iterations`). With 1
    the importance ratio is 1 at the update (old log-probs = the update-time ones, detached); with >= 2 the
    old log-probs are computed once, before the first pass, without gradients, so clipping can act."""
    tis_cap: Annotated[float, Range(gt=0)] | None = None
    """Truncated importance sampling against the rollout engine: each token's loss is weighted by
    min(pi_old / pi_rollout, tis_cap), pi_rollout the probability the engine sampled with (TRL's vLLM
    correction; 2.0 is TRL's default cap). None = off (the Python engine samples with the trainer's own
    forward; with rollout.engine=vllm, watch `{branch}/logprob_diff_*` and turn this on when they grow)."""
    sparse_grouping: Literal["question", "parent"] = "question"
    """(ours) Sparse advantages are normalised over all G x G' rollouts of a question ('question', so the
    cross-feedback acc(O_i) separates rollouts launched from different O_i) or over the G' children of
    each O_i ('parent', where that term is constant and cancels)."""


@dataclass
class OptimSection:
    """AdamW, learning-rate schedule, clipping and micro-batching."""

    lr: Annotated[float, Range(gt=0)] = 1e-6
    """Peak learning rate (authors: 1e-6 for full fine-tuning; LoRA usually wants ~1e-5 to 1e-4)."""
    weight_decay: Annotated[float, Range(ge=0)] = 0.0
    """AdamW decoupled weight decay."""
    warmup_steps: Annotated[int, Range(ge=0)] = 0
    """Linear warm-up over this many training steps (restarted at stage 2 of the stagewise schedule)."""
    scheduler: Literal["constant", "linear", "cosine"] = "constant"
    """Decay after warm-up, over the steps of the current stage."""
    max_grad_norm: Annotated[float, Range(ge=0)] = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    micro_batches: Annotated[int, Range(ge=1)] = 1
    """Split each branch update into this many forward/backward passes (gradient accumulation; the loss
    is weighted so the result equals one pass over all rows)."""
    fp32_master_weights: bool = True
    """With model.dtype bfloat16/float16 and full fine-tuning: keep the weights in float32 and run the
    forward under autocast in model.dtype (accelerate mixed precision), so that small updates (lr 1e-6)
    are not rounded away (bf16 keeps 8 mantissa bits: w + 1e-6 * w == w). LoRA adapters are float32
    anyway (peft). False = train the bf16 weights in place (not recommended; documented for comparison)."""
    fresh_optimizer_at_stage2: bool = True
    """Stagewise: clear AdamW moments when stage 2 starts, as the authors' separate stage-2 run does."""


@dataclass
class ScheduleSection:
    """In which order the two branches are optimised."""

    name: ScheduleName = "stagewise"
    """stagewise: grounding objective for stage1_steps, then the sparse objective (authors' recipe);
    interleaved: every step a grounding update, then fresh sparse rollouts and a sparse update;
    joint: one summed loss (the ablation the paper argues against)."""
    total_steps: Annotated[int, Range(ge=1)] = 2
    """Training steps (one step = one batch of questions)."""
    stage1_steps: Annotated[int, Range(ge=0)] = 1
    """Stagewise only: steps of stage 1 (grounding); the remaining steps are stage 2 (sparse)."""


@dataclass
class CheckpointSection:
    """Where the run writes and how often it checkpoints."""

    out_dir: str = "runs/vitos"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, final/."""
    every: Annotated[int, Range(ge=0)] = 0
    """Checkpoint every this many steps (0 = only at the end and at the stagewise stage boundary)."""
    keep_last: Annotated[int, Range(ge=1)] = 2
    """Keep this many step checkpoints (the stage-1 checkpoint is always kept)."""


@dataclass
class LoggingSection:
    """What is logged where."""

    every: Annotated[int, Range(ge=1)] = 1
    """Write metrics every this many steps (metrics.jsonl, TensorBoard, W&B)."""
    tensorboard: bool = False
    """Also log to TensorBoard under <out_dir>/tb (needs the `tensorboard` package)."""
    wandb: bool = False
    """Also log to Weights & Biases (needs the `wandb` package and a login)."""
    wandb_project: str = "vitos"
    """W&B project name."""
    log_grad_cosine: bool = True
    """Measure cos(grad L_grounding, grad L_sparse) on the trainable parameters every `grad_cosine_every`
    steps: a measured answer to "do the branches conflict?". Costs one extra forward + backward over each
    branch's rows and two fp32 gradient copies of the trainable parameters. Uses each process's local
    gradients (logged: the mean over processes); null under FSDP and DeepSpeed ZeRO-3, and when a branch's
    gradient is zero (all advantages 0)."""
    grad_cosine_every: Annotated[int, Range(ge=0)] = 10
    """Measure the gradient cosine on steps divisible by this (0 = never); null on the other steps."""
    progress: bool = True
    """Show a tqdm progress bar (steps/s, ETA, mean rewards)."""


@dataclass
class TrainConfig:
    """Everything `vitos train` needs; saved resolved as <out_dir>/config.yaml and in every checkpoint."""

    model: ModelSection = field(default_factory=ModelSection)
    """The policy model."""
    data: DataSection = field(default_factory=DataSection)
    """Training data."""
    rollout: RolloutSection = field(default_factory=RolloutSection)
    """Sampling."""
    prune: PruneConfig = field(default_factory=PruneConfig)
    """Boxes -> kept + fused tokens (shared with inference)."""
    rewards: RewardWeights = field(default_factory=RewardWeights)
    """Reward component weights (shared with vitos.rl.rewards)."""
    grpo: GRPOSection = field(default_factory=GRPOSection)
    """GRPO objective."""
    optim: OptimSection = field(default_factory=OptimSection)
    """Optimiser."""
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    """Branch schedule."""
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    """Checkpointing."""
    logging: LoggingSection = field(default_factory=LoggingSection)
    """Logging."""
    seed: Annotated[int, Range(ge=0)] = 0
    """Seed of python/numpy/torch and of the rollout sampler (process k adds k)."""
    device: Literal["auto", "cpu"] = "auto"
    """auto = what accelerate picks (GPU when present); cpu forces the CPU."""

    @property
    def sparse_group_size(self) -> int:
        """G' with 0 resolved to G."""
        return self.rollout.sparse_group_size or self.rollout.group_size


def validate(cfg: TrainConfig) -> None:
    """Reject values and combinations that cannot train, in one line; each message names the key to change.

    Single-field ranges are declared on the fields (`Annotated[..., Range(...)]`, checked by
    `vitos.config.check_ranges`, NaN / inf refused everywhere); the checks below relate two fields."""
    errors = check_ranges(cfg)
    if cfg.rollout.sparse_group_size > cfg.rollout.group_size:
        errors.append("rollout.sparse_group_size must be in 0..rollout.group_size (0 = group_size)")
    if cfg.model.lora and not cfg.model.freeze_vision:
        errors.append("model.lora=true adapts the language model only; set model.freeze_vision=true or model.lora=false")
    if cfg.schedule.name == "stagewise" and cfg.schedule.stage1_steps > cfg.schedule.total_steps:
        errors.append("schedule.stage1_steps must be in 0..schedule.total_steps")
    if cfg.optim.micro_batches > cfg.data.batch_size * cfg.rollout.group_size:
        errors.append("optim.micro_batches must be in 1..data.batch_size * rollout.group_size (rows of the smallest update)")
    if errors:
        raise ConfigError("invalid training config: " + "; ".join(errors))


def stage_of(cfg: TrainConfig, step: int) -> int:
    """1 or 2 for the stagewise schedule (step is 1-based), 0 for schedules without stages."""
    if cfg.schedule.name != "stagewise":
        return 0
    return 1 if step <= cfg.schedule.stage1_steps else 2


def branches_for_step(cfg: TrainConfig, step: int) -> list[Branch]:
    """Branches whose objective is optimised at `step` (1-based), in update order."""
    if cfg.schedule.name == "stagewise":
        return ["grounding"] if stage_of(cfg, step) == 1 else ["sparse"]
    return ["grounding", "sparse"]


def lr_factor(cfg: TrainConfig, steps_done: int) -> float:
    """Multiplier of optim.lr for the update after `steps_done` completed steps.

    Warm-up is linear, reaching 1 at the `warmup_steps`-th update; then constant, linear or cosine decay to
    0 over the rest of the current stage. The stagewise schedule restarts warm-up and decay at stage 2.
    """
    o, s = cfg.optim, cfg.schedule
    start, length = 0, s.total_steps
    if s.name == "stagewise":
        if steps_done >= s.stage1_steps:
            start, length = s.stage1_steps, s.total_steps - s.stage1_steps
        else:
            length = s.stage1_steps
    t = steps_done - start  # updates already done in this stage
    if t < o.warmup_steps:
        return (t + 1) / o.warmup_steps
    if o.scheduler == "constant":
        return 1.0
    span = max(1, length - o.warmup_steps)
    progress = min(1.0, (t - o.warmup_steps) / span)
    if o.scheduler == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def precision_plan(cfg: TrainConfig) -> tuple[str, str | None]:
    """(dtype to load the weights in, compute dtype: 'bf16' / 'fp16' or None = the weights' own).

    Full fine-tuning in bfloat16/float16 with `optim.fp32_master_weights` loads float32 weights and
    computes in the requested dtype: the optimiser then updates float32 weights, so an update of 1e-6 * w
    survives (in bf16 it rounds back to w). bf16 compute is an explicit `torch.autocast` inside
    `Policy.forward`; fp16 goes through accelerate's `mixed_precision="fp16"`, which adds the loss scaler
    fp16 needs. LoRA keeps the frozen base in model.dtype; peft keeps its adapters in float32 already.
    """
    import torch

    from vitos.models import resolve_dtype

    dtype = torch.float32 if cfg.model.dtype == "auto" and cfg.device == "cpu" else resolve_dtype(cfg.model.dtype)
    if not cfg.model.lora and cfg.optim.fp32_master_weights and dtype in (torch.bfloat16, torch.float16):
        return "float32", "bf16" if dtype == torch.bfloat16 else "fp16"
    return cfg.model.dtype, None

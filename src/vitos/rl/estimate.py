"""Per-GPU memory and disk estimate of a `vitos train` run, without loading weights: `--dry-run`.

    vitos train --config configs/lingshu7b_8gpu.yaml --dry-run \
        --accelerate-config configs/accelerate/deepspeed_zero2.yaml     [--num-processes N] [--gpu-memory-gb 80]

The model is built on the meta device (`vitos.models.build_on_meta`: only config.json is read; a hub id
fetches config.json alone) and made trainable exactly as the trainer does (`vitos.rl.policy.build_policy`:
LoRA through peft, or full fine-tuning with the vision tower frozen), so the parameter counts are the
trainer's. Everything else is arithmetic on the TrainConfig, the model's shape and the accelerate launch
(processes, DDP / FSDP / DeepSpeed ZeRO stage, mixed precision), in the pure functions below; each
docstring carries its formula. Symbols used throughout:

    N      processes (GPUs)                  P, P_t  total / trainable parameters (meta-device counts)
    b_w    bytes per weight as held on GPU   b_t     bytes per trainable weight (its gradient too)
    b_a    bytes per activation / KV entry   (2 under bf16/fp16 weights or mixed precision, else 4)
    h, I, n_L, n_kv, d, V   text hidden, MLP intermediate, layers, KV heads, head dim, vocabulary
    G, G'  rollout.group_size, sparse group size;  B = data.batch_size / N questions per process
    L_p    prompt tokens = text tokens (default 200) + images x visual tokens per image
           (Qwen2.5-VL: model.max_pixels / (28 x 28); LLaVA / HuatuoGPT-Vision: 576 fixed)
    T      rollout.max_new_tokens

Peak per GPU = resident (weights, master weights, gradients, AdamW state, reference model, gathered
shards) + max(rollout phase, update phase). The rollout phase (KV cache and prefill activations of one
`generate` call) and the update phase (activations + max(logits, checkpoint recompute) of one
micro-batch, plus the gradient-cosine copies) never overlap: the KV cache is freed before the update.

Measured on CPU (fp32, peak RSS of the process; tests/test_estimate.py): the update phase of one
micro-batch and the rollout prefill + KV cache are estimated within 0.9-1.2x of what they take; the KV
cache, AdamW state and checkpoint files within a few percent.

Left out (see docs/distributed.md): allocator fragmentation, the CUDA context, NCCL and ZeRO
communication buckets, vision-tower activations (the rollout's single encode of all images), attention
score matrices (a fused SDPA kernel is assumed), and small per-step tensors. The verdict therefore
compares the peak with `usable_fraction` (90%) of the card.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
QWEN_PIXELS_PER_TOKEN = 28 * 28
"""One merged Qwen2.5-VL visual token covers 28 x 28 pixels (14-px patches, 2 x 2 merger)."""
QWEN_DEFAULT_MAX_PIXELS = 28 * 28 * 16384
"""Qwen2.5-VL's released preprocessor max_pixels (12,845,056 = 16,384 visual tokens per image)."""
DEFAULT_TEXT_TOKENS = 200
"""Assumed system + question text tokens of one prompt (chat template, question, options)."""
LOGIT_COPIES = 3
"""Live (chunk, V) fp32 tensors at the log-prob pass's peak. The pass is chunked and checkpointed
(vitos.engine.chunked_token_logprobs): at most LOGPROB_CHUNK completion positions reach the head at once,
and the backward recomputes one chunk's logits, so the peak is a few copies of ONE chunk's logits (the
recomputed logits, the softmax of logsumexp's backward and the logits' gradient), not of the batch's."""
LOGPROB_CHUNK = 256
"""Completion positions per chunk of the log-prob pass (vitos.engine.LOGPROB_CHUNK; a test keeps them equal)."""
LAYER_SAVED_PER_TOKEN = (9, 4)
"""(a, c): tensors one decoder layer keeps for backward, a x h + c x I values per token (2 RMSNorm in/out,
q, rotated q/k, attention output, o_proj input; MLP gate, SiLU(gate), up, their product)."""
PREFILL_LIVE_PER_TOKEN = (4, 3)
"""(a, c): values per token live inside one decoder layer during a no-grad prefill (residual, norm,
attention output, projection; MLP up, SiLU(gate), product)."""
ZERO3_MAX_LIVE_PARAMETERS = 1_000_000_000
"""DeepSpeed's default stage3_max_live_parameters: gathered parameters allowed on a GPU at once."""


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about the language model and its visual tokens."""

    family: str
    """config model_type: qwen2_5_vl (dynamic grid) or llava (HuatuoGPT-Vision, fixed grid)."""
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tokens_per_image: int | None = None
    """Fixed visual tokens per image (LLaVA: 576); None = dynamic, from max_pixels / (28 x 28)."""
    default_max_pixels: int = QWEN_DEFAULT_MAX_PIXELS
    """The image processor's own max_pixels when model.max_pixels is not set."""
    embed_params: int = 0
    """Input embedding + (untied) LM head parameters: FSDP's root unit, gathered for the whole forward."""
    layer_params: int = 0
    """Parameters of one decoder layer (an FSDP unit)."""


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of the policy as the trainer builds it (from a meta-device build)."""

    total: int
    """Every parameter of the policy (base model + LoRA adapters)."""
    trainable: int
    """Parameters with requires_grad."""
    by_dtype: dict[str, int] = field(default_factory=dict)
    """dtype name -> parameters, as loaded (before DeepSpeed casts the module to bf16/fp16)."""
    trainable_by_dtype: dict[str, int] = field(default_factory=dict)
    """The same for trainable parameters only (peft keeps LoRA adapters in fp32)."""
    vision: int = 0
    """Parameters of the vision tower and projector (information only)."""


@dataclass(frozen=True)
class LaunchFacts:
    """How accelerate launches the run (from an accelerate config yaml or the command line)."""

    num_processes: int = 1
    distributed_type: str = "NO"
    """accelerate's distributed_type: NO, MULTI_GPU (DDP), FSDP or DEEPSPEED."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage (0 when not DeepSpeed)."""
    mixed_precision: str = "no"
    """no, bf16 or fp16."""
    offload_optimizer: bool = False
    """DeepSpeed offload_optimizer_device cpu/nvme: master weights and AdamW state live off the GPU."""
    offload_params: bool = False
    """DeepSpeed ZeRO-3 offload_param_device / FSDP offload_params: sharded weights live off the GPU."""
    gradient_accumulation_steps: int | None = None
    """DeepSpeed's accumulation count (must equal optim.micro_batches)."""
    source: str = "command line"

    @property
    def kind(self) -> str:
        if self.distributed_type == "DEEPSPEED":
            return f"DeepSpeed ZeRO-{self.zero_stage}"
        if self.distributed_type == "FSDP":
            return "FSDP"
        if self.distributed_type == "MULTI_GPU" or self.num_processes > 1:
            return "DDP"
        return "single process"

    @property
    def deepspeed_half(self) -> bool:
        """DeepSpeed casts the whole module to bf16/fp16 and keeps an fp32 master copy in the optimizer."""
        return self.distributed_type == "DEEPSPEED" and self.mixed_precision in ("bf16", "fp16")

    @property
    def shards_weights(self) -> bool:
        return self.distributed_type == "FSDP" or (self.distributed_type == "DEEPSPEED" and self.zero_stage >= 3)

    @property
    def shards_gradients(self) -> bool:
        return self.distributed_type == "FSDP" or (self.distributed_type == "DEEPSPEED" and self.zero_stage >= 2)

    @property
    def shards_optimizer(self) -> bool:
        return self.distributed_type == "FSDP" or (self.distributed_type == "DEEPSPEED" and self.zero_stage >= 1)

    @property
    def grad_cosine_runs(self) -> bool:
        """The trainer skips the cosine under FSDP and ZeRO-3 (parameters sharded outside the forward)."""
        return not self.shards_weights


def read_launch(path: str | Path | None = None, num_processes: int | None = None,
                mixed_precision: str | None = None) -> LaunchFacts:
    """LaunchFacts from an accelerate config yaml (distributed_type, num_processes, mixed_precision,
    deepspeed_config / fsdp_config); `num_processes` overrides the file's count (as accelerate's
    --num_processes does). Without a file: DDP when num_processes > 1, else one process."""
    import yaml

    if path is None:
        n = num_processes or 1
        return LaunchFacts(num_processes=n, distributed_type="MULTI_GPU" if n > 1 else "NO",
                           mixed_precision=mixed_precision or "no", source="command line")
    raw = yaml.safe_load(Path(path).read_text()) or {}
    dist = str(raw.get("distributed_type", "NO")).upper()
    ds = raw.get("deepspeed_config") or {}
    fsdp = raw.get("fsdp_config") or {}
    n = num_processes or int(raw.get("num_processes", 1) or 1)
    gas = ds.get("gradient_accumulation_steps")
    return LaunchFacts(
        num_processes=n,
        distributed_type=dist,
        zero_stage=int(ds.get("zero_stage", 0) or 0) if dist == "DEEPSPEED" else 0,
        mixed_precision=str(mixed_precision or raw.get("mixed_precision", "no") or "no"),
        offload_optimizer=str(ds.get("offload_optimizer_device", "none")).lower() in ("cpu", "nvme"),
        offload_params=(str(ds.get("offload_param_device", "none")).lower() in ("cpu", "nvme")
                        or bool(fsdp.get("fsdp_offload_params", False))),
        gradient_accumulation_steps=int(gas) if isinstance(gas, int) else None,
        source=str(path),
    )


# --------------------------------------------------------------------------------------------------
# Pure arithmetic
# --------------------------------------------------------------------------------------------------


def load_dtype(model_dtype: str, device: str = "auto") -> str:
    """cfg.model.dtype as a dtype name; `auto` is taken as bfloat16 (a bf16-capable GPU: the target of an
    estimate), or float32 when cfg.device is cpu."""
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    if model_dtype == "auto":
        return "float32" if device == "cpu" else "bfloat16"
    return aliases.get(model_dtype, model_dtype)


def precision(cfg: Any, launch: LaunchFacts) -> tuple[str, str]:
    """(dtype the weights are loaded in, compute precision no/bf16/fp16): `vitos.rl.config.precision_plan`
    with `auto` resolved by `load_dtype` (full fine-tuning in bf16 with optim.fp32_master_weights loads
    float32 weights and computes under bf16 autocast); the launch's mixed_precision when the plan leaves
    the compute dtype open."""
    resolved = replace(cfg, model=replace(cfg.model, dtype=load_dtype(cfg.model.dtype, getattr(cfg, "device", "auto"))))
    try:
        from vitos.rl.config import precision_plan
    except ImportError:  # an older config module: weights as configured, precision as launched
        return resolved.model.dtype, launch.mixed_precision
    dtype, mixed = precision_plan(resolved)
    return load_dtype(dtype), mixed or launch.mixed_precision


def visual_tokens_per_image(shape: ModelShape, max_pixels: int | None) -> int:
    """Upper bound of visual tokens one image gives the language model.

    Qwen2.5-VL: floor(max_pixels / (28 x 28)), max_pixels = model.max_pixels or the processor's own
    (12,845,056 = 16,384 tokens for the released checkpoints). LLaVA (HuatuoGPT-Vision): 576, fixed
    (model.max_pixels does not apply: the image is padded to a square and resized to 336 x 336).
    """
    if shape.tokens_per_image is not None:
        return shape.tokens_per_image
    return (max_pixels or shape.default_max_pixels) // QWEN_PIXELS_PER_TOKEN


def prompt_tokens(shape: ModelShape, max_pixels: int | None, text_tokens: int = DEFAULT_TEXT_TOKENS,
                  images_per_prompt: int = 1) -> int:
    """L_p = text_tokens + images_per_prompt x visual_tokens_per_image (the grounding prompt: all visual
    tokens; the sparse prompt keeps a subset, so this bounds both)."""
    return text_tokens + images_per_prompt * visual_tokens_per_image(shape, max_pixels)


def local_rows(cfg: Any, num_processes: int) -> tuple[int, int, int]:
    """(questions, grounding rows, sparse rows) per process: B = batch_size / N, B x G, B x G x G'."""
    b = cfg.data.batch_size // num_processes
    g = cfg.rollout.group_size
    g2 = cfg.rollout.sparse_group_size or g
    return b, b * g, b * g * g2


def update_rows(cfg: Any, num_processes: int) -> int:
    """Rows of the largest single update per process: the sparse branch's B x G x G' for the stagewise and
    interleaved schedules (each branch is updated alone), grounding + sparse rows for joint."""
    _, rg, rs = local_rows(cfg, num_processes)
    return rg + rs if cfg.schedule.name == "joint" else max(rg, rs)


def rows_per_micro_batch(cfg: Any, num_processes: int) -> int:
    """ceil(update rows / optim.micro_batches): the largest chunk `split_rows` makes."""
    return math.ceil(update_rows(cfg, num_processes) / cfg.optim.micro_batches)


def generation_rows(cfg: Any, num_processes: int) -> int:
    """Sequences of one `generate` call: rollout.generation_batch_size, or (0) all rows of the larger
    branch (the sparse B x G x G'), never more than that."""
    _, rg, rs = local_rows(cfg, num_processes)
    most = max(rg, rs)
    return min(cfg.rollout.generation_batch_size or most, most)


def kv_cache_bytes(shape: ModelShape, sequences: int, tokens: int, bytes_per: int) -> int:
    """KV cache of `sequences` rows of `tokens` positions: 2 (K and V) x n_L x n_kv x d x b_a x tokens x rows."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * bytes_per * tokens * sequences


def prefill_activation_bytes(shape: ModelShape, sequences: int, tokens: int, bytes_per: int) -> int:
    """No-grad prefill of one `generate` call, one decoder layer live at a time:
    rows x L_p x (4 h + 3 I) x b_a (logits_to_keep = 1: no vocabulary projection of the prompt)."""
    a, c = PREFILL_LIVE_PER_TOKEN
    return sequences * tokens * (a * shape.hidden + c * shape.intermediate) * bytes_per


def activation_bytes(shape: ModelShape, rows: int, tokens: int, bytes_per: int, checkpointing: bool) -> int:
    """Activations kept for backward by one micro-batch of `rows` sequences of `tokens` (L_p + T) positions.

    One decoder layer saves 9 h + 4 I values per token (LAYER_SAVED_PER_TOKEN). With gradient
    checkpointing only each layer's input is kept:  rows x tokens x n_L x h x b_a;
    without it every layer's tensors are:           rows x tokens x n_L x (9 h + 4 I) x b_a.
    """
    a, c = LAYER_SAVED_PER_TOKEN
    per_token = shape.layers * (shape.hidden if checkpointing else a * shape.hidden + c * shape.intermediate)
    return rows * tokens * per_token * bytes_per


def recompute_bytes(shape: ModelShape, rows: int, tokens: int, bytes_per: int) -> int:
    """Gradient checkpointing: one layer's saved tensors while its backward recomputes it,
    rows x tokens x (9 h + 4 I) x b_a. It follows the logits' backward, so the update phase counts
    max(logits, recompute), not their sum."""
    a, c = LAYER_SAVED_PER_TOKEN
    return rows * tokens * (a * shape.hidden + c * shape.intermediate) * bytes_per


def logits_bytes(shape: ModelShape, rows: int, new_tokens: int, chunk: int = LOGPROB_CHUNK) -> int:
    """Log-prob pass of one micro-batch: only the completion reaches the head, in fp32, one chunk at a time:
    min(rows x T, chunk) x V x 4 bytes per copy, LOGIT_COPIES (3) copies live at the peak."""
    return LOGIT_COPIES * min(rows * new_tokens, chunk) * shape.vocab * 4


def grad_cosine_bytes(trainable: int, grad_bytes: int) -> int:
    """`grad_cosine` (trainer, `vitos.rl.update.grads_cosine`): both branches' gradients per parameter in the
    gradient dtype, plus the fp32 pieces being reduced (COSINE_CHUNK elements, 3 x 4 B each):
        P_t x 2 x b_t + 12 x COSINE_CHUNK    (never sharded: local, un-synchronised gradients)."""
    from vitos.rl.update import COSINE_CHUNK

    return trainable * 2 * grad_bytes + 12 * min(COSINE_CHUNK, trainable)


def _bytes_by_dtype(counts: dict[str, int]) -> int:
    return sum(n * DTYPE_BYTES[d] for d, n in counts.items())


@dataclass
class MemoryEstimate:
    """Per-GPU bytes of each item (0 = not present in this run) and the run's disk use."""

    weights: int = 0
    """Policy weights: sum over dtypes of count x b_w (DeepSpeed bf16/fp16: P x 2); / N under FSDP, ZeRO-3."""
    master_weights: int = 0
    """DeepSpeed bf16/fp16: fp32 copy of trainable weights, P_t x 4 / N (ZeRO >= 1). DDP/FSDP keep none
    (load float32 weights there: they are the master)."""
    gradients: int = 0
    """P_t x b_t; / N under FSDP, ZeRO-2, ZeRO-3."""
    ddp_buckets: int = 0
    """DDP's reducer buckets, a second copy of the gradients (gradient_as_bucket_view is off)."""
    optimizer: int = 0
    """AdamW exp_avg + exp_avg_sq: 2 x P_t x 4 under DeepSpeed, 2 x P_t x b_t (torch keeps the parameter's
    dtype) otherwise; / N under FSDP and ZeRO >= 1; 0 when DeepSpeed offloads the optimizer."""
    autocast_copies: int = 0
    """fp32 weights under bf16/fp16 autocast (DDP / one process): autocast caches a 16-bit copy of every
    trainable weight for the duration of a forward (and the update's backward keeps them): P_t x 2."""
    reference: int = 0
    """grpo.beta > 0 with full fine-tuning: a frozen copy of the weights (LoRA: adapters disabled, no copy)."""
    gathered: int = 0
    """Sharded weights gathered for compute: FSDP (embeddings + LM head + 2 decoder layers) x b_a; ZeRO-3
    min(P, stage3_max_live_parameters = 1e9) x 2."""
    kv_cache: int = 0
    """Rollout KV cache of one generate call (kv_cache_bytes with L_p + T tokens)."""
    prefill: int = 0
    """Rollout prefill activations of that call (prefill_activation_bytes)."""
    activations: int = 0
    """Activations of one micro-batch update (activation_bytes with L_p + T tokens)."""
    recompute: int = 0
    """Gradient checkpointing: the layer being recomputed in backward (recompute_bytes)."""
    logits: int = 0
    """fp32 logits of one micro-batch log-prob pass (logits_bytes)."""
    grad_cosine: int = 0
    """Gradient-cosine copies, when logging.log_grad_cosine and grad_cosine_every > 0 and it is not
    skipped (FSDP / ZeRO-3) (grad_cosine_bytes)."""
    checkpoint: int = 0
    """Disk, one checkpoint: saved model state + optimizer state (all processes together)."""
    checkpoints_kept: int = 0
    """Disk: checkpoint x (keep_last + 1 protected stage-1 checkpoint for stagewise)."""
    final_export: int = 0
    """Disk: the final/ model folder (full model in its dtype; LoRA: merged model + adapter)."""
    formulas: dict[str, str] = field(default_factory=dict)
    """Item -> the formula with this run's numbers, for the table."""

    RESIDENT = ("weights", "master_weights", "gradients", "ddp_buckets", "optimizer", "autocast_copies", "reference",
                "gathered")
    ROLLOUT = ("kv_cache", "prefill")
    UPDATE = ("activations", "recompute", "logits", "grad_cosine")

    @property
    def resident(self) -> int:
        return sum(getattr(self, k) for k in self.RESIDENT)

    @property
    def rollout_phase(self) -> int:
        return sum(getattr(self, k) for k in self.ROLLOUT)

    @property
    def update_phase(self) -> int:
        """activations + max(logits, recompute) + gradient-cosine copies (the logits are freed before the
        first layer is recomputed)."""
        return self.activations + max(self.logits, self.recompute) + self.grad_cosine

    @property
    def peak(self) -> int:
        """Per-GPU peak: resident + max(rollout phase, update phase)."""
        return self.resident + max(self.rollout_phase, self.update_phase)

    @property
    def disk_peak(self) -> int:
        """Disk while a checkpoint is written next to the kept ones (they are pruned after it completes)."""
        return self.checkpoints_kept + self.checkpoint + self.final_export

    def largest(self, n: int = 3) -> list[tuple[str, int]]:
        """The n largest GPU items of the peak (the phase that is not the peak's is left out)."""
        phase = self.ROLLOUT if self.rollout_phase >= self.update_phase else self.UPDATE
        items = [(k, getattr(self, k)) for k in (*self.RESIDENT, *phase)]
        return sorted(items, key=lambda kv: -kv[1])[:n]


def estimate_memory(cfg: Any, shape: ModelShape, params: ParamCounts, launch: LaunchFacts,
                    text_tokens: int = DEFAULT_TEXT_TOKENS, images_per_prompt: int = 1) -> MemoryEstimate:
    """The per-GPU breakdown of `cfg` (a TrainConfig) for a model of `shape` with `params`, launched as
    `launch`. Each field's formula is in MemoryEstimate's field docs and the helpers above."""
    n = launch.num_processes
    if cfg.data.batch_size % n:
        raise ValueError(f"data.batch_size {cfg.data.batch_size} must be divisible by the {n} processes")
    dtype, mixed = precision(cfg, launch)  # mixed: the compute dtype (bf16 autocast of the plan or the launch's)
    half = launch.deepspeed_half  # the launch's mixed precision decides what DeepSpeed does with the weights
    by_dtype = params.by_dtype or {dtype: params.total}
    trainable_by_dtype = params.trainable_by_dtype or {dtype: params.trainable}
    half_bytes = DTYPE_BYTES["float16"]
    weight_bytes = params.total * half_bytes if half else _bytes_by_dtype(by_dtype)
    b_t = half_bytes if half else (_bytes_by_dtype(trainable_by_dtype) / max(1, params.trainable))
    b_t_int = max(1, round(b_t))
    sixteen_bit = half or mixed in ("bf16", "fp16") or dtype in ("bfloat16", "float16")
    b_a = 2 if sixteen_bit else 4
    w_div = n if launch.shards_weights else 1
    g_div = n if launch.shards_gradients else 1
    o_div = n if launch.shards_optimizer else 1
    est = MemoryEstimate()
    f = est.formulas
    gb = _count  # parameter counts in the formulas

    dtypes = " + ".join(f"{gb(c)} x {DTYPE_BYTES[d]} B ({d})" for d, c in by_dtype.items())
    est.weights = 0 if (launch.offload_params and launch.shards_weights) else int(weight_bytes / w_div)
    f["weights"] = (f"{gb(params.total)} x 2 B (DeepSpeed {launch.mixed_precision})" if half else dtypes) + (
        f" / {n}" if w_div > 1 else ", replicated") + (" (offloaded)" if est.weights == 0 else "")
    if half and not launch.offload_optimizer:
        est.master_weights = int(params.trainable * 4 / o_div)
        f["master_weights"] = f"{gb(params.trainable)} trainable x 4 B" + (f" / {n}" if o_div > 1 else "")
    est.gradients = int(params.trainable * b_t / g_div)
    f["gradients"] = f"{gb(params.trainable)} x {b_t:g} B" + (f" / {n}" if g_div > 1 else "")
    if launch.kind == "DDP":
        est.ddp_buckets = est.gradients
        f["ddp_buckets"] = "= gradients (DDP reducer buckets)"
    moment = 4 if launch.distributed_type == "DEEPSPEED" else b_t
    if not (launch.distributed_type == "DEEPSPEED" and launch.offload_optimizer):
        est.optimizer = int(2 * params.trainable * moment / o_div)
        f["optimizer"] = f"2 x {gb(params.trainable)} x {moment:g} B" + (f" / {n}" if o_div > 1 else "")
    if launch.kind in ("DDP", "single process") and mixed in ("bf16", "fp16") and b_t_int == 4:
        est.autocast_copies = params.trainable * half_bytes
        f["autocast_copies"] = f"{gb(params.trainable)} trainable x {half_bytes} B"
    if cfg.grpo.beta > 0 and not cfg.model.lora:
        est.reference = est.weights
        f["reference"] = "= weights (frozen copy, grpo.beta > 0)"
    if launch.distributed_type == "FSDP":
        units = shape.embed_params + 2 * shape.layer_params
        est.gathered = units * b_a
        f["gathered"] = f"({gb(shape.embed_params)} embed/head + 2 x {gb(shape.layer_params)} layer) x {b_a} B"
    elif launch.shards_weights:
        est.gathered = min(params.total, ZERO3_MAX_LIVE_PARAMETERS) * half_bytes
        f["gathered"] = f"min(P, 1e9 live) x {half_bytes} B"

    lp = prompt_tokens(shape, cfg.model.max_pixels if hasattr(cfg.model, "max_pixels") else None,
                       text_tokens, images_per_prompt)
    seq = lp + cfg.rollout.max_new_tokens
    gen = generation_rows(cfg, n)
    est.kv_cache = kv_cache_bytes(shape, gen, seq, b_a)
    f["kv_cache"] = (f"2 x {shape.layers} x {shape.kv_heads} x {shape.head_dim} x {b_a} B x {seq:,} tok x {gen} seqs")
    est.prefill = prefill_activation_bytes(shape, gen, lp, b_a)
    f["prefill"] = f"{gen} seqs x {lp:,} tok x (4 x {shape.hidden} + 3 x {shape.intermediate}) x {b_a} B"
    rows = rows_per_micro_batch(cfg, n)
    ckpt = cfg.model.gradient_checkpointing
    est.activations = activation_bytes(shape, rows, seq, b_a, ckpt)
    a, c = LAYER_SAVED_PER_TOKEN
    per_layer = f"({a} x {shape.hidden} + {c} x {shape.intermediate})"
    kept = f"{shape.hidden} x {b_a} B [checkpointing: layer inputs]" if ckpt else f"{per_layer} x {b_a} B"
    f["activations"] = f"{rows} rows x {seq:,} tok x {shape.layers} x {kept}"
    if ckpt:
        est.recompute = recompute_bytes(shape, rows, seq, b_a)
        f["recompute"] = f"{rows} rows x {seq:,} tok x {per_layer} x {b_a} B (max with logits)"
    est.logits = logits_bytes(shape, rows, cfg.rollout.max_new_tokens)
    f["logits"] = (f"{LOGIT_COPIES} x min({rows} rows x {cfg.rollout.max_new_tokens}, chunk {LOGPROB_CHUNK}) x "
                   f"{shape.vocab:,} x 4 B")
    every = getattr(cfg.logging, "grad_cosine_every", 1)
    if cfg.logging.log_grad_cosine and every and every > 0 and launch.grad_cosine_runs:
        est.grad_cosine = grad_cosine_bytes(params.trainable, b_t_int)
        f["grad_cosine"] = f"{gb(params.trainable)} x 2 x {b_t_int} B"

    # ---- disk (all processes together) ------------------------------------------------------------
    if launch.distributed_type in ("DEEPSPEED", "FSDP"):  # their own layouts: every weight, frozen ones too
        model_state = weight_bytes
        f_model = "all weights"
    else:  # register_trainable_only_hooks: trainable parameters only
        model_state = int(params.trainable * b_t)
        f_model = "trainable weights"
    opt_state = params.trainable * (12 if half else 2 * moment)
    est.checkpoint = int(model_state + opt_state)
    stage1 = 1 if (cfg.schedule.name == "stagewise" and 0 < cfg.schedule.stage1_steps < cfg.schedule.total_steps) else 0
    est.checkpoints_kept = est.checkpoint * (cfg.checkpoint.keep_last + stage1)
    per_param = "12 (fp32 master + 2 moments)" if half else f"2 x {moment:g}"
    f["checkpoint"] = f"{f_model} + {gb(params.trainable)} x {per_param} B"
    f["checkpoints_kept"] = f"checkpoint x (keep_last {cfg.checkpoint.keep_last}" + (" + 1 stage-1)" if stage1 else ")")
    # final/: the gathered state in the weights' dtype (LoRA: the merged base + adapter/ = the same bytes)
    est.final_export = int(weight_bytes)
    f["final_export"] = "all weights in their dtype" + (" (LoRA merged) + adapter/" if cfg.model.lora else "")
    return est


# --------------------------------------------------------------------------------------------------
# Meta-device build (reads config.json only) and the dry-run report
# --------------------------------------------------------------------------------------------------


def model_shape(config: Any, model: Any = None) -> ModelShape:
    """ModelShape of a transformers config (Qwen2.5-VL or LLaVA); `model` (meta) adds the unit sizes."""
    text = config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    fixed = None
    if config.model_type != "qwen2_5_vl":
        fixed = int(getattr(config, "image_seq_length", 0) or 576)
    embed = layer = 0
    if model is not None:
        inp, out = model.get_input_embeddings(), model.get_output_embeddings()
        embed = inp.weight.numel() + (out.weight.numel() if out is not None and out.weight is not inp.weight else 0)
        lm = model.model.language_model if hasattr(model.model, "language_model") else model.model
        layer = sum(p.numel() for p in lm.layers[0].parameters())
    return ModelShape(
        family=config.model_type, hidden=text.hidden_size, layers=text.num_hidden_layers, heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads, head_dim=head_dim,
        intermediate=text.intermediate_size, vocab=text.vocab_size, tokens_per_image=fixed,
        embed_params=embed, layer_params=layer,
    )


def _processor_max_pixels(name_or_path: str) -> int | None:
    """max_pixels of a local folder's preprocessor_config.json (size.longest_edge / max_pixels), if any."""
    import json

    path = Path(name_or_path) / "preprocessor_config.json"
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    size = raw.get("size") or {}
    value = raw.get("max_pixels") or (size.get("longest_edge") if isinstance(size, dict) else None)
    return int(value) if value else None


def meta_build(cfg: Any, name_or_path: str | None = None) -> tuple[ModelShape, ParamCounts]:
    """Build cfg's policy on the meta device (no weights) exactly as the trainer makes it trainable, and
    count its parameters. `name_or_path` overrides cfg.model.name_or_path; `tiny` writes the tiny model
    into a temporary folder first (as the trainer does into the run directory)."""
    import torch
    from types import SimpleNamespace

    from vitos.models import build_on_meta
    from vitos.pipeline import PruneConfig
    from vitos.rl.policy import build_policy, vision_modules

    path = name_or_path or cfg.model.name_or_path
    if path == "tiny":
        from vitos.models.tiny import write_tiny_model

        with tempfile.TemporaryDirectory() as tmp:
            return meta_build(cfg, str(write_tiny_model(Path(tmp) / "tiny-model", seed=0)))
    model = build_on_meta(path)
    model.to(getattr(torch, precision(cfg, LaunchFacts())[0]))  # the dtype the trainer loads the weights in
    shape = model_shape(model.config, model)
    processor_max = _processor_max_pixels(path)
    if processor_max and shape.tokens_per_image is None:
        shape = replace(shape, default_max_pixels=processor_max)
    vision = sum(p.numel() for mod in vision_modules(model) for p in mod.parameters())
    m = cfg.model
    policy = build_policy(SimpleNamespace(model=model), PruneConfig(), m.lora, m.lora_r, m.lora_alpha, m.lora_dropout,
                          m.freeze_vision, False, need_reference=False)  # the reference is counted, not built
    if getattr(cfg.optim, "fp32_master_weights", False):  # as the trainer: the optimiser updates float32 weights
        for p in policy.parameters():
            if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
                p.data = p.data.float()
    by_dtype: dict[str, int] = {}
    trainable_by_dtype: dict[str, int] = {}
    for p in policy.parameters():
        name = str(p.dtype).replace("torch.", "")
        by_dtype[name] = by_dtype.get(name, 0) + p.numel()
        if p.requires_grad:
            trainable_by_dtype[name] = trainable_by_dtype.get(name, 0) + p.numel()
    return shape, ParamCounts(total=sum(by_dtype.values()), trainable=sum(trainable_by_dtype.values()),
                              by_dtype=by_dtype, trainable_by_dtype=trainable_by_dtype, vision=vision)


_LABELS = {
    "weights": "weights", "master_weights": "master weights (fp32)", "gradients": "gradients",
    "ddp_buckets": "DDP gradient buckets", "autocast_copies": "autocast 16-bit weight copies",
    "optimizer": "AdamW state (2 moments)", "reference": "reference model",
    "gathered": "gathered shards", "kv_cache": "rollout KV cache", "prefill": "rollout prefill activations",
    "activations": "update activations (1 micro-batch)",
    "recompute": "checkpoint recompute (1 layer)", "logits": "update logits (1 micro-batch)",
    "grad_cosine": "gradient-cosine copies",
}


def format_report(cfg: Any, shape: ModelShape, params: ParamCounts, launch: LaunchFacts, est: MemoryEstimate,
                  gpu_memory_gb: float = 80.0, usable_fraction: float = 0.9,
                  text_tokens: int = DEFAULT_TEXT_TOKENS) -> tuple[str, bool]:
    """The dry-run table, totals and verdict line; returns (text, fits)."""
    n = launch.num_processes
    b, rg, rs = local_rows(cfg, n)
    max_pixels = getattr(cfg.model, "max_pixels", None)
    vis = visual_tokens_per_image(shape, max_pixels)
    vis_src = ("fixed grid" if shape.tokens_per_image is not None else
               f"model.max_pixels={max_pixels}" if max_pixels else f"processor max_pixels={shape.default_max_pixels}")
    g = _size
    dtype, mixed = precision(cfg, launch)
    how = f"LoRA r={cfg.model.lora_r}" if cfg.model.lora else "full fine-tuning"
    lines = [
        f"vitos train --dry-run: {cfg.model.name_or_path} ({shape.family}), {n} process(es), {launch.kind}, "
        f"weights loaded as {dtype}, compute {mixed}, launch mixed precision {launch.mixed_precision} "
        f"[{launch.source}]",
        f"parameters: {_count(params.total)} total ({_count(params.vision)} vision), "
        f"{_count(params.trainable)} trainable ({how}); "
        f"as loaded: " + ", ".join(f"{d} {_count(c)}" for d, c in params.by_dtype.items()),
        f"per process: {b} questions -> {rg} grounding + {rs} sparse rollouts; prompt <= "
        f"{prompt_tokens(shape, max_pixels, text_tokens):,} tokens ({text_tokens} text + {vis:,} visual, {vis_src}) "
        f"+ {cfg.rollout.max_new_tokens:,} new; generate {generation_rows(cfg, n)} rows per call; "
        f"{rows_per_micro_batch(cfg, n)} rows per micro-batch",
        "",
        f"{'per GPU':36s} {'phase':8s} {'size':>10s}  formula",
    ]
    for phase, keys in (("resident", est.RESIDENT), ("rollout", est.ROLLOUT), ("update", est.UPDATE)):
        for k in keys:
            v = getattr(est, k)
            if v or k in ("weights", "gradients", "optimizer", "kv_cache", "logits"):
                lines.append(f"{_LABELS[k]:36s} {phase:8s} {g(v)}  {est.formulas.get(k, '-')}")
    usable = gpu_memory_gb * usable_fraction * GIB
    lines += [
        "",
        f"{'resident':36s} {'':8s} {g(est.resident)}",
        f"{'rollout phase':36s} {'':8s} {g(est.rollout_phase)}",
        f"{'update phase':36s} {'':8s} {g(est.update_phase)}",
        f"{'peak = resident + max(phases)':36s} {'':8s} {g(est.peak)}  of {gpu_memory_gb:g} GiB "
        f"({usable / GIB:.1f} GiB usable at {usable_fraction:.0%})",
        "",
        f"{'disk (all processes)':36s} {'':8s} {'size':>10s}",
        f"{'one checkpoint':36s} {'':8s} {g(est.checkpoint)}  {est.formulas.get('checkpoint', '')}",
        f"{'checkpoints kept':36s} {'':8s} {g(est.checkpoints_kept)}  {est.formulas.get('checkpoints_kept', '')}",
        f"{'final export':36s} {'':8s} {g(est.final_export)}  {est.formulas.get('final_export', '')}",
        f"{'peak while saving (+1 being written)':36s} {'':8s} {g(est.disk_peak)}",
    ]
    if (launch.distributed_type == "DEEPSPEED" and launch.gradient_accumulation_steps is not None
            and launch.gradient_accumulation_steps != cfg.optim.micro_batches):
        lines.append(f"warning: the DeepSpeed config accumulates {launch.gradient_accumulation_steps} micro-batches "
                     f"but optim.micro_batches is {cfg.optim.micro_batches}; the trainer will stop")
    fits = est.peak <= usable
    if fits:
        lines.append(f"verdict: fits ({_size(est.peak).strip()} of {usable / GIB:.1f} GiB usable per GPU)")
    else:
        big = ", ".join(f"{_LABELS[k]} {_size(v).strip()}" for k, v in est.largest(3))
        lines.append(f"verdict: does not fit ({_size(est.peak).strip()} of {usable / GIB:.1f} GiB usable per GPU): "
                     f"{big}")
    return "\n".join(lines), fits


def _count(n: float) -> str:
    """Parameter count with a unit: 8.29B, 40.4M, 983.0K."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}" if unit == "B" else f"{n / scale:.1f}{unit}"
    return f"{int(n)}"


def _size(n: float) -> str:
    """Bytes right-aligned in 10 characters: GiB from 0.1 GiB up, else MiB (KiB below 0.1 MiB)."""
    if n >= 0.1 * GIB:
        return f"{n / GIB:6.2f} GiB"
    if n >= 0.1 * 1024**2:
        return f"{n / 1024**2:6.2f} MiB"
    return f"{n / 1024:6.2f} KiB"


def dry_run(cfg: Any, launch: LaunchFacts, gpu_memory_gb: float = 80.0,
            name_or_path: str | None = None) -> tuple[str, bool]:
    """Meta-build cfg's policy, estimate per-GPU memory and disk, and format the report: (text, fits)."""
    from vitos.models import ModelLoadError

    try:
        shape, params = meta_build(cfg, name_or_path)
    except ModelLoadError as err:  # the CLI reports ValueErrors as a one-line error
        raise ValueError(str(err)) from err
    est = estimate_memory(cfg, shape, params, launch)
    return format_report(cfg, shape, params, launch, est, gpu_memory_gb)

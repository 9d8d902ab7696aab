"""The trainable policy as one `nn.Module`, so accelerate's DDP/FSDP/DeepSpeed wrappers see every call.

Why a wrapper: the adapter calls submodules (vision tower, language model, head) directly. Under DDP,
FSDP or ZeRO-3, a submodule called outside the wrapped module's `forward` bypasses gradient
synchronisation or parameter gathering. `Policy.forward(op, ...)` is therefore the only door:

    op="logprobs"      (B, T) completion log-probs of assembled (full or sparse) prompts, with grad
    op="ref_logprobs"  the same under the reference policy (LoRA: adapters disabled; full: frozen copy)
    op="lm" / "embed" / "encode"   what `PolicyView` routes the adapter's calls through during rollouts

`PolicyView(wrapped_policy, adapter)` is a `ModelAdapter` whose parameter-touching methods call the
wrapped module, so `vitos.engine.generate` and `vitos.pipeline.encode` work unchanged on it.

Trainable parameters (`build_policy`): LoRA on the language model only (attention q/k/v/o and MLP
gate/up/down of `model.language_model.layers.N`; the vision MLP uses the same leaf names, hence the
anchored regex, REFERENCE §2), or full fine-tuning with the vision tower optionally frozen.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitos.engine import LOGPROB_CHUNK, completion_logprobs
from vitos.models.base import EncodedImage, ModelAdapter, Prompt
from vitos.pipeline import PruneConfig
from vitos.pruning.sparse import assemble

LM_LORA_TARGETS = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
"""peft `target_modules` regex (full match on module names): language-model projections only."""

_VISION_ATTRS = ("visual", "vision_tower", "multi_modal_projector", "mm_projector")


@dataclass
class ScoreRequest:
    """One row to re-score: a prompt (with its images' keep masks) and a sampled completion."""

    prompt: Prompt
    """The branch's prompt of the row's question (unpruned ids and positions)."""
    image_ids: list[int]
    """Indices of the question's images in the feature list passed along with the batch."""
    keeps: list[torch.Tensor | None]
    """Per image: (H, W) keep mask, None = all tokens (grounding rows)."""
    completion: torch.Tensor
    """(T,) sampled token ids."""


def pack(requests: list[ScoreRequest], n_images: int) -> tuple[list[ScoreRequest], list[int]]:
    """Renumber the images a chunk of requests uses: returns requests indexing 0..k-1 and the k original ids,
    so a trainable vision tower encodes only the chunk's images (once each)."""
    used = sorted({i for r in requests for i in r.image_ids})
    if used and used[-1] >= n_images:
        raise ValueError(f"a request points at image {used[-1]} but only {n_images} images were given")
    remap = {old: new for new, old in enumerate(used)}
    return [ScoreRequest(r.prompt, [remap[i] for i in r.image_ids], r.keeps, r.completion) for r in requests], used


class Policy(nn.Module):
    """The VLM being trained (and, for beta > 0 with full fine-tuning, its frozen reference)."""

    def __init__(self, adapter: ModelAdapter, prune: PruneConfig, trainable: nn.Module, reference: ModelAdapter | None = None,
                 autocast_dtype: torch.dtype | None = None, logprob_chunk: int = LOGPROB_CHUNK):
        super().__init__()
        self.model = trainable  # the PeftModel (LoRA) or the HF model itself: registers every parameter once
        self.adapter = adapter  # plain attribute: its .model is the module registered above
        self.prune = prune
        self.reference_adapter = reference
        self.autocast_dtype = autocast_dtype
        """Compute dtype of every op (torch.autocast) over float32 master weights; None = the weights' dtype."""
        if logprob_chunk < 1:
            raise ValueError(f"logprob_chunk must be >= 1 completion position, got {logprob_chunk}")
        self.logprob_chunk = logprob_chunk
        """Completion positions whose vocabulary logits exist at once in the log-prob pass
        (`vitos.engine.completion_logprobs(chunk_size=)`); values do not depend on it, peak memory does."""
        if reference is not None:
            self.reference = reference.model  # registered so FSDP/ZeRO shard it too; frozen

    def forward(self, op: str, *args: Any, **kwargs: Any) -> Any:
        if self.autocast_dtype is None:
            return self._dispatch(op, *args, **kwargs)
        device_type = next(self.model.parameters()).device.type
        with torch.autocast(device_type=device_type, dtype=self.autocast_dtype):
            return self._dispatch(op, *args, **kwargs)

    def _dispatch(self, op: str, *args: Any, **kwargs: Any) -> Any:
        if op == "logprobs":
            return self._logprobs(self.adapter, *args, **kwargs)
        if op == "ref_logprobs":
            return self._ref_logprobs(*args, **kwargs)
        if op == "lm":
            return self.adapter.lm_forward(*args, **kwargs)
        if op == "embed":
            return self.adapter.embed_tokens(*args)
        if op == "encode":
            return self.adapter.encode_images(*args)
        raise ValueError(f"unknown Policy op {op!r}; use logprobs, ref_logprobs, lm, embed or encode")

    def _logprobs(self, adapter: ModelAdapter, requests: list[ScoreRequest], features: list[EncodedImage] | None = None,
                  images: list[Any] | None = None, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) log-probs and mask under the sampling policy: softmax(logits / temperature) over the
        vocabulary the decoder may sample. `images` (PIL) re-encodes with grad (trainable vision tower), once
        per image for this forward; otherwise the rollout's `features` are used as constants."""
        if images is not None:
            features = adapter.encode_images(images)
        assert features is not None, "pass the rollout features, or the images to re-encode them"
        seqs = [
            assemble(adapter, r.prompt, [features[i] for i in r.image_ids], r.keeps,
                     fusion=self.prune.fusion, num_contextual=self.prune.num_contextual)
            for r in requests
        ]
        comps = [r.completion for r in requests]
        return completion_logprobs(adapter, seqs, comps, temperature=temperature, suppress=True,
                                   chunk_size=self.logprob_chunk)  # (B, T), (B, T)

    @torch.no_grad()
    def _ref_logprobs(self, requests: list[ScoreRequest], features: list[EncodedImage], temperature: float = 1.0) -> torch.Tensor:
        """The reference policy at the same temperature (TRL's convention for the KL term)."""
        if self.reference_adapter is not None:
            return self._logprobs(self.reference_adapter, requests, features, temperature=temperature)[0]
        if not hasattr(self.model, "disable_adapter"):
            raise RuntimeError("beta > 0 needs a reference: build the policy with reference=... or use LoRA")
        with self.model.disable_adapter():  # LoRA: the base model is the reference, no second copy
            return self._logprobs(self.adapter, requests, features, temperature=temperature)[0]


class PolicyView:
    """A `ModelAdapter` that routes embed/lm/encode through the (possibly wrapped) policy's forward."""

    def __init__(self, wrapped: nn.Module, adapter: ModelAdapter, generation_sync: Any = None):
        self._wrapped = wrapped
        self._adapter = adapter
        self.generation_sync = generation_sync
        """`fn(local_done) -> all_done` when weights are sharded (FSDP / ZeRO-3): `vitos.engine.generate`
        then keeps every rank stepping until all are done; None otherwise."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._wrapped("embed", input_ids)

    def lm_forward(self, inputs_embeds, positions, attention_mask, cache=None, logits_to_keep=0):
        return self._wrapped("lm", inputs_embeds, positions, attention_mask, cache, logits_to_keep)

    def encode_images(self, images: list[Any]) -> list[EncodedImage]:
        return self._wrapped("encode", images)


def vision_modules(model: nn.Module) -> list[nn.Module]:
    """The vision tower and projector of a HF VLM (Qwen2.5-VL `model.visual`, LLaVA `vision_tower` + projector)."""
    found = []
    for owner in (getattr(model, "model", None), model):
        for name in _VISION_ATTRS:
            mod = getattr(owner, name, None) if owner is not None else None
            if isinstance(mod, nn.Module) and all(mod is not m for m in found):
                found.append(mod)
    if not found:
        raise ValueError(f"cannot find the vision tower of {type(model).__name__} (looked for {_VISION_ATTRS})")
    return found


def build_policy(adapter: ModelAdapter, prune: PruneConfig, lora: bool = True, lora_r: int = 16, lora_alpha: int = 32,
                 lora_dropout: float = 0.0, freeze_vision: bool = True, gradient_checkpointing: bool = False,
                 need_reference: bool = False, autocast_dtype: torch.dtype | None = None,
                 logprob_chunk: int = LOGPROB_CHUNK) -> Policy:
    """Make the adapter's model trainable as configured (LoRA injected in place: `adapter.model` keeps working).
    logprob_chunk: completion positions per head call in the log-prob pass (`Policy.logprob_chunk`)."""
    model = adapter.model
    reference = None
    if need_reference and not lora:  # LoRA uses the adapters-disabled base model instead of a copy
        reference = copy.copy(adapter)
        reference.model = copy.deepcopy(model).requires_grad_(False).eval()
    if lora:
        from peft import LoraConfig, get_peft_model

        model.requires_grad_(False)
        config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias="none",
                            target_modules=LM_LORA_TARGETS)
        trainable: nn.Module = get_peft_model(model, config)
    else:
        model.requires_grad_(True)
        if freeze_vision:
            for mod in vision_modules(model):
                mod.requires_grad_(False)
        trainable = model
    if gradient_checkpointing:  # non-reentrant: works with frozen embeddings (LoRA) without extra hooks
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not any(p.requires_grad for p in trainable.parameters()):
        raise ValueError("no trainable parameters: check model.lora / model.freeze_vision")
    return Policy(adapter, prune, trainable, reference, autocast_dtype, logprob_chunk)


def merge_lora_state(state: dict[str, torch.Tensor], scale: float, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """A peft LoRA state dict (base_layer + lora_A/B keys) -> plain keys with W + scale * B @ A merged in."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        if key.endswith(".base_layer.weight"):
            stem = key[: -len(".base_layer.weight")]
            a = state[f"{stem}.lora_A.{adapter_name}.weight"].float()  # (r, in)
            b = state[f"{stem}.lora_B.{adapter_name}.weight"].float()  # (out, r)
            out[f"{stem}.weight"] = (value.float() + scale * (b @ a)).to(value.dtype)  # (out, in)
        else:
            out[key.replace(".base_layer.", ".")] = value
    return out


def merged_weights(state: dict[str, torch.Tensor], lora_scale: float | None) -> dict[str, torch.Tensor]:
    """`accelerator.get_state_dict(policy)` -> the base model's weights under its own names: the `model.` sub-tree
    (a frozen `reference.` dropped), LoRA merged in when `lora_scale` (alpha / r) is given. What `export_model`
    writes and what a rollout engine loads after every step (vitos.vllm_engine.engine.VllmEngine.load_weights)."""
    own = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    if lora_scale is None:
        return own
    return merge_lora_state({k[len("base_model.model."):] if k.startswith("base_model.model.") else k: v
                             for k, v in own.items()}, lora_scale)


def export_model(policy: Policy, state: dict[str, torch.Tensor], out_dir: str | Path, lora_scale: float | None) -> Path:
    """Write a folder `vitos.models.load_model` can load (LoRA merged in; the adapter also under adapter/).

    `state` is the gathered state dict of the (unwrapped) policy, `accelerator.get_state_dict(policy)`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf = policy.adapter.model
    if lora_scale is not None:
        policy.model.save_pretrained(out / "adapter", state_dict={k[len("model."):]: v for k, v in state.items()
                                                                  if k.startswith("model.")})
    hf.save_pretrained(out, state_dict=merged_weights(state, lora_scale))
    policy.adapter.tokenizer.save_pretrained(out)
    processor = getattr(policy.adapter, "image_processor", None)
    if processor is not None:
        processor.save_pretrained(out)
    return out

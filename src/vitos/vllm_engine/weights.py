"""The trainer's state dict -> the base model's weights with LoRA merged in, for the rollout engine (no vLLM).

    weights = policy_weights(acc.get_state_dict(policy), lora_scaling=alpha / r)
    engine.load_weights(weights)

`vitos.rl.policy.Policy` registers the trained module as `model.` (and a frozen reference as `reference.`);
with LoRA that module is a PeftModel (`base_model.model.` prefix, `<layer>.base_layer.weight` plus
`<layer>.lora_A.<adapter>.weight` (r, in) and `lora_B` (out, r)). vLLM wants plain merged weights under the
Hugging Face names: W = W_base + scaling * B @ A (peft's `merge_and_unload`, checked in tests).
"""

from __future__ import annotations

import torch

PEFT_PREFIX = "base_model.model."


def merge_lora_state(state: dict[str, torch.Tensor], scaling: float, adapter: str = "default") -> dict[str, torch.Tensor]:
    """A (PeftModel) state dict -> plain HF names with every LoRA pair merged into its base weight.

    Tensors are used as they are (no copy) except merged weights, computed in float32 and cast back to the
    base weight's dtype. A state without LoRA keys comes back with the same tensors."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue  # folded into its base weight below
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        if ".base_layer." in key:
            layer = key[: key.index(".base_layer.")]
            name = name.replace(".base_layer.", ".")
            a, b = state.get(f"{layer}.lora_A.{adapter}.weight"), state.get(f"{layer}.lora_B.{adapter}.weight")
            if key.endswith(".weight") and a is not None and b is not None:
                value = (value.float() + scaling * (b.float() @ a.float())).to(value.dtype)  # (out, in)
        out[name] = value
    return out


def policy_weights(state: dict[str, torch.Tensor], lora_scaling: float | None) -> dict[str, torch.Tensor]:
    """`acc.get_state_dict(policy)` -> the weights vLLM loads: the `model.` sub-tree (the reference dropped),
    LoRA merged when `lora_scaling` (alpha / r) is given."""
    mine = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    return merge_lora_state(mine, lora_scaling) if lora_scaling is not None else mine

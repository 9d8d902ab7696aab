"""Model loading: a hub id or a local folder -> the family's `ModelAdapter`.

    from vitos.models import load_model
    adapter = load_model("lingshu-medical-mllm/Lingshu-7B", dtype="bfloat16", device="cuda")
    adapter = load_model("/tmp/tiny")            # a `vitos tiny-model` folder, same code path

Weights load with safetensors only and never with `trust_remote_code`. The family is read from the
config's `model_type`; checkpoints that ship custom code (HuatuoGPT-Vision-7B's `llava_qwen2`) are detected
from the raw config.json, before AutoConfig (which does not know their type), and mapped onto
transformers' own classes by their family module (`vitos.models.llava_qwen2`).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from vitos.models.base import EncodedImage, ModelAdapter, Prompt

SUPPORTED_MODEL_TYPES = {
    "qwen2_5_vl": "Qwen2.5-VL (Lingshu-7B, HuatuoGPT-Vision-7B-Qwen2.5VL, Qwen2.5-VL-*)",
    "llava_qwen2": "LLaVA-Qwen2 (HuatuoGPT-Vision-7B), loaded as transformers' LLaVA",
}

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what was wrong and what to do."""


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[dtype]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _custom_code_type(name_or_path: str) -> str | None:
    """'llava_qwen2' when the raw config.json says so (AutoConfig cannot read that type), else None."""
    from vitos.models.llava_qwen2 import MODEL_TYPE, read_raw_config

    raw = read_raw_config(name_or_path)
    return MODEL_TYPE if raw is not None and raw.get("model_type") == MODEL_TYPE else None


def read_config(name_or_path: str) -> Any:
    """The model's transformers config; for a `llava_qwen2` checkpoint, the `LlavaConfig` it maps onto."""
    from transformers import AutoConfig

    if _custom_code_type(name_or_path) is not None:
        from vitos.models.llava_qwen2 import llava_config_from_huatuo, read_raw_config, vision_config_from_huatuo

        raw = read_raw_config(name_or_path)
        base = name_or_path if os.path.isdir(name_or_path) else os.path.dirname(name_or_path) or None
        return llava_config_from_huatuo(raw, vision_config_from_huatuo(raw, base))
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - re-raised with a message a user can act on
        raise ModelLoadError(
            f"cannot read a model config from {name_or_path!r}: {err}\n"
            "Pass a hub id (e.g. lingshu-medical-mllm/Lingshu-7B) or a local folder with config.json; "
            "`vitos tiny-model OUT` writes a small offline one."
        ) from err


def build_on_meta(name_or_path: str) -> Any:
    """Construct the model of a config (hub id, folder or config.json) on the meta device: no weights,
    no memory; used to count parameters and plan sharding before a download."""
    config = read_config(name_or_path)
    from transformers import LlavaConfig, LlavaForConditionalGeneration, Qwen2_5_VLForConditionalGeneration

    if isinstance(config, LlavaConfig) and _custom_code_type(name_or_path) is not None:
        cls = LlavaForConditionalGeneration
    elif getattr(config, "model_type", None) == "qwen2_5_vl":
        cls = Qwen2_5_VLForConditionalGeneration
    else:
        raise ModelLoadError(f"build_on_meta supports {sorted(SUPPORTED_MODEL_TYPES)}, got {config.model_type!r}")
    with torch.device("meta"):
        return cls(config)


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype = "auto",
    device: str = "auto",
    attn_implementation: str = "sdpa",
) -> ModelAdapter:
    """Load a supported VLM and wrap it in its family adapter (eval mode; the trainer switches modes)."""
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    if _custom_code_type(name_or_path) == "llava_qwen2":
        from vitos.models.llava_qwen2 import load_huatuo

        return load_huatuo(name_or_path, torch_dtype, dev, attn_implementation)
    config = read_config(name_or_path)
    model_type = getattr(config, "model_type", None)
    if model_type == "qwen2_5_vl":
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        from vitos.models.qwen2_5_vl import QwenVLAdapter

        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            name_or_path, dtype=torch_dtype, attn_implementation=attn_implementation, use_safetensors=True,
            trust_remote_code=False,
        ).to(dev)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(name_or_path)
        return QwenVLAdapter(model, tokenizer, image_processor)
    raise ModelLoadError(
        f"{name_or_path!r} has model_type {model_type!r}, which vitos does not support. "
        f"Supported: {', '.join(f'{k} ({v})' for k, v in SUPPORTED_MODEL_TYPES.items())}."
    )


__all__ = ["EncodedImage", "ModelAdapter", "ModelLoadError", "Prompt", "build_on_meta", "load_model", "resolve_dtype", "resolve_device"]

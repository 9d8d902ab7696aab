"""Model loading: a hub id or a local folder -> the family's `ModelAdapter`.

    from vitos.models import load_model
    adapter = load_model("lingshu-medical-mllm/Lingshu-7B", dtype="bfloat16", device="cuda")
    adapter = load_model("/tmp/tiny")            # a `vitos tiny-model` folder, same code path

Weights load with safetensors only and never with `trust_remote_code`. The family is the raw config.json's
`model_type`, looked up in `FAMILIES`; checkpoints that ship custom code (HuatuoGPT-Vision-7B's
`llava_qwen2`, which AutoConfig does not know) are mapped onto transformers' own classes by their family
module (`vitos.models.llava_qwen2`). docs/adding_a_model_family.md says how to add one.
"""

from __future__ import annotations

import importlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from vitos.models.base import EncodedImage, ModelAdapter, Prompt


@dataclass(frozen=True)
class Family:
    """One supported `model_type`: how to load it (and, for types AutoConfig cannot read, its config)."""

    description: str
    """Which checkpoints this is, for error messages and docs."""
    loader: str
    """'module:function' with signature (name_or_path, dtype, device, attn_implementation) -> ModelAdapter
    (plus an optional `max_pixels` keyword for families whose image size is configurable)."""
    config: str | None = None
    """'module:function' name_or_path -> transformers config, for custom-code types; None = AutoConfig."""


FAMILIES: dict[str, Family] = {
    "qwen2_5_vl": Family(
        "Qwen2.5-VL (Lingshu-7B, HuatuoGPT-Vision-7B-Qwen2.5VL, Qwen2.5-VL-*)", "vitos.models:_load_qwen2_5_vl"
    ),
    "llava_qwen2": Family(
        "LLaVA-Qwen2 (HuatuoGPT-Vision-7B, original custom-code release), loaded as transformers' LLaVA",
        "vitos.models.llava_qwen2:load_huatuo", config="vitos.models.llava_qwen2:read_huatuo_config",
    ),
    "llava": Family(
        "transformers' LLaVA with a Qwen2 LM (a converted or vitos-trained HuatuoGPT-Vision-7B)",
        "vitos.models.llava_qwen2:load_llava",
    ),
}
"""config.json `model_type` -> family. Adding a family: one module with its adapter and loader, one entry here."""

SUPPORTED_MODEL_TYPES = {name: fam.description for name, fam in FAMILIES.items()}

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


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def read_raw_config(name_or_path: str) -> dict[str, Any] | None:
    """config.json of a folder, a .json file or a hub id as a plain dict; None when it cannot be read."""
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        try:
            from transformers.utils import cached_file

            found = cached_file(name_or_path, "config.json", _raise_exceptions_for_missing_entries=False)
        except Exception:  # noqa: BLE001 - unknown repo / offline: read_config reports AutoConfig's error
            return None
        if found is None:
            return None
        path = Path(found)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_config(name_or_path: str) -> Any:
    """The model's transformers config; a custom-code type (`llava_qwen2`) gives the config it maps onto."""
    from transformers import AutoConfig

    raw = read_raw_config(name_or_path)
    family = FAMILIES.get(raw.get("model_type")) if raw is not None else None
    if family is not None and family.config is not None:
        return _resolve(family.config)(name_or_path)
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
    from transformers import AutoModelForImageTextToText

    config = read_config(name_or_path)
    if config.model_type not in FAMILIES:
        raise ModelLoadError(f"build_on_meta supports {sorted(FAMILIES)}, got {config.model_type!r}")
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype = "auto",
    device: str = "auto",
    attn_implementation: str = "sdpa",
    max_pixels: int | None = None,
) -> ModelAdapter:
    """Load a supported VLM and wrap it in its family adapter (eval mode; the trainer switches modes).

    max_pixels: cap on the pixels an image is resized to (Qwen2.5-VL: the image processor's max_pixels /
    `size.longest_edge`, so at most max_pixels / (28 x 28) visual tokens per image); None keeps the
    checkpoint's preprocessor_config.json. Families with a fixed input size (LLaVA / HuatuoGPT-Vision:
    336 x 336, 576 tokens) ignore it: only loaders that take a `max_pixels` keyword receive it.
    """
    check_local_model(name_or_path)
    raw = read_raw_config(name_or_path)
    # The raw model_type first: AutoConfig cannot read custom-code types such as llava_qwen2.
    model_type = raw.get("model_type") if raw is not None else getattr(read_config(name_or_path), "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None:
        raise ModelLoadError(
            f"{name_or_path!r} has model_type {model_type!r}, which vitos does not support. "
            f"Supported: {', '.join(f'{k} ({v})' for k, v in SUPPORTED_MODEL_TYPES.items())}."
        )
    loader = _resolve(family.loader)
    extra: dict[str, Any] = {}
    if max_pixels is not None and "max_pixels" in inspect.signature(loader).parameters:
        extra["max_pixels"] = max_pixels
    torch_dtype, torch_device = resolve_dtype(dtype), resolve_device(device)
    try:
        return loader(name_or_path, torch_dtype, torch_device, attn_implementation, **extra)
    except ModelLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged folder fails in many library calls; say which file
        detail = " ".join(str(err).split())[:300]
        folder = Path(name_or_path)
        for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:  # tokenizer / processor files
            try:
                json.loads(f.read_text())
            except (OSError, ValueError) as bad:
                raise ModelLoadError(f"{f} is damaged (not readable JSON: {bad}); re-download or re-export the model") from err
        raise ModelLoadError(f"cannot load the model {name_or_path!r} ({type(err).__name__}: {detail}); "
                             "re-download or re-export it") from err


def _looks_local(name: str) -> bool:
    """A path rather than a hub id (`org/name`): absolute, relative with ./ ../ ~, or more than one slash."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or "\\" in name


def check_local_model(name_or_path: str) -> None:
    """A local model folder must hold a readable config.json and complete safetensors weights; raises one
    ModelLoadError naming the missing, truncated or corrupt file. Hub ids are left to the loader."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        if _looks_local(str(name_or_path)):
            raise ModelLoadError(f"model folder {name_or_path} does not exist; pass a local model folder or a hub id "
                                 "(`vitos tiny-model OUT` writes a small offline one)")
        return
    if not path.is_dir():
        if path.suffix == ".json":
            return  # a config.json alone (build_on_meta, dry runs): no weights expected
        raise ModelLoadError(f"--model {name_or_path} is a file; pass the model folder that holds config.json")
    config = path / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"{path} has no config.json: it is not a model folder; pass the folder a model was saved in")
    try:
        json.loads(config.read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{config} is damaged (not readable JSON: {err}); re-download or re-export the model") from err
    if not (path / "tokenizer_config.json").is_file():
        raise ModelLoadError(f"{path / 'tokenizer_config.json'} is missing (an incomplete download or export); "
                             "re-download or re-export the model")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ModelLoadError(f"{index} is damaged ({type(err).__name__}: {err}); re-download or re-export the model") from err
    elif (path / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        other = sorted(f.name for f in path.glob("*.bin")) + sorted(f.name for f in path.glob("*.pt"))
        hint = (f" (it has {', '.join(other[:3])}: vitos loads safetensors only, never pickled weights; convert them "
                "with save_pretrained(..., safe_serialization=True))") if other else ""
        raise ModelLoadError(f"{path} has no model weights (model.safetensors or model.safetensors.index.json){hint}; "
                             "re-download or re-export the model")
    from safetensors import safe_open

    for shard in shards:
        file = path / shard
        if not file.is_file():
            raise ModelLoadError(f"{file} is missing (listed in {index.name}); re-download or re-export the model")
        try:
            with safe_open(str(file), "pt") as fh:
                fh.keys()
        except Exception as err:  # noqa: BLE001 - safetensors' own error type, one per kind of damage
            raise ModelLoadError(f"{file} is truncated or corrupt ({' '.join(str(err).split())[:160]}); "
                                 "re-download or re-export the model") from err


def _load_qwen2_5_vl(
    name_or_path: str, dtype: torch.dtype, device: torch.device, attn_implementation: str,
    max_pixels: int | None = None,
) -> ModelAdapter:
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vitos.models.qwen2_5_vl import QwenVLAdapter

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        name_or_path, dtype=dtype, attn_implementation=attn_implementation, use_safetensors=True,
        trust_remote_code=False,
    ).to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(name_or_path)
    if max_pixels is not None:  # resize cap: at most max_pixels / (28 x 28) merged visual tokens per image
        if max_pixels < 28 * 28:
            raise ValueError(f"max_pixels {max_pixels} is below one 28 x 28 visual token")
        low = min(int(image_processor.size.shortest_edge or max_pixels), max_pixels)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(
            name_or_path, size={"shortest_edge": low, "longest_edge": max_pixels})
    return QwenVLAdapter(model, tokenizer, image_processor)


__all__ = [
    "FAMILIES", "EncodedImage", "Family", "ModelAdapter", "ModelLoadError", "Prompt", "build_on_meta", "check_local_model",
    "load_model",
    "read_config", "read_raw_config", "resolve_dtype", "resolve_device",
]

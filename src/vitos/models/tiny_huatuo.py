"""Tiny, randomly initialised HuatuoGPT-Vision checkpoints in the ORIGINAL `llava_qwen2` format.

`vitos tiny-model OUT_DIR --family huatuo [--seed N]` writes what a HuatuoGPT-Vision-7B release looks like,
only small, so the load-time conversion (`vitos.models.llava_qwen2`) runs offline on the real code path:

    config.json              model_type llava_qwen2, architectures LlavaQwen2ForCausalLM, Qwen2 fields at the
                             top level (hidden 64, 2 layers, GQA), mm_* fields, mm_vision_tower "clip_vision"
    model.safetensors        the original key names: model.layers.N.*, model.mm_projector.{0,2}.*,
                             model.vision_tower.vision_tower.vision_model.* (unless ship_vision_tower=False), lm_head
    tokenizer.json, tokenizer_config.json   the tiny byte-level BPE of `vitos.models.tiny`, HuatuoGPT's chat
                             format, no <image> token (as in LLaVA releases; the loader adds it)
    clip_vision/             what mm_vision_tower points at: a CLIPVisionModel (config + weights) and the CLIP
                             preprocessor config at 336 px -- the "pretrained CLIP" the checkpoint's tower
                             was fine-tuned from, so it holds DIFFERENT weights from the shipped tower

The grid is the real one: 336 px images, 14 px patches, 24 x 24 = 576 visual tokens. The LM's vocabulary is
padded past the tokenizer (like Qwen2-7B's 152064 rows for 151646 tokens) so `<image>` fits without a resize.

    from vitos.models.tiny_huatuo import write_tiny_huatuo
    write_tiny_huatuo("/tmp/tiny-huatuo")     # then: vitos infer --model /tmp/tiny-huatuo --image x.png ...

`position_sensitive=True` (tests only) writes the variant whose outputs notice wrong positions: q/k projections
x8, LM head x20, rope_theta 100 (`vitos.models.tiny.make_position_sensitive`; the module docstring of
`vitos.models.tiny` says why a random tiny model is otherwise nearly position-blind).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vitos.models.llava_qwen2 import HUATUO_CHAT_TEMPLATE, llava_key_to_huatuo

TOWER_DIR = "clip_vision"


def tiny_huatuo_configs(vocab_size: int, bos_eos_id: int, hidden: int = 64, layers: int = 2,
                        vision_hidden: int = 32, vision_layers: int = 2,
                        rope_theta: float = 1000000.0) -> tuple[dict[str, Any], Any]:
    """(original config.json dict, CLIPVisionConfig) of a tiny HuatuoGPT-Vision; every structural feature of
    the 7B model is kept (select layer -2 of a deeper tower, GQA, untied head, 336 px / 14 px grid)."""
    from transformers import CLIPVisionConfig

    vision = CLIPVisionConfig(
        hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=vision_layers,
        num_attention_heads=4, image_size=336, patch_size=14, projection_dim=vision_hidden,
    )
    original = {
        "architectures": ["LlavaQwen2ForCausalLM"],
        "model_type": "llava_qwen2",
        "attention_dropout": 0.0,
        "bos_token_id": bos_eos_id,
        "eos_token_id": bos_eos_id,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": 2 * hidden,
        "max_position_embeddings": 4096,
        "max_window_layers": layers,
        "num_attention_heads": 4,
        "num_hidden_layers": layers,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "rope_theta": rope_theta,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
        "freeze_mm_mlp_adapter": False,
        "image_aspect_ratio": "pad",
        "mm_hidden_size": vision_hidden,
        "mm_patch_merge_type": "flat",
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": TOWER_DIR,
        "tokenizer_model_max_length": 4096,
        "tokenizer_padding_side": "right",
        "tune_mm_mlp_adapter": False,
        "use_mm_proj": True,
    }
    return original, vision


def write_tiny_huatuo(
    out_dir: str | Path, seed: int = 0, ship_vision_tower: bool = True, vocab_size: int = 768,
    position_sensitive: bool = False,
) -> Path:
    """Write a tiny random HuatuoGPT-Vision checkpoint in the original format to `out_dir`.

    Same seed -> identical files. `ship_vision_tower=False` leaves the tower out of model.safetensors (some
    LLaVA releases do), so loading must take it from `clip_vision/`. `position_sensitive=True`: q/k x8,
    LM head x20, rope_theta 100 (module docstring); the default writes exactly what it always did.
    """
    from safetensors.torch import save_file
    from transformers import CLIPVisionModel, LlavaForConditionalGeneration
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from vitos.models.llava_qwen2 import CLIP_VIT_L_336_PREPROCESSOR, llava_config_from_huatuo
    from vitos.models.tiny import POSITION_SENSITIVE, _train_tokenizer, make_position_sensitive

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer(vocab_size)
    tok.eos_token = "<|endoftext|>"  # Qwen2 base convention; HuatuoGPT's cli.py pads with EOS too
    tok.chat_template = HUATUO_CHAT_TEMPLATE
    padded_vocab = -(-(len(tok) + 1) // 64) * 64  # room for the <image> token the loader adds
    theta = {"rope_theta": POSITION_SENSITIVE["rope_theta"]} if position_sensitive else {}
    original, vision = tiny_huatuo_configs(padded_vocab, tok.convert_tokens_to_ids("<|endoftext|>"), **theta)

    # The model in transformers' layout, then written under the original names.
    config = llava_config_from_huatuo(original, vision, image_token_id=len(tok))
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    if position_sensitive:
        make_position_sensitive(model)
    state = {llava_key_to_huatuo(k): v.contiguous() for k, v in model.state_dict().items()}
    if not ship_vision_tower:
        state = {k: v for k, v in state.items() if not k.startswith("model.vision_tower.")}
    assert all(not k.startswith("model.language_model") for k in state), "a key escaped the original naming"
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(original, indent=2, sort_keys=True) + "\n")
    tok.save_pretrained(out)

    # What mm_vision_tower points at: the CLIP the tower started from (its own seed, so different weights).
    torch.manual_seed(seed + 1)
    CLIPVisionModel(vision).save_pretrained(out / TOWER_DIR, safe_serialization=True)
    CLIPImageProcessorPil(**CLIP_VIT_L_336_PREPROCESSOR).save_pretrained(out / TOWER_DIR)
    return out

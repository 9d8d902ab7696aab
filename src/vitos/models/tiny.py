"""Tiny, randomly initialised Qwen2.5-VL checkpoints that load offline like a hub checkpoint.

`vitos tiny-model OUT_DIR [--seed N]` writes a complete checkpoint folder:

    config.json, model.safetensors       Qwen2_5_VLForConditionalGeneration (hidden 64, 2 layers, vision depth 2)
    tokenizer.json, tokenizer_config.json  a byte-level BPE with Qwen's special tokens and chat template
    preprocessor_config.json             Qwen2VLImageProcessor settings (28-px merged tokens)
    chat_template.jinja                  the Qwen2.5-VL chat template

It loads through exactly the code path of a real model (`vitos.models.load_model(path)`), so tests, the
demo and users without a GPU exercise the same code as Lingshu-7B does. Nothing is downloaded: the
tokenizer is trained here, deterministically, on a small built-in corpus (byte-level BPE covers any
text; the corpus only decides which strings get short encodings).

Run:  vitos tiny-model /tmp/tiny  &&  vitos infer --model /tmp/tiny --image scan.png --question "..."

Position-sensitive variant (`write_tiny_model(out, position_sensitive=True)`, tests only): a randomly
initialised tiny model is nearly position-blind. Its q/k projections (std 0.02) give attention logits of
~0.01, so attention is almost uniform whatever the rotary angles, and its LM head (std 0.02) gives
near-uniform next-token distributions: re-indexing the kept visual tokens 0..L-1 instead of keeping their
original M-RoPE positions moves the next-token log-probs by ~0.002 nat and never changes a greedy token, so
a test comparing pruned generation to a reference could pass with positions wrong. `make_position_sensitive`
scales the language model's q/k projections by 8 (attention logits x 64: sharp, position-dependent
attention) and the LM head by 20 (log-probs spread over several nats), and the variant lowers rope_theta to
100 so every M-RoPE section (the w section gets the lowest frequencies) turns by a useful angle over a
16-token image row. Re-indexing then moves the next-token log-probs by ~5 nat (see tests/test_engine.py).
Same seed -> the same weights as the default model except for those scaled tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Qwen2.5-VL's special tokens, in Qwen's order (ids differ in the tiny vocabulary; code never hard-codes ids).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Our output-format tags as single tokens: a tiny model learns the format far faster when a tag is one token.
FORMAT_TOKENS = ["<think>", "</think>", "<box>", "</box>", "<answer>", "</answer>"]

QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS_WORDS = """
yes no the a an is are there in of on at with without which what where how many does do this image
scan shows lesion mass nodule fracture normal abnormal left right upper lower middle organ kidney liver
lung heart brain spleen bladder bone chest abdomen head pelvis ct mri x-ray ultrasound axial coronal
sagittal dark bright round oval small large none present absent evidence region box answer think option
choices letter concise phrase given from directly with inside outside between enlarged effusion opacity
glioma meningioma tumor cyst hemorrhage infarct edema pneumonia pneumothorax cardiomegaly
answer with the option's letter from the given choices directly. answer yes or no.
You are a helpful assistant.
""".split()
_CORPUS_SNIPPETS = [
    "[[0.12,0.30,0.55,0.71]]",
    "[0.0,0.0,1.0,1.0]",
    "0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 1.0 0.05 0.25 0.75 0.33 0.66",
    "A. B. C. D. E. (A) (B) (C) (D)",
    "<think>The lesion lies in the upper left.</think><box>[[0.10,0.20,0.40,0.50]]</box><answer>yes</answer>",
]


def _train_tokenizer(vocab_size: int):
    """Train a deterministic byte-level BPE on the built-in corpus; returns a `Qwen2Tokenizer`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [" ".join(_CORPUS_WORDS)] * 4 + _CORPUS_SNIPPETS * 4 + _CORPUS_WORDS
    bpe.train_from_iterator(corpus, trainer=trainer)
    data = json.loads(bpe.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in data["model"]["merges"]]

    tok = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS[1:]})
    tok.add_tokens(FORMAT_TOKENS)
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    return tok


QWEN05B_SHAPE = dict(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vision_hidden=128)
"""`write_tiny_model(out, **QWEN05B_SHAPE)`: a language model of Qwen2.5-0.5B's shape with a small vision
tower, for CPU benchmarks (random weights, tiny vocabulary)."""


POSITION_SENSITIVE = dict(qk_scale=8.0, head_scale=20.0, rope_theta=100.0)
"""What `position_sensitive=True` applies (both tiny families): see the module docstring."""


def make_position_sensitive(model, qk_scale: float = POSITION_SENSITIVE["qk_scale"],
                            head_scale: float = POSITION_SENSITIVE["head_scale"]):
    """Scale, in place, the q/k projections (weights and biases) of every language-model attention layer by
    `qk_scale` and the LM head by `head_scale`; returns `model`.

    Works on any `*ForConditionalGeneration` whose text model is `model.model.language_model` (Qwen2.5-VL,
    LLaVA). The vision tower and everything else keep their random init. Attention logits grow by
    qk_scale**2, so attention weights depend strongly on the rotary angles, i.e. on positions; the head
    turns the resulting hidden-state differences into log-prob differences of several nats. rope_theta is a
    config field (the rotary frequencies are built from it at load time), so the writers set it separately.
    """
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.weight.mul_(qk_scale)
                if proj.bias is not None:
                    proj.bias.mul_(qk_scale)
        model.lm_head.weight.mul_(head_scale)
    return model


def tiny_config(vocab_size: int, token_ids: dict[str, int], hidden: int = 64, layers: int = 2, vision_depth: int = 2,
                heads: int = 4, kv_heads: int = 2, intermediate: int | None = None, vision_hidden: int | None = None,
                rope_theta: float = 10000.0):
    """A Qwen2.5-VL config small enough for CPU tests; every structural feature of the 7B model is kept
    (window + full attention blocks in the vision tower, 2x2 merger, M-RoPE with 3 sections, GQA)."""
    from transformers import Qwen2_5_VLConfig

    head_dim = hidden // heads
    half = head_dim // 2
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]  # (t, h, w); 7B: 16, 24, 24
    vision_hidden = vision_hidden or hidden
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=intermediate or 2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope},
            bos_token_id=token_ids["<|endoftext|>"],
            eos_token_id=token_ids["<|im_end|>"],
            pad_token_id=token_ids["<|endoftext|>"],
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=vision_depth,
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_heads=4,
            out_hidden_size=hidden,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[vision_depth - 1],
        ),
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
    )


def write_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    vision_depth: int = 2,
    vocab_size: int = 768,
    image_min_pixels: int = 56 * 56,
    image_max_pixels: int = 448 * 448,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    vision_hidden: int | None = None,
    position_sensitive: bool = False,
) -> Path:
    """Write a tiny random Qwen2.5-VL checkpoint (safetensors + tokenizer + processor) to `out_dir`.

    Same seed -> identical weights. `image_max_pixels` caps the processor's resize so a CPU forward
    stays fast (448x448 -> 16x16 = 256 merged visual tokens at most).
    `position_sensitive=True`: q/k projections x8, LM head x20, rope_theta 100 (`make_position_sensitive`,
    module docstring): a model whose outputs notice wrong positions, for tests. The default (False) writes
    exactly what it always did.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer(vocab_size)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    theta = {"rope_theta": POSITION_SENSITIVE["rope_theta"]} if position_sensitive else {}
    config = tiny_config(len(tok), ids, hidden=hidden, layers=layers, vision_depth=vision_depth, heads=heads,
                         kv_heads=kv_heads, intermediate=intermediate, vision_hidden=vision_hidden, **theta)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    if position_sensitive:
        make_position_sensitive(model)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    ip = Qwen2VLImageProcessorPil(size={"shortest_edge": image_min_pixels, "longest_edge": image_max_pixels})
    ip.save_pretrained(out)
    (out / "chat_template.jinja").write_text(QWEN2_5_VL_CHAT_TEMPLATE)
    from vitos.models.settings import ModelSettings, write_settings

    write_settings(out, ModelSettings(synthetic=True, made_by="vitos tiny-model"),
                   note="random weights, for tests and plumbing: not a medical model")
    return out

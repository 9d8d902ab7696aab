"""HuatuoGPT-Vision (llava_qwen2) on transformers' LLaVA: conversion, preprocessing, the 1-D engine path, commands."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import original_positions, plant_decode_after_length, random_image, reindexed
from vitos.data.sample import Sample
from vitos.engine import SamplingConfig, completion_logprobs, generate
from vitos.models import ModelLoadError, build_on_meta, load_model
from vitos.pruning.boxes import image_box_to_grid_box
from vitos.models.llava_qwen2 import (
    HUATUO_CHAT_TEMPLATE,
    LlavaQwen2Adapter,
    content_box,
    convert_huatuo_checkpoint,
    expand2square,
    huatuo_key_to_llava,
    llava_key_to_huatuo,
    render_prompt,
)
from vitos.models.qwen2_5_vl import QwenVLAdapter
from vitos.models.tiny_huatuo import write_tiny_huatuo
from vitos.pruning.boxes import boxes_to_keep_mask
from vitos.pruning.sparse import assemble, collate

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Position checks run on the default tiny checkpoint AND its position-sensitive variant (conftest): the default
# random model barely depends on positions; the *_notices_* tests plant wrong positions and show that each
# check fails on the sensitive one.
MODELS = ["huatuo", "sensitive_huatuo"]


def _same(seq):
    return seq


@pytest.fixture(scope="module")
def huatuo_dir(tmp_path_factory):
    return str(write_tiny_huatuo(tmp_path_factory.mktemp("huatuo") / "HuatuoGPT-Vision-7B", seed=0))


@pytest.fixture(scope="module")
def huatuo(huatuo_dir):
    return load_model(huatuo_dir, dtype="float32", device="cpu")


# ------------------------------------------------------------------------------------------ conversion
def test_original_keys_map_onto_transformers_llava_names_and_back():
    expected = {
        "model.embed_tokens.weight": "model.language_model.embed_tokens.weight",
        "model.layers.27.self_attn.q_proj.bias": "model.language_model.layers.27.self_attn.q_proj.bias",
        "model.norm.weight": "model.language_model.norm.weight",
        "lm_head.weight": "lm_head.weight",
        "model.mm_projector.0.weight": "model.multi_modal_projector.linear_1.weight",
        "model.mm_projector.2.bias": "model.multi_modal_projector.linear_2.bias",
        "model.vision_tower.vision_tower.vision_model.encoder.layers.3.mlp.fc1.weight":
            "model.vision_tower.encoder.layers.3.mlp.fc1.weight",
        "model.vision_tower.vision_tower.vision_model.pre_layrnorm.bias": "model.vision_tower.pre_layrnorm.bias",
    }
    for original, llava in expected.items():
        assert huatuo_key_to_llava(original) == llava
        assert llava_key_to_huatuo(llava) == original


def test_tiny_checkpoint_is_in_the_original_format_and_deterministic(huatuo_dir, tmp_path):
    cfg = json.loads(open(f"{huatuo_dir}/config.json").read())
    assert cfg["model_type"] == "llava_qwen2" and cfg["architectures"] == ["LlavaQwen2ForCausalLM"]
    assert cfg["mm_projector_type"] == "mlp2x_gelu" and cfg["mm_vision_select_layer"] == -2
    keys = set(load_file(f"{huatuo_dir}/model.safetensors"))
    assert {"model.mm_projector.0.weight", "model.mm_projector.2.weight", "model.embed_tokens.weight", "lm_head.weight",
            "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight"} <= keys
    assert not any(k.startswith(("model.language_model", "model.multi_modal_projector")) for k in keys)
    again = write_tiny_huatuo(tmp_path / "again", seed=0)
    assert (again / "model.safetensors").read_bytes() == open(f"{huatuo_dir}/model.safetensors", "rb").read()


def test_every_parameter_is_loaded_from_its_original_tensor(huatuo, huatuo_dir):
    original = load_file(f"{huatuo_dir}/model.safetensors")
    loaded = huatuo.model.state_dict()
    assert {huatuo_key_to_llava(k) for k in original} == set(loaded), "some parameter was left at its random init"
    for key, tensor in original.items():
        assert torch.equal(loaded[huatuo_key_to_llava(key)], tensor), key


def test_conversion_round_trip_gives_the_logits_of_a_direct_construction(huatuo):
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(0)  # the tiny writer's seed: the same random model, built directly in transformers' layout
    direct = LlavaForConditionalGeneration(huatuo.model.config).eval()
    ids = torch.tensor([[5, 9, 17] + [huatuo.image_token_id] * 576 + [40, 41, 42]])
    pixels = huatuo.preprocess([random_image(336, 336, 0)])
    with torch.no_grad():
        ours = huatuo.model(input_ids=ids, pixel_values=pixels).logits
        ref = direct(input_ids=ids, pixel_values=pixels).logits
    assert ours.shape == (1, 582, huatuo.model.config.text_config.vocab_size)
    assert (ours - ref).abs().max().item() <= 1e-6


def test_missing_tower_weights_come_from_mm_vision_tower_and_shipped_ones_win(huatuo, huatuo_dir, tmp_path):
    clip = load_file(f"{huatuo_dir}/clip_vision/model.safetensors")  # the "pretrained CLIP" beside the checkpoint
    name = "embeddings.patch_embedding.weight"
    clip_key = name if name in clip else f"vision_model.{name}"
    shipped = load_file(f"{huatuo_dir}/model.safetensors")[f"model.vision_tower.vision_tower.vision_model.{name}"]
    assert not torch.equal(clip[clip_key], shipped), "the fixture must give the two towers different weights"
    assert torch.equal(huatuo.model.model.vision_tower.state_dict()[name], shipped)

    bare = write_tiny_huatuo(tmp_path / "bare", seed=0, ship_vision_tower=False)
    assert not any("vision_tower" in k for k in load_file(bare / "model.safetensors"))
    ad = load_model(str(bare), dtype="float32", device="cpu")
    assert torch.equal(ad.model.model.vision_tower.state_dict()[name], clip[clip_key])
    assert torch.equal(ad.model.lm_head.weight, huatuo.model.lm_head.weight)


def test_converted_or_exported_checkpoint_loads_as_native_llava_with_the_same_model(huatuo, huatuo_dir, tmp_path):
    # What `convert_huatuo_checkpoint` and a training export (`save_pretrained`) write must load back: a
    # save must not reverse the load-time renaming into HuatuoGPT's names under a `llava` config.
    out = convert_huatuo_checkpoint(huatuo_dir, tmp_path / "converted")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llava" and cfg["text_config"]["model_type"] == "qwen2"
    assert not any(k.startswith("model.mm_projector") for k in load_file(out / "model.safetensors"))
    ad = load_model(str(out), dtype="float32", device="cpu")
    assert isinstance(ad, LlavaQwen2Adapter) and ad.image_token_id == huatuo.image_token_id
    ours, theirs = ad.model.state_dict(), huatuo.model.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert ad.image_processor.image_mean == huatuo.image_processor.image_mean
    with torch.no_grad():
        enc = huatuo.encode_images([random_image(100, 100, 13)])
    assert torch.equal(ad.build_prompt("q?", enc).input_ids, huatuo.build_prompt("q?", enc).input_ids)


def test_lora_targets_only_the_language_model_of_the_llava_layout(huatuo_dir):
    from vitos.pipeline import PruneConfig
    from vitos.rl.policy import build_policy

    ad = load_model(huatuo_dir, dtype="float32", device="cpu")  # LoRA is injected in place: a fresh copy
    policy = build_policy(ad, PruneConfig(), lora=True, lora_r=2)
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".language_model.layers." in n for n in trainable)
    # CLIP's attention has q/k/v_proj too: none of them may be adapted.
    assert not any("lora_" in n and "vision_tower" in n for n, _ in policy.model.named_parameters())
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_unsupported_llava_variant_is_refused_with_a_message(huatuo_dir, tmp_path):
    bad = tmp_path / "linear"
    shutil.copytree(huatuo_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["mm_projector_type"] = "linear"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="mm_projector_type='linear'"):
        load_model(str(bad), dtype="float32", device="cpu")


def test_qwen2_5vl_build_of_huatuo_dispatches_to_the_qwen_adapter(tiny_model_dir, tmp_path):
    # FreedomIntelligence/HuatuoGPT-Vision-7B-Qwen2.5VL has model_type qwen2_5_vl: the name must not matter.
    folder = tmp_path / "FreedomIntelligence" / "HuatuoGPT-Vision-7B-Qwen2.5VL"
    shutil.copytree(tiny_model_dir, folder)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    assert isinstance(load_model(str(folder), dtype="float32", device="cpu"), QwenVLAdapter)


def test_a_7b_huatuo_config_builds_on_meta_with_qwen2_7b_and_clip_l_sizes(tmp_path):
    # HuatuoGPT-Vision-7B's config fields (Qwen2-7B at the top level, LLaVA-1.5 mm_* fields).
    cfg = {
        "architectures": ["LlavaQwen2ForCausalLM"], "model_type": "llava_qwen2", "hidden_size": 3584,
        "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "vocab_size": 152064, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "hidden_act": "silu", "use_sliding_window": False,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": 1024, "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "image_aspect_ratio": "pad", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
        "tokenizer_model_max_length": 4096,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    model = build_on_meta(str(path))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert next(model.parameters()).device.type == "meta"
    assert count(model.model.language_model) + count(model.lm_head) == 7_615_616_512  # Qwen2-7B's published size
    assert count(model.model.multi_modal_projector) == 1024 * 3584 + 3584 + 3584 * 3584 + 3584
    assert abs(count(model.model.vision_tower) / 1e9 - 0.30) < 0.01  # CLIP ViT-L/14 vision encoder
    assert model.config.image_seq_length == 576


# ------------------------------------------------------------------------------------------ preprocessing
def test_pixels_are_the_mean_padded_square_resized_to_336_and_clip_normalised(huatuo):
    image = random_image(300, 200, 1)  # wide: padded above and below
    square = Image.new("RGB", (300, 300), tuple(int(x * 255) for x in CLIP_MEAN))
    square.paste(image, (0, 50))
    ref = np.asarray(square.resize((336, 336), Image.BICUBIC), dtype=np.float64) / 255.0
    ref = torch.tensor(((ref - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1), dtype=torch.float32)
    ours = huatuo.preprocess([image])[0]
    assert ours.shape == (3, 336, 336)
    assert (ours - ref).abs().max().item() < 1e-4
    assert expand2square(image, (1, 2, 3)).getpixel((0, 0)) == (1, 2, 3)


def test_features_are_clip_layer_minus_2_without_cls_through_linear_gelu_linear(huatuo, huatuo_dir):
    from transformers import CLIPVisionModel

    weights = load_file(f"{huatuo_dir}/model.safetensors")
    prefix = "model.vision_tower.vision_tower.vision_model."
    clip = CLIPVisionModel(huatuo.model.config.vision_config).eval()
    clip.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    d_in, d_out = weights["model.mm_projector.0.weight"].shape[1], weights["model.mm_projector.0.weight"].shape[0]
    projector = torch.nn.Sequential(torch.nn.Linear(d_in, d_out), torch.nn.GELU(), torch.nn.Linear(d_out, d_out))
    projector.load_state_dict({k[len("model.mm_projector."):]: v for k, v in weights.items() if "mm_projector" in k})
    images = [random_image(336, 336, 2), random_image(180, 240, 3)]
    with torch.no_grad():
        hidden = clip(huatuo.preprocess(images), output_hidden_states=True).hidden_states[-2][:, 1:]  # LLaVA "patch"
        ref = projector(hidden)  # (2, 576, D)
        enc = huatuo.encode_images(images)
    assert [e.grid_hw for e in enc] == [(24, 24), (24, 24)] and [e.num_tokens for e in enc] == [576, 576]
    assert [e.image_size for e in enc] == [(336, 336), (180, 240)]
    for e, r in zip(enc, ref):
        assert (e.features - r).abs().max().item() <= 1e-5


def test_content_box_and_box_mapping_follow_the_padding():
    assert content_box(300, 200) == (0.0, 50 / 300, 1.0, 250 / 300)
    assert content_box(100, 401) == (150 / 401, 0.0, 250 / 401, 1.0)
    assert content_box(64, 64) == (0.0, 0.0, 1.0, 1.0)
    region = content_box(300, 200)
    assert image_box_to_grid_box([0.0, 0.0, 1.0, 1.0], region) == pytest.approx(list(region))
    assert image_box_to_grid_box([0.5, 0.5, 1.0, 1.0], region) == pytest.approx([0.5, 0.5, 1.0, 250 / 300])


def test_prompt_is_huatuo_cli_format_with_576_placeholders_per_image(huatuo):
    # cli.py strips the user turn as a whole (placeholders included), so inner leading spaces survive.
    assert render_prompt("  Is it <image>normal? ", 2) == "<|user|>\n<image>\n<image>\n  Is it normal?\n<|assistant|>\n"
    assert render_prompt("Is it normal?", 0) == "<|user|>\nIs it normal?\n<|assistant|>\n"
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is it normal?"}]}]
    tok = huatuo.tokenizer
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == render_prompt("Is it normal?", 1)
    assert tok.chat_template == HUATUO_CHAT_TEMPLATE

    with torch.no_grad():
        enc = huatuo.encode_images([random_image(112, 112, 4), random_image(112, 112, 5)])
    prompt = huatuo.build_prompt("Is it normal?", enc)
    encode = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    head, mid, tail = encode("<|user|>\n"), encode("\n"), encode("\nIs it normal?\n<|assistant|>\n")
    img = [huatuo.image_token_id] * 576
    assert prompt.input_ids.tolist() == head + img + mid + img + tail
    assert prompt.image_spans == [(len(head), len(head) + 576), (len(head) + 577, len(head) + 1153)]
    assert prompt.positions.shape == (1, prompt.input_ids.numel())
    assert torch.equal(prompt.positions[0], torch.arange(prompt.input_ids.numel()))


# ------------------------------------------------------------------------------------------ engine, P = 1
@pytest.mark.parametrize("model", MODELS)
def test_keep_all_forward_equals_unmodified_llava_forward(model, request):
    # No liveness twin: a whole prompt's 1-D positions are 0..L-1, so re-indexing it changes nothing, and a
    # per-row shift (e.g. counting the left padding) leaves RoPE attention unchanged. The pruned checks below
    # are the ones a wrong position rule can fail, and each has one.
    ad = request.getfixturevalue(model)
    images = [[random_image(224, 224, 0)], [random_image(280, 168, 1)],
              [random_image(112, 196, 2), random_image(140, 140, 3)]]
    questions = ["Is there a lesion?", "Which organ is shown in this scan, and is it enlarged today?", "Compare."]
    with torch.no_grad():
        enc = [ad.encode_images(ims) for ims in images]
        prompts = [ad.build_prompt(q, e) for q, e in zip(questions, enc)]
        seqs = [assemble(ad, p, e) for p, e in zip(prompts, enc)]
        embeds, positions, mask = collate(seqs)
        ours, _ = ad.lm_forward(embeds, positions, mask)  # (B, L, V)

        # Reference: the processor's way -- the whole expanded string through the tokenizer, pixels through
        # LlavaForConditionalGeneration, left padding with HF's position convention (cumsum of the mask - 1).
        tok = ad.tokenizer
        tok.padding_side = "left"
        texts = [render_prompt(q, len(es)).replace("<image>", "<image>" * 576) for q, es in zip(questions, enc)]
        batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        pos_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        pixels = ad.preprocess([im for ims in images for im in ims])
        ref = ad.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos_ids,
                       pixel_values=pixels).logits
    assert ours.shape == ref.shape
    assert len({s.length for s in seqs}) == 3, "the prompts must differ in length so left padding is exercised"
    valid = mask.bool()
    assert torch.equal(valid, batch.attention_mask.bool())
    for i, p in enumerate(prompts):
        assert batch.input_ids[i][valid[i]].tolist() == p.input_ids.tolist()
    assert (ours[valid] - ref[valid]).abs().max().item() <= 1e-5


def test_sensitive_model_notices_reindexed_kept_positions(huatuo, sensitive_huatuo):
    """One next-token distribution, a box-pruned image, kept tokens at their original positions vs re-indexed
    0..L-1: the default random model barely moves, the sensitive variant moves by nats."""
    def max_shift(ad):
        with torch.no_grad():
            enc = ad.encode_images([random_image(224, 224, 6)])
            keep = boxes_to_keep_mask([[0.1, 0.2, 0.6, 0.7]], enc[0].grid_hw)
            seq = assemble(ad, ad.build_prompt("Is it normal?", enc), enc, [keep])
            lps = [torch.log_softmax(ad.lm_forward(*collate([s]), logits_to_keep=1)[0][0, -1], -1)
                   for s in (seq, reindexed(seq))]
        return (lps[0] - lps[1]).abs().max().item()

    assert max_shift(huatuo) < 0.05  # measured 0.0015 nat
    assert max_shift(sensitive_huatuo) > 2.0  # measured 3.8 nats


def _reference_greedy(ad, embeds, positions, start: int, max_new: int) -> list[int]:
    """Whole sequence + generated tokens every step, explicit 1-D positions (`positions` (1, L) for the prompt,
    then start, start + 1, ...), no cache, through the unmodified top-level forward. The all-ones mask
    matters: without it transformers would read the position gap as a packed-sequence boundary."""
    embeds = embeds[None]  # (1, L, D)
    pos = positions  # (1, L) -- P = 1 row doubles as the batch row
    out: list[int] = []
    for t in range(max_new):
        with torch.no_grad():
            logits = ad.model(inputs_embeds=embeds, position_ids=pos,
                              attention_mask=torch.ones(1, embeds.shape[1], dtype=torch.long)).logits
        last = logits[0, -1].clone()
        last[ad.suppressed_token_ids] = float("-inf")
        nxt = int(last.argmax())
        out.append(nxt)
        if nxt in ad.eos_token_ids:
            break
        embeds = torch.cat([embeds, ad.embed_tokens(torch.tensor([[nxt]]))], dim=1)
        pos = torch.cat([pos, torch.tensor([[start + t]])], dim=1)
    return out


def _pruned_greedy(ad, fusion, keep_ratio, plant=_same) -> list[tuple[list[int], list[int]]]:
    """Per prompt (generated, reference): batched KV-cache `generate` on the assembled (then `plant`ed) pruned
    sequences vs the cache-free reference on the same embeddings with positions built WITHOUT assemble
    (`original_positions`), decoding from the unpruned prompt's length."""
    with torch.no_grad():
        enc = ad.encode_images([random_image(224, 224, 4), random_image(280, 196, 5)])
    seqs, refs, kept = [], [], []
    for i, (e, q) in enumerate(zip(enc, ["Is there a mass?", "Where is the lesion located in this image?"])):
        g = torch.Generator().manual_seed(i)
        keep = torch.zeros(576, dtype=torch.bool)
        keep[torch.randperm(576, generator=g)[: round(keep_ratio * 576)]] = True
        keep = keep.view(24, 24)
        with torch.no_grad():
            prompt = ad.build_prompt(q, [e])
            seq = assemble(ad, prompt, [e], [keep], fusion=fusion, num_contextual=3)
        k, (start, _) = int(keep.sum()), prompt.image_spans[0]
        extra = seq.positions[:, start + k : start + seq.n_visual_kept]  # contextual's extra tokens (none otherwise)
        refs.append((seq.embeds, original_positions(prompt, [keep], [extra]), prompt.input_ids.numel()))
        seqs.append(plant(seq))
        kept.append(k)
    n_extra = 3 if fusion == "contextual" else 0
    assert [s.n_visual_kept for s in seqs] == [k + n_extra for k in kept]
    assert all(s.positions.shape == (1, s.length) for s in seqs)
    gen = generate(ad, seqs, SamplingConfig(max_new_tokens=8))  # batched, KV cache, left padding
    return [(got.tolist(), _reference_greedy(ad, *ref, 8)) for got, ref in zip(gen.token_ids, refs)]


PRUNED_CASES = [("none", 0.5), ("none", 0.1), ("merge", 0.1), ("contextual", 0.3)]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(("fusion", "keep_ratio"), PRUNED_CASES)
def test_pruned_greedy_generation_matches_stepwise_reference(model, fusion, keep_ratio, request):
    for got, ref in _pruned_greedy(request.getfixturevalue(model), fusion, keep_ratio):
        assert got == ref


@pytest.mark.parametrize("plant", ["reindexed", "decode_after_length"])
@pytest.mark.parametrize(("fusion", "keep_ratio"), PRUNED_CASES)
def test_pruned_greedy_check_notices_wrong_positions(sensitive_huatuo, fusion, keep_ratio, plant, monkeypatch):
    """Liveness: with re-indexed kept positions, or decoding resumed at the pruned length, the check above fails."""
    if plant == "decode_after_length":
        plant_decode_after_length(monkeypatch)
    pairs = _pruned_greedy(sensitive_huatuo, fusion, keep_ratio, reindexed if plant == "reindexed" else _same)
    assert [got for got, _ in pairs] != [ref for _, ref in pairs]


def _kept_positions(ad, plant=_same) -> list[tuple[str, object, object]]:
    """(what, observed, expected), hand-computed: a top-left box keeps 12 x 12 cells at their original 1-D
    positions, the text after the image keeps its own, and decoding resumes at the unpruned prompt's length."""
    with torch.no_grad():
        enc = ad.encode_images([random_image(224, 224, 6)])
    prompt = ad.build_prompt("Is it normal?", enc)
    keep = boxes_to_keep_mask([[0.0, 0.0, 0.5, 0.5]], enc[0].grid_hw)  # top-left 12 x 12 cells
    seq = plant(assemble(ad, prompt, enc, [keep], fusion="none"))
    start, end = prompt.image_spans[0]
    n = prompt.input_ids.numel()
    rows = torch.arange(12)[:, None] * 24 + torch.arange(12)[None]  # raster indices of the kept cells
    checks = [
        ("kept image positions", seq.positions[0, start:start + 144].tolist(), (start + rows.flatten()).tolist()),
        ("text after the image", seq.positions[0, start + 144:].tolist(), list(range(end, n))),
        ("length", seq.length, n - 576 + 144),
    ]

    seen = []
    original = ad.lm_forward

    class Recorder:
        def __getattr__(self, name):
            return getattr(ad, name)

        def lm_forward(self, embeds, positions, mask, cache=None, logits_to_keep=0):
            seen.append(positions.clone())
            return original(embeds, positions, mask, cache, logits_to_keep)

    generate(Recorder(), [seq], SamplingConfig(max_new_tokens=3))
    checks.append(("prefill shape", tuple(seen[0].shape), (1, 1, seq.length)))
    checks.append(("decode steps", len(seen) > 1, True))
    # The unpruned prompt had n tokens: the first new one sits at n, as without pruning.
    checks += [(f"decode step {t}", s.flatten().tolist(), [n + t - 1]) for t, s in enumerate(seen[1:], 1)]
    return checks


@pytest.mark.parametrize("model", MODELS)
def test_kept_tokens_keep_original_positions_and_decoding_resumes_after_the_prompt(model, request):
    for what, observed, expected in _kept_positions(request.getfixturevalue(model)):
        assert observed == expected, what


@pytest.mark.parametrize("plant", ["reindexed", "decode_after_length"])
def test_kept_positions_check_notices_wrong_positions(sensitive_huatuo, plant, monkeypatch):
    if plant == "decode_after_length":
        plant_decode_after_length(monkeypatch)
    checks = _kept_positions(sensitive_huatuo, reindexed if plant == "reindexed" else _same)
    assert any(observed != expected for _, observed, expected in checks)


def test_image_placeholder_and_padded_vocab_are_never_sampled(huatuo):
    ad = huatuo
    vocab = ad.model.config.text_config.vocab_size
    banned = ad.suppressed_token_ids
    assert ad.image_token_id in banned and set(range(len(ad.tokenizer), vocab)) <= set(banned)
    with torch.no_grad():
        enc = ad.encode_images([random_image(112, 112, 7)])
        seq = assemble(ad, ad.build_prompt("q", enc), enc)

    class Tempting:
        def __getattr__(self, name):
            return getattr(ad, name)

        def lm_forward(self, *a, **k):
            logits, cache = ad.lm_forward(*a, **k)
            logits = logits.clone()
            logits[..., banned] += 1e4
            return logits, cache

    for temperature in (0.0, 1.0):
        gen = generate(Tempting(), [seq], SamplingConfig(max_new_tokens=8, temperature=temperature),
                       generator=torch.Generator().manual_seed(0))
        assert not set(gen.token_ids[0].tolist()) & set(banned)


def _completion_vs_reference(ad, plant=_same):
    """Greedy completions of a pruned (merge) and a whole prompt, re-scored by `completion_logprobs` on the
    assembled (then `plant`ed) sequences, vs the cache-free reference: the same embeddings at positions built
    WITHOUT assemble, completion token k at the unpruned prompt's length + k.
    Returns [(logp, ref)] per row, the completion mask, the completions and the sequences."""
    with torch.no_grad():
        enc = ad.encode_images([random_image(224, 224, 8), random_image(168, 168, 9)])
    keep = torch.zeros(24, 24, dtype=torch.bool)
    keep[3:9, 10:20] = True
    keeps = [keep, None]
    prompts = [ad.build_prompt(q, [e]) for q, e in zip(["a?", "longer question here?"], enc)]
    with torch.no_grad():
        clean = [assemble(ad, p, [e], [k], fusion="merge") for p, e, k in zip(prompts, enc, keeps)]
    seqs = [plant(s) for s in clean]
    gen = generate(ad, seqs, SamplingConfig(max_new_tokens=6))
    logp, mask = completion_logprobs(ad, seqs, gen.token_ids)
    assert logp.shape == mask.shape == (2, max(t.numel() for t in gen.token_ids))
    pairs = []
    for b, (seq, prompt, k, toks) in enumerate(zip(clean, prompts, keeps, gen.token_ids)):
        embeds = torch.cat([seq.embeds, ad.embed_tokens(toks[:-1])], dim=0)[None]
        start = prompt.input_ids.numel()
        decode = torch.arange(start, start + toks.numel() - 1)
        pos = torch.cat([original_positions(prompt, [k])[0], decode])[None]  # (1, L + T - 1)
        with torch.no_grad():
            logits = ad.model(inputs_embeds=embeds, position_ids=pos, attention_mask=torch.ones_like(pos)).logits
        ref = torch.log_softmax(logits[0].float(), -1)[seq.length - 1:].gather(-1, toks[:, None]).squeeze(-1)
        pairs.append((logp[b, : toks.numel()], ref))
    return pairs, mask, gen.token_ids, seqs


@pytest.mark.parametrize("model", MODELS)
def test_completion_logprobs_match_the_reference_and_carry_gradients(model, request):
    ad = request.getfixturevalue(model)
    pairs, mask, completions, seqs = _completion_vs_reference(ad)
    for b, (logp, ref) in enumerate(pairs):
        assert torch.allclose(logp, ref, atol=1e-5)
        assert mask[b].sum() == completions[b].numel()
    lp, _ = completion_logprobs(ad, seqs[:1], completions[:1])
    lp.sum().backward()
    assert ad.model.lm_head.weight.grad is not None and ad.model.lm_head.weight.grad.abs().sum() > 0
    ad.model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("plant", ["reindexed", "decode_after_length"])
def test_completion_logprobs_check_notices_wrong_positions(sensitive_huatuo, plant, monkeypatch):
    if plant == "decode_after_length":
        plant_decode_after_length(monkeypatch)
    with torch.no_grad():
        pairs, *_ = _completion_vs_reference(sensitive_huatuo, reindexed if plant == "reindexed" else _same)
    assert max((logp - ref).abs().max().item() for logp, ref in pairs) > 0.1  # nats; the real check allows 1e-5


# ------------------------------------------------------------------------------------------ commands
@pytest.mark.parametrize("mode", ["full", "vitos"])
def test_pipeline_runs_both_modes_on_the_tiny_huatuo_checkpoint(huatuo, mode):
    from vitos.pipeline import run

    samples = [Sample(id="a", images=[random_image(160, 120, 10)], question="Is there a lesion?", answer="yes",
                      kind="yes_no"),
               Sample(id="b", images=[random_image(96, 96, 11)], question="Which organ?", answer="A", kind="choice",
                      options={"A": "liver", "B": "kidney"})]
    answers = run(huatuo, samples, mode=mode, sampling=SamplingConfig(max_new_tokens=6))
    assert len(answers) == 2
    for a in answers:
        assert a.visual_tokens_total == 576 and 0 < a.visual_tokens_kept <= 576
        assert isinstance(a.answer_text, str)
        assert (a.grounding_text is not None) == (mode == "vitos")


def test_infer_command_prunes_a_centred_box_to_its_12_by_12_cells(huatuo_dir, tmp_path, capsys):
    from vitos.cli import main

    image = tmp_path / "scan.png"
    random_image(256, 256, 12).save(image)  # square: the grid covers exactly the image
    rc = main(["infer", "--model", huatuo_dir, "--image", str(image), "--question", "Where is the lesion?",
               "--boxes", "[[0.25,0.25,0.75,0.75]]", "--fusion", "none", "--json", "--max-new-tokens", "4",
               "--device", "cpu", "--dtype", "float32"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rec = json.loads(out)
    # Cells 6..17 on both axes intersect the box with positive area; cells 5 and 18 only touch it.
    assert rec["visual_tokens_total"] == 576 and rec["visual_tokens_kept"] == 144
    assert rec["fallback"] is None


def test_adapter_declares_one_position_row(huatuo):
    assert isinstance(huatuo, LlavaQwen2Adapter) and huatuo.num_position_rows == 1
    with pytest.raises(ValueError, match=r"\(1, B, L\)"):
        huatuo.lm_forward(torch.zeros(1, 2, 64), torch.zeros(3, 1, 2, dtype=torch.long), torch.ones(1, 2))


def test_boxes_on_a_non_square_image_select_tokens_inside_the_image_band(huatuo):
    """The 24 x 24 grid covers the padded square: a whole-image box on a 3:2 image keeps only the rows the
    image fills (rows 4..19 of 24 for y in [1/6, 5/6]), never the padding rows."""
    from vitos.pipeline import PruneConfig, keep_mask_for_image

    image = Image.new("RGB", (300, 200), (120, 120, 120))
    with torch.no_grad():
        enc = huatuo.encode_images([image])[0]
    assert enc.grid_region == pytest.approx((0.0, 50 / 300, 1.0, 250 / 300))
    mask = keep_mask_for_image([[0.0, 0.0, 1.0, 1.0]], enc, PruneConfig())
    rows = mask.any(dim=1).nonzero().squeeze(1).tolist()
    assert rows == list(range(4, 20)) and bool(mask[4:20].all())
    left_half = keep_mask_for_image([[0.0, 0.0, 0.5, 1.0]], enc, PruneConfig())
    assert left_half[:, :12].any(dim=0).all() and not left_half[:, 12:].any()

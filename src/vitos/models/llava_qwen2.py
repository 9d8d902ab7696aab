"""HuatuoGPT-Vision-7B (`LlavaQwen2ForCausalLM`) on transformers' own LLaVA classes, and its adapter.

The checkpoint ships custom code (LLaVA-1.5 style: a CLIP ViT-L/14-336 tower, an `mlp2x_gelu` projector,
Qwen2-7B). We never run that code: its config is mapped onto `LlavaConfig(CLIPVisionConfig, Qwen2Config)`
and its weights are renamed while `LlavaForConditionalGeneration.from_pretrained` reads them (safetensors
only, no converted copy on disk, no `trust_remote_code`):

    model.embed_tokens | model.layers.N | model.norm      -> model.language_model.*
    model.mm_projector.0 / .2                             -> model.multi_modal_projector.linear_1 / linear_2
    model.vision_tower.vision_tower.vision_model.*        -> model.vision_tower.*   (v5 CLIP has no vision_model level)
    lm_head.weight                                        -> lm_head.weight

When a release does not ship the tower weights, the tower is loaded from `mm_vision_tower` (a folder,
resolved against the checkpoint folder first, or a hub id) with `CLIPVisionModel.from_pretrained`, as the
original code does. Tower weights in the checkpoint win over `mm_vision_tower`'s, as in the original.

    from vitos.models import load_model
    adapter = load_model("FreedomIntelligence/HuatuoGPT-Vision-7B", dtype="bfloat16", device="cuda")
    convert_huatuo_checkpoint(src, dst)   # optional: a copy in transformers' LLaVA format (model_type llava)

A checkpoint in transformers' LLaVA format with a Qwen2 LM (`convert_huatuo_checkpoint`'s output, or a
`vitos train` export of a HuatuoGPT-Vision run) loads through `load_llava` into the same adapter.

Model facts the adapter encodes (from the HuatuoGPT-Vision repository: `cli.py`, `llava/model/llava_arch.py`,
`llava/model/multimodal_encoder/clip_encoder.py`):
- Image: padded to a square with the processor's mean colour (`expand2square`, pasted centred), then CLIP
  preprocessing at 336 px (bicubic resize, centre crop, CLIP mean/std).
- Features: CLIP hidden state of layer -2 (`mm_vision_select_layer`), CLS dropped (`patch`), then
  Linear-GELU-Linear: 576 tokens on a 24 x 24 grid in raster order. Transformers' LLaVA does exactly this
  with `vision_feature_layer=-2, vision_feature_select_strategy="default"`.
- Prompt: `<|user|>\\n{"<image>\\n" * n_images + text, stripped}\\n<|assistant|>\\n` (cli.py's
  `preprocess_huatuo`, not Qwen's `<|im_start|>` ChatML); no system turn. The
  original tokenises the text chunks between `<image>` marks separately and splices IMAGE_TOKEN_INDEX (-200)
  in; we splice an added `<image>` token instead (the same ids, since tokenisation stops at added tokens),
  one per visual token. A completion ends with the tokenizer's EOS token (we also stop on `<|endoftext|>`
  and `<|im_end|>`). The tokenizer's chat template is set to this format (`HUATUO_CHAT_TEMPLATE`).
- Positions: 1-D RoPE, P = 1 row. The unpruned prompt's positions are 0..L-1; kept visual tokens keep
  theirs (index-select, never re-index), so a pruned image leaves a gap in position space.

Departures and assumptions we could not check against the released checkpoint (no network here):
- The released tokenizer is assumed to have no `<image>` token (LLaVA splices -200 instead); we add one at
  load time as a special token. Its id is the first free id, which must be below the LM's padded vocab
  (Qwen2-7B: 151646 < 152064), so no embedding row is added; the row's value is never used (visual
  features replace it).
- Any literal `<image>` in the question text is removed, as the original `input_moderation` does.
- `system=` is rendered as `<|system|>\\n{system}\\n` before the user turn; HuatuoGPT-Vision has no system
  turn, so this is our choice, unused by the pipeline.
- The preprocessor settings come from the checkpoint's `preprocessor_config.json`, else the one beside
  `mm_vision_tower`, else openai/clip-vit-large-patch14-336's values (written out below).
- A `mm_vision_tower` we cannot read offline whose name ends in `clip-vit-large-patch14-336` gets that
  model's published vision config (written out below); any other unreadable tower is an error.
- The original truncates the embedded prompt to `tokenizer_model_max_length`; we do not (prompts are short).

Pad-to-square and boxes: the 24 x 24 grid covers the padded square, not the image. `EncodedImage.grid_region`
is the normalised region of the grid the image occupies (`content_box`); the pipeline maps every image box
onto the grid with `vitos.pruning.boxes.image_box_to_grid_box` before selecting tokens.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from vitos.models import ModelLoadError, read_raw_config
from vitos.models.base import USER_TEXT, AdapterBase, EncodedImage, Prompt, encode_with_user_text

MODEL_TYPE = "llava_qwen2"
IMAGE_TOKEN = "<image>"

KEY_MAPPING: dict[str, str] = {
    r"^model\.vision_tower\.vision_tower\.vision_model\.": "model.vision_tower.",
    r"^model\.mm_projector\.0\.": "model.multi_modal_projector.linear_1.",
    r"^model\.mm_projector\.2\.": "model.multi_modal_projector.linear_2.",
    r"^model\.embed_tokens\.": "model.language_model.embed_tokens.",
    r"^model\.layers\.": "model.language_model.layers.",
    r"^model\.norm\.": "model.language_model.norm.",
}
"""Original key prefix (regex) -> transformers LLaVA key prefix; `lm_head.weight` keeps its name."""

# openai/clip-vit-large-patch14-336: the tower HuatuoGPT-Vision-7B was built on (its published config).
CLIP_VIT_L_336_VISION = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
    patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768, num_channels=3,
)
CLIP_VIT_L_336_PREPROCESSOR = dict(
    size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
    image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
)

# LLaVA-only config fields: everything else at the top level of config.json belongs to Qwen2.
_LLAVA_FIELDS = {
    "architectures", "model_type", "auto_map", "freeze_mm_mlp_adapter", "image_aspect_ratio", "image_grid_pinpoints",
    "mm_hidden_size", "mm_patch_merge_type", "mm_projector_lr", "mm_projector_type", "mm_use_im_patch_token",
    "mm_use_im_start_end", "mm_vision_select_feature", "mm_vision_select_layer", "mm_vision_tower",
    "tokenizer_model_max_length", "tokenizer_padding_side", "tune_mm_mlp_adapter", "use_mm_proj",
    "unfreeze_mm_vision_tower", "mm_vision_tower_lr", "_name_or_path", "transformers_version",
}

HUATUO_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>\n{{ message['content'] | trim }}\n"
    "{% elif message['role'] == 'user' %}{% set ns = namespace(text='') %}"
    "{% if message['content'] is string %}{% set ns.text = message['content'] %}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' or 'image' in c %}{% set ns.text = ns.text + '<image>\n' %}"
    "{% elif 'text' in c %}{% set ns.text = ns.text + c['text'] %}{% endif %}{% endfor %}{% endif %}"
    "<|user|>\n{{ ns.text | trim }}\n"
    "{% elif message['role'] == 'assistant' %}<|assistant|>\n{{ message['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""HuatuoGPT-Vision's prompt format as a tokenizer chat template (what `render_prompt` writes)."""


# ---------------------------------------------------------------------------------------------- keys
def huatuo_key_to_llava(key: str) -> str:
    """Original checkpoint key -> `LlavaForConditionalGeneration` key (the first matching rule applies)."""
    for pattern, replacement in KEY_MAPPING.items():
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key, count=1)
    return key


def llava_key_to_huatuo(key: str) -> str:
    """Inverse of `huatuo_key_to_llava` (used to write checkpoints in the original format)."""
    for pattern, replacement in KEY_MAPPING.items():
        original = pattern.removeprefix("^").replace("\\.", ".")
        if key.startswith(replacement):
            return original + key[len(replacement):]
    return key


# ---------------------------------------------------------------------------------------------- config
def _check_supported(raw: dict[str, Any]) -> None:
    """Refuse LLaVA variants whose forward differs from what we map onto (better an error than wrong logits)."""
    expected = {
        "mm_projector_type": "mlp2x_gelu", "mm_vision_select_feature": "patch", "mm_use_im_start_end": False,
        "mm_patch_merge_type": "flat", "image_aspect_ratio": "pad",
    }
    for key, value in expected.items():
        got = raw.get(key, value)
        if got != value:
            raise ModelLoadError(
                f"this llava_qwen2 checkpoint has {key}={got!r}; vitos maps only HuatuoGPT-Vision-7B's "
                f"{key}={value!r}. Convert the checkpoint or add the variant to vitos/models/llava_qwen2.py."
            )


def text_config_from_huatuo(raw: dict[str, Any]) -> Any:
    """The Qwen2 fields of an original config (they sit at its top level) -> `Qwen2Config`."""
    from transformers import Qwen2Config

    fields = {k: v for k, v in raw.items() if k not in _LLAVA_FIELDS}
    fields.pop("torch_dtype", None)  # the dtype is chosen at load time
    return Qwen2Config(**fields)


def _tower_candidates(tower: str, base: str | None) -> list[str]:
    """Where `mm_vision_tower` may live: beside the checkpoint first (a relative folder), then as given."""
    out = []
    if base is not None and Path(base).is_dir() and not os.path.isabs(tower):
        out.append(str(Path(base) / tower))
    out.append(tower)
    return out


def vision_config_from_huatuo(raw: dict[str, Any], base: str | None = None) -> Any:
    """The CLIP vision config behind `mm_vision_tower` (read offline when possible, see module docstring)."""
    from transformers import CLIPVisionConfig

    tower = str(raw.get("mm_vision_tower", "openai/clip-vit-large-patch14-336"))
    errors = []
    for cand in _tower_candidates(tower, base):
        try:
            return CLIPVisionConfig.from_pretrained(cand)
        except Exception as err:  # noqa: BLE001 - try the next candidate, report all at the end
            errors.append(f"{cand}: {err}")
    if tower.rstrip("/").endswith("clip-vit-large-patch14-336"):
        return CLIPVisionConfig(**CLIP_VIT_L_336_VISION)
    raise ModelLoadError(
        f"cannot read the vision tower config of mm_vision_tower={tower!r}: " + "; ".join(errors)
        + ". Point mm_vision_tower in config.json at a CLIP vision folder or hub id."
    )


def llava_config_from_huatuo(raw: dict[str, Any], vision_config: Any, image_token_id: int | None = None) -> Any:
    """Original `llava_qwen2` config -> `LlavaConfig`.

    `image_token_id` is the id of the `<image>` token added to the tokenizer; None (shape-only uses such as
    `build_on_meta`) takes the last id of the padded vocabulary.
    """
    from transformers import LlavaConfig

    _check_supported(raw)
    text = text_config_from_huatuo(raw)
    mm_hidden = raw.get("mm_hidden_size", vision_config.hidden_size)
    if mm_hidden != vision_config.hidden_size:
        raise ModelLoadError(
            f"mm_hidden_size={mm_hidden} but the vision tower has hidden_size={vision_config.hidden_size}; "
            "mm_vision_tower points at the wrong CLIP model"
        )
    side = vision_config.image_size // vision_config.patch_size
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text,
        image_token_id=text.vocab_size - 1 if image_token_id is None else image_token_id,
        image_seq_length=side * side,
        projector_hidden_act="gelu",  # nn.GELU() (erf) in LLaVA's mlp2x_gelu, ACT2FN["gelu"] here
        vision_feature_layer=int(raw.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy="default",  # drop CLS == LLaVA's "patch"
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
    )


def read_huatuo_config(name_or_path: str) -> Any:
    """A `llava_qwen2` folder, config.json or hub id -> the `LlavaConfig` it loads as (image token id aside)."""
    raw = read_raw_config(name_or_path)
    if raw is None or raw.get("model_type") != MODEL_TYPE:
        raise ModelLoadError(f"{name_or_path!r} has no llava_qwen2 config.json")
    base = os.path.dirname(name_or_path) if os.path.isfile(name_or_path) else name_or_path
    return llava_config_from_huatuo(raw, vision_config_from_huatuo(raw, base))


# ---------------------------------------------------------------------------------------------- images
def expand2square(image: Any, background: tuple[int, ...]) -> Any:
    """LLaVA's pad-to-square: the image pasted centred (offset floor((long - short) / 2)) on `background`."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    out = Image.new(image.mode, (side, side), background)
    out.paste(image, ((side - width) // 2, (side - height) // 2))
    return out


def content_box(width: int, height: int) -> tuple[float, float, float, float]:
    """Normalised [x1, y1, x2, y2] of the padded square that `expand2square` fills with the image."""
    side = max(width, height)
    x0, y0 = (side - width) // 2, (side - height) // 2
    return (x0 / side, y0 / side, (x0 + width) / side, (y0 + height) / side)


# ---------------------------------------------------------------------------------------------- prompt
def _without_image_tokens(text: str) -> str:
    """`text` with every `<image>` removed, repeatedly (so `<imag<image>e>` cannot leave one behind)."""
    while IMAGE_TOKEN in text:
        text = text.replace(IMAGE_TOKEN, "")
    return text


def render_prompt(text: str, n_images: int, system: str | None = None) -> str:
    """HuatuoGPT-Vision's single-turn prompt (cli.py `preprocess_huatuo`), generation prompt included."""
    user = ("<image>\n" * n_images + _without_image_tokens(text)).strip()
    head = f"<|system|>\n{system.strip()}\n" if system else ""
    return f"{head}<|user|>\n{user}\n<|assistant|>\n"


def render_prompt_around_text(text: str, n_images: int, system: str | None = None) -> tuple[str, str]:
    """(`render_prompt` with `USER_TEXT` where the user's text goes, that text): the same string once
    filled in, for `encode_with_user_text`."""
    prefix = "<image>\n" * n_images
    full = (prefix + _without_image_tokens(text)).strip()
    if full.startswith(prefix):
        body, user_text = prefix + USER_TEXT, full[len(prefix):]
    else:  # blank text after images: the strip also took the last image's newline
        body, user_text = full + USER_TEXT, ""
    head = f"<|system|>\n{system.strip()}\n" if system else ""
    return f"{head}<|user|>\n{body}\n<|assistant|>\n", user_text


# ---------------------------------------------------------------------------------------------- adapter
class LlavaQwen2Adapter(AdapterBase):
    """`ModelAdapter` for HuatuoGPT-Vision-7B as `LlavaForConditionalGeneration` (fixed 24 x 24 grid, 1-D RoPE)."""

    num_position_rows = 1

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any):
        cfg = model.config
        # Never sample <image> (it would break the next forward) nor the padded-vocab rows with no token.
        suppressed = {cfg.image_token_id, *range(len(tokenizer), cfg.text_config.vocab_size)}
        super().__init__(model, tokenizer, image_processor, suppressed, eos_tokens=("<|endoftext|>", "<|im_end|>"))
        self.image_token_id: int = cfg.image_token_id
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        self.grid_hw: tuple[int, int] = (side, side)
        self.pad_colour = tuple(int(x * 255) for x in image_processor.image_mean)

    # ------------------------------------------------------------------ vision
    def preprocess(self, images: list[Any]) -> torch.Tensor:
        """PIL images -> (n, 3, S, S) pixel values: pad to square with the mean colour, then CLIP preprocessing."""
        squares = [expand2square(im.convert("RGB"), self.pad_colour) for im in images]
        return self.image_processor(images=squares, return_tensors="pt")["pixel_values"]

    def encode_images(self, images: list[Any]) -> list[EncodedImage]:
        """All images through ONE vision-tower + projector call: (576, D) features per image."""
        if not images:
            return []
        pixel_values = self.preprocess(images).to(self.device, self.dtype)  # (n, 3, 336, 336)
        out = self.model.model.get_image_features(pixel_values=pixel_values)
        feats = out.pooler_output  # n x (576, D): layer -2, CLS dropped, projected
        return [
            EncodedImage(f, self.grid_hw, tuple(img.size), grid_region=content_box(*img.size))
            for f, img in zip(feats, images)
        ]

    # ------------------------------------------------------------------ text
    def build_prompt(self, text: str, images: list[EncodedImage], system: str | None = None) -> Prompt:
        # The user text is tokenized with special-token splitting (vitos.models.base): a typed <image>,
        # <|im_start|> or <|endoftext|> stays text; the template's <image> marks become the placeholders.
        rendered, user_text = render_prompt_around_text(text, len(images), system)
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        for tok in encode_with_user_text(self.tokenizer, rendered, user_text):
            if tok == self.image_token_id:
                k = len(spans)
                if k >= len(images):
                    raise ValueError("the prompt holds more <image> marks than images were given")
                spans.append((len(ids), len(ids) + images[k].num_tokens))
                ids.extend([self.image_token_id] * images[k].num_tokens)
            else:
                ids.append(tok)
        if len(spans) != len(images):
            raise ValueError(f"the prompt holds {len(spans)} <image> marks for {len(images)} images")
        input_ids = torch.tensor(ids, dtype=torch.long)
        positions = torch.arange(input_ids.numel())[None]  # (1, L): 1-D RoPE
        return Prompt(input_ids, positions, spans)

    def lm_position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        return positions[0]  # (1, B, L) -> (B, L): Qwen2 takes 1-D position ids


# ---------------------------------------------------------------------------------------------- loading
def _load_tokenizer(name_or_path: str, text_config: Any) -> Any:
    from transformers import AutoTokenizer

    # Passing the Qwen2 config keeps AutoTokenizer from reading config.json (a type it does not know).
    tok = AutoTokenizer.from_pretrained(name_or_path, config=text_config, trust_remote_code=False)
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_tokens([IMAGE_TOKEN], special_tokens=True)  # never split, never merged with neighbours
    # The format cli.py builds, whatever template the release's tokenizer carries (saved with exports).
    tok.chat_template = HUATUO_CHAT_TEMPLATE
    return tok


def _load_image_processor(name_or_path: str, tower: str | None) -> Any:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    towers = _tower_candidates(tower, name_or_path) if tower else []
    for cand in [name_or_path, *towers]:
        try:
            return CLIPImageProcessorPil.from_pretrained(cand)
        except Exception:  # noqa: BLE001 - absent here: try the next place, then the published defaults
            continue
    return CLIPImageProcessorPil(**CLIP_VIT_L_336_PREPROCESSOR)


def load_huatuo(
    name_or_path: str, dtype: torch.dtype, device: torch.device, attn_implementation: str = "sdpa"
) -> LlavaQwen2Adapter:
    """Load an original HuatuoGPT-Vision (llava_qwen2) checkpoint onto transformers' LLaVA classes."""
    from transformers import CLIPVisionModel, LlavaForConditionalGeneration

    raw = read_raw_config(name_or_path)
    if raw is None or raw.get("model_type") != MODEL_TYPE:
        raise ModelLoadError(f"{name_or_path!r} has no llava_qwen2 config.json")
    tower = str(raw.get("mm_vision_tower", "openai/clip-vit-large-patch14-336"))
    tokenizer = _load_tokenizer(name_or_path, text_config_from_huatuo(raw))
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id >= raw["vocab_size"]:
        raise ModelLoadError(
            f"the added {IMAGE_TOKEN} token got id {image_token_id}, outside the LM's vocab_size "
            f"{raw['vocab_size']}; the tokenizer does not belong to this checkpoint"
        )
    config = llava_config_from_huatuo(raw, vision_config_from_huatuo(raw, name_or_path), image_token_id)
    model, info = LlavaForConditionalGeneration.from_pretrained(
        name_or_path, config=config, key_mapping=KEY_MAPPING, dtype=dtype, attn_implementation=attn_implementation,
        use_safetensors=True, trust_remote_code=False, output_loading_info=True,
    )
    # Old CLIP saves carried a position_ids buffer; it is recomputed, not loaded.
    unexpected = [k for k in info["unexpected_keys"] if not k.endswith("position_ids")]
    missing = list(info["missing_keys"])
    missing_tower = [k for k in missing if k.startswith("model.vision_tower.")]
    if unexpected or len(missing_tower) != len(missing):
        raise ModelLoadError(
            f"{name_or_path!r} does not match HuatuoGPT-Vision's layout: unexpected keys {unexpected[:5]}, "
            f"missing keys {[k for k in missing if k not in missing_tower][:5]}"
        )
    if missing_tower:  # the release ships no tower: load it from mm_vision_tower, as the original code does
        errors = []
        for cand in _tower_candidates(tower, name_or_path):
            try:
                clip = CLIPVisionModel.from_pretrained(cand, dtype=dtype, use_safetensors=True)
                break
            except Exception as err:  # noqa: BLE001 - try the next candidate
                errors.append(f"{cand}: {err}")
        else:
            raise ModelLoadError(
                f"{name_or_path!r} ships no vision tower weights and mm_vision_tower={tower!r} cannot be loaded: "
                + "; ".join(errors) + ". Download the CLIP tower and point mm_vision_tower at it."
            )
        model.model.vision_tower.load_state_dict(clip.state_dict(), strict=True)
    # from_pretrained remembers KEY_MAPPING and save_pretrained would reverse it, writing HuatuoGPT's key
    # names under a `llava` config that nothing can load; forget it (as transformers' quantizers do), so
    # saves (conversion, training exports) are in transformers' own LLaVA layout.
    if hasattr(model, "_weight_conversions"):
        del model._weight_conversions
    model.to(device)
    model.eval()
    return LlavaQwen2Adapter(model, tokenizer, _load_image_processor(name_or_path, tower))


def load_llava(
    name_or_path: str, dtype: torch.dtype, device: torch.device, attn_implementation: str = "sdpa"
) -> LlavaQwen2Adapter:
    """Load a HuatuoGPT-Vision already in transformers' LLaVA format (model_type `llava` with a Qwen2 LM):
    the output of `convert_huatuo_checkpoint` or of a `vitos train` export of a HuatuoGPT-Vision run."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig.from_pretrained(name_or_path)
    if config.text_config.model_type != "qwen2" or config.vision_config.model_type != "clip_vision_model":
        raise ModelLoadError(
            f"{name_or_path!r} is a LLaVA with a {config.vision_config.model_type} tower and a "
            f"{config.text_config.model_type} LM; vitos supports LLaVA checkpoints of HuatuoGPT-Vision "
            "(CLIP + Qwen2) only"
        )
    model = LlavaForConditionalGeneration.from_pretrained(
        name_or_path, config=config, dtype=dtype, attn_implementation=attn_implementation, use_safetensors=True,
        trust_remote_code=False,
    ).to(device)
    model.eval()
    tokenizer = _load_tokenizer(name_or_path, model.config.text_config)
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != model.config.image_token_id:
        raise ModelLoadError(
            f"{name_or_path!r}: the tokenizer's {IMAGE_TOKEN} id differs from the config's image_token_id "
            f"{model.config.image_token_id}; save the tokenizer together with the model"
        )
    return LlavaQwen2Adapter(model, tokenizer, _load_image_processor(name_or_path, None))


def convert_huatuo_checkpoint(src: str, dst: str | Path) -> Path:
    """Write an original HuatuoGPT-Vision checkpoint `src` once in transformers' LLaVA format to `dst`
    (safetensors, tokenizer with `<image>`, CLIP preprocessor), in the checkpoint's own dtype. Optional:
    `load_model` converts at load time anyway; a converted copy loads without the key renaming and without
    `mm_vision_tower`."""
    from vitos.models import resolve_dtype

    raw = read_raw_config(src) or {}
    dtype = resolve_dtype(str(raw.get("torch_dtype", "float32")))
    adapter = load_huatuo(src, dtype, torch.device("cpu"))
    out = Path(dst)
    adapter.model.save_pretrained(out, safe_serialization=True)
    adapter.tokenizer.save_pretrained(out)
    adapter.image_processor.save_pretrained(out)
    return out

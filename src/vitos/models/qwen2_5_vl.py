"""Qwen2.5-VL adapter: Lingshu-7B, HuatuoGPT-Vision-7B-Qwen2.5VL, Qwen2.5-VL-*-Instruct, the tiny checkpoints.

Mechanics (transformers 5.2x, REFERENCE §2):
- The processor resizes an image to multiples of 28 px; the vision tower's 2x2 merger emits one token per
  28x28 cell in raster order, so a normalised box maps straight onto merged-grid rows/columns.
- M-RoPE: text tokens share one position on all three rows; an image's tokens get (t, h, w) = start +
  (0, row, col); text after the image resumes at max + 1. We compute the unpruned prompt's positions
  once with the model's own `get_rope_index` and index-select the kept ones.
- We call the language model (`model.model.language_model`) and `lm_head` directly with embeddings,
  explicit positions and a 2-D padding mask; no library class is patched.
- The processor class in `preprocessor_config.json` (`Qwen2VLImageProcessor`) needs torchvision; we load
  the same settings into `Qwen2VLImageProcessorPil`, which gives identical pixels without torchvision.
"""

from __future__ import annotations

from typing import Any

import torch

from vitos.models.base import USER_TEXT, AdapterBase, EncodedImage, Prompt, encode_with_user_text

VISION_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


class QwenVLAdapter(AdapterBase):
    """`ModelAdapter` for `Qwen2_5_VLForConditionalGeneration` (M-RoPE, dynamic grid)."""

    num_position_rows = 3

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any):
        ids = {tokenizer.convert_tokens_to_ids(t) for t in VISION_SPECIAL_TOKENS}
        super().__init__(model, tokenizer, image_processor, suppressed=ids, eos_tokens=("<|im_end|>",))
        self.image_token_id: int = model.config.image_token_id
        self.merge = model.config.vision_config.spatial_merge_size

    # ------------------------------------------------------------------ vision
    def encode_images(self, images: list[Any]) -> list[EncodedImage]:
        """All images through the processor and ONE vision-tower call; features split per image."""
        if not images:
            return []
        proc = self.image_processor(images=images, return_tensors="pt")
        grid_thw = proc["image_grid_thw"]  # (n_images, 3) in 14-px patches
        pixel_values = proc["pixel_values"].to(self.device, self.dtype)  # (sum patches, C*T*14*14)
        visual = self.model.model.visual
        out = visual(pixel_values, grid_thw=grid_thw.to(self.device))
        merged = out.pooler_output if hasattr(out, "pooler_output") else out  # (sum N_i, D)
        sizes = (grid_thw.prod(-1) // self.merge**2).tolist()
        encoded = []
        for feats, thw, img in zip(torch.split(merged, sizes), grid_thw, images):
            h, w = int(thw[1]) // self.merge, int(thw[2]) // self.merge
            encoded.append(EncodedImage(feats, (h, w), tuple(img.size), {"grid_thw": thw.clone()}))
        return encoded

    # ------------------------------------------------------------------ text
    def build_prompt(self, text: str, images: list[EncodedImage], system: str | None = None) -> Prompt:
        # The template is rendered around a placeholder; the user text is tokenized with special-token
        # splitting, so a typed <|im_start|> or <|image_pad|> stays text (vitos.models.base).
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": USER_TEXT}]
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = encode_with_user_text(self.tokenizer, rendered, text)
        # Expand each single <|image_pad|> into one placeholder per merged token (what the processor does).
        expanded: list[int] = []
        spans: list[tuple[int, int]] = []
        it = iter(images)
        for tok in ids:
            if tok == self.image_token_id:
                img = next(it, None)
                if img is None:
                    raise ValueError("the chat template produced more image slots than images were given")
                spans.append((len(expanded), len(expanded) + img.num_tokens))
                expanded.extend([tok] * img.num_tokens)
            else:
                expanded.append(tok)
        if len(spans) != len(images):
            raise ValueError(
                f"the chat template produced {len(spans)} image slots for {len(images)} images; "
                "check that the tokenizer's chat template is Qwen2.5-VL's"
            )
        input_ids = torch.tensor(expanded, dtype=torch.long)
        return Prompt(input_ids, self._positions(input_ids, images), spans)

    def _positions(self, input_ids: torch.Tensor, images: list[EncodedImage]) -> torch.Tensor:
        """(L,) ids -> (3, L) M-RoPE positions of the unpruned prompt, from the model's own get_rope_index."""
        if not images:
            return torch.arange(input_ids.numel()).expand(3, -1).clone()
        mm = (input_ids == self.image_token_id).int()[None]  # (1, L)
        grid = torch.stack([im.extra["grid_thw"] for im in images])  # (n, 3)
        pos, _ = self.model.model.get_rope_index(input_ids[None], mm_token_type_ids=mm, image_grid_thw=grid)
        return pos[:, 0].cpu()  # (3, L)

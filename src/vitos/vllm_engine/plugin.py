"""The out-of-tree vLLM model behind `VllmEngine`: Qwen2.5-VL that takes pruned rows at their original positions.

vLLM loads it by architecture name (`hf_overrides={"architectures": [ARCHITECTURE]}`) once `register()` ran:
in-process the engine calls it; vLLM's worker processes find it through the `vllm.general_plugins` entry
point in pyproject.toml. It subclasses vLLM's own Qwen2.5-VL at three points, each only when a request
carries the vitos fields (vitos.vllm_engine.requests) — a plain Qwen2.5-VL request runs unchanged:

    data parser / fields   `vitos_counts` (per image) and `vitos_grid_index` (per row) ride beside
                           image_embeds + image_grid_thw; image_embeds are split by counts, not by the grid
    prompt updates         an image's placeholder becomes counts[i] tokens, not the full grid's
    get_mrope_input_positions   requests.mrope_positions: kept rows at their original (t, h, w), text after an
                           image where it would be unpruned
    embed_multimodal       the given rows, split per image (vitos ran the vision tower already)

Nothing of vLLM is patched: the subclasses are registered under their own names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.model_executor.models.qwen2_vl import Qwen2VLMultiModalDataParser, _create_qwen2vl_field_factory
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import DictEmbeddingItems
from vllm.multimodal.processing import PromptReplacement

from vitos.vllm_engine import ARCHITECTURE, register  # noqa: F401  (re-exported)
from vitos.vllm_engine.requests import ImageSegment, mrope_positions

VITOS_FIELDS = ("vitos_counts", "vitos_grid_index")


def _vitos_fields(merge: int):
    """Field config of an embeddings request: Qwen2-VL's, with image_embeds and the grid index split by the
    per-image row counts when they are given."""
    base = _create_qwen2vl_field_factory(merge)

    def factory(data: Mapping[str, torch.Tensor]) -> Mapping[str, MultiModalFieldConfig]:
        cfg = dict(base(data))
        counts = data.get("vitos_counts")
        if counts is not None:
            sizes = torch.as_tensor(counts).reshape(-1)
            cfg["image_embeds"] = MultiModalFieldConfig.flat_from_sizes("image", sizes)
            cfg["vitos_grid_index"] = MultiModalFieldConfig.flat_from_sizes("image", sizes, keep_on_cpu=True)
            cfg["vitos_counts"] = MultiModalFieldConfig.batched("image", keep_on_cpu=True)
        return cfg

    return factory


class VitosDataParser(Qwen2VLMultiModalDataParser):
    """Accepts the vitos fields beside image_embeds / image_grid_thw."""

    def _parse_image_data(self, data: Any):
        if isinstance(data, dict) and "vitos_counts" in data:
            required, optional = self.embedding_field_sets("image")
            return DictEmbeddingItems(data, modality="image", required_fields=required | set(VITOS_FIELDS),
                                      optional_fields=optional, fields_factory=_vitos_fields(self._spatial_merge_size))
        return super()._parse_image_data(data)


class VitosProcessingInfo(Qwen2_5_VLProcessingInfo):
    def get_data_parser(self):
        return VitosDataParser(
            self.get_hf_config().vision_config.spatial_merge_size,
            video_needs_metadata=True,
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )


class VitosMultiModalProcessor(Qwen2_5_VLMultiModalProcessor):
    def _get_mm_fields_config(self, hf_inputs: Any, hf_processor_mm_kwargs: Mapping[str, object]):
        if "vitos_counts" in hf_inputs:
            return _vitos_fields(self.info.get_hf_config().vision_config.spatial_merge_size)(hf_inputs)
        return super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs)

    def _get_prompt_updates(self, mm_items: Any, hf_processor_mm_kwargs: Mapping[str, Any],
                            out_mm_kwargs: Any) -> Sequence[Any]:
        updates = list(super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs))
        image_token = self.info.get_tokenizer().get_vocab()[self.info.get_hf_processor(**hf_processor_mm_kwargs).image_token]

        def replacement(item_idx: int, default: Any):
            item = out_mm_kwargs["image"][item_idx]
            if "vitos_counts" in item:  # a pruned (or whole) vitos image: exactly its rows
                return [image_token] * int(item["vitos_counts"].data)
            return default(item_idx)

        out = []
        for u in updates:
            if isinstance(u, PromptReplacement) and u.modality == "image":
                u = PromptReplacement(modality="image", target=u.target, replacement=partial(replacement, default=u.replacement))
            out.append(u)
        return out


@MULTIMODAL_REGISTRY.register_processor(VitosMultiModalProcessor, info=VitosProcessingInfo,
                                        dummy_inputs=Qwen2_5_VLDummyInputsBuilder)
class VitosQwen2_5_VLForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL fed vitos' rows at their original positions (the module docstring)."""

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features: list[Any]) -> tuple[torch.Tensor, int]:
        if not mm_features or any("vitos_counts" not in (f.data or {}) for f in mm_features):
            return super().get_mrope_input_positions(input_tokens, mm_features)
        merge = self.config.vision_config.spatial_merge_size
        segments = []
        for f in mm_features:
            t, h, w = (int(v) for v in f.data["image_grid_thw"].data.tolist())
            segments.append(ImageSegment(int(f.mm_position.offset), f.data["vitos_grid_index"].data.long().reshape(-1, 3),
                                         (t, h // merge, w // merge)))
        return mrope_positions(len(input_tokens), segments)

    def embed_multimodal(self, **kwargs: object):
        counts = kwargs.get("vitos_counts")
        if counts is None:
            return super().embed_multimodal(**kwargs)
        embeds = kwargs["image_embeds"]
        if isinstance(embeds, (list, tuple)):
            embeds = torch.cat([torch.as_tensor(e).reshape(-1, torch.as_tensor(e).shape[-1]) for e in embeds])
        sizes = [int(c) for c in (torch.cat([torch.as_tensor(c).reshape(-1) for c in counts])
                                  if isinstance(counts, (list, tuple)) else torch.as_tensor(counts).reshape(-1))]
        return tuple(embeds.to(self.visual.dtype).split(sizes))


"""Ground -> prune -> answer, batched: the ViToS inference path shared by `vitos infer` and `vitos eval`.

    encoded = encode(adapter, images_per_sample)                  # vision tower: once per image
    ground  = generate(grounding prompts on all tokens)          # <think> <box> [<answer>: grounding="full"]
    keeps   = keep_masks(parse_output(ground), encoded, prune)    # boxes -> (H, W) masks per image
    answer  = generate(sparse prompts on kept + fused tokens)     # <think> <answer>

Grounding: `grounding="full"` (the default here, and what training does) lets the grounding pass write its
whole output, its own <answer> included; `grounding="short"` (the default of `vitos infer`, `vitos eval` and
`vitos app`) stops each row right after its box tag closes (`GROUNDING_STOP`, `engine.generate`'s stop strings)
or at the token limit: only the boxes are needed to prune, and the sparse pass gives the answer. Under greedy
decoding the short output is a prefix of the full one, so boxes, kept tokens and answers are the same; only
the grounding branch's own answer is missing (`Answer.grounding`, and its accuracy is unavailable).

Modes: `full` answers in one pass on all visual tokens (the baseline); `vitos` runs the two stages above;
`vitos-evict` grounds and answers after one prefill, evicting the pruned tokens from the KV cache after the
boxes (vitos.single_pass: an approximation of `vitos`, measured against it in README, Benchmarks).
Any grounding output that yields no usable box (no tag, unparseable, out of range) falls back to keeping
every token of that image, and the reason is returned in `fallback` — never an exception.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch

from vitos.config import Range
from vitos.data.sample import Sample
from vitos.engine import Generation, SamplingConfig, generate
from vitos.images import load_image
from vitos.models.base import EncodedImage, ModelAdapter, Prompt
from vitos.prompts import ParsedOutput, grounding_prompt, parse_output, sparse_prompt
from vitos.pruning.boxes import boxes_to_keep_mask, image_box_to_grid_box
from vitos.pruning.sparse import SequenceInputs, assemble

Mode = Literal["full", "vitos", "vitos-evict"]
PIPELINE_MODES = ("full", "vitos", "vitos-evict")
Grounding = Literal["short", "full"]
GROUNDINGS = ("short", "full")
GROUNDING_STOP = ("</box>",)
"""Stop strings of a short grounding pass: the closing box tag as the model is trained to write it (a variant
the parser also reads, e.g. `</ box>`, does not stop it; that row then runs on as a full pass would)."""


@dataclass
class PruneConfig:
    """How predicted boxes become kept tokens."""

    margin: Annotated[float, Range(ge=0, le=1)] = 0.0
    """Dilate each box by this much on every side (normalised units) before selecting tokens."""
    min_keep: Annotated[int, Range(ge=1)] = 1
    """Keep at least this many tokens per image (nearest to the box centres are added)."""
    fusion: Literal["none", "merge", "contextual"] = "merge"
    """How pruned tokens are folded in: drop them, merge each into its most similar kept token, or
    summarise them in `num_contextual` extra tokens (VisionZip style)."""
    num_contextual: Annotated[int, Range(ge=0)] = 4
    """Extra summary tokens per image for fusion=contextual."""


@dataclass
class Answer:
    """What one sample's inference produced."""

    answer: str | None
    """The parsed <answer> (None when the answer pass wrote no <answer> tag)."""
    answer_text: str
    """The answer pass's full completion."""
    grounding_text: str | None = None
    """The grounding pass's completion (vitos mode); with grounding="short" it ends after `</box>`."""
    grounding: Grounding | None = None
    """How the grounding pass ran: "full" (its own <answer> included) or "short" (stopped after the boxes);
    None when there was none (mode full, baselines, given boxes)."""
    grounding_tokens: int | None = None
    """Tokens the grounding pass generated for this sample (None without a grounding pass)."""
    boxes: list[list[float]] = field(default_factory=list)
    """Boxes used for pruning (normalised), empty when none."""
    box_images: list[int] = field(default_factory=list)
    """0-based image index per box."""
    fallback: str | None = None
    """Why pruning was skipped for some image, or None."""
    visual_tokens_total: int = 0
    visual_tokens_kept: int = 0
    keep_masks: list[torch.Tensor | None] = field(default_factory=list)
    """Per image (H, W) keep mask or None (kept whole)."""
    grid_regions: list[tuple[float, float, float, float]] = field(default_factory=list)
    """Per image: the part of its token grid the image fills (see `EncodedImage.grid_region`)."""
    timings_ms: dict[str, float] = field(default_factory=dict)
    """Per stage wall time of the batch this sample ran in: encode, grounding, prune, answer."""


def load_sample_images(sample: Sample) -> list[Any]:
    return [load_image(im) for im in sample.images]


@torch.no_grad()
def encode(adapter: ModelAdapter, images: list[list[Any]]) -> list[list[EncodedImage]]:
    """One vision-tower call for every image of every sample; result regrouped per sample."""
    flat = [im for ims in images for im in ims]
    enc = adapter.encode_images(flat)
    out, i = [], 0
    for ims in images:
        out.append(enc[i : i + len(ims)])
        i += len(ims)
    return out


def keep_mask_for_image(boxes: list[list[float]], image: EncodedImage, prune: PruneConfig) -> torch.Tensor:
    """Image-normalised boxes -> (H, W) keep mask over this image's token grid (padding-aware)."""
    on_grid = [image_box_to_grid_box(b, image.grid_region) for b in boxes]
    return boxes_to_keep_mask(on_grid, image.grid_hw, margin=prune.margin, min_keep=prune.min_keep)


def keep_masks(
    parsed: ParsedOutput, images: list[EncodedImage], prune: PruneConfig
) -> tuple[list[torch.Tensor | None], str | None]:
    """Boxes of one grounding output -> per-image keep masks; images without a box are kept whole."""
    if parsed.boxes is None:
        reason = parsed.box_error or "the grounding output has no <box> tag"
        return [None] * len(images), f"kept all visual tokens: {reason}"
    masks: list[torch.Tensor | None] = []
    missing = []
    for k, image in enumerate(images):
        mine = [b for b, i in zip(parsed.boxes, parsed.box_images or [0] * len(parsed.boxes)) if i == k]
        if not mine:
            masks.append(None)
            missing.append(k + 1)
            continue
        masks.append(keep_mask_for_image(mine, image, prune))
    note = f"kept all visual tokens of image(s) {missing}: no box points into them" if missing else None
    return masks, note


def _prompts(adapter, samples, encoded, prompt_fn, texts=None) -> list[Prompt]:
    out = []
    for i, (s, enc) in enumerate(zip(samples, encoded)):
        text = texts[i] if texts is not None else prompt_fn(s.question, s.options, s.kind, max(1, len(enc)))
        out.append(adapter.build_prompt(text, enc))
    return out


def _prompt_seqs(adapter, samples, encoded, prompt_fn, keeps, prune, texts=None) -> list[SequenceInputs]:
    return [assemble(adapter, prompt, enc, keep, fusion=prune.fusion, num_contextual=prune.num_contextual)
            for prompt, enc, keep in zip(_prompts(adapter, samples, encoded, prompt_fn, texts), encoded, keeps)]


def _decode(adapter, engine, samples, encoded, prompt_fn, keeps, prune, sampling, texts=None,
            stop_strings=()) -> tuple[Generation, list[tuple[int, int]]]:
    """One pass over the batch: (completions, per sample (visual tokens total, fed)). engine None = the Python
    decode loop (`vitos.engine.generate`, the reference); else a `vitos.vllm_engine.engine.VllmEngine`, fed the
    same rows at the same positions (vitos.vllm_engine.requests)."""
    if engine is None:
        seqs = _prompt_seqs(adapter, samples, encoded, prompt_fn, keeps, prune, texts)
        return generate(adapter, seqs, sampling, stop_strings=stop_strings), [(q.n_visual_total, q.n_visual_kept) for q in seqs]
    from vitos.vllm_engine.requests import build_request

    reqs = [build_request(adapter, prompt, enc, keep, prune.fusion, prune.num_contextual)
            for prompt, enc, keep in zip(_prompts(adapter, samples, encoded, prompt_fn, texts), encoded, keeps)]
    gen = engine.generate_for(adapter, reqs, sampling, stop_strings=stop_strings)
    return gen, [(sum(e.num_tokens for e in enc), sum(r.counts)) for enc, r in zip(encoded, reqs)]


def run(
    adapter: ModelAdapter,
    samples: list[Sample],
    mode: Mode = "vitos",
    prune: PruneConfig | None = None,
    sampling: SamplingConfig | None = None,
    images: list[list[Any]] | None = None,
    keeps_override: list[list[torch.Tensor | None]] | None = None,
    given_boxes: list[ParsedOutput] | None = None,
    encoded: list[list[EncodedImage]] | None = None,
    answer_prompts: list[str] | None = None,
    grounding: Grounding = "full",
    engine: Any = None,
) -> list[Answer]:
    """Answer a batch of samples in `mode`.

    `keeps_override` (training-free baselines) skips grounding and answers from the given masks;
    `given_boxes` (user-drawn regions, `vitos infer --boxes`) replaces the grounding pass's output in
    vitos mode, with the same fallback rules. `encoded` (from `encode`) skips the vision tower for callers
    that already ran it (the evaluation baselines score tokens before choosing masks); `answer_prompts`
    replaces the answer pass's user text (default `sparse_prompt`), e.g. with a benchmark's own prompt.
    `grounding`: "full" (default; the grounding branch answers too, as in training) or "short" (each row of
    the grounding pass stops after its `</box>`; the module docstring). `engine`: None (the Python decode
    loop) or a `VllmEngine` (`--engine vllm`; modes full and vitos)."""
    if grounding not in GROUNDINGS:
        raise ValueError(f"unknown grounding {grounding!r}; use 'short' or 'full'")
    if mode not in PIPELINE_MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {PIPELINE_MODES}")
    prune = prune or PruneConfig()
    sampling = sampling or SamplingConfig()
    if answer_prompts is not None and len(answer_prompts) != len(samples):
        raise ValueError(f"{len(answer_prompts)} answer_prompts for {len(samples)} samples; give one per sample")
    t = {}
    t0 = time.perf_counter()
    if encoded is None:
        images = images if images is not None else [load_sample_images(s) for s in samples]
        encoded = encode(adapter, images)
    elif len(encoded) != len(samples):
        raise ValueError(f"{len(encoded)} encoded image lists for {len(samples)} samples; give one per sample")
    t["encode"] = (time.perf_counter() - t0) * 1e3

    grounding_texts: list[str | None] = [None] * len(samples)
    grounding_tokens: list[int | None] = [None] * len(samples)
    parsed: list[ParsedOutput | None] = [None] * len(samples)
    fallbacks: list[str | None] = [None] * len(samples)
    if keeps_override is not None:
        keeps = keeps_override
    elif mode == "full":
        keeps = [[None] * len(e) for e in encoded]
    elif mode == "vitos":
        t0 = time.perf_counter()
        if given_boxes is None:
            stops = GROUNDING_STOP if grounding == "short" else ()
            gen, _ = _decode(adapter, engine, samples, encoded, grounding_prompt, [[None] * len(e) for e in encoded],
                             prune, sampling, stop_strings=stops)
            grounding_texts = list(gen.texts)
            grounding_tokens = [int(ids.numel()) for ids in gen.token_ids]
            parsed = [parse_output(text, "grounding", n_images=len(e)) for text, e in zip(gen.texts, encoded)]
        else:
            parsed = list(given_boxes)
        t["grounding"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        keeps = []
        for i, enc in enumerate(encoded):
            masks, fallbacks[i] = keep_masks(parsed[i], enc, prune)
            keeps.append(masks)
        t["prune"] = (time.perf_counter() - t0) * 1e3
    elif mode == "vitos-evict":
        if engine is not None:
            raise ValueError("mode 'vitos-evict' evicts from the Python engine's KV cache; use mode 'vitos' with the "
                             "vLLM engine, or the default engine")
        if given_boxes is not None or answer_prompts is not None:
            raise ValueError("mode 'vitos-evict' answers in the grounding pass's own conversation: given boxes and "
                             "answer prompts need mode 'vitos'")
        return _run_evict(adapter, samples, encoded, prune, sampling, t)

    t0 = time.perf_counter()
    gen, counts = _decode(adapter, engine, samples, encoded, sparse_prompt, keeps, prune, sampling, texts=answer_prompts)
    t["answer"] = (time.perf_counter() - t0) * 1e3

    results = []
    for i, ((n_total, n_kept), text) in enumerate(zip(counts, gen.texts)):
        p = parsed[i]
        used = p is not None and p.boxes is not None
        results.append(
            Answer(
                answer=parse_output(text, "sparse").answer,
                answer_text=text,
                grounding_text=grounding_texts[i],
                grounding=grounding if grounding_texts[i] is not None else None,
                grounding_tokens=grounding_tokens[i],
                boxes=list(p.boxes) if used else [],
                box_images=list(p.box_images or []) if used else [],
                fallback=fallbacks[i],
                visual_tokens_total=n_total,
                visual_tokens_kept=n_kept,
                keep_masks=keeps[i],
                grid_regions=[e.grid_region for e in encoded[i]],
                timings_ms=dict(t),
            )
        )
    return results


def _run_evict(adapter: ModelAdapter, samples: list[Sample], encoded: list[list[EncodedImage]], prune: PruneConfig,
               sampling: SamplingConfig, t: dict[str, float]) -> list[Answer]:
    """mode="vitos-evict": vitos.single_pass on the grounding prompts; the answer is the <answer> of the
    grounding output continued after its boxes."""
    from vitos.single_pass import run_single_pass

    parsed: list[ParsedOutput | None] = [None] * len(samples)
    fallbacks: list[str | None] = [None] * len(samples)

    def keeps_for(i: int, text: str) -> list[torch.Tensor | None]:
        parsed[i] = parse_output(text, "grounding", n_images=len(encoded[i]))
        masks, fallbacks[i] = keep_masks(parsed[i], encoded[i], prune)
        return masks

    t0 = time.perf_counter()
    prompts = [adapter.build_prompt(grounding_prompt(s.question, s.options, s.kind, max(1, len(e))), e)
               for s, e in zip(samples, encoded)]
    outs = run_single_pass(adapter, prompts, encoded, keeps_for, sampling, prune.fusion, prune.num_contextual)
    t["single_pass"] = (time.perf_counter() - t0) * 1e3
    results = []
    for i, o in enumerate(outs):
        p = parsed[i]
        used = p is not None and p.boxes is not None
        results.append(Answer(
            answer=parse_output(o.grounding_text + o.answer_text, "grounding", n_images=len(encoded[i])).answer,
            answer_text=o.answer_text, grounding_text=o.grounding_text, grounding="short",
            grounding_tokens=o.grounding_tokens, boxes=list(p.boxes) if used else [],
            box_images=list(p.box_images or []) if used else [], fallback=fallbacks[i],
            visual_tokens_total=sum(e.num_tokens for e in encoded[i]), visual_tokens_kept=o.visual_tokens_kept,
            keep_masks=o.keeps, grid_regions=[e.grid_region for e in encoded[i]], timings_ms=dict(t)))
    return results

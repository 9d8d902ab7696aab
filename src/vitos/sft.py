"""Supervised warm start: give a random tiny VLM eyes, the output format and some grounding before RL.

Real VLMs (Lingshu-7B, HuatuoGPT-Vision-7B) can already see, follow instructions and point at regions; a
randomly initialised tiny model can do none of it, and RL from random text would never sample a valid
box. The paper starts RL from such instruction-tuned checkpoints and has no warm start; this module
exists so that the embedded demo (`vitos demo`) can run the paper's RL on a CPU. Two stages:

0. `pretrain_vision`: dense per-token targets for the vision tower alone (spot class, evidence flag, the
   token's own cell centre, the evidence box), through a throw-away linear head. Seconds, not minutes,
   because only the tower runs and every image gives 64 targets instead of one.
1. `warm_start`: next-token loss on reference completions of both branches, from samples with evidence
   boxes (MedPhantom, ViTAR-16K). Per sample, the sequences listed in `SFTConfig.sequences`:

    grounding   all tokens + grounding prompt      -> "<think>Tg</think><box>[[gt box]]</box><answer>A</answer>"
    sparse      tokens kept by a (jittered) GT box -> "<think>Ts</think><answer>A</answer>"
    full        all tokens + sparse prompt         -> "<think>Ts</think><answer>A</answer>"
    where       all tokens + "Where is the evidence?" -> "<box>[[gt box]]</box>"

   Tg says where the evidence is, Ts what it shows (`think_texts`), A is the reference answer.

What we measured on MedPhantom with the 64-wide two-layer tiny model (2 CPU cores), and why the pieces are
there:
  * without stage 0 nothing generalised: 600 steps of stage 1 left every answer at the majority class;
  * the position target matters because rotary embeddings act on attention scores, never on the values
    a head returns: a tiny LM cannot read *where* a visual token sits, so boxes collapsed to the image
    centre. Pretrained towers carry position in their features; the target puts it there;
  * stage 1 must start with short targets, `sequences=("sparse", "where")` (the demo runs it for a few
    hundred steps): answers written from ALL tokens cannot be predicted by a model that cannot yet relate
    a spot to the organ around it, and mixing them in from step 0 taught the model to ignore the spots
    (no learning after 400 steps; sparse first: oracle-box accuracy 0.8 after 300 + 300 steps);
  * 'where' is what makes boxes follow the image: under the ~200-token grounding prompt alone the tiny LM
    wrote the same box for every image (mIoU 0.33 after 300 box-only steps); under the 5-word prompt it
    learned to localise (0.47), and with both prompts in every batch the long one followed (0.48);
  * 'full' trains the baseline's input: `vitos.pipeline.run(mode="full")` answers with the sparse prompt
    on all tokens, and without these targets that baseline would be scored on inputs it never saw;
  * `box_jitter` lets the sparse branch answer from the slightly-off boxes grounding really produces;
  * think='compact' (two short sentences, not MedPhantom's long `meta["thinking"]`): every target token is
    a decoding step of every RL rollout, so short targets make RL several times faster.

    from vitos.sft import SEQUENCE_KINDS, SFTConfig, VisionPretrainConfig, pretrain_vision, warm_start
    pretrain_vision(adapter, train_samples, VisionPretrainConfig(steps=150))
    warm_start(adapter, train_samples, SFTConfig(steps=250, sequences=("sparse", "where"), freeze_vision=True), prune)
    warm_start(adapter, train_samples, SFTConfig(steps=250, sequences=SEQUENCE_KINDS, freeze_vision=True), prune)
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass
from collections.abc import Iterator
from typing import IO, Any, Callable

import torch

from vitos.data.sample import Sample
from vitos.progress import StageProgress, _isatty  # noqa: F401  (re-exported: StageProgress lived here)
from vitos.engine import completion_logprobs
from vitos.images import load_image
from vitos.models.base import ModelAdapter
from vitos.pipeline import PruneConfig
from vitos.prompts import format_grounding_target, format_sparse_target, grounding_prompt, sparse_prompt
from vitos.pruning.boxes import boxes_to_keep_mask
from vitos.pruning.sparse import assemble

THINK_STYLES = ("compact", "short", "full", "none")
SEQUENCE_KINDS = ("grounding", "sparse", "full", "where")
WHERE_PROMPT = "Where is the evidence?"
"""User text of the 'where' sequence: a short prompt whose target is the evidence box alone."""
_NUMBER_WORDS = {0: "no", 1: "one", 2: "two", 3: "three", 4: "four"}


@dataclass
class SFTConfig:
    """Warm-start hyper-parameters."""

    steps: int = 300
    """Optimizer steps."""
    batch_size: int = 8
    """Samples per step (each gives one target per entry of `sequences`)."""
    lr: float = 1e-3
    """AdamW peak learning rate (linear warm-up over `warmup_steps`, then `schedule`)."""
    warmup_steps: int = 10
    """Steps of linear learning-rate warm-up."""
    schedule: str = "constant"
    """After warm-up: 'constant' or 'cosine' (decays to 10 % of `lr` at the last step)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    think: str = "compact"
    """Reasoning target: 'compact' (where / what, two short sentences), 'short' (first sentence of
    meta['thinking'] for both branches), 'full' (all of meta['thinking']) or 'none' (a fixed sentence)."""
    sequences: tuple[str, ...] = ("grounding", "sparse", "full")
    """Which target sequences each sample contributes: 'grounding', 'sparse' (GT-box tokens), 'full'
    (the sparse prompt on ALL visual tokens, the `mode='full'` baseline's input) and 'where' (WHERE_PROMPT
    on all tokens -> "<box>[[gt box]]</box>": localisation without ~200 instruction tokens around it)."""
    box_jitter: float = 0.0
    """Sparse sequence: move each GT box side by up to this much (uniform, normalised units) before
    selecting tokens, so the sparse branch tolerates imperfect predicted boxes (0 = exact GT boxes)."""
    box_decimals: int = 2
    """Decimals of box coordinates in the grounding target."""
    freeze_vision: bool = False
    """Keep the vision tower fixed (after `pretrain_vision`, so its dense features are not washed out
    while the language model is still random)."""
    seed: int = 0
    """Seeds the sample order and the box jitter."""

    def __post_init__(self) -> None:
        if self.think not in THINK_STYLES:
            raise ValueError(f"think must be one of {THINK_STYLES}, got {self.think!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        unknown = set(self.sequences) - set(SEQUENCE_KINDS)
        if unknown or not self.sequences:
            raise ValueError(f"sequences must be a non-empty subset of {SEQUENCE_KINDS}, got {self.sequences}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")


# --------------------------------------------------------------------------------------------------
# Progress of long loops
# --------------------------------------------------------------------------------------------------


def _progress(total: int, progress: bool | str | StageProgress, default_desc: str) -> StageProgress:
    """`progress` argument of the loops -> a StageProgress: False = silent, True = default name, str = name."""
    if isinstance(progress, StageProgress):
        return progress
    return StageProgress(total, progress if isinstance(progress, str) else default_desc, enabled=bool(progress))


# --------------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------------


def _first_sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".") + "."


def think_texts(sample: Sample, style: str) -> tuple[str, str]:
    """(grounding think, sparse think) for one sample.

    'compact' on a MedPhantom sample: ("The kidney is in the upper left.", "The kidney shows one dark
    lesion."): the grounding branch names the place it will box, the sparse branch what the kept tokens
    show. Other samples, and other styles, use `meta["thinking"]` as described on `SFTConfig.think`.
    """
    if style not in THINK_STYLES:
        raise ValueError(f"think style must be one of {THINK_STYLES}, got {style!r}")
    meta = sample.meta
    text = str(meta.get("thinking", "")).strip()
    if style == "none" or (not text and style != "compact"):
        return "Look at the evidence.", "Look at the evidence."
    if style == "compact" and {"organ", "location", "lesions"} <= set(meta):
        organ, lesions = meta["organ"], meta["lesions"]
        n = len(lesions)
        if n == 0:
            what = "no lesion"
        else:
            what = f"{_NUMBER_WORDS.get(n, str(n))} {lesions[0]['brightness']} lesion{'s' if n > 1 else ''}"
        return f"The {organ} is in the {meta['location']}.", f"The {organ} shows {what}."
    if style == "compact":
        short = _first_sentence(text) if text else "Look at the evidence."
        return short, short
    think = _first_sentence(text) if style == "short" else text
    return think, think


def targets(sample: Sample, style: str, decimals: int = 2) -> tuple[str, str]:
    """(grounding target, sparse target) for one sample with ground-truth boxes."""
    g_think, s_think = think_texts(sample, style)
    return (
        format_grounding_target(g_think, sample.boxes, sample.answer, decimals=decimals),
        format_sparse_target(s_think, sample.answer),
    )


def where_target(sample: Sample, decimals: int = 2) -> str:
    """The 'where' sequence's target: the grounding target's box block alone, "<box>[[x1,y1,x2,y2]]</box>"."""
    text = format_grounding_target("x", sample.boxes, "x", decimals=decimals)
    return text[text.index("<box>") : text.index("</box>") + len("</box>")]


def jitter_boxes(boxes: list[list[float]], amount: float, rng: random.Random) -> list[list[float]]:
    """Move every side of every box by U(-amount, amount), clipped to [0, 1], never inverting a box."""
    if amount <= 0:
        return [list(b) for b in boxes]
    out = []
    for x1, y1, x2, y2 in boxes:
        nx1, ny1, nx2, ny2 = (v + rng.uniform(-amount, amount) for v in (x1, y1, x2, y2))
        nx1, ny1 = min(max(nx1, 0.0), 1.0), min(max(ny1, 0.0), 1.0)
        nx2, ny2 = min(max(nx2, 0.0), 1.0), min(max(ny2, 0.0), 1.0)
        if nx2 - nx1 < 1e-3 or ny2 - ny1 < 1e-3:  # jitter collapsed the box: keep the original
            nx1, ny1, nx2, ny2 = x1, y1, x2, y2
        out.append([nx1, ny1, nx2, ny2])
    return out


def _tokens(adapter: ModelAdapter, text: str) -> torch.Tensor:
    ids = adapter.tokenizer(text, add_special_tokens=False)["input_ids"] + [adapter.eos_token_ids[0]]
    return torch.tensor(ids, dtype=torch.long)


# --------------------------------------------------------------------------------------------------
# Stage 0: dense pre-training of a random vision tower
# --------------------------------------------------------------------------------------------------


@dataclass
class VisionPretrainConfig:
    """Dense, per-token supervision of the vision tower before the text warm start (random towers only)."""

    steps: int = 150
    """Optimizer steps (0 = skip the stage)."""
    batch_size: int = 32
    """Images per step."""
    lr: float = 2e-3
    """AdamW learning rate (linear warm-up over 10 steps, then constant)."""
    spot_weight: float = 4.0
    """Cross-entropy weight of the rare spot classes (dark, bright) against 'no spot'."""
    position_weight: float = 10.0
    """Weight of the squared error of each token's predicted cell centre (normalised x, y)."""
    box_weight: float = 10.0
    """Weight of the squared error of the evidence box [x1, y1, x2, y2] regressed by each token inside it
    (0 = off). The grounding branch then only has to average what its evidence tokens say."""
    mask_spot_cells: bool = False
    """Cells that hold a spot (lesion or distractor) get evidence flag 0 and no box target: a spot token then
    says what it is and where, never whether it lies in the organ, so a reader of ALL tokens has to relate
    each spot to the organ itself (what makes full tokens mislead), while a reader of the evidence box's
    tokens only has to see a spot (`token_labels` says why the unmasked targets make full tokens easy)."""
    seed: int = 0
    """Seeds the sample order."""


def _batches(samples: list[Sample], size: int, rng: random.Random) -> Iterator[list[Sample]]:
    """Endless batches of `size`: each pass over `samples` is a fresh shuffle, drawn only when needed
    (so other draws from `rng` between batches, e.g. box jitter, keep their place)."""
    order: list[Sample] = []
    while True:
        if len(order) < size:
            order += rng.sample(samples, len(samples))
        batch, order = order[:size], order[size:]
        yield batch


def _vision_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters of the vision tower and merger (Qwen2.5-VL: `model.visual.*`)."""
    return [p for n, p in model.named_parameters() if ".visual." in f".{n}"]


def cell_centres(grid_hw: tuple[int, int]) -> torch.Tensor:
    """Normalised (x, y) centre of every cell of an H x W grid in raster order: (H*W, 2)."""
    h, w = grid_hw
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h  # (H,)
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w  # (W,)
    return torch.stack([xs.repeat(h), ys.repeat_interleave(w)], dim=1)  # (H*W, 2)


def token_labels(sample: Sample, grid_hw: tuple[int, int], image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per merged token of images[0]: (spot class (H*W,) long: 0 none, 1 dark, 2 bright, -1 unknown;
    evidence (H*W,) float: 1 inside a GT box's keep mask, else 0).

    Spot classes come from MedPhantom's meta (every lesion and distractor centre; a token holds the spot
    whose centre falls in its cell); samples without that meta get -1 (ignored). Both labels are local
    properties of one cell, and lesion-vs-distractor is never labelled. But a lesion token is exactly a
    spot token that is also an evidence token, so a model that reads ALL tokens can learn to find it:
    that is why the demo's full-token warm start is well above chance, and ViToS has to match it rather
    than beat a model blinded by distractors.
    """
    h, w = grid_hw
    evidence = boxes_to_keep_mask(sample.boxes, grid_hw, margin=0.0, min_keep=0).reshape(-1).float()  # (H*W,)
    spots = list(sample.meta.get("lesions", [])) + list(sample.meta.get("distractors", []))
    if "lesions" not in sample.meta:
        return torch.full((h * w,), -1, dtype=torch.long), evidence
    classes = torch.zeros(h * w, dtype=torch.long)
    width, height = image_size
    for spot in spots:
        cx, cy = spot["center"]
        r, c = min(int(cy * h / height), h - 1), min(int(cx * w / width), w - 1)
        classes[r * w + c] = 1 if spot["brightness"] == "dark" else 2
    return classes, evidence


def token_boxes(sample: Sample, grid_hw: tuple[int, int]) -> torch.Tensor:
    """(H*W, 4) per token of images[0]: the first GT box whose keep mask holds the token, NaN elsewhere."""
    h, w = grid_hw
    out = torch.full((h * w, 4), float("nan"))
    for box in reversed(sample.boxes):  # reversed: the first box wins where boxes overlap
        inside = boxes_to_keep_mask([box], grid_hw, margin=0.0, min_keep=0).reshape(-1)  # (H*W,)
        out[inside] = torch.tensor(box, dtype=torch.float32)
    return out


def pretrain_vision(
    adapter: ModelAdapter,
    samples: list[Sample],
    cfg: VisionPretrainConfig | None = None,
    on_step: Callable[[int, float], None] | None = None,
    head: torch.nn.Linear | None = None,
    progress: bool | str | StageProgress = False,
) -> list[float]:
    """Train the vision tower (and merger) with a throw-away linear head on per-token targets.

    Targets per merged token: its spot class and evidence flag (`token_labels`), its own cell centre
    (`cell_centres`, normalised x, y) and, inside an evidence box, that box (`token_boxes`). Why:
      * a real VLM's tower is pretrained; the tiny one is random, and learning to see small spots from a
        one-token answer, through an LM, did not generalise after 4,800 samples in our runs. Dense labels
        give 64 targets per image instead of one, and only the tower runs, so the stage costs seconds;
      * position: rotary embeddings act on attention scores, never on the values an attention head
        returns, so a tiny LM cannot read *where* a token sits, and box coordinates (or "upper left") cannot
        be learned. Pretrained towers carry position in their features (CLIP-style towers through absolute
        position embeddings, large RoPE towers through training); the target puts it there;
      * box: with it, the grounding branch's box is the average of what its evidence tokens say (measured:
        0.46-0.53 IoU for that average after 150-200 steps; the LM still has to learn to take it).
    The head is discarded; the LM is untouched. Returns the loss per step. `progress`: True (or a name, or a
    StageProgress) shows a bar with rate and ETA on a terminal, plain lines elsewhere (StageProgress).
    """
    cfg = cfg or VisionPretrainConfig()
    usable = [s for s in samples if s.boxes]
    if cfg.steps <= 0 or not usable:
        return []
    rng = random.Random(cfg.seed)
    images = {s.id: load_image(s.images[0]) for s in usable}
    model = adapter.model
    dim = int(adapter.encode_images([images[usable[0].id]])[0].features.shape[-1])
    if head is None:  # pass a head to inspect it afterwards (tests, diagnostics)
        # 3 spot classes, evidence, (x, y), then the box only when it is trained
        head = torch.nn.Linear(dim, 10 if cfg.box_weight > 0 else 6).to(adapter.device)
    vision = _vision_parameters(model)
    if not vision:
        raise ValueError("pretrain_vision found no vision-tower parameters (expected names containing 'visual.')")
    opt = torch.optim.AdamW(vision + list(head.parameters()), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 10))
    weight = torch.tensor([1.0, cfg.spot_weight, cfg.spot_weight], device=adapter.device)
    model.train()
    batches = _batches(usable, cfg.batch_size, rng)
    losses = []
    bar = _progress(cfg.steps, progress, "vision pre-training")
    try:
        for step in range(cfg.steps):
            batch = next(batches)
            encoded = adapter.encode_images([images[s.id] for s in batch])
            feats = torch.cat([e.features for e in encoded])  # (sum N, D)
            labels = [token_labels(s, e.grid_hw, e.image_size) for s, e in zip(batch, encoded)]
            spot = torch.cat([lab[0] for lab in labels]).to(adapter.device)  # (sum N,)
            evidence = torch.cat([lab[1] for lab in labels]).to(adapter.device)  # (sum N,)
            if cfg.mask_spot_cells:
                evidence = evidence.masked_fill(spot > 0, 0.0)
            centres = torch.cat([cell_centres(e.grid_hw) for e in encoded]).to(adapter.device)  # (sum N, 2)
            logits = head(feats.float())  # (sum N, 10) or (sum N, 6)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 3], evidence)
            loss = loss + cfg.position_weight * torch.nn.functional.mse_loss(logits[:, 4:6], centres)
            if cfg.box_weight > 0:  # evidence tokens regress their own box (FCOS-style dense grounding)
                boxes = torch.cat([token_boxes(s, e.grid_hw) for s, e in zip(batch, encoded)]).to(adapter.device)  # (sum N, 4)
                if cfg.mask_spot_cells:
                    boxes = boxes.masked_fill((spot > 0)[:, None], float("nan"))
                inside = ~boxes[:, 0].isnan()  # (sum N,)
                if inside.any():
                    loss = loss + cfg.box_weight * torch.nn.functional.mse_loss(logits[inside, 6:10], boxes[inside])
            if (spot >= 0).any():
                loss = loss + torch.nn.functional.cross_entropy(logits[:, :3], spot, weight=weight, ignore_index=-1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vision, 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.update(loss=losses[-1])
            if on_step:
                on_step(step, losses[-1])
    finally:
        bar.close()
        model.eval()
    return losses


# --------------------------------------------------------------------------------------------------
# Loss and loop
# --------------------------------------------------------------------------------------------------


def sft_loss(
    adapter: ModelAdapter,
    samples: list[Sample],
    images: list[list[Any]],
    cfg: SFTConfig,
    prune: PruneConfig,
    rng: random.Random | None = None,
) -> torch.Tensor:
    """Mean token NLL of every target sequence of a batch (the vision tower runs once, with gradients)."""
    rng = rng or random.Random(cfg.seed)
    flat = [im for ims in images for im in ims]
    encoded_flat = adapter.encode_images(flat)
    seqs, comps = [], []
    i = 0
    for s, ims in zip(samples, images):
        enc = encoded_flat[i : i + len(ims)]
        i += len(ims)
        g_target, s_target = targets(s, cfg.think, cfg.box_decimals)
        n = len(enc)
        g_text = grounding_prompt(s.question, s.options, s.kind, n)
        s_text = sparse_prompt(s.question, s.options, s.kind, n)
        g_prompt = adapter.build_prompt(g_text, enc)
        s_prompt = adapter.build_prompt(s_text, enc)
        if "grounding" in cfg.sequences:
            seqs.append(assemble(adapter, g_prompt, enc))
            comps.append(_tokens(adapter, g_target))
        if "sparse" in cfg.sequences:
            # Sample.boxes refer to images[0]; further images are kept whole.
            boxes = jitter_boxes(s.boxes, cfg.box_jitter, rng)
            keep = [boxes_to_keep_mask(boxes, enc[0].grid_hw, margin=prune.margin, min_keep=prune.min_keep)]
            keep += [None] * (n - 1)
            seqs.append(assemble(adapter, s_prompt, enc, keep, fusion=prune.fusion, num_contextual=prune.num_contextual))
            comps.append(_tokens(adapter, s_target))
        if "full" in cfg.sequences:
            seqs.append(assemble(adapter, s_prompt, enc))
            comps.append(_tokens(adapter, s_target))
        if "where" in cfg.sequences:
            seqs.append(assemble(adapter, adapter.build_prompt(WHERE_PROMPT, enc), enc))
            comps.append(_tokens(adapter, where_target(s, cfg.box_decimals)))
    logp, mask = completion_logprobs(adapter, seqs, comps)  # (S, T) each
    return -(logp * mask).sum() / mask.sum()


def lr_factor(cfg: SFTConfig, step: int) -> float:
    """Multiplier of cfg.lr at 0-based `step`: linear warm-up, then constant or cosine to 0.1."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - cfg.warmup_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def warm_start(
    adapter: ModelAdapter,
    samples: list[Sample],
    cfg: SFTConfig | None = None,
    prune: PruneConfig | None = None,
    on_step: Callable[[int, float], None] | None = None,
    progress: bool | str | StageProgress = False,
) -> list[float]:
    """Train on the reference completions of both branches; returns the loss per step.

    Only samples with ground-truth boxes are used. Images are loaded once up front. `progress`: as in
    `pretrain_vision` (a bar with rate and ETA on a terminal, plain lines elsewhere).
    """
    cfg = cfg or SFTConfig()
    prune = prune or PruneConfig()
    usable = [s for s in samples if s.boxes]
    if not usable:
        raise ValueError("the warm start needs samples with ground-truth boxes (e.g. MedPhantom or ViTAR-16K rows)")
    rng = random.Random(cfg.seed)
    images = {s.id: [load_image(im) for im in s.images] for s in usable}
    model = adapter.model
    model.train()
    frozen = {id(p) for p in _vision_parameters(model)} if cfg.freeze_vision else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in frozen]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(cfg, step))
    batches = _batches(usable, cfg.batch_size, rng)
    losses = []
    bar = _progress(cfg.steps, progress, "warm start")
    try:
        for step in range(cfg.steps):
            batch = next(batches)
            loss = sft_loss(adapter, batch, [images[s.id] for s in batch], cfg, prune, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.update(loss=losses[-1])
            if on_step:
                on_step(step, losses[-1])
    finally:
        bar.close()
        model.eval()
    return losses

"""Supervised warm start: teach a model the two branches' output format (and some grounding) before RL.

Real VLMs (Lingshu-7B, HuatuoGPT-Vision-7B) can already follow instructions and point at regions; a
randomly initialised tiny model cannot, and RL from random text would never sample a valid box. This
stage minimises the negative log-likelihood of reference completions built from samples that carry
evidence boxes (MedPhantom, ViTAR-16K). Per sample, up to three sequences (`SFTConfig.sequences`):

    grounding     all tokens + grounding prompt  -> "<think>Tg</think><box>[[gt box]]</box><answer>A</answer>"
    sparse        tokens kept by a (jittered) GT box + fusion + sparse prompt -> "<think>Ts</think><answer>A</answer>"
    full answer   all tokens + sparse prompt     -> "<think>Ts</think><answer>A</answer>"   ('full')

Tg says where the evidence is, Ts what it shows (`think_texts`), A is the reference answer.

Why each piece:
  * the box target is jittered for the sparse sequence (`box_jitter`), so the sparse branch learns to
    answer from the slightly-off boxes the grounding branch will really produce, not only from perfect ones;
  * the full-answer sequence trains the same answer head on all visual tokens. `vitos.pipeline.run(mode=
    "full")` answers with the sparse prompt on all tokens; without this sequence that baseline would be
    scored on inputs it never saw in training, and "pruning helps" would be an artefact of the warm start;
  * think='compact' uses two short generated sentences instead of MedPhantom's long `meta["thinking"]`:
    every target token is a decoding step in every RL rollout, so short targets make RL several times
    faster on a CPU. Samples without MedPhantom metadata fall back to the first sentence of
    `meta["thinking"]` (or a fixed sentence).

Departure from the paper: the paper starts RL from instruction-tuned checkpoints and has no such stage;
it exists so the embedded demo (`vitos demo`) can run the paper's RL on a CPU. All parameters train, the
vision tower included (the tiny tower is random too).

    from vitos.sft import SFTConfig, warm_start
    losses = warm_start(adapter, train_samples, SFTConfig(steps=300), PruneConfig(margin=0.05))
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Callable

import torch

from vitos.data.sample import Sample
from vitos.engine import completion_logprobs
from vitos.images import load_image
from vitos.models.base import ModelAdapter
from vitos.pipeline import PruneConfig
from vitos.prompts import format_grounding_target, format_sparse_target, grounding_prompt, sparse_prompt
from vitos.pruning.boxes import boxes_to_keep_mask
from vitos.pruning.sparse import assemble

THINK_STYLES = ("compact", "short", "full", "none")
SEQUENCE_KINDS = ("grounding", "sparse", "full")
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
    """Which target sequences each sample contributes: 'grounding', 'sparse' (GT-box tokens) and 'full'
    (the sparse prompt on ALL visual tokens, the `mode='full'` baseline's input)."""
    box_jitter: float = 0.0
    """Sparse sequence: move each GT box side by up to this much (uniform, normalised units) before
    selecting tokens, so the sparse branch tolerates imperfect predicted boxes (0 = exact GT boxes)."""
    box_decimals: int = 2
    """Decimals of box coordinates in the grounding target."""
    short_prompt_frac: float = 0.0
    """Fraction of samples whose prompts are shortened to the question and the format line (the
    instruction sentences dropped). A random LM learns to read visual tokens far faster when they are not
    diluted among ~200 instruction tokens; what it learns carries over to the full prompts it also sees."""
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


def short_prompt(text: str) -> str:
    """A prompt of `vitos.prompts` cut to its first block (question + options) and last (format line)."""
    blocks = text.split("\n\n")
    return text if len(blocks) < 3 else blocks[0] + "\n\n" + blocks[-1]


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
    seed: int = 0
    """Seeds the sample order."""


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
    whose centre falls in its cell); samples without that meta get -1 (ignored). Both labels are LOCAL
    properties of one cell: whether a spot is a lesion (inside the organ) or a distractor is never
    labelled, so the relation the question asks about is still left to the language model.
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


def pretrain_vision(
    adapter: ModelAdapter,
    samples: list[Sample],
    cfg: VisionPretrainConfig | None = None,
    on_step: Callable[[int, float], None] | None = None,
    head: torch.nn.Linear | None = None,
) -> list[float]:
    """Train the vision tower (and merger) with a throw-away linear head on per-token targets.

    Targets per merged token: its spot class and evidence flag (`token_labels`) and its own cell centre
    (`cell_centres`, normalised x, y). Why each:
      * a real VLM's tower is pretrained; the tiny one is random, and learning to see small spots from a
        one-token answer, through an LM, did not generalise after 4,800 samples in our runs. Dense labels
        give 64 targets per image instead of one, and only the tower runs, so the stage costs seconds;
      * position: rotary embeddings act on attention scores, never on the values an attention head
        returns, so a tiny LM cannot read *where* a token sits, and box coordinates (or "upper left") cannot
        be learned. Pretrained towers carry position in their features (CLIP-style towers through absolute
        position embeddings, large RoPE towers through training); the target puts it there.
    The head is discarded; the LM is untouched. Returns the loss per step.
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
        head = torch.nn.Linear(dim, 6).to(adapter.device)  # 3 spot classes, 1 evidence logit, (x, y)
    vision = _vision_parameters(model)
    if not vision:
        raise ValueError("pretrain_vision found no vision-tower parameters (expected names containing 'visual.')")
    opt = torch.optim.AdamW(vision + list(head.parameters()), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 10))
    weight = torch.tensor([1.0, cfg.spot_weight, cfg.spot_weight], device=adapter.device)
    model.train()
    order: list[Sample] = []
    losses = []
    try:
        for step in range(cfg.steps):
            if len(order) < cfg.batch_size:
                order += rng.sample(usable, len(usable))
            batch, order = order[: cfg.batch_size], order[cfg.batch_size :]
            encoded = adapter.encode_images([images[s.id] for s in batch])
            feats = torch.cat([e.features for e in encoded])  # (sum N, D)
            labels = [token_labels(s, e.grid_hw, e.image_size) for s, e in zip(batch, encoded)]
            spot = torch.cat([lab[0] for lab in labels]).to(adapter.device)  # (sum N,)
            evidence = torch.cat([lab[1] for lab in labels]).to(adapter.device)  # (sum N,)
            centres = torch.cat([cell_centres(e.grid_hw) for e in encoded]).to(adapter.device)  # (sum N, 2)
            logits = head(feats.float())  # (sum N, 6)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 3], evidence)
            loss = loss + cfg.position_weight * torch.nn.functional.mse_loss(logits[:, 4:6], centres)
            if (spot >= 0).any():
                loss = loss + torch.nn.functional.cross_entropy(logits[:, :3], spot, weight=weight, ignore_index=-1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vision, 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if on_step:
                on_step(step, losses[-1])
    finally:
        model.eval()
    return losses


# --------------------------------------------------------------------------------------------------
# Stage 1: short-prompt captions (LLaVA-style alignment)
# --------------------------------------------------------------------------------------------------

ALIGN_PROMPTS = {"region": "Describe the region.", "where": "Where is the evidence?"}
"""Short user texts of the two alignment captions (no instructions: the visual tokens are not diluted)."""


@dataclass
class AlignConfig:
    """Short-prompt caption training that teaches a random LM to read visual tokens."""

    steps: int = 200
    """Optimizer steps (0 = skip the stage)."""
    batch_size: int = 16
    """Samples per step (each gives a region caption and a where caption)."""
    lr: float = 2e-3
    """AdamW learning rate (10-step warm-up, then constant)."""
    fusion: str = "none"
    """Fusion of the region caption's pruned tokens (vitos.pruning.fusion)."""
    seed: int = 0
    """Seeds the sample order."""


def caption_targets(sample: Sample, decimals: int = 2) -> tuple[str, str]:
    """(region caption of the GT-box tokens, where caption of the full image) for one sample.

    Region: what the evidence shows ("one dark lesion.", from MedPhantom meta; else the sparse think).
    Where: the evidence boxes in the grounding format ("<box>[[x1,y1,x2,y2]]</box>").
    """
    _, s_think = think_texts(sample, "compact")
    organ = sample.meta.get("organ")
    prefix = f"The {organ} shows "
    region = s_think[len(prefix):] if organ and s_think.startswith(prefix) else s_think
    box_text = format_grounding_target("x", sample.boxes, "x", decimals=decimals)
    where = box_text[box_text.index("<box>") : box_text.index("</box>") + len("</box>")]
    return region, where


def align(
    adapter: ModelAdapter,
    samples: list[Sample],
    cfg: AlignConfig | None = None,
    on_step: Callable[[int, float], None] | None = None,
    freeze_vision: bool = True,
) -> list[float]:
    """Train the LM (and, unless frozen, the tower) on short-prompt captions; returns the loss per step.

    Why: in the ViToS prompts ~60 visual tokens sit among ~200-300 instruction tokens, and a random LM's
    attention, uniform at first, finds the few evidence tokens only slowly (we measured no generalisation
    after 1,600 sparse targets). With a 5-word prompt the same targets are learned several times faster,
    and the attention that reads visual tokens carries over to the long prompts of `warm_start`. Real
    VLMs go through the same alignment stage (LLaVA's caption pre-training) before instruction tuning.
    """
    cfg = cfg or AlignConfig()
    usable = [s for s in samples if s.boxes]
    if cfg.steps <= 0 or not usable:
        return []
    rng = random.Random(cfg.seed)
    images = {s.id: [load_image(im) for im in s.images] for s in usable}
    model = adapter.model
    frozen = {id(p) for p in _vision_parameters(model)} if freeze_vision else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in frozen]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 10))
    model.train()
    order: list[Sample] = []
    losses = []
    try:
        for step in range(cfg.steps):
            if len(order) < cfg.batch_size:
                order += rng.sample(usable, len(usable))
            batch, order = order[: cfg.batch_size], order[cfg.batch_size :]
            encoded = adapter.encode_images([images[s.id][0] for s in batch])  # first image only
            seqs, comps = [], []
            for s, enc in zip(batch, encoded):
                region, where = caption_targets(s)
                keep = boxes_to_keep_mask(s.boxes, enc.grid_hw, min_keep=1)
                seqs.append(assemble(adapter, adapter.build_prompt(ALIGN_PROMPTS["region"], [enc]), [enc], [keep],
                                     fusion=cfg.fusion))
                comps.append(_tokens(adapter, region))
                seqs.append(assemble(adapter, adapter.build_prompt(ALIGN_PROMPTS["where"], [enc]), [enc]))
                comps.append(_tokens(adapter, where))
            logp, mask = completion_logprobs(adapter, seqs, comps)  # (2B, T)
            loss = -(logp * mask).sum() / mask.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if on_step:
                on_step(step, losses[-1])
    finally:
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
        if cfg.short_prompt_frac > 0 and rng.random() < cfg.short_prompt_frac:
            g_text, s_text = short_prompt(g_text), short_prompt(s_text)
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
) -> list[float]:
    """Train on the reference completions of both branches; returns the loss per step.

    Only samples with ground-truth boxes are used. Images are loaded once up front.
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
    order: list[Sample] = []
    losses = []
    try:
        for step in range(cfg.steps):
            if len(order) < cfg.batch_size:
                order += rng.sample(usable, len(usable))
            batch, order = order[: cfg.batch_size], order[cfg.batch_size :]
            loss = sft_loss(adapter, batch, [images[s.id] for s in batch], cfg, prune, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if on_step:
                on_step(step, losses[-1])
    finally:
        model.eval()
    return losses

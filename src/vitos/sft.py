"""Supervised warm start: teach a model the two branches' output format (and some grounding) before RL.

Real VLMs (Lingshu-7B, HuatuoGPT-Vision-7B) can already follow instructions and point at regions; a
randomly initialised tiny model cannot, and RL from random text would never sample a valid box. This
stage minimises the negative log-likelihood of reference completions for BOTH branches, built from
samples that carry evidence boxes (MedPhantom, ViTAR-16K):

    grounding:  full tokens + grounding prompt -> "<think>T</think><box>[[gt box]]</box><answer>A</answer>"
    sparse:     tokens inside the GT box (+ fusion) + sparse prompt -> "<think>T</think><answer>A</answer>"

T is the sample's `meta["thinking"]` (its first sentence with think="short"), A the reference answer.
The paper starts RL from instruction-tuned checkpoints and has no such stage; it exists so the embedded
demo can run the paper's RL on a CPU (`vitos demo` calls it). All parameters train, the vision tower
included (the tiny tower is random too).

    from vitos.sft import SFTConfig, warm_start
    losses = warm_start(adapter, train_samples, SFTConfig(steps=300))
"""

from __future__ import annotations

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


@dataclass
class SFTConfig:
    """Warm-start hyper-parameters."""

    steps: int = 300
    """Optimizer steps."""
    batch_size: int = 8
    """Samples per step (each gives one grounding and one sparse target)."""
    lr: float = 1e-3
    """AdamW learning rate (constant after a 10-step warm-up)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    think: str = "short"
    """Reasoning target: 'short' (first sentence of meta['thinking']), 'full', or 'none' (empty think)."""
    seed: int = 0
    """Seeds the sample order."""


def think_text(sample: Sample, style: str) -> str:
    text = str(sample.meta.get("thinking", "")).strip()
    if style == "none" or not text:
        return "Look at the evidence."
    if style == "short":
        return text.split(". ")[0].rstrip(".") + "."
    return text


def targets(sample: Sample, style: str) -> tuple[str, str]:
    """(grounding target, sparse target) for one sample with ground-truth boxes."""
    think = think_text(sample, style)
    return (format_grounding_target(think, sample.boxes, sample.answer), format_sparse_target(think, sample.answer))


def _tokens(adapter: ModelAdapter, text: str) -> torch.Tensor:
    ids = adapter.tokenizer(text, add_special_tokens=False)["input_ids"] + [adapter.eos_token_ids[0]]
    return torch.tensor(ids, dtype=torch.long)


def sft_loss(adapter: ModelAdapter, samples: list[Sample], images: list[list[Any]], cfg: SFTConfig,
             prune: PruneConfig) -> torch.Tensor:
    """Mean token NLL of both branches' targets for a batch (vision tower runs once, with gradients)."""
    flat = [im for ims in images for im in ims]
    encoded_flat = adapter.encode_images(flat)
    seqs, comps = [], []
    i = 0
    for s, ims in zip(samples, images):
        enc = encoded_flat[i : i + len(ims)]
        i += len(ims)
        g_target, s_target = targets(s, cfg.think)
        g_prompt = adapter.build_prompt(grounding_prompt(s.question, s.options, s.kind, len(enc)), enc)
        seqs.append(assemble(adapter, g_prompt, enc))
        comps.append(_tokens(adapter, g_target))
        keep = [boxes_to_keep_mask(s.boxes, enc[0].grid_hw, margin=prune.margin, min_keep=prune.min_keep)]
        keep += [None] * (len(enc) - 1)
        s_prompt = adapter.build_prompt(sparse_prompt(s.question, s.options, s.kind, len(enc)), enc)
        seqs.append(assemble(adapter, s_prompt, enc, keep, fusion=prune.fusion, num_contextual=prune.num_contextual))
        comps.append(_tokens(adapter, s_target))
    logp, mask = completion_logprobs(adapter, seqs, comps)  # (2B, T)
    return -(logp * mask).sum() / mask.sum()


def warm_start(
    adapter: ModelAdapter,
    samples: list[Sample],
    cfg: SFTConfig | None = None,
    prune: PruneConfig | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train on both branches' reference completions; returns the loss per step."""
    cfg = cfg or SFTConfig()
    prune = prune or PruneConfig()
    usable = [s for s in samples if s.boxes]
    if not usable:
        raise ValueError("the warm start needs samples with ground-truth boxes (e.g. MedPhantom or ViTAR-16K rows)")
    rng = random.Random(cfg.seed)
    images = {s.id: [load_image(im) for im in s.images] for s in usable}
    model = adapter.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 10))
    order: list[Sample] = []
    losses = []
    for step in range(cfg.steps):
        if len(order) < cfg.batch_size:
            order += rng.sample(usable, len(usable))
        batch, order = order[: cfg.batch_size], order[cfg.batch_size :]
        loss = sft_loss(adapter, batch, [images[s.id] for s in batch], cfg, prune)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss))
        if on_step:
            on_step(step, losses[-1])
    model.eval()
    return losses

"""One evaluation of a run, shared by `vitos demo` and `vitos study`: every row on the same test questions.

    s = EvalSettings(margin=0.0, min_keep=1, fusion="none", max_new_tokens=64)
    vitos = evaluate_mode(adapter, test, images, "vitos", s)             # ground -> prune -> answer
    budgets = [r["visual_tokens_kept"] for r in vitos["records"]]       # ViToS's per-question token count
    center = evaluate_mode(adapter, test, images, "baseline", s, baseline_keeps("center", enc, budgets, 0), "none")
    oracle = evaluate_mode(adapter, test, images, "baseline", s, box_keeps([t.boxes for t in test], enc, s), "none")

Rows (all through `vitos.pipeline.run`, greedy decoding, one judge `vitos.answers.judge`):
    full        all visual tokens
    vitos       the model's own boxes -> kept tokens -> answer
    oracle      the ground-truth boxes -> kept tokens -> answer (the reader's ceiling)
    constant    one box for every image, the one with the best mean IoU against the TRAINING split's boxes
    center / random / visionzip   training-free selectors at ViToS's per-question budget
    majority    per question type, the most frequent training answer (no model)

Every row keeps its per-question 0/1 `correct` vector in question order, so paired tests are possible.

    rows = evaluate_run(adapter, test, images, s, ["center", "random"], seed, constant)   # every row of a model
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from statistics import fmean
from typing import Any

import torch


@dataclass
class EvalSettings:
    """How every row is decoded and pruned."""

    margin: float = 0.0
    """Box dilation (normalised units) before tokens are selected (vitos.pipeline.PruneConfig)."""
    min_keep: int = 1
    """Fewest tokens kept per image."""
    fusion: str = "none"
    """Fusion of pruned tokens for the model's own and the oracle boxes: none, merge or contextual."""
    max_new_tokens: int = 64
    """Longest completion."""
    batch_size: int = 25
    """Questions per generate call."""


def box_iou(pred: list[list[float]], gt: list[list[float]]) -> float:
    """Evaluation mIoU term: mean over GT boxes of the best predicted box's IoU (0 without a prediction)."""
    from vitos.rl.rewards import box_iou_reward

    return box_iou_reward(pred, gt) or 0.0


def evaluate_mode(adapter: Any, samples: list[Any], images: list[list[Any]], mode: str, s: EvalSettings,
                  keeps: list[list[torch.Tensor | None]] | None = None, fusion: str | None = None,
                  encoded: list[list[Any]] | None = None) -> dict[str, Any]:
    """Run one row over the test set; returns summary figures and per-question records (in order).
    `encoded` (vitos.pipeline.encode of `images`) skips the vision tower: rows of one model share it."""
    from vitos.answers import judge
    from vitos.engine import SamplingConfig
    from vitos.pipeline import PruneConfig, run
    from vitos.prompts import parse_output

    prune = PruneConfig(margin=s.margin, min_keep=s.min_keep, fusion=fusion or s.fusion)  # type: ignore[arg-type]
    sampling = SamplingConfig(max_new_tokens=s.max_new_tokens)
    answers, seconds = [], 0.0
    for k in range(0, len(samples), s.batch_size):
        chunk = slice(k, k + s.batch_size)
        t0 = time.perf_counter()
        answers += run(adapter, samples[chunk], mode="full" if keeps is not None else mode, prune=prune,  # type: ignore[arg-type]
                       sampling=sampling, images=images[chunk], keeps_override=keeps[chunk] if keeps is not None else None,
                       encoded=encoded[chunk] if encoded is not None else None)
        seconds += time.perf_counter() - t0
    records = []
    for smp, a in zip(samples, answers):
        records.append({
            "id": smp.id,
            "question_type": smp.meta.get("question_type"),
            "correct": judge(a.answer or "", smp).correct,
            "answer": a.answer,
            "reference": smp.answer,
            "boxes": a.boxes,
            "iou": box_iou(a.boxes, smp.boxes) if mode == "vitos" and keeps is None else None,
            # The grounding pass also answers, from ALL visual tokens: a second full-token figure.
            # (None when it was cut after its boxes: pipeline.run(grounding="short") writes no answer)
            "grounding_correct": (judge(parse_output(a.grounding_text, "grounding").answer or "", smp).correct
                                  if a.grounding_text is not None and getattr(a, "grounding", None) != "short"
                                  else None),
            "visual_tokens_kept": a.visual_tokens_kept,
            "visual_tokens_total": a.visual_tokens_total,
            "fallback": a.fallback,
            "keep_masks": a.keep_masks,
            "grounding_text": a.grounding_text,
            "answer_text": a.answer_text,
        })
    return summarise(records, seconds)


def summarise(records: list[dict[str, Any]], seconds: float = 0.0) -> dict[str, Any]:
    """Accuracy, kept ratio, mIoU, distinct boxes, per-type accuracy and the 0/1 vector of some records."""
    n = max(1, len(records))
    ious = [r["iou"] for r in records if r.get("iou") is not None]
    by_type: dict[str, list[bool]] = {}
    for r in records:
        by_type.setdefault(str(r["question_type"]), []).append(r["correct"])
    grounding = [r["grounding_correct"] for r in records if r.get("grounding_correct") is not None]
    boxed = [tuple(tuple(round(v, 3) for v in b) for b in r["boxes"]) for r in records if r.get("boxes")]
    return {
        "accuracy": sum(r["correct"] for r in records) / n,
        "correct": [bool(r["correct"]) for r in records],
        "n": len(records),
        "accuracy_grounding_pass": sum(grounding) / len(grounding) if grounding else None,
        "kept": sum(r["visual_tokens_kept"] for r in records) / max(1, sum(r["visual_tokens_total"] for r in records)),
        "budgets": [int(r["visual_tokens_kept"]) for r in records],
        "miou": fmean(ious) if ious else None,
        "distinct_boxes": len(set(boxed)) if boxed else None,
        "latency_ms": 1e3 * seconds / n,
        "fallbacks": sum(r.get("fallback") is not None for r in records),
        "accuracy_by_type": {t: sum(v) / len(v) for t, v in sorted(by_type.items())},
        "records": records,
    }


def baseline_keeps(name: str, encoded: list[list[Any]], budgets: list[int], seed: int,
                   num_contextual: int = 4) -> list[list[torch.Tensor]]:
    """Keep masks of a training-free baseline, per sample and image, at per-sample `budgets` (visual tokens)."""
    from vitos.eval.baselines import center_keep, random_keep, split_budget, visionzip_keep

    gen = torch.Generator().manual_seed(seed)
    out = []
    for enc, budget in zip(encoded, budgets):
        parts = split_budget(budget, [e.num_tokens for e in enc])
        masks = []
        for e, b in zip(enc, parts):
            if name == "center":
                masks.append(center_keep(e.grid_hw, b))
            elif name == "random":
                masks.append(random_keep(e.grid_hw, b, gen))
            elif name == "visionzip":
                masks.append(visionzip_keep(e.features, e.grid_hw, b, num_contextual))
            else:
                raise ValueError(f"unknown baseline {name!r} here; use center, random or visionzip "
                                 "(fastv needs the model and the prompts: `fastv_keeps`)")
        out.append(masks)
    return out


def fastv_keeps(adapter: Any, samples: list[Any], encoded: list[list[Any]], budgets: list[int], layer: int = 1,
                batch_size: int = 25) -> list[list[torch.Tensor]]:
    """FastV's keep masks at per-sample `budgets`: the answer pass's prompt (`sparse_prompt`, all visual
    tokens) is prefilled to decoder layer `layer`, and the visual tokens the last text token attends to most
    are kept (vitos.eval.baselines.fastv_keep, as `vitos eval --mode fastv`), `batch_size` prompts at a time."""
    from vitos.eval.baselines import fastv_keep
    from vitos.prompts import sparse_prompt
    from vitos.pruning.sparse import assemble

    out: list[list[torch.Tensor]] = []
    for lo in range(0, len(samples), batch_size):
        chunk, enc = samples[lo:lo + batch_size], encoded[lo:lo + batch_size]
        prompts = [adapter.build_prompt(sparse_prompt(t.question, t.options, t.kind, max(1, len(e))), e)
                   for t, e in zip(chunk, enc)]
        seqs = [assemble(adapter, p, e) for p, e in zip(prompts, enc)]
        with torch.no_grad():
            out += fastv_keep(adapter, seqs, [p.image_spans for p in prompts], [[x.grid_hw for x in e] for e in enc],
                              budgets[lo:lo + batch_size], layer)
    return out


def box_keeps(boxes: list[list[list[float]]], encoded: list[list[Any]], s: EvalSettings) -> list[list[torch.Tensor | None]]:
    """Keep masks of given image-normalised boxes (first image of each sample; others kept whole):
    the oracle row (ground-truth boxes) and the constant-box row."""
    from vitos.pipeline import PruneConfig, keep_mask_for_image

    prune = PruneConfig(margin=s.margin, min_keep=s.min_keep)
    out: list[list[torch.Tensor | None]] = []
    for b, enc in zip(boxes, encoded):
        masks: list[torch.Tensor | None] = [None] * len(enc)
        if b and enc:
            masks[0] = keep_mask_for_image(b, enc[0], prune)
        out.append(masks)
    return out


def best_constant_box(train_boxes: list[list[list[float]]], steps: int = 10) -> list[float]:
    """The box [x1, y1, x2, y2] on a (steps + 1)^4 grid of the unit square with the highest mean IoU
    against the training split's first GT boxes: what a policy that ignores the image would learn."""
    from vitos.rl.rewards import iou

    gts = [b[0] for b in train_boxes if b]
    if not gts:
        return [0.0, 0.0, 1.0, 1.0]
    grid = [k / steps for k in range(steps + 1)]
    best, best_box = -1.0, [0.0, 0.0, 1.0, 1.0]
    for x1 in grid:
        for x2 in (g for g in grid if g > x1):
            for y1 in grid:
                for y2 in (g for g in grid if g > y1):
                    box = [x1, y1, x2, y2]
                    score = sum(iou(box, g) for g in gts) / len(gts)
                    if score > best:
                        best, best_box = score, box
    return best_box


def majority_answers(train: list[Any]) -> dict[str, str]:
    """Per question type, the most frequent training answer (ties: the alphabetically first)."""
    counts: dict[str, Counter] = {}
    for smp in train:
        counts.setdefault(str(smp.meta.get("question_type", smp.kind)), Counter())[smp.answer] += 1
    return {t: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for t, c in counts.items()}


def evaluate_majority(test: list[Any], train: list[Any]) -> dict[str, Any]:
    """The per-type majority row: answer every test question with its type's majority training answer."""
    from vitos.answers import judge

    majority = majority_answers(train)
    records = []
    for smp in test:
        qtype = str(smp.meta.get("question_type", smp.kind))
        answer = majority.get(qtype, "")
        records.append({"id": smp.id, "question_type": qtype, "correct": judge(answer, smp).correct, "answer": answer,
                        "reference": smp.answer, "boxes": [], "visual_tokens_kept": 0, "visual_tokens_total": 0})
    return summarise(records)


def answer_balance(samples: list[Any]) -> dict[str, dict[str, float]]:
    """Per question type, the share of each answer (the design report's 'answer balance')."""
    counts: dict[str, Counter] = {}
    for smp in samples:
        counts.setdefault(str(smp.meta.get("question_type", smp.kind)), Counter())[smp.answer] += 1
    return {t: {a: n / sum(c.values()) for a, n in sorted(c.items())} for t, c in sorted(counts.items())}


def evaluate_run(adapter: Any, test: list[Any], images: list[list[Any]], s: EvalSettings, baselines: list[str],
                 seed: int, constant: list[float], encoded: list[list[Any]] | None = None,
                 keep_records: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Every row of one model, by name: vitos, full, oracle, constant box (the box `constant`, e.g.
    best_constant_box of the training split), then each of `baselines` at ViToS's per-question budget.

    `encoded`: the model's vitos.pipeline.encode of `images` (computed here when not given): one vision-tower
    pass serves every row. Rows keep their figures and `correct` vectors; the bulky per-question `records`
    are dropped except for the rows named in `keep_records` (e.g. ("vitos",) for overlays)."""
    from vitos.eval.baselines import BASELINE_FUSION
    from vitos.pipeline import encode

    encoded = encoded if encoded is not None else encode(adapter, images)
    rows = {"vitos": evaluate_mode(adapter, test, images, "vitos", s, encoded=encoded),
            "full": evaluate_mode(adapter, test, images, "full", s, encoded=encoded)}
    rows["oracle"] = evaluate_mode(adapter, test, images, "baseline", s, box_keeps([t.boxes for t in test], encoded, s),
                                   encoded=encoded)
    rows["constant box"] = evaluate_mode(adapter, test, images, "baseline", s,
                                         box_keeps([[constant]] * len(test), encoded, s), encoded=encoded)
    budgets = rows["vitos"]["budgets"]  # ViToS's visual tokens per question
    for name in baselines:
        keeps = (fastv_keeps(adapter, test, encoded, budgets) if name == "fastv"
                 else baseline_keeps(name, encoded, budgets, seed))
        rows[name] = evaluate_mode(adapter, test, images, "baseline", s, keeps, BASELINE_FUSION[name], encoded=encoded)
    for name, r in rows.items():
        if name not in keep_records:
            r.pop("records", None)
    return rows


def evidence_coverage(encoded: list[list[Any]], test: list[Any], s: EvalSettings, vitos_row: dict[str, Any],
                      seed: int) -> dict[str, float]:
    """Share of questions whose evidence (every token cell the GT box touches) lies wholly inside a centre
    crop, and inside a random crop, of a ViToS row's per-question budget: a centre crop that covers the
    evidence far more often than a random one means the task rewards 'look at the middle'."""
    budgets = vitos_row["budgets"]
    evidence = box_keeps([t.boxes for t in test], encoded, s)
    out = {}
    for name in ("center", "random"):
        crops = baseline_keeps(name, encoded, budgets, seed)
        covered = [bool((e[0] & ~c[0]).sum() == 0) for e, c in zip(evidence, crops) if e and e[0] is not None]
        out[f"{name}_crop_covers_evidence"] = sum(covered) / max(1, len(covered))
    return out

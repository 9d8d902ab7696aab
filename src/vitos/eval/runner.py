"""`vitos eval`: run a model over benchmarks in one mode, resumably, and score it.

    vitos eval --model lingshu-medical-mllm/Lingshu-7B --benchmarks vqa_rad,slake --mode vitos \\
        --out runs/lingshu/vitos --data-dir /data/benchmarks
    vitos eval ... --mode fastv --budget-from runs/lingshu/vitos --out runs/lingshu/fastv   # matched budget
    vitos eval ... --mode random --budget-ratio 0.25 --out runs/lingshu/random25

    from vitos.eval.runner import EvalConfig, evaluate
    scores = evaluate(EvalConfig(model="/tmp/tiny", benchmarks=["vqa_rad"], mode="full", out="runs/x"))

Modes (all at greedy decoding, batched, through `vitos.pipeline.run`):
    full       one pass on every visual token (the base model);
    vitos      ground -> prune -> answer (the ViToS inference path);
    random, center, fastv, visionzip
               training-free baselines (`vitos.eval.baselines`): keep `budget` tokens per sample chosen by
               the baseline's rule, then answer like `full` on the kept tokens. The budget comes from
               `budget_ratio` (of each sample's visual tokens) or from `budget_from`, a ViToS run whose
               per-sample `visual_tokens_kept` is reused id by id: a matched-budget comparison.

Prompt style: the answer pass writes `vitos.prompts.sparse_prompt` (think + <answer> tags) by default, in
every mode, so that modes differ only in the tokens they see. `prompt_style="benchmark"` gives `full` and
the baselines the benchmark's own prompt (`Benchmark.prompt`, MedEvalKit's wording: "Answer with the
option's letter ... directly."), so their numbers compare with published anchors; `vitos` mode keeps its
own prompts (its answer pass is trained on them).

Judging: `vitos.answers.judge_completion` on the raw answer-pass output, by the rules of docs/scoring.md
(answer location, unwrapping, per-kind rules; parse failures counted, never guessed). `compat="medevalkit"`
applies MedEvalKit's rules per benchmark instead (`vitos.eval.medevalkit`). The optional LLM judge
(`vitos.eval.judge_llm`, off by default) decides open (text-judged) questions that exact match calls wrong.

Output folder DIR:
    DIR/config.yaml                      the resolved EvalConfig (written first; a resumed run must match it)
    DIR/<benchmark>/predictions.jsonl    one JSON line per finished sample, appended, flushed and fsync'd per
                                         batch. A rerun skips finished ids; a torn last line (a kill during
                                         the write) is dropped and its sample redone; duplicate ids keep the
                                         first record. Fields: see `RECORD_FIELDS`.
    DIR/scores.json                      per benchmark: accuracy, closed_accuracy, open_accuracy,
                                         parse_failures, n, kept_token_ratio, ... (vitos.eval.scoring), plus
                                         `mean` (accuracy over benchmarks), `kept_token_ratio` (mean over
                                         benchmarks), mode, compat, prompt_style, judge
    DIR/scores.md                        the same as a markdown table (+ the sibling runs' table)
    DIR/accuracy_vs_kept.png             mean accuracy against kept-token ratio of this run and its sibling
                                         runs (other folders beside DIR with a scores.json), when there are
                                         two or more; matplotlib, Agg backend.

Accuracies are percentages, kept-token ratios fractions (kept visual tokens / all visual tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any, Literal

import torch

from vitos.answers import Judgement, judge_completion, locate_answer, normalize_text
from vitos.config import ConfigError, save_config, to_dict
from vitos.data.sample import Sample
from vitos.engine import SamplingConfig
from vitos.eval.baselines import (
    BASELINE_FUSION,
    BASELINE_MODES,
    budget_from_ratio,
    budgets_from_records,
    center_keep,
    fastv_keep,
    random_keep,
    split_budget,
    visionzip_keep,
)
from vitos.eval.benchmarks import BENCHMARKS, Benchmark
from vitos.eval.judge_llm import JudgeError, LLMJudge, LLMJudgeConfig
from vitos.eval.scoring import aggregate, is_closed, score_benchmark
from vitos.models.base import EncodedImage, ModelAdapter
from vitos.pipeline import PruneConfig, encode, load_sample_images, run
from vitos.prompts import sparse_prompt
from vitos.pruning.sparse import assemble

__all__ = [
    "MODES",
    "RECORD_FIELDS",
    "EvalConfig",
    "EvalError",
    "evaluate",
    "read_predictions",
    "load_budgets",
    "collect_runs",
    "runs_table",
    "plot_accuracy_vs_kept",
    "main_eval",
]

MODES = ("full", "vitos") + BASELINE_MODES

RECORD_FIELDS = (
    "id", "benchmark", "mode", "question", "answer", "kind", "closed",
    "prediction", "parsed", "raw", "grounding", "boxes", "box_images", "fallback",
    "budget", "visual_tokens_total", "visual_tokens_kept", "kept_ratio",
    "correct", "correct_rule", "llm_verdict", "parse_failure", "parse_reason", "answer_source", "recall", "f1",
)  # fmt: skip
"""Keys of every predictions.jsonl line. `prediction` is what was judged (<answer> content or the raw
output), `raw` the answer pass's full output, `grounding` the grounding pass's (vitos mode), `budget` the
target token count (baselines), `correct` the final verdict: `llm_verdict` when the LLM judge gave one,
else `correct_rule` (`vitos.answers.judge`)."""

# Fields that change predictions: a resumed run must agree on them with the config it started with.
_RESULT_FIELDS = (
    "model", "mode", "split", "max_new_tokens", "prompt_style", "budget_ratio", "budget_from",
    "fastv_layer", "seed", "compat", "prune", "dtype",
)  # fmt: skip


class EvalError(ValueError):
    """A problem the user can fix (data missing, run folder holding another run, bad budget file)."""


@dataclass
class EvalConfig:
    """One evaluation run: a model, some benchmarks, one mode, one output folder."""

    model: str = ""
    """Hub id or local folder of the model (e.g. lingshu-medical-mllm/Lingshu-7B or a `vitos tiny-model` folder)."""
    benchmarks: list[str] = field(default_factory=lambda: ["vqa_rad"])
    """Benchmark names (vitos.eval.benchmarks.BENCHMARKS): vqa_rad, slake, pathvqa, pmc_vqa, omnimedvqa,
    mmmu_med, medxpertqa."""
    mode: Literal["full", "vitos", "random", "center", "fastv", "visionzip"] = "vitos"
    """full (all tokens), vitos (ground -> prune -> answer) or a training-free baseline at a token budget."""
    out: str = "runs/eval"
    """Output folder DIR (predictions, scores, config); rerunning into it resumes."""
    limit: int | None = None
    """Evaluate only the first `limit` samples of each benchmark (None = all)."""
    data_dir: str | None = None
    """Local copies: a folder with one subfolder per benchmark (D/vqa_rad, ...), or, with one benchmark, that
    benchmark's folder itself; None downloads from the hub."""
    split: str = "test"
    """Benchmark split ('test' = the split the benchmark is reported on)."""
    batch_size: int = 8
    """Questions per batched generation call; also the granularity of the resumable log."""
    max_new_tokens: int = 256
    """Greedy decoding limit per pass (grounding and answer each)."""
    prompt_style: Literal["vitos", "benchmark"] = "vitos"
    """Answer-pass prompt of full/baseline modes: vitos (sparse_prompt, tags) or benchmark (the benchmark's own)."""
    budget_ratio: float | None = None
    """Baselines: keep this fraction (0, 1] of each sample's visual tokens."""
    budget_from: str | None = None
    """Baselines: a ViToS run folder (or one predictions.jsonl) whose per-sample visual_tokens_kept is the budget."""
    fastv_layer: int = 1
    """FastV: 0-based decoder layer whose attention ranks the tokens (1 = the paper's K=2)."""
    seed: int = 0
    """Seed of the random baseline (each sample's draw depends only on seed, benchmark and sample id)."""
    compat: Literal["medevalkit"] | None = None
    """None = vitos judging rules; medevalkit = that kit's rules (for comparison with published anchors)."""
    prune: PruneConfig = field(default_factory=PruneConfig)
    """vitos mode: box -> token rules and fusion; visionzip uses prune.num_contextual contextual tokens."""
    judge: LLMJudgeConfig = field(default_factory=LLMJudgeConfig)
    """Optional LLM judge for open questions (off while judge.url is None)."""
    dtype: str = "auto"
    """Model dtype: auto (bf16 on a GPU that supports it, else fp32), float32, bfloat16, float16."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:1 ..."""
    attn: str = "sdpa"
    """Attention implementation: sdpa, eager, flash_attention_2."""


# --------------------------------------------------------------------------------------------------
# validation and the run folder
# --------------------------------------------------------------------------------------------------


def _validate(cfg: EvalConfig) -> None:
    if not cfg.model:
        raise ConfigError("no model given; pass --model (a hub id or a local folder)")
    if cfg.mode not in MODES:
        raise ConfigError(f"unknown mode {cfg.mode!r}; choose one of {list(MODES)}")
    if not cfg.benchmarks:
        raise ConfigError("no benchmarks given; e.g. --benchmarks vqa_rad,slake")
    unknown = [b for b in cfg.benchmarks if b not in BENCHMARKS]
    if unknown:
        raise ConfigError(f"unknown benchmark(s) {unknown}; known: {list(BENCHMARKS)}")
    if len(set(cfg.benchmarks)) != len(cfg.benchmarks):
        raise ConfigError(f"benchmark listed twice in {cfg.benchmarks}")
    if cfg.mode in BASELINE_MODES:
        if (cfg.budget_ratio is None) == (cfg.budget_from is None):
            raise ConfigError(
                f"mode {cfg.mode} needs exactly one token budget: --budget-ratio R (e.g. 0.25) or "
                "--budget-from RUN_DIR (a vitos run, for matched budgets)"
            )
        if cfg.budget_ratio is not None:
            budget_from_ratio(1, cfg.budget_ratio)  # raises on a ratio outside (0, 1]
    elif cfg.budget_ratio is not None or cfg.budget_from is not None:
        raise ConfigError(f"a token budget applies to the baselines {list(BASELINE_MODES)}, not to mode {cfg.mode}")
    if cfg.prompt_style not in ("vitos", "benchmark"):
        raise ConfigError(f"prompt_style must be 'vitos' or 'benchmark', got {cfg.prompt_style!r}")
    if cfg.compat not in (None, "medevalkit"):
        raise ConfigError(f"compat must be None or 'medevalkit', got {cfg.compat!r}")
    if cfg.batch_size < 1 or cfg.max_new_tokens < 1:
        raise ConfigError(f"batch_size and max_new_tokens must be >= 1, got {cfg.batch_size}, {cfg.max_new_tokens}")
    if cfg.limit is not None and cfg.limit < 0:
        raise ConfigError(f"limit must be >= 0 or None, got {cfg.limit}")
    if cfg.fastv_layer < 0:
        raise ConfigError(f"fastv_layer must be >= 0, got {cfg.fastv_layer}")


def _result_view(values: Mapping[str, Any]) -> dict[str, Any]:
    view = {k: values.get(k) for k in _RESULT_FIELDS}
    judge_cfg = values.get("judge") or {}
    view["judge"] = {"url": judge_cfg.get("url"), "model": judge_cfg.get("model")}
    return view


def _claim_run_dir(cfg: EvalConfig, out: Path) -> None:
    """Write DIR/config.yaml, or check that the run already in DIR was started with the same settings."""
    import yaml

    path = out / "config.yaml"
    if path.is_file():
        old = yaml.safe_load(path.read_text()) or {}
        old_view, new_view = _result_view(old), _result_view(to_dict(cfg))
        diff = [k for k in new_view if old_view.get(k) != new_view[k]]
        if diff:
            changes = ", ".join(f"{k}: {old_view.get(k)!r} -> {new_view[k]!r}" for k in diff)
            raise EvalError(f"{out} holds a run with other settings ({changes}); use another --out or delete it")
    save_config(cfg, path)


def _data_dir(cfg: EvalConfig, name: str) -> Path | None:
    if cfg.data_dir is None:
        return None
    root = Path(cfg.data_dir).expanduser()
    if (root / name).is_dir():
        return root / name
    if len(cfg.benchmarks) == 1 and root.is_dir():
        return root
    raise EvalError(f"--data-dir {root} has no {name}/ folder (give a folder holding one subfolder per benchmark)")


def _compat(cfg: EvalConfig, name: str) -> str | None:
    # "medevalkit" dispatches on sample.meta["benchmark"] (MMMU gets the kit's MMMU rules).
    return cfg.compat


# --------------------------------------------------------------------------------------------------
# the prediction log
# --------------------------------------------------------------------------------------------------


def _scan(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """(records by id, lines dropped) of a predictions.jsonl; see `read_predictions`."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    records: dict[str, dict[str, Any]] = {}
    dropped = 0
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # no newline after it: the write was cut by a kill
                dropped += 1
                continue
            raise EvalError(f"{path} line {i + 1} is not JSON; delete that line (its sample will be redone)") from None
        if not isinstance(rec, dict) or "id" not in rec:
            raise EvalError(f"{path} line {i + 1} is not a prediction record (no 'id'); delete that line")
        key = str(rec["id"])
        if key in records:
            dropped += 1
            continue
        records[key] = rec
    return records, dropped


def read_predictions(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Records of a predictions.jsonl by sample id (file order): a torn last line is ignored, a repeated
    id keeps its first record, a broken line elsewhere raises EvalError."""
    return _scan(Path(path))[0]


def _open_log(path: Path) -> dict[str, dict[str, Any]]:
    """Finished records of `path`; rewrites the file (atomically) without a torn line or duplicates."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        return {}
    records, dropped = _scan(path)
    if dropped or (path.stat().st_size and not path.read_bytes().endswith(b"\n")):
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records.values())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return records


def _append(path: Path, records: list[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        f.flush()
        os.fsync(f.fileno())  # a finished batch survives a kill or a power cut


def load_budgets(source: str | os.PathLike[str], benchmark: str, several: bool = False) -> dict[str, int]:
    """Per-sample token budgets of `benchmark` from a run folder (SOURCE/<benchmark>/predictions.jsonl) or,
    when only one benchmark is evaluated, from one predictions.jsonl file."""
    src = Path(source).expanduser()
    if src.is_dir():
        path = src / benchmark / "predictions.jsonl"
    elif src.is_file() and not several:
        path = src
    elif src.is_file():
        raise EvalError(f"--budget-from {src} is one file but several benchmarks are evaluated; pass the run folder")
    else:
        raise EvalError(f"--budget-from {src} does not exist; pass a vitos run folder or its predictions.jsonl")
    if not path.is_file():
        raise EvalError(f"--budget-from: {path} not found; run `vitos eval --mode vitos` on {benchmark} first")
    return budgets_from_records(read_predictions(path).values())


# --------------------------------------------------------------------------------------------------
# one batch
# --------------------------------------------------------------------------------------------------


def _sample_seed(seed: int, benchmark: str, sample_id: str) -> int:
    """Stable across processes and batchings (Python's hash() is salted per process)."""
    return zlib.crc32(f"{seed}/{benchmark}/{sample_id}".encode())


def _answer_texts(
    cfg: EvalConfig, bench: Benchmark, samples: list[Sample], encoded: list[list[EncodedImage]]
) -> list[str]:
    if cfg.prompt_style == "benchmark":
        return [bench.prompt(s) for s in samples]
    return [sparse_prompt(s.question, s.options, s.kind, max(1, len(e))) for s, e in zip(samples, encoded)]


def _baseline_keeps(
    cfg: EvalConfig,
    adapter: ModelAdapter,
    bench: Benchmark,
    samples: list[Sample],
    encoded: list[list[EncodedImage]],
    texts: list[str],
    budgets: dict[str, int] | None,
) -> tuple[list[list[torch.Tensor | None]], list[int]]:
    """Keep masks per sample and image for a baseline mode, and each sample's token budget."""
    totals = [sum(e.num_tokens for e in enc) for enc in encoded]
    if budgets is not None:
        targets = [min(budgets[s.id], total) for s, total in zip(samples, totals)]
    else:
        targets = [budget_from_ratio(total, cfg.budget_ratio) for total in totals]  # type: ignore[arg-type]

    fastv_masks: list[list[torch.Tensor]] | None = None
    if cfg.mode == "fastv":
        prompts = [adapter.build_prompt(text, enc) for text, enc in zip(texts, encoded)]
        seqs = [assemble(adapter, p, enc) for p, enc in zip(prompts, encoded)]
        grids = [[e.grid_hw for e in enc] for enc in encoded]
        fastv_masks = fastv_keep(adapter, seqs, [p.image_spans for p in prompts], grids, targets, cfg.fastv_layer)

    keeps: list[list[torch.Tensor | None]] = []
    for i, (sample, enc, target, total) in enumerate(zip(samples, encoded, targets, totals)):
        if target >= total:
            keeps.append([None] * len(enc))  # the budget covers every token: nothing to choose
            continue
        parts = split_budget(target, [e.num_tokens for e in enc])
        if cfg.mode == "random":
            gen = torch.Generator().manual_seed(_sample_seed(cfg.seed, bench.name, sample.id))
            keeps.append([random_keep(e.grid_hw, k, gen) for e, k in zip(enc, parts)])
        elif cfg.mode == "center":
            keeps.append([center_keep(e.grid_hw, k) for e, k in zip(enc, parts)])
        elif cfg.mode == "visionzip":
            n_ctx = cfg.prune.num_contextual
            keeps.append([visionzip_keep(e.features, e.grid_hw, k, n_ctx) for e, k in zip(enc, parts)])
        else:
            keeps.append(list(fastv_masks[i]))  # type: ignore[index]
    return keeps, targets


def _run_batch(
    cfg: EvalConfig,
    adapter: ModelAdapter,
    bench: Benchmark,
    samples: list[Sample],
    budgets: dict[str, int] | None,
    llm_judge: LLMJudge | None,
) -> list[dict[str, Any]]:
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=0.0)
    encoded = encode(adapter, [load_sample_images(s) for s in samples])
    targets: list[int | None] = [None] * len(samples)
    if cfg.mode == "vitos":
        answers = run(adapter, samples, "vitos", cfg.prune, sampling, encoded=encoded)
    else:
        texts = _answer_texts(cfg, bench, samples, encoded)
        keeps = None
        prune = cfg.prune
        if cfg.mode in BASELINE_MODES:
            keeps, targets = _baseline_keeps(cfg, adapter, bench, samples, encoded, texts, budgets)  # type: ignore
            fusion = BASELINE_FUSION[cfg.mode]
            prune = PruneConfig(fusion=fusion, num_contextual=cfg.prune.num_contextual)  # type: ignore[arg-type]
        answers = run(
            adapter, samples, "full", prune, sampling, encoded=encoded, keeps_override=keeps, answer_prompts=texts
        )

    compat = _compat(cfg, bench.name)
    records = []
    for sample, ans, target in zip(samples, answers, targets):
        location = locate_answer(ans.answer_text)
        prediction = location.text or ""
        verdict = judge_completion(ans.answer_text, sample, compat)
        llm_verdict = None
        if llm_judge is not None and sample.kind == "open" and not verdict.correct and normalize_text(prediction):
            llm_verdict = llm_judge(sample.question, sample.answer, prediction)
        records.append(
            {
                "id": sample.id,
                "benchmark": bench.name,
                "mode": cfg.mode,
                "question": sample.question,
                "answer": sample.answer,
                "kind": sample.kind,
                "closed": is_closed(sample),
                "prediction": prediction,
                "parsed": verdict.parsed,
                "raw": ans.answer_text,
                "grounding": ans.grounding_text,
                "boxes": ans.boxes,
                "box_images": ans.box_images,
                "fallback": ans.fallback,
                "budget": target,
                "visual_tokens_total": ans.visual_tokens_total,
                "visual_tokens_kept": ans.visual_tokens_kept,
                "kept_ratio": ans.visual_tokens_kept / ans.visual_tokens_total if ans.visual_tokens_total else 1.0,
                "correct": verdict.correct if llm_verdict is None else llm_verdict,
                "correct_rule": verdict.correct,
                "llm_verdict": llm_verdict,
                "parse_failure": verdict.parse_failure,
                "parse_reason": verdict.reason,
                "answer_source": location.source,
                "recall": verdict.recall,
                "f1": verdict.f1,
            }
        )
    return records


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------


def _score(records: Mapping[str, Mapping[str, Any]], samples: list[Sample]) -> dict[str, Any]:
    recs = [records[s.id] for s in samples]
    judgements = [Judgement(r["correct"], r["parsed"], r["parse_failure"], r["recall"], r["f1"]) for r in recs]
    return score_benchmark(judgements, samples, [r["kept_ratio"] for r in recs])


def evaluate(
    cfg: EvalConfig,
    adapter: ModelAdapter | None = None,
    on_batch: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run `cfg` (resuming what DIR already holds) and write predictions, scores.json/.md and the plot.

    `adapter` reuses a loaded model (else `cfg.model` is loaded); `on_batch(benchmark, done, total)` is
    called after each batch is safely on disk (progress display; an exception there stops the run, which
    the next call resumes). Returns the scores.json content.
    """
    _validate(cfg)
    out = Path(cfg.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    _claim_run_dir(cfg, out)

    plan: list[tuple[Benchmark, list[Sample], dict[str, int] | None]] = []
    for name in cfg.benchmarks:
        bench = BENCHMARKS[name]
        try:
            samples = bench.load(_data_dir(cfg, name), split=cfg.split, limit=cfg.limit)
        except RuntimeError as err:  # hub download impossible (offline, package missing): say how to fix
            raise EvalError(str(err)) from err
        if not samples:
            raise EvalError(f"{name} ({cfg.split}) has no samples (limit={cfg.limit})")
        ids = [s.id for s in samples]
        if len(set(ids)) != len(ids):
            raise EvalError(f"{name}: sample ids repeat; a resumable run needs unique ids")
        budgets = None
        if cfg.mode in BASELINE_MODES and cfg.budget_from is not None:
            budgets = load_budgets(cfg.budget_from, name, several=len(cfg.benchmarks) > 1)
            missing = [i for i in ids if i not in budgets]
            if missing:
                raise EvalError(
                    f"--budget-from has no kept count for {len(missing)} {name} sample(s) (e.g. {missing[:3]}); "
                    "evaluate the vitos run on the same samples (same --limit and --split) first"
                )
        plan.append((bench, samples, budgets))

    if adapter is None:
        from vitos.models import load_model

        adapter = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, attn_implementation=cfg.attn)
    llm_judge = LLMJudge(cfg.judge) if cfg.judge.url else None

    per_benchmark: dict[str, dict[str, Any]] = {}
    for bench, samples, budgets in plan:
        path = out / bench.name / "predictions.jsonl"
        done = _open_log(path)
        wanted = {s.id for s in samples}
        todo = [s for s in samples if s.id not in done]
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start : start + cfg.batch_size]
            records = _run_batch(cfg, adapter, bench, batch, budgets, llm_judge)
            _append(path, records)
            done.update((r["id"], r) for r in records)
            if on_batch is not None:
                on_batch(bench.name, sum(1 for i in done if i in wanted), len(samples))
        per_benchmark[bench.name] = _score(done, samples)

    scores = aggregate(per_benchmark)
    scores["kept_token_ratio"] = fmean(s["kept_token_ratio"] for s in per_benchmark.values())
    scores["mode"] = cfg.mode
    scores["compat"] = cfg.compat
    scores["prompt_style"] = cfg.prompt_style
    scores["judge"] = f"llm:{cfg.judge.model}" if cfg.judge.url else "rules"
    (out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")

    runs = collect_runs(out.parent)
    runs[out.name] = scores
    md = _run_markdown(cfg, scores)
    if len(runs) >= 2:
        md += "\n## Runs beside this one\n\n" + runs_table(runs)
        plot_accuracy_vs_kept(runs, out / "accuracy_vs_kept.png")
    (out / "scores.md").write_text(md)
    return scores


# --------------------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _run_markdown(cfg: EvalConfig, scores: Mapping[str, Any]) -> str:
    lines = [
        f"# vitos eval: {cfg.mode} on {cfg.model}",
        "",
        f"prompt_style {cfg.prompt_style}, judging {scores['judge']}"
        + (f" (compat {cfg.compat})" if cfg.compat else "")
        + ". Accuracy in percent; kept = kept visual tokens / all visual tokens.",
        "",
        "| benchmark | n | accuracy | closed | open | parse failures | kept |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in scores.items():
        if isinstance(s, Mapping):
            lines.append(
                f"| {name} | {s['n']} | {_pct(s['accuracy'])} | {_pct(s['closed_accuracy'])} | "
                f"{_pct(s['open_accuracy'])} | {s['parse_failures']} | {_ratio(s['kept_token_ratio'])} |"
            )
    lines.append(f"| mean | | {_pct(scores['mean'])} | | | | {_ratio(scores['kept_token_ratio'])} |")
    return "\n".join(lines) + "\n"


def collect_runs(parent: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Folder name -> scores.json content of every run folder directly under `parent`."""
    runs = {}
    root = Path(parent)
    if not root.is_dir():
        return runs
    for sub in sorted(root.iterdir()):
        path = sub / "scores.json"
        if sub.is_dir() and path.is_file():
            try:
                runs[sub.name] = json.loads(path.read_text())
            except json.JSONDecodeError:
                continue  # a run being written right now; it will show up next time
    return runs


def runs_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: one row per run (mode, kept-token ratio, accuracy per benchmark and mean)."""
    benchmarks: list[str] = []
    for scores in runs.values():
        benchmarks += [k for k, v in scores.items() if isinstance(v, Mapping) and k not in benchmarks]
    lines = [
        "| run | mode | kept | " + " | ".join(benchmarks) + " | mean |",
        "|---|---|---:|" + "---:|" * (len(benchmarks) + 1),
    ]
    for name, scores in runs.items():
        cells = [_pct((scores.get(b) or {}).get("accuracy")) for b in benchmarks]
        lines.append(
            f"| {name} | {scores.get('mode', '?')} | {_ratio(scores.get('kept_token_ratio'))} | "
            + " | ".join(cells)
            + f" | {_pct(scores.get('mean'))} |"
        )
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_kept(runs: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]) -> None:
    """Scatter of mean accuracy (large markers, labelled) and per-benchmark accuracy (small markers)
    against the kept-token ratio, one point per run. Rendered by matplotlib's Agg canvas through a bare
    `Figure` (no pyplot, no display, no change to the caller's matplotlib backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    colors: dict[str, str] = {}
    for name, scores in runs.items():
        kept, mean = scores.get("kept_token_ratio"), scores.get("mean")
        if kept is None or mean is None:
            continue
        for bench, s in scores.items():
            if isinstance(s, Mapping) and s.get("accuracy") is not None and s.get("kept_token_ratio") is not None:
                first = bench not in colors  # label each benchmark once in the legend
                color = colors.setdefault(bench, f"C{len(colors) % 10}")
                label = bench if first else None
                ax.scatter(s["kept_token_ratio"], s["accuracy"], s=14, color=color, alpha=0.6, label=label)
        ax.scatter(kept, mean, s=60, color="black", marker="D")
        mode = scores.get("mode", "?")
        text = name if name == mode else f"{name} ({mode})"
        ax.annotate(text, (kept, mean), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("kept visual-token ratio")
    ax.set_ylabel("accuracy (%)  [black: mean over benchmarks]")
    ax.set_xlim(0, 1.05)
    ax.grid(alpha=0.3)
    if colors:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and status 2, never a usage dump + SystemExit
        raise _UsageError(message)


def _eval_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vitos eval", description="Evaluate a model on benchmarks in one mode (resumable).")
    p.add_argument("--model", required=True, help="hub id or local folder")
    p.add_argument("--benchmarks", required=True, help=f"comma list of {', '.join(BENCHMARKS)}")
    p.add_argument("--mode", choices=MODES, default="vitos")
    p.add_argument("--out", required=True, help="output folder; rerunning into it resumes")
    p.add_argument("--limit", type=int, default=None, help="first N samples per benchmark")
    p.add_argument("--data-dir", default=None, help="local copies: D/<benchmark>/ (or the one benchmark's folder)")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--prompt-style", choices=["vitos", "benchmark"], default="vitos")
    p.add_argument("--budget-ratio", type=float, default=None, help="baselines: keep this fraction of tokens")
    p.add_argument("--budget-from", default=None, help="baselines: per-sample kept counts of a vitos run folder")
    p.add_argument("--fastv-layer", type=int, default=1, help="0-based layer whose attention ranks tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compat", choices=["medevalkit"], default=None, help="judge with MedEvalKit's rules")
    p.add_argument("--margin", type=float, default=0.0)
    p.add_argument("--min-keep", type=int, default=1)
    p.add_argument("--fusion", choices=["none", "merge", "contextual"], default="merge")
    p.add_argument("--num-contextual", type=int, default=4)
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL for an LLM judge of open questions")
    p.add_argument("--judge-model", default="gpt-4o-mini")
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _config_from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        model=args.model,
        benchmarks=[b.strip() for b in args.benchmarks.split(",") if b.strip()],
        mode=args.mode,
        out=args.out,
        limit=args.limit,
        data_dir=args.data_dir,
        split=args.split,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        prompt_style=args.prompt_style,
        budget_ratio=args.budget_ratio,
        budget_from=args.budget_from,
        fastv_layer=args.fastv_layer,
        seed=args.seed,
        compat=args.compat,
        prune=PruneConfig(
            margin=args.margin, min_keep=args.min_keep, fusion=args.fusion, num_contextual=args.num_contextual
        ),
        judge=LLMJudgeConfig(url=args.judge_url, model=args.judge_model, api_key_env=args.judge_key_env),
        dtype=args.dtype,
        device=args.device,
        attn=args.attn,
    )


def _user_errors() -> tuple[type[BaseException], ...]:
    from vitos.models import ModelLoadError

    return (ValueError, FileNotFoundError, ModelLoadError, JudgeError)  # ConfigError, ImageError are ValueErrors


def main_eval(argv: list[str]) -> int:
    """`vitos eval ...`; returns the exit status (2 with a one-line message for errors a user can fix)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = _eval_parser().parse_args(argv)
    except _UsageError as err:
        print(f"vitos eval: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)

    t0 = time.perf_counter()

    def progress(name: str, done: int, total: int) -> None:
        if not args.quiet:
            print(f"{name}: {done}/{total} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    try:
        cfg = _config_from_args(args)
        evaluate(cfg, on_batch=progress)
    except _user_errors() as err:
        print(f"vitos eval: error: {_one_line(err)}", file=sys.stderr)
        return 2
    print((Path(cfg.out) / "scores.md").read_text(), end="")
    print(f"wrote {cfg.out}")
    return 0


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


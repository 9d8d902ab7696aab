"""The evaluation loop of `vitos eval`: one model, some benchmarks, one mode, one resumable output folder.

    from vitos.eval.loop import EvalConfig, evaluate
    scores = evaluate(EvalConfig(model="/tmp/tiny", benchmarks=["vqa_rad"], mode="full", out="runs/x"))

Modes (batched, through `vitos.pipeline.run`; greedy decoding unless `temperature` > 0):
    full       one pass on every visual token (the base model);
    vitos      ground -> prune -> answer (the ViToS inference path); `grounding` "short" (the default) stops
               the grounding pass after its `</box>` (`vitos.pipeline`), "full" lets it write its own answer;
    random, center, fastv, visionzip
               training-free baselines (`vitos.eval.baselines`): keep `budget` tokens per sample chosen by
               the baseline's rule, then answer like `full` on the kept tokens. The budget comes from
               `budget_ratio` (of each sample's visual tokens) or from `budget_from`, a ViToS run whose
               per-sample `visual_tokens_kept` is reused id by id: a matched-budget comparison.

Prompt style: the answer pass writes `vitos.prompts.sparse_prompt` (think + <answer> tags) by default, in
every mode, so that modes differ only in the tokens they see. `prompt_style="benchmark"` gives `full` and
the baselines the benchmark's own prompt (`Benchmark.prompt`), "medevalkit" the kit's wording
(`medevalkit_prompt`); `vitos` mode keeps its own prompts (its answer pass is trained on them).

Judging: `vitos.answers.judge_completion` on the raw answer-pass output, by the rules of docs/scoring.md
(answer location, unwrapping, per-kind rules; parse failures counted, never guessed). `compat="medevalkit"`
applies MedEvalKit's rules per benchmark instead (`vitos.eval.medevalkit`). The optional LLM judge
(`vitos.eval.judge_llm`, off by default) decides open questions: style "vitos" those exact match calls
wrong, style "medevalkit" every open question of `judge.benchmarks`.

Protocol: `PROTOCOLS` names two presets of the settings that make our numbers differ from the published
anchors (README, "Evaluation"): "vitos" (ours, the defaults) and "medevalkit" (compat rules, SLAKE in both
languages, MMMU first image only, MedXpertQA's choice block kept, 8,192 new tokens, the kit's prompts,
its LLM-judge style on VQA-RAD / SLAKE / PathVQA). `apply_protocol` sets them.

Bad rows: each benchmark is read with `Benchmark.load_report`; rows it cannot read are skipped, listed in
DIR/<benchmark>/skipped.jsonl and counted in scores.json (`skipped_rows`, `skipped_examples`).

Output folder DIR:
    DIR/config.yaml                      the resolved EvalConfig (written first; a resumed run must match it)
    DIR/model.json                       the model's fingerprint (`vitos.eval.fingerprint`: config.json and
                                         the weight files' sizes and edge hashes); a resumed run must match
                                         it, so new weights under the same --model path are never mixed with
                                         the old predictions
    DIR/<benchmark>/predictions.jsonl    the resumable log (`vitos.eval.predictions`); fields `RECORD_FIELDS`
    DIR/<benchmark>/skipped.jsonl        {where, reason} of every release row the loader skipped
    DIR/scores.json                      per benchmark: n, accuracy with its 95 % interval, closed / open
                                         accuracy (+ intervals), parse_failures, skipped_rows, kept_token_ratio,
                                         questions_sha1 ... (`vitos.eval.scoring`), plus `mean` and `mean_ci95`
                                         over benchmarks, `kept_token_ratio`, mode, grounding, compat, prompt_style,
                                         judge and the protocol fields
    DIR/scores.md                        the same as a markdown table (+ the sibling runs' table)
    DIR/accuracy_vs_kept.png             accuracy against kept-token ratio of this run and its sibling runs
                                         (`vitos.eval.reports`), when there are two or more

Accuracies are percentages, kept-token ratios fractions (kept visual tokens / all visual tokens).

Writes: predictions.jsonl is appended and fsync'd per batch (a kill leaves at most one torn last line, dropped
on resume); config.yaml, model.json, skipped.jsonl, scores.json and scores.md are written atomically (temp +
rename). --out is checked first (`vitos.paths`): a writable folder that is not, holds no and lies in no input
(--model, --data-dir, --budget-from).
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any, Literal

import torch

from vitos.answers import Judgement, judge_completion, locate_answer, normalize_text
from vitos.config import ConfigError, require_ranges, to_dict
from vitos.data.sample import Sample
from vitos.engine import SamplingConfig
from vitos.eval.baselines import (
    BASELINE_FUSION,
    BASELINE_MODES,
    budget_from_ratio,
    center_keep,
    fastv_keep,
    random_keep,
    split_budget,
    visionzip_keep,
)
from vitos.eval.benchmarks import BENCHMARKS, Benchmark
from vitos.eval.benchmarks.base import medevalkit_prompt
from vitos.eval.benchmarks.medxpertqa import MedXpertQA
from vitos.eval.benchmarks.mmmu_med import MMMUMed
from vitos.eval.benchmarks.slake import Slake
from vitos.eval.judge_llm import KIT_BENCHMARKS, LLMJudge, LLMJudgeConfig
from vitos.eval.fingerprint import describe_change, model_fingerprint
from vitos.eval.medevalkit import kit_judge_input
from vitos.eval.predictions import EvalError, append_records, load_budgets, open_log
from vitos.eval.reports import collect_runs, plot_accuracy_vs_kept, run_markdown, runs_table
from vitos.eval.scoring import aggregate, is_closed, score_benchmark
from vitos.models.base import EncodedImage, ModelAdapter
from vitos.paths import atomic_write_text
from vitos.pipeline import PruneConfig, encode, load_sample_images, run
from vitos.prompts import sparse_prompt
from vitos.pruning.sparse import assemble

__all__ = [
    "MODES",
    "PROTOCOLS",
    "RECORD_FIELDS",
    "EvalConfig",
    "EvalError",
    "apply_protocol",
    "make_benchmark",
    "evaluate",
]

MODES = ("full", "vitos", "vitos-evict") + BASELINE_MODES

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
    "fastv_layer", "seed", "compat", "prune", "dtype", "slake_languages", "mmmu_images", "medxpertqa_choices",
    "temperature",
)  # fmt: skip
# Not keyed (they do not change what a greedy pass answers, up to floating-point noise): limit (a resumed
# run may extend it), batch_size, device, attn, engine (vLLM decodes the same greedy tokens on the same rows,
# tests_vllm/; which engine answered each part is in scores.json), grounding (a short grounding pass is a prefix of the full one:
# same boxes, same answer; only the logged `grounding` text is shorter), data_dir (the questions and answers of every reused record
# are checked against the data instead).


PROTOCOLS: dict[str, dict[str, Any]] = {
    "vitos": {
        "compat": None, "slake_languages": "en", "mmmu_images": "all", "medxpertqa_choices": "strip",
        "max_new_tokens": 256, "prompt_style": "vitos", "judge_style": "vitos", "judge_benchmarks": None,
    },
    "medevalkit": {
        "compat": "medevalkit", "slake_languages": "all", "mmmu_images": "first", "medxpertqa_choices": "keep",
        "max_new_tokens": 8192, "prompt_style": "medevalkit", "judge_style": "medevalkit",
        "judge_benchmarks": list(KIT_BENCHMARKS),
    },
}  # fmt: skip
"""Protocol presets: our defaults, and MedEvalKit's choice for each setting (README's evaluation table)."""


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
    """Decoding limit per pass (grounding and answer each)."""
    temperature: float = 0.0
    """Sampling temperature of both passes; 0 = greedy (the evaluation protocol)."""
    grounding: Literal["short", "full"] = "short"
    """vitos mode: short = the grounding pass stops right after its `</box>` (the sparse pass answers; the
    grounding branch's own answer is not generated), full = it writes its whole output, <answer> included."""
    prompt_style: Literal["vitos", "benchmark", "medevalkit"] = "vitos"
    """Answer-pass prompt of full/baseline modes: vitos (sparse_prompt, tags), benchmark (the benchmark's own,
    `Benchmark.prompt`) or medevalkit (the kit's wording, `medevalkit_prompt`)."""
    budget_ratio: float | None = None
    """Baselines: keep this fraction (0, 1] of each sample's visual tokens."""
    budget_from: str | None = None
    """Baselines: a ViToS run folder (or one predictions.jsonl) whose per-sample visual_tokens_kept is the budget."""
    fastv_layer: int = 1
    """FastV: 0-based decoder layer whose attention ranks the tokens (1 = the paper's K=2)."""
    seed: int = 0
    """Seed of the random baseline (each sample's draw depends only on seed, benchmark and sample id)."""
    compat: Literal["medevalkit"] | None = None
    """None = the rules of docs/scoring.md; medevalkit = that kit's rules (for comparison with published anchors)."""
    protocol: str = "vitos"
    """The preset the protocol fields below came from: vitos (ours) or medevalkit (`PROTOCOLS`)."""
    slake_languages: Literal["en", "all"] = "en"
    """SLAKE rows: en (English only, 1,061 test rows) or all (both languages, 2,094; MedEvalKit)."""
    mmmu_images: Literal["all", "first"] = "all"
    """MMMU: every image of a question, or image_1 only (MedEvalKit)."""
    medxpertqa_choices: Literal["strip", "keep"] = "strip"
    """MedXpertQA: strip the question's written-out "Answer Choices:" block (the prompt lists the options)
    or keep it (MedEvalKit)."""
    prune: PruneConfig = field(default_factory=PruneConfig)
    """vitos mode: box -> token rules and fusion; visionzip uses prune.num_contextual contextual tokens."""
    judge: LLMJudgeConfig = field(default_factory=LLMJudgeConfig)
    """Optional LLM judge for open questions (off while judge.url is None; style / benchmarks: `judge_llm`)."""
    dtype: str = "auto"
    """Model dtype: auto (bf16 on a GPU that supports it, else fp32), float32, bfloat16, float16."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:1 ..."""
    attn: str = "sdpa"
    """Attention implementation: sdpa, eager, flash_attention_2."""
    engine: Literal["python", "vllm"] = "python"
    """Decoder of every pass: python (vitos.engine, the reference) or vllm (vitos.vllm_engine; Qwen2.5-VL models,
    `pip install -e ".[vllm]"`). FastV's attention scores always come from the Python model."""


def apply_protocol(cfg: EvalConfig, name: str, keep: frozenset[str] | set[str] = frozenset()) -> EvalConfig:
    """A copy of `cfg` with every setting of protocol `name` (`PROTOCOLS`), except the fields in `keep`
    (those the user set explicitly: "judge_style" / "judge_benchmarks" name judge.style / judge.benchmarks).
    The judge stays off without judge.url: a kit-protocol run without an LLM endpoint judges open answers
    by the kit's exact match, and scores.json says so."""
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; choose one of {list(PROTOCOLS)}")
    preset = PROTOCOLS[name]
    changes = {k: v for k, v in preset.items() if not k.startswith("judge_") and k not in keep}
    judge_changes = {}
    if "judge_style" not in keep:
        judge_changes["style"] = preset["judge_style"]
    if "judge_benchmarks" not in keep:
        judge_changes["benchmarks"] = preset["judge_benchmarks"]
    judge = dataclasses.replace(cfg.judge, **judge_changes)
    return dataclasses.replace(cfg, protocol=name, judge=judge, **changes)


def protocol_deviations(cfg: EvalConfig) -> dict[str, Any]:
    """{setting: value} where `cfg` differs from its protocol's preset (reported in scores.json)."""
    preset = PROTOCOLS.get(cfg.protocol, PROTOCOLS["vitos"])
    actual = {k: getattr(cfg, k) for k in preset if not k.startswith("judge_")}
    actual["judge_style"] = cfg.judge.style
    actual["judge_benchmarks"] = cfg.judge.benchmarks
    return {k: v for k, v in actual.items() if v != preset[k]}


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
    if cfg.engine == "vllm" and cfg.mode == "vitos-evict":
        raise ConfigError("--mode vitos-evict evicts from the Python engine's KV cache; use --mode vitos with "
                          "--engine vllm, or --engine python")
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
    if cfg.grounding not in ("short", "full"):
        raise ConfigError(f"grounding must be 'short' or 'full', got {cfg.grounding!r}")
    if cfg.prompt_style not in ("vitos", "benchmark", "medevalkit"):
        raise ConfigError(f"prompt_style must be 'vitos', 'benchmark' or 'medevalkit', got {cfg.prompt_style!r}")
    if cfg.protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {cfg.protocol!r}; choose one of {list(PROTOCOLS)}")
    for name, allowed in (("slake_languages", ("en", "all")), ("mmmu_images", ("all", "first")),
                          ("medxpertqa_choices", ("strip", "keep"))):  # fmt: skip
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"{name} must be one of {list(allowed)}, got {getattr(cfg, name)!r}")
    if cfg.compat not in (None, "medevalkit"):
        raise ConfigError(f"compat must be None or 'medevalkit', got {cfg.compat!r}")
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch-size (batch_size) must be >= 1, got {cfg.batch_size}")
    if cfg.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens (max_new_tokens) must be >= 1, got {cfg.max_new_tokens}")
    if cfg.judge.max_calls is not None and cfg.judge.max_calls < 1:
        raise ConfigError(f"--judge-max-calls (judge.max_calls) must be >= 1, got {cfg.judge.max_calls}")
    if not (math.isfinite(cfg.temperature) and cfg.temperature >= 0):
        raise ConfigError(f"--temperature must be a finite number >= 0 (0 = greedy), got {cfg.temperature}")
    require_ranges(cfg.prune, names={"margin": "--margin", "min_keep": "--min-keep",
                                     "num_contextual": "--num-contextual"})
    if cfg.limit is not None and cfg.limit < 0:
        raise ConfigError(f"--limit (limit) must be >= 0, got {cfg.limit}")
    if cfg.fastv_layer < 0:
        raise ConfigError(f"--fastv-layer (fastv_layer) must be >= 0, got {cfg.fastv_layer}")


def _result_view(values: Mapping[str, Any]) -> dict[str, Any]:
    defaults = to_dict(EvalConfig())  # a key an older run folder lacks had its default then
    view = {k: values.get(k, defaults.get(k)) for k in _RESULT_FIELDS}
    judge_cfg = values.get("judge") or {}
    view["judge"] = {k: judge_cfg.get(k, defaults["judge"][k]) for k in ("url", "model", "style", "benchmarks")}
    return view


def _check_out(cfg: EvalConfig, out: Path) -> None:
    """--out is a writable folder that is not, holds no and lies in no input (vitos.paths)."""
    from vitos.paths import check_output_dir, check_writable_dir

    check_writable_dir(out, "--out")
    check_output_dir(out, "--out", [("--model", cfg.model), ("--data-dir", cfg.data_dir),
                                    ("--budget-from", cfg.budget_from)])


def _claim_run_dir(cfg: EvalConfig, out: Path) -> None:
    """Write DIR/config.yaml and DIR/model.json, or check that the run already in DIR was started with the
    same settings on the same model (a folder from before model.json existed gets one and resumes; a folder
    without predictions yet, e.g. after a model that failed to load, takes this run's settings and model)."""
    import yaml

    path = out / "config.yaml"
    key_path = out / "model.json"
    fingerprint = model_fingerprint(cfg.model)
    has_predictions = any(f.is_file() and f.stat().st_size for f in out.glob("*/predictions.jsonl"))
    # No predictions yet (a run stopped before its first batch, e.g. by a model that failed to load): nothing
    # can be reused, so the folder simply takes this run's settings and model.
    if path.is_file() and key_path.is_file() and has_predictions:
        try:
            old_fp = json.loads(key_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise EvalError(f"{key_path} is damaged (not JSON); delete {out} (or use another --out) and rerun") from None
        change = describe_change(old_fp, fingerprint)
        if change:
            raise EvalError(f"{out} holds predictions of another model than --model {cfg.model} is now ({change}); "
                            "use another --out, or delete that folder to evaluate the new model")
    if path.is_file() and has_predictions:
        try:
            old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise EvalError(f"{path} is damaged ({' '.join(str(err).split())[:120]}); delete {out} (or use another "
                            "--out) and rerun") from None
        if not isinstance(old, dict):
            raise EvalError(f"{path} is damaged (not a mapping of settings); delete {out} or use another --out")
        old_view, new_view = _result_view(old), _result_view(to_dict(cfg))
        diff = [k for k in new_view if old_view.get(k) != new_view[k]]
        if diff:
            changes = ", ".join(f"{k}: {old_view.get(k)!r} -> {new_view[k]!r}" for k in diff)
            raise EvalError(f"{out} holds a run with other settings ({changes}); use another --out or delete it")
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))  # a kill leaves old or new, whole
    atomic_write_text(key_path, json.dumps(fingerprint, indent=2) + "\n")


def _data_dir(cfg: EvalConfig, name: str) -> Path | None:
    if cfg.data_dir is None:
        return None
    root = Path(cfg.data_dir).expanduser()
    if not root.exists():
        raise EvalError(f"--data-dir {root} does not exist; give the folder holding one subfolder per benchmark "
                        f"({name}/ ...), or, with one benchmark, that benchmark's folder")
    if not root.is_dir():
        raise EvalError(f"--data-dir {root} is a file, not a folder; give the folder holding {name}/")
    if (root / name).is_dir():
        return root / name
    if len(cfg.benchmarks) == 1 and root.is_dir():
        return root
    raise EvalError(f"--data-dir {root} has no {name}/ folder (give a folder holding one subfolder per benchmark)")


def make_benchmark(cfg: EvalConfig, name: str) -> Benchmark:
    """The benchmark `name` with the protocol options of `cfg` (SLAKE languages, MMMU images, MedXpertQA's
    choice block); the registry's instance when they are the defaults."""
    if name == "slake" and cfg.slake_languages == "all":
        return Slake(languages=None)
    if name == "mmmu_med" and cfg.mmmu_images == "first":
        return MMMUMed(images="first")
    if name == "medxpertqa" and cfg.medxpertqa_choices == "keep":
        return MedXpertQA(keep_choices_block=True)
    return BENCHMARKS[name]


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
    if cfg.prompt_style == "medevalkit":
        return [medevalkit_prompt(s) for s in samples]
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
    engine: Any = None,
) -> list[dict[str, Any]]:
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    encoded = encode(adapter, [load_sample_images(s) for s in samples])
    targets: list[int | None] = [None] * len(samples)
    if cfg.mode in ("vitos", "vitos-evict"):  # vitos-evict: one prefill, pruned tokens evicted (vitos.single_pass)
        answers = run(adapter, samples, cfg.mode, cfg.prune, sampling, encoded=encoded, grounding=cfg.grounding,
                      engine=engine)
    else:
        texts = _answer_texts(cfg, bench, samples, encoded)
        keeps = None
        prune = cfg.prune
        if cfg.mode in BASELINE_MODES:
            keeps, targets = _baseline_keeps(cfg, adapter, bench, samples, encoded, texts, budgets)  # type: ignore
            fusion = BASELINE_FUSION[cfg.mode]
            prune = PruneConfig(fusion=fusion, num_contextual=cfg.prune.num_contextual)  # type: ignore[arg-type]
        answers = run(
            adapter, samples, "full", prune, sampling, encoded=encoded, keeps_override=keeps, answer_prompts=texts,
            engine=engine,
        )

    records = []
    for sample, ans, target in zip(samples, answers, targets):
        location = locate_answer(ans.answer_text)
        prediction = location.text or ""
        verdict = judge_completion(ans.answer_text, sample, cfg.compat)  # compat dispatches on the benchmark
        llm_verdict = _llm_verdict(llm_judge, bench, sample, ans.answer_text, prediction, verdict.correct)
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


def _llm_verdict(
    llm_judge: LLMJudge | None, bench: Benchmark, sample: Sample, raw: str, prediction: str, rule_correct: bool
) -> bool | None:
    """The LLM judge's verdict on an open question, or None when it is not asked (judge_llm docstring)."""
    if llm_judge is None or sample.kind != "open" or not llm_judge.asks_about(bench.name):
        return None
    if llm_judge.cfg.style == "medevalkit":  # the kit asks about every open question, on its own extraction
        return llm_judge(sample.question, sample.answer, kit_judge_input(raw, sample))
    if rule_correct or not normalize_text(prediction):
        return None
    return llm_judge(sample.question, sample.answer, prediction)


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------


def _score(records: Mapping[str, Mapping[str, Any]], samples: list[Sample]) -> dict[str, Any]:
    recs = [records[s.id] for s in samples]
    judgements = [
        Judgement(r["correct"], r["parsed"], r["parse_failure"], r["recall"], r["f1"], r.get("parse_reason"))
        for r in recs
    ]
    return score_benchmark(judgements, samples, [r["kept_ratio"] for r in recs])


def _check_reused(path: Path, done: Mapping[str, Mapping[str, Any]], samples: list[Sample]) -> None:
    """A reused record must be of the same question and reference answer as the data read now."""
    for s in samples:
        r = done.get(s.id)
        if r is None:
            continue
        for key, now in (("question", s.question), ("answer", s.answer)):
            if json.loads(json.dumps(now)) != r.get(key):
                raise EvalError(f"{path}: sample {s.id}'s {key} differs from the data read now "
                                f"({r.get(key)!r} -> {now!r}); the folder was made on other data: use another "
                                "--out or delete it")


def _write_skipped(path: Path, skipped: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps({"where": r.where, "reason": r.reason}, ensure_ascii=False) + "\n"
                                    for r in skipped))


def _load(cfg: EvalConfig, name: str) -> tuple[Benchmark, list[Sample], list]:
    bench = make_benchmark(cfg, name)
    try:
        report = bench.load_report(_data_dir(cfg, name), split=cfg.split, limit=cfg.limit)
    except RuntimeError as err:  # hub download impossible (offline, package missing): say how to fix
        raise EvalError(str(err)) from err
    if not report.samples:
        why = f"; all {len(report.skipped)} rows read were skipped, e.g. {report.skipped[0].reason}" if report.skipped else ""
        raise EvalError(f"{name} ({cfg.split}) has no samples (limit={cfg.limit}){why}")
    ids = [s.id for s in report.samples]
    if len(set(ids)) != len(ids):
        raise EvalError(f"{name}: sample ids repeat; a resumable run needs unique ids")
    return bench, report.samples, report.skipped


def evaluate(
    cfg: EvalConfig,
    adapter: ModelAdapter | None = None,
    on_batch: Callable[[str, int, int], None] | None = None,
    on_start: Callable[[str, int, int], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run `cfg` (resuming what DIR already holds) and write predictions, scores.json/.md and the plot.

    `adapter` reuses a loaded model (else `cfg.model` is loaded); `on_batch(benchmark, done, total)` is
    called after each batch is safely on disk (progress display; an exception there stops the run, which
    the next call resumes); `on_start(benchmark, done, total)` before each benchmark's first batch (`done`:
    the questions a resumed run already holds); `on_stage(text)` when a slow stage starts (reading a
    benchmark, loading the model). Returns the scores.json content.
    """
    _validate(cfg)
    out = Path(cfg.out).expanduser()
    _check_out(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    _claim_run_dir(cfg, out)

    plan: list[tuple[Benchmark, list[Sample], dict[str, int] | None, list]] = []
    for name in cfg.benchmarks:
        if on_stage is not None:
            on_stage(f"reading {name} ({cfg.split})")
        bench, samples, skipped = _load(cfg, name)
        budgets = None
        if cfg.mode in BASELINE_MODES and cfg.budget_from is not None:
            budgets = load_budgets(cfg.budget_from, name, several=len(cfg.benchmarks) > 1)
            missing = [s.id for s in samples if s.id not in budgets]
            if missing:
                raise EvalError(
                    f"--budget-from has no kept count for {len(missing)} {name} sample(s) (e.g. {missing[:3]}); "
                    "evaluate the vitos run on the same samples (same --limit and --split) first"
                )
        plan.append((bench, samples, budgets, skipped))

    if adapter is None:
        from vitos.models import load_model

        if on_stage is not None:
            on_stage(f"loading the model {cfg.model}")
        adapter = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, attn_implementation=cfg.attn)
    llm_judge = LLMJudge(cfg.judge) if cfg.judge.url else None
    engine = None
    if cfg.engine == "vllm":
        from vitos.vllm_engine.engine import VllmEngine

        if on_stage is not None:
            on_stage(f"starting vLLM for {cfg.model}")
        engine = VllmEngine(cfg.model, dtype=cfg.dtype)

    per_benchmark: dict[str, dict[str, Any]] = {}
    for bench, samples, budgets, skipped in plan:
        path = out / bench.name / "predictions.jsonl"
        _write_skipped(out / bench.name / "skipped.jsonl", skipped)
        done = open_log(path)
        _check_reused(path, done, samples)
        wanted = {s.id for s in samples}
        todo = [s for s in samples if s.id not in done]
        if on_start is not None:
            on_start(bench.name, len(samples) - len(todo), len(samples))
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start : start + cfg.batch_size]
            records = _run_batch(cfg, adapter, bench, batch, budgets, llm_judge, engine)
            append_records(path, records)
            done.update((r["id"], r) for r in records)
            if on_batch is not None:
                on_batch(bench.name, sum(1 for i in done if i in wanted), len(samples))
        scores_b = _score(done, samples)
        scores_b["skipped_rows"] = len(skipped)
        scores_b["skipped_examples"] = [r.reason for r in skipped[:3]]
        per_benchmark[bench.name] = scores_b

    scores = aggregate(per_benchmark)
    scores["kept_token_ratio"] = fmean(s["kept_token_ratio"] for s in per_benchmark.values())
    scores["mode"] = cfg.mode
    scores["engine"] = cfg.engine  # this invocation's; not keyed for resume (see _RESULT_FIELDS)
    scores["compat"] = cfg.compat
    scores["prompt_style"] = cfg.prompt_style
    scores["grounding"] = cfg.grounding if cfg.mode == "vitos" else "short" if cfg.mode == "vitos-evict" else None
    scores["judge"] = _judge_label(cfg)
    scores["protocol"] = cfg.protocol
    for key in ("slake_languages", "mmmu_images", "medxpertqa_choices", "max_new_tokens"):
        scores[key] = getattr(cfg, key)
    scores["protocol_deviations"] = sorted(protocol_deviations(cfg))
    atomic_write_text(out / "scores.json", json.dumps(scores, indent=2) + "\n")

    runs = collect_runs(out.parent)
    runs[out.name] = scores
    md = run_markdown(f"vitos eval: {cfg.mode} on {cfg.model}", _settings_line(cfg, scores), scores)
    if len(runs) >= 2:
        md += "\n## Runs beside this one\n\n" + runs_table(runs)
        plot_accuracy_vs_kept(runs, out / "accuracy_vs_kept.png")
    atomic_write_text(out / "scores.md", md)
    return scores


def _judge_label(cfg: EvalConfig) -> str:
    if not cfg.judge.url:
        return "rules"
    scope = "" if cfg.judge.benchmarks is None else f" on {','.join(cfg.judge.benchmarks)}"
    style = "" if cfg.judge.style == "vitos" else f" ({cfg.judge.style} style)"
    return f"llm:{cfg.judge.model}{style}{scope}"


def _settings_line(cfg: EvalConfig, scores: Mapping[str, Any]) -> str:
    line = (
        f"Protocol {cfg.protocol}: prompt_style {cfg.prompt_style}, judging {scores['judge']}"
        + (f" (compat {cfg.compat})" if cfg.compat else "")
        + f", max_new_tokens {cfg.max_new_tokens}, SLAKE {cfg.slake_languages}, MMMU images {cfg.mmmu_images}, "
        f"MedXpertQA choice block {cfg.medxpertqa_choices}."
    )
    deviations = protocol_deviations(cfg)
    if deviations:
        line += f" Differs from the {cfg.protocol} preset in: {', '.join(sorted(deviations))}."
    if cfg.protocol == "medevalkit" and not cfg.judge.url:
        line += (" The kit's anchors judged open answers of VQA-RAD, SLAKE and PathVQA with an LLM; without"
                 " --judge-url they are judged by the kit's exact match here.")
    return line

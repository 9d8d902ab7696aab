"""The `vitos eval` command line: arguments -> `EvalConfig` (+ `--protocol`) -> `vitos.eval.loop.evaluate`.

    vitos eval --model lingshu-medical-mllm/Lingshu-7B --benchmarks vqa_rad,slake --mode vitos \\
        --out runs/lingshu/vitos --data-dir /data/benchmarks
    vitos eval ... --mode fastv --budget-from runs/lingshu/vitos --out runs/lingshu/fastv   # matched budget
    vitos eval ... --mode full --protocol medevalkit --judge-url http://127.0.0.1:8000/v1  # the kit's protocol

`--protocol medevalkit` sets every setting of `PROTOCOLS["medevalkit"]` at once; a flag given explicitly
(e.g. `--max-new-tokens 1024`) wins over the preset, and scores.json lists such deviations. Errors a user
can fix print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from vitos.eval.benchmarks import BENCHMARKS
from vitos.eval.judge_llm import JudgeError, LLMJudgeConfig
from vitos.eval.loop import MODES, PROTOCOLS, EvalConfig, apply_protocol, evaluate
from vitos.pipeline import PruneConfig

__all__ = ["main_eval"]

# Flags whose value a protocol preset supplies when the user did not give them (flag dest -> preset key).
_PROTOCOL_FLAGS = {
    "compat": "compat",
    "slake_languages": "slake_languages",
    "mmmu_images": "mmmu_images",
    "medxpertqa_choices": "medxpertqa_choices",
    "max_new_tokens": "max_new_tokens",
    "prompt_style": "prompt_style",
    "judge_style": "judge_style",
    "judge_benchmarks": "judge_benchmarks",
}


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
    p.add_argument("--protocol", choices=list(PROTOCOLS), default="vitos",
                   help="preset of every protocol setting below (README: evaluation protocol table)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="per pass; vitos 256, medevalkit 8192")
    p.add_argument("--prompt-style", choices=["vitos", "benchmark", "medevalkit"], default=None)
    p.add_argument("--slake-languages", choices=["en", "all"], default=None, help="SLAKE rows (kit: all)")
    p.add_argument("--mmmu-images", choices=["all", "first"], default=None, help="MMMU images shown (kit: first)")
    p.add_argument("--medxpertqa-choices", choices=["strip", "keep"], default=None,
                   help="MedXpertQA's written-out 'Answer Choices' block (kit: keep)")
    p.add_argument("--budget-ratio", type=float, default=None, help="baselines: keep this fraction of tokens")
    p.add_argument("--budget-from", default=None, help="baselines: per-sample kept counts of a vitos run folder")
    p.add_argument("--fastv-layer", type=int, default=1, help="0-based layer whose attention ranks tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compat", choices=["none", "medevalkit"], default=None, help="judge with MedEvalKit's rules")
    p.add_argument("--margin", type=float, default=0.0)
    p.add_argument("--min-keep", type=int, default=1)
    p.add_argument("--fusion", choices=["none", "merge", "contextual"], default="merge")
    p.add_argument("--num-contextual", type=int, default=4)
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL for an LLM judge of open questions")
    p.add_argument("--judge-model", default="gpt-4o-mini")
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--judge-style", choices=["vitos", "medevalkit"], default=None)
    p.add_argument("--judge-benchmarks", default=None, help="comma list of benchmarks the LLM judge decides (all)")
    p.add_argument("--judge-max-calls", type=int, default=20000, help="most LLM judge requests in one run")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _config_from_args(args: argparse.Namespace) -> EvalConfig:
    explicit = {dest for dest in _PROTOCOL_FLAGS if getattr(args, dest) is not None}
    judge_benchmarks = None
    if args.judge_benchmarks is not None:
        judge_benchmarks = [b.strip() for b in args.judge_benchmarks.split(",") if b.strip()]
    cfg = EvalConfig(
        model=args.model,
        benchmarks=[b.strip() for b in args.benchmarks.split(",") if b.strip()],
        mode=args.mode,
        out=args.out,
        limit=args.limit,
        data_dir=args.data_dir,
        split=args.split,
        batch_size=args.batch_size,
        budget_ratio=args.budget_ratio,
        budget_from=args.budget_from,
        fastv_layer=args.fastv_layer,
        seed=args.seed,
        prune=PruneConfig(
            margin=args.margin, min_keep=args.min_keep, fusion=args.fusion, num_contextual=args.num_contextual
        ),
        judge=LLMJudgeConfig(
            url=args.judge_url, model=args.judge_model, api_key_env=args.judge_key_env, max_calls=args.judge_max_calls
        ),
        dtype=args.dtype,
        device=args.device,
        attn=args.attn,
    )
    cfg = apply_protocol(cfg, args.protocol, keep=explicit)
    overrides = {}
    if args.compat is not None:
        overrides["compat"] = None if args.compat == "none" else args.compat
    for dest in ("slake_languages", "mmmu_images", "medxpertqa_choices", "max_new_tokens", "prompt_style"):
        if getattr(args, dest) is not None:
            overrides[dest] = getattr(args, dest)
    judge_overrides = {}
    if args.judge_style is not None:
        judge_overrides["style"] = args.judge_style
    if args.judge_benchmarks is not None:
        judge_overrides["benchmarks"] = judge_benchmarks
    return dataclasses.replace(cfg, judge=dataclasses.replace(cfg.judge, **judge_overrides), **overrides)


def _user_errors() -> tuple[type[BaseException], ...]:
    from vitos.models import ModelLoadError  # lazily: importing the model zoo is slow

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

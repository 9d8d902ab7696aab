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

from vitos.config import error_line
from vitos.eval.benchmarks import BENCHMARKS
from vitos.eval.judge_llm import JudgeError, LLMJudgeConfig
from vitos.eval.loop import MODES, PROTOCOLS, EvalConfig, apply_protocol, evaluate
from vitos.eval.loop import _validate as validate
from vitos.models.settings import SYNTHETIC_NOTE, Resolved, read_settings, resolve_settings
from vitos.pipeline import PruneConfig

__all__ = ["main_eval", "build_parser", "Progress"]

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


_SAVED = "default: the model's saved setting (vitos_settings.json), else"


def build_parser() -> argparse.ArgumentParser:
    """The `vitos eval` argument parser (every option has a help line that states its default)."""
    p = _Parser(prog="vitos eval", description="Evaluate a model on benchmarks in one mode (resumable).")
    p.add_argument("--model", required=True, help="hub id or local model folder (required)")
    p.add_argument("--benchmarks", required=True, help=f"comma list of {', '.join(BENCHMARKS)} (required)")
    p.add_argument("--mode", choices=MODES, default="vitos",
                   help="full (all tokens), vitos (ground -> prune -> answer), vitos-evict (one prefill: the pruned "
                        "tokens are evicted from the KV cache after the boxes; an approximation) or a baseline "
                        "(default: vitos)")
    p.add_argument("--out", required=True,
                   help="output folder (required); rerunning into it resumes the same model and settings")
    p.add_argument("--limit", type=int, default=None, help="first N samples per benchmark (default: all)")
    p.add_argument("--data-dir", default=None,
                   help="local copies: D/<benchmark>/ (or the one benchmark's folder) (default: download from the hub)")
    p.add_argument("--split", default="test", help="benchmark split (default: test)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="questions per generation call, also the resume granularity (default: 8)")
    p.add_argument("--protocol", choices=list(PROTOCOLS), default="vitos",
                   help="preset of every protocol setting below (README: evaluation protocol table) (default: vitos)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"longest completion per pass ({_SAVED} 256; --protocol medevalkit: 8192, over a saved value)")
    p.add_argument("--temperature", type=float, default=None,
                   help=f"sampling temperature, 0 = greedy ({_SAVED} 0.0)")
    p.add_argument("--grounding", choices=["short", "full"], default="short",
                   help="vitos: short = the grounding pass stops once its boxes are written (after </box>; same "
                        "boxes and answers under greedy decoding, fewer tokens), full = it also writes its own "
                        "<answer>, as in training (default: short)")
    p.add_argument("--prompt-style", choices=["vitos", "benchmark", "medevalkit"], default=None,
                   help="answer-pass prompt of full and baseline modes (default: the protocol's: vitos / medevalkit)")
    p.add_argument("--slake-languages", choices=["en", "all"], default=None,
                   help="SLAKE rows (default: the protocol's: vitos en, medevalkit all)")
    p.add_argument("--mmmu-images", choices=["all", "first"], default=None,
                   help="MMMU images shown (default: the protocol's: vitos all, medevalkit first)")
    p.add_argument("--medxpertqa-choices", choices=["strip", "keep"], default=None,
                   help="MedXpertQA's written-out 'Answer Choices' block (default: the protocol's: vitos strip, "
                        "medevalkit keep)")
    p.add_argument("--budget-ratio", type=float, default=None,
                   help="baselines: keep this fraction of tokens (default: none; a baseline needs this or --budget-from)")
    p.add_argument("--budget-from", default=None,
                   help="baselines: per-sample kept counts of a vitos run folder (default: none)")
    p.add_argument("--fastv-layer", type=int, default=1,
                   help="fastv: 0-based layer whose attention ranks tokens (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline (default: 0)")
    p.add_argument("--compat", choices=["none", "medevalkit"], default=None,
                   help="judging rules: none = docs/scoring.md, medevalkit = the kit's (default: the protocol's)")
    p.add_argument("--margin", type=float, default=None, help=f"vitos: box dilation, normalised units ({_SAVED} 0.0)")
    p.add_argument("--min-keep", type=int, default=None, help=f"vitos: fewest visual tokens kept per image ({_SAVED} 1)")
    p.add_argument("--fusion", choices=["none", "merge", "contextual"], default=None,
                   help=f"vitos: how pruned tokens are folded in ({_SAVED} merge)")
    p.add_argument("--num-contextual", type=int, default=None,
                   help=f"contextual fusion and visionzip: contextual tokens ({_SAVED} 4)")
    p.add_argument("--judge-url", default=None,
                   help="OpenAI-compatible base URL for an LLM judge of open questions (default: none, rules only)")
    p.add_argument("--judge-model", default="gpt-4o-mini", help="LLM judge model name (default: gpt-4o-mini)")
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the judge's API key (default: OPENAI_API_KEY)")
    p.add_argument("--judge-style", choices=["vitos", "medevalkit"], default=None,
                   help="which open questions the LLM judge decides (default: the protocol's)")
    p.add_argument("--judge-benchmarks", default=None,
                   help="comma list of benchmarks the LLM judge decides (default: the protocol's; vitos: all)")
    p.add_argument("--judge-max-calls", type=int, default=20000,
                   help="most LLM judge requests in one run (default: 20000)")
    p.add_argument("--engine", choices=["python", "vllm"], default="python",
                   help="decoder: python (vitos.engine, the reference) or vllm (Qwen2.5-VL; pip install -e '.[vllm]') "
                        "(default: python)")
    p.add_argument("--dtype", default="auto",
                   help="auto (bf16 on a GPU that supports it, else fp32), float32, bfloat16, float16 (default: auto)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--attn", default="sdpa",
                   help="attention implementation: sdpa, eager, flash_attention_2 (default: sdpa)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar or progress lines on stderr (default: progress shown)")
    return p


_eval_parser = build_parser  # the older name


def resolve_run_settings(args: argparse.Namespace) -> Resolved:
    """The model's saved settings (vitos_settings.json) under the flags given (None = not given)."""
    flags = {k: getattr(args, k) for k in ("fusion", "margin", "min_keep", "num_contextual", "max_new_tokens",
                                           "temperature")}
    return resolve_settings(read_settings(args.model), flags)


def _config_from_args(args: argparse.Namespace, chosen: Resolved | None = None) -> EvalConfig:
    """EvalConfig of the arguments; `chosen`: the resolved model settings (`resolve_run_settings`)."""
    chosen = resolve_run_settings(args) if chosen is None else chosen
    s = chosen.settings
    if args.max_new_tokens is None and args.protocol == "vitos":  # the saved (or built-in) value, not the preset's
        args = argparse.Namespace(**{**vars(args), "max_new_tokens": s.max_new_tokens})
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
        temperature=s.temperature,
        grounding=args.grounding,
        prune=PruneConfig(
            margin=s.margin, min_keep=s.min_keep, fusion=s.fusion, num_contextual=s.num_contextual  # type: ignore[arg-type]
        ),
        judge=LLMJudgeConfig(
            url=args.judge_url, model=args.judge_model, api_key_env=args.judge_key_env, max_calls=args.judge_max_calls
        ),
        dtype=args.dtype,
        device=args.device,
        attn=args.attn,
        engine=args.engine,
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

    # ConfigError, ImageError, PathError, SettingsError are ValueErrors; OSError: unreadable or unwritable files
    return (ValueError, OSError, ModelLoadError, JudgeError, ImportError)  # ImportError: --engine vllm without vLLM


def _is_terminal(stream) -> bool:
    """A terminal a bar can be drawn on (a pseudo-terminal of width 0 gets the plain lines)."""
    try:
        return bool(stream.isatty()) and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        return False


class Progress:
    """Progress over questions, per benchmark: a tqdm bar (rate, ETA) on a terminal; on a pipe or a log file
    one parseable line per batch,

        vitos eval: progress benchmark=vqa_rad done=16 total=451 rate=2.31/s eta_s=188

    and nothing with `quiet`. `start` / `batch` / `stage` fit `evaluate`'s `on_start` / `on_batch` / `on_stage`
    (a stage line says what it is waiting for: reading a benchmark, loading the model)."""

    def __init__(self, quiet: bool = False, stream=None, tty: bool | None = None):
        self.quiet = quiet
        self.stream = sys.stderr if stream is None else stream
        self.tty = _is_terminal(self.stream) if tty is None else tty
        self.bar = None
        self.t0 = time.perf_counter()
        self.first = 0

    def start(self, name: str, done: int, total: int) -> None:
        self.close()
        self.t0, self.first = time.perf_counter(), done
        if self.quiet:
            return
        if self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, desc=name, unit="q", file=self.stream, dynamic_ncols=True)
        else:
            self._line(name, done, total)

    def batch(self, name: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        else:
            self._line(name, done, total)

    def _line(self, name: str, done: int, total: int) -> None:
        elapsed = time.perf_counter() - self.t0
        rate = (done - self.first) / elapsed if elapsed > 0 and done > self.first else None
        eta = (total - done) / rate if rate else None
        print(f"vitos eval: progress benchmark={name} done={done} total={total} "
              f"rate={'-' if rate is None else f'{rate:.2f}/s'} eta_s={'-' if eta is None else f'{eta:.0f}'}",
              file=self.stream, flush=True)

    def stage(self, text: str) -> None:
        """A slow stage started: one line (`vitos eval: reading vqa_rad (test)`), unless quiet."""
        if not self.quiet:
            self.close()
            print(f"vitos eval: {text} ...", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def main_eval(argv: list[str]) -> int:
    """`vitos eval ...`; returns the exit status (2 with a one-line message for errors a user can fix)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as err:
        print(f"vitos eval: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)

    progress = Progress(quiet=args.quiet)
    try:
        chosen = resolve_run_settings(args)
        cfg = _config_from_args(args, chosen)
        validate(cfg)  # a bad value is the one line printed, before the settings lines
        for line in chosen.warnings():
            print(f"vitos eval: {line}", file=sys.stderr)
        print(f"vitos eval: {chosen.describe()}", file=sys.stderr)
        if args.max_new_tokens is None and cfg.max_new_tokens != chosen.settings.max_new_tokens:
            print(f"vitos eval: --protocol {cfg.protocol} sets max_new_tokens={cfg.max_new_tokens}", file=sys.stderr)
        if chosen.settings.synthetic:
            print(f"vitos eval: {SYNTHETIC_NOTE.format(model=args.model)}", file=sys.stderr)
        evaluate(cfg, on_batch=progress.batch, on_start=progress.start, on_stage=progress.stage)
    except _user_errors() as err:
        progress.close()
        print(f"vitos eval: error: {error_line(err)}", file=sys.stderr)
        return 2
    progress.close()
    print((Path(cfg.out) / "scores.md").read_text(), end="")
    print(f"wrote {cfg.out}")
    return 0

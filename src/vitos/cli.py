"""The `vitos` command: thin argument parsing, one function call per subcommand.

    vitos demo [--quick] [--json OUT]            the embedded default: warm start -> dual-stream RL -> evaluation
    vitos tiny-model OUT_DIR [--seed N] [--family qwen|huatuo]   a tiny random checkpoint (offline)
    vitos infer --model M --image PATH --question TEXT [--mode vitos|full] [--json] [--overlay out.png]
    vitos train --config configs/NAME.yaml [key=value ...] [--resume RUN]
    vitos eval --model M --benchmarks vqa_rad,slake,... --mode vitos --out DIR [--limit N] [--data-dir D]
    vitos compare RUN_A RUN_B
    vitos study [--smoke] [--out DIR] [key=value ...]   seeds x schedules x ablations, intervals, paired tests
    vitos app [--model M] [--port 7860]          a local web page (the optional [app] extra: gradio)

train, eval, compare and demo parse their own arguments (`vitos train --help`).

Errors a user can fix (bad image, bad model path, bad config) print one line and exit with status 2;
they never end in a stack trace.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

# Subcommands whose module owns its argument parsing: name -> (module, function(argv) -> exit status).
DELEGATED = {
    "train": ("vitos.rl.trainer", "main_train", "dual-stream GRPO training (--config, key=value overrides, --resume)"),
    "eval": ("vitos.eval.runner", "main_eval", "evaluate on the medical VQA benchmarks in one mode"),
    "compare": ("vitos.eval.compare", "main_compare", "relative performance of run A against run B"),
    "demo": ("vitos.demo", "main_demo", "the embedded default on MedPhantom: warm start, RL, evaluation"),
    "study": ("vitos.study.run", "main_study", "seeds x schedules x reward ablations with intervals and paired tests"),
    "serve": ("vitos.serve", "main_serve", "an OpenAI-compatible HTTP server: ground -> prune -> answer per request"),
    "app": ("vitos.app", "main_app", "a local web page: upload a scan, see the boxes, kept tokens and both answers"),
}


def _quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def cmd_tiny_model(args: argparse.Namespace) -> int:
    """Written into a temporary sibling folder, then renamed: never mixed into an existing folder's files.
    A non-empty OUT_DIR is refused, unless --overwrite and it is a model folder (config.json)."""
    import os
    import shutil

    from vitos.paths import PathError, check_writable_dir, replace_dir

    out = Path(args.out_dir)
    check_writable_dir(out, "OUT_DIR")
    if out.is_dir() and any(out.iterdir()):
        names = sorted(p.name for p in out.iterdir())
        if not args.overwrite:
            raise PathError(f"OUT_DIR {out} is not empty ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}); "
                            "choose a new folder, or add --overwrite to replace the model in it")
        if not (out / "config.json").is_file():
            raise PathError(f"--overwrite replaces a model folder, but {out} has no config.json; refusing to delete "
                            "what it holds: choose a new folder")
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if args.family == "huatuo":
            from vitos.models.tiny_huatuo import write_tiny_huatuo

            write_tiny_huatuo(tmp, seed=args.seed)
            from vitos.models.settings import ModelSettings, write_settings

            write_settings(tmp, ModelSettings(synthetic=True, made_by="vitos tiny-model --family huatuo"),
                           note="random weights, for tests and plumbing: not a medical model")
            what = "a tiny HuatuoGPT-Vision (llava_qwen2, original format) checkpoint"
        else:
            from vitos.models.tiny import write_tiny_model

            write_tiny_model(tmp, seed=args.seed)
            what = "a tiny Qwen2.5-VL checkpoint"
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {what} to {out}")
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from vitos.config import require_ranges
    from vitos.engine import SamplingConfig
    from vitos.infer import check_overlay_path, infer_one, parse_options, render
    from vitos.models import load_model
    from vitos.models.settings import SYNTHETIC_NOTE, looks_like_phantom, read_settings, resolve_settings
    from vitos.pipeline import PruneConfig

    # The model's saved settings (vitos_settings.json, vitos.models.settings) are the defaults; a flag wins.
    chosen = resolve_settings(read_settings(args.model), {
        "fusion": args.fusion, "margin": args.margin, "min_keep": args.min_keep,
        "max_new_tokens": args.max_new_tokens, "temperature": args.temperature})
    s = chosen.settings
    # Everything a user typed is checked before the model loads: values, and the overlay path.
    prune = PruneConfig(margin=s.margin, min_keep=s.min_keep, fusion=s.fusion, num_contextual=s.num_contextual)  # type: ignore[arg-type]
    sampling = SamplingConfig(max_new_tokens=s.max_new_tokens, temperature=s.temperature)
    require_ranges(prune, names={"margin": "--margin", "min_keep": "--min-keep"})
    require_ranges(sampling, names={"max_new_tokens": "--max-new-tokens", "temperature": "--temperature"})
    options = parse_options(args.options)
    if args.engine == "vllm" and args.mode == "vitos-evict":
        raise SystemExit("vitos infer: error: --mode vitos-evict evicts from the Python engine's KV cache; use "
                         "--mode vitos with --engine vllm")
    if args.boxes is not None and args.mode == "vitos-evict":
        raise SystemExit("vitos infer: error: --boxes replaces the grounding pass, which --mode vitos-evict answers "
                         "in; use --mode vitos with --boxes")
    if args.overlay:
        check_overlay_path(args.overlay, args.image, args.model)
    # After every check (a refused flag stays a one-line error), before the slow part: 20-45 s on a CPU for a 7B.
    if not args.quiet:
        print(f"loading model {args.model} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    adapter = load_model(args.model, dtype=args.dtype, device=args.device, attn_implementation=args.attn)
    engine = None
    if args.engine == "vllm":
        from vitos.vllm_engine.engine import VllmEngine

        engine = VllmEngine(args.model, dtype=args.dtype)
    if not args.quiet:
        print(f"loaded {args.model} in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    for line in [*chosen.warnings(), chosen.describe()]:  # stderr: --json output stays one JSON document
        print(line, file=sys.stderr)
    if s.synthetic and not looks_like_phantom(args.image):
        print(SYNTHETIC_NOTE.format(model=args.model), file=sys.stderr)
    result = infer_one(
        adapter,
        args.image,
        args.question,
        options=options,
        kind=args.kind,
        mode=args.mode,
        prune=prune,
        sampling=sampling,
        overlay=args.overlay,
        boxes=args.boxes,
        engine=engine,
        grounding=args.grounding,
    )
    print(render(result, args.json))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitos", description="Token-sparse medical VLM reasoning (ViToS).")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tiny-model", help="write a tiny random Qwen2.5-VL checkpoint that loads offline")
    t.add_argument("out_dir", help="folder to write the checkpoint to (new or empty; see --overwrite)")
    t.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    t.add_argument("--overwrite", action="store_true",
                   help="OUT_DIR holds a model: replace it (default: a non-empty OUT_DIR is refused)")
    t.add_argument("--family", choices=["qwen", "huatuo"], default="qwen",
                   help="qwen: Qwen2.5-VL (Lingshu-7B's family); huatuo: HuatuoGPT-Vision's original llava_qwen2 "
                        "format (default: qwen)")
    t.set_defaults(func=cmd_tiny_model)

    i = sub.add_parser("infer", help="ground -> prune -> answer for one image")
    i.add_argument("--model", required=True,
                   help="hub id or local folder, e.g. a `vitos tiny-model` output (required)")
    i.add_argument("--image", required=True, help="JPEG, PNG (8/16-bit, grayscale) or DICOM file (required)")
    i.add_argument("--question", required=True, help="the question about the image (required)")
    i.add_argument("--options", default=None,
                   help="multiple choice: 'A=text,B=text' or 'text|text|text' (default: none, not multiple choice)")
    i.add_argument("--kind", choices=["yes_no", "choice", "open"], default=None,
                   help="answer style (default: choice with --options, else open)")
    i.add_argument("--mode", choices=["vitos", "full", "vitos-evict"], default="vitos",
                   help="vitos: ground -> prune -> answer; full: answer on every visual token; vitos-evict: one "
                        "prefill, the pruned tokens evicted from the KV cache after the boxes (an approximation of "
                        "vitos, README, Benchmarks) (default: vitos)")
    i.add_argument("--json", action="store_true", help="print a JSON record (default: readable text)")
    i.add_argument("--overlay", default=None,
                   help="write a PNG with boxes and the kept-token grid to this path (default: none)")
    i.add_argument("--boxes", default=None,
                   help="use these normalised evidence boxes instead of the grounding pass, e.g. '[[0.1,0.2,0.5,0.6]]' "
                        "(default: the grounding pass's)")
    i.add_argument("--grounding", choices=["short", "full"], default="short",
                   help="short: the grounding pass stops once its boxes are written (after </box>; the sparse pass "
                        "answers); full: it also writes its own <answer>, as in training (default: short)")
    saved = "default: the model's saved setting (vitos_settings.json), else"
    i.add_argument("--margin", type=float, default=None, help=f"box dilation, normalised units ({saved} 0.0)")
    i.add_argument("--min-keep", type=int, default=None, help=f"fewest visual tokens kept per image ({saved} 1)")
    i.add_argument("--fusion", choices=["none", "merge", "contextual"], default=None,
                   help=f"how pruned tokens are folded in ({saved} merge)")
    i.add_argument("--max-new-tokens", type=int, default=None, help=f"longest completion per pass ({saved} 256)")
    i.add_argument("--temperature", type=float, default=None, help=f"0 = greedy decoding ({saved} 0.0)")
    i.add_argument("--engine", choices=["python", "vllm"], default="python",
                   help="decoder: python (vitos.engine, the reference) or vllm (Qwen2.5-VL; pip install -e '.[vllm]') "
                        "(default: python)")
    i.add_argument("--dtype", default="auto",
                   help="auto (bf16 on a GPU that supports it, else fp32), float32, bfloat16, float16 (default: auto)")
    i.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: auto)")
    i.add_argument("--attn", default="sdpa",
                   help="attention implementation: sdpa, eager, flash_attention_2 (default: sdpa)")
    i.add_argument("--quiet", action="store_true",
                   help="no progress lines on stderr (loading model ...); settings and warnings stay (default: off)")
    i.set_defaults(func=cmd_infer)
    for name, (_, _, text) in DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        _quiet_transformers()
        module, func, _ = DELEGATED[argv[0]]
        return getattr(importlib.import_module(module), func)(argv[1:])
    args = build_parser().parse_args(argv)
    _quiet_transformers()
    from vitos.config import ConfigError
    from vitos.images import ImageError
    from vitos.models import ModelLoadError

    try:
        return args.func(args)
    except (ImageError, ModelLoadError, ConfigError, ValueError, OSError, ImportError) as err:
        from vitos.config import error_line

        print(f"vitos {args.command}: error: {error_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

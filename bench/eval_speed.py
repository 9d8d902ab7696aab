"""Evaluation throughput: questions per second of `vitos eval` in every mode, on two model sizes, in one run.

    python bench/eval_speed.py                   # quick: tiny model 16 questions, 0.5B-shaped 2 questions, CPU
    python bench/eval_speed.py --full            # 64 / 16 questions, 32 new tokens, best of 2 repeats
    python bench/eval_speed.py --models tiny     # one model only
    python bench/eval_speed.py --device cuda     # on a GPU

What is timed: `vitos.eval.runner.evaluate` end to end for one mode on VQA-RAD test questions (image
loading, vision tower, grounding pass for vitos, token selection for the baselines, batched greedy answer
pass, judging, the fsync'd prediction log; each run in its own folder, so no comparison plot is drawn).
Before timing, every image is read once (a cold disk cache would slow whichever mode runs first) and one
batch warms the model up; model loading is not timed. Each mode keeps the best of `--repeats` runs (the
minimum is the least disturbed by other load). Baselines keep 25% of the visual tokens (`--ratio`).
Both models are RANDOMLY initialised, so they rarely emit EOS: every pass runs the full `max_new_tokens`
steps, and a vitos grounding pass never yields a usable box (vitos falls back to all tokens). The numbers
measure the cost of each mode's passes at the given token counts, not the speed-up a trained ViToS policy
gets from pruning. On a shared CPU machine `--threads 1` gives steadier numbers than torch's default.

Models: the tiny test checkpoint (`vitos.models.tiny`, hidden 64, 2 layers) and a random Qwen2.5-VL whose
language model has Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads, head_dim 64, MLP 4864;
the tiny vocabulary) with a 2-block vision tower. Images: VQA-RAD's own (../shared/data/vqa_rad or
--data-dir); without them, synthetic 448x448 noise images in the VQA-RAD release format.

Writes bench/results/eval_speed.json and bench/results/eval_speed.md and prints the markdown table.
Compare modes within one run (same machine, same load), not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vitos.eval.benchmarks import BENCHMARKS  # noqa: E402
from vitos.eval.runner import MODES, EvalConfig, evaluate  # noqa: E402
from vitos.models import load_model  # noqa: E402
from vitos.models.tiny import QWEN05B_SHAPE, write_tiny_model  # noqa: E402
from vitos.pipeline import load_sample_images  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "vqa_rad"


def write_qwen05b_shaped(out: Path) -> Path:
    """A random Qwen2.5-VL with Qwen2.5-0.5B's language-model shape (tokenizer/processor of the tiny model)."""
    return write_tiny_model(out, seed=0, **QWEN05B_SHAPE)


def synthetic_vqa_rad(folder: Path, n: int) -> Path:
    """n yes/no + open questions on noise images, in the VQA-RAD release layout the loader reads."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        name = f"synthetic{i}.png"
        Image.fromarray(rng.integers(0, 255, (448, 448, 3), dtype=np.uint8)).save(folder / "images" / name)
        yes_no = i % 2 == 0
        rows.append({"qid": i, "phrase_type": "test_freeform", "image_name": name,
                     "question": "Is there a lesion?" if yes_no else "Which organ is shown?",
                     "answer": "yes" if yes_no else "liver", "answer_type": "CLOSED" if yes_no else "OPEN"})
    (folder / "VQA_RAD Dataset Public.json").write_text(json.dumps(rows))
    return folder


def time_modes(adapter, model_name: str, n: int, args, data_dir: str, work: Path) -> list[dict]:
    def cfg(mode: str, out: Path, limit: int) -> EvalConfig:
        budget = {"budget_ratio": args.ratio} if mode not in ("full", "vitos") else {}
        return EvalConfig(model=model_name, benchmarks=["vqa_rad"], mode=mode, out=str(out), limit=limit,
                          data_dir=data_dir, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                          dtype="float32", device=args.device, **budget)

    # Read every image once first: a cold disk cache would otherwise slow down whichever mode runs first.
    for sample in BENCHMARKS["vqa_rad"].load(data_dir, limit=n):
        load_sample_images(sample)
    evaluate(cfg("full", work / f"{model_name}-warmup" / "run", min(n, args.batch_size)), adapter=adapter)
    rows = []
    for mode in MODES:
        times = []
        for repeat in range(args.repeats):
            # A fresh folder (nothing to resume) with no sibling run, so no comparison plot is drawn.
            out = work / f"{model_name}-{mode}-{repeat}" / "run"
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            scores = evaluate(cfg(mode, out, n), adapter=adapter)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        seconds = min(times)
        rows.append({"model": model_name, "mode": mode, "questions": n, "seconds": seconds,
                     "questions_per_s": n / seconds, "kept_token_ratio": scores["kept_token_ratio"]})
        print(f"  {model_name:>10} {mode:>9}: {n / seconds:7.2f} q/s", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="more questions and tokens (slower, steadier)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="tiny,0.5b", help="comma list of tiny and 0.5b")
    ap.add_argument("--repeats", type=int, default=None, help="runs per mode, best kept (default 1, --full 2)")
    ap.add_argument("--ratio", type=float, default=0.25, help="baseline keep ratio")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--model-dir", default=str(Path(tempfile.gettempdir()) / "vitos-bench-eval-models"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "eval_speed"))
    args = ap.parse_args()
    args.max_new_tokens = args.max_new_tokens or (32 if args.full else 8)
    args.repeats = args.repeats or (2 if args.full else 1)
    n_tiny, n_05b = (64, 16) if args.full else (16, 2)
    wanted = {m.strip() for m in args.models.split(",")}
    if not wanted or not wanted <= {"tiny", "0.5b"}:
        ap.error(f"--models takes tiny and/or 0.5b, got {args.models!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    models = Path(args.model_dir)
    tiny_dir, big_dir = models / "tiny", models / "qwen2.5-0.5b-shaped"
    if not (tiny_dir / "model.safetensors").exists():
        write_tiny_model(tiny_dir, seed=0)
    if "0.5b" in wanted and not (big_dir / "model.safetensors").exists():
        write_qwen05b_shaped(big_dir)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data_dir = args.data_dir
        if not (Path(data_dir) / "VQA_RAD Dataset Public.json").is_file():
            data_dir = str(synthetic_vqa_rad(work / "vqa_rad", max(n_tiny, n_05b)))
        rows = []
        plan = (("tiny", "tiny", tiny_dir, n_tiny), ("0.5b", "qwen2.5-0.5b-shaped", big_dir, n_05b))
        for key, name, folder, n in plan:
            if key not in wanted:
                continue
            adapter = load_model(str(folder), dtype="float32", device=args.device)
            rows += time_modes(adapter, name, n, args, data_dir, work)
            del adapter

    result = {
        "device": args.device if args.device != "cpu" else f"cpu ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads)",
        "data": "VQA-RAD test" if data_dir == args.data_dir else "synthetic VQA-RAD-format",
        "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "baseline_ratio": args.ratio,
        "repeats": args.repeats,
        "rows": rows,
    }
    lines = [
        f"device {result['device']}; {result['data']}; batch {args.batch_size}; {args.max_new_tokens} new tokens "
        f"per pass; best of {args.repeats}; baselines keep {args.ratio:.0%} of visual tokens; "
        "random weights (see the script's docstring).",
        "",
        "| model | mode | questions | q/s | vs full | kept ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        full = next(x for x in rows if x["model"] == r["model"] and x["mode"] == "full")
        lines.append(f"| {r['model']} | {r['mode']} | {r['questions']} | {r['questions_per_s']:.2f} | "
                     f"{r['questions_per_s'] / full['questions_per_s']:.2f}x | {r['kept_token_ratio']:.3f} |")
    table = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()

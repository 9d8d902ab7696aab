"""Seconds per training step and rollouts/s of `vitos train`, per model, group size and schedule.

    python bench/train_step.py                   # quick: tiny 2 steps/cell (first dropped), 0.5b 1 step/cell
    python bench/train_step.py --full            # 5 steps per cell, median of steps 2..5, 32 new tokens
    python bench/train_step.py --models tiny --threads 1     # about a minute on a CPU

Models (both random, CPU by default; `--device cuda` on a GPU):
  tiny   the test checkpoint (hidden 64, 2 layers, vision depth 2);
  0.5b   a Qwen2.5-VL whose language model has Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV
         heads, MLP 4864; tiny 790-token vocabulary) and a 2-block, 128-wide vision tower.
Cells: G in {2, 4} (G' = G, the paper's G x G tree) x schedule in {stagewise, interleaved, joint}; one
MedPhantom question (224 x 224 = 64 visual tokens) per step, LoRA r 16, max_new_tokens 16 (quick) / 32
(full), no gradient-cosine pass (it is a diagnostic; `--grad-cosine` adds it). The stagewise cells run
stage 1 (grounding update) in the timed steps. Each update is one micro-batch on tiny and G micro-batches on
0.5b (all G + G^2 rows of a joint update at once need > 20 GB of fp32 activations on a CPU).

On a 2-core CPU a 0.5b step takes minutes (quick mode: ~40 min in all), hence one step per 0.5b cell in
quick mode, where that step also pays the one-off warm-up (small next to a 0.5b step). On a GPU use --full.

Per cell: s/step, rollouts/s (grounding + sparse completions sampled per second) and the share of the step
spent in generation, scoring and the update (forward + backward + optimizer). Prints a markdown table and
writes bench/results/train_step.json. Numbers on a shared CPU are noisy (+-20%): compare cells of one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vitos.config import load_config  # noqa: E402
from vitos.rl.checkpoint import read_metrics  # noqa: E402
from vitos.rl.config import TrainConfig  # noqa: E402
from vitos.rl.trainer import train  # noqa: E402

SCHEDULES = ("stagewise", "interleaved", "joint")
GROUP_SIZES = (2, 4)


def write_model(kind: str, out: Path) -> Path:
    """The tiny checkpoint, or one with Qwen2.5-0.5B's language-model shape (vitos.models.tiny.QWEN05B_SHAPE)."""
    from vitos.models.tiny import QWEN05B_SHAPE, write_tiny_model

    return write_tiny_model(out / kind, seed=0, **(QWEN05B_SHAPE if kind != "tiny" else {}))


def run_cell(model_dir: Path, data: str, work: Path, schedule: str, g: int, steps: int, max_new: int,
             device: str, grad_cosine: bool, micro_batches: int) -> dict:
    out = work / f"run-{schedule}-{g}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(TrainConfig, None, [
        f"model.name_or_path={model_dir}", "model.dtype=auto", "model.lora=true", f"data.train_path={data}",
        "data.batch_size=1", f"rollout.group_size={g}", f"rollout.max_new_tokens={max_new}",
        f"schedule.name={schedule}", f"schedule.total_steps={steps}", f"schedule.stage1_steps={steps}",
        f"checkpoint.out_dir={out}", "checkpoint.every=0", "logging.progress=false",
        f"logging.log_grad_cosine={str(grad_cosine).lower()}", f"optim.micro_batches={micro_batches}", f"device={'cpu' if device == 'cpu' else 'auto'}",
    ])
    train(cfg)
    records = read_metrics(out / "metrics.jsonl")
    timed = records[1:] or records  # step 1 pays one-off costs (lazy init, allocator warm-up) when there are more

    def med(key: str) -> float:
        return statistics.median(r[key] for r in timed)

    step = med("time/step_s")
    return {
        "schedule": schedule, "G": g, "micro_batches": micro_batches, "steps_timed": len(timed), "s_per_step": step,
        "rollouts_per_s": med("rollouts_per_s"),
        "rollouts_per_step": g + g * g * (2 if schedule == "interleaved" else 1),
        "generation_share": med("time/generation_s") / step, "scoring_share": med("time/scoring_s") / step,
        "update_share": med("time/update_s") / step,
    }


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        f"\n{meta['mode']} mode, {meta['device']}, {meta['torch_threads']} threads, 1 question/step, "
        f"max_new_tokens {meta['max_new_tokens']}, LoRA; 'steps' = timed steps per cell\n",
        "| model | G | schedule | rollouts/step | micro-batches | steps | s/step | rollouts/s | generation | scoring | update |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['G']} | {r['schedule']} | {r['rollouts_per_step']} | {r['micro_batches']} | "
            f"{r['steps_timed']} | {r['s_per_step']:.3g} | {r['rollouts_per_s']:.3g} | {100 * r['generation_share']:.0f}% | "
            f"{100 * r['scoring_share']:.1f}% | {100 * r['update_share']:.0f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="5 steps per cell (median of 4) and 32 new tokens")
    ap.add_argument("--models", default="tiny,0.5b", help="comma list of tiny, 0.5b")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--grad-cosine", action="store_true", help="include the gradient-cosine diagnostic pass")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_step.json"))
    ap.add_argument("--render", metavar="JSON", help="only print the table of a saved result file")
    args = ap.parse_args()
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        print(markdown(saved["meta"], saved["cells"]))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    max_new = 32 if args.full else 16

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from vitos.data.medphantom import PhantomConfig, write_dataset

    work = Path(tempfile.mkdtemp(prefix="vitos-bench-train-"))
    data = write_dataset(PhantomConfig(seed=0, n_train=8, n_test=0), work / "data")["train"]
    rows = []
    for kind in args.models.split(","):
        model_dir = write_model(kind, work)
        steps = 5 if args.full else (2 if kind == "tiny" else 1)
        for g in GROUP_SIZES:
            for schedule in SCHEDULES:
                t0 = time.perf_counter()
                # 0.5b: one update over all G + G^2 rows at once needs > 20 GB on CPU (fp32 activations)
                micro = 1 if kind == "tiny" else g
                cell = {"model": kind, **run_cell(model_dir, data, work, schedule, g, steps, max_new, args.device,
                                                  args.grad_cosine, micro)}
                rows.append(cell)
                print(f"  {kind} G={g} {schedule}: {cell['s_per_step']:.2f} s/step ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)

    meta = {"mode": "full" if args.full else "quick", "max_new_tokens": max_new,
            "device": args.device, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "questions_per_step": 1, "lora": True,
            "grad_cosine": args.grad_cosine}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "cells": rows}, indent=1))
    print(markdown(meta, rows))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

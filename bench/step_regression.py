"""Step time of `vitos train` against an earlier revision, interleaved in one run (ratio, not absolute time).

    python bench/step_regression.py                      # against bdd49b2 (before the trainer-correctness fixes)
    python bench/step_regression.py --against HEAD~3 --reps 5 --steps 6

For each repetition, the same tiny-model cell (G = 4, G' = 4, one MedPhantom question per step, LoRA,
16 new tokens, no gradient cosine) runs once with this checkout's `src/` and once with the other
revision's (a `git worktree` in a temporary folder), alternating, each in its own one-thread process.
Per run: median `time/step_s` of steps 2..N (step 1 pays the warm-up). Reported: median over repetitions
per tree and schedule, and the ratio this / other. Also runs this tree at grpo.epochs = 2 for scale.
Writes bench/results/step_regression.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, statistics, sys, torch
torch.set_num_threads(1)
from vitos.config import load_config
from vitos.rl.checkpoint import read_metrics
from vitos.rl.config import TrainConfig
from vitos.rl.trainer import train
out, model, schedule, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
extra = sys.argv[5:]
cfg = load_config(TrainConfig, None, [
    f"model.name_or_path={model}", "model.dtype=float32", "model.lora=true", "model.lora_r=16", "model.lora_alpha=32",
    "data.train_path=medphantom:16", "data.batch_size=1", "rollout.group_size=4", "rollout.sparse_group_size=4",
    "rollout.max_new_tokens=16", f"schedule.name={schedule}", f"schedule.total_steps={steps}",
    f"schedule.stage1_steps={steps}", "logging.progress=false", "logging.log_grad_cosine=false",
    "checkpoint.every=0", f"checkpoint.out_dir={out}", "device=cpu", "optim.lr=1e-4", *extra])
train(cfg)
times = [r["time/step_s"] for r in read_metrics(f"{out}/metrics.jsonl")][1:]
print("RESULT", json.dumps(statistics.median(times)))
"""


def run(src: Path, work: Path, model: Path, schedule: str, steps: int, extra: list[str]) -> float:
    out = work / f"run-{abs(hash((str(src), schedule, tuple(extra))))}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(out), str(model), schedule, str(steps), *extra],
                          capture_output=True, text=True, env=env, check=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1]
    return float(json.loads(line.split(" ", 1)[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", default="bdd49b2", help="git revision to compare with")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--schedules", default="stagewise,joint")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from vitos.models.tiny import write_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        other = work / "other"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(other), args.against],
                       check=True, capture_output=True)
        try:
            model = write_tiny_model(work / "model", seed=0)
            rows = []
            for schedule in args.schedules.split(","):
                this, that, mu2 = [], [], []
                for _ in range(args.reps):  # interleaved: machine noise hits both trees alike
                    this.append(run(ROOT / "src", work, model, schedule, args.steps, []))
                    that.append(run(other / "src", work, model, schedule, args.steps, []))
                    mu2.append(run(ROOT / "src", work, model, schedule, args.steps, ["grpo.epochs=2"]))
                m_this, m_that, m_mu2 = (statistics.median(x) for x in (this, that, mu2))
                rows.append({"schedule": schedule, "this_s": m_this, "other_s": m_that, "ratio": m_this / m_that,
                             "mu2_ratio": m_mu2 / m_this, "this_runs": this, "other_runs": that, "mu2_runs": mu2})
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], capture_output=True)
    print(f"| schedule | this / {args.against} (mu = 1) | this mu = 2 / mu = 1 |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['schedule']} | {r['ratio']:.3f} | {r['mu2_ratio']:.3f} |")
    out = ROOT / "bench" / "results" / "step_regression.json"
    out.write_text(json.dumps({"against": args.against, "reps": args.reps, "steps": args.steps, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

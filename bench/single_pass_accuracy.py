"""Single pass (`--mode vitos-evict`) against two-pass ViToS (`--mode vitos --grounding short`): accuracy on the
demo's test split with the shipped warm start, paired (McNemar), and CPU time of both, in one run.

    python bench/single_pass_accuracy.py                 # 500 questions (DemoConfig's test split, seed 0)
    python bench/single_pass_accuracy.py --n 100

Settings: the demo's eval settings (vitos.demo.eval_settings: prune, decoding). Correct = the answer text equals
the reference (case-insensitive), the demo's own metric for MedPhantom. Writes bench/results/single_pass_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from vitos.data.medphantom import PhantomConfig, generate as make_phantoms  # noqa: E402
from vitos.demo import BUILTIN_WARM_START, DemoConfig, eval_settings  # noqa: E402
from vitos.models import load_model  # noqa: E402
from vitos.engine import SamplingConfig  # noqa: E402
from vitos.pipeline import PruneConfig, encode, load_sample_images, run  # noqa: E402
from vitos.stats import mcnemar_exact, wilson_interval  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "single_pass_accuracy.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    demo = DemoConfig()
    s = eval_settings(demo)
    prune = PruneConfig(margin=s.margin, min_keep=s.min_keep, fusion=s.fusion)  # type: ignore[arg-type]
    sampling = SamplingConfig(max_new_tokens=s.max_new_tokens)
    test = make_phantoms(PhantomConfig(**{"question_mix": dict(demo.question_mix), **demo.phantom, "seed": demo.seed,
                                          "n_train": 1, "n_test": args.n}))["test"]
    ad = load_model(str(BUILTIN_WARM_START), dtype="float32", device="cpu")
    enc = encode(ad, [load_sample_images(t) for t in test])
    correct: dict[str, list[bool]] = {"vitos": [], "vitos-evict": []}
    seconds = {k: 0.0 for k in correct}
    kept = {k: 0 for k in correct}
    for k in range(0, len(test), args.batch):
        for mode in (("vitos", "vitos-evict") if (k // args.batch) % 2 == 0 else ("vitos-evict", "vitos")):
            t0 = time.process_time()
            res = run(ad, test[k:k + args.batch], mode, prune, sampling, encoded=enc[k:k + args.batch],
                      grounding="short")
            seconds[mode] += time.process_time() - t0
            kept[mode] += sum(r.visual_tokens_kept for r in res)
            correct[mode] += [(r.answer or "").strip().lower() == t.answer.strip().lower()
                              for r, t in zip(res, test[k:k + args.batch])]
    a, b = correct["vitos-evict"], correct["vitos"]
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    out = {"n": len(test), "accuracy": {m: sum(c) / len(c) for m, c in correct.items()},
           "ci95": {m: wilson_interval(sum(c), len(c)) for m, c in correct.items()},
           "difference_evict_minus_two_pass": (sum(a) - sum(b)) / len(a), "mcnemar_p": mcnemar_exact(only_a, only_b),
           "cpu_time_ratio_evict_over_two_pass": seconds["vitos-evict"] / seconds["vitos"],
           "visual_tokens_kept_per_question": {m: kept[m] / len(test) for m in kept},
           "settings": {"model": "shipped demo warm start", "split": f"MedPhantom demo test, seed {demo.seed}",
                        "threads": 1, "command": "python bench/single_pass_accuracy.py " + " ".join(argv or sys.argv[1:])}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print("| mode | accuracy | 95 % CI | kept tokens / question |\n|---|---|---|---|")
    for m in correct:
        lo, hi = out["ci95"][m]
        print(f"| {m} | {out['accuracy'][m]:.1%} | {lo:.1%}-{hi:.1%} | {out['visual_tokens_kept_per_question'][m]:.1f} |")
    print(f"evict - two-pass: {out['difference_evict_minus_two_pass'] * 100:+.1f} pts (McNemar p = {out['mcnemar_p']:.3g}); "
          f"CPU time ratio {out['cpu_time_ratio_evict_over_two_pass']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

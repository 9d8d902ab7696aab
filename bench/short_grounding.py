"""Short vs full grounding pass: tokens generated and wall time of the ViToS path, in one interleaved run.

    python bench/short_grounding.py                  # the shipped warm start, 100 MedPhantom (PHANTOM_V3) test questions
    python bench/short_grounding.py --n 20 --device cuda

What is timed: `vitos.pipeline.run(..., mode="vitos", grounding=G)` per batch (grounding pass, pruning, sparse
answer pass; greedy), for G = full and G = short on the same batch one after the other, the order alternating
from batch to batch so that drift in the machine's load falls on both alike. The vision tower runs once per
batch, untimed, and both paths reuse its output. Reported per path: mean grounding tokens generated per question
and total wall time, their short / full ratios, and whether every question's boxes, kept-token count and answer
text are identical (they must be, under greedy decoding: the short grounding output is a prefix of the full one).

Model: the demo warm start shipped in the package (src/vitos/assets/demo_warm_start), a tiny trained model
that writes `<think>...</think><box>...</box><answer>...</answer>`. Writes bench/results/short_grounding.json
and prints a markdown table. On a shared CPU machine `--threads 1` (the default) gives steadier numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vitos.data.medphantom import PHANTOM_V3, PhantomConfig, generate as make_phantoms  # noqa: E402
from vitos.engine import SamplingConfig  # noqa: E402
from vitos.models import load_model  # noqa: E402
from vitos.pipeline import encode, load_sample_images, run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WARM_START = REPO / "src" / "vitos" / "assets" / "demo_warm_start"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100, help="MedPhantom test questions (default: 100)")
    p.add_argument("--batch-size", type=int, default=8, help="questions per run() call (default: 8)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="limit per pass (default: 256)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "short_grounding.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    adapter = load_model(str(WARM_START), dtype="float32", device=args.device)
    test = make_phantoms(PhantomConfig(**PHANTOM_V3, seed=0, n_train=0, n_test=args.n))["test"]
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    seconds = {"full": 0.0, "short": 0.0}
    grounding_ms = {"full": 0.0, "short": 0.0}
    answers: dict[str, list] = {"full": [], "short": []}
    run(adapter, test[:2], "vitos", sampling=sampling, grounding="full")  # warm-up, untimed
    for k, start in enumerate(range(0, len(test), args.batch_size)):
        batch = test[start : start + args.batch_size]
        encoded = encode(adapter, [load_sample_images(s) for s in batch])
        for g in (("full", "short") if k % 2 == 0 else ("short", "full")):
            t0 = time.perf_counter()
            out = run(adapter, batch, "vitos", sampling=sampling, encoded=encoded, grounding=g)  # type: ignore[arg-type]
            seconds[g] += time.perf_counter() - t0
            grounding_ms[g] += out[0].timings_ms["grounding"]
            answers[g] += out
    same = [f.boxes == s.boxes and f.visual_tokens_kept == s.visual_tokens_kept and f.answer_text == s.answer_text
            and f.grounding_text.startswith(s.grounding_text) for f, s in zip(answers["full"], answers["short"])]
    rows = {}
    for g in ("full", "short"):
        toks = [a.grounding_tokens for a in answers[g]]
        rows[g] = {"mean_grounding_tokens": sum(toks) / len(toks), "grounding_s": grounding_ms[g] / 1e3,
                   "vitos_path_s": seconds[g], "closed_box_tag": sum("</box>" in a.grounding_text for a in answers[g])}
    ratio = {k: rows["short"][k] / rows["full"][k] for k in ("mean_grounding_tokens", "grounding_s", "vitos_path_s")}
    result = {"n": len(test), "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
              "device": args.device, "threads": args.threads, "machine": platform.platform(),
              "rows": rows, "ratio_short_over_full": ratio, "identical": all(same), "n_identical": sum(same)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"| grounding | mean grounding tokens | grounding pass (s) | ViToS path (s) | closed </box> |")
    print("|---|---|---|---|---|")
    for g in ("full", "short"):
        r = rows[g]
        print(f"| {g} | {r['mean_grounding_tokens']:.1f} | {r['grounding_s']:.2f} | {r['vitos_path_s']:.2f} "
              f"| {r['closed_box_tag']}/{len(test)} |")
    print(f"| short / full | {ratio['mean_grounding_tokens']:.2f} | {ratio['grounding_s']:.2f} | "
          f"{ratio['vitos_path_s']:.2f} | |")
    print(f"identical boxes, kept tokens and answers: {sum(same)}/{len(same)}; wrote {args.out}")
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Rollouts/s of the vLLM engine against the Python decode loop, in one run (needs vLLM: the `.ci/vllm` venv).

    python bench/vllm_rollouts.py --json bench/results/vllm_rollouts.json          # 0.5B shape, CPU (minutes)
    python bench/vllm_rollouts.py --shape 7b --device cuda --dtype bfloat16 ...    # bench/gpu_vllm_7b.sh (GPU)

One RL step's rollout tree for `--questions` questions: G grounding rollouts per question on all visual tokens,
then G x G' sparse rollouts per question on a random `--keep` share of them (temperature 1, `--tokens` new
tokens each; the adapter has no EOS id on the Python side and vLLM ignores EOS, so every row runs to its
length). Both engines get the same rows and positions (vitos.vllm_engine.requests) and `--threads` CPU threads
(torch threads for the Python loop; vLLM's OpenMP threads, VLLM_CPU_OMP_THREADS_BIND). Timed: wall clock of
each engine's whole tree, rounds interleaved (python, vllm, python, ...), medians; the first vLLM call
(graph warm-up) is not timed. Model: random weights; `05b` = Qwen2.5-0.5B's language-model shape with the real
151,936-token vocabulary (vitos.models.tiny.QWEN05B_SHAPE), `7b` = Qwen2.5-7B's (hidden 3584, 28 layers, 28
heads, 4 KV heads, MLP 18944), `tiny` = the test model. Ratios from one run only (a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "tiny": dict(hidden=128, heads=4, kv_heads=2, vocab_size=768),
    "05b": dict(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vision_hidden=128, vocab_size=151936),
    "7b": dict(hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944, vision_hidden=128, vocab_size=152064),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="05b", help="model shape (default: 05b)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    ap.add_argument("--dtype", default="float32", help="float32 or bfloat16 (default: float32)")
    ap.add_argument("--questions", type=int, default=2, help="questions per step (default: 2)")
    ap.add_argument("--group", type=int, default=4, help="G = G' (default: 4)")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per rollout (default: 32)")
    ap.add_argument("--keep", type=float, default=0.3, help="sparse rollouts' share of visual tokens (default: 0.3)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per engine (default: 3)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per engine (default: 1)")
    ap.add_argument("--model-dir", default=None, help="where the random model is written (default: a temp folder)")
    ap.add_argument("--json", default=None, help="write the result here (default: print only)")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0" if args.threads == 1 else f"0-{args.threads - 1}")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    import numpy as np
    import torch
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from vitos.engine import SamplingConfig, generate
    from vitos.models import load_model
    from vitos.models.tiny import write_tiny_model
    from vitos.pruning.sparse import assemble
    from vitos.vllm_engine.engine import VllmEngine
    from vitos.vllm_engine.requests import build_request

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    model_dir = Path(args.model_dir or Path(tempfile.gettempdir()) / f"vitos-vllm-bench-{args.shape}")
    if not (model_dir / "config.json").exists():
        write_tiny_model(model_dir, seed=0, **SHAPES[args.shape])
    ad = load_model(str(model_dir), dtype=args.dtype, device=args.device)
    engine = VllmEngine(str(model_dir), dtype=args.dtype, max_model_len=1024, seed=0,
                        gpu_memory_utilization=0.5 if args.device != "cpu" else 0.3)

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (448, 448, 3), dtype=np.uint8)) for _ in range(args.questions)]
    enc = [ad.encode_images([im]) for im in images]
    prompts = [ad.build_prompt(f"Is there a lesion in region {i}? Think, box it, answer.", e) for i, e in enumerate(enc)]
    keeps = []
    for e in enc:
        n = e[0].num_tokens
        m = torch.zeros(n, dtype=torch.bool)
        m[torch.randperm(n, generator=torch.Generator().manual_seed(1))[: max(1, round(args.keep * n))]] = True
        keeps.append([m.view(*e[0].grid_hw)])
    g = args.group
    sampling = SamplingConfig(max_new_tokens=args.tokens, temperature=1.0)
    gen = torch.Generator(args.device).manual_seed(0)

    class NoEos:  # the Python side: no EOS id, every row runs to its length (vLLM: ignore_eos via no stop ids)
        def __init__(self, a):
            self._a = a

        def __getattr__(self, k):
            return getattr(self._a, k)

        eos_token_ids: list[int] = []

    noeos = NoEos(ad)

    def python_tree() -> int:
        full = [assemble(ad, p, e, None) for p, e in zip(prompts, enc)]
        a = generate(noeos, full, sampling, gen, samples_per_seq=g)  # G per question, one prefill each
        sparse = [assemble(ad, p, e, k) for p, e, k in zip(prompts, enc, keeps) for _ in range(g)]
        b = generate(noeos, sparse, sampling, gen, samples_per_seq=g)  # G' per grounding rollout
        return sum(t.numel() for t in a.token_ids + b.token_ids)

    def vllm_tree() -> int:
        full = [build_request(ad, p, e, None) for p, e in zip(prompts, enc)]
        a = engine.generate(full, sampling, n=g, seed=0, suppressed_token_ids=ad.suppressed_token_ids, ignore_eos=True)
        sparse = [build_request(ad, p, e, k) for p, e, k in zip(prompts, enc, keeps) for _ in range(g)]
        b = engine.generate(sparse, sampling, n=g, seed=1, suppressed_token_ids=ad.suppressed_token_ids, ignore_eos=True)
        return sum(t.numel() for t in a.token_ids + b.token_ids)

    vllm_tree()  # warm-up (not timed)
    times: dict[str, list[float]] = {"python": [], "vllm": []}
    tokens: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, fn in (("python", python_tree), ("vllm", vllm_tree)):
            if args.device != "cpu":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            tokens[name] = fn()
            if args.device != "cpu":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    n_rollouts = args.questions * g + args.questions * g * g
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {
        "shape": args.shape, "device": args.device, "dtype": args.dtype, "threads": args.threads,
        "questions": args.questions, "group": g, "tokens_per_rollout": args.tokens, "keep": args.keep,
        "rollouts_per_tree": n_rollouts, "generated_tokens": tokens,
        "seconds_median": med, "seconds_all": times,
        "rollouts_per_s": {k: n_rollouts / v for k, v in med.items()},
        "vllm_speedup": med["python"] / med["vllm"],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s)", "date": time.strftime("%Y-%m-%d"),
        "command": "python bench/vllm_rollouts.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print("| engine | s / tree (median) | rollouts/s | generated tokens |")
    print("|---|---|---|---|")
    for k in ("python", "vllm"):
        print(f"| {k} | {med[k]:.2f} | {res['rollouts_per_s'][k]:.2f} | {tokens[k]} |")
    print(f"\nvLLM / Python rollouts/s = {res['vllm_speedup']:.2f}x ({args.shape}, {args.device}, {args.dtype}, "
          f"{args.threads} thread(s), {n_rollouts} rollouts of {args.tokens} tokens per tree)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

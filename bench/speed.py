"""Does token sparsity pay? The speed issue's five ratios in one interleaved run (0.5B shape, real vocabulary).

    python bench/speed.py --json bench/results/speed.json          # the full run: about 15-20 min on one CPU thread
    python bench/speed.py --quick --json /tmp/speed.json           # shorter answers, fewer repeats (minutes)

Model: a random Qwen2.5-VL whose language model has Qwen2.5-0.5B's shape (vitos.models.tiny.QWEN05B_SHAPE:
hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864) and Qwen2.5's real 151,936-token vocabulary (the LM
head is 136 M parameters: at this size it is a good part of every decode step), a 2-block vision tower, one
448 x 448 image = 256 visual tokens. Random weights never write EOS or a box, so every pass is forced to its
length: the answer writes N tokens; the grounding pass writes `--grounding-tokens` (32: a short think and one
box, what the demo's warm start writes) before its boxes would close. Keep masks are random subsets of
exactly round(keep x 256) tokens (speed does not depend on which).

Timed (CPU time of this process, one torch thread; every case once per round, rounds interleaved, medians):
    full          vision tower + prefill of all tokens + N answer tokens                 (one full-token pass)
    two_pass      vision tower + grounding prefill + G tokens + sparse prefill (keep) + N tokens
                  (`--mode vitos --grounding short`: vitos.pipeline's two passes)
    single_pass   vision tower + grounding prefill + G tokens + evict + N tokens (`--mode vitos-evict`:
                  vitos.single_pass's steps, with the first decode's length fixed)
    prefill k     the language model's prefill alone at keep k, against the token-count ideal L_full / L_k
    rollouts      one question's G grounding rollouts and G x G' sparse rollouts (temperature 1, M tokens
                  each): today's engine (every prompt prefilled per sample, a DynamicCache grown by
                  concatenation, finished rows kept) vs the default one (one prefill per prompt, a
                  preallocated cache, finished rows leave) — here no row finishes early, so the gain is the
                  prefill and the cache writes only
    log-probs     peak memory of the chunked log-probs / the full log-softmax at 4 x 512 tokens and the real
                  vocabulary: bench/logprob_memory.py in a subprocess (it needs its own allocator settings)

Writes the JSON (`two_pass_ratio`, `single_pass_ratio`, `rollout_speedup`, `logprob_memory_ratio`,
`prefill_fraction_of_ideal_077`, `prefill_fraction_of_ideal_05`, per-N ratios, the settings) and prints a
markdown table. Ratios come from one run; the machine is shared, so never quote an absolute time alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from vitos.engine import SamplingConfig, append, decode, evict, generate, prefill  # noqa: E402
from vitos.models import load_model  # noqa: E402
from vitos.models.tiny import QWEN05B_SHAPE, write_tiny_model  # noqa: E402
from vitos.pruning.sparse import assemble  # noqa: E402

QWEN_VOCAB = 151936


class NoEos:
    """The adapter with no EOS id: a random model's passes run to their forced length."""

    def __init__(self, adapter):
        self._a = adapter

    def __getattr__(self, name):
        return getattr(self._a, name)

    @property
    def eos_token_ids(self):
        return []


def random_keep(n_vis: int, keep: float, hw: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """(H, W) bool mask keeping exactly round(keep * n_vis) random tokens."""
    k = max(1, round(keep * n_vis))
    mask = torch.zeros(n_vis, dtype=torch.bool)
    mask[torch.randperm(n_vis, generator=torch.Generator().manual_seed(seed))[:k]] = True
    return mask.view(*hw)


def cpu_time(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "speed.json"), help="where the JSON goes")
    ap.add_argument("--answer-tokens", default="128,256", help="N: answer lengths (the first is the headline)")
    ap.add_argument("--grounding-tokens", type=int, default=32, help="G: tokens of a short grounding pass")
    ap.add_argument("--keep", type=float, default=0.5, help="visual tokens kept by ViToS in the pass ratios")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the pass cases")
    ap.add_argument("--rollout-group", type=int, default=8, help="G = G' of the rollout case")
    ap.add_argument("--rollout-tokens", type=int, default=16, help="M: tokens per rollout")
    ap.add_argument("--rollout-repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="N = 32,64, 2 rounds, 1 rollout round (minutes)")
    ap.add_argument("--model-dir", default=str(Path(tempfile.gettempdir()) / "vitos-speed-05b"))
    args = ap.parse_args(argv)
    if args.quick:
        args.answer_tokens, args.repeats, args.rollout_repeats = "32,64", 2, 1
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    t_start = time.perf_counter()

    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").exists():
        write_tiny_model(model_dir, seed=0, vocab_size=QWEN_VOCAB, **QWEN05B_SHAPE)
    ad = NoEos(load_model(str(model_dir), dtype="float32", device="cpu"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (448, 448, 3), dtype=np.uint8))
    question = "Is there a lesion in the left kidney? Think step by step, then answer yes or no."
    enc = ad.encode_images([image])
    prompt = ad.build_prompt(question, enc)
    (start, end), hw = prompt.image_spans[0], enc[0].grid_hw
    n_vis = end - start
    full_seq = assemble(ad, prompt, enc, None)
    keep = random_keep(n_vis, args.keep, hw)
    g_len = args.grounding_tokens
    ns = [int(n) for n in args.answer_tokens.split(",")]

    def full_pass(n: int):
        e = ad.encode_images([image])
        generate(ad, [assemble(ad, prompt, e, None)], SamplingConfig(max_new_tokens=n))

    def two_pass(n: int):
        e = ad.encode_images([image])
        generate(ad, [assemble(ad, prompt, e, None)], SamplingConfig(max_new_tokens=g_len))  # grounding (short)
        generate(ad, [assemble(ad, prompt, e, [keep], fusion="merge")], SamplingConfig(max_new_tokens=n))

    def single_pass(n: int):
        e = ad.encode_images([image])
        seq = assemble(ad, prompt, e, None)
        state = prefill(ad, [seq], g_len + n, kv_cache="dynamic")
        ground = decode(ad, state, SamplingConfig(max_new_tokens=g_len), compact=False)
        cols = torch.ones(1, state.mask.shape[1], dtype=torch.bool)
        cols[0, start:end] = keep.view(-1)
        cols[0, seq.length + g_len - 1 :] = False  # the last grounding token is fed again below
        evict(state, cols)
        last = ground.token_ids[0][-1:]
        pos = (state.nxt[0] + g_len - 1).view(1, 1, 1).expand(3, 1, 1)
        append(ad, state, ad.embed_tokens(last)[None], pos, torch.ones(1, 1, dtype=torch.long))
        state.nxt = state.nxt + g_len
        decode(ad, state, SamplingConfig(max_new_tokens=n))

    # ---- whole passes, interleaved: every round runs every case once, the order rotating
    cases = [(f"{name} N={n}", fn, n) for n in ns for name, fn in (("full", full_pass), ("two_pass", two_pass),
                                                                 ("single_pass", single_pass))]
    full_pass(4)  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for r in range(args.repeats):
        order = cases[r % len(cases):] + cases[: r % len(cases)]
        for name, fn, n in order:
            times[name].append(cpu_time(lambda: fn(n)))
            print(f"[speed] round {r + 1}/{args.repeats} {name}: {times[name][-1]:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_n = {n: {"two_pass_ratio": med[f"two_pass N={n}"] / med[f"full N={n}"],
                 "single_pass_ratio": med[f"single_pass N={n}"] / med[f"full N={n}"]} for n in ns}

    # ---- prefill alone against the token-count ideal
    seqs = {k: (full_seq if k == 1.0 else assemble(ad, prompt, enc, [random_keep(n_vis, k, hw)], fusion="merge"))
            for k in (1.0, 0.77, 0.5)}
    from vitos.pruning.sparse import collate

    batches = {k: collate([s]) for k, s in seqs.items()}
    pre: dict[float, list[float]] = {k: [] for k in seqs}
    for _ in range(5):
        for k, (e, p, m) in batches.items():
            pre[k].append(cpu_time(lambda: ad.lm_forward(e, p, m, logits_to_keep=1)))
    pre_med = {k: statistics.median(v) for k, v in pre.items()}
    frac = {k: (pre_med[1.0] / pre_med[k]) / (seqs[1.0].length / seqs[k].length) for k in (0.77, 0.5)}

    # ---- rollouts: one question's G grounding and G x G' sparse rollouts, old engine vs default
    small = Image.fromarray(np.random.default_rng(1).integers(0, 255, (224, 224, 3), dtype=np.uint8))
    senc = ad.encode_images([small])
    sprompt = ad.build_prompt(question, senc)
    s_hw = senc[0].grid_hw
    g = args.rollout_group
    hot = SamplingConfig(max_new_tokens=args.rollout_tokens, temperature=1.0)
    ground_seq = assemble(ad, sprompt, senc, None)
    sparse_seqs = [assemble(ad, sprompt, senc, [random_keep(s_hw[0] * s_hw[1], 0.5, s_hw, seed=i)]) for i in range(g)]

    def rollouts_old():
        gen = torch.Generator().manual_seed(0)
        generate(ad, [ground_seq] * g, hot, gen, kv_cache="dynamic", compact=False)
        generate(ad, [s for s in sparse_seqs for _ in range(g)], hot, gen, kv_cache="dynamic", compact=False)

    def rollouts_new():
        gen = torch.Generator().manual_seed(0)
        generate(ad, [ground_seq], hot, gen, samples_per_seq=g)
        generate(ad, sparse_seqs, hot, gen, samples_per_seq=g)

    roll: dict[str, list[float]] = {"old": [], "new": []}
    for r in range(args.rollout_repeats):
        for name, fn in ((("old", rollouts_old), ("new", rollouts_new)) if r % 2 == 0 else
                         (("new", rollouts_new), ("old", rollouts_old))):
            roll[name].append(cpu_time(fn))
            print(f"[speed] rollouts round {r + 1}/{args.rollout_repeats} {name}: {roll[name][-1]:.1f} s", flush=True)
    n_roll = g + g * g
    roll_med = {k: statistics.median(v) for k, v in roll.items()}

    # ---- log-prob memory (its own process: it sets the allocator's thresholds before torch starts)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "logprob.json"
        subprocess.run([sys.executable, str(REPO / "bench" / "logprob_memory.py"), "--out", str(out), "--repeats", "1"],
                       check=True, stdout=subprocess.DEVNULL)
        logprob = json.loads(out.read_text())

    n0 = ns[0]
    result = {
        "two_pass_ratio": per_n[n0]["two_pass_ratio"],
        "single_pass_ratio": per_n[n0]["single_pass_ratio"],
        "rollout_speedup": roll_med["old"] / roll_med["new"],
        "logprob_memory_ratio": logprob["logprob_memory_ratio"],
        "prefill_fraction_of_ideal_077": frac[0.77],
        "prefill_fraction_of_ideal_05": frac[0.5],
        "per_answer_length": {str(n): v for n, v in per_n.items()},
        "rollouts_per_s": {k: n_roll / v for k, v in roll_med.items()},
        "median_cpu_s": med, "prefill_median_cpu_s": {str(k): v for k, v in pre_med.items()},
        "settings": {"model": "random Qwen2.5-VL, Qwen2.5-0.5B language-model shape", "vocab": QWEN_VOCAB,
                     "image": "448x448", "visual_tokens": n_vis, "prompt_tokens": full_seq.length,
                     "keep": args.keep, "grounding_tokens": g_len, "answer_tokens": ns, "repeats": args.repeats,
                     "rollout": {"group": g, "tokens": args.rollout_tokens, "image": "224x224",
                                 "rollouts": n_roll, "repeats": args.rollout_repeats},
                     "logprob": {k: logprob[k] for k in ("rows", "tokens", "vocab", "grad")},
                     "threads": torch.get_num_threads(), "clock": "process CPU time", "torch": torch.__version__,
                     "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"),
                     "command": "python bench/speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                     "seconds": time.perf_counter() - t_start},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    targets = [("two_pass_ratio", "<= 1.1", result["two_pass_ratio"] <= 1.1),
               ("single_pass_ratio", "<= 0.9", result["single_pass_ratio"] <= 0.9),
               ("rollout_speedup", ">= 2", result["rollout_speedup"] >= 2),
               ("logprob_memory_ratio", "<= 0.25", result["logprob_memory_ratio"] <= 0.25),
               ("prefill_fraction_of_ideal_077", ">= 0.95", frac[0.77] >= 0.95),
               ("prefill_fraction_of_ideal_05", ">= 0.95", frac[0.5] >= 0.95)]
    print(f"\n0.5B shape, V = {QWEN_VOCAB:,}, {n_vis} visual tokens, keep {args.keep}, G = {g_len}, one thread, "
          f"medians of {args.repeats} interleaved rounds\n")
    print("| ratio | measured | target | met |\n|---|---|---|---|")
    for k, want, ok in targets:
        print(f"| {k} (N = {n0})" if "pass" in k else f"| {k}", f"| {result[k]:.3f} | {want} | {'yes' if ok else 'no'} |")
    for n in ns[1:]:
        print(f"| two_pass_ratio (N = {n}) | {per_n[n]['two_pass_ratio']:.3f} | | |")
        print(f"| single_pass_ratio (N = {n}) | {per_n[n]['single_pass_ratio']:.3f} | | |")
    print(f"\nwrote {args.json} ({result['settings']['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

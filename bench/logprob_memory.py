"""Peak memory and time of completion log-probs: the full (B, T, V) log-softmax against the chunked one.

    python bench/logprob_memory.py                        # 4 x 512 tokens, V = 151,936, D = 64, no grad, CPU
    python bench/logprob_memory.py --grad --tokens 256    # forward + backward (the update), CPU
    python bench/logprob_memory.py --device cuda --hidden 3584 --dtype bfloat16 --grad   # 7B-shaped head on a GPU

What runs: the head (V, D) and the final hidden states (rows, tokens, D) of a Qwen2.5-sized vocabulary
(151,936), suppressed ids (the 5 vision tokens' worth: the last 8 ids) and temperature --temperature, as the
RL policy scores completions. `full` is the leanest full pass (fp32 logits and their log-softmax: 2 copies
of rows x tokens x V x 4 B); `--full old` is the pre-chunking `completion_logprobs` computation (3 copies:
logits, suppressed copy, tempered copy / log-softmax). `chunk N` is `vitos.engine.chunked_token_logprobs` with
N positions per head call (recomputed in the backward under --grad). The hidden dimension barely matters for
memory (the logits dominate), so the CPU default is 64 to keep the run short.

Memory: on CUDA, torch.cuda.max_memory_allocated over the case. On CPU, peak RSS over the case (Linux):
/proc/self/clear_refs resets the peak (VmHWM) before each case and the bench re-executes itself with
MALLOC_MMAP_THRESHOLD_=65536, so every tensor is mmapped and a freed one leaves the RSS at once (the peak is
the live tensors', not the allocator's cache). Time: median of --repeats after the measured run.
CPU budget: 4 x 512 without grad peaks at ~2.4 GB (`--full old`: ~3.7 GB); with --grad the full pass at
4 x 512 needs ~5 GB, hence --tokens 256 there.

Writes bench/results/logprob_memory.json (with `logprob_memory_ratio` = peak of the default chunk / peak of
the full pass) and prints a markdown table. Quote ratios from one run, not absolutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vitos.engine import LOGPROB_CHUNK, chunked_token_logprobs, token_logprobs  # noqa: E402

QWEN_VOCAB = 151936


def _rss() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak bytes above the level at entry: torch.cuda's allocator on CUDA, VmHWM (peak RSS) on CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := current RSS
            self.base = _rss()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            status = open("/proc/self/status").read()
            self.peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) * 1024 - self.base


def full_logprobs(head: torch.nn.Module, h: torch.Tensor, tgt: torch.Tensor, temperature: float,
                  suppressed: torch.Tensor, old: bool) -> torch.Tensor:
    """(B, T, D), (B, T) -> (B, T) through the full (B, T, V) fp32 logits."""
    if old:  # the pre-chunking completion_logprobs
        logits = head(h).float().index_fill(-1, suppressed, float("-inf"))  # (B, T, V)
        return token_logprobs(logits, temperature).gather(-1, tgt[..., None]).squeeze(-1)
    logits = head(h).float()  # (B, T, V)
    if temperature != 1.0:
        logits = logits.div_(temperature)
    logits.index_fill_(-1, suppressed, float("-inf"))
    return torch.log_softmax(logits, -1).gather(-1, tgt[..., None]).squeeze(-1)


def run_case(fn: Callable[[], torch.Tensor], grad: bool, head: torch.nn.Module, h: torch.Tensor, device: torch.device,
             repeats: int) -> tuple[int, float]:
    """(peak bytes of one run, median ms of `repeats` further runs); forward (+ backward when grad)."""

    def once() -> None:
        with torch.set_grad_enabled(grad):
            lp = fn()
            if grad:
                lp.sum().backward()
        head.weight.grad = None
        h.grad = None

    with PeakMemory(device) as mem:
        once()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        once()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return mem.peak, statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=512, help="completion tokens per row")
    ap.add_argument("--vocab", type=int, default=QWEN_VOCAB)
    ap.add_argument("--hidden", type=int, default=64, help="D of the head (memory is dominated by the logits)")
    ap.add_argument("--dtype", default="float32", help="head / hidden dtype: float32 or bfloat16")
    ap.add_argument("--chunks", default=f"{LOGPROB_CHUNK},128", help="chunk sizes; the first is the headline")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--grad", action="store_true", help="forward + backward (the update) instead of forward only")
    ap.add_argument("--full", choices=["lean", "old"], default="lean", help="which full pass to compare against")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "logprob_memory.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        if not sys.platform.startswith("linux"):
            raise SystemExit("CPU peak memory is read from /proc (Linux); run with --device cuda elsewhere")
        if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":  # freed tensors must leave the RSS at once
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
            os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    chunks = [int(c) for c in args.chunks.split(",")]

    torch.manual_seed(0)
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False, device=device, dtype=dtype)  # (V, D)
    h = torch.randn(args.rows, args.tokens, args.hidden, device=device, dtype=dtype, requires_grad=args.grad)  # (B, T, D)
    tgt = torch.randint(0, args.vocab - 8, (args.rows, args.tokens), device=device)  # (B, T)
    suppressed_ids = list(range(args.vocab - 8, args.vocab))
    suppressed = torch.tensor(suppressed_ids, device=device)

    cases: list[tuple[str, int | None, Callable[[], torch.Tensor]]] = [
        (f"full ({args.full})", None, lambda: full_logprobs(head, h, tgt, args.temperature, suppressed, args.full == "old"))]
    for c in chunks:
        cases.append((f"chunk {c}", c, lambda c=c: chunked_token_logprobs(h, head, tgt, args.temperature, suppressed_ids, c)))
    ref = full_logprobs(head, h.detach(), tgt, args.temperature, suppressed, False)
    rows = []
    for name, chunk, fn in cases:
        with torch.no_grad():
            err = (fn() - ref).abs().max().item() if chunk is not None else 0.0
        peak, ms = run_case(fn, args.grad, head, h, device, args.repeats)
        rows.append({"path": name, "chunk": chunk, "peak_mb": peak / 2**20, "ms": ms, "max_abs_diff": err})
    full_peak = rows[0]["peak_mb"]
    for r in rows:
        r["memory_ratio"] = r["peak_mb"] / full_peak
        r["time_ratio"] = r["ms"] / rows[0]["ms"]

    result = {"device": args.device, "dtype": args.dtype, "rows": args.rows, "tokens": args.tokens,
              "vocab": args.vocab, "hidden": args.hidden, "grad": args.grad, "temperature": args.temperature,
              "full": args.full, "threads": torch.get_num_threads(), "default_chunk": LOGPROB_CHUNK,
              "logprob_memory_ratio": rows[1]["memory_ratio"], "cases": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    mode = "forward + backward" if args.grad else "forward (no grad)"
    print(f"{args.rows} x {args.tokens} tokens, V = {args.vocab:,}, D = {args.hidden}, {args.dtype} on {args.device}, "
          f"{mode}; median of {args.repeats}")
    print("| path | peak MiB | ms | memory ratio | time ratio | max abs diff |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['peak_mb']:.1f} | {r['ms']:.0f} | {r['memory_ratio']:.3f} | {r['time_ratio']:.2f} | "
              f"{r['max_abs_diff']:.1e} |")
    print(f"logprob_memory_ratio (chunk {chunks[0]} / full): {result['logprob_memory_ratio']:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Prefill latency and peak memory against the visual-token keep ratio, beside the token-count ideal.

    python bench/prune_speed.py                     # Qwen2.5-0.5B-shaped random LM + small vision tower, CPU
    python bench/prune_speed.py --tiny --repeats 3  # the tiny test model (seconds)
    python bench/prune_speed.py --device cuda       # on a GPU: peak memory from torch.cuda

Model: a random Qwen2.5-VL whose language model has Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads,
2 KV heads, MLP 4864) and a 2-block, 128-wide vision tower; one 448x448 image = 256 visual tokens. For each keep ratio
we prune a random subset of exactly round(ratio * 256) tokens (speed does not depend on which), assemble the
sequence, and time the prefill (median of --repeats). `ideal` = full sequence length / pruned length, the
speedup if prefill cost were linear in tokens. Memory: CUDA peak allocation on GPU; on CPU the peak rise of
malloc'd bytes during the prefill (glibc mallinfo2, polled every millisecond; coarse, indicative only).

It also runs the two-stage `vitos` pipeline once and counts vision-tower calls: the grounding and the
sparse pass share one encoding, so the count equals 1 per batch of images.

Writes bench/results/prune_speed.json and prints a markdown table. Quote ratios from one run, not absolutes.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vitos.engine import SamplingConfig  # noqa: E402
from vitos.models import load_model  # noqa: E402
from vitos.models.tiny import QWEN05B_SHAPE, write_tiny_model  # noqa: E402
from vitos.pipeline import run  # noqa: E402
from vitos.pruning.sparse import assemble, collate  # noqa: E402
from vitos.data.sample import Sample  # noqa: E402


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


class PeakHeap:
    """Peak growth of bytes allocated by malloc (heap + mmap'd blocks, glibc `mallinfo2`) while the block
    runs, polled every millisecond from a thread. CPU tensors are malloc'd, so this tracks activations and
    the KV cache; coarse (1 ms polling), but unlike RSS it sees memory that the allocator reuses."""

    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallinfo2.restype = _MallInfo2

    def _now(self) -> int:
        info = self._libc.mallinfo2()
        return info.uordblks + info.hblkhd

    def __enter__(self):
        self.base = self.peak = self._now()
        self._stop = False
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self):
        while not self._stop:
            self.peak = max(self.peak, self._now())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def build_model(tiny: bool, out: Path) -> Path:
    if tiny:
        return write_tiny_model(out, seed=0)
    return write_tiny_model(out, seed=0, **QWEN05B_SHAPE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="use the tiny test model instead of the 0.5B-shaped one")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ratios", default="1.0,0.77,0.5,0.25")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "prune_speed.json"))
    ap.add_argument("--model-dir", default="/tmp/vitos-bench-prune-model")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    torch.set_grad_enabled(False)

    model_dir = Path(args.model_dir + ("-tiny" if args.tiny else "-05b"))
    if not (model_dir / "model.safetensors").exists():
        build_model(args.tiny, model_dir)
    # 0.5B-shaped: vocabulary is the tiny one (the embedding table's size does not change prefill cost much).
    ad = load_model(str(model_dir), dtype="float32", device=args.device)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (448, 448, 3), dtype=np.uint8))
    enc = ad.encode_images([image])
    prompt = ad.build_prompt("Is there a lesion in the left kidney? Think step by step, then answer yes or no.", enc)
    h, w = enc[0].grid_hw
    n_vis = h * w
    n_text = prompt.input_ids.numel() - n_vis
    ratios = [float(r) for r in args.ratios.split(",")]
    cases = []
    for ratio in ratios:
        k = max(1, round(ratio * n_vis))
        keep = torch.zeros(n_vis, dtype=torch.bool)
        keep[torch.randperm(n_vis, generator=torch.Generator().manual_seed(0))[:k]] = True
        seq = assemble(ad, prompt, enc, [keep.view(h, w)], fusion="merge")
        cases.append((ratio, k, seq, collate([seq])))
        ad.lm_forward(*cases[-1][3], logits_to_keep=1)  # warm-up
    times = {ratio: [] for ratio in ratios}
    peaks = {ratio: 0.0 for ratio in ratios}
    # Round-robin over the ratios, so load from other processes hits every ratio alike.
    for _ in range(args.repeats):
        for ratio, _, _, (embeds, pos, mask) in cases:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            with PeakHeap() as mem:
                ad.lm_forward(embeds, pos, mask, logits_to_keep=1)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
            times[ratio].append((time.perf_counter() - t0) * 1e3)
            peak = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else mem.delta_mb
            peaks[ratio] = max(peaks[ratio], peak)
    base_ms = statistics.median(times[ratios[0]])
    rows = []
    for ratio, k, seq, _ in cases:
        ms = statistics.median(times[ratio])
        rows.append({"keep_ratio": ratio, "visual_tokens": k, "seq_len": seq.length, "prefill_ms": ms,
                     "speedup": base_ms / ms, "ideal_speedup": cases[0][2].length / seq.length, "peak_mb": peaks[ratio]})

    calls = []
    handle = ad.model.model.visual.register_forward_hook(lambda m, i, o: calls.append(1))
    sample = Sample(id="b", images=[image], question="Is there a lesion?", answer="yes", kind="yes_no")
    res = run(ad, [sample], mode="vitos", sampling=SamplingConfig(max_new_tokens=8), images=[[image]])[0]
    handle.remove()

    result = {"model": "tiny" if args.tiny else "qwen2.5-0.5B-shaped", "device": args.device, "image": "448x448",
              "text_tokens": n_text, "visual_tokens": n_vis, "rows": rows,
              "two_stage": {"vision_tower_calls": len(calls), "timings_ms": res.timings_ms}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"model {result['model']} on {args.device}; {n_text} text + {n_vis} visual tokens; median of {args.repeats}")
    print("| keep | visual | seq len | prefill ms | speedup | ideal | speedup/ideal | peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['keep_ratio']:.2f} | {r['visual_tokens']} | {r['seq_len']} | {r['prefill_ms']:.1f} | "
              f"{r['speedup']:.2f} | {r['ideal_speedup']:.2f} | {r['speedup'] / r['ideal_speedup']:.2f} | {r['peak_mb']:.1f} |")
    print(f"two-stage vitos: {len(calls)} vision-tower call(s) for 1 image; stage ms: "
          + ", ".join(f"{k} {v:.0f}" for k, v in res.timings_ms.items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

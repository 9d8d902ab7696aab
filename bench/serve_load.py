"""`vitos serve` under load on the loopback: N concurrent clients for a bounded time, no lost or mixed-up answer.

    python bench/serve_load.py --json bench/results/serve_load.json            # shipped demo model, 8 clients, 30 s
    python bench/serve_load.py --clients 16 --seconds 60 --model runs/demo/rl/final

The server runs in this process (`vitos.serve.start_server`, the Python engine, greedy decoding) on the
shipped MedPhantom warm start (or --model). Every client loops over a pool of distinct MedPhantom questions
and images for `--seconds`; each reply is compared with the same request answered alone before the load
(answer text, grounding text, kept tokens): a mismatch, an error status or a lost reply is counted and
printed. Reported: requests, errors, mismatches, throughput (requests/s), latency percentiles (p50/p90/p99)
and the batch sizes the server formed, next to the one-at-a-time baseline (clients = 1) measured in the
same run, so the batching gain is a ratio of one run.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path


def _body(image, question: str, kind: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return json.dumps({"model": "vitos", "vitos": {"kind": kind}, "messages": [{"role": "user", "content": [
        {"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": url}}]}]}).encode()


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _load(url: str, pool: list[tuple[bytes, tuple]], clients: int, seconds: float) -> dict:
    lat: list[float] = []
    errors, mismatches, lock = [], [], threading.Lock()
    stop = time.perf_counter() + seconds

    def client(c: int) -> None:
        k = c
        while time.perf_counter() < stop:
            body, want = pool[k % len(pool)]
            t0 = time.perf_counter()
            status, reply = _post(url, body)
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                if status != 200:
                    errors.append((status, reply.get("error", {}).get("message")))
                else:
                    v = reply["vitos"]
                    if (v["answer_text"], v["grounding_text"], v["visual_tokens_kept"]) != want:
                        mismatches.append(k % len(pool))
            k += clients

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [lat[0]] * 99
    return {"clients": clients, "requests": len(lat), "errors": len(errors), "error_examples": errors[:3],
            "mismatches": len(mismatches), "seconds": wall, "requests_per_s": len(lat) / wall,
            "latency_s": {"p50": q[49], "p90": q[89], "p99": q[98], "max": max(lat)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="builtin", help="model folder, or builtin = the shipped demo warm start (default)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    ap.add_argument("--seconds", type=float, default=30.0, help="load duration per phase (default: 30)")
    ap.add_argument("--pool", type=int, default=24, help="distinct requests the clients cycle through (default: 24)")
    ap.add_argument("--max-batch-size", type=int, default=8, help="server batch limit (default: 8)")
    ap.add_argument("--json", default=None, help="write the result here (default: print only)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import torch

    from vitos.data.medphantom import PhantomConfig, generate
    from vitos.demo.config import resolve_warm_start
    from vitos.engine import SamplingConfig
    from vitos.models import load_model
    from vitos.models.settings import read_settings, resolve_settings
    from vitos.pipeline import PruneConfig
    from vitos.serve import ServeConfig, start_server
    from vitos.serve_protocol import parse_chat_request

    torch.set_num_threads(1)
    model = str(resolve_warm_start("builtin")) if args.model == "builtin" else args.model
    ad = load_model(model, dtype="float32", device="cpu")
    s = resolve_settings(read_settings(model), {}).settings
    prune = PruneConfig(margin=s.margin, min_keep=s.min_keep, fusion=s.fusion, num_contextual=s.num_contextual)  # type: ignore[arg-type]
    sampling = SamplingConfig(max_new_tokens=s.max_new_tokens, temperature=0.0)
    qs = generate(PhantomConfig(seed=11, n_train=0, n_test=args.pool))["test"]
    srv = start_server(ad, ServeConfig(model="vitos", port=0, max_batch_size=args.max_batch_size, max_wait_ms=20),
                       prune=prune, sampling=sampling)
    try:
        pool = []
        for q in qs:  # the answer of each request alone: what every reply under load must equal
            body = _body(q.images[0], q.question, q.kind)  # MedPhantom samples hold PIL images
            a = srv.service.answer([parse_chat_request(body)])[0]
            pool.append((body, (a.answer_text, a.grounding_text, a.visual_tokens_kept)))
        single = _load(srv.url, pool, 1, args.seconds)
        n1 = len(srv.batcher.batch_sizes)
        loaded = _load(srv.url, pool, args.clients, args.seconds)
        sizes = Counter(srv.batcher.batch_sizes[n1:])
    finally:
        srv.close()
    res = {"model": args.model, "engine": "python", "one_client": single, "loaded": loaded,
           "batch_sizes": dict(sorted(sizes.items())), "throughput_ratio": loaded["requests_per_s"] / single["requests_per_s"],
           "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), 1 torch thread", "date": time.strftime("%Y-%m-%d"),
           "command": "python bench/serve_load.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print("| clients | requests | errors | mismatches | req/s | p50 s | p90 s | p99 s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in (single, loaded):
        lt = r["latency_s"]
        print(f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['mismatches']} | {r['requests_per_s']:.2f} | "
              f"{lt['p50']:.2f} | {lt['p90']:.2f} | {lt['p99']:.2f} |")
    print(f"\nthroughput {args.clients} clients / 1 client = {res['throughput_ratio']:.2f}x; batch sizes {res['batch_sizes']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0 if loaded["errors"] == 0 and loaded["mismatches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

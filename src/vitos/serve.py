"""`vitos serve`: an OpenAI-compatible HTTP server that runs ground -> prune -> answer.

    vitos serve --model runs/demo/rl/final --port 8000                 # Python engine (CPU or GPU)
    vitos serve --model lingshu-medical-mllm/Lingshu-7B --engine vllm  # vLLM engine (pip install -e ".[vllm]")
    curl -s localhost:8000/v1/chat/completions -d @request.json        # request format: vitos.serve_protocol

Endpoints: POST /v1/chat/completions (one image + one question per request), GET /v1/models, GET /health.

Concurrency: HTTP threads only parse and wait; one worker thread (`Batcher`) owns the model. It takes every
request that arrived within `max_wait_ms` of the first (up to `max_batch_size`), groups them by sampling
settings and answers each group with ONE `vitos.pipeline.run` call (one batched grounding pass, one
batched answer pass). Greedy answers do not depend on the batch a request lands in (tests/test_serve.py
checks each concurrent reply against the same request run alone). A failure inside a batch answers that
batch's requests with a 500 naming the error; the server keeps serving. Bad input never reaches the
model: a 4xx with the reason (vitos.serve_protocol).

Built on the standard library (http.server, threading): no web framework to install or pin.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from vitos.serve_protocol import ChatRequest, Limits, RequestError, completion_body, error_body, parse_chat_request


@dataclass
class ServeConfig:
    """What `vitos serve` runs and how it batches."""

    model: str = ""
    """Model folder or hub id (its vitos_settings.json gives the pruning and decoding defaults)."""
    host: str = "127.0.0.1"
    """Interface to listen on (0.0.0.0 exposes the server to the network: put it behind your own auth)."""
    port: int = 8000
    """TCP port (0 = any free port; the chosen one is printed)."""
    engine: str = "python"
    """python (vitos.engine, the reference) or vllm (vitos.vllm_engine; Qwen2.5-VL models, the extra)."""
    mode: str = "vitos"
    """vitos (ground -> prune -> answer) or full (all tokens, one pass)."""
    grounding: str = "short"
    """short (the grounding pass stops after its boxes) or full (it writes its own answer too)."""
    max_batch_size: int = 8
    """Most requests answered by one batched pipeline call."""
    max_wait_ms: float = 20.0
    """How long the worker waits for more requests after the first one of a batch."""
    timeout_s: float = 300.0
    """A request not answered within this is a 504 (the work continues; its result is dropped)."""
    limits: Limits = field(default_factory=Limits)
    """Per-request limits (body, image bytes and pixels, max_tokens)."""


class Batcher:
    """One worker thread that answers queued requests in batches: `submit(item) -> Future`.

    `run_batch(items) -> results` (same order) is called with items of equal `key(item)` only, at most
    `max_batch_size` of them. `batch_sizes` records every call's size (for tests and the load bench)."""

    def __init__(self, run_batch: Callable[[list[Any]], list[Any]], key: Callable[[Any], Any],
                 max_batch_size: int = 8, max_wait_ms: float = 20.0):
        self.run_batch, self.key = run_batch, key
        self.max_batch_size, self.max_wait = max(1, max_batch_size), max_wait_ms / 1e3
        self.batch_sizes: list[int] = []
        self._q: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vitos-batcher", daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> Future:
        fut: Future = Future()
        self._q.put((item, fut))
        return fut

    def close(self) -> None:
        self._stop.set()
        self._q.put(None)
        self._thread.join(timeout=5)

    def _take(self) -> list[tuple[Any, Future]]:
        first = self._q.get()
        if first is None:
            return []
        got = [first]
        deadline = time.monotonic() + self.max_wait
        while len(got) < self.max_batch_size:
            left = deadline - time.monotonic()
            try:
                nxt = self._q.get(timeout=max(0.0, left)) if left > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._q.put(None)
                break
            got.append(nxt)
        return got

    def _loop(self) -> None:
        while not self._stop.is_set():
            got = self._take()
            groups: dict[Any, list[tuple[Any, Future]]] = {}
            for item, fut in got:
                groups.setdefault(self.key(item), []).append((item, fut))
            for members in groups.values():
                self.batch_sizes.append(len(members))
                try:
                    results = self.run_batch([m[0] for m in members])
                    if len(results) != len(members):
                        raise RuntimeError(f"run_batch returned {len(results)} results for {len(members)} requests")
                except Exception as err:  # answered as a 500 per request; the worker lives on
                    for _, fut in members:
                        fut.set_exception(err)
                    continue
                for (_, fut), res in zip(members, results):
                    fut.set_result(res)


class Service:
    """The model side: `answer(requests) -> [Answer]` with one batched pipeline call."""

    def __init__(self, adapter: Any, prune: Any, sampling: Any, mode: str = "vitos", grounding: str = "short",
                 engine: Any = None, name: str = "vitos"):
        self.adapter, self.prune, self.sampling, self.mode = adapter, prune, sampling, mode
        self.grounding, self.engine, self.name = grounding, engine, name

    def answer(self, reqs: list[ChatRequest]) -> list[Any]:
        from dataclasses import replace

        from vitos.data.sample import Sample
        from vitos.pipeline import run

        first = reqs[0]  # the batch shares its sampling key
        sampling = replace(self.sampling, temperature=first.temperature,
                           max_new_tokens=first.max_tokens or self.sampling.max_new_tokens)
        samples = [Sample(id=f"req-{i}", images=[r.image], question=r.question, answer="", kind=r.kind,  # type: ignore[arg-type]
                          options=r.options) for i, r in enumerate(reqs)]
        return run(self.adapter, samples, mode=self.mode, prune=self.prune, sampling=sampling,  # type: ignore[arg-type]
                   images=[[r.image] for r in reqs], grounding=self.grounding, engine=self.engine)  # type: ignore[arg-type]


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a listen backlog for many concurrent clients: the standard library's 5 drops
    connection attempts beyond it under load, and each dropped SYN costs the client a 1-second retransmit."""

    request_queue_size = 128
    daemon_threads = True


class Server:
    """The HTTP front: parses, submits to the Batcher, waits, replies. `start()` serves in a thread."""

    def __init__(self, service: Service, cfg: ServeConfig):
        self.service, self.cfg = service, cfg
        self.batcher = Batcher(service.answer, ChatRequest.sampling_key, cfg.max_batch_size, cfg.max_wait_ms)
        self.httpd = _HTTPServer((cfg.host, cfg.port), _handler(self))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "Server":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="vitos-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:  # shutdown() waits for serve_forever: it would hang on a server never started
            self.httpd.shutdown()
        self.httpd.server_close()
        self.batcher.close()

    def complete(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """One POST body -> (status, JSON reply)."""
        try:
            req = parse_chat_request(body, self.cfg.limits)
        except RequestError as err:
            return err.status, error_body(err)
        fut = self.batcher.submit(req)
        try:
            ans = fut.result(timeout=self.cfg.timeout_s)
        except TimeoutError:
            return 504, error_body(RequestError(504, f"no answer within {self.cfg.timeout_s:g} s (timeout_s); the server "
                                                     "is overloaded or the request too long", "timeout"))
        except Exception as err:  # noqa: BLE001  the batch failed: say why, keep serving
            return 500, error_body(RequestError(500, f"the model failed on this batch: {type(err).__name__}: {err}",
                                                "server_error"))
        return 200, completion_body(f"chatcmpl-{uuid.uuid4().hex[:24]}", req.model or self.service.name, ans)


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet: one line per request is the caller's choice
            return

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                self._reply(200, {"status": "ok", "batches": len(server.batcher.batch_sizes)})
            elif self.path == "/v1/models":
                self._reply(200, {"object": "list", "data": [{"id": server.service.name, "object": "model",
                                                              "owned_by": "vitos"}]})
            else:
                self._reply(404, error_body(RequestError(404, f"no such endpoint {self.path!r}; use POST "
                                                              "/v1/chat/completions, GET /v1/models or GET /health")))

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/v1/chat/completions":
                self._reply(404, error_body(RequestError(404, f"no such endpoint {self.path!r}; POST to /v1/chat/completions")))
                return
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self._reply(411, error_body(RequestError(411, "send a Content-Length header with the JSON body")))
                return
            n = int(length)
            if n > server.cfg.limits.max_body_bytes:
                self.close_connection = True  # the body is not read
                self._reply(413, error_body(RequestError(413, f"request body is {n:,} bytes, over the server's limit of "
                                                              f"{server.cfg.limits.max_body_bytes:,}; send a smaller image",
                                                         "request_too_large")))
                return
            status, body = server.complete(self.rfile.read(n))
            self._reply(status, body)

        def do_PUT(self) -> None:  # noqa: N802
            self._reply(405, error_body(RequestError(405, "method not allowed; POST /v1/chat/completions")))

        do_DELETE = do_PATCH = do_PUT

    return Handler


def start_server(adapter: Any, cfg: ServeConfig, prune: Any = None, sampling: Any = None, engine: Any = None) -> Server:
    """A running server (in background threads) for a loaded model: for tests, notebooks and the load bench."""
    from vitos.engine import SamplingConfig
    from vitos.pipeline import PruneConfig

    service = Service(adapter, prune or PruneConfig(), sampling or SamplingConfig(), cfg.mode, cfg.grounding, engine,
                      name=cfg.model or "vitos")
    return Server(service, cfg).start()


def main_serve(argv: list[str] | None = None) -> int:
    """`vitos serve --model M [--engine python|vllm] [--host H] [--port P] ...`."""
    from vitos.models.settings import read_settings, resolve_settings

    d = ServeConfig()
    p = argparse.ArgumentParser(prog="vitos serve", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model folder or hub id (required)")
    p.add_argument("--host", default=d.host, help=f"interface to listen on (default: {d.host}; 0.0.0.0 = the network)")
    p.add_argument("--port", type=int, default=d.port, help=f"TCP port, 0 = any free one (default: {d.port})")
    p.add_argument("--engine", choices=["python", "vllm"], default=d.engine, help=f"decode engine (default: {d.engine})")
    p.add_argument("--mode", choices=["vitos", "full"], default=d.mode, help=f"vitos or all tokens (default: {d.mode})")
    p.add_argument("--grounding", choices=["short", "full"], default=d.grounding,
                   help=f"grounding pass stops after its boxes (short) or answers too (default: {d.grounding})")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                   help=f"most requests per batched call (default: {d.max_batch_size})")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help=f"wait for more requests after the first of a batch (default: {d.max_wait_ms:g})")
    p.add_argument("--timeout-s", type=float, default=d.timeout_s, help=f"per-request timeout (default: {d.timeout_s:g})")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (default: auto)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: auto)")
    args = p.parse_args(argv)
    if args.max_batch_size < 1 or args.max_wait_ms < 0 or args.timeout_s <= 0:
        print("vitos serve: error: --max-batch-size >= 1, --max-wait-ms >= 0 and --timeout-s > 0", file=sys.stderr)
        return 2
    cfg = ServeConfig(args.model, args.host, args.port, args.engine, args.mode, args.grounding, args.max_batch_size,
                      args.max_wait_ms, args.timeout_s)
    from vitos.engine import SamplingConfig
    from vitos.models import ModelLoadError, load_model
    from vitos.pipeline import PruneConfig

    s = resolve_settings(read_settings(args.model), {}).settings
    prune = PruneConfig(margin=s.margin, min_keep=s.min_keep, fusion=s.fusion, num_contextual=s.num_contextual)  # type: ignore[arg-type]
    sampling = SamplingConfig(max_new_tokens=s.max_new_tokens, temperature=s.temperature)
    print(f"loading model {args.model} ...", file=sys.stderr, flush=True)
    try:
        adapter = load_model(args.model, dtype=args.dtype, device=args.device)
        engine = None
        if args.engine == "vllm":
            from vitos.vllm_engine.engine import VllmEngine

            engine = VllmEngine(args.model, dtype=args.dtype)
    except (ModelLoadError, ValueError, OSError, ImportError) as err:
        print(f"vitos serve: error: {err}", file=sys.stderr)
        return 2
    try:
        server = Server(Service(adapter, prune, sampling, cfg.mode, cfg.grounding, engine, name=args.model), cfg)
    except OSError as err:
        print(f"vitos serve: error: cannot listen on {cfg.host}:{cfg.port} ({err}); choose another --port", file=sys.stderr)
        return 2
    print(f"vitos serve: {args.model} ({args.engine} engine, mode {cfg.mode}) on {server.url}/v1/chat/completions",
          file=sys.stderr, flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main_serve(sys.argv[1:]))

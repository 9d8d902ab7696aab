"""`vitos serve`: the protocol's refusals on hand-written bodies, the batcher, and the server on the loopback.

The concurrency test is the one that would notice a mixed-up batch: 8 clients with different images and
questions at once; every reply must equal the same request answered alone (greedy decoding). Planted check
(done once): reversing a batch's results makes it fail.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import random_image
from vitos.serve_protocol import Limits, RequestError, parse_chat_request

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _png(seed: int = 0, w: int = 84, h: int = 84) -> str:
    buf = io.BytesIO()
    random_image(w, h, seed=seed).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _body(question="Is there a lesion?", url=None, **extra) -> dict:
    content = [{"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": url or _png()}}]
    return {"model": "vitos", "messages": [{"role": "user", "content": content}], **extra}


def _raw(d) -> bytes:
    return json.dumps(d).encode()


# --------------------------------------------------------------------------------------------- protocol
def test_a_valid_request_parses_with_its_vitos_fields():
    req = parse_chat_request(_raw(_body("Which organ?", max_tokens=7, temperature=0,
                                        vitos={"options": {"A": "liver", "B": "spleen"}})))
    assert (req.question, req.kind, req.options, req.max_tokens) == ("Which organ?", "choice", {"A": "liver", "B": "spleen"}, 7)
    assert req.image.mode == "RGB" and req.image.size == (84, 84)


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not JSON"),
    (_raw([1, 2]), 400, "JSON object"),
    (_raw({"model": "x"}), 400, "missing field `messages`"),
    (_raw({"messages": [{"role": "system", "content": "hi"}]}), 400, "role 'user'"),
    (_raw({"messages": [{"role": "user", "content": "what is this?"}]}), 400, "plain string has no image"),
    (_raw({"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}]}), 400, "one image_url part"),
    (_raw(_body(url="https://example.org/a.png")), 400, "fetches nothing"),
    (_raw(_body(url="data:image/png;base64,@@@@")), 400, "base64"),
    (_raw(_body(url="data:image/png;base64," + base64.b64encode(b"<html>oops</html>").decode())), 400, "not a recognised image"),
    (_raw(_body(question="   ")), 400, "non-empty text part"),
    (_raw(_body(vitos={"kind": "essay"})), 400, "vitos.kind"),
    (_raw(_body(max_tokens=0)), 400, "max_tokens"),
    (_raw(_body(temperature="hot")), 400, "temperature"),
    (_raw(_body(stream=True)), 400, "stream"),
])
def test_bad_requests_are_refused_with_the_reason(body, status, words):
    with pytest.raises(RequestError, match=words) as err:
        parse_chat_request(body)
    assert err.value.status == status


def test_oversized_bodies_and_images_are_413():
    with pytest.raises(RequestError) as err:
        parse_chat_request(_raw(_body()), Limits(max_body_bytes=100))
    assert err.value.status == 413
    with pytest.raises(RequestError, match="max_pixels") as err:
        parse_chat_request(_raw(_body(url=_png(w=200, h=200))), Limits(max_pixels=10_000))
    assert err.value.status == 413


# --------------------------------------------------------------------------------------------- batcher
def test_batcher_groups_by_key_keeps_order_and_isolates_failures():
    from vitos.serve import Batcher

    calls = []

    def run(items):
        calls.append(list(items))
        if any(i == "boom" for i in items):
            raise RuntimeError("bad batch")
        return [i.upper() for i in items]

    gate = threading.Event()
    b = Batcher(lambda items: (gate.wait(5), run(items))[1], key=len, max_batch_size=8, max_wait_ms=200)
    futs = [b.submit(x) for x in ("ab", "cd", "xyz", "boom", "ef")]
    gate.set()
    assert [f.result(5) for f in (futs[0], futs[1], futs[2], futs[4])] == ["AB", "CD", "XYZ", "EF"]
    with pytest.raises(RuntimeError, match="bad batch"):
        futs[3].result(5)
    assert sorted(map(sorted, calls)) == [["ab", "cd", "ef"], ["boom"], ["xyz"]]  # grouped by length
    assert b.submit("gh").result(5) == "GH"  # still serving after a failed batch
    b.close()


# --------------------------------------------------------------------------------------------- server
@pytest.fixture(scope="module")
def server(tiny_adapter):
    from vitos.engine import SamplingConfig
    from vitos.serve import ServeConfig, start_server

    srv = start_server(tiny_adapter, ServeConfig(model="tiny", port=0, max_batch_size=8, max_wait_ms=300),
                       sampling=SamplingConfig(max_new_tokens=10))
    yield srv
    srv.close()


def _post(url, data: bytes, headers=None):
    req = urllib.request.Request(url + "/v1/chat/completions", data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_server_answers_with_boxes_and_kept_tokens(server):
    status, body = _post(server.url, _raw(_body()))
    assert status == 200 and body["object"] == "chat.completion"
    v = body["vitos"]
    assert 0 < v["visual_tokens_kept"] <= v["visual_tokens_total"] == 9  # 84 x 84 px -> 3 x 3 merged tokens
    assert isinstance(v["grounding_text"], str) and isinstance(v["answer_text"], str)
    assert body["choices"][0]["message"]["content"] in (v["answer"], v["answer_text"])
    with urllib.request.urlopen(server.url + "/v1/models", timeout=10) as r:
        assert json.loads(r.read())["data"][0]["id"] == "tiny"


def test_server_refuses_bad_input_with_4xx_and_keeps_serving(server):
    assert _post(server.url, b"{broken")[0] == 400
    status, body = _post(server.url, _raw(_body(url="data:image/png;base64," + base64.b64encode(b"garbage").decode())))
    assert status == 400 and "not a recognised image" in body["error"]["message"]
    import http.client  # an oversized body is refused from its Content-Length, before it is read

    host, port = server.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Length", str(server.cfg.limits.max_body_bytes + 1))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and "over the server's limit" in json.loads(r.read())["error"]["message"]
    conn.close()
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.url + "/nope", timeout=10)
    assert err.value.code == 404
    assert _post(server.url, _raw(_body()))[0] == 200


def test_concurrent_clients_get_their_own_answers(server):
    """8 different requests at once land in shared batches; each reply equals the request answered alone."""
    bodies = [_body(f"Is there a lesion in region {i}?", url=_png(seed=i, w=84 + 28 * (i % 3))) for i in range(8)]
    alone = []
    for b in bodies:
        req = parse_chat_request(_raw(b))
        a = server.service.answer([req])[0]
        alone.append((a.answer_text, a.grounding_text, a.visual_tokens_kept))
    n_batches = len(server.batcher.batch_sizes)
    replies = [None] * len(bodies)

    def client(i):
        replies[i] = _post(server.url, _raw(bodies[i]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    sizes = server.batcher.batch_sizes[n_batches:]
    assert max(sizes) > 1, sizes  # the requests really shared batches
    for (status, body), want in zip(replies, alone):
        assert status == 200
        v = body["vitos"]
        assert (v["answer_text"], v["grounding_text"], v["visual_tokens_kept"]) == want


def test_a_failing_batch_is_a_500_naming_the_error(tiny_adapter):
    from vitos.serve import Server, ServeConfig, Service

    class Broken(Service):
        def answer(self, reqs):
            raise RuntimeError("CUDA out of memory (planted)")

    srv = Server(Broken(tiny_adapter, None, None), ServeConfig(port=0)).start()
    try:
        status, body = _post(srv.url, _raw(_body()))
        assert status == 500 and "CUDA out of memory (planted)" in body["error"]["message"]
    finally:
        srv.close()


def test_the_listen_backlog_holds_a_burst_of_connections(tiny_adapter):
    """32 clients connecting while the server is busy (here: not accepting at all) all get through the TCP
    handshake. With the standard library's backlog of 5 the 7th connect hangs (planted: fails), which under
    load showed as a 1-second SYN retransmit: p99 latency 1.2 s against a p50 of 0.15 s (bench/serve_load.py)."""
    import socket

    from vitos.serve import Server, ServeConfig, Service

    srv = Server(Service(tiny_adapter, None, None), ServeConfig(port=0))  # not started: nothing calls accept()
    socks = []
    try:
        host, port = srv.httpd.server_address[:2]
        for i in range(32):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(2.0)
            socks.append(s)
            try:
                s.connect((host, port))
            except (socket.timeout, OSError) as err:
                pytest.fail(f"connection {i + 1} of 32 was not accepted into the backlog: {err!r}")
    finally:
        for s in socks:
            s.close()
        srv.close()


def test_serve_cli_refuses_bad_flags(capsys):
    from vitos.serve import main_serve

    assert main_serve(["--model", "x", "--max-batch-size", "0"]) == 2
    assert "--max-batch-size" in capsys.readouterr().err

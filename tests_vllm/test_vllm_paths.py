"""`--engine vllm` end to end: pipeline, `vitos infer`, `vitos eval`, `vitos serve` give what the Python engine
gives (greedy decoding, the position-sensitive tiny model), pruned views included (given boxes)."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import random_image
from vitos.data.sample import Sample
from vitos.engine import SamplingConfig
from vitos.pipeline import PruneConfig, run
from vitos.prompts import ParsedOutput

VQA_RAD = Path(__file__).resolve().parents[1] / "tests" / "data" / "vqa_rad"
S = SamplingConfig(max_new_tokens=16)


def _samples():
    imgs = [random_image(224, 168, seed=4), random_image(168, 224, seed=5)]
    return imgs, [Sample(id=f"s{i}", images=[im], question=f"Is there a lesion {i}?", answer="yes", kind="yes_no")
                  for i, im in enumerate(imgs)]


def _view(answers):
    return [(a.answer_text, a.grounding_text, a.boxes, a.visual_tokens_kept, a.visual_tokens_total, a.fallback)
            for a in answers]


def test_pipeline_modes_equal_the_python_engine(vllm_adapter, vllm_engine):
    imgs, samples = _samples()
    given = [ParsedOutput(None, [[0.1, 0.1, 0.6, 0.5]], [0], None, None, False),
             ParsedOutput(None, [[0.5, 0.2, 0.9, 0.9], [0.0, 0.0, 0.2, 0.2]], [0, 0], None, None, False)]
    for kw in ({"mode": "full"}, {"mode": "vitos", "grounding": "full"}, {"mode": "vitos", "grounding": "short"},
               {"mode": "vitos", "given_boxes": given}):
        ref = run(vllm_adapter, samples, prune=PruneConfig(fusion="merge"), sampling=S, images=[[i] for i in imgs], **kw)
        got = run(vllm_adapter, samples, prune=PruneConfig(fusion="merge"), sampling=S, images=[[i] for i in imgs],
                  engine=vllm_engine, **kw)
        assert _view(got) == _view(ref), kw
    assert got[0].visual_tokens_kept < got[0].visual_tokens_total  # the given boxes really pruned


def _png(tmp_path):
    path = tmp_path / "scan.png"
    random_image(224, 168, seed=6).save(path)
    return path


def test_infer_cli_with_the_vllm_engine(vllm_model_dir, tmp_path, capsys):
    from vitos.cli import main

    args = ["infer", "--model", vllm_model_dir, "--image", str(_png(tmp_path)), "--question", "Where is it?",
            "--json", "--quiet", "--dtype", "float32", "--device", "cpu", "--max-new-tokens", "12",
            "--boxes", "[[0.2, 0.2, 0.7, 0.6]]"]
    keys = ("answer_text", "boxes", "visual_tokens_kept", "visual_tokens_total")
    assert main(args) == 0
    ref = json.loads(capsys.readouterr().out)
    assert main([*args, "--engine", "vllm"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert {k: got[k] for k in keys} == {k: ref[k] for k in keys} and got["visual_tokens_kept"] < got["visual_tokens_total"]
    with pytest.raises(SystemExit, match="vitos-evict"):  # refused before any model loads
        main([*args[:-2], "--engine", "vllm", "--mode", "vitos-evict"])


def test_eval_cli_with_the_vllm_engine(vllm_model_dir, tmp_path):
    from vitos.eval.runner import main_eval

    def ev(out, *extra):
        rc = main_eval(["--model", vllm_model_dir, "--benchmarks", "vqa_rad", "--out", str(out), "--limit", "3",
                        "--data-dir", str(VQA_RAD), "--max-new-tokens", "12", "--dtype", "float32", "--device", "cpu",
                        "--quiet", *extra])
        assert rc == 0
        return [json.loads(line) for line in (out / "vqa_rad" / "predictions.jsonl").read_text().splitlines()]

    for extra in ([], ["--mode", "center", "--budget-ratio", "0.3"]):
        ref = ev(tmp_path / f"py{len(extra)}", *extra)
        got = ev(tmp_path / f"vllm{len(extra)}", *extra, "--engine", "vllm")
        keys = ("id", "raw", "visual_tokens_kept", "correct")
        assert [{k: r.get(k) for k in keys} for r in got] == [{k: r.get(k) for k in keys} for r in ref]
        assert json.loads((tmp_path / f"vllm{len(extra)}" / "scores.json").read_text())["engine"] == "vllm"


def test_serve_with_the_vllm_engine(vllm_adapter, vllm_engine):
    from vitos.serve import ServeConfig, start_server
    from vitos.serve_protocol import parse_chat_request

    buf = io.BytesIO()
    random_image(168, 140, seed=7).save(buf, format="PNG")
    body = json.dumps({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Is there a lesion?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}}]}]}).encode()
    srv = start_server(vllm_adapter, ServeConfig(model="tiny", port=0), sampling=S, engine=vllm_engine)
    try:
        req = urllib.request.Request(srv.url + "/v1/chat/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                reply = json.loads(r.read())
        except urllib.error.HTTPError as err:
            raise AssertionError(err.read().decode()) from None
        alone = run(vllm_adapter, [Sample("x", [], "Is there a lesion?", "", "open")], sampling=S, grounding="short",
                    images=[[parse_chat_request(body).image]])[0]  # the Python engine
        assert reply["vitos"]["answer_text"] == alone.answer_text
        assert reply["vitos"]["visual_tokens_kept"] == alone.visual_tokens_kept
    finally:
        srv.close()

"""`vitos eval` protocol options, `--protocol medevalkit`, skipped rows and intervals in the reports, and the
LLM judge (both styles) against a local fake OpenAI-compatible server bound to 127.0.0.1."""

from __future__ import annotations

import dataclasses
import http.server
import json
import logging
import shutil
import threading
from pathlib import Path

import pytest
import torch
import yaml

from vitos.eval.cli import _config_from_args, _eval_parser
from vitos.eval.judge_llm import KIT_BENCHMARKS, JudgeError, LLMJudge, LLMJudgeConfig, parse_kit_verdict
from vitos.eval.loop import PROTOCOLS, EvalConfig, apply_protocol, evaluate, make_benchmark
from vitos.eval.runner import main_eval
from vitos.stats import wilson_interval

KEY = "sk-test-protocol-key-0815"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(out, data_dir, **kw) -> EvalConfig:
    base = dict(model="tiny", benchmarks=["vqa_rad"], mode="full", out=str(out), limit=6, data_dir=str(data_dir),
                batch_size=6, max_new_tokens=4, dtype="float32", device="cpu")  # fmt: skip
    base.update(kw)
    return EvalConfig(**base)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class FakeOpenAI:
    """An OpenAI-compatible /v1/chat/completions server on 127.0.0.1 (port chosen by the OS)."""

    def __init__(self, reply: str = "yes", status: int = 200, size: int | None = None):
        self.requests: list[dict] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                content = reply if size is None else "x" * size
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        assert self.server.server_address[0] == "127.0.0.1"
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------------------------- protocol


def test_protocol_medevalkit_sets_every_setting_and_explicit_flags_win(tmp_path):
    args = _eval_parser().parse_args(["--model", "m", "--benchmarks", "vqa_rad", "--out", str(tmp_path),
                                      "--protocol", "medevalkit"])  # fmt: skip
    cfg = _config_from_args(args)
    preset = PROTOCOLS["medevalkit"]
    assert (cfg.protocol, cfg.compat, cfg.slake_languages, cfg.mmmu_images, cfg.medxpertqa_choices) == (
        "medevalkit", "medevalkit", "all", "first", "keep"
    )
    assert cfg.max_new_tokens == preset["max_new_tokens"] == 8192 and cfg.prompt_style == "medevalkit"
    assert cfg.judge.style == "medevalkit" and cfg.judge.benchmarks == list(KIT_BENCHMARKS)
    explicit = _config_from_args(_eval_parser().parse_args([
        "--model", "m", "--benchmarks", "vqa_rad", "--out", str(tmp_path), "--protocol", "medevalkit",
        "--max-new-tokens", "16", "--slake-languages", "en", "--compat", "none",
    ]))  # fmt: skip
    assert (explicit.max_new_tokens, explicit.slake_languages, explicit.compat) == (16, "en", None)
    assert explicit.mmmu_images == "first"  # the rest still from the preset
    default = _config_from_args(_eval_parser().parse_args(["--model", "m", "--benchmarks", "vqa_rad", "--out", "x"]))
    assert default == dataclasses.replace(EvalConfig(model="m", benchmarks=["vqa_rad"], out="x"))


def test_make_benchmark_follows_the_protocol_options():
    cfg = apply_protocol(EvalConfig(model="m"), "medevalkit")
    assert make_benchmark(cfg, "slake").languages is None
    assert make_benchmark(cfg, "mmmu_med").images == "first"
    assert make_benchmark(cfg, "medxpertqa").keep_choices_block is True
    ours = EvalConfig(model="m")
    assert make_benchmark(ours, "slake").languages == ("en",) and make_benchmark(ours, "mmmu_med").images == "all"


def test_medevalkit_protocol_run_records_its_settings_and_deviations(tiny_adapter, vqa_rad_dir, tmp_path):
    cfg = dataclasses.replace(apply_protocol(_cfg(tmp_path / "kit", vqa_rad_dir), "medevalkit"), max_new_tokens=4)
    scores = evaluate(cfg, adapter=tiny_adapter)
    assert scores["protocol"] == "medevalkit" and scores["compat"] == "medevalkit"
    assert scores["prompt_style"] == "medevalkit" and scores["slake_languages"] == "all"
    assert scores["protocol_deviations"] == ["max_new_tokens"]
    md = (tmp_path / "kit" / "scores.md").read_text()
    assert "Protocol medevalkit" in md and "Differs from the medevalkit preset in: max_new_tokens" in md
    assert "without --judge-url" in md


# ---------------------------------------------------------------------------------------------- skipped rows, intervals


@pytest.fixture
def vqa_rad_with_a_bad_row(vqa_rad_dir, tmp_path):
    src = Path(vqa_rad_dir)
    records = json.loads((src / "VQA_RAD Dataset Public.json").read_text(encoding="utf-8"))
    test_rows = [i for i, r in enumerate(records) if r["phrase_type"].startswith("test")]
    del records[test_rows[1]]["answer"]
    dst = tmp_path / "vqa_rad_bad"
    dst.mkdir()
    (dst / "VQA_RAD Dataset Public.json").write_text(json.dumps(records), encoding="utf-8")
    (dst / "images").symlink_to(src / "images")
    return dst, test_rows[1]


def test_bad_row_is_skipped_counted_and_listed(tiny_adapter, vqa_rad_with_a_bad_row, tmp_path):
    data, bad_index = vqa_rad_with_a_bad_row
    scores = evaluate(_cfg(tmp_path / "run", data), adapter=tiny_adapter)
    s = scores["vqa_rad"]
    assert s["n"] == 6 and s["skipped_rows"] == 1
    assert f"row {bad_index}: missing field 'answer'" in s["skipped_examples"][0]
    listed = _lines(tmp_path / "run" / "vqa_rad" / "skipped.jsonl")
    assert len(listed) == 1 and listed[0]["where"].endswith(f"row {bad_index}")
    md = (tmp_path / "run" / "scores.md").read_text()
    assert "| parse failures | skipped | kept |" in md and f"| {s['parse_failures']} | 1 |" in md


def test_scores_carry_wilson_intervals_and_the_tables_print_them(tiny_adapter, vqa_rad_dir, tmp_path):
    scores = evaluate(_cfg(tmp_path / "a", vqa_rad_dir), adapter=tiny_adapter)
    s = scores["vqa_rad"]
    low, high = wilson_interval(s["n_correct"], s["n"])
    assert s["accuracy_ci95"] == pytest.approx([100 * low, 100 * high])
    assert s["accuracy_ci95"][0] <= s["accuracy"] <= s["accuracy_ci95"][1]
    assert scores["mean_ci95"][0] <= scores["mean"] <= scores["mean_ci95"][1]
    assert len(s["questions_sha1"]) == 40
    assert sum(s["parse_failure_reasons"].values()) == s["parse_failures"]
    md = (tmp_path / "a" / "scores.md").read_text()
    assert "95 % CI" in md and f"[{s['accuracy_ci95'][0]:.1f}, {s['accuracy_ci95'][1]:.1f}]" in md
    evaluate(_cfg(tmp_path / "b", vqa_rad_dir, mode="center", budget_ratio=0.5), adapter=tiny_adapter)
    siblings = (tmp_path / "b" / "scores.md").read_text().split("## Runs beside this one")[1]
    assert f"n={s['n']}" in siblings and "[" in siblings


def test_an_older_run_folder_without_the_new_settings_resumes(tiny_adapter, vqa_rad_dir, tmp_path):
    cfg = _cfg(tmp_path / "old", vqa_rad_dir)
    evaluate(cfg, adapter=tiny_adapter)
    path = tmp_path / "old" / "config.yaml"
    old = yaml.safe_load(path.read_text())
    for key in ("slake_languages", "mmmu_images", "medxpertqa_choices", "protocol"):
        old.pop(key)
    for key in ("style", "benchmarks", "max_calls", "max_chars"):
        old["judge"].pop(key)
    path.write_text(yaml.safe_dump(old))
    evaluate(cfg, adapter=tiny_adapter)  # no "holds a run with other settings"


# ---------------------------------------------------------------------------------------------- LLM judge


def test_kit_style_judge_asks_every_open_question_of_its_benchmarks(
    tiny_adapter, vqa_rad_dir, tmp_path, monkeypatch, capsys, caplog
):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("VITOS_PROTOCOL_KEY", KEY)
    fake = FakeOpenAI(reply="<think>same meaning</think>\n<judge>0</judge>")
    try:
        judge = LLMJudgeConfig(url=fake.url, model="fake", api_key_env="VITOS_PROTOCOL_KEY", style="medevalkit",
                               benchmarks=["vqa_rad"])  # fmt: skip
        scores = evaluate(_cfg(tmp_path / "kitjudge", vqa_rad_dir, limit=10, batch_size=10, judge=judge),
                          adapter=tiny_adapter)  # fmt: skip
    finally:
        fake.close()
    records = _lines(tmp_path / "kitjudge" / "vqa_rad" / "predictions.jsonl")
    open_records = [r for r in records if r["kind"] == "open"]
    assert open_records and len(fake.requests) == len(open_records)  # exact matches included
    for req in fake.requests:
        assert req["auth"] == f"Bearer {KEY}" and req["body"]["max_tokens"] == 256
        assert len(req["body"]["messages"]) == 1 and "<judge>" in req["body"]["messages"][0]["content"]
    assert all(r["llm_verdict"] is True and r["correct"] for r in open_records)
    assert all(r["llm_verdict"] is None for r in records if r["kind"] != "open")
    assert scores["judge"] == "llm:fake (medevalkit style) on vqa_rad"
    for f in (tmp_path / "kitjudge").rglob("*"):
        if f.is_file() and f.suffix != ".png":
            assert KEY not in f.read_text()
    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err + caplog.text


def test_judge_scope_excludes_other_benchmarks(tiny_adapter, vqa_rad_dir, tmp_path):
    fake = FakeOpenAI(reply="yes")
    try:
        judge = LLMJudgeConfig(url=fake.url, benchmarks=["slake"])
        evaluate(_cfg(tmp_path / "scoped", vqa_rad_dir, judge=judge), adapter=tiny_adapter)
    finally:
        fake.close()
    assert fake.requests == []


def test_requests_are_bounded(monkeypatch):
    monkeypatch.setenv("VITOS_PROTOCOL_KEY", KEY)
    fake = FakeOpenAI(reply="yes")
    try:
        j = LLMJudge(LLMJudgeConfig(url=fake.url, api_key_env="VITOS_PROTOCOL_KEY", max_calls=2, max_chars=50))
        assert j("q" * 500, "left lung", "p" * 5000) is True
        user = fake.requests[0]["body"]["messages"][-1]["content"]
        assert "q" * 50 in user and "q" * 51 not in user and "p" * 51 not in user
        assert j("q", "r", "p") is True
        with pytest.raises(JudgeError, match="budget of 2 requests") as err:
            j("q", "r", "p")
        assert len(fake.requests) == 2 and KEY not in str(err.value)
    finally:
        fake.close()
    huge = FakeOpenAI(size=(1 << 20) + 10)
    try:
        j = LLMJudge(LLMJudgeConfig(url=huge.url, api_key_env="VITOS_PROTOCOL_KEY", max_retries=0, timeout_s=5))
        with pytest.raises(JudgeError, match="longer than") as err:
            j("q", "r", "p")
        assert KEY not in str(err.value) and KEY not in repr(j)
    finally:
        huge.close()


@pytest.mark.parametrize(
    "reply, correct",
    [("<think>ok</think>\n<judge>0</judge>", True), ("<judge>1</judge>", False), ("0", True),
     ("<judge> 0 </judge>", True), ("The answer is correct.", False), ("", False)],
)  # fmt: skip
def test_kit_verdict_parsing(reply, correct):
    assert parse_kit_verdict(reply) is correct


def test_cli_protocol_run_end_to_end(tiny_model_dir, vqa_rad_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main_eval(["--model", tiny_model_dir, "--benchmarks", "vqa_rad", "--mode", "full", "--protocol", "medevalkit",
                    "--out", str(out), "--limit", "2", "--data-dir", vqa_rad_dir, "--max-new-tokens", "2",
                    "--dtype", "float32", "--device", "cpu", "--quiet"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Protocol medevalkit" in printed and "| vqa_rad | 2 |" in printed
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["protocol"] == "medevalkit" and saved["compat"] == "medevalkit"
    shutil.rmtree(out)

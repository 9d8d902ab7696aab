"""`vitos eval` / `vitos compare`: every mode on real VQA-RAD with the tiny model, resume after a kill,
matched budgets, prompt styles, MedEvalKit compat, the LLM judge against a local stub server, and the CLI."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
from pathlib import Path
from statistics import fmean

import pytest
import torch
from PIL import Image

from vitos.answers import judge_completion, normalize_text
from vitos.eval.baselines import budget_from_ratio
from vitos.eval.benchmarks import BENCHMARKS, format_prompt
from vitos.eval.compare import main_compare
from vitos.eval.judge_llm import JudgeError, LLMJudge, LLMJudgeConfig
from vitos.eval.runner import RECORD_FIELDS, EvalConfig, EvalError, evaluate, main_eval, read_predictions
from vitos.prompts import sparse_prompt

MODES = ["full", "vitos", "random", "center", "fastv", "visionzip"]
BASELINES = ["random", "center", "fastv", "visionzip"]
LIMIT = 20


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny model's matrices are far too small for two threads to help; on a shared 2-core machine
    # a single thread is several times faster and steadier.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(out, vqa_rad_dir, mode, **kw) -> EvalConfig:
    if mode in BASELINES and "budget_from" not in kw:
        kw.setdefault("budget_ratio", 0.25)
    base = dict(model="tiny", benchmarks=["vqa_rad"], mode=mode, out=str(out), limit=LIMIT, data_dir=vqa_rad_dir,
                batch_size=10, max_new_tokens=8, dtype="float32", device="cpu")
    base.update(kw)
    return EvalConfig(**base)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def samples(vqa_rad_dir):
    return BENCHMARKS["vqa_rad"].load(vqa_rad_dir, limit=LIMIT)


@pytest.fixture(scope="module")
def runs(tiny_adapter, vqa_rad_dir, tmp_path_factory):
    """Every mode once, uninterrupted, into sibling folders of one parent: mode -> (scores, records, dir)."""
    parent = tmp_path_factory.mktemp("runs")
    out = {}
    for mode in MODES:
        cfg = _cfg(parent / mode, vqa_rad_dir, mode)
        scores = evaluate(cfg, adapter=tiny_adapter)
        out[mode] = (scores, _lines(parent / mode / "vqa_rad" / "predictions.jsonl"), parent / mode)
    return out


# ---------------------------------------------------------------------------------------------- every mode


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_writes_one_complete_record_per_sample_and_scores_them(runs, samples, mode):
    scores, records, run_dir = runs[mode]
    assert [r["id"] for r in records] == [s.id for s in samples]  # each sample once, in order
    by_id = {s.id: s for s in samples}
    for r in records:
        assert tuple(r) == RECORD_FIELDS
        assert r["mode"] == mode and r["benchmark"] == "vqa_rad"
        assert r["answer"] == by_id[r["id"]].answer
        assert r["kept_ratio"] == pytest.approx(r["visual_tokens_kept"] / r["visual_tokens_total"])
        assert r["closed"] == (by_id[r["id"]].kind == "yes_no")  # VQA-RAD: yes/no is closed, the rest open
        assert r["correct"] == judge_completion(r["raw"], by_id[r["id"]]).correct  # no LLM judge: the rules decide
    s = scores["vqa_rad"]
    assert s["n"] == LIMIT
    assert s["n_closed"] == sum(r["closed"] for r in records) and s["n_open"] == LIMIT - s["n_closed"]
    assert s["accuracy"] == pytest.approx(100 * fmean(r["correct"] for r in records))
    assert s["parse_failures"] == sum(r["parse_failure"] for r in records)
    assert s["kept_token_ratio"] == pytest.approx(fmean(r["kept_ratio"] for r in records))
    assert scores["mean"] == s["accuracy"] and scores["mode"] == mode
    on_disk = json.loads((run_dir / "scores.json").read_text())
    assert on_disk == json.loads(json.dumps(scores))
    for key in ("accuracy", "closed_accuracy", "open_accuracy", "parse_failures", "n", "kept_token_ratio"):
        assert key in on_disk["vqa_rad"]
    assert "| vqa_rad | 20 |" in (run_dir / "scores.md").read_text()
    assert "mode: " + mode in (run_dir / "config.yaml").read_text()


def test_full_keeps_every_token_and_baselines_keep_exactly_their_budget(runs):
    for r in runs["full"][1]:
        assert r["visual_tokens_kept"] == r["visual_tokens_total"] and r["budget"] is None
    for mode in BASELINES:
        for r in runs[mode][1]:
            expected = budget_from_ratio(r["visual_tokens_total"], 0.25)
            assert r["budget"] == expected
            assert r["visual_tokens_kept"] == expected, (mode, r["id"])  # visionzip: dominant + 4 contextual
    for r in runs["vitos"][1]:
        # A random tiny model writes no usable box: every sample falls back to all tokens and says why.
        if r["fallback"] is None:
            assert r["boxes"] and r["visual_tokens_kept"] <= r["visual_tokens_total"]
        else:
            assert r["visual_tokens_kept"] == r["visual_tokens_total"]
        assert r["grounding"] is not None


def test_baselines_see_different_tokens_at_the_same_budget(runs):
    # Same prompt, same budget, different tokens -> at least one answer differs between baselines.
    outputs = {mode: [r["raw"] for r in runs[mode][1]] for mode in BASELINES}
    assert len({tuple(v) for v in outputs.values()}) > 1


def test_plot_and_runs_table_cover_every_mode(runs):
    last_dir = runs[MODES[-1]][2]
    with Image.open(last_dir / "accuracy_vs_kept.png") as im:
        assert im.size[0] > 100 and im.size[1] > 100
    table = (last_dir / "scores.md").read_text()
    for mode in MODES:
        assert f"| {mode} | {mode} |" in table
    assert not (runs["full"][2] / "accuracy_vs_kept.png").exists()  # the first run had no sibling yet


# ---------------------------------------------------------------------------------------------- resume


class Killed(Exception):
    pass


def _kill_after(n_batches: int):
    seen = []

    def hook(name, done, total):
        seen.append(done)
        if len(seen) == n_batches:
            raise Killed

    return hook


def test_killed_run_resumes_to_the_uninterrupted_predictions(runs, tiny_adapter, vqa_rad_dir, tmp_path):
    cfg = _cfg(tmp_path / "vitos", vqa_rad_dir, "vitos")
    with pytest.raises(Killed):
        evaluate(cfg, adapter=tiny_adapter, on_batch=_kill_after(1))
    path = tmp_path / "vitos" / "vqa_rad" / "predictions.jsonl"
    assert len(_lines(path)) == 10
    assert not (tmp_path / "vitos" / "scores.json").exists()
    progress = []
    evaluate(cfg, adapter=tiny_adapter, on_batch=lambda n, d, t: progress.append(d))
    assert progress == [20]  # one batch: the ten finished samples were skipped
    assert _lines(path) == runs["vitos"][1]


def test_torn_last_line_and_duplicate_ids_are_repaired_on_resume(runs, tiny_adapter, vqa_rad_dir, tmp_path):
    cfg = _cfg(tmp_path / "random", vqa_rad_dir, "random")
    with pytest.raises(Killed):
        evaluate(cfg, adapter=tiny_adapter, on_batch=_kill_after(1))
    path = tmp_path / "random" / "vqa_rad" / "predictions.jsonl"
    reference = runs["random"][1]
    duplicate = dict(reference[0], prediction="a duplicate must not replace the first record")
    full_lines = "".join(json.dumps(r) + "\n" for r in [duplicate] + reference[10:13])
    torn = json.dumps(reference[13])[:40]  # a kill in the middle of writing record 13
    with open(path, "a") as f:
        f.write(full_lines + torn)
    assert set(read_predictions(path)) == {r["id"] for r in reference[:13]}
    evaluate(cfg, adapter=tiny_adapter)
    final = _lines(path)
    assert len(final) == LIMIT and len({r["id"] for r in final}) == LIMIT
    assert sorted(final, key=lambda r: r["id"]) == sorted(reference, key=lambda r: r["id"])


def test_a_broken_line_inside_the_log_is_an_error_not_a_silent_skip(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "1"}\n{"id": \n{"id": "3"}\n')
    with pytest.raises(EvalError, match="line 2"):
        read_predictions(path)


def test_resuming_with_other_settings_is_refused(runs, tiny_adapter, vqa_rad_dir):
    cfg = _cfg(runs["random"][2], vqa_rad_dir, "random", budget_ratio=0.5)
    with pytest.raises(EvalError, match="budget_ratio"):
        evaluate(cfg, adapter=tiny_adapter)


# ---------------------------------------------------------------------------------------------- budgets, prompts


def test_budget_from_a_vitos_run_is_matched_sample_by_sample(tiny_adapter, samples, vqa_rad_dir, tmp_path):
    wanted = {s.id: 5 + 7 * i for i, s in enumerate(samples[:6])}
    fake = tmp_path / "vitos_run" / "vqa_rad"
    fake.mkdir(parents=True)
    (fake / "predictions.jsonl").write_text(
        "".join(json.dumps({"id": k, "visual_tokens_kept": v}) + "\n" for k, v in wanted.items())
    )
    for mode in ("center", "visionzip"):
        cfg = _cfg(tmp_path / mode, vqa_rad_dir, mode, limit=6, budget_from=str(tmp_path / "vitos_run"))
        evaluate(cfg, adapter=tiny_adapter)
        records = _lines(tmp_path / mode / "vqa_rad" / "predictions.jsonl")
        assert {r["id"]: r["visual_tokens_kept"] for r in records} == wanted
    cfg = _cfg(tmp_path / "more", vqa_rad_dir, "center", limit=8, budget_from=str(tmp_path / "vitos_run"))
    with pytest.raises(EvalError, match="no kept count for 2"):
        evaluate(cfg, adapter=tiny_adapter)


class _PromptRecorder:
    """The adapter, recording the user text of every prompt it builds."""

    def __init__(self, adapter):
        self._adapter, self.texts = adapter, []

    def __getattr__(self, name):
        return getattr(self._adapter, name)

    def build_prompt(self, text, images, system=None):
        self.texts.append(text)
        return self._adapter.build_prompt(text, images, system)


@pytest.mark.parametrize("style", ["vitos", "benchmark"])
def test_prompt_style_picks_the_answer_prompt(tiny_adapter, samples, vqa_rad_dir, tmp_path, style):
    recorder = _PromptRecorder(tiny_adapter)
    evaluate(_cfg(tmp_path / style, vqa_rad_dir, "center", limit=3, prompt_style=style), adapter=recorder)
    if style == "benchmark":
        expected = [format_prompt(s) for s in samples[:3]]  # e.g. "...\nAnswer yes or no."
        assert expected[0].endswith("Answer yes or no.")
    else:
        expected = [sparse_prompt(s.question, s.options, s.kind, 1) for s in samples[:3]]
    assert recorder.texts == expected


def test_compat_medevalkit_judges_with_the_kit_rules(tiny_adapter, samples, vqa_rad_dir, tmp_path):
    scores = evaluate(_cfg(tmp_path / "mek", vqa_rad_dir, "full", limit=5, compat="medevalkit"), adapter=tiny_adapter)
    records = _lines(tmp_path / "mek" / "vqa_rad" / "predictions.jsonl")
    for r, s in zip(records, samples):
        kit = judge_completion(r["raw"], s, compat="medevalkit")
        assert (r["correct"], r["parse_failure"]) == (kit.correct, kit.parse_failure)
    assert scores["compat"] == "medevalkit"


# ---------------------------------------------------------------------------------------------- LLM judge


class _Stub:
    """An OpenAI-compatible chat-completions stub on 127.0.0.1 answering `reply` (or HTTP `status`)."""

    def __init__(self, reply="yes", status=200):
        self.requests: list[dict] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


KEY = "sk-test-not-a-real-key-4711"


def test_llm_judge_asks_only_about_open_questions_and_never_writes_the_key(
    tiny_adapter, samples, vqa_rad_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("VITOS_TEST_JUDGE_KEY", KEY)
    stub = _Stub(reply="Yes.")
    try:
        judge_cfg = LLMJudgeConfig(url=stub.url, model="stub-judge", api_key_env="VITOS_TEST_JUDGE_KEY")
        scores = evaluate(_cfg(tmp_path / "judged", vqa_rad_dir, "full", judge=judge_cfg), adapter=tiny_adapter)
    finally:
        stub.close()
    records = _lines(tmp_path / "judged" / "vqa_rad" / "predictions.jsonl")
    asked = [
        r for r, s in zip(records, samples)
        if s.kind == "open" and normalize_text(r["prediction"]) and not r["correct_rule"]
    ]
    assert asked, "the slice must hold open questions for this test to mean anything"
    assert len(stub.requests) == len(asked)
    for req, r in zip(stub.requests, asked):
        assert req["path"] == "/v1/chat/completions" and req["auth"] == f"Bearer {KEY}"
        assert req["body"]["model"] == "stub-judge" and req["body"]["temperature"] == 0
        user = req["body"]["messages"][-1]["content"]
        assert r["question"] in user and r["answer"] in user and r["prediction"] in user
    for r in records:
        if r in asked:
            assert r["llm_verdict"] is True and r["correct"] is True
        else:
            assert r["llm_verdict"] is None and r["correct"] == r["correct_rule"]
    assert scores["judge"] == "llm:stub-judge"
    assert scores["vqa_rad"]["open_accuracy"] == pytest.approx(
        100 * fmean(r["correct"] for r in records if not r["closed"])
    )
    for f in (tmp_path / "judged").rglob("*"):
        if f.is_file() and f.suffix != ".png":
            assert KEY not in f.read_text()
    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err


@pytest.mark.parametrize(
    "status, reply, message", [(500, "yes", "HTTP 500"), (200, "maybe", "does not start with yes or no")]
)
def test_llm_judge_failures_raise_without_leaking_the_key(monkeypatch, status, reply, message):
    monkeypatch.setenv("VITOS_TEST_JUDGE_KEY", KEY)
    stub = _Stub(reply=reply, status=status)
    try:
        j = LLMJudge(LLMJudgeConfig(url=stub.url, api_key_env="VITOS_TEST_JUDGE_KEY", max_retries=0, timeout_s=5))
        with pytest.raises(JudgeError, match=message) as err:
            j("Where?", "left lung", "right")
    finally:
        stub.close()
    assert KEY not in str(err.value) and KEY not in repr(j)


# ---------------------------------------------------------------------------------------------- CLI


def test_main_eval_runs_and_prints_the_table(tiny_model_dir, vqa_rad_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main_eval(["--model", tiny_model_dir, "--benchmarks", "vqa_rad", "--mode", "center", "--budget-ratio", "0.5",
                    "--out", str(out), "--limit", "2", "--data-dir", vqa_rad_dir, "--max-new-tokens", "2",
                    "--dtype", "float32", "--device", "cpu", "--quiet"])
    assert rc == 0
    assert "| vqa_rad | 2 |" in capsys.readouterr().out
    records = _lines(out / "vqa_rad" / "predictions.jsonl")
    assert [r["budget"] for r in records] == [budget_from_ratio(r["visual_tokens_total"], 0.5) for r in records]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--benchmarks", "vqa_radd", "--mode", "full"], "unknown benchmark"),
        (["--benchmarks", "vqa_rad", "--mode", "fastv"], "needs exactly one token budget"),
        (["--benchmarks", "vqa_rad", "--mode", "full", "--budget-ratio", "0.5"], "applies to the baselines"),
        (["--benchmarks", "vqa_rad", "--mode", "sparse"], "invalid choice"),
        (["--benchmarks", "vqa_rad", "--mode", "random", "--budget-ratio", "2"], "keep ratio"),
    ],
)
def test_main_eval_user_errors_are_one_line_and_status_2(tiny_model_dir, tmp_path, capsys, args, message):
    rc = main_eval(["--model", tiny_model_dir, "--out", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and err.count("\n") == 1


def _write_scores(folder: Path, accs: dict[str, float], mode: str, kept: float) -> None:
    folder.mkdir(parents=True)
    scores = {b: {"accuracy": a, "kept_token_ratio": kept} for b, a in accs.items()}
    scores.update(mean=fmean(accs.values()), mode=mode, kept_token_ratio=kept)
    (folder / "scores.json").write_text(json.dumps(scores))


def test_main_compare_reports_both_relative_performance_readings(tmp_path, capsys):
    _write_scores(tmp_path / "vitos", {"vqa_rad": 60.0, "slake": 80.0, "pathvqa": 10.0}, "vitos", 0.3)
    _write_scores(tmp_path / "full", {"vqa_rad": 50.0, "slake": 100.0, "pathvqa": 0.0}, "full", 1.0)
    assert main_compare([str(tmp_path / "vitos"), str(tmp_path / "full"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["per_benchmark"] == {"slake": pytest.approx(80.0), "vqa_rad": pytest.approx(120.0)}
    assert result["mean_of_ratios"] == pytest.approx(100.0)  # (120 + 80) / 2
    assert result["ratio_of_means"] == pytest.approx(100 * 70 / 75)  # pathvqa skipped: baseline 0
    assert "pathvqa" in result["skipped"]
    assert main_compare([str(tmp_path / "vitos"), str(tmp_path / "full")]) == 0
    table = capsys.readouterr().out
    assert "| vqa_rad | – | 60.0 – | 50.0 – | 120.00 – | – | – | 0.300 | 1.000 |" in table  # no n, no predictions
    assert "mean of per-benchmark ratios: 100.00%" in table
    assert main_compare([str(tmp_path / "vitos"), str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err


def test_eval_config_fields_all_have_docstrings():
    from vitos.config import field_docs

    docs = field_docs(EvalConfig)
    assert {f.name for f in dataclasses.fields(EvalConfig)} <= set(docs)


def test_engine_vllm_without_vllm_is_one_line(tiny_model_dir, vqa_rad_dir, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here; tests_vllm/ covers --engine vllm")
    rc = main_eval(["--model", tiny_model_dir, "--benchmarks", "vqa_rad", "--out", str(tmp_path / "v"), "--limit", "1",
                    "--data-dir", vqa_rad_dir, "--engine", "vllm", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and 'pip install -e ".[vllm]"' in err and "Traceback" not in err

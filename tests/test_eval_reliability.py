"""`vitos eval` / `vitos compare` under careless or unlucky use (issue 17, eval side; issue 14 items 2, 3, 5):
predictions keyed on what the model is, output folders that cannot hold inputs, kills mid-write, bad
compare inputs, damaged models as one line, the model's saved settings as defaults, progress output."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from vitos.eval.cli import Progress, _config_from_args, build_parser, main_eval
from vitos.eval.compare import main_compare
from vitos.eval.fingerprint import describe_change, model_fingerprint
from vitos.eval.loop import EvalConfig, evaluate
from vitos.eval.predictions import append_records, open_log
from vitos.models.settings import ModelSettings, write_settings
from vitos.models.tiny import write_tiny_model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _eval_args(model, out, data, *extra):
    return ["--model", str(model), "--benchmarks", "vqa_rad", "--mode", "full", "--out", str(out), "--limit", "2",
            "--data-dir", str(data), "--max-new-tokens", "2", "--dtype", "float32", "--device", "cpu",
            "--batch-size", "2", *extra]


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------- model key


def test_new_weights_under_the_same_model_path_never_reuse_the_old_predictions(tmp_path, vqa_rad_dir, capsys):
    model, out = tmp_path / "model", tmp_path / "run"
    write_tiny_model(model, seed=0)
    assert main_eval(_eval_args(model, out, vqa_rad_dir, "--quiet")) == 0
    assert json.loads((out / "model.json").read_text())["kind"] == "folder"
    assert main_eval(_eval_args(model, out, vqa_rad_dir, "--quiet")) == 0  # same model: resumes
    shutil.rmtree(model)
    write_tiny_model(model, seed=1)  # retrained weights saved under the same --model path
    capsys.readouterr()
    assert main_eval(_eval_args(model, out, vqa_rad_dir, "--quiet")) == 2
    _one_error_line(capsys, str(out), "another model", "weights changed")


def test_fingerprint_sees_config_and_weight_edges_and_names_what_changed(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    weights = folder / "model.safetensors"
    weights.write_bytes(bytes(3 << 20))
    base = model_fingerprint(folder)
    assert model_fingerprint(folder) == base and describe_change(base, base) == ""
    data = bytearray(weights.read_bytes())
    data[-5] = 1  # the last MiB: the last tensors
    weights.write_bytes(bytes(data))
    assert "weights changed: model.safetensors" in describe_change(base, model_fingerprint(folder))
    (folder / "config.json").write_text('{"a": 2}')
    assert "config.json changed" in describe_change(base, model_fingerprint(folder))
    (folder / "extra.bin").write_bytes(b"x")
    assert "new weight files: extra.bin" in describe_change(base, model_fingerprint(folder))
    hub = model_fingerprint("no-such-org/no-such-model")
    assert hub == {"kind": "hub", "id": "no-such-org/no-such-model", "commit": None}


def test_a_reused_record_of_another_question_or_answer_is_refused(tiny_adapter, vqa_rad_dir, tmp_path):
    cfg = EvalConfig(model="tiny", benchmarks=["vqa_rad"], mode="full", out=str(tmp_path / "r"), limit=2,
                     data_dir=vqa_rad_dir, batch_size=2, max_new_tokens=2, dtype="float32", device="cpu")
    evaluate(cfg, adapter=tiny_adapter)
    path = tmp_path / "r" / "vqa_rad" / "predictions.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0]["answer"] = "an answer the data does not have"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match="answer differs from the data"):
        evaluate(cfg, adapter=tiny_adapter)


# ---------------------------------------------------------------------------------------------- --out


@pytest.mark.parametrize("where, message", [
    ("inside_model", "lies inside the --model folder"),
    ("is_data", "contains the --data-dir"),
    ("a_file", "is a file, not a folder"),
    ("under_a_file", "is a file, not a folder"),
])  # fmt: skip
def test_out_folder_that_would_mix_with_inputs_or_cannot_be_written_is_one_line(
    tiny_model_dir, vqa_rad_dir, tmp_path, capsys, where, message
):
    data = tmp_path / "data"
    shutil.copytree(vqa_rad_dir, data / "vqa_rad")
    (tmp_path / "f").write_text("a file")
    out = {"inside_model": Path(tiny_model_dir) / "eval", "is_data": data, "a_file": tmp_path / "f",
           "under_a_file": tmp_path / "f" / "run"}[where]  # fmt: skip
    before = sorted(p.name for p in Path(tiny_model_dir).iterdir())
    assert main_eval(_eval_args(tiny_model_dir, out, data, "--quiet")) == 2
    _one_error_line(capsys, "--out", message)
    assert sorted(p.name for p in Path(tiny_model_dir).iterdir()) == before


def test_missing_data_folder_is_named_as_missing(tiny_model_dir, tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    assert main_eval(_eval_args(tiny_model_dir, tmp_path / "o", missing, "--quiet")) == 2
    line = _one_error_line(capsys, str(missing), "does not exist")
    assert "has no vqa_rad/ folder" not in line


def test_damaged_model_weights_are_one_line_and_status_2(tiny_model_dir, vqa_rad_dir, tmp_path, capsys):
    model = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir, model)
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    assert main_eval(_eval_args(model, tmp_path / "o", vqa_rad_dir, "--quiet")) == 2
    _one_error_line(capsys, "vitos eval: error:")


# ---------------------------------------------------------------------------------------------- kills mid-write


def test_a_last_line_cut_at_any_byte_is_dropped_and_everything_before_it_kept(tmp_path):
    path = tmp_path / "predictions.jsonl"
    records = [{"id": str(i), "question": "Où est la lésion? 病变在哪里", "prediction": "gauche"} for i in range(3)]
    full = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    last = json.dumps(records[-1], ensure_ascii=False).encode()
    head = full[: len(full) - len(last) - 1]
    for cut in range(len(last) + 1):  # every byte, the middle of multi-byte characters included
        path.write_bytes(head + last[:cut])
        done = open_log(path)
        assert list(done) == (["0", "1", "2"] if cut == len(last) else ["0", "1"]), cut
        assert path.read_bytes().endswith(b"\n")
        append_records(path, [records[-1]] if cut < len(last) else [])
        assert list(open_log(path)) == ["0", "1", "2"]


def test_a_run_whose_last_line_was_cut_resumes_to_the_uninterrupted_predictions(tiny_adapter, vqa_rad_dir, tmp_path):
    def cfg(out):
        return EvalConfig(model="tiny", benchmarks=["vqa_rad"], mode="full", out=str(out), limit=4,
                          data_dir=vqa_rad_dir, batch_size=2, max_new_tokens=2, dtype="float32", device="cpu")

    evaluate(cfg(tmp_path / "ref"), adapter=tiny_adapter)
    reference = (tmp_path / "ref" / "vqa_rad" / "predictions.jsonl").read_text()
    evaluate(cfg(tmp_path / "cut"), adapter=tiny_adapter)
    path = tmp_path / "cut" / "vqa_rad" / "predictions.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 25])  # a kill in the middle of the last record's write
    (tmp_path / "cut" / "scores.json").unlink()
    seen = []
    evaluate(cfg(tmp_path / "cut"), adapter=tiny_adapter, on_start=lambda n, d, t: seen.append((d, t)))
    assert seen == [(3, 4)]  # the torn record, and only it, was redone
    assert path.read_text() == reference


# ---------------------------------------------------------------------------------------------- compare inputs


def _scores(folder: Path, **vqa_rad):
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"accuracy": 50.0, "kept_token_ratio": 0.5, "n": 10, **vqa_rad}
    (folder / "scores.json").write_text(json.dumps({"vqa_rad": entry, "mean": 50.0}))


@pytest.mark.parametrize("field, value, message", [
    ("accuracy", float("nan"), "outside [0, 100]"),
    ("accuracy", float("inf"), "outside [0, 100]"),
    ("accuracy", -1.0, "outside [0, 100]"),
    ("accuracy", 100.5, "outside [0, 100]"),
    ("accuracy", "60", "not a number"),
    ("accuracy", True, "not a number"),
    ("kept_token_ratio", 1.5, "outside [0, 1]"),
    ("n", -3, "whole number"),
    ("accuracy_ci95", "x", "not an interval"),
    ("accuracy_ci95", [10, float("nan")], "not an interval"),
])  # fmt: skip
def test_compare_refuses_bad_accuracies_with_one_line(tmp_path, capsys, field, value, message):
    _scores(tmp_path / "good")
    _scores(tmp_path / "bad", **{field: value})
    for run, base in ((tmp_path / "bad", tmp_path / "good"), (tmp_path / "good", tmp_path / "bad")):
        assert main_compare([str(run), str(base)]) == 2
        _one_error_line(capsys, "scores.json", f"vqa_rad.{field}", message)


def test_compare_unreadable_input_is_one_line(tmp_path, capsys):
    _scores(tmp_path / "good")
    (tmp_path / "folder_as_scores").mkdir()
    (tmp_path / "folder_as_scores" / "scores.json").mkdir()  # reading it is an OSError (a folder)
    assert main_compare([str(tmp_path / "good"), str(tmp_path / "folder_as_scores" / "scores.json")]) == 2
    _one_error_line(capsys, "vitos compare: error:")


# ---------------------------------------------------------------------------------------------- saved settings


def _model_with_settings(tmp_path: Path) -> Path:
    model = tmp_path / "tiny-with-settings"
    write_tiny_model(model, seed=0)
    write_settings(model, ModelSettings(fusion="none", margin=0.1, min_keep=2, num_contextual=3, max_new_tokens=3,
                                        temperature=0.0, synthetic=True, made_by="test"))
    return model


def test_eval_defaults_come_from_the_models_saved_settings_and_flags_override_them(tmp_path):
    model = _model_with_settings(tmp_path)
    args = build_parser().parse_args(["--model", str(model), "--benchmarks", "vqa_rad", "--out", "x"])
    cfg = _config_from_args(args)
    assert (cfg.prune.fusion, cfg.prune.margin, cfg.prune.min_keep, cfg.prune.num_contextual) == ("none", 0.1, 2, 3)
    assert (cfg.max_new_tokens, cfg.temperature) == (3, 0.0)
    args = build_parser().parse_args(["--model", str(model), "--benchmarks", "vqa_rad", "--out", "x",
                                      "--fusion", "merge", "--max-new-tokens", "7"])
    cfg = _config_from_args(args)
    assert (cfg.prune.fusion, cfg.max_new_tokens, cfg.prune.margin) == ("merge", 7, 0.1)
    kit = _config_from_args(build_parser().parse_args(["--model", str(model), "--benchmarks", "vqa_rad", "--out", "x",
                                                       "--protocol", "medevalkit"]))
    assert kit.max_new_tokens == 8192 and kit.prune.fusion == "none"  # the protocol's length, the model's pruning
    plain = _config_from_args(build_parser().parse_args(["--model", str(tmp_path / "none"), "--benchmarks", "vqa_rad",
                                                         "--out", "x"]))
    assert (plain.prune.fusion, plain.max_new_tokens) == ("merge", 256)  # no saved settings: built-in defaults


def test_main_eval_prints_the_settings_used_and_warns_on_an_override(tmp_path, vqa_rad_dir, capsys):
    model = _model_with_settings(tmp_path)
    args = ["--model", str(model), "--benchmarks", "vqa_rad", "--mode", "full", "--out", str(tmp_path / "o"),
            "--limit", "1", "--data-dir", vqa_rad_dir, "--dtype", "float32", "--device", "cpu", "--quiet"]
    assert main_eval([*args, "--fusion", "merge"]) == 0
    err = capsys.readouterr().err
    assert "warning: --fusion merge overrides the model's saved fusion=none" in err
    assert "settings: fusion=merge, margin=0.1, min_keep=2, num_contextual=3, max_new_tokens=3" in err
    assert "saved with the model" in err and "synthetic toy model" in err
    saved = (tmp_path / "o" / "config.yaml").read_text()
    assert "max_new_tokens: 3" in saved and "fusion: merge" in saved


# ---------------------------------------------------------------------------------------------- progress

_LINE = re.compile(r"^vitos eval: progress benchmark=(\w+) done=(\d+) total=(\d+) rate=(-|[\d.]+/s) eta_s=(-|\d+)$")


def test_progress_is_plain_parseable_lines_off_a_terminal_and_nothing_when_quiet():
    stream = io.StringIO()
    p = Progress(stream=stream, tty=False)
    p.start("vqa_rad", 2, 6)
    p.batch("vqa_rad", 4, 6)
    p.batch("vqa_rad", 6, 6)
    p.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and all(_LINE.match(line) for line in lines), lines
    assert [_LINE.match(line).group(2) for line in lines] == ["2", "4", "6"]
    assert _LINE.match(lines[-1]).group(5) == "0"
    quiet = io.StringIO()
    q = Progress(quiet=True, stream=quiet, tty=True)
    q.start("vqa_rad", 0, 6)
    q.batch("vqa_rad", 6, 6)
    q.close()
    assert quiet.getvalue() == ""


def test_progress_on_a_terminal_is_a_bar_with_rate_and_eta():
    stream = io.StringIO()
    p = Progress(stream=stream, tty=True)
    p.start("vqa_rad", 0, 4)
    p.batch("vqa_rad", 2, 4)
    p.batch("vqa_rad", 4, 4)
    p.close()
    text = stream.getvalue()
    assert "vqa_rad" in text and "4/4" in text and "q/s" in text and "<" in text  # elapsed<remaining, rate


def test_main_eval_progress_lines_on_a_pipe(tiny_model_dir, vqa_rad_dir, tmp_path, capsys):
    assert main_eval(_eval_args(tiny_model_dir, tmp_path / "p", vqa_rad_dir, "--limit", "4")) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "progress" in line]
    assert [(m.group(2), m.group(3)) for m in map(_LINE.match, lines)] == [("0", "4"), ("2", "4"), ("4", "4")]
    assert "vitos eval: reading vqa_rad (test) ...\n" in err and f"vitos eval: loading the model {tiny_model_dir} ..." in err
    assert err.index("loading the model") < err.index("progress")


def test_a_model_that_failed_to_load_does_not_lock_its_folder(tiny_model_dir, vqa_rad_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = next(model.glob("*.safetensors"))
    good = weights.read_bytes()
    weights.write_bytes(good[:100])
    out = tmp_path / "o"
    assert main_eval(_eval_args(model, out, vqa_rad_dir, "--quiet")) == 2  # claimed, no predictions written
    weights.write_bytes(good)  # the user re-downloads the model (and changes a setting)
    assert main_eval(_eval_args(model, out, vqa_rad_dir, "--quiet", "--fusion", "none")) == 0
    assert "fusion: none" in (out / "config.yaml").read_text()


def test_a_hub_model_downloaded_by_the_run_resumes_but_a_new_snapshot_is_refused():
    before = {"kind": "hub", "id": "org/m", "commit": None}
    assert describe_change(before, {"kind": "hub", "id": "org/m", "commit": "abc"}) == ""
    assert "abc -> def" in describe_change({"kind": "hub", "id": "org/m", "commit": "abc"},
                                           {"kind": "hub", "id": "org/m", "commit": "def"})


@pytest.mark.parametrize("damage", ["mode: [unclosed", "- a list\n- not settings\n"])
def test_a_damaged_run_config_is_one_line(tiny_model_dir, vqa_rad_dir, tmp_path, capsys, damage):
    out = tmp_path / "o"
    assert main_eval(_eval_args(tiny_model_dir, out, vqa_rad_dir, "--quiet")) == 0
    (out / "config.yaml").write_text(damage)
    capsys.readouterr()
    assert main_eval(_eval_args(tiny_model_dir, out, vqa_rad_dir, "--quiet")) == 2
    _one_error_line(capsys, "config.yaml is damaged")


def test_compare_refuses_a_benchmark_entry_that_is_not_an_object(tmp_path, capsys):
    _scores(tmp_path / "good")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "scores.json").write_text('{"vqa_rad": [50.0], "mean": 50.0, "protocol_deviations": []}')
    assert main_compare([str(tmp_path / "bad"), str(tmp_path / "good")]) == 2
    _one_error_line(capsys, "vqa_rad is list", "not a benchmark's scores object")


@pytest.mark.parametrize("flag, value", [("--limit", "-1"), ("--batch-size", "0"), ("--max-new-tokens", "0"),
                                         ("--fastv-layer", "-1"), ("--judge-max-calls", "0"), ("--temperature", "nan"),
                                         ("--margin", "-1"), ("--min-keep", "0"), ("--num-contextual", "-1")])
def test_bad_eval_values_are_one_line_naming_the_flag(tiny_model_dir, vqa_rad_dir, tmp_path, capsys, flag, value):
    assert main_eval(_eval_args(tiny_model_dir, tmp_path / "o", vqa_rad_dir, "--quiet", flag, value)) == 2
    assert capsys.readouterr().err.splitlines()[0].startswith(f"vitos eval: error: {flag}")
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_progress_draws_a_bar_on_a_real_terminal_and_lines_on_a_zero_width_one():
    pty = pytest.importorskip("pty")
    import fcntl
    import os
    import struct
    import termios

    for cols, bar in ((100, True), (0, False)):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
        with os.fdopen(slave, "w", encoding="utf-8") as stream:
            p = Progress(stream=stream)
            assert p.tty is bar
            p.start("vqa_rad", 0, 2)
            p.batch("vqa_rad", 2, 2)
            p.close()
        text = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            text += chunk
        os.close(master)
        if bar:
            assert b"vqa_rad: 100%" in text and b"2/2" in text and b"q/s" in text
        else:
            assert b"progress benchmark=vqa_rad done=2 total=2" in text


class Killed(Exception):
    pass


@pytest.mark.parametrize("kth", [1, 2, 3])
def test_a_kill_in_the_middle_of_any_batch_write_resumes_to_the_uninterrupted_predictions(
    tiny_adapter, vqa_rad_dir, tmp_path, monkeypatch, kth
):
    import random

    import vitos.eval.loop as loop

    def cfg(out):
        return EvalConfig(model="tiny", benchmarks=["vqa_rad"], mode="full", out=str(out), limit=6,
                          data_dir=vqa_rad_dir, batch_size=2, max_new_tokens=2, dtype="float32", device="cpu")

    evaluate(cfg(tmp_path / "ref"), adapter=tiny_adapter)
    reference = (tmp_path / "ref" / "vqa_rad" / "predictions.jsonl").read_text()
    calls = []
    real_append = loop.append_records

    def killed_mid_write(path, records):
        calls.append(1)
        if len(calls) < kth:
            return real_append(path, records)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
        cut = random.Random(kth).randrange(1, len(text) - 1)  # somewhere inside the batch's bytes
        with open(path, "ab") as f:
            f.write(text[:cut])
        raise Killed

    monkeypatch.setattr(loop, "append_records", killed_mid_write)
    with pytest.raises(Killed):
        evaluate(cfg(tmp_path / "run"), adapter=tiny_adapter)
    monkeypatch.setattr(loop, "append_records", real_append)
    assert not (tmp_path / "run" / "scores.json").exists()
    evaluate(cfg(tmp_path / "run"), adapter=tiny_adapter)
    assert (tmp_path / "run" / "vqa_rad" / "predictions.jsonl").read_text() == reference

"""The `vitos` command as a user types it: dispatch, both model families, eval -> compare."""

from __future__ import annotations

import json
import os

import pytest

from vitos.cli import main


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("tiny-model", "infer", "train", "eval", "compare", "demo"):
        assert name in out


def test_huatuo_tiny_checkpoint_runs_infer_and_eval_unchanged(tmp_path, vqa_rad_dir, capsys):
    model = tmp_path / "huatuo"
    assert main(["tiny-model", str(model), "--family", "huatuo"]) == 0
    raw = json.loads((model / "config.json").read_text())
    assert raw["model_type"] == "llava_qwen2"  # the original custom-code format, loaded without remote code
    image = os.path.join(vqa_rad_dir, "images", "synpic54610.jpg")
    capsys.readouterr()
    assert main(["infer", "--model", str(model), "--image", image, "--question", "Is it normal?", "--json",
                 "--boxes", "[[0,0,0.5,0.5]]", "--max-new-tokens", "2", "--device", "cpu", "--dtype", "float32"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["visual_tokens_total"] == 576 and 0 < rec["visual_tokens_kept"] < 576
    out = tmp_path / "eval_huatuo"
    assert main(["eval", "--model", str(model), "--benchmarks", "vqa_rad", "--data-dir", vqa_rad_dir, "--mode", "vitos",
                 "--out", str(out), "--limit", "3", "--max-new-tokens", "3", "--device", "cpu", "--quiet"]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["vqa_rad"]["n"] == 3


def test_eval_then_compare_reports_relative_performance(tiny_model_dir, tmp_path, vqa_rad_dir, capsys):
    runs = {}
    for mode in ("full", "center"):
        runs[mode] = tmp_path / mode
        extra = ["--budget-ratio", "0.5"] if mode == "center" else []
        assert main(["eval", "--model", tiny_model_dir, "--benchmarks", "vqa_rad", "--data-dir", vqa_rad_dir,
                     "--mode", mode, "--out", str(runs[mode]), "--limit", "4", "--max-new-tokens", "3",
                     "--device", "cpu", "--quiet", *extra]) == 0
    # A random model may score 0, and a ratio to 0 is undefined (compare says so): give the baseline a
    # hand-set accuracy so the expected ratio is known.
    baseline = json.loads((runs["full"] / "scores.json").read_text())
    baseline["vqa_rad"]["accuracy"] = 40.0
    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "scores.json").write_text(json.dumps(baseline))
    capsys.readouterr()
    assert main(["compare", str(runs["center"]), str(tmp_path / "baseline"), "--json"]) == 0
    rel = json.loads(capsys.readouterr().out)
    a = json.loads((runs["center"] / "scores.json").read_text())["vqa_rad"]["accuracy"]
    assert rel["ratio_of_means"] == pytest.approx(100 * a / 40.0)
    assert rel["mean_of_ratios"] == pytest.approx(100 * a / 40.0)
    assert main(["compare", str(runs["center"]), str(runs["full"])]) in (0, 2)  # 2 only when full scored 0
    assert main(["compare", str(tmp_path / "nope"), str(runs["full"])]) == 2


# ---------------------------------------------------------------------------------------------- help text


class _Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def _inline_parser(monkeypatch, main_function):
    """The parser a `main_X(argv)` builds inline: captured at its parse_args call (nothing runs after it)."""
    import argparse

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Captured) as caught:
        main_function([])
    monkeypatch.undo()
    return caught.value.parser


def _every_parser(monkeypatch):
    """prog -> parser of every `vitos` subcommand, built the way the command builds it."""
    import argparse
    import importlib

    from vitos.cli import DELEGATED, build_parser
    from vitos.eval.cli import build_parser as eval_parser
    from vitos.eval.compare import build_parser as compare_parser
    from vitos.rl.trainer import build_parser as train_parser

    parsers = {}
    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        if name not in DELEGATED:
            parsers[name] = parser
    parsers.update(train=train_parser(), eval=eval_parser(), compare=compare_parser())
    for name, (module, func, _) in DELEGATED.items():
        if name not in parsers:  # demo, study, app: their parser is built inside main_X
            parsers[name] = _inline_parser(monkeypatch, getattr(importlib.import_module(module), func))
    assert set(parsers) == {"tiny-model", "infer", *DELEGATED}
    return parsers


def test_every_option_of_every_command_has_a_help_line_with_its_default(monkeypatch):
    import argparse

    missing, no_default = [], []
    for name, parser in _every_parser(monkeypatch).items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = f"vitos {name} {'/'.join(action.option_strings) or action.dest}"
            text = (action.help or "").strip()
            if not text or text == argparse.SUPPRESS:
                missing.append(label)
                continue
            optional = action.option_strings and not action.required
            has_value = action.default not in (None, False, argparse.SUPPRESS)
            if optional and has_value and "default" not in text and "%(default)" not in text:
                no_default.append(f"{label} (default {action.default!r})")
    assert not missing, f"options without help: {missing}"
    assert not no_default, f"options whose help does not state their default: {no_default}"


def test_eval_help_prints_every_option_with_help(capsys):
    from vitos.eval.cli import main_eval

    assert main_eval(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--fusion", "--num-contextual", "--temperature", "--dtype", "--device", "--split", "--seed"):
        assert flag in out
    assert "vitos_settings.json" in out  # the pruning / generation defaults come from the model's saved settings


def test_train_help_config_says_it_prints_the_built_in_defaults(capsys):
    from vitos.rl.trainer import main_train

    assert main_train(["--help-config"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "built-in defaults" in first and "--config" in first
    with pytest.raises(SystemExit):
        main_train(["--help"])
    assert "built-in default" in capsys.readouterr().out


# demo and study are left to their owner: their flags without a stated default are --quick, --json,
# --config, --quiet (demo) and --smoke, --config (study).
_STATES_EVERY_DEFAULT = ("tiny-model", "infer", "train", "eval", "compare", "app")


def test_every_option_of_these_commands_says_its_default_or_that_it_is_required(monkeypatch):
    import argparse

    vague = []
    for name, parser in _every_parser(monkeypatch).items():
        if name not in _STATES_EVERY_DEFAULT:
            continue
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            text = action.help or ""
            if not any(word in text for word in ("default", "required", "then exit")):
                vague.append(f"vitos {name} {'/'.join(action.option_strings)}: {text!r}")
    assert not vague, vague

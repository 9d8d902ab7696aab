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

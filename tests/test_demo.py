"""`vitos demo` and the warm start it relies on (vitos.demo, vitos.sft).

Fast tests check the pure pieces against hand-computed values; `test_quick_demo_end_to_end` runs
`vitos demo --quick` once (about 2.5 minutes on 2 CPU cores; CI runs it).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict

import pytest
import torch

from vitos.data.sample import Sample
from vitos.demo import (
    BUILTIN_WARM_START,
    QUICK_PRESET,
    DemoConfig,
    baseline_keeps,
    build_config,
    demo_settings,
    format_table,
    moving_average,
    relative_performance,
    resolve_warm_start,
    reward_rise,
    rl_pool,
    warm_start_stages,
)
from vitos.models.base import EncodedImage
from vitos.pruning.boxes import boxes_to_keep_mask
from vitos.sft import SFTConfig, cell_centres, jitter_boxes, lr_factor, targets, think_texts, token_labels


def _phantom_like(lesions, distractors=(), box=(0.25, 0.25, 0.5, 0.5)) -> Sample:
    return Sample(
        id="s0", images=[], question="Is there a lesion in the kidney?", answer="yes" if lesions else "no",
        kind="yes_no", boxes=[list(box)],
        meta={"organ": "kidney", "location": "upper left", "lesions": list(lesions), "distractors": list(distractors)},
    )


# ------------------------------------------------------------------------------------------- demo helpers


def test_relative_performance_is_a_ratio_and_undefined_for_a_zero_reference():
    assert relative_performance(0.6, 0.5) == pytest.approx(1.2)
    assert relative_performance(0.3, 0.0) is None


def test_reward_rise_compares_first_and_last_thirds_and_skips_missing_points():
    first, last = reward_rise([1.0, 2.0, None, 3.0, 4.0, 5.0, 6.0])  # 6 valid points: thirds of 2
    assert (first, last) == (pytest.approx(1.5), pytest.approx(5.5))
    assert reward_rise([1.0, 2.0]) is None


def test_moving_average_is_trailing_with_a_short_start():
    assert moving_average([2.0, 4.0, 6.0, 8.0], 2) == [2.0, 3.0, 5.0, 7.0]


def test_table_prints_percentages_and_dashes_for_missing_values():
    table = format_table([{"name": "full", "accuracy": 0.5, "relative": 1.0, "kept": 1.0, "miou": None, "latency_ms": 12.4}])
    row = table.splitlines()[2]
    assert row == "| full | 50.0% | 100.0% | 100.0% | - | 12 |"


def _row(correct, boxes=None, kept=1, total=4, qtype="presence"):
    """An evaluate_run-like row (vitos.study.evaluate.summarise) of 0/1 answers, ViToS-style when `boxes`."""
    from vitos.study.evaluate import summarise

    recs = [{"id": f"q{i}", "question_type": qtype, "correct": bool(c), "boxes": b, "iou": iou,
             "visual_tokens_kept": kept, "visual_tokens_total": total, "grounding_correct": None}
            for i, (c, (b, iou)) in enumerate(zip(correct, boxes or [([], None)] * len(correct)))]
    return summarise(recs)


def _model_rows(vitos, full, center, constant, oracle, boxes):
    return {"vitos": _row(vitos, boxes), "full": _row(full, total=1), "oracle": _row(oracle),
            "constant box": _row(constant), "center": _row(center)}


def _demo_like_results(rl_vitos):
    """Results of a demo run on 12 questions, built from hand-made rows (no model)."""
    from vitos.demo import Results, WarmStart, demo_targets, study_rows

    n = 12
    box = lambda k: ([[0.1 * (k % 3), 0.1, 0.5, 0.5]], 0.3 + 0.01 * k)  # noqa: E731  (3 distinct boxes)
    warm = _model_rows([1] * 6 + [0] * 6, [1] * 5 + [0] * 7, [1] * 6 + [0] * 6, [0] * n, [1] * n, [box(k) for k in range(n)])
    rl = _model_rows(rl_vitos, [1] * 8 + [0] * 4, [1] * 2 + [0] * 10, [0] * 6 + [1] * 6, [1] * n,
                     [box(k + 1) for k in range(n)])
    majority = _row([1] * 3 + [0] * 9)
    main = "interleaved+cross+iou"
    cells, comparisons, tgts = demo_targets(study_rows(majority, warm, rl, main), main)
    return Results(warm, rl, majority, [0.2, 0.2, 0.8, 0.8], [], [], WarmStart(BUILTIN_WARM_START, None, False), main,
                   cells, comparisons, tgts)


def test_the_demos_targets_are_the_studys_tests_on_its_rows(capsys):
    """summary.json's targets = vitos.study.report.targets on report.cell rows and report.paired_tests under the
    study's row names; the printed lines carry the comparisons' figures."""
    from vitos.demo import build_summary, print_results
    from vitos.stats import mcnemar_exact
    from vitos.study import report

    rl_vitos = [1] * 10 + [0] * 2  # 83 %: vs warm start 10/12 vs 6/12
    r = _demo_like_results(rl_vitos)
    summary = build_summary(DemoConfig(n_test=12, baselines=["center"]), r, {"total_s": 1.0})
    per_seed = {"majority": [r.majority], **{f"warm_start/{k}": [v] for k, v in r.warm.items()},
                **{f"interleaved+cross+iou/{k}": [v] for k, v in r.rl.items()}}
    cells = {name: report.cell(name, res) for name, res in per_seed.items()}
    tests = report.paired_tests(per_seed, ["interleaved+cross+iou"])
    assert summary["targets"] == report.targets(cells, tests, "interleaved+cross+iou")
    assert {c["label"] for c in summary["comparisons"]} == set(tests)
    assert {row["name"] for row in summary["rows"]} == set(per_seed)
    # By hand: ViToS after RL vs centre, question by question: 8 right only with ViToS, 0 only with center.
    c = tests["interleaved+cross+iou: vitos vs center"]
    assert (c["a"], c["b"], c["only_a"], c["only_b"], c["n"]) == ("interleaved+cross+iou/vitos",
                                                                  "interleaved+cross+iou/center", 8, 0, 12)
    assert c["p_value"] == pytest.approx(mcnemar_exact(8, 0)) and c["p_value"] == pytest.approx(2 * 0.5 ** 8)
    t = summary["targets"]
    assert t["beats_center_p<0.05"] is True  # +66.7 pts, p = 0.0078
    assert t["beats_warm_start_p<0.05"] is False  # 4 vs 0 discordant: p = 0.125
    assert t["beats_constant_box_p<0.05"] is False  # 6 vs 2: p = 0.29
    assert t["beats_majority"] is True and t["relative_to_full_ge_1"] is True  # 10/12 vs the same model's 8/12
    # relative performance: the RL model's ViToS over the SAME model's full tokens; the warm start's apart
    assert summary["relative_performance"] == pytest.approx((10 / 12) / (8 / 12))
    assert summary["relative_performance_warm_start"] == pytest.approx((6 / 12) / (5 / 12))
    assert summary["accuracy_full_rl"] == pytest.approx(8 / 12) and summary["accuracy_full"] == pytest.approx(5 / 12)
    assert "reward_rise" in summary and "reward_rise" not in " ".join(t)  # reported, not a target
    print_results(summary)
    out = capsys.readouterr().out
    assert "beats_center_p<0.05 = True (+66.7 pts, McNemar p = 0.0078, n = 12)" in out
    assert "beats_warm_start_p<0.05 = False (+33.3 pts, McNemar p = 0.12, n = 12)" in out
    assert "ONE seed at n = 12" in out and "not the study" in out
    json.dumps(summary)  # JSON-safe (NaN -> null)


def test_a_swapped_comparison_would_change_the_demos_targets():
    """The demo's target follows the sign of a - b: swap a and b of vitos vs center and it fails (the check
    that the test above can fail)."""
    from vitos.study import report

    r = _demo_like_results([1] * 10 + [0] * 2)
    swapped = dict(r.comparisons)
    key = "interleaved+cross+iou: vitos vs center"
    c = r.comparisons[key]
    swapped[key] = report.compare(c["b"], [r.rl["center"]], c["a"], [r.rl["vitos"]])
    assert report.targets(r.cells, swapped, r.main)["beats_center_p<0.05"] is False
    assert r.targets["beats_center_p<0.05"] is True


def test_every_demo_and_study_module_stays_under_420_lines():
    from pathlib import Path

    src = Path(__file__).parents[1] / "src" / "vitos"
    sizes = {p.name: len(p.read_text().splitlines()) for d in ("demo", "study") for p in (src / d).glob("*.py")}
    assert {"config.py", "stages.py", "cli.py", "run.py", "evaluate.py", "report.py"} <= set(sizes)
    assert not (src / "demo.py").exists()  # the package replaced the module
    assert all(n <= 420 for n in sizes.values()), sizes


def test_quick_flag_applies_the_preset_but_explicit_overrides_win(tmp_path):
    quick = build_config(quick=True)
    assert quick.reuse_warm_start == "builtin" and quick.n_test == QUICK_PRESET["n_test"]
    assert build_config().n_test == DemoConfig().n_test and build_config().reuse_warm_start is None
    mixed = build_config(quick=True, overrides=["rl_steps=7"], seed=3, out_dir=str(tmp_path))
    assert mixed.rl_steps == 7 and mixed.n_test == QUICK_PRESET["n_test"]
    assert (mixed.seed, mixed.out_dir) == (3, str(tmp_path))


def test_yaml_values_sit_between_the_preset_and_the_command_line(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text("rl_steps: 9\nn_test: 12\n")
    cfg = build_config(quick=True, config_path=str(path), overrides=["n_test=7"])
    assert (cfg.rl_steps, cfg.n_test, cfg.reuse_warm_start) == (9, 7, "builtin")
    path.write_text("rl_stepz: 9\n")
    with pytest.raises(Exception, match="rl_stepz"):  # a typo is named, not ignored
        build_config(config_path=str(path))


def test_baseline_masks_keep_exactly_the_budget_per_image():
    enc = [[EncodedImage(torch.randn(64, 8), (8, 8), (224, 224))], [EncodedImage(torch.randn(16, 8), (4, 4), (112, 112))]]
    for name in ("center", "random", "visionzip"):
        masks = baseline_keeps(name, enc, [10, 3], seed=0)
        kept = [int(m[0].sum()) for m in masks]
        assert [tuple(m[0].shape) for m in masks] == [(8, 8), (4, 4)]
        # visionzip keeps budget - 4 dominant tokens (the 4 contextual ones are added by fusion), at least 1
        assert kept == ([6, 1] if name == "visionzip" else [10, 3])
    centre = baseline_keeps("center", enc[:1], [4], seed=0)[0][0]
    assert centre[3:5, 3:5].all()  # the four cells around the image centre
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_keeps("fastv", enc, [10, 3], seed=0)


# ------------------------------------------------------------------------------------------- warm start


def test_compact_thinking_names_the_place_then_what_the_evidence_shows():
    s = _phantom_like([{"brightness": "dark", "center": [70, 70], "radius": 5}] * 2)
    assert think_texts(s, "compact") == ("The kidney is in the upper left.", "The kidney shows two dark lesions.")
    assert think_texts(_phantom_like([]), "compact")[1] == "The kidney shows no lesion."
    g, sp = targets(s, "compact")
    assert g == "<think>The kidney is in the upper left.</think><box>[[0.25,0.25,0.50,0.50]]</box><answer>yes</answer>"
    assert sp == "<think>The kidney shows two dark lesions.</think><answer>yes</answer>"


def test_samples_without_phantom_metadata_fall_back_to_their_thinking_text():
    s = Sample(id="x", images=[], question="q?", answer="no", kind="yes_no", boxes=[[0.1, 0.1, 0.2, 0.2]],
               meta={"thinking": "First sentence. Second one."})
    assert think_texts(s, "compact") == ("First sentence.", "First sentence.")
    assert think_texts(s, "full") == ("First sentence. Second one.",) * 2
    with pytest.raises(ValueError, match="think style"):
        think_texts(s, "long")


def test_token_labels_mark_the_cell_of_each_spot_centre_and_the_box_tokens():
    spots = [{"brightness": "dark", "center": [40.0, 40.0], "radius": 5}]  # 224 px image, 8x8 grid: cell (1, 1)
    distractor = [{"brightness": "bright", "center": [200.0, 100.0], "radius": 5}]  # cell (3, 7)
    s = _phantom_like(spots, distractor)
    classes, evidence = token_labels(s, (8, 8), (224, 224))
    assert classes.shape == (64,) and evidence.shape == (64,)
    expected = torch.zeros(64, dtype=torch.long)
    expected[1 * 8 + 1] = 1
    expected[3 * 8 + 7] = 2
    assert torch.equal(classes, expected)
    assert torch.equal(evidence.bool(), boxes_to_keep_mask(s.boxes, (8, 8), min_keep=0).reshape(-1))
    plain = Sample(id="y", images=[], question="q", answer="a", boxes=[[0.0, 0.0, 0.5, 0.5]])
    assert (token_labels(plain, (8, 8), (224, 224))[0] == -1).all()  # no spot metadata: ignored


def test_cell_centres_are_normalised_raster_order_centres():
    c = cell_centres((2, 4))
    assert c.shape == (8, 2)
    assert c[0].tolist() == [0.125, 0.25] and c[5].tolist() == [0.375, 0.75]  # row 1, column 1


def test_jittered_boxes_stay_valid_and_within_the_jitter():
    rng = random.Random(0)
    box = [0.0, 0.3, 0.4, 0.6]
    for _ in range(200):
        (x1, y1, x2, y2), = jitter_boxes([box], 0.05, rng)
        assert 0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0
        assert max(abs(a - b) for a, b in zip((x1, y1, x2, y2), box)) <= 0.05 + 1e-12
    assert jitter_boxes([box], 0.0, rng) == [box]


def test_warm_start_lr_warms_up_then_decays_to_a_tenth():
    cfg = SFTConfig(steps=110, warmup_steps=10, schedule="cosine")
    assert lr_factor(cfg, 0) == pytest.approx(0.1) and lr_factor(cfg, 9) == pytest.approx(1.0)
    assert lr_factor(cfg, 10) == pytest.approx(1.0) and lr_factor(cfg, 109) == pytest.approx(0.1)
    assert lr_factor(SFTConfig(steps=110, schedule="constant"), 100) == 1.0
    with pytest.raises(ValueError, match="sequences"):
        SFTConfig(sequences=("grounding", "caption"))


def test_rl_pool_writes_the_first_rows_beside_the_file_or_returns_it_unchanged(tmp_path):
    rows = tmp_path / "train.jsonl"
    rows.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(5)))
    pool = rl_pool(rows, 3)
    assert pool.parent == rows.parent and pool != rows  # relative image paths stay valid
    assert [json.loads(line)["id"] for line in pool.read_text().splitlines()] == [0, 1, 2]
    assert rl_pool(rows, 0) == rows and rl_pool(rows, 5) == rows and rl_pool(rows, 9) == rows


def test_warm_start_stages_run_in_order_and_skip_empty_ones():
    stages = warm_start_stages(DemoConfig(read_steps=3, locate_steps=0, sft_steps=2))
    assert [(name, c.steps) for name, c in stages] == [("read", 3), ("both", 2)]
    assert stages[-1][1].schedule == "cosine" and stages[0][1].schedule == "constant"
    assert all(c.freeze_vision for _, c in stages)  # the pre-trained tower stays as it is


# ------------------------------------------------------------------------------------------- shipped warm start


def test_reuse_warm_start_resolves_builtin_and_rejects_a_folder_without_a_checkpoint(tmp_path):
    assert resolve_warm_start("builtin") == BUILTIN_WARM_START
    assert (BUILTIN_WARM_START / "model.safetensors").is_file()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve_warm_start(str(tmp_path))


# Fields that decide what the warm start is; the ones after it (RL, evaluation, output) do not.
_WARM_START_FIELDS = ("seed", "n_train", "question_mix", "hidden", "layers", "vision_depth", "image_pixels",
                      "margin", "min_keep", "fusion", "vision_steps", "vision_box_weight", "vision_mask_spot_cells", "phantom", "read_steps",
                      "read_sequences", "locate_steps", "locate_sequences", "sft_steps", "sft_sequences",
                      "sft_batch_size", "sft_lr", "think", "box_jitter")


def test_shipped_warm_start_was_made_by_the_current_defaults():
    """If a default that shapes the warm start changes, the shipped checkpoint must be remade (see
    vitos.demo.BUILTIN_WARM_START for the command), or `--quick` would start from a stale model."""
    provenance = json.loads((BUILTIN_WARM_START / "provenance.json").read_text())
    defaults = asdict(DemoConfig())
    made = provenance["config"]
    assert made.get("reuse_warm_start") is None
    stale = {k: (made.get(k), defaults[k]) for k in _WARM_START_FIELDS if made.get(k) != defaults[k]}
    assert not stale, f"shipped warm start made with other values (shipped, default): {stale}"
    config = json.loads((BUILTIN_WARM_START / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == defaults["hidden"]


# ------------------------------------------------------------------------------------------- settings


def _run_keys(s) -> tuple:
    return (s.fusion, s.margin, s.min_keep, s.num_contextual, s.max_new_tokens, s.temperature, s.synthetic)


def test_a_demo_warm_start_carries_the_settings_it_is_run_with(tiny_adapter, tmp_path):
    from vitos.demo import save_warm_start
    from vitos.models.settings import read_settings

    cfg = DemoConfig()
    save_warm_start(tiny_adapter, tmp_path / "warm_start", cfg)
    s = read_settings(tmp_path / "warm_start")
    assert s.source.endswith("vitos_settings.json") and s.made_by == "vitos demo"
    assert _run_keys(s) == (cfg.fusion, cfg.margin, cfg.min_keep, 4, cfg.max_new_tokens, 0.0, True)
    assert _run_keys(s) == ("none", 0.0, 1, 4, 64, 0.0, True)  # greedy: cfg.temperature is the RL rollouts'


def test_shipped_warm_start_carries_settings_matching_its_provenance():
    from vitos.models.settings import SETTINGS_FILE, read_settings

    made = json.loads((BUILTIN_WARM_START / "provenance.json").read_text())["config"]
    saved = json.loads((BUILTIN_WARM_START / SETTINGS_FILE).read_text())
    assert saved["pruning"] == {"fusion": made["fusion"], "margin": made["margin"], "min_keep": made["min_keep"],
                                "num_contextual": 4}
    assert saved["generation"] == {"max_new_tokens": made["max_new_tokens"], "temperature": 0.0}
    assert saved["provenance"]["synthetic"] is True and saved["provenance"]["made_by"] == "vitos demo"
    s = read_settings(BUILTIN_WARM_START)
    assert s.source.endswith(SETTINGS_FILE) and _run_keys(s) == _run_keys(demo_settings(DemoConfig(**{
        k: made[k] for k in ("fusion", "margin", "min_keep", "max_new_tokens")})))
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["vitos"]
    assert any(Path("assets/demo_warm_start", SETTINGS_FILE).match(g) for g in globs)  # shipped in the wheel


def test_infer_on_the_demo_model_runs_it_as_the_demo_did(tmp_path, capsys, monkeypatch):
    """`vitos infer --model <demo warm start>` without flags: fusion none, 64 new tokens, greedy."""
    import vitos.infer
    from vitos.cli import main
    from vitos.data.medphantom import PhantomConfig, write_dataset
    from vitos.data.readers import read_rows

    seen = {}
    real = vitos.infer.infer_one

    def recording(adapter, image, question, **kw):
        seen.update(prune=kw["prune"], sampling=kw["sampling"])
        return real(adapter, image, question, **kw)

    monkeypatch.setattr(vitos.infer, "infer_one", recording)
    sample = read_rows(write_dataset(PhantomConfig(seed=0, n_train=1, n_test=1), tmp_path / "data")["test"]).samples[0]
    rc = main(["infer", "--model", str(BUILTIN_WARM_START), "--image", str(sample.images[0]), "--question",
               sample.question, "--json", "--device", "cpu", "--dtype", "float32"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    json.loads(out.out)  # stdout stays one JSON document
    p, g = seen["prune"], seen["sampling"]
    assert (p.fusion, p.margin, p.min_keep, g.max_new_tokens, g.temperature) == ("none", 0.0, 1, 64, 0.0)
    assert "settings: fusion=none, margin=0.0, min_keep=1, num_contextual=4, max_new_tokens=64" in out.err
    assert "saved with the model" in out.err and "warning" not in out.err
    assert "synthetic toy model" not in out.err  # a MedPhantom image is what it was made for


def test_quiet_flag_reaches_the_demo(monkeypatch, capsys):
    import vitos.demo
    import vitos.demo.cli

    calls = []
    fake = {"table": "| t |", "relative_performance": 1.0, "kept_token_ratio": 0.3, "miou_warm_start": 0.4,
            "miou_rl": 0.4, "reward_rise": {}, "targets": {}, "timings_s": {"total_s": 1.0}}
    monkeypatch.setattr(vitos.demo.cli, "run_demo", lambda cfg, quiet=False: calls.append(quiet) or fake)
    assert vitos.demo.main_demo(["--quick", "--quiet"]) == 0 and vitos.demo.main_demo(["--quick"]) == 0
    assert calls == [True, False]


# ------------------------------------------------------------------------------------------- end to end


def test_quick_demo_end_to_end(tmp_path, capsys):
    """`vitos demo --quick` (about 2.5 min on 2 cores): RL from the shipped warm start, then evaluation."""
    import re

    from vitos.demo import main_demo
    from vitos.models.settings import read_settings

    out_json = tmp_path / "demo.json"
    assert main_demo(["--quick", "--json", str(out_json), "--out", str(tmp_path / "run")]) == 0
    # Progress, with stderr not a terminal: plain lines, no bar redraws; each wait announced on stdout.
    printed = capsys.readouterr()
    rl_lines = [line for line in printed.err.splitlines() if line.startswith("[progress] RL: ")]
    assert rl_lines[0] == f"[progress] RL: started, {QUICK_PRESET.get('rl_steps', DemoConfig().rl_steps)} steps"
    assert all(re.search(r"step \d+/\d+ .* step/s, elapsed \d+ s, ETA \d+ s", line) for line in rl_lines[1:])
    ours = [line for line in printed.err.split("\n") if "[progress]" in line]  # split("\n"): a redraw keeps its \r
    assert len(rl_lines) >= 5 and not any("\r" in line for line in ours)
    assert "[demo] evaluation: the RL model on" in printed.out
    # Both checkpoints say how they must be run (vitos infer / eval / app default to it).
    s = read_settings(tmp_path / "run" / "rl" / "final")
    assert (s.fusion, s.max_new_tokens, s.temperature, s.synthetic) == ("none", 64, 0.0, True)
    summary = json.loads(out_json.read_text())
    for key in ("relative_performance", "kept_token_ratio", "miou_warm_start", "miou_rl", "accuracy_full",
                "accuracy_vitos", "accuracy_baseline"):
        assert key in summary and summary[key] is not None, key
    # What holds by construction on the shipped warm start (tests/test_design_properties.py has the bounds):
    # pruning really prunes, and the ground-truth boxes read better than all tokens (PHANTOM_V3's decoys
    # mislead a reader of every token); no effect size of RL is asserted (one seed at n = 60 is noise).
    assert summary["kept_token_ratio"] <= 0.77
    assert summary["accuracy_oracle"]["rl"] > summary["accuracy_full_rl"]
    assert 0.0 <= summary["miou_rl"] <= 1.0 and 0.0 <= summary["miou_warm_start"] <= 1.0
    # The rollout-vs-trainer alarm (issue 11): this warm start really prunes, and every sampled token's
    # update-time log-prob equals its sampling-time one, in both branches, at every step.
    records = [json.loads(line) for line in (tmp_path / "run" / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["kept_token_ratio"] for r in records) < 0.5
    for branch in ("grounding", "sparse"):
        diffs = [r[f"{branch}/logprob_diff_max"] for r in records]
        assert None not in diffs and max(diffs) <= 1e-3, branch
    for name in ("reward_curves.png", "accuracy_vs_kept.png", "summary.md"):
        assert (tmp_path / "run" / name).is_file()
    assert len(list((tmp_path / "run" / "overlays").glob("*.png"))) == QUICK_PRESET["n_overlays"]
    assert summary["accuracy_majority"] is not None  # the chance line of accuracy_vs_kept.png
    # The targets are the study's, on the study's row names, printed with their figures.
    from vitos.study import report

    main = summary["main_variant"]
    assert main == "interleaved+cross+iou"
    cells = {r["name"]: r for r in summary["rows"]}
    for row in ("majority", "warm_start/vitos", "warm_start/full", f"{main}/vitos", f"{main}/full", f"{main}/center",
                f"{main}/constant box", f"{main}/oracle"):
        assert cells[row]["n"] == QUICK_PRESET["n_test"] or row == "majority", row
    tests = {c["label"]: c for c in summary["comparisons"]}
    assert summary["targets"] == report.targets(cells, tests, main)
    assert f"beats_center_p<0.05 = {summary['targets']['beats_center_p<0.05']} (" in printed.out
    assert summary["relative_performance"] == pytest.approx(summary["accuracy_vitos"] / summary["accuracy_full_rl"])

"""`vitos study`: its statistics against hand-computed values, its rows, and the smoke run end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vitos.data.sample import Sample
from vitos.study.evaluate import answer_balance, best_constant_box, evaluate_majority, majority_answers, summarise
from vitos.study.report import cell, compare, paired_tests, target_figures, target_lines, targets, variant_name

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _res(correct, kept=0.2, miou=None, boxes=None):
    return {"correct": correct, "kept": kept, "miou": miou, "distinct_boxes": boxes}


def test_cell_pools_seeds_with_a_wilson_interval_and_a_t_interval_over_seed_means():
    row = cell("r", [_res([1, 1, 0, 1]), _res([1, 0, 0, 1])])  # 5 / 8 pooled; seed means 0.75, 0.5
    assert row["n"] == 8 and row["accuracy"] == 5 / 8
    # Wilson, z = 1.96, p = 0.625, n = 8: centre (0.625 + 0.2401) / 1.4802, half 1.96 * sqrt(0.0293 + 0.0150) / 1.4802
    assert row["ci_low"] == pytest.approx(0.3057, abs=1e-3) and row["ci_high"] == pytest.approx(0.8632, abs=1e-3)
    # t-interval of [0.75, 0.5]: 0.625 +- 12.706 * 0.17678 / sqrt(2)
    assert row["seed_mean"] == pytest.approx(0.625)
    assert row["seed_ci_low"] == pytest.approx(0.625 - 12.7062 * 0.125, abs=1e-3)
    assert row["kept_ratio"] == pytest.approx(0.2)


def test_compare_counts_discordant_pairs_pooled_over_seeds_and_gives_the_exact_mcnemar_p():
    a = [_res([1, 1, 1, 0]), _res([1, 1, 1, 1])]
    b = [_res([0, 0, 1, 0]), _res([0, 0, 0, 1])]
    c = compare("a", a, "b", b)
    assert (c["only_a"], c["only_b"], c["n"]) == (5, 0, 8)
    assert c["p_value"] == pytest.approx(2 * 0.5 ** 5)  # Bin(5, 1/2): 2 * P(X <= 0)
    assert c["difference"] == pytest.approx(5 / 8)
    with pytest.raises(ValueError, match="seed by seed"):
        compare("a", a, "b", b[:1])


def test_targets_need_a_significant_positive_difference():
    rows = {"main/vitos": {"accuracy": 0.7, "miou": 0.5, "distinct_boxes": 40}, "main/full": {"accuracy": 0.6},
            "majority": {"accuracy": 0.5}, "warm_start/vitos": {"accuracy": 0.6, "miou": 0.4, "distinct_boxes": 50}}
    tests = {"main: after RL vs warm start": {"difference": 0.1, "p_value": 0.01},
             "main: vitos vs center": {"difference": 0.1, "p_value": 0.2},
             "main: vitos vs constant box": {"difference": -0.1, "p_value": 0.01}}
    t = targets(rows, tests, "main")
    assert t["beats_warm_start_p<0.05"] is True
    assert t["beats_center_p<0.05"] is False  # not significant
    assert t["beats_constant_box_p<0.05"] is False  # significant, but worse
    assert t["beats_majority"] is True and t["relative_to_full_ge_1"] is True
    assert t["miou_above_warm_start"] is True and t["distinct_boxes_ge_warm_start"] is False


def test_paired_tests_are_the_studys_comparisons_and_skip_pairs_with_a_missing_row():
    v, j = variant_name("interleaved", True, True), variant_name("joint", True, True)
    assert (v, variant_name("joint", False, False)) == ("interleaved+cross+iou", "joint+nocross+noiou")
    per_seed = {"warm_start/vitos": [_res([0, 0, 1, 1])], f"{v}/vitos": [_res([1, 1, 1, 0])],
                f"{v}/center": [_res([1, 0, 1, 0])], f"{j}/vitos": [_res([0, 1, 1, 0])]}
    tests = paired_tests(per_seed, [v, j])
    assert set(tests) == {f"{v}: after RL vs warm start", f"{v}: vitos vs center", f"{v}: sequential vs joint",
                          f"{j}: after RL vs warm start"}  # no constant-box or centre row for joint: left out
    c = tests[f"{v}: after RL vs warm start"]
    assert (c["a"], c["b"], c["only_a"], c["only_b"], c["label"]) == (f"{v}/vitos", "warm_start/vitos", 2, 1, c["label"])
    assert c == {**compare(f"{v}/vitos", per_seed[f"{v}/vitos"], "warm_start/vitos", per_seed["warm_start/vitos"]),
                 "label": f"{v}: after RL vs warm start"}


def test_target_figures_give_the_difference_p_value_and_n_behind_each_target():
    rows = {"main/vitos": {"accuracy": 0.7, "miou": 0.5, "distinct_boxes": 40}, "main/full": {"accuracy": 0.5},
            "majority": {"accuracy": 0.5}, "warm_start/vitos": {"accuracy": 0.6, "miou": 0.4, "distinct_boxes": 50}}
    tests = {"main: vitos vs center": {"difference": 0.02, "p_value": 0.4142, "n": 100}}
    fig = target_figures(rows, tests, "main")
    assert fig["beats_center_p<0.05"] == "+2.0 pts, McNemar p = 0.41, n = 100"
    assert fig["beats_warm_start_p<0.05"] == "no test"
    assert fig["relative_to_full_ge_1"].startswith("140.0 % = 70.0 % / 50.0 %")
    line = target_lines({"beats_center_p<0.05": False}, fig)
    assert line == ["beats_center_p<0.05 = False (+2.0 pts, McNemar p = 0.41, n = 100)"]


def _s(qtype, answer, boxes=None):
    return Sample(id=f"{qtype}-{answer}", images=[], question="q", answer=answer, kind="open", boxes=boxes or [],
                  meta={"question_type": qtype})


def test_majority_row_answers_each_type_with_its_most_frequent_training_answer():
    train = [_s("presence", "yes"), _s("presence", "no"), _s("presence", "no"), _s("count", "2"), _s("count", "1")]
    assert majority_answers(train) == {"presence": "no", "count": "1"}  # count: tie -> alphabetically first
    res = evaluate_majority([_s("presence", "no"), _s("presence", "yes"), _s("count", "1")], train)
    assert res["correct"] == [True, False, True]
    assert answer_balance(train)["presence"] == {"no": 2 / 3, "yes": 1 / 3}


def test_best_constant_box_maximises_mean_iou_on_the_training_boxes():
    boxes = [[[0.1, 0.1, 0.3, 0.3]], [[0.1, 0.1, 0.3, 0.3]], [[0.6, 0.6, 0.9, 0.9]]]
    assert best_constant_box(boxes) == pytest.approx([0.1, 0.1, 0.3, 0.3])  # IoU 2/3 beats any compromise
    assert best_constant_box([]) == [0.0, 0.0, 1.0, 1.0]


def test_summary_counts_distinct_boxes_and_keeps_the_correct_vector_in_order():
    recs = [{"question_type": "a", "correct": c, "boxes": b, "visual_tokens_kept": 1, "visual_tokens_total": 4, "iou": i}
            for c, b, i in ((True, [[0.1, 0.1, 0.5, 0.5]], 0.5), (False, [[0.1, 0.1, 0.5, 0.5]], 0.25), (True, [], None))]
    s = summarise(recs)
    assert s["correct"] == [True, False, True] and s["distinct_boxes"] == 1
    assert s["kept"] == pytest.approx(0.25) and s["miou"] == pytest.approx(0.375)


def test_smoke_study_writes_every_row_comparison_and_plot(tmp_path):
    """`vitos study --smoke`: the CI-sized run (about 40 s here) writes the same files as the full study, and the
    same numbers with one process as with two."""
    from vitos.study.run import main_study

    out = tmp_path / "study"
    assert main_study(["--smoke", "--out", str(out)]) == 0
    study = json.loads((out / "study.json").read_text())
    names = {r["name"] for r in study["rows"]}
    for row in ("majority", "warm_start/full", "warm_start/vitos", "interleaved+cross+iou/vitos",
                "interleaved+cross+iou/full", "interleaved+cross+iou/oracle", "interleaved+cross+iou/constant box",
                "interleaved+cross+iou/center", "interleaved+cross+iou/random", "interleaved+cross+iou/fastv",
                "joint+nocross+iou/vitos"):
        assert row in names, row
    for r in study["rows"]:
        assert {"accuracy", "ci_low", "ci_high", "n", "kept_ratio"} <= set(r)
        assert r["n"] == 48 and r["ci_low"] <= r["accuracy"] <= r["ci_high"]
    labels = {c["label"] for c in study["comparisons"]}
    assert "interleaved+cross+iou: after RL vs warm start" in labels
    assert "interleaved+cross+iou: sequential vs joint" in labels
    assert "interleaved+cross+iou: cross-feedback on vs off" in labels
    for c in study["comparisons"]:
        assert 0 <= c["p_value"] <= 1 and c["a"] in names and c["b"] in names
    assert set(study["targets"]) >= {"beats_warm_start_p<0.05", "beats_center_p<0.05", "beats_constant_box_p<0.05"}
    # measured every step in the smoke run; a step where one branch's group rewards are all equal (frequent in
    # 2-step tiny runs, more so with the IoU collapse guard) has no gradient, hence no cosine
    assert any(len(r["grad_cosine"]) >= 1 for r in study["runs"])
    assert all(-1.0 <= c <= 1.0 for r in study["runs"] for _, c in r["grad_cosine"])
    assert "- beats_center_p<0.05 = " in (out / "study.md").read_text()  # with its figures
    for name in ("study.md", "study_accuracy.png", "grad_cosine.png"):
        assert (out / name).is_file()
    assert math.isfinite(study["meta"]["seconds"])
    # the same grid in one process (workers=1, tasks in order) gives the same numbers as the 2-process pool
    # (the default): each task seeds itself and reads its inputs from disk, whatever ran before it
    assert main_study(["--smoke", "--out", str(tmp_path / "serial"), "workers=1"]) == 0
    serial = json.loads((tmp_path / "serial" / "study.json").read_text())
    assert study["meta"]["config"]["workers"] == 2 and serial["meta"]["config"]["workers"] == 1
    assert [(r["name"], r["accuracy"], r["kept_ratio"]) for r in serial["rows"]] == \
        [(r["name"], r["accuracy"], r["kept_ratio"]) for r in study["rows"]]
    assert [c["p_value"] for c in serial["comparisons"]] == [c["p_value"] for c in study["comparisons"]]


def test_fastv_keeps_meet_each_budget_and_do_not_depend_on_the_batching(sensitive_adapter, one_torch_thread):
    """The study's FastV row: exactly each question's budget of tokens, and the masks of a batch equal those
    of each question alone (a batching bug would pair one question's budget or scores with another's)."""
    from vitos.data.medphantom import PhantomConfig, generate
    from vitos.eval.baselines import fastv_keep
    from vitos.pipeline import encode
    from vitos.prompts import sparse_prompt
    from vitos.pruning.sparse import assemble
    from vitos.study.evaluate import fastv_keeps

    test = generate(PhantomConfig(seed=2, n_train=0, n_test=5, image_size=112))["test"]
    enc = encode(sensitive_adapter, [list(t.images) for t in test])
    budgets = [1, 3, 5, 2, 4]
    masks = fastv_keeps(sensitive_adapter, test, enc, budgets, batch_size=2)
    assert [int(m[0].sum()) for m in masks] == budgets
    for t, e, b, m in zip(test, enc, budgets, masks):
        p = sensitive_adapter.build_prompt(sparse_prompt(t.question, t.options, t.kind, 1), e)
        alone = fastv_keep(sensitive_adapter, [assemble(sensitive_adapter, p, e)], [p.image_spans], [[e[0].grid_hw]], [b])
        assert torch.equal(alone[0][0], m[0])


def test_study_variants_parse_names_and_fall_back_to_the_product():
    """The one-factor-at-a-time default parses to (schedule, cross, iou); [] gives the product; a typo is a
    ConfigError, not a KeyError deep in the trainer."""
    from vitos.config import ConfigError
    from vitos.study.run import StudyConfig, study_variants

    cfg = StudyConfig()
    assert study_variants(cfg)[0] == ("interleaved", True, True)
    assert ("interleaved", True, False) in study_variants(cfg) and len(study_variants(cfg)) == 5
    prod = study_variants(StudyConfig(variants=[], schedules=["joint"], cross_feedback=[True, False], iou_reward=[False]))
    assert prod == [("joint", True, False), ("joint", False, False)]
    with pytest.raises(ConfigError, match="interleaved\\+cross\\+iou"):
        study_variants(StudyConfig(variants=["interleaved+crossfeedback+iou"]))


def test_comparison_pairs_cover_each_ablation_of_the_main_variant():
    from vitos.study.report import comparison_pairs

    labels = [p[0] for p in comparison_pairs(_default_variants())]
    for want in ("interleaved+cross+iou: sequential vs joint", "stagewise+cross+iou: sequential vs joint",
                 "interleaved+cross+iou: cross-feedback on vs off", "interleaved+cross+iou: IoU reward on vs off"):
        assert want in labels
    assert not any("nocross+iou: cross-feedback" in lab or "noiou: IoU" in lab for lab in labels)


def _default_variants() -> list[str]:
    from vitos.study.run import StudyConfig

    return StudyConfig().variants

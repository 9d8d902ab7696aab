"""Benchmark scores, aggregates, relative performance and the Markdown table, against hand-computed values."""

from __future__ import annotations

import pytest

from vitos.answers import Judgement
from vitos.data.sample import Sample
from vitos.eval.scoring import aggregate, is_closed, markdown_table, relative_performance, score_benchmark


def J(correct: bool, parse_failure: bool = False, recall: float | None = None, f1: float | None = None) -> Judgement:
    score = float(correct)
    return Judgement(
        correct=correct,
        parsed=None if parse_failure else "x",
        parse_failure=parse_failure,
        recall=score if recall is None else recall,
        f1=score if f1 is None else f1,
    )


def S(kind: str, **meta) -> Sample:
    return Sample(id=kind, images=[], question="q", answer="a", kind=kind, meta=meta)  # type: ignore[arg-type]


def test_score_benchmark_hand_computed():
    # 3 closed (2 right, 1 parse failure) + 2 open (1 right; recalls 1.0 and 0.5; f1 1.0 and 0.25)
    samples = [S("yes_no"), S("choice"), S("yes_no"), S("open"), S("open")]
    judgements = [J(True), J(True), J(False, parse_failure=True), J(True), J(False, recall=0.5, f1=0.25)]
    scores = score_benchmark(judgements, samples, kept_ratios=[0.5, 1.0, 0.75, 0.25, 0.5])
    assert scores["n"] == 5 and scores["n_closed"] == 3 and scores["n_open"] == 2
    assert scores["accuracy"] == pytest.approx(100 * 3 / 5)
    assert scores["closed_accuracy"] == pytest.approx(100 * 2 / 3)
    assert scores["open_accuracy"] == pytest.approx(50.0)
    assert scores["parse_failures"] == 1 and scores["parse_failure_reasons"] == {"unknown": 1}
    assert scores["open_recall"] == pytest.approx(75.0)
    assert scores["open_f1"] == pytest.approx(62.5)
    assert scores["kept_token_ratio"] == pytest.approx(0.6)


def test_score_benchmark_missing_question_types_give_none():
    scores = score_benchmark([J(True), J(False)], [S("choice"), S("choice")])
    assert scores["accuracy"] == pytest.approx(50.0)
    assert scores["open_accuracy"] is None and scores["open_recall"] is None and scores["open_f1"] is None
    assert scores["kept_token_ratio"] is None
    only_open = score_benchmark([J(True)], [S("open")])
    assert only_open["closed_accuracy"] is None and only_open["open_accuracy"] == pytest.approx(100.0)


def test_benchmark_closed_label_overrides_kind_for_the_split():
    # SLAKE: a CLOSED question judged as text ("liver or spleen?") counts as closed.
    sample = S("open", closed=True)
    assert is_closed(sample) and not sample.closed
    scores = score_benchmark([J(True), J(False)], [sample, S("open", closed=False)])
    assert (scores["n_closed"], scores["n_open"]) == (1, 1)
    assert scores["closed_accuracy"] == pytest.approx(100.0) and scores["open_accuracy"] == pytest.approx(0.0)


def test_score_benchmark_rejects_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="pair one to one"):
        score_benchmark([J(True)], [S("open"), S("open")])
    with pytest.raises(ValueError, match="empty"):
        score_benchmark([], [])
    with pytest.raises(ValueError, match="kept_ratios"):
        score_benchmark([J(True)], [S("open")], kept_ratios=[0.5, 0.5])


def test_aggregate_adds_the_mean_accuracy_over_benchmarks():
    scores = {"a": {"accuracy": 60.0}, "b": {"accuracy": 70.0}, "c": {"accuracy": 80.0}}
    agg = aggregate(scores)
    assert agg["mean"] == pytest.approx(70.0)
    assert agg["a"] == {"accuracy": 60.0} and "mean" not in scores  # input left untouched
    # aggregating an aggregate does not count the old mean as a benchmark
    assert aggregate({**agg, "d": {"accuracy": 10.0}})["mean"] == pytest.approx(55.0)
    with pytest.raises(ValueError, match="nothing to average"):
        aggregate({})


def test_relative_performance_both_readings_hand_computed():
    run = {"a": {"accuracy": 60.0}, "b": {"accuracy": 30.0}, "only_run": {"accuracy": 99.0}}
    base = {"a": {"accuracy": 50.0}, "b": {"accuracy": 40.0}, "only_base": {"accuracy": 1.0}}
    rel = relative_performance(run, base)
    # per benchmark: a 120%, b 75%; mean of ratios 97.5%; ratio of means 45 / 45 = 100%
    assert rel["per_benchmark"] == {"a": pytest.approx(120.0), "b": pytest.approx(75.0)}
    assert rel["mean_of_ratios"] == pytest.approx(97.5)
    assert rel["ratio_of_means"] == pytest.approx(100.0)
    assert rel["benchmarks"] == ["a", "b"] and rel["skipped"] == {}
    # the other way round the ratios invert: a 5/6, b 4/3 -> mean 108.33%; means still equal -> 100%
    back = relative_performance(base, run)
    assert back["mean_of_ratios"] == pytest.approx(100 * (50 / 60 + 40 / 30) / 2)
    assert back["ratio_of_means"] == pytest.approx(100.0)


def test_relative_performance_skips_zero_baselines_and_reports_them():
    rel = relative_performance(
        {"a": {"accuracy": 50.0}, "z": {"accuracy": 10.0}, "mean": 30.0},
        {"a": {"accuracy": 25.0}, "z": {"accuracy": 0.0}, "mean": 12.5},
    )
    assert rel["per_benchmark"] == {"a": pytest.approx(200.0)}
    assert list(rel["skipped"]) == ["z"]
    assert rel["ratio_of_means"] == pytest.approx(200.0)


def test_relative_performance_raises_without_common_or_usable_benchmarks():
    with pytest.raises(ValueError, match="no common benchmarks"):
        relative_performance({"a": {"accuracy": 1.0}}, {"b": {"accuracy": 1.0}})
    with pytest.raises(ValueError, match="no benchmark left"):
        relative_performance({"a": {"accuracy": 1.0}}, {"a": {"accuracy": 0.0}})


def test_markdown_table_rows_columns_and_mean():
    rows = {
        "base": aggregate({"a": {"accuracy": 50.0}, "b": {"accuracy": 61.04}}),
        "ours": {"a": {"accuracy": 55.56}},  # b missing
    }
    table = markdown_table(rows, ["a", "b"])
    lines = table.strip().splitlines()
    assert lines[0] == "| run | a | b | mean |"
    assert lines[1] == "|---|---:|---:|---:|"
    assert lines[2] == "| base | 50.0 | 61.0 | 55.5 |"  # mean (50 + 61.04) / 2 = 55.52
    assert lines[3] == "| ours | 55.6 | – | – |"

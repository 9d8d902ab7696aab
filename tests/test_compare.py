"""`vitos compare`: paired intervals from the runs' predictions, the same-questions check, the table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vitos.eval.compare import DifferentQuestionsError, compare_runs, format_comparison, main_compare
from vitos.eval.scoring import questions_digest
from vitos.stats import mcnemar_exact, paired_bootstrap_ratio, wilson_interval


def write_run(folder: Path, verdicts: dict[str, list[int]], mode: str, ids: dict[str, list[str]] | None = None):
    """A run folder as `vitos eval` leaves it: scores.json + <benchmark>/predictions.jsonl."""
    scores: dict = {}
    for name, v in verdicts.items():
        qids = (ids or {}).get(name) or [f"q{i}" for i in range(len(v))]
        (folder / name).mkdir(parents=True)
        with open(folder / name / "predictions.jsonl", "w") as f:
            for qid, c in zip(qids, v):
                f.write(json.dumps({"id": qid, "correct": bool(c)}) + "\n")
        low, high = wilson_interval(sum(v), len(v))
        scores[name] = {
            "accuracy": 100 * sum(v) / len(v), "accuracy_ci95": [100 * low, 100 * high], "n": len(v),
            "kept_token_ratio": 0.5, "questions_sha1": questions_digest(qids),
        }  # fmt: skip
    scores.update(mean=float(np.mean([s["accuracy"] for s in scores.values()])), mode=mode, kept_token_ratio=0.5)
    (folder / "scores.json").write_text(json.dumps(scores))


def verdict_pair(n: int, acc_a: float, acc_b: float, seed: int) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(seed)
    return list((rng.random(n) < acc_a).astype(int)), list((rng.random(n) < acc_b).astype(int))


def test_paired_intervals_per_benchmark_and_for_both_averages(tmp_path):
    a1, b1 = verdict_pair(300, 0.7, 0.6, 1)
    a2, b2 = verdict_pair(200, 0.5, 0.5, 2)
    write_run(tmp_path / "vitos", {"vqa_rad": a1, "slake": a2}, "vitos")
    write_run(tmp_path / "full", {"vqa_rad": b1, "slake": b2}, "full")
    result = compare_runs(tmp_path / "vitos", tmp_path / "full", n_boot=500, seed=3)
    rows = {r["benchmark"]: r for r in result["rows"]}
    vqa = rows["vqa_rad"]
    assert vqa["n_paired"] == 300
    assert vqa["relative"] == pytest.approx(100 * np.mean(a1) / np.mean(b1))
    low, high = vqa["relative_ci95"]
    assert low < vqa["relative"] < high
    order = sorted(range(300), key=lambda i: f"q{i}")  # compare pairs the verdicts in sorted-id order
    x, y = np.array(a1)[order], np.array(b1)[order]
    assert vqa["mcnemar_p"] == pytest.approx(mcnemar_exact(int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())))
    # the per-benchmark interval is stats.paired_bootstrap_ratio on the verdicts, in percent
    import zlib

    _, l2, h2, p2 = paired_bootstrap_ratio(x, y, n_boot=500, seed=3 + zlib.crc32(b"vqa_rad"))
    assert (low, high) == pytest.approx((100 * l2, 100 * h2)) and vqa["relative_p"] == pytest.approx(p2)
    for key, value in (("mean_of_ratios", result["mean_of_ratios"]), ("ratio_of_means", result["ratio_of_means"])):
        ci = result[f"{key}_ci95"]
        assert ci[0] < value < ci[1]
    assert compare_runs(tmp_path / "vitos", tmp_path / "full", n_boot=500, seed=3) == result  # deterministic
    table = format_comparison(result)
    assert "| vqa_rad | 300 |" in table and "mean of per-benchmark ratios" in table and "[" in table


def test_identical_runs_are_on_par_with_p_one(tmp_path):
    a, _ = verdict_pair(100, 0.6, 0.6, 4)
    write_run(tmp_path / "a", {"pmc_vqa": a}, "vitos")
    write_run(tmp_path / "b", {"pmc_vqa": a}, "full")
    row = compare_runs(tmp_path / "a", tmp_path / "b", n_boot=200)["rows"][0]
    assert row["relative"] == pytest.approx(100.0) and row["relative_ci95"] == pytest.approx([100.0, 100.0])
    assert row["relative_p"] == 1.0 and row["mcnemar_p"] == 1.0


def test_different_question_sets_are_refused_unless_allowed(tmp_path, capsys):
    write_run(tmp_path / "a", {"vqa_rad": [1, 0, 1, 1]}, "vitos", ids={"vqa_rad": ["1", "2", "3", "4"]})
    write_run(tmp_path / "b", {"vqa_rad": [1, 1, 0]}, "full", ids={"vqa_rad": ["1", "2", "3"]})
    with pytest.raises(DifferentQuestionsError, match=r"vqa_rad \(4 vs 3 questions, 3 in common\)"):
        compare_runs(tmp_path / "a", tmp_path / "b")
    assert main_compare([str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "--allow-different-questions" in capsys.readouterr().err
    result = compare_runs(tmp_path / "a", tmp_path / "b", allow_different_questions=True, n_boot=100)
    assert result["rows"][0]["n_paired"] == 3 and "common questions" in result["notes"][0]
    assert main_compare([str(tmp_path / "a"), str(tmp_path / "b"), "--allow-different-questions", "--n-boot", "50"]) == 0
    assert "note: different question sets" in capsys.readouterr().out


def test_without_predictions_the_question_digests_are_compared(tmp_path):
    write_run(tmp_path / "a", {"slake": [1, 0, 1]}, "vitos")
    write_run(tmp_path / "b", {"slake": [1, 1, 1]}, "full", ids={"slake": ["x", "y", "z"]})
    write_run(tmp_path / "c", {"slake": [0, 0, 1]}, "full")
    for run in "abc":
        (tmp_path / run / "slake" / "predictions.jsonl").unlink()
    with pytest.raises(DifferentQuestionsError, match="questions_sha1 differ"):
        compare_runs(tmp_path / "a", tmp_path / "b")
    result = compare_runs(tmp_path / "a", tmp_path / "c")
    assert result["rows"][0]["n_paired"] == 0 and result["rows"][0]["relative_ci95"] is None
    assert result["mean_of_ratios_ci95"] is None and "no paired intervals" in result["notes"][0]

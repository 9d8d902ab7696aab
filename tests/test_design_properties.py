"""The embedded benchmark's design properties on the shipped warm start (issue 12, item 1), each with its bound.

The shipped warm start (vitos.demo BUILTIN_WARM_START) is what `vitos demo` writes with its defaults
(PHANTOM_V3 data, seed 0). On 300 held-out test questions of that data:

    oracle   the warm start's reader given the ground-truth boxes       >= 85 %
    full     the same model on all visual tokens                         >= 15 points below the oracle
    vitos    the same model with its own boxes (ground -> prune -> answer) >= 10 points below the oracle
    majority the per-type majority training answer                       below vitos
    centre   a centre crop at ViToS's per-question budget covers all the evidence's cells for <= 5 %
             of questions

What fails here if the benchmark degrades: distractors that a reader of all tokens can tell from lesions
(full catches up with oracle), a reader that cannot read (oracle < 85 %), a warm start whose grounding
already matches the oracle (no room for RL), a task a centre crop solves.
"""

from __future__ import annotations

import pytest
import torch

from vitos.data.medphantom import PHANTOM_V3, PhantomConfig, generate

N_TEST = 300


@pytest.fixture(scope="module")
def measured():
    from vitos.demo import BUILTIN_WARM_START, DemoConfig, eval_settings
    from vitos.models import load_model
    from vitos.pipeline import encode
    from vitos.study.evaluate import baseline_keeps, box_keeps, evaluate_majority, evaluate_mode

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        demo = DemoConfig()
        data = generate(PhantomConfig(**{**PHANTOM_V3, "question_mix": dict(demo.question_mix), "seed": 0,
                                         "n_train": 400, "n_test": N_TEST}))
        train, test = data["train"], data["test"]
        images = [list(t.images) for t in test]
        s = eval_settings(demo)
        model = load_model(str(BUILTIN_WARM_START), dtype="float32", device="cpu")
        enc = encode(model, images)
        vitos = evaluate_mode(model, test, images, "vitos", s, encoded=enc)
        full = evaluate_mode(model, test, images, "full", s, encoded=enc)
        oracle = evaluate_mode(model, test, images, "baseline", s, box_keeps([t.boxes for t in test], enc, s), encoded=enc)
        budgets = [r["visual_tokens_kept"] for r in vitos["records"]]
        evidence = box_keeps([t.boxes for t in test], enc, s)
        crops = baseline_keeps("center", enc, budgets, 0)
        covered = [bool((e[0] & ~c[0]).sum() == 0) for e, c in zip(evidence, crops)]
        return {"oracle": oracle["accuracy"], "full": full["accuracy"], "vitos": vitos["accuracy"],
                "majority": evaluate_majority(test, train)["accuracy"], "center_covers": sum(covered) / len(covered)}
    finally:
        torch.set_num_threads(threads)


def test_the_reader_given_ground_truth_boxes_scores_at_least_85_percent(measured):
    assert measured["oracle"] >= 0.85, measured


def test_all_tokens_mislead_the_same_model_by_at_least_15_points(measured):
    assert measured["oracle"] - measured["full"] >= 0.15, measured


def test_the_warm_starts_own_boxes_leave_at_least_10_points_for_rl(measured):
    assert measured["oracle"] - measured["vitos"] >= 0.10, measured


def test_the_warm_start_is_above_the_majority_answer(measured):
    assert measured["vitos"] > measured["majority"], measured


def test_a_centre_crop_at_the_vitos_budget_rarely_covers_the_evidence(measured):
    assert measured["center_covers"] <= 0.05, measured

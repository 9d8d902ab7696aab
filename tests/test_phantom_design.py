"""MedPhantom's design properties on the data alone (the study's data, PHANTOM_V3): the evidence can sit
anywhere, distractors look like lesions on organ tissue and never share a token cell with the evidence,
a centre crop does not find the evidence, and answers are balanced per question type.

The properties that need a model (oracle reader >= 85 %, >= 15 points above full tokens, ...) are tested
on the shipped warm start in tests/test_design_properties.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitos.data.medphantom import PHANTOM_V3, PhantomConfig, generate
from vitos.eval.baselines import center_keep, random_keep
from vitos.pruning.boxes import boxes_to_keep_mask
from vitos.study.evaluate import answer_balance

GRID = (8, 8)  # 224 px / 28 px merged tokens


@pytest.fixture(scope="module")
def v3():
    return generate(PhantomConfig(**PHANTOM_V3, seed=5, n_train=400, n_test=0))["train"]


def _hull_px(box: list[float], size: int = 224, cell: float = 28.0) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (v * size for v in box)
    return (math.floor(x1 / cell) * cell, math.floor(y1 / cell) * cell,
            math.ceil(x2 / cell) * cell, math.ceil(y2 / cell) * cell)


def _disc_hits_rect(c: list[float], r: float, rect: tuple[float, float, float, float]) -> bool:
    nx, ny = min(max(c[0], rect[0]), rect[2]), min(max(c[1], rect[1]), rect[3])
    return math.hypot(c[0] - nx, c[1] - ny) < r


def test_no_distractor_or_its_halo_enters_a_token_cell_of_the_evidence_box(v3):
    halo = PHANTOM_V3["decoy_halo"]
    for s in v3:
        hull = _hull_px(s.boxes[0])
        for d in s.meta["distractors"]:
            assert not _disc_hits_rect(d["center"], d["radius"] + halo, hull), (s.id, d)


def test_with_box_clearance_distractors_do_share_cells_with_the_box():
    """The check above can fail: under the legacy 'box' clearance, distractors do fall in the box's cells."""
    legacy = generate(PhantomConfig(seed=5, n_train=200, n_test=0))["train"]
    hits = sum(_disc_hits_rect(d["center"], d["radius"], _hull_px(s.boxes[0])) for s in legacy for d in s.meta["distractors"])
    assert hits > 10


def test_distractors_sit_on_organ_tissue_and_lesions_do_too(v3):
    """Grey level of a ring around each spot (radius + 2 .. radius + 5 px): distractors (halo) and lesions
    (organ interior) both sit on organ tissue (~0.50), not on body tissue (~0.33)."""
    xs, ys = np.meshgrid(np.arange(224) + 0.5, np.arange(224) + 0.5)

    def ring(grey: np.ndarray, spot: dict) -> float:
        d = np.hypot(xs - spot["center"][0], ys - spot["center"][1])
        return float(grey[(d > spot["radius"] + 2) & (d < spot["radius"] + 5)].mean())

    dis, les = [], []
    for s in v3[:120]:
        grey = np.asarray(s.images[0])[..., 0] / 255.0
        dis += [ring(grey, d) for d in s.meta["distractors"]]
        les += [ring(grey, l) for l in s.meta["lesions"]]
    assert abs(np.mean(dis) - 0.50) < 0.05 and abs(np.mean(les) - 0.50) < 0.08, (np.mean(dis), np.mean(les))
    no_halo = generate(PhantomConfig(**{**PHANTOM_V3, "decoy_halo": 0.0}, seed=5, n_train=60, n_test=0))["train"]
    bare = [ring(np.asarray(s.images[0])[..., 0] / 255.0, d) for s in no_halo for d in s.meta["distractors"]]
    assert np.mean(bare) < 0.42, "without the halo a distractor's surroundings are body tissue"


def test_evidence_is_spread_over_the_field_of_view(v3):
    """Mean distance of the organ from the image centre, as a fraction of the side. The organ is placed
    uniformly where its padded box fits in the body, a disc of radius ~0.30 (mean distance 2/3 of it, 0.20);
    the first MedPhantom's smaller body put it at 0.13 (measured); a pull towards the centre shrinks it."""
    dist = [math.hypot(s.meta["organ_center"][0] / 224 - 0.5, s.meta["organ_center"][1] / 224 - 0.5) for s in v3]
    assert np.mean(dist) > 0.18, np.mean(dist)
    pulled = generate(PhantomConfig(**{**PHANTOM_V3, "center_bias": 0.8}, seed=5, n_train=200, n_test=0))["train"]
    dist_pulled = [math.hypot(s.meta["organ_center"][0] / 224 - 0.5, s.meta["organ_center"][1] / 224 - 0.5) for s in pulled]
    assert np.mean(dist_pulled) < 0.5 * np.mean(dist)


def test_a_centre_crop_of_the_evidence_size_covers_the_evidence_no_more_than_chance(v3):
    """Bound: a centre crop with as many tokens as the evidence box covers all of the box's cells for at most
    5 % of questions, and at most 5 points more often than a random crop of the same size."""
    gen = torch.Generator().manual_seed(0)
    center = rand = 0
    for s in v3:
        evidence = boxes_to_keep_mask(s.boxes, GRID, margin=0.0, min_keep=0)  # (8, 8) bool
        k = int(evidence.sum())
        center += bool((evidence & ~center_keep(GRID, k)).sum() == 0)
        rand += bool((evidence & ~random_keep(GRID, k, gen)).sum() == 0)
    assert center / len(v3) <= 0.05 and center / len(v3) <= rand / len(v3) + 0.05, (center, rand)


def test_answers_are_balanced_within_every_question_type(v3):
    balance = answer_balance(v3)
    assert set(balance) == {"presence", "brightness_choice", "brightness_open", "count"}
    for qtype, shares in balance.items():
        # pairs (2k, 2k+1): exactly half the organs are lesion-free, so no answer exceeds ~50 %
        assert max(shares.values()) <= 0.56, (qtype, shares)


def test_each_distractor_is_a_small_rimmed_look_alike_organ(v3):
    """With decoy_rim, the halo's outer 3 px are the organ's bright rim (0.72), like the target organ's."""
    halo = PHANTOM_V3["decoy_halo"]
    xs, ys = np.meshgrid(np.arange(224) + 0.5, np.arange(224) + 0.5)
    rims = []
    for s in v3[:80]:
        grey = np.asarray(s.images[0])[..., 0] / 255.0
        for d in s.meta["distractors"]:
            dist = np.hypot(xs - d["center"][0], ys - d["center"][1])
            rims.append(float(grey[(dist > d["radius"] + halo - 2.5) & (dist < d["radius"] + halo - 0.5)].mean()))
    assert abs(np.mean(rims) - 0.72) < 0.06, np.mean(rims)

"""MedPhantom: determinism, answers that follow from the evidence region, valid boxes, balance, round trip."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitos.data.medphantom import PhantomConfig, generate, make_sample, write_dataset
from vitos.data.readers import read_rows
from vitos.data.sample import Sample

# Spot grey levels are ~0.05 (dark) and ~0.96 (bright); all other tissue in the body stays within
# about [0.17, 0.76] after 3x3 averaging, so these thresholds find spots by pixel alone.
DARK_SPOT = 0.12
BRIGHT_SPOT = 0.85


@pytest.fixture(scope="module")
def splits() -> dict[str, list[Sample]]:
    return generate(PhantomConfig(seed=3, n_train=240, n_test=40))


def _grey(sample: Sample) -> np.ndarray:
    rgb = np.asarray(sample.images[0]).astype(np.float64) / 255.0  # (H, W, 3)
    assert rgb.shape[2] == 3 and np.array_equal(rgb[..., 0], rgb[..., 1]), "MedPhantom images are grey in RGB"
    return rgb[..., 0]


def _mean3(grey: np.ndarray) -> np.ndarray:
    """3 x 3 box mean (suppresses the pixel noise); same shape as grey."""
    p = np.pad(grey, 1, mode="edge")
    h, w = grey.shape
    return sum(p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0


def _box_px(sample: Sample) -> tuple[float, float, float, float]:
    size = sample.images[0].size[0]
    x1, y1, x2, y2 = sample.boxes[0]
    return x1 * size, y1 * size, x2 * size, y2 * size


def _inside_organ(meta: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Normalised radius of points in the organ's rotated frame (< 1 inside)."""
    (cx, cy), (a, b), th = meta["organ_center"], meta["organ_axes"], math.radians(meta["organ_angle_deg"])
    u = (x - cx) * math.cos(th) + (y - cy) * math.sin(th)
    v = -(x - cx) * math.sin(th) + (y - cy) * math.cos(th)
    return np.hypot(u / a, v / b)


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    cfg = PhantomConfig(seed=11, n_train=6, n_test=4)
    write_dataset(cfg, tmp_path / "a")
    write_dataset(cfg, tmp_path / "b")
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 6 + 4 + 3  # images + two jsonl + config
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_a_sample_depends_only_on_seed_split_and_index() -> None:
    small = generate(PhantomConfig(seed=5, n_train=4, n_test=2))
    large = generate(PhantomConfig(seed=5, n_train=10, n_test=6))
    for split in ("train", "test"):
        for a, b in zip(small[split], large[split]):
            assert (a.id, a.question, a.answer, a.boxes, a.meta) == (b.id, b.question, b.answer, b.boxes, b.meta)
            assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))


def test_other_seed_and_other_split_give_other_images() -> None:
    cfg = PhantomConfig(seed=0)
    a = make_sample(cfg, "train", 0)
    assert not np.array_equal(np.asarray(a.images[0]), np.asarray(make_sample(PhantomConfig(seed=1), "train", 0).images[0]))
    assert not np.array_equal(np.asarray(a.images[0]), np.asarray(make_sample(cfg, "test", 0).images[0]))


# -------------------------------------------------------------------------------- answers and evidence


def test_answer_follows_from_the_lesions_in_the_organ(splits: dict[str, list[Sample]]) -> None:
    for sample in splits["train"] + splits["test"]:
        lesions = sample.meta["lesions"]
        brightness = lesions[0]["brightness"] if lesions else "none"
        qtype = sample.meta["question_type"]
        if qtype == "presence":
            assert sample.kind == "yes_no" and sample.answer == ("yes" if lesions else "no")
        elif qtype == "count":
            assert sample.kind == "open" and sample.answer == str(len(lesions))
        elif qtype == "brightness_open":
            assert sample.kind == "open" and sample.answer == brightness
        else:
            assert sample.kind == "choice" and sample.options is not None
            assert sample.options[sample.answer] == brightness
        assert sample.meta["organ"] in sample.question
        assert all(l["brightness"] == brightness for l in lesions), "lesions of one organ share a brightness"


def test_lesions_lie_inside_the_organ_and_box_and_distractors_outside_the_box(splits: dict[str, list[Sample]]) -> None:
    phi = np.linspace(0, 2 * math.pi, 32, endpoint=False)
    for sample in splits["train"]:
        meta = sample.meta
        x1, y1, x2, y2 = _box_px(sample)
        for lesion in meta["lesions"]:
            (cx, cy), r = lesion["center"], lesion["radius"]
            xs, ys = cx + r * np.cos(phi), cy + r * np.sin(phi)  # the disc's outline
            assert (_inside_organ(meta, xs, ys) < 1.0).all(), sample.id
            assert (xs > x1).all() and (xs < x2).all() and (ys > y1).all() and (ys < y2).all(), sample.id
        for spot in meta["distractors"]:
            (cx, cy), r = spot["center"], spot["radius"]
            # Distance from the disc centre to the box must exceed the radius: no overlap at all.
            gap = math.hypot(max(x1 - cx, 0, cx - x2), max(y1 - cy, 0, cy - y2))
            assert gap > r, sample.id


def test_pixels_in_the_evidence_box_decide_the_answer(splits: dict[str, list[Sample]]) -> None:
    """Reading only the box's pixels recovers the lesion brightness; the box is where the answer lives."""
    for sample in splits["train"]:
        m = _mean3(_grey(sample))
        x1, y1, x2, y2 = (int(round(v)) for v in _box_px(sample))
        window = m[y1:y2, x1:x2]
        lesions = sample.meta["lesions"]
        brightness = lesions[0]["brightness"] if lesions else "none"
        assert (window.min() < DARK_SPOT) == (brightness == "dark"), sample.id
        assert (window.max() > BRIGHT_SPOT) == (brightness == "bright"), sample.id


def test_every_image_shows_the_same_spots_whatever_the_answer(splits: dict[str, list[Sample]]) -> None:
    """The distractor design: 2 dark + 2 bright spots in every image, so whole-image content carries no answer."""
    for sample in splits["train"]:
        spots = sample.meta["lesions"] + sample.meta["distractors"]
        assert Counter(s["brightness"] for s in spots) == {"dark": 2, "bright": 2}, sample.id
        m = _mean3(_grey(sample))
        for spot in spots:  # each recorded spot is really drawn with its brightness
            cx, cy = (int(v) for v in spot["center"])
            level = m[cy, cx]
            assert level < DARK_SPOT if spot["brightness"] == "dark" else level > BRIGHT_SPOT, (sample.id, spot)
        assert m.min() < DARK_SPOT and m.max() > BRIGHT_SPOT


def test_boxes_are_valid_and_contain_the_whole_organ(splits: dict[str, list[Sample]]) -> None:
    phi = np.linspace(0, 2 * math.pi, 90, endpoint=False)
    for sample in splits["train"] + splits["test"]:
        assert len(sample.boxes) == 1
        bx1, by1, bx2, by2 = sample.boxes[0]
        assert 0.0 <= bx1 < bx2 <= 1.0 and 0.0 <= by1 < by2 <= 1.0
        meta = sample.meta
        (cx, cy), (a, b), th = meta["organ_center"], meta["organ_axes"], math.radians(meta["organ_angle_deg"])
        ex = cx + a * np.cos(phi) * math.cos(th) - b * np.sin(phi) * math.sin(th)  # organ outline
        ey = cy + a * np.cos(phi) * math.sin(th) + b * np.sin(phi) * math.cos(th)
        x1, y1, x2, y2 = _box_px(sample)
        assert ex.min() >= x1 and ex.max() <= x2 and ey.min() >= y1 and ey.max() <= y2, sample.id
        # A small region: the evidence is local (organ 40-70 px in a 224 px image).
        assert (bx2 - bx1) * (by2 - by1) < 0.15


# ------------------------------------------------------------------------------------------- balance


def test_lesion_presence_is_balanced_within_every_question_type(splits: dict[str, list[Sample]]) -> None:
    for split, samples in splits.items():
        per_type: dict[str, Counter] = {}
        for s in samples:
            per_type.setdefault(s.meta["question_type"], Counter())[bool(s.meta["lesions"])] += 1
        for qtype, counts in per_type.items():
            assert counts[True] == counts[False], (split, qtype, counts)
        yes_no = Counter(s.answer for s in samples if s.kind == "yes_no")
        assert yes_no["yes"] == yes_no["no"] > 0


def test_question_mix_and_ids_follow_the_config(splits: dict[str, list[Sample]]) -> None:
    train = splits["train"]
    assert [s.id for s in train[:3]] == ["phantom-train-000000", "phantom-train-000001", "phantom-train-000002"]
    assert len(train) == 240 and len(splits["test"]) == 40
    share = Counter(s.meta["question_type"] for s in train)
    assert abs(share["presence"] / len(train) - 0.4) < 0.15
    assert set(share) == {"presence", "brightness_choice", "brightness_open", "count"}
    only = generate(PhantomConfig(n_train=8, n_test=0, question_mix={"count": 1.0}))["train"]
    assert {s.meta["question_type"] for s in only} == {"count"}


def test_shuffled_options_still_point_at_the_right_text() -> None:
    cfg = PhantomConfig(seed=2, n_train=40, n_test=0, shuffle_options=True, question_mix={"brightness_choice": 1.0})
    samples = generate(cfg)["train"]
    orders = {tuple(s.options.values()) for s in samples}
    assert len(orders) > 1
    for s in samples:
        lesions = s.meta["lesions"]
        assert s.options[s.answer] == (lesions[0]["brightness"] if lesions else "none")


def test_thinking_names_the_organ_and_what_lies_inside_it(splits: dict[str, list[Sample]]) -> None:
    words = {0: "no spot", 1: "one", 2: "two"}
    for s in splits["train"][:40]:
        text = s.meta["thinking"]
        assert s.meta["organ"] in text and s.meta["location"] in text
        assert words[len(s.meta["lesions"])] in text
        if s.meta["lesions"]:
            assert s.meta["lesions"][0]["brightness"] in text


def test_bad_config_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="question_mix"):
        PhantomConfig(question_mix={"shape": 1.0})
    with pytest.raises(ValueError, match="max_lesions"):
        PhantomConfig(max_lesions=3, spots_per_brightness=2)


# ----------------------------------------------------------------------------------------- round trip


def test_written_dataset_reads_back_as_equal_samples(tmp_path: Path) -> None:
    cfg = PhantomConfig(seed=7, n_train=12, n_test=4)
    paths = write_dataset(cfg, tmp_path / "phantom")
    made = generate(cfg)
    assert set(paths) == {"train", "test"}
    for split, path in paths.items():
        back = read_rows(path)
        assert back.skipped == []
        assert len(back.samples) == len(made[split])
        for a, b in zip(made[split], back.samples):
            assert (a.id, a.question, a.answer, a.kind, a.options, a.boxes, a.meta) == (
                b.id, b.question, b.answer, b.kind, b.options, b.boxes, b.meta
            )
            assert np.array_equal(np.asarray(a.images[0]), np.asarray(Image.open(b.images[0]).convert("RGB")))

"""MedPhantom: a procedural, seeded data set of scan-like images whose answers live in one small region.

Why it exists: ViToS keeps only the visual tokens inside predicted evidence boxes. To see that idea work
(and to test the whole pipeline offline, on a CPU, with a tiny model) we need questions whose answer is
decided by a small region while the rest of the image actively misleads. MedPhantom is that data set.
It is written in the authors' row format (`vitos.data.readers.write_rows`), so `vitos train` and
`vitos eval` consume it exactly as they consume real data.

One image (224 x 224 by default; grey rendered to RGB), sketched::

    +----------------------------------------+
    |        .-""""""""""""""""""-.           |    body: textured grey ellipse with a bright skin line
    |     .-'     o                '-.        |    o / *  lesion-like spots: dark (o) or bright (*)
    |    /   ,--.        *            \\      |    ,--.   the TARGET ORGAN: an ellipse with a bright
    |   |   ( *  )  <- target organ    |     |   (    )  rim, 40-70 px, anywhere in the body
    |   |    `--'   ..evidence box..   |     |    `--'
    |    \\        (   )      o        /      |    (   )  a plain "other organ" (no rim)
    |     '-.          ( ## )      .-'        |    ##     spine, always at the bottom
    |        '-..________________..-'         |
    +----------------------------------------+

Rules:
  * Every image holds exactly ``spots_per_brightness`` dark and as many bright spots (default 2 + 2).
  * The target organ holds 0, 1 or 2 of them (all of one brightness): those are its *lesions*. The
    others are *distractors*, placed in the body but outside the evidence box.
  * The question asks about the target organ only: "Is there a lesion in the kidney?" (yes_no), "What is
    the brightness of the lesion in the kidney?" (choice: A. dark  B. bright  C. none, or open), "How many
    lesions are in the kidney?" (open: 0, 1, 2). Answers come from small closed vocabularies, so exact
    match is meaningful.
  * The evidence box (one per question) is the organ's axis-aligned extent padded by ``box_pad`` px,
    normalised to [0, 1].
  * Yes/no is balanced by construction: samples 2k and 2k+1 form a pair with the same question type,
    one with lesions and one without (so every question type sees 50 % lesion-free organs).

Why a model that reads the whole image is misled, and why keeping the evidence tokens helps:
  the image-wide *content* is the same for every answer: 2 dark + 2 bright spots, one rimmed organ, the
  same body and spine. Whether the answer is "yes"/"dark"/"2" or "no"/"none"/"0" only changes *where* the
  spots lie relative to the rim. A model that pools all visual tokens (bag-of-features) therefore sees no
  difference between answers and sits at chance (50 % yes/no; it cannot count lesions, since the spot
  count is constant). Answering needs a spatial relation ("spot inside the rim"), which a model with all
  64 tokens must learn while ignoring four look-alike spots. Keep only the tokens in the evidence box and
  the distractors are gone (they lie outside the box by construction): the question reduces to "is
  there a spot here, and is it dark or bright" - a local, easy task. That gap is the one ViToS exploits.
  The organ name (kidney, liver, ...) is a label drawn at random; it does not change the drawing.

Speed: drawing is numpy-vectorised (broadcast ellipses, local windows for organ and spots). On the
project's 2-core CPU machines (shared, noisy): 1000 images in ~5 s in memory, ~14 s written as PNG. Determinism: sample i of a split depends only on (seed, split, i), so the same
seed gives identical pixels and files, and a larger ``n_train`` extends a smaller one.

Usage:
    from vitos.data.medphantom import PhantomConfig, generate, write_dataset
    splits = generate(PhantomConfig(seed=0, n_train=1000, n_test=200))  # {"train": [...], "test": [...]}
    paths = write_dataset(PhantomConfig(seed=0), "data/phantom")        # train.jsonl, test.jsonl, images/
    # sample.meta["thinking"] holds a short reasoning text usable as a warm-start (SFT) target.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitos.data.readers import write_rows
from vitos.data.sample import Sample

GENERATOR_VERSION = "medphantom-v1"

PHANTOM_V2: dict[str, Any] = {
    "body_axes": (0.47, 0.49, 0.45, 0.48),
    "organ_diameter": (30.0, 46.0),
    "center_bias": 0.0,
    "distractor_clearance": "cells",
}
"""Overrides of PhantomConfig for a task on which grounding decides the answer (`vitos study`): the body
fills the field of view and the organ is smaller, so it can sit anywhere (a centre crop misses it), and no
distractor shares a token cell with the evidence box (the oracle reader sees only evidence)."""
PHANTOM_V3: dict[str, Any] = {**PHANTOM_V2, "decoy_halo": 8.0, "decoy_rim": True}
"""PHANTOM_V2 plus a small rimmed look-alike organ around every distractor (`decoy_halo`, `decoy_rim`): a
lesion's token and a distractor's token look alike, so reading all tokens misleads (the demo's and the
study's data; see README)."""
SPLITS = ("train", "test")

# Question types: name -> (kind, template). The organ name fills {organ}.
QUESTION_TYPES: dict[str, tuple[str, str]] = {
    "presence": ("yes_no", "Is there a lesion in the {organ}?"),
    "brightness_choice": ("choice", "What is the brightness of the lesion in the {organ}?"),
    "brightness_open": ("open", "What is the brightness of the lesion in the {organ}? Answer dark, bright or none."),
    "count": ("open", "How many lesions are in the {organ}? Answer with a number."),
}
BRIGHTNESS_OPTIONS = ("dark", "bright", "none")

# Grey levels in [0, 1]. Chosen so that spots are the only pixels darker than ~0.2 or brighter than
# ~0.85 inside the body (the organ rim stays below that), which the tests use to find lesions by pixel.
_BODY_LEVEL = 0.33
_FAT_LEVEL = 0.24
_SKIN_LEVEL = 0.6
_STRUCTURE_LEVEL = (0.40, 0.50)
_ORGAN_LEVEL = 0.5
_RIM_LEVEL = 0.72
_SPINE_LEVEL = 0.78
_SPOT_LEVEL = {"dark": 0.05, "bright": 0.96}


@dataclass
class PhantomConfig:
    """Everything that defines a MedPhantom data set; lengths are in pixels of a 224-px image and scale
    with `image_size`."""

    seed: int = 0
    """Master seed: sample i of a split depends only on (seed, split, i)."""
    n_train: int = 1000
    """Number of training samples (one question per image)."""
    n_test: int = 200
    """Number of test samples (drawn from a different random stream than train)."""
    image_size: int = 224
    """Side of the square image in pixels (224 = an 8 x 8 grid of Qwen2.5-VL's 28-px merged tokens)."""
    organs: tuple[str, ...] = ("kidney", "liver", "spleen")
    """Names the target organ is called by in the question (a label; the drawing does not depend on it)."""
    organ_diameter: tuple[float, float] = (40.0, 70.0)
    """Range of the target organ's long-axis diameter."""
    p_oval: float = 0.5
    """Probability that the organ is oval (axis ratio 1.3-1.7) rather than round (1.0-1.1)."""
    spot_radius: tuple[float, float] = (4.0, 6.5)
    """Range of spot (lesion and distractor) radii."""
    spots_per_brightness: int = 2
    """Every image holds this many dark and this many bright spots; those outside the organ are the
    distractors (so with 2: 2-4 distractors), keeping image-wide content independent of the answer."""
    max_lesions: int = 2
    """Most lesions inside the organ (1..spots_per_brightness)."""
    p_two_lesions: float = 0.3
    """Probability that an organ with lesions has two (when max_lesions >= 2)."""
    question_mix: dict[str, float] = field(
        default_factory=lambda: {"presence": 0.4, "brightness_choice": 0.3, "brightness_open": 0.15, "count": 0.15}
    )
    """Relative weights of the question types (keys of QUESTION_TYPES); zero-weight types never appear."""
    shuffle_options: bool = False
    """Shuffle the order of choice options (harder: the letter no longer fixes the text)."""
    n_structures: tuple[int, int] = (1, 2)
    """Range of plain, rim-less 'other organs' drawn for clutter."""
    noise_std: float = 0.03
    """Standard deviation of the additive Gaussian pixel noise (grey levels in [0, 1])."""
    texture_std: float = 0.03
    """Amplitude of the smooth tissue texture."""
    box_pad: float = 4.0
    """Padding added around the organ's extent to form the evidence box."""
    center_bias: float = 0.0
    """Pull of the organ's position towards the body centre: 0 = uniform over every position where its
    padded box fits inside the body, 1 = at the centre (positions are shrunk towards it by this factor)."""
    body_axes: tuple[float, float, float, float] = (0.42, 0.47, 0.36, 0.42)
    """Ranges of the body ellipse's semi-axes as fractions of the image side: (x low, x high, y low, y high).
    A larger body leaves the organ more room away from the centre (PHANTOM_V2)."""
    distractor_clearance: str = "box"
    """Where distractor spots may not go: 'box' = the evidence box (+ a spot-sized margin); 'cells' = every
    token cell of side `cell_size` that the box touches, so the tokens a perfect box keeps hold no distractor."""
    decoy_halo: float = 0.0
    """Width of a rim-less disc of organ tissue drawn around every distractor (0 = none). With it, a
    distractor sits on the same tissue as a lesion, so only the organ's bright rim tells them apart: a
    reader of all tokens can no longer tell lesion from distractor by the spot's surroundings."""
    decoy_rim: bool = False
    """Give each distractor's halo the organ's bright rim: a distractor is then a small look-alike organ with
    a spot, and the spot's own token cell (spot, tissue, a rim arc) looks the same for a lesion and for a
    distractor; only the organ's size and the tokens around it tell them apart."""
    cell_size: float = 28.0
    """Side of one merged visual token in pixels (Qwen2.5-VL: 28), for distractor_clearance='cells'."""

    def __post_init__(self) -> None:
        self.organs = tuple(self.organs)
        self.organ_diameter = tuple(self.organ_diameter)  # type: ignore[assignment]
        self.spot_radius = tuple(self.spot_radius)  # type: ignore[assignment]
        self.n_structures = tuple(self.n_structures)  # type: ignore[assignment]
        unknown = set(self.question_mix) - set(QUESTION_TYPES)
        if unknown:
            raise ValueError(f"question_mix has unknown types {sorted(unknown)}; use keys of {sorted(QUESTION_TYPES)}")
        if not any(w > 0 for w in self.question_mix.values()) or any(w < 0 for w in self.question_mix.values()):
            raise ValueError(f"question_mix weights must be >= 0 with at least one > 0, got {self.question_mix}")
        if not 1 <= self.max_lesions <= self.spots_per_brightness:
            raise ValueError(
                f"need 1 <= max_lesions ({self.max_lesions}) <= spots_per_brightness ({self.spots_per_brightness}): "
                "lesions are taken from the spots of one brightness"
            )
        if self.image_size < 64:
            raise ValueError(f"image_size {self.image_size} is too small to draw an organ and spots; use >= 64")
        if not self.organs:
            raise ValueError("organs must name at least one organ")
        self.body_axes = tuple(self.body_axes)  # type: ignore[assignment]
        if self.decoy_halo < 0:
            raise ValueError(f"decoy_halo must be >= 0 (pixels), got {self.decoy_halo}")
        if not 0.0 <= self.center_bias <= 1.0:
            raise ValueError(f"center_bias must be in [0, 1], got {self.center_bias}")
        if self.distractor_clearance not in ("box", "cells"):
            raise ValueError(f"distractor_clearance must be 'box' or 'cells', got {self.distractor_clearance!r}")
        lo_x, hi_x, lo_y, hi_y = self.body_axes
        if not (0 < lo_x <= hi_x <= 0.5 and 0 < lo_y <= hi_y <= 0.5):
            raise ValueError(f"body_axes must be 0 < low <= high <= 0.5 for x and y, got {self.body_axes}")
        if self.n_train < 0 or self.n_test < 0:
            raise ValueError(f"n_train and n_test must be >= 0, got {self.n_train}, {self.n_test}")


# --------------------------------------------------------------------------------------------- public API


def generate(cfg: PhantomConfig) -> dict[str, list[Sample]]:
    """Generate both splits in memory: {'train': [...], 'test': [...]} with PIL RGB images."""
    return {split: list(iter_split(cfg, split)) for split in SPLITS}


def write_dataset(cfg: PhantomConfig, out_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Write ``out_dir/{train,test}.jsonl``, ``out_dir/images/*.png`` and ``out_dir/phantom_config.json``.

    Returns {'train': path, 'test': path}. Samples are streamed to disk, so memory stays small.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {split: write_rows(iter_split(cfg, split), out / f"{split}.jsonl") for split in SPLITS}
    with open(out / "phantom_config.json", "w", encoding="utf-8") as fh:
        json.dump({"generator": GENERATOR_VERSION, **asdict(cfg)}, fh, indent=1)
    return paths


def iter_split(cfg: PhantomConfig, split: str) -> Iterator[Sample]:
    """Yield the samples of one split in order (ids ``phantom-{split}-{i:06d}``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    n = cfg.n_train if split == "train" else cfg.n_test
    for i in range(n):
        yield make_sample(cfg, split, i)


def make_sample(cfg: PhantomConfig, split: str, index: int) -> Sample:
    """Build sample `index` of `split`; depends only on (cfg, split, index)."""
    split_code = SPLITS.index(split)
    # Pairs (2k, 2k+1) share question type and organ name; exactly one of them has lesions.
    pair_rng = np.random.default_rng([cfg.seed, split_code, index // 2, 0])
    types = [t for t, w in cfg.question_mix.items() if w > 0]
    weights = np.array([cfg.question_mix[t] for t in types], dtype=float)
    qtype = types[int(pair_rng.choice(len(types), p=weights / weights.sum()))]
    organ = cfg.organs[int(pair_rng.integers(len(cfg.organs)))]
    first_has_lesion = bool(pair_rng.integers(2))
    has_lesion = first_has_lesion == (index % 2 == 0)

    rng = np.random.default_rng([cfg.seed, split_code, index, 1])
    scene = _sample_scene(cfg, rng, has_lesion)
    pixels = _render(cfg, scene, rng)
    image = Image.fromarray(np.repeat(pixels[:, :, None], 3, axis=2), mode="RGB")

    kind, template = QUESTION_TYPES[qtype]
    question = template.format(organ=organ)
    lesions = scene["lesions"]
    brightness = lesions[0]["brightness"] if lesions else "none"
    options = None
    if qtype == "presence":
        answer = "yes" if lesions else "no"
    elif qtype == "count":
        answer = str(len(lesions))
    elif qtype == "brightness_open":
        answer = brightness
    else:
        texts = list(BRIGHTNESS_OPTIONS)
        if cfg.shuffle_options:
            texts = [texts[k] for k in rng.permutation(len(texts))]
        options = {chr(ord("A") + k): t for k, t in enumerate(texts)}
        answer = next(letter for letter, t in options.items() if t == brightness)

    location = _location_words(scene["organ"]["center"], cfg.image_size)
    meta: dict[str, Any] = {
        "generator": GENERATOR_VERSION,
        "split": split,
        "question_type": qtype,
        "organ": organ,
        "organ_center": scene["organ"]["center"],
        "organ_axes": scene["organ"]["axes"],
        "organ_angle_deg": scene["organ"]["angle_deg"],
        "organ_shape": scene["organ"]["shape"],
        "location": location,
        "lesions": lesions,
        "distractors": scene["distractors"],
        "thinking": _thinking(organ, location, lesions, len(scene["distractors"])),
    }
    return Sample(
        id=f"phantom-{split}-{index:06d}",
        images=[image],
        question=question,
        answer=answer,
        kind=kind,  # type: ignore[arg-type]
        options=options,
        boxes=[scene["box"]],
        meta=meta,
    )


# ------------------------------------------------------------------------------------------------ scene


def _sample_scene(cfg: PhantomConfig, rng: np.random.Generator, has_lesion: bool) -> dict[str, Any]:
    """Draw the geometry of one image (all lengths in pixels, rounded so meta describes the drawing)."""
    size = cfg.image_size
    s = size / 224.0
    body = {
        "center": [round(size / 2 + rng.uniform(-4, 4) * s, 2), round(size / 2 + rng.uniform(-4, 4) * s, 2)],
        "axes": [round(rng.uniform(*cfg.body_axes[:2]) * size, 2), round(rng.uniform(*cfg.body_axes[2:]) * size, 2)],
    }
    bx, by = body["center"]
    spine = {"center": [bx, round(by + 0.62 * body["axes"][1], 2)], "radius": round(0.055 * size, 2)}
    # Placements stay inside the body's soft tissue (inside the skin and fat layer).
    inner = [body["axes"][0] - 10 * s, body["axes"][1] - 10 * s]

    # Target organ.
    diameter = rng.uniform(*cfg.organ_diameter) * s
    oval = bool(rng.random() < cfg.p_oval)
    ratio = rng.uniform(1.3, 1.7) if oval else rng.uniform(1.0, 1.1)
    a, b = round(diameter / 2, 2), round(diameter / 2 / ratio, 2)
    angle = round(float(rng.uniform(0, 180)), 1)
    th = math.radians(angle)
    hx = math.sqrt((a * math.cos(th)) ** 2 + (b * math.sin(th)) ** 2)  # half-extent of the rotated ellipse
    hy = math.sqrt((a * math.sin(th)) ** 2 + (b * math.cos(th)) ** 2)
    pad = cfg.box_pad * s
    # Candidates from the inner ellipse shrunk by the half-extent (most are then valid); checked exactly below.
    cand = _sample_in_ellipse(rng, max(inner[0] - hx, 1.0), max(inner[1] - hy, 1.0), 512) * (1.0 - cfg.center_bias)
    cand = cand + np.array([bx, by])
    ok = np.ones(len(cand), dtype=bool)
    for dx in (-1, 1):
        for dy in (-1, 1):  # the padded box is inside the (convex) inner ellipse iff its corners are
            ok &= _inside_ellipse(cand[:, 0] + dx * (hx + pad), cand[:, 1] + dy * (hy + pad), bx, by, *inner)
    # Keep clear of the spine (box vs disc, with a margin).
    sx, sy = spine["center"]
    near_x = np.clip(sx, cand[:, 0] - hx - pad, cand[:, 0] + hx + pad)
    near_y = np.clip(sy, cand[:, 1] - hy - pad, cand[:, 1] + hy + pad)
    ok &= np.hypot(near_x - sx, near_y - sy) > spine["radius"] + 4 * s
    if not ok.any():
        raise RuntimeError("could not place the organ inside the body; lower organ_diameter or raise image_size")
    cx, cy = (round(float(v), 2) for v in cand[int(np.argmax(ok))])
    # Outward rounding keeps the whole organ inside the stored box.
    box = [
        math.floor(max(cx - hx - pad, 0.0) / size * 1e4) / 1e4,
        math.floor(max(cy - hy - pad, 0.0) / size * 1e4) / 1e4,
        math.ceil(min(cx + hx + pad, size) / size * 1e4) / 1e4,
        math.ceil(min(cy + hy + pad, size) / size * 1e4) / 1e4,
    ]
    organ = {"center": [cx, cy], "axes": [a, b], "angle_deg": angle, "shape": "oval" if oval else "round"}
    rim = _rim_width(s)

    # Spots: a fixed multiset (k dark + k bright); the organ takes n of one brightness as lesions.
    k = cfg.spots_per_brightness
    n_lesions = 0
    if has_lesion:
        n_lesions = 2 if cfg.max_lesions >= 2 and rng.random() < cfg.p_two_lesions else 1
    lesion_brightness = "dark" if rng.random() < 0.5 else "bright"
    lesions: list[dict[str, Any]] = []
    for _ in range(n_lesions):
        r = round(float(rng.uniform(*cfg.spot_radius) * s), 2)
        # Local frame: centre inside the ellipse shrunk by rim + radius + margin, so the disc sits inside
        # the organ's interior and never touches the rim.
        shrink = rim + r + 2 * s
        u = _sample_in_ellipse(rng, a - shrink, b - shrink, 64)
        px = cx + u[:, 0] * math.cos(th) - u[:, 1] * math.sin(th)
        py = cy + u[:, 0] * math.sin(th) + u[:, 1] * math.cos(th)
        free = np.ones(len(px), dtype=bool)
        for other in lesions:
            free &= np.hypot(px - other["center"][0], py - other["center"][1]) > r + other["radius"] + 3 * s
        if not free.any():
            break  # a small organ with no room for a second lesion: keep one
        j = int(np.argmax(free))
        lesions.append({"center": [round(float(px[j]), 2), round(float(py[j]), 2)], "radius": r, "brightness": lesion_brightness})

    brightness_left = {"dark": k, "bright": k}
    brightness_left[lesion_brightness] -= len(lesions)
    distractor_kinds = ["dark"] * brightness_left["dark"] + ["bright"] * brightness_left["bright"]
    distractor_kinds = [distractor_kinds[j] for j in rng.permutation(len(distractor_kinds))]
    distractors: list[dict[str, Any]] = []
    x1, y1, x2, y2 = (v * size for v in box)
    if cfg.distractor_clearance == "cells":  # the cell-aligned hull of the box: what a perfect box keeps
        c = cfg.cell_size * s
        x1, y1 = math.floor(x1 / c) * c, math.floor(y1 / c) * c
        x2, y2 = math.ceil(x2 / c) * c, math.ceil(y2 / c) * c
    for kind in distractor_kinds:
        r = round(float(rng.uniform(*cfg.spot_radius) * s), 2)
        c = _sample_in_ellipse(rng, inner[0] - r, inner[1] - r, 256) + np.array([bx, by])
        margin = r + 2 * s + cfg.decoy_halo * s  # the halo stays out of the box (or its cells) too
        free = ~((c[:, 0] > x1 - margin) & (c[:, 0] < x2 + margin) & (c[:, 1] > y1 - margin) & (c[:, 1] < y2 + margin))
        free &= np.hypot(c[:, 0] - sx, c[:, 1] - sy) > spine["radius"] + r + 3 * s
        for other in distractors:
            free &= np.hypot(c[:, 0] - other["center"][0], c[:, 1] - other["center"][1]) > r + other["radius"] + 4 * s
        if not free.any():
            raise RuntimeError("could not place a distractor outside the organ; lower organ_diameter or spots_per_brightness")
        j = int(np.argmax(free))
        distractors.append({"center": [round(float(c[j, 0]), 2), round(float(c[j, 1]), 2)], "radius": r, "brightness": kind})

    lo, hi = cfg.n_structures
    structures = []
    for _ in range(int(rng.integers(lo, hi + 1))):
        sc = _sample_in_ellipse(rng, inner[0] * 0.7, inner[1] * 0.7, 1)[0] + np.array([bx, by])
        structures.append(
            {
                "center": [float(sc[0]), float(sc[1])],
                "axes": [float(rng.uniform(14, 30) * s), float(rng.uniform(10, 22) * s)],
                "angle_deg": float(rng.uniform(0, 180)),
                "level": float(rng.uniform(*_STRUCTURE_LEVEL)),
            }
        )
    return {
        "body": body,
        "spine": spine,
        "organ": organ,
        "box": box,
        "lesions": lesions,
        "distractors": distractors,
        "structures": structures,
    }


def _inside_ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0


def _sample_in_ellipse(rng: np.random.Generator, a: float, b: float, n: int) -> np.ndarray:
    """n points uniform in the axis-aligned ellipse with semi-axes (a, b) around 0; (n, 2)."""
    radius = np.sqrt(rng.random(n))
    phi = rng.uniform(0, 2 * math.pi, n)
    return np.stack([a * radius * np.cos(phi), b * radius * np.sin(phi)], axis=1)  # (n, 2)


def _rim_width(s: float) -> float:
    return 3.0 * s


# ----------------------------------------------------------------------------------------------- render


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates; (size, size) each, x along columns."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return xs, ys


def _window(center: list[float], half: float, size: int) -> tuple[slice, slice]:
    """(rows, cols) slices of the square window of half-side `half` (+2 px of edge) around `center`."""
    x0, x1 = max(int(center[0] - half - 2), 0), min(int(center[0] + half + 3), size)
    y0, y1 = max(int(center[1] - half - 2), 0), min(int(center[1] + half + 3), size)
    return slice(y0, y1), slice(x0, x1)


def _ellipse_depth(xs: np.ndarray, ys: np.ndarray, c: list[float], axes: list[float], angle_deg: float) -> np.ndarray:
    """Approximate signed distance inside a rotated ellipse, in pixels (> 0 inside); (h, w) like xs, ys.

    (1 - rho) * min(axes), rho the normalised radius: exact on the boundary, good enough for a 1-px
    anti-aliasing ramp and a rim a few pixels wide.
    """
    th = math.radians(angle_deg)
    cos, sin = math.cos(th), math.sin(th)
    # xs and ys are (windows of) pixel grids: one row / one column carries all their information, and
    # broadcasting (1, w) against (h, 1) halves the full-size arithmetic.
    dx, dy = xs[:1, :] - c[0], ys[:, :1] - c[1]  # (1, w), (h, 1)
    u = (dx * (cos / axes[0])) + (dy * (sin / axes[0]))  # (h, w)
    v = (dy * (cos / axes[1])) - (dx * (sin / axes[1]))  # (h, w)
    return (1.0 - np.sqrt(u * u + v * v)) * min(axes)


def _coverage(depth: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance (1 px ramp)."""
    return np.clip(depth + 0.5, 0.0, 1.0)


def _smooth_noise_from(coarse: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bicubic upsampling of a float grid to `shape` (h, w)."""
    return np.asarray(Image.fromarray(coarse.astype(np.float32), mode="F").resize((shape[1], shape[0]), Image.BICUBIC))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth zero-mean noise of `shape` (h, w): a random grid with one value per `cell` pixels, bicubically
    upsampled (PIL, no BLAS, so bit-identical everywhere); spread about 0.6."""
    h, w = shape
    coarse = rng.standard_normal((max(round(h / cell), 2), max(round(w / cell), 2)), dtype=np.float32)
    return _smooth_noise_from(coarse, shape)


def _render(cfg: PhantomConfig, scene: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Draw the scene as a (size, size) uint8 grey image."""
    size = cfg.image_size
    s = size / 224.0
    xs, ys = _grid(size)
    # Two scales of tissue texture: blotches ~25 px and grain ~8 px.
    coarse = _smooth_noise(rng, (28, 28), 28 / 9)
    grain = rng.standard_normal((28, 28), dtype=np.float32)
    texture = cfg.texture_std * _smooth_noise_from(1.2 * coarse + 0.8 * grain, (size, size))

    body = scene["body"]
    depth = _ellipse_depth(xs, ys, body["center"], body["axes"], 0.0)
    # Skin line, then a darker fat layer, then textured soft tissue.
    tissue = _coverage(depth - 2.5 * s)
    img = _coverage(depth) * _SKIN_LEVEL
    img += tissue * (_FAT_LEVEL - _SKIN_LEVEL + texture)
    img += _coverage(depth - 8 * s) * (_BODY_LEVEL - _FAT_LEVEL)

    for st in scene["structures"]:
        win = _window(st["center"], max(st["axes"]), size)
        cov = _coverage(_ellipse_depth(xs[win], ys[win], st["center"], st["axes"], st["angle_deg"]) - 1.0)
        img[win] += cov * tissue[win] * (st["level"] - _BODY_LEVEL)

    spine = scene["spine"]
    win = _window(spine["center"], spine["radius"], size)
    dist = np.hypot(xs[win] - spine["center"][0], ys[win] - spine["center"][1] - 0.2 * spine["radius"])
    bone = _coverage(spine["radius"] - np.hypot(xs[win] - spine["center"][0], ys[win] - spine["center"][1]))
    canal = _coverage(0.35 * spine["radius"] - dist)
    img[win] += bone * (_SPINE_LEVEL - img[win])
    img[win] += canal * (_FAT_LEVEL - img[win])

    organ = scene["organ"]
    win = _window(organ["center"], max(organ["axes"]), size)
    depth = _ellipse_depth(xs[win], ys[win], organ["center"], organ["axes"], organ["angle_deg"])
    cov = _coverage(depth)
    interior = _coverage(depth - _rim_width(s))
    # Its own finer, fainter parenchyma texture so the inside reads as a different tissue.
    organ_tex = cfg.texture_std * _smooth_noise(rng, cov.shape, 5.6 * s)
    organ_level = _RIM_LEVEL + interior * (_ORGAN_LEVEL - _RIM_LEVEL + organ_tex)
    img[win] += cov * (organ_level - img[win])

    if cfg.decoy_halo > 0:  # organ tissue (no rim) around each distractor
        for spot in scene["distractors"]:
            half = spot["radius"] + cfg.decoy_halo * s
            win = _window(spot["center"], half, size)
            cov = _coverage(half - np.hypot(xs[win] - spot["center"][0], ys[win] - spot["center"][1]))
            tex = cfg.texture_std * _smooth_noise(rng, cov.shape, 5.6 * s)
            level = _ORGAN_LEVEL + tex
            if cfg.decoy_rim:
                depth = half - np.hypot(xs[win] - spot["center"][0], ys[win] - spot["center"][1])
                level = _RIM_LEVEL + _coverage(depth - _rim_width(s)) * (level - _RIM_LEVEL)
            img[win] += cov * (level - img[win])

    for spot in scene["lesions"] + scene["distractors"]:
        _draw_spot(img, xs, ys, spot)

    img += rng.standard_normal(img.shape, dtype=np.float32) * cfg.noise_std
    np.clip(img, 0.0, 1.0, out=img)
    return (img * 255.0 + 0.5).astype(np.uint8)


def _draw_spot(img: np.ndarray, xs: np.ndarray, ys: np.ndarray, spot: dict[str, Any]) -> None:
    """Blend a soft-edged disc into `img` in place, touching only a local window."""
    (cx, cy), r = spot["center"], spot["radius"]
    win = _window(spot["center"], r, img.shape[0])
    d = np.hypot(xs[win] - cx, ys[win] - cy)
    # A 1.5-px soft edge: lesions in scans are blurred, not cut out.
    w = np.clip((r - d) / 1.5 + 0.5, 0.0, 1.0)
    img[win] += w * (_SPOT_LEVEL[spot["brightness"]] - img[win])


# ------------------------------------------------------------------------------------------------- text


def _location_words(center: list[float], size: int) -> str:
    """'upper left', 'center', ... from the organ centre in thirds of the image."""
    col = ("left", "center", "right")[min(int(3 * center[0] / size), 2)]
    row = ("upper", "middle", "lower")[min(int(3 * center[1] / size), 2)]
    if row == "middle":
        return "center" if col == "center" else f"middle {col}"
    return row if col == "center" else f"{row} {col}"


_NUMBER_WORDS = {0: "no", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def _thinking(organ: str, location: str, lesions: list[dict[str, Any]], n_distractors: int) -> str:
    """A short reasoning text that names the evidence region first, then what it contains."""
    n = len(lesions)
    seen = "no spot" if n == 0 else f"{_NUMBER_WORDS[n]} {lesions[0]['brightness']} spot{'s' if n > 1 else ''}"
    if n_distractors == 1:
        others = f"The other spot lies outside the {organ} and does not count."
    else:
        count = _NUMBER_WORDS.get(n_distractors, str(n_distractors))
        others = f"The other {count} spots lie outside the {organ} and do not count."
    return f"The {organ} is the rimmed structure in the {location} of the image. Inside it there {'is' if n < 2 else 'are'} {seen}. {others}"

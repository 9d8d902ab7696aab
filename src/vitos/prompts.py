"""Prompt templates for both ViToS branches and the one parser of what the policy writes.

Every module that talks to the policy (rollouts, rewards, supervised warm start, inference, evaluation)
goes through this file, so the prompt wording and the output grammar change in one place.

Output format
-------------
grounding branch (all visual tokens)::

    <think>...</think><box>[[x1,y1,x2,y2], ...]</box><answer>...</answer>

sparse branch (only the evidence regions' tokens)::

    <think>...</think><answer>...</answer>

Boxes are normalised to [0, 1] relative to the image's width and height, (x1, y1) the top-left and
(x2, y2) the bottom-right corner. With several images a box may carry a leading 1-based image number,
``[k, x1, y1, x2, y2]``; a 4-number box refers to image 1. The paper fixes normalised boxes (not Qwen's
absolute pixels); the exact tag names and prompt wording are ours.

Parser policy (``parse_output``)
--------------------------------
* Never raises, whatever the string. Tags are matched case-insensitively and may carry inner spaces
  (``< Answer >``); whitespace anywhere is fine.
* ``format_ok`` is True when the tag sequence is exactly the branch's (each tag once, in order, nothing
  nested); text outside the tags is allowed. A ``<box>`` tag in a sparse output breaks its format.
* Content of a tag comes from its LAST opening tag (the model's final word). An opening tag that is never
  closed (a truncated generation, ``<answer>B`` then end-of-sequence) runs to the next tag or the end.
* No ``<answer>`` tag -> ``answer is None``: we do not guess an answer from free text (use
  ``answer_or_raw`` for evaluation of models that ignore the format).
* Box content accepts JSON (``[[..]]``, a flat ``[..]``, ``{"bbox_2d": [..]}`` or a list of such dicts)
  and, failing JSON, any bracketed/parenthesised groups of numbers (``[a,b,c,d],[e,f,g,h]``,
  ``(0.1, 0.2, 0.3, 0.4)``, ``.5``, ``1e-1``). Any bad box rejects the whole tag (``boxes is None``)
  with a reason in ``box_error``: wrong arity, NaN/inf, pixel-like values (> 1.5), values outside [0, 1] by
  more than 0.01 (smaller excursions are clipped), x2 <= x1 or y2 <= y1, or an empty tag (the grounding
  branch must point somewhere; an empty list would leave the sparse branch nothing to look at).

Usage::

    from vitos.prompts import SYSTEM_PROMPT, grounding_prompt, parse_output
    user = grounding_prompt("Is there a pneumothorax?", kind="yes_no")
    out = parse_output(completion, branch="grounding")
    if out.boxes is not None: ...   # normalised boxes, out.box_images[i] is box i's 0-based image
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SYSTEM_PROMPT",
    "BOX_TOLERANCE",
    "PIXEL_THRESHOLD",
    "ParsedOutput",
    "grounding_prompt",
    "sparse_prompt",
    "format_grounding_target",
    "format_sparse_target",
    "parse_boxes",
    "parse_output",
    "answer_or_raw",
]

SYSTEM_PROMPT = (
    "You are a medical imaging expert. Examine the image carefully, reason step by step, "
    "and answer the question."
)

BOX_TOLERANCE = 0.01
"""Box coordinates may leave [0, 1] by at most this much (then they are clipped); more is an error."""
PIXEL_THRESHOLD = 1.5
"""A coordinate above this is taken for an absolute pixel value, which the format forbids."""

_ANSWER_STYLE = {
    "yes_no": "yes or no",
    "choice": "the option's letter",
    "open": "a concise phrase",
}
_BRANCH_TAGS = {
    "grounding": ("think", "box", "answer"),
    "sparse": ("think", "answer"),
}
_TAG_RE = re.compile(r"<\s*(/?)\s*(think|box|answer)\s*>", re.IGNORECASE)
# Innermost bracket or parenthesis group: the fallback reader for box text that is not JSON.
_GROUP_RE = re.compile(r"[\[(]([^\[\]()]*)[\])]")
_SPLIT_RE = re.compile(r"[,\s]+")
_DICT_BOX_KEYS = ("bbox_2d", "bbox", "box")


# --------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------


def _question_block(question: str, options: dict[str, str] | None) -> str:
    lines = [question.strip()]
    if options:
        lines += [f"{letter}. {text}" for letter, text in options.items()]
    return "\n".join(lines)


def _check_prompt_args(kind: str, n_images: int) -> None:
    if kind not in _ANSWER_STYLE:
        raise ValueError(f"unknown question kind {kind!r}; expected one of {sorted(_ANSWER_STYLE)}")
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1 (got {n_images}); a ViToS prompt always has an image")


def grounding_prompt(
    question: str,
    options: dict[str, str] | None = None,
    kind: str = "open",
    n_images: int = 1,
) -> str:
    """User text for the grounding pass: question, options, and the think/box/answer instruction.

    Image placeholders are not included; the model adapter inserts them in front of this text.
    """
    _check_prompt_args(kind, n_images)
    box_rule = (
        "Then give the image regions that support your answer inside <box></box> as a JSON list of boxes "
        "[[x1,y1,x2,y2], ...], with coordinates normalised to [0, 1] relative to the image width and height "
        "((x1,y1) top-left, (x2,y2) bottom-right)."
    )
    if n_images > 1:
        box_rule += (
            f" There are {n_images} images; to point into image k write [k,x1,y1,x2,y2] "
            "(images numbered from 1); a box without a number refers to image 1."
        )
    return "\n\n".join(
        [
            _question_block(question, options),
            "First think step by step inside <think></think>. "
            + box_rule
            + f" Finally give the final answer inside <answer></answer>: {_ANSWER_STYLE[kind]}.",
            "Format: <think>...</think><box>[[x1,y1,x2,y2]]</box><answer>...</answer>",
        ]
    )


def sparse_prompt(
    question: str,
    options: dict[str, str] | None = None,
    kind: str = "open",
    n_images: int = 1,
) -> str:
    """User text for the token-sparse pass: same question, no boxes requested.

    The model sees only the evidence regions' tokens (plus fused context), so the wording says so.
    """
    _check_prompt_args(kind, n_images)
    where = "the image regions" if n_images == 1 else f"the regions of the {n_images} images"
    return "\n\n".join(
        [
            _question_block(question, options),
            f"You are shown only {where} that hold the evidence. "
            "First think step by step inside <think></think>. "
            f"Then give the final answer inside <answer></answer>: {_ANSWER_STYLE[kind]}.",
            "Format: <think>...</think><answer>...</answer>",
        ]
    )


# --------------------------------------------------------------------------------------------------
# Targets for the supervised warm start
# --------------------------------------------------------------------------------------------------


def _check_free_text(name: str, value: str) -> None:
    if _TAG_RE.search(value):
        raise ValueError(
            f"{name} text contains a <think>/<box>/<answer> tag, which would break parsing: {value[:80]!r}"
        )


def _render_box(box: list[float], decimals: int) -> str:
    if len(box) == 5:
        parts = [str(int(box[0]))] + [f"{v:.{decimals}f}" for v in box[1:]]
    else:
        parts = [f"{v:.{decimals}f}" for v in box]
    return "[" + ",".join(parts) + "]"


def format_grounding_target(think: str, boxes: list[list[float]], answer: str, decimals: int = 2) -> str:
    """Render a grounding completion, e.g. ``<think>..</think><box>[[0.12,0.30,0.55,0.71]]</box><answer>..</answer>``.

    Boxes are validated with the parser's rules (values within tolerance are clipped) and the rendered text
    is parsed back, so a box that collapses at ``decimals`` (x1 == x2 after rounding) raises instead of
    producing a target the reward would reject.
    """
    _check_free_text("think", think)
    _check_free_text("answer", answer)
    if decimals < 0:
        raise ValueError(f"decimals must be >= 0 (got {decimals})")
    clean: list[list[float]] = []
    for i, box in enumerate(boxes):
        coords, image = _check_box(list(box), i, None)
        clean.append(coords if len(box) == 4 else [float(image + 1)] + coords)
    if not clean:
        raise ValueError("format_grounding_target needs at least one box (the parser rejects an empty <box>)")
    box_text = "[" + ",".join(_render_box(b, decimals) for b in clean) + "]"
    _, _, error = parse_boxes(box_text)
    if error is not None:
        raise ValueError(f"boxes rendered with {decimals} decimals are invalid ({error}); use more decimals")
    return f"<think>{think}</think><box>{box_text}</box><answer>{answer}</answer>"


def format_sparse_target(think: str, answer: str) -> str:
    """Render a sparse-branch completion: ``<think>...</think><answer>...</answer>``."""
    _check_free_text("think", think)
    _check_free_text("answer", answer)
    return f"<think>{think}</think><answer>{answer}</answer>"


# --------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------


@dataclass
class ParsedOutput:
    """What one completion says, as far as it can be read."""

    think: str | None
    """Stripped content of <think>, None when there is no <think> tag."""
    boxes: list[list[float]] | None
    """Normalised [x1, y1, x2, y2] boxes (clipped to [0, 1]); None when no <box> tag or it was rejected."""
    box_images: list[int] | None
    """0-based image index per box (0 for 4-number boxes); None exactly when `boxes` is None."""
    answer: str | None
    """Stripped content of <answer>, None when there is no <answer> tag (never guessed from free text)."""
    box_error: str | None
    """Why the <box> content was rejected; None when it parsed or there was no <box> tag."""
    format_ok: bool
    """The tag sequence is exactly the branch's: think, box, answer (grounding) or think, answer (sparse)."""


class _BoxError(ValueError):
    pass


def _as_number(value: Any, where: str) -> float:
    # bool is an int subclass in Python; `true` in a box is a model error, not 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _BoxError(f"{where}: {value!r} is not a number")
    return float(value)


def _boxes_from_json(obj: Any) -> list[list[float]]:
    """JSON value -> raw number lists (arity unchecked). Raises _BoxError on an unknown shape."""
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, list):
        raise _BoxError(f"expected a list of boxes, got {type(obj).__name__}")
    if obj and all(not isinstance(v, (list, dict)) for v in obj):
        obj = [obj]  # a single flat box [x1, y1, x2, y2]
    out: list[list[float]] = []
    for i, item in enumerate(obj):
        where = f"box {i + 1}"
        if isinstance(item, dict):
            key = next((k for k in _DICT_BOX_KEYS if k in item), None)
            if key is None:
                raise _BoxError(f"{where}: dict has none of the keys {list(_DICT_BOX_KEYS)}")
            item = item[key]
        if not isinstance(item, list):
            raise _BoxError(f"{where}: expected a list of numbers, got {type(item).__name__}")
        out.append([_as_number(v, where) for v in item])
    return out


def _boxes_from_text(text: str) -> list[list[float]]:
    """Non-JSON fallback: every innermost [..] or (..) group is one box; bare numbers are one box."""
    groups = _GROUP_RE.findall(text) or [text]
    out: list[list[float]] = []
    for i, group in enumerate(groups):
        tokens = [t for t in _SPLIT_RE.split(group.strip()) if t]
        values: list[float] = []
        for token in tokens:
            try:
                values.append(float(token))
            except ValueError:
                raise _BoxError(f"box {i + 1}: could not read {token[:30]!r} as a number") from None
        out.append(values)
    return out


def _check_box(values: list[float], i: int, n_images: int | None) -> tuple[list[float], int]:
    """Validate one raw box; return its clipped [x1, y1, x2, y2] and 0-based image index."""
    where = f"box {i + 1} {[round(v, 4) if math.isfinite(v) else v for v in values][:6]}"
    if len(values) not in (4, 5):
        raise _BoxError(f"{where} has {len(values)} numbers; expected 4 [x1,y1,x2,y2] or 5 [image,x1,y1,x2,y2]")
    if not all(math.isfinite(v) for v in values):
        raise _BoxError(f"{where} contains NaN or infinity")
    image = 0
    if len(values) == 5:
        k, values = values[0], values[1:]
        if k != int(k) or k < 1 or (n_images is not None and k > n_images):
            limit = f"in 1..{n_images}" if n_images is not None else ">= 1"
            raise _BoxError(f"{where}: image number {k:g} must be an integer {limit}")
        image = int(k) - 1
    if max(values) > PIXEL_THRESHOLD:
        raise _BoxError(f"{where} looks like absolute pixels; boxes must be normalised to [0, 1]")
    if min(values) < -BOX_TOLERANCE or max(values) > 1 + BOX_TOLERANCE:
        raise _BoxError(f"{where} leaves [0, 1] by more than {BOX_TOLERANCE}")
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in values)
    if x2 <= x1 or y2 <= y1:
        raise _BoxError(f"{where} is empty or inverted; need x2 > x1 and y2 > y1")
    return [x1, y1, x2, y2], image


def parse_boxes(
    content: str, n_images: int | None = None
) -> tuple[list[list[float]] | None, list[int] | None, str | None]:
    """Read the content of a <box> tag -> (boxes, 0-based image per box, error). Never raises.

    ``n_images``, when given, also rejects image numbers above it. On error boxes and images are None.
    """
    try:
        text = content.strip()
        if not text:
            return None, None, "the <box> tag is empty; give at least one [x1,y1,x2,y2] box"
        raw: list[list[float]] | None = None
        for candidate in (text, "[" + text + "]"):  # the second reads "[..],[..]" without outer brackets
            try:
                obj = json.loads(candidate)
            except (ValueError, RecursionError):
                continue
            raw = _boxes_from_json(obj)
            break
        if raw is None:
            raw = _boxes_from_text(text)
        if not raw:
            return None, None, "the <box> tag holds an empty list; give at least one [x1,y1,x2,y2] box"
        boxes: list[list[float]] = []
        images: list[int] = []
        for i, values in enumerate(raw):
            box, image = _check_box(values, i, n_images)
            boxes.append(box)
            images.append(image)
        return boxes, images, None
    except _BoxError as e:
        return None, None, str(e)
    except Exception as e:  # the parser must never raise; report instead of crashing a rollout
        return None, None, f"unreadable box content ({type(e).__name__}: {e})"


def _tag_content(text: str, tags: list[tuple[str, bool, int, int]], name: str) -> str | None:
    """Content after the last opening `name` tag, up to its closing tag (or the next tag / end if unclosed)."""
    opens = [k for k, (n, closing, _, _) in enumerate(tags) if n == name and not closing]
    if not opens:
        return None
    k = opens[-1]
    start = tags[k][3]
    end = len(text)
    for n, closing, s, _ in tags[k + 1 :]:
        if n == name and closing:
            end = s
            break
    else:  # unclosed: stop at the next tag of any kind
        if k + 1 < len(tags):
            end = tags[k + 1][2]
    return text[start:end].strip()


def parse_output(text: str, branch: str = "grounding", n_images: int | None = None) -> ParsedOutput:
    """Parse one completion of ``branch`` ('grounding' or 'sparse'). Never raises on any string.

    ``n_images`` (optional) rejects boxes that point at an image number the prompt did not have.
    See the module docstring for the exact tolerance rules.
    """
    if branch not in _BRANCH_TAGS:
        raise ValueError(f"unknown branch {branch!r}; expected 'grounding' or 'sparse'")
    if not isinstance(text, str):
        text = text.decode("utf-8", "replace") if isinstance(text, (bytes, bytearray)) else str(text or "")
    tags = [(m.group(2).lower(), m.group(1) == "/", m.start(), m.end()) for m in _TAG_RE.finditer(text)]
    expected = [(name, closing) for name in _BRANCH_TAGS[branch] for closing in (False, True)]
    format_ok = [(n, c) for n, c, _, _ in tags] == expected

    box_content = _tag_content(text, tags, "box")
    boxes = images = error = None
    if box_content is not None:
        boxes, images, error = parse_boxes(box_content, n_images)
    return ParsedOutput(
        think=_tag_content(text, tags, "think"),
        boxes=boxes,
        box_images=images,
        answer=_tag_content(text, tags, "answer"),
        box_error=error,
        format_ok=format_ok,
    )


def answer_or_raw(text: str) -> str:
    """The <answer> content when present, else the whole stripped text (for models that ignore the format)."""
    answer = parse_output(text, "sparse").answer
    if answer is not None:
        return answer
    return text.strip() if isinstance(text, str) else str(text or "").strip()

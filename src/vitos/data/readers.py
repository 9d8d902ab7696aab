"""Read training rows (authors' JSON/JSONL, hub parquet, local folders) into `Sample`s, and write them back.

Sources, dispatched on the path:
  * ``*.json``     a list of rows (or ``{"data": [...]}``) in the authors' (ViTAR) row format;
  * ``*.jsonl``    one such row per line (blank lines are ignored);
  * ``*.parquet``  hub parquet with embedded images (ViTAR-16K columns ``image, question, answer, bbox``);
    an image cell may be a ``{"bytes", "path"}`` dict as HF ``datasets`` writes it, raw bytes, a path,
    or a list of those;
  * a folder       holding ``data.jsonl`` (preferred) or ``data.json`` next to its images.

The authors' row::

    {"image_path": ["a.png"] or "a.png", "question": "<image>\\nIs there ...?", "answer": "yes",
     "bbox": [[x1, y1, x2, y2], ...]}                      # normalised to [0, 1], relative to image 1

Optional keys: ``id``/``qid`` (else the id is ``"{file stem}:{row index}"``, the folder's name for
folders), ``kind`` ('yes_no' | 'choice' | 'open'), ``options`` (dict letter -> text, or a list), ``meta``
(a dict). Any other key is kept in ``Sample.meta``.

What a reader does to a row:
  * ``<image>`` placeholders (also ``<image1>``, ``<image_2>``) are stripped from the question;
  * image paths are resolved against ``image_root`` (default: the folder of the file read) and must
    exist; they are *not* decoded here (``vitos.images.load_image`` does that, with its limits);
  * embedded image bytes become PIL images opened **lazily** over the in-memory bytes: the header is
    checked now (unreadable bytes fail at read time), pixels are decoded on first use, so a 16K-row
    parquet holds compressed bytes in memory rather than decoded pixels;
  * the question kind, when the row does not name it, is inferred: a yes/no answer -> 'yes_no'; options
    found in the question text ("A. ...", "A) ...", "(A) ...", one per line or inline) plus an answer that
    is one of their letters (or exactly one option's text) -> 'choice', with the option lines removed
    from the question (``Sample.question`` carries no options; prompts add them back); else 'open';
  * boxes must be normalised ``[x1, y1, x2, y2]`` with ``0 <= x1 < x2 <= 1`` and ``0 <= y1 < y2 <= 1``;
    a flat four-number list is read as one box; a missing/null/empty ``bbox`` means "no box" (most VQA
    rows have none, REFERENCE.md section 4).

A bad row raises `DataError` naming the file, the row number (0-based, as in default ids; JSONL also
gives the line) and the field, with a hint how to fix it; ``skip_bad_rows=True`` skips it instead and
records the message in ``ReadResult.skipped``.

Usage:
    from vitos.data.readers import read_rows, write_rows
    result = read_rows("vitar16k/train.parquet", limit=1000)
    samples = result.samples                 # list[Sample]
    write_rows(samples, "out/train.jsonl")   # PIL images saved under out/images/
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vitos.data.sample import Sample

FOLDER_FILES = ("data.jsonl", "data.json")
"""File names a data folder is searched for, in order of preference."""

_KINDS = ("yes_no", "choice", "open")
_KNOWN_KEYS = {"id", "qid", "image_path", "image", "images", "question", "answer", "bbox", "kind", "options", "meta"}
_PLACEHOLDER = re.compile(r"<image(?:[ _]?\d+)?>")
# An option marker: "A." / "A)" / "A:" / "(A)" preceded by start or whitespace and followed by whitespace.
_OPTION_MARKER = re.compile(r"(?<!\S)(?:\(([A-Z])\)|([A-Z])[.):])[ \t]+")
_LETTER_ANSWER = re.compile(r"^\(?([A-Z])\)?(?:[.):](?:\s.*)?)?$", re.S)
_BOX_EPS = 1e-6  # float noise tolerated at the [0, 1] edges (e.g. 1.0000001 written by another tool)


class DataError(ValueError):
    """A row (or a file) cannot be read; the message names the file, the row, the field and a fix."""


@dataclass
class ReadResult:
    """What `read_rows` returns: the good samples and one message per skipped bad row."""

    samples: list[Sample]
    """Samples in file order (at most `limit`)."""
    skipped: list[str] = field(default_factory=list)
    """One `DataError` message per row skipped because `skip_bad_rows=True`."""


@dataclass
class _RowContext:
    """Where a row comes from, for error messages and path resolution."""

    file: Path
    index: int
    image_root: Path
    id_prefix: str
    line: int | None = None

    def error(self, field_name: str, problem: str, fix: str) -> DataError:
        where = f"row {self.index}" + (f" (line {self.line})" if self.line is not None else "")
        return DataError(f"{self.file}: {where}: field '{field_name}': {problem}. {fix}")


# ----------------------------------------------------------------------------------------------- reading


def read_rows(
    path: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    skip_bad_rows: bool = False,
    limit: int | None = None,
) -> ReadResult:
    """Read a .json / .jsonl / .parquet file or a data folder into samples.

    `image_root`: folder that relative image paths are resolved against (default: the folder of the file
    read). `skip_bad_rows`: skip rows that fail validation (their messages go to `ReadResult.skipped`)
    instead of raising `DataError`. `limit`: stop once this many samples have been read.
    """
    src = Path(path)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder; pass a .json, .jsonl, .parquet file or a folder")
    id_prefix = src.stem
    if src.is_dir():
        id_prefix = src.resolve().name
        found = [src / name for name in FOLDER_FILES if (src / name).is_file()]
        if not found:
            raise DataError(
                f"{src}: a data folder must contain one of {', '.join(FOLDER_FILES)}; "
                "put the rows there or pass the row file itself"
            )
        src = found[0]
    root = Path(image_root) if image_root is not None else src.parent

    suffix = src.suffix.lower()
    if suffix == ".jsonl":
        rows: Iterable[tuple[int | None, Any]] = _iter_jsonl(src)
    elif suffix == ".json":
        rows = ((None, row) for row in _load_json_rows(src))
    elif suffix == ".parquet":
        rows = ((None, row) for row in _iter_parquet(src))
    else:
        raise DataError(f"{src}: unsupported suffix '{src.suffix}'; use .json, .jsonl, .parquet or a folder")

    result = ReadResult(samples=[])
    seen_ids: set[str] = set()
    for index, (line, row) in enumerate(rows):
        if limit is not None and len(result.samples) >= limit:
            break
        ctx = _RowContext(file=src, index=index, image_root=root, id_prefix=id_prefix, line=line)
        try:
            if isinstance(row, DataError):  # a JSONL line that was not valid JSON
                raise row
            sample = _row_to_sample(row, ctx)
            if sample.id in seen_ids:
                raise ctx.error("id", f"id {sample.id!r} was already used by an earlier row", "make ids unique")
        except DataError as err:
            if not skip_bad_rows:
                raise
            result.skipped.append(str(err))
            continue
        seen_ids.add(sample.id)
        result.samples.append(sample)
    return result


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (1-based line number, row); a line that is not JSON yields a DataError so it can be skipped."""
    with open(path, encoding="utf-8") as fh:
        index = 0
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row: Any = json.loads(line)
            except json.JSONDecodeError as exc:
                where = f"row {index} (line {line_no})"
                row = DataError(
                    f"{path}: {where}: field '<json>': not valid JSON ({exc.msg} at column {exc.colno}). "
                    "Write one JSON object per line"
                )
            index += 1
            yield line_no, row


def _load_json_rows(path: Path) -> list[Any]:
    with open(path, encoding="utf-8") as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix the file") from exc
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows (or {{\"data\": [...]}}), got {type(data).__name__}")
    return data


def _iter_parquet(path: Path) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # optional dependency
        raise ImportError(f"reading {path} needs pyarrow: pip install 'vitos[parquet]' (or pip install pyarrow)") from exc
    # Batches keep memory bounded (image bytes) and let `limit` stop early.
    for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
        yield from batch.to_pylist()


def _row_to_sample(row: Any, ctx: _RowContext) -> Sample:
    """Validate one row and turn it into a `Sample` (raises `DataError` naming the field at fault)."""
    if not isinstance(row, dict):
        raise ctx.error("<row>", f"expected a JSON object, got {type(row).__name__}", "write each row as an object")

    sample_id = _read_id(row, ctx)
    images = _read_images(row, ctx)
    question = _read_question(row, ctx)
    answer = _read_answer(row, ctx)
    boxes = _read_boxes(row.get("bbox"), ctx)
    kind, answer, options, question = _read_kind(row, question, answer, ctx)

    meta: dict[str, Any] = {}
    if row.get("meta") is not None:
        if not isinstance(row["meta"], dict):
            raise ctx.error("meta", f"expected an object, got {type(row['meta']).__name__}", "write meta as a JSON object")
        meta.update(row["meta"])
    for key, value in row.items():
        if key not in _KNOWN_KEYS:
            meta[key] = value
    # The original names of embedded images are worth keeping (they link back to the source release).
    if "image_path" in row and ("image" in row or "images" in row) and row["image_path"] is not None:
        meta.setdefault("image_path", row["image_path"])
    return Sample(
        id=sample_id, images=images, question=question, answer=answer, kind=kind, options=options, boxes=boxes, meta=meta
    )


def _read_id(row: dict[str, Any], ctx: _RowContext) -> str:
    for key in ("id", "qid"):
        value = row.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
            raise ctx.error(key, f"expected a non-empty string or integer, got {value!r}", f"fix or remove '{key}'")
        return str(value)
    return f"{ctx.id_prefix}:{ctx.index}"


def _read_images(row: dict[str, Any], ctx: _RowContext) -> list[Any]:
    # Embedded images (parquet 'image') win over paths: they need no files beside the data.
    for key in ("image", "images", "image_path"):
        if row.get(key) is not None:
            break
    else:
        raise ctx.error("image_path", "missing (no 'image_path', 'image' or 'images')", "give each row its image(s)")
    value = row[key]
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ctx.error(key, "empty list of images", "give at least one image")
    return [_read_one_image(item, key, k, ctx) for k, item in enumerate(items)]


def _read_one_image(item: Any, key: str, k: int, ctx: _RowContext) -> Any:
    name = f"{key}[{k}]"
    if isinstance(item, dict):  # HF datasets' Image feature: {"bytes": b"..." or None, "path": "..."}
        if item.get("bytes") is not None:
            return _open_bytes(item["bytes"], name, ctx)
        if item.get("path"):
            return _resolve_path(item["path"], name, ctx)
        raise ctx.error(name, "image dict has neither 'bytes' nor 'path'", "store the image bytes or a file path")
    if isinstance(item, (bytes, bytearray, memoryview)):
        return _open_bytes(bytes(item), name, ctx)
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, (str, os.PathLike)) and str(item).strip():
        return _resolve_path(item, name, ctx)
    raise ctx.error(name, f"expected a path, image bytes or a {{bytes, path}} dict, got {type(item).__name__}", "fix the image entry")


def _open_bytes(data: bytes, name: str, ctx: _RowContext) -> Image.Image:
    try:
        # Lazy: reads the header only; pixels decode on first access (see module docstring).
        return Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ctx.error(name, f"image bytes are not a readable image ({type(exc).__name__}: {exc})", "re-encode the image as PNG or JPEG") from exc


def _resolve_path(value: str | os.PathLike[str], name: str, ctx: _RowContext) -> str:
    path = Path(value)
    if not path.is_absolute():
        path = ctx.image_root / path
    if not path.is_file():
        raise ctx.error(name, f"image file not found: {path}", "check the path or pass image_root= the folder that holds the images")
    return str(path)


def _read_question(row: dict[str, Any], ctx: _RowContext) -> str:
    value = row.get("question")
    if value is None:
        raise ctx.error("question", "missing", "give each row a question")
    if not isinstance(value, str):
        raise ctx.error("question", f"expected a string, got {type(value).__name__}", "write the question as text")
    text = strip_placeholders(value)
    if not text:
        raise ctx.error("question", "empty once '<image>' placeholders are removed", "write the question text")
    return text


def _read_answer(row: dict[str, Any], ctx: _RowContext) -> str:
    value = row.get("answer")
    if value is None:
        raise ctx.error("answer", "missing", "give each row its reference answer")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ctx.error("answer", f"expected a string, got {type(value).__name__}", "write one answer as text")
    text = str(value).strip()
    if not text:
        raise ctx.error("answer", "empty", "give each row its reference answer")
    return text


def _read_boxes(value: Any, ctx: _RowContext) -> list[list[float]]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ctx.error("bbox", f"expected a list of [x1, y1, x2, y2] boxes, got {type(value).__name__}", "write bbox as [[x1, y1, x2, y2], ...]")
    if len(value) == 4 and all(_is_number(v) for v in value):
        value = [value]  # a flat box
    return [_read_box(box, k, ctx) for k, box in enumerate(value)]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _read_box(box: Any, k: int, ctx: _RowContext) -> list[float]:
    name = f"bbox[{k}]"
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        arity = len(box) if isinstance(box, (list, tuple)) else type(box).__name__
        raise ctx.error(name, f"a box needs 4 numbers [x1, y1, x2, y2], got {arity}: {box!r}", "write each box as [x1, y1, x2, y2]")
    if not all(_is_number(v) and math.isfinite(v) for v in box):
        raise ctx.error(name, f"box values must be finite numbers, got {box!r}", "write each box as four numbers")
    x1, y1, x2, y2 = (float(v) for v in box)
    if min(x1, y1, x2, y2) < -_BOX_EPS or max(x1, y1, x2, y2) > 1 + _BOX_EPS:
        raise ctx.error(
            name,
            f"box {box!r} is outside [0, 1]",
            "boxes must be normalised: divide x by the image width and y by its height",
        )
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in (x1, y1, x2, y2))
    if not (x1 < x2 and y1 < y2):
        raise ctx.error(name, f"box {box!r} is inverted or empty (need x1 < x2 and y1 < y2)", "write boxes as [left, top, right, bottom]")
    return [x1, y1, x2, y2]


def _read_kind(
    row: dict[str, Any], question: str, answer: str, ctx: _RowContext
) -> tuple[str, str, dict[str, str] | None, str]:
    """Return (kind, answer, options, question) with options removed from the question for choice rows."""
    stated = row.get("kind")
    if stated is not None and stated not in _KINDS:
        raise ctx.error("kind", f"unknown kind {stated!r}", f"use one of {', '.join(_KINDS)} or leave it out")
    body, parsed = split_options(question)
    options = _read_options(row.get("options"), ctx) if row.get("options") is not None else parsed
    # Options printed in the question are removed from it for choice rows only: an open row keeps its text.
    choice_question = body if parsed else question
    yes_no = answer.lower().rstrip(".")

    if stated == "choice":
        if not options:
            raise ctx.error("options", "a choice row needs options ('options' or 'A. ...' lines in the question)", "add the options")
        letter = choice_letter(answer, options)
        if letter is None:
            raise ctx.error("answer", f"{answer!r} is not one of the option letters {sorted(options)}", "give the letter of the right option")
        return "choice", letter, options, choice_question
    if stated == "yes_no":
        if yes_no not in ("yes", "no"):
            raise ctx.error("answer", f"a yes_no row needs 'yes' or 'no', got {answer!r}", "fix the answer or the kind")
        return "yes_no", yes_no, None, question
    if stated == "open":
        return "open", answer, None, question

    if yes_no in ("yes", "no"):
        return "yes_no", yes_no, None, question
    if options:
        letter = choice_letter(answer, options)
        if letter is not None:
            return "choice", letter, options, choice_question
    return "open", answer, None, question


def _read_options(value: Any, ctx: _RowContext) -> dict[str, str]:
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = [(chr(ord("A") + k), v) for k, v in enumerate(value)]
    else:
        raise ctx.error("options", f"expected a dict letter -> text or a list, got {type(value).__name__}", "fix the options")
    options: dict[str, str] = {}
    for letter, text in items:
        if not (isinstance(letter, str) and re.fullmatch(r"[A-Z]", letter)) or not isinstance(text, str):
            raise ctx.error("options", f"bad option {letter!r}: {text!r}", "use single capital letters mapped to text")
        options[letter] = text
    return options


def strip_placeholders(text: str) -> str:
    """Remove `<image>` placeholders (and `<image1>`, `<image_2>`) and tidy the whitespace they leave."""
    text = _PLACEHOLDER.sub("", text)
    text = re.sub(r"[ \t]{2,}", " ", text)
    return "\n".join(line.strip() for line in text.strip().splitlines()).strip()


def split_options(question: str) -> tuple[str, dict[str, str] | None]:
    """Split 'stem + lettered options' into (stem, {letter: text}); (question, None) when there are none.

    Options are consecutive letters from A, each marked "A." / "A)" / "A:" / "(A)", one per line or inline
    on one line. The longest such run wins (the last one on ties). Text on lines after the last option
    (e.g. an instruction) is kept in the stem.
    """
    markers = list(_OPTION_MARKER.finditer(question))
    runs: list[list[re.Match[str]]] = []
    for m in markers:
        letter = m.group(1) or m.group(2)
        if letter == "A":
            runs.append([m])
        elif runs and letter == chr(ord(runs[-1][-1].group(1) or runs[-1][-1].group(2)) + 1):
            runs[-1].append(m)
    runs = [r for r in runs if len(r) >= 2]
    if not runs:
        return question, None
    best = max(reversed(runs), key=len)  # reversed: on ties, max keeps the first seen = the last run
    options: dict[str, str] = {}
    end = len(question)
    for k, m in enumerate(best):
        stop = best[k + 1].start() if k + 1 < len(best) else question.find("\n", m.end())
        if stop == -1:
            stop = len(question)
        text = question[m.end() : stop].strip()
        if not text:
            return question, None
        options[m.group(1) or m.group(2)] = text
        end = stop
    stem = "\n".join(part for part in (question[: best[0].start()].strip(), question[end:].strip()) if part)
    return stem, options


def choice_letter(answer: str, options: dict[str, str]) -> str | None:
    """The option letter an answer names: 'B', '(B)', 'B.', 'B. text', or exactly one option's text."""
    m = _LETTER_ANSWER.match(answer.strip())
    if m and m.group(1) in options:
        return m.group(1)
    matches = [k for k, v in options.items() if v.strip().lower() == answer.strip().lower()]
    return matches[0] if len(matches) == 1 else None


# ----------------------------------------------------------------------------------------------- writing


def write_rows(
    samples: Iterable[Sample], path: str | os.PathLike[str], image_dir: str | os.PathLike[str] | None = None
) -> str:
    """Write samples in the authors' row format (.jsonl: one row a line; .json: a list); returns the path.

    PIL images are saved as PNG under `image_dir` (default: ``images/`` beside `path`), named after the
    sample id (``{id}.png``, or ``{id}_{k}.png`` for several images). Image paths are written relative
    to the output folder when they lie inside it, absolute otherwise. Besides ``image_path, question,
    answer, bbox`` each row carries ``id``, ``kind``, ``options`` and ``meta`` so `read_rows` restores
    the samples exactly; choice options are also printed in the question ("A. ...") for tools that only
    read the authors' four fields. `meta` must be JSON-serialisable.
    """
    out = Path(path)
    if out.suffix.lower() not in (".jsonl", ".json"):
        raise ValueError(f"{out}: write_rows writes .jsonl or .json; change the suffix")
    out.parent.mkdir(parents=True, exist_ok=True)
    img_dir = Path(image_dir) if image_dir is not None else out.parent / "images"
    used_names: set[str] = set()
    rows = []
    for sample in samples:
        paths = []
        for k, image in enumerate(sample.images):
            if isinstance(image, Image.Image):
                stem = re.sub(r"[^A-Za-z0-9._-]", "_", sample.id) + (f"_{k}" if len(sample.images) > 1 else "")
                name, n = f"{stem}.png", 1
                while name in used_names:  # ids that differ only in unsafe characters
                    name, n = f"{stem}-{n}.png", n + 1
                used_names.add(name)
                img_dir.mkdir(parents=True, exist_ok=True)
                # Level 1: noisy medical images barely compress further, and level 6 is ~4x slower.
                image.save(img_dir / name, format="PNG", compress_level=1)
                image_path = img_dir / name
            else:
                image_path = Path(image)
            paths.append(_relative_if_inside(image_path, out.parent))
        question = sample.question
        if sample.kind == "choice" and sample.options:
            question += "\n" + "\n".join(f"{k}. {v}" for k, v in sample.options.items())
        rows.append(
            {
                "id": sample.id,
                "image_path": paths,
                "question": "<image>\n" + question,
                "answer": sample.answer,
                "bbox": [list(map(float, b)) for b in sample.boxes],
                "kind": sample.kind,
                "options": sample.options,
                "meta": sample.meta,
            }
        )
    with open(out, "w", encoding="utf-8") as fh:
        if out.suffix.lower() == ".jsonl":
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            json.dump(rows, fh, ensure_ascii=False, indent=1)
    return str(out)


def _relative_if_inside(path: Path, folder: Path) -> str:
    try:
        return path.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())

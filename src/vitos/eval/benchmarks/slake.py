"""SLAKE (Liu et al., ISBI 2021): bilingual radiology VQA with organ boxes; test = 2,094 rows (1,061 English).

Local format: the release as on the hub (`BoKelvin/SLAKE`) after unzipping imgs.zip:

    <data_dir>/test.json                       list of {qid, img_id, img_name: "xmlab102/source.jpg", question,
                                               answer, q_lang: "en"|"zh", answer_type: "OPEN"|"CLOSED",
                                               content_type, modality, location, base_type, triple}
    <data_dir>/imgs/xmlabN/source.jpg          the image
    <data_dir>/imgs/xmlabN/detection.json      organ boxes (optional per image)

Rows: English only by default (`Slake(languages=None)` keeps all, `("zh",)` Chinese only).
Kind: 'yes_no' for English yes/no answers, else 'open' (judged as normalised text; Chinese 是/否 answers
are judged as text too). SLAKE's own answer_type decides the closed/open report split:
`meta['closed'] = answer_type == "CLOSED"` (e.g. "Which is bigger, liver or spleen?" is CLOSED but is
judged by text), which is how MedEvalKit splits SLAKE.

Boxes (REFERENCE.md section 4). ASSUMPTION about the release: detection.json is a list of one-key objects
`{"<organ name>": [x, y, w, h]}` in absolute pixels of source.jpg (COCO order); a `{"name": box}` mapping
and several boxes per name are accepted too. A box is attached when the English question names that
organ: first the full name as whole words ("left lung"; a plural "s" allowed), and when no full name
matches, the name's last word ("lung" -> both "Left Lung" and "Right Lung"). Boxes become normalised
[x1, y1, x2, y2] in [0, 1] (clipped). Chinese questions, unmatched questions and images without
detection.json get no boxes. A row that cannot be read (a missing field, a missing image, a detection.json
that cannot be read) is skipped and reported by `load_report`, naming the file and row.

MedEvalKit scores both languages (all 2,094 test rows): `Slake(languages=None)`, the protocol option
`slake_languages="all"`. `meta['kit']` keeps the raw answer and answer_type the kit compares.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vitos.answers import normalize_text
from vitos.data.sample import Sample
from vitos.eval.benchmarks.base import (
    YES_NO,
    Benchmark,
    MalformedDataError,
    RowItem,
    require,
    resolve_image,
    row_or_skip,
)


def parse_detection(data: Any, where: str) -> list[tuple[str, list[float]]]:
    """(organ name, [x, y, w, h]) pairs from a detection.json payload (list of {name: box} or a mapping)."""
    entries: list[tuple[str, Any]] = []
    if isinstance(data, dict):
        entries = list(data.items())
    elif isinstance(data, list):
        for item in data:
            if not isinstance(item, dict):
                raise MalformedDataError(f"{where}: expected objects {{name: [x, y, w, h]}}, got {item!r}")
            entries += list(item.items())
    else:
        raise MalformedDataError(f"{where}: expected a list or object of organ boxes, got {type(data).__name__}")
    boxes: list[tuple[str, list[float]]] = []
    for name, value in entries:
        many = value if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)) else [value]
        for box in many:
            if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
                raise MalformedDataError(f"{where}: box of {name!r} must be 4 numbers [x, y, w, h], got {box!r}")
            boxes.append((str(name), [float(v) for v in box]))
    return boxes


def _names_in(question: str, organ: str) -> bool:
    """Whether the normalised question contains the normalised organ phrase as whole words (plural ok)."""
    phrase = normalize_text(organ)
    return bool(phrase) and re.search(rf"\b{re.escape(phrase)}(?:s|es)?\b", question) is not None


def match_boxes(
    question: str, detections: Sequence[tuple[str, list[float]]], width: int, height: int
) -> list[list[float]]:
    """Normalised [x1, y1, x2, y2] boxes of the organs the question names (rules in the module docstring)."""
    text = normalize_text(question)
    chosen = [box for name, box in detections if _names_in(text, name)]
    if not chosen:
        chosen = [box for name, box in detections if _names_in(text, normalize_text(name).split(" ")[-1])]
    out = []
    for x, y, w, h in chosen:
        x1, y1, x2, y2 = x / width, y / height, (x + w) / width, (y + h) / height
        out.append([min(max(v, 0.0), 1.0) for v in (x1, y1, x2, y2)])
    return out


class Slake(Benchmark):
    name = "slake"
    hub_id = "BoKelvin/SLAKE"
    splits = ("test", "validation", "train")

    def __init__(self, languages: Sequence[str] | None = ("en",)) -> None:
        self.languages = None if languages is None else tuple(languages)

    def hub_files(self, split: str) -> tuple[list[str], list[str]]:
        return [f"{split}.json", "imgs.zip"], ["imgs.zip"]

    def read(self, root: Path, split: str) -> Iterator[RowItem]:
        path = root / f"{split}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{self.name}: {path} not found (expected the release's {split}.json)")
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
        if not isinstance(records, list):
            raise MalformedDataError(f"{path}: expected a JSON list of QA records, got {type(records).__name__}")
        detection_cache: dict[Path, list[tuple[str, list[float]]]] = {}
        for i, row in enumerate(records):
            where = f"{path} row {i}"
            item = row_or_skip(where, self._sample, root, row, where, split, detection_cache)
            if item is not None:
                yield item

    def _sample(
        self, root: Path, row: dict, where: str, split: str, cache: dict[Path, list[tuple[str, list[float]]]]
    ) -> Sample | None:
        lang = str(require(row, "q_lang", where)).strip()
        if self.languages is not None and lang not in self.languages:
            return None
        raw_answer_type = require(row, "answer_type", where)
        answer_type = str(raw_answer_type).strip().upper()
        if answer_type not in ("OPEN", "CLOSED"):
            raise MalformedDataError(f"{where}: answer_type {answer_type!r} is neither OPEN nor CLOSED")
        img_name = str(require(row, "img_name", where)).strip()
        image = resolve_image(root, img_name, where, subdirs=("imgs",))
        question = str(require(row, "question", where)).strip()
        raw_answer = require(row, "answer", where)
        answer = str(raw_answer).strip()
        kind = "open"
        if lang == "en" and answer.lower() in YES_NO:
            answer, kind = answer.lower(), "yes_no"
        boxes: list[list[float]] = []
        if lang == "en":
            detections = self._detections(Path(image).parent / "detection.json", cache)
            if detections:
                from PIL import Image

                with Image.open(image) as im:
                    width, height = im.size
                boxes = match_boxes(question, detections, width, height)
        return Sample(
            id=str(require(row, "qid", where)),
            images=[image],
            question=question,
            answer=answer,
            kind=kind,
            boxes=boxes,
            meta={
                "benchmark": self.name,
                "split": split,
                "closed": answer_type == "CLOSED",
                "answer_type": answer_type,
                "q_lang": lang,
                "content_type": row.get("content_type"),
                "modality": row.get("modality"),
                "location": row.get("location"),
                "img_id": row.get("img_id"),
                "kit": {"answer": str(raw_answer), "answer_type": str(raw_answer_type), "lang": lang},
            },
        )

    @staticmethod
    def _detections(path: Path, cache: dict[Path, list[tuple[str, list[float]]]]) -> list[tuple[str, list[float]]]:
        if path not in cache:
            if not path.is_file():
                cache[path] = []
            else:
                try:
                    with open(path, encoding="utf-8") as f:
                        data = json.load(f)
                except json.JSONDecodeError as exc:
                    raise MalformedDataError(f"{path}: not valid JSON ({exc})") from exc
                cache[path] = parse_detection(data, str(path))
        return cache[path]

"""MedXpertQA-MM (Zuo et al., ICML 2025): expert-level 5-way multiple choice, test = 2,000, often several images.

Local format: the hub release `TsinghuaC3I/MedXpertQA` (config MM) with images.zip extracted:

    <data_dir>/MM/test.jsonl      one JSON object per line: {id, question, options: {"A": ..., "E": ...},
                                  label: "C", images: ["MM-0-a.jpeg", ...], medical_task, body_system,
                                  question_type}         (<data_dir>/test.jsonl is accepted too)
    <data_dir>/images/<name>      the images, in the order of `images`

The release's `question` ends with the options written out ("...\\nAnswer Choices: (A) ... (E) ..."); that
tail is removed by default because the prompt lists `options` itself (otherwise the model sees them
twice). MedEvalKit keeps it: `MedXpertQA(keep_choices_block=True)`, the protocol option
`medxpertqa_choices="keep"`. Splits: test, dev. Ids: the release id. A line that is not JSON, or lacks
a field, or names a missing image, is skipped and reported by `load_report` (file, line number, field).
`meta['kit']`: the kit's choices "A. <text>" and its answer (the raw label).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from vitos.data.sample import Sample
from vitos.eval.benchmarks.base import Benchmark, MalformedDataError, RowItem, require, resolve_image, row_or_skip

_CHOICES_TAIL = re.compile(r"\s*Answer Choices:.*$", re.DOTALL)


class MedXpertQA(Benchmark):
    name = "medxpertqa"
    hub_id = "TsinghuaC3I/MedXpertQA"
    splits = ("test", "dev")

    def __init__(self, keep_choices_block: bool = False) -> None:
        self.keep_choices_block = keep_choices_block

    def hub_files(self, split: str) -> tuple[list[str], list[str]]:
        return [f"MM/{split}.jsonl", "images.zip"], ["images.zip"]

    def read(self, root: Path, split: str) -> Iterator[RowItem]:
        candidates = (root / "MM" / f"{split}.jsonl", root / f"{split}.jsonl")
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"{self.name}: neither {candidates[0]} nor {candidates[1]} exists")
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path} line {line_no}"
                item = row_or_skip(where, self._line, line, root, where, split)
                if item is not None:
                    yield item

    def _line(self, line: str, root: Path, where: str, split: str) -> Sample:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MalformedDataError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise MalformedDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        return self._sample(row, root, where, split)

    def _sample(self, row: dict, root: Path, where: str, split: str) -> Sample:
        raw_options = require(row, "options", where)
        if not isinstance(raw_options, dict) or len(raw_options) < 2:
            raise MalformedDataError(f"{where}: field 'options' must map letters to texts, got {raw_options!r}")
        options = {str(k).strip().upper(): str(v).strip() for k, v in raw_options.items()}
        label = str(require(row, "label", where)).strip().upper()
        if label not in options:
            raise MalformedDataError(
                f"{where}: field 'label' = {label!r} is not one of the option letters {list(options)}"
            )
        names = require(row, "images", where)
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not names:
            raise MalformedDataError(f"{where}: field 'images' must be a non-empty list of file names, got {names!r}")
        raw_question = str(require(row, "question", where))
        question = raw_question.strip() if self.keep_choices_block else _CHOICES_TAIL.sub("", raw_question).strip()
        return Sample(
            id=str(require(row, "id", where)),
            images=[resolve_image(root, str(n), where, subdirs=("images",)) for n in names],
            question=question,
            answer=label,
            kind="choice",
            options=options,
            meta={
                "benchmark": self.name,
                "split": split,
                "medical_task": row.get("medical_task"),
                "body_system": row.get("body_system"),
                "question_type": row.get("question_type"),
                "kit": {"choices": [f"{k}. {v}" for k, v in raw_options.items()], "answer": str(row["label"])},
            },
        )

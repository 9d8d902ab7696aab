"""MedXpertQA-MM (Zuo et al., ICML 2025): expert-level 5-way multiple choice, test = 2,000, often several images.

Local format: the hub release `TsinghuaC3I/MedXpertQA` (config MM) with images.zip extracted:

    <data_dir>/MM/test.jsonl      one JSON object per line: {id, question, options: {"A": ..., "E": ...},
                                  label: "C", images: ["MM-0-a.jpeg", ...], medical_task, body_system,
                                  question_type}         (<data_dir>/test.jsonl is accepted too)
    <data_dir>/images/<name>      the images, in the order of `images`

The release's `question` ends with the options written out ("...\\nAnswer Choices: (A) ... (E) ..."); that
tail is removed because the prompt lists `options` itself (otherwise the model sees them twice).
Splits: test, dev. Ids: the release id. A line that is not JSON, or lacks a field, is an error naming the
file, line number and field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from vitos.data.sample import Sample
from vitos.eval.benchmarks.base import Benchmark, MalformedDataError, require, resolve_image

_CHOICES_TAIL = re.compile(r"\s*Answer Choices:.*$", re.DOTALL)


class MedXpertQA(Benchmark):
    name = "medxpertqa"
    hub_id = "TsinghuaC3I/MedXpertQA"
    splits = ("test", "dev")

    def hub_files(self, split: str) -> tuple[list[str], list[str]]:
        return [f"MM/{split}.jsonl", "images.zip"], ["images.zip"]

    def read(self, root: Path, split: str) -> Iterator[Sample]:
        candidates = (root / "MM" / f"{split}.jsonl", root / f"{split}.jsonl")
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"{self.name}: neither {candidates[0]} nor {candidates[1]} exists")
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path} line {line_no}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise MalformedDataError(f"{where}: not valid JSON ({exc})") from exc
                yield self._sample(row, root, where, split)

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
        question = _CHOICES_TAIL.sub("", str(require(row, "question", where))).strip()
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
            },
        )

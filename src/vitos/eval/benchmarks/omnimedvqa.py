"""OmniMedVQA (Hu et al., CVPR 2024): 2-4-way multiple choice over 12 modalities; open-access part only.

Local format: `foreverbeliever/OmniMedVQA` (OmniMedVQA.zip) extracted:

    <data_dir>/QA_information/Open-access/<dataset>.json   each a JSON list of records
        {question_id, question, gt_answer, option_A, option_B[, option_C, option_D], image_path,
         dataset, question_type, modality_type}
    <data_dir>/<image_path>                                image_path is relative to <data_dir>
                                                           ("Images/<dataset>/...")

The benchmark has no splits: "test" is every open-access question (the restricted part's images are not
public). Files are read in sorted name order, records in file order, so `limit` is reproducible.
Options are the option_X fields present and non-empty, in letter order. The answer letter is the option
whose text equals gt_answer (exact; if none, equal after `normalize_text`; the first such option).
Bad rows -- a gt_answer that matches no option, fewer than two options, a missing field or image -- and
whole files that are not a JSON list are skipped and reported by `load_report`, naming the file and row
(the benchmark has 42 files; one bad row must not cost the other 88,995).

`meta['kit']`: MedEvalKit's choices ("A. <option_A as stored>" for every option_X key present, even a
null one) and its answer: the letter of the LAST option exactly equal to gt_answer, or gt_answer itself
when none is (OmniMedVQA.py `construct_messages`).
Ids: question_id when present, else "<file stem>-<row>".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from vitos.answers import normalize_text
from vitos.data.sample import Sample
from vitos.eval.benchmarks.base import (
    Benchmark,
    MalformedDataError,
    RowItem,
    SkippedRow,
    require,
    resolve_image,
    row_or_skip,
)

QA_DIR = Path("QA_information") / "Open-access"
LETTERS = ("A", "B", "C", "D")


class OmniMedVQA(Benchmark):
    name = "omnimedvqa"
    hub_id = "foreverbeliever/OmniMedVQA"
    splits = ("test",)

    def hub_files(self, split: str) -> tuple[list[str], list[str]]:
        return ["OmniMedVQA.zip"], ["OmniMedVQA.zip"]

    def fetch(self, split: str) -> Path:
        root = super().fetch(split)
        # The zip holds a top-level OmniMedVQA/ folder.
        return root / "OmniMedVQA" if (root / "OmniMedVQA" / QA_DIR).is_dir() else root

    def read(self, root: Path, split: str) -> Iterator[RowItem]:
        folder = root / QA_DIR
        files = sorted(folder.glob("*.json"))
        if not files:
            raise FileNotFoundError(f"{self.name}: no JSON files in {folder} (expected the release's {QA_DIR}/*.json)")
        for path in files:
            try:
                with open(path, encoding="utf-8") as f:
                    records = json.load(f)
            except json.JSONDecodeError as exc:
                yield SkippedRow(f"{path} (whole file)", f"{path}: not valid JSON ({exc}); file skipped")
                continue
            if not isinstance(records, list):
                yield SkippedRow(
                    f"{path} (whole file)",
                    f"{path}: expected a JSON list of QA records, got {type(records).__name__}; file skipped",
                )
                continue
            for i, row in enumerate(records):
                where = f"{path} row {i}"
                item = row_or_skip(where, self._sample, root, path, row, where, split, i)
                if item is not None:
                    yield item

    def _sample(self, root: Path, path: Path, row: dict, where: str, split: str, i: int) -> Sample:
        if not isinstance(row, dict):
            raise MalformedDataError(f"{where}: expected a QA object, got {type(row).__name__}")
        options = {
            letter: str(row[f"option_{letter}"]).strip()
            for letter in LETTERS
            if row.get(f"option_{letter}") is not None and str(row[f"option_{letter}"]).strip()
        }
        if len(options) < 2:
            raise MalformedDataError(f"{where}: fewer than two non-empty option_X fields (got {options})")
        raw_gt = require(row, "gt_answer", where)
        gt = str(raw_gt).strip()
        letter = next((k for k, v in options.items() if v == gt), None)
        if letter is None:
            letter = next((k for k, v in options.items() if normalize_text(v) == normalize_text(gt)), None)
        if letter is None:
            raise MalformedDataError(f"{where}: field 'gt_answer' = {gt!r} equals none of the options {options}")
        kit_choices, kit_answer = [], raw_gt
        for key in LETTERS:
            if f"option_{key}" in row:
                if raw_gt == row[f"option_{key}"]:
                    kit_answer = key
                kit_choices.append(f"{key}. {row[f'option_{key}']}")
        image_path = str(require(row, "image_path", where)).strip()
        qid = row.get("question_id")
        return Sample(
            id=str(qid) if qid is not None else f"{path.stem}-{i}",
            images=[resolve_image(root, image_path, where)],
            question=str(require(row, "question", where)).strip(),
            answer=letter,
            kind="choice",
            options=options,
            meta={
                "benchmark": self.name,
                "split": split,
                "dataset": row.get("dataset", path.stem),
                "question_type": row.get("question_type"),
                "modality_type": row.get("modality_type", row.get("modality")),
                "gt_answer": gt,
                "kit": {"choices": kit_choices, "answer": str(kit_answer)},
            },
        )

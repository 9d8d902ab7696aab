"""PMC-VQA (Zhang et al., 2023): 4-way multiple choice on figures from PubMed Central papers.

Local format: the release CSVs (`xmcmic/PMC-VQA`, mirrored as `RadGenome/PMC-VQA`) + extracted images:

    split "test"        -> <data_dir>/test_2.csv       version 2, the file MedEvalKit scores (anchor scores)
    split "test_clean"  -> <data_dir>/test_clean.csv   version 1 clean test set (2,000)
    split "test_v1"     -> <data_dir>/test.csv
    split "train"       -> <data_dir>/train_2.csv
    images              -> <data_dir>/figures/<Figure_path> (also images/, images_2/ or <data_dir> itself)

Columns read by name (extra columns, e.g. an unnamed pandas index, Caption or split, are ignored):
Figure_path, Question, Choice A..Choice D, and the answer as `Answer_label` (a letter; version 1) or, when
that column is absent, `Answer`. ASSUMPTIONS: option cells carry a letter prefix ("A:Diffuse uptake
pattern", spaces allowed), which is removed; version 2 stores the letter in `Answer` (as MedEvalKit's
use of it implies) -- a letter, "B:text" or the text of one option are all accepted. Empty option cells
are dropped. A bad row (an answer that names no option, fewer than two options, a missing image) is
skipped and reported by `load_report`, naming the file, row and field. `meta['kit']` keeps the raw choice
cells and the raw answer cell, which MedEvalKit compares as they are.
Ids: "<csv stem>-<row number>" (row numbers count data rows from 0).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

from vitos.answers import normalize_text
from vitos.data.sample import Sample
from vitos.eval.benchmarks.base import Benchmark, MalformedDataError, RowItem, require, resolve_image, row_or_skip

SPLIT_FILES = {"test": "test_2.csv", "test_clean": "test_clean.csv", "test_v1": "test.csv", "train": "train_2.csv"}
IMAGE_DIRS = ("figures", "images", "images_2", "")
LETTERS = ("A", "B", "C", "D")
_PREFIX = re.compile(r"^\s*([A-Da-d])\s*[:.)]\s*")


def _option_text(cell: str) -> str:
    return _PREFIX.sub("", cell, count=1).strip()


def _answer_letter(row: dict[str, str], options: dict[str, str], where: str) -> str:
    field = "Answer_label" if (row.get("Answer_label") or "").strip() else "Answer"
    raw = str(require(row, field, where)).strip()
    if raw.upper() in options:
        return raw.upper()
    prefixed = _PREFIX.match(raw)
    if prefixed and prefixed.group(1).upper() in options:
        return prefixed.group(1).upper()
    by_text = [k for k, v in options.items() if normalize_text(v) == normalize_text(raw)]
    if by_text:
        return by_text[0]
    raise MalformedDataError(f"{where}: field {field!r} = {raw!r} names none of the options {options}")


class PMCVQA(Benchmark):
    name = "pmc_vqa"
    hub_id = "RadGenome/PMC-VQA"
    splits = tuple(SPLIT_FILES)

    def hub_files(self, split: str) -> tuple[list[str], list[str]]:
        # ASSUMPTION: version-2 files (test_2/train_2) take their images from images_2.zip, version 1 from
        # images.zip (18.9 GB); the loader looks in every extracted folder anyway.
        zips = ["images_2.zip"] if SPLIT_FILES[split].endswith("_2.csv") else ["images.zip"]
        return [SPLIT_FILES[split], *zips], zips

    def read(self, root: Path, split: str) -> Iterator[RowItem]:
        path = root / SPLIT_FILES[split]
        if not path.is_file():
            raise FileNotFoundError(f"{self.name}: {path} not found (split {split!r} reads {SPLIT_FILES[split]})")
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            for column in ("Figure_path", "Question", "Choice A", "Choice B"):
                if column not in header:
                    raise MalformedDataError(f"{path}: missing column {column!r} (columns: {header})")
            if "Answer_label" not in header and "Answer" not in header:
                raise MalformedDataError(f"{path}: needs an 'Answer_label' or 'Answer' column (columns: {header})")
            for i, row in enumerate(reader):
                where = f"{path} row {i}"
                item = row_or_skip(where, self._sample, root, path, row, where, split, i, header)
                if item is not None:
                    yield item

    def _sample(self, root: Path, path: Path, row: dict, where: str, split: str, i: int, header: list) -> Sample:
        options = {
            letter: _option_text(row[f"Choice {letter}"])
            for letter in LETTERS
            if (row.get(f"Choice {letter}") or "").strip()
        }
        if len(options) < 2:
            raise MalformedDataError(f"{where}: fewer than two non-empty 'Choice X' fields ({options})")
        figure = str(require(row, "Figure_path", where)).strip()
        kit_answer_field = "Answer_label" if (row.get("Answer_label") or "").strip() else "Answer"
        kit = {
            "choices": [row.get(f"Choice {letter}") or "" for letter in LETTERS if f"Choice {letter}" in header],
            "answer": row.get(kit_answer_field) or "",
        }
        return Sample(
            id=f"{path.stem}-{i}",
            images=[resolve_image(root, figure, where, subdirs=IMAGE_DIRS)],
            question=str(require(row, "Question", where)).strip(),
            answer=_answer_letter(row, options, where),
            kind="choice",
            options=options,
            meta={"benchmark": self.name, "split": split, "figure_path": figure, "kit": kit},
        )

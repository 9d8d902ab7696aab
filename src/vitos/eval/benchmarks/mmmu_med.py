"""MMMU Health & Medicine (Yue et al., CVPR 2024): five subjects, validation = 150 questions (30 each).

Local format: the hub copy `MMMU/MMMU`, one parquet per subject and split:

    <data_dir>/<Subject>/validation-00000-of-00001.parquet
        columns id, question, options (Python list literal as text, "['a', 'b']"), answer, question_type
        ('multiple-choice' | 'open'), image_1 .. image_7 ({bytes, path} or null), subfield, img_type, ...

Subjects: Basic_Medical_Science, Clinical_Medicine, Diagnostics_and_Laboratory_Medicine, Pharmacy,
Public_Health, read in that order. Splits: "test" is an ALIAS of "validation" (MMMU's test answers are
hidden, and the reported Health & Medicine numbers are on validation); "dev" is also accepted.

Images: the non-null image_k columns in k order. Placeholders `<image k>` in the question and options are
rewritten to "image p", p being that image's 1-based position in `Sample.images`, so the text keeps
pointing at the right picture; a placeholder whose column is empty makes the row bad. MedEvalKit shows
the model `image_1` only (MMMU/data_utils.py `process_single_sample`): `MMMUMed(images="first")`, the
protocol option `mmmu_images="first"`, keeps image_1 alone and writes every `<image k>` as "image k".
Bad rows are skipped and reported by `load_report`, naming the file and row.
`meta['kit']`: the kit's question_type, raw answer, letters and raw option texts (`index2ans`).
Kind: 'choice' (letters A.. over the options list; answer = the letter) for multiple-choice rows,
'open' otherwise. ASSUMPTION: an open answer written as a list literal ("['6', '6.0']") lists accepted
variants; the first becomes `answer`, all are kept in meta['answers'].
"""

from __future__ import annotations

import ast
import re
import string
from collections.abc import Iterator
from pathlib import Path

from vitos.data.sample import Sample
from vitos.eval.benchmarks.base import (
    Benchmark,
    MalformedDataError,
    RowItem,
    image_from_cell,
    read_parquet_rows,
    require,
    row_or_skip,
)

SUBJECTS = (
    "Basic_Medical_Science",
    "Clinical_Medicine",
    "Diagnostics_and_Laboratory_Medicine",
    "Pharmacy",
    "Public_Health",
)
SPLIT_ALIASES = {"test": "validation", "validation": "validation", "dev": "dev"}
MAX_IMAGES = 7
_PLACEHOLDER = re.compile(r"<image (\d+)>")


def _literal_list(text: object, where: str, field: str) -> list[str]:
    if isinstance(text, list):
        return [str(v) for v in text]
    try:
        value = ast.literal_eval(str(text))
    except (ValueError, SyntaxError) as exc:
        raise MalformedDataError(f"{where}: field {field!r} is not a list literal: {text!r}") from exc
    if not isinstance(value, list):
        raise MalformedDataError(f"{where}: field {field!r} should be a list, got {type(value).__name__}")
    return [str(v) for v in value]


class MMMUMed(Benchmark):
    name = "mmmu_med"
    hub_id = "MMMU/MMMU"
    splits = tuple(SPLIT_ALIASES)

    def __init__(self, images: str = "all") -> None:
        if images not in ("all", "first"):
            raise ValueError(f"images must be 'all' or 'first', got {images!r}")
        self.images = images

    def hub_files(self, split: str) -> tuple[list[str], list[str]]:
        return [f"{s}/{SPLIT_ALIASES[split]}-*.parquet" for s in SUBJECTS], []

    def read(self, root: Path, split: str) -> Iterator[RowItem]:
        real_split = SPLIT_ALIASES[split]
        for subject in SUBJECTS:
            files = sorted((root / subject).glob(f"{real_split}-*.parquet"))
            if not files:
                raise FileNotFoundError(
                    f"{self.name}: no {root / subject}/{real_split}-*.parquet (hub layout of MMMU/MMMU)"
                )
            for path in files:
                for i, row in enumerate(read_parquet_rows(path, ["id", "question", "options", "answer"])):
                    where = f"{path} row {i}"
                    item = row_or_skip(where, self._sample, row, where, subject, real_split)
                    if item is not None:
                        yield item

    def _sample(self, row: dict, where: str, subject: str, split: str) -> Sample:
        images, position = [], {}
        for k in range(1, (1 if self.images == "first" else MAX_IMAGES) + 1):
            cell = row.get(f"image_{k}")
            if cell is not None and (not isinstance(cell, dict) or cell.get("bytes")):
                images.append(image_from_cell(cell, f"{where} image_{k}"))
                position[k] = len(images)
        if not images:
            raise MalformedDataError(f"{where}: no image (field 'image_1' is empty)")

        def rewrite(text: str) -> str:
            def sub(m: re.Match[str]) -> str:
                k = int(m.group(1))
                if self.images == "first":
                    return f"image {k}"
                if k not in position:
                    raise MalformedDataError(f"{where}: text refers to <image {k}> but field 'image_{k}' is empty")
                return f"image {position[k]}"

            return _PLACEHOLDER.sub(sub, text).strip()

        question = rewrite(str(require(row, "question", where)))
        raw_options = _literal_list(require(row, "options", where), where, "options")
        options_list = [rewrite(o) for o in raw_options]
        raw_answer = str(require(row, "answer", where)).strip()
        question_type = row.get("question_type") or ("multiple-choice" if options_list else "open")
        letters = list(string.ascii_uppercase[: len(raw_options)])
        meta = {
            "benchmark": self.name,
            "split": split,
            "subject": subject,
            "subfield": row.get("subfield"),
            "question_type": question_type,
            "img_type": row.get("img_type"),
            "topic_difficulty": row.get("topic_difficulty"),
            "kit": {
                "question_type": question_type,
                "answer": str(row["answer"]),
                "all_choices": letters,
                "index2ans": dict(zip(letters, raw_options)),
            },
        }
        if question_type == "multiple-choice":
            if len(options_list) < 2:
                raise MalformedDataError(f"{where}: multiple-choice row with fewer than two options in 'options'")
            options = dict(zip(string.ascii_uppercase, options_list))
            if raw_answer.upper() not in options:
                raise MalformedDataError(
                    f"{where}: field 'answer' = {raw_answer!r} is not one of the letters {list(options)}"
                )
            return Sample(
                id=str(require(row, "id", where)), images=images, question=question,
                answer=raw_answer.upper(), kind="choice", options=options, meta=meta,
            )
        answers = _literal_list(raw_answer, where, "answer") if raw_answer.startswith("[") else [raw_answer]
        if not answers:
            raise MalformedDataError(f"{where}: field 'answer' is an empty list")
        meta["answers"] = answers
        return Sample(
            id=str(require(row, "id", where)), images=images, question=question,
            answer=answers[0], kind="open", meta=meta,
        )

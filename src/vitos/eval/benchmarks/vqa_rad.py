"""VQA-RAD (Lau et al., Scientific Data 2018): radiology yes/no + open questions, test = 451 questions.

Local format: the ORIGINAL OSF release (https://osf.io/89kps/), as shipped in ../shared/data/vqa_rad:

    <data_dir>/VQA_RAD Dataset Public.json   list of 2,248 records (qid, phrase_type, image_name, question,
                                             answer, answer_type, question_type, image_organ, ...)
    <data_dir>/images/<image_name>           315 JPEGs

Splits (as medical VLM papers use them): test = phrase_type in {test_freeform, test_para} (308 + 143 =
451); train = {freeform, para} (1,797). Any other phrase_type is an error, so a changed release cannot
silently move questions between splits.

Quirks handled (all real, see PROVENANCE.md): qid "0" is a string (ids are `str(qid)`); five answers are
ints (-> "4"); one answer has surrounding white space (stripped); answer case is mixed (yes/no answers
become 'yes'/'no'); two answer_type values are "CLOSED " (stripped in meta).

Kind: 'yes_no' when the answer is yes/no, else 'open' -- the rule MedEvalKit applies to the hub copy
(251 yes/no + 200 open on test). The OSF `answer_type` (272 CLOSED / 179 OPEN on test) is kept in
`meta['answer_type']` but does not drive the closed/open report split, so numbers stay comparable with
the anchor scores.

A bad row (a missing field, an unknown phrase_type, a missing image) is skipped and reported by
`load_report`, naming the file and row. `meta['kit']['answer']` is the answer as MedEvalKit compares it
(lower-cased, stripped).

Also reads the hub copy (`flaviagiammarino/vqa-rad`: data/<split>-*.parquet with image/question/answer;
1,793 train / 451 test; no answer_type, no ids -> ids "<split>-<row>"). `load(None)` uses it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from vitos.data.sample import Sample
from vitos.eval.benchmarks.base import (
    YES_NO,
    Benchmark,
    MalformedDataError,
    RowItem,
    image_from_cell,
    iter_parquet_split,
    require,
    resolve_image,
    row_or_skip,
)

OSF_JSON = "VQA_RAD Dataset Public.json"
PHRASE_TYPES = {"test": ("test_freeform", "test_para"), "train": ("freeform", "para")}


def _answer(raw: object) -> tuple[str, str]:
    """(answer, kind): ints become text, white space is stripped, yes/no is lower-cased."""
    answer = str(raw).strip()
    if answer.lower() in YES_NO:
        return answer.lower(), "yes_no"
    return answer, "open"


class VQARad(Benchmark):
    name = "vqa_rad"
    hub_id = "flaviagiammarino/vqa-rad"
    splits = ("test", "train")

    def hub_files(self, split: str) -> tuple[list[str], list[str]]:
        return [f"data/{split}-*.parquet"], []

    def read(self, root: Path, split: str) -> Iterator[RowItem]:
        if (root / OSF_JSON).is_file():
            yield from self._read_osf(root, split)
        else:
            yield from self._read_hub(root, split)

    def _read_osf(self, root: Path, split: str) -> Iterator[RowItem]:
        path = root / OSF_JSON
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
        if not isinstance(records, list):
            raise MalformedDataError(f"{path}: expected a JSON list of QA records, got {type(records).__name__}")
        for i, row in enumerate(records):
            where = f"{path} row {i}"
            item = row_or_skip(where, self._osf_sample, root, row, where, split)
            if item is not None:
                yield item

    def _osf_sample(self, root: Path, row: dict, where: str, split: str) -> Sample | None:
        known = {p for phrases in PHRASE_TYPES.values() for p in phrases}
        phrase_type = require(row, "phrase_type", where)
        if phrase_type not in known:
            raise MalformedDataError(f"{where}: unknown phrase_type {phrase_type!r}; expected one of {sorted(known)}")
        if phrase_type not in PHRASE_TYPES[split]:
            return None
        raw_answer = require(row, "answer", where)
        answer, kind = _answer(raw_answer)
        image_name = str(require(row, "image_name", where)).strip()
        answer_type = row.get("answer_type")
        return Sample(
            id=str(require(row, "qid", where)).strip(),
            images=[resolve_image(root, image_name, where, subdirs=("images",))],
            question=str(require(row, "question", where)).strip(),
            answer=answer,
            kind=kind,
            meta={
                "benchmark": self.name,
                "split": split,
                "answer_type": answer_type.strip().upper() if isinstance(answer_type, str) else answer_type,
                "phrase_type": phrase_type,
                "question_type": row.get("question_type"),
                "image_organ": row.get("image_organ"),
                "qid_linked_id": row.get("qid_linked_id"),
                "kit": {"answer": str(raw_answer).lower().strip()},
            },
        )

    def _read_hub(self, root: Path, split: str) -> Iterator[RowItem]:
        if not any(root.glob("*.parquet")) and not any(root.glob("data/*.parquet")):
            raise FileNotFoundError(
                f"{self.name}: {root} holds neither {OSF_JSON!r} (OSF release) nor hub parquet files"
            )
        for index, where, row in iter_parquet_split(root, split, ["image", "question", "answer"]):
            item = row_or_skip(where, self._hub_sample, row, where, split, index)
            if item is not None:
                yield item

    def _hub_sample(self, row: dict, where: str, split: str, index: int) -> Sample:
        raw_answer = require(row, "answer", where)
        answer, kind = _answer(raw_answer)
        return Sample(
            id=f"{split}-{index}",
            images=[image_from_cell(require(row, "image", where), where)],
            question=str(require(row, "question", where)).strip(),
            answer=answer,
            kind=kind,
            meta={
                "benchmark": self.name, "split": split, "source": "hub",
                "kit": {"answer": str(raw_answer).lower().strip()},
            },  # fmt: skip
        )

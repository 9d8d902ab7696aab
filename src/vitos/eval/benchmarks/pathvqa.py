"""PathVQA (He et al., 2020): pathology yes/no + open questions; test = 6,719 questions.

Local format (chosen, documented): the hub copy `flaviagiammarino/path-vqa` as downloaded, i.e. parquet
shards with the image bytes inside:

    <data_dir>/data/test-00000-of-0000N-*.parquet    columns image {bytes, path}, question, answer
    (shards directly in <data_dir> are accepted too; splits train / validation / test)

The original PathVQA release is a set of pickles of pre-processed features, which no current tool reads;
the hub parquet is the copy every recent evaluation (MedEvalKit included) uses.

Kind: 'yes_no' when the answer is yes/no, else 'open'. Ids: "<split>-<row index over the shards>".
Images: lazily decoded PIL images (the bytes stay in memory, one compressed copy per question).
A bad row is skipped and reported by `load_report`. `meta['kit']['answer']`: the answer lower-cased and
stripped, as MedEvalKit compares it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vitos.data.sample import Sample
from vitos.eval.benchmarks.base import (
    YES_NO,
    Benchmark,
    RowItem,
    image_from_cell,
    iter_parquet_split,
    require,
    row_or_skip,
)


class PathVQA(Benchmark):
    name = "pathvqa"
    hub_id = "flaviagiammarino/path-vqa"
    splits = ("test", "validation", "train")

    def hub_files(self, split: str) -> tuple[list[str], list[str]]:
        return [f"data/{split}-*.parquet"], []

    def read(self, root: Path, split: str) -> Iterator[RowItem]:
        for index, where, row in iter_parquet_split(root, split, ["image", "question", "answer"]):
            item = row_or_skip(where, self._sample, row, where, split, index)
            if item is not None:
                yield item

    def _sample(self, row: dict, where: str, split: str, index: int) -> Sample:
        raw_answer = require(row, "answer", where)
        answer = str(raw_answer).strip()
        kind = "open"
        if answer.lower() in YES_NO:
            answer, kind = answer.lower(), "yes_no"
        return Sample(
            id=f"{split}-{index}",
            images=[image_from_cell(require(row, "image", where), where)],
            question=str(require(row, "question", where)).strip(),
            answer=answer,
            kind=kind,
            meta={"benchmark": self.name, "split": split, "kit": {"answer": str(raw_answer).lower().strip()}},
        )

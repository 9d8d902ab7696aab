"""The benchmark contract, the shared prompt format and small helpers the per-benchmark loaders use.

A benchmark is one small module (as in MedEvalKit's `utils/<BENCH>/`): it knows the hub id, reads a local
copy in the ORIGINAL release format into `Sample`s, and writes the question prompt. Nothing else (no
model, no scoring: that is `vitos.answers` + `vitos.eval.scoring`).

    bench = BENCHMARKS["vqa_rad"]
    samples = bench.load("/data/vqa_rad", split="test", limit=20)   # local copy, no network
    text = bench.prompt(samples[0])                                 # question + answer instruction

`load(data_dir=None)` downloads the hub copy with `huggingface_hub` (imported lazily, only then) into
`$VITOS_CACHE/benchmarks/<name>` (default `~/.cache/vitos/benchmarks/<name>`), extracts the image zips
once, and reads it like a local copy. Without the package or without network it raises a RuntimeError
that says how to pass a local `data_dir` instead.

`split="test"` always means "the split the benchmark is reported on" (for MMMU that is validation, whose
answers are public); each module lists the splits it accepts.

Bad rows: a row that cannot become a Sample (a missing field, an answer that names no option, a missing
image, a line that is not JSON) is SKIPPED and reported, not fatal: `load_report(...)` returns the samples
and one `SkippedRow(where, reason)` per bad row, naming the file and row; `load(...)` returns the samples
only; `strict=True` raises the first row error instead. Problems with a whole file (missing, not the
expected container, missing columns) still raise.

Compat fields: each loader stores in `meta['kit']` what MedEvalKit would know about the row (the raw
answer, the kit's choice strings, ...), which `vitos.eval.medevalkit` needs to reproduce its verdicts.

Prompt format (MedEvalKit wording for the choice instruction, REFERENCE.md section 3):
    yes/no:  "<question>\\nAnswer yes or no."
    choice:  "<question>\\nA. <option>\\nB. <option>...\\nAnswer with the option's letter from the given
              choices directly."
    open:    "<question>\\nAnswer with a concise phrase."
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

from vitos.data.sample import Sample

__all__ = [
    "Benchmark",
    "MalformedDataError",
    "SkippedRow",
    "LoadReport",
    "row_or_skip",
    "format_prompt",
    "medevalkit_prompt",
    "require",
    "resolve_image",
    "image_from_cell",
    "read_parquet_rows",
    "hub_parquet_files",
    "iter_parquet_split",
    "fetch_from_hub",
    "YES_NO",
    "INSTRUCTIONS",
]

YES_NO = ("yes", "no")

INSTRUCTIONS = {
    "yes_no": "Answer yes or no.",
    "choice": "Answer with the option's letter from the given choices directly.",
    "open": "Answer with a concise phrase.",
}


class MalformedDataError(ValueError):
    """A release file does not have the shape its loader expects; the message names file, row and field."""


@dataclass(frozen=True)
class SkippedRow:
    """One row a loader could not read: `where` names the file and row, `reason` is the full message."""

    where: str
    reason: str
    error: BaseException | None = field(default=None, compare=False, repr=False)


@dataclass
class LoadReport:
    """What `Benchmark.load_report` read: the samples and the rows it skipped."""

    samples: list[Sample]
    skipped: list[SkippedRow]


ROW_ERRORS = (MalformedDataError, FileNotFoundError)
"""Errors that condemn one row only (a missing image is a FileNotFoundError naming the row)."""

RowItem = Union[Sample, SkippedRow]


def row_or_skip(where: str, build: Callable[..., Sample | None], *args: Any) -> Sample | SkippedRow | None:
    """`build(*args)` (a Sample, or None for a row outside the split), or a SkippedRow when it raises a row
    error (MalformedDataError, FileNotFoundError)."""
    try:
        return build(*args)
    except ROW_ERRORS as exc:
        return SkippedRow(where, str(exc), exc)


def format_prompt(sample: Sample) -> str:
    """The question, its options (choice questions) and the answer instruction for `sample.kind`."""
    if sample.kind not in INSTRUCTIONS:
        raise ValueError(f"sample {sample.id!r} has unknown kind {sample.kind!r}; expected one of {list(INSTRUCTIONS)}")
    lines = [sample.question.strip()]
    if sample.kind == "choice":
        if not sample.options:
            raise ValueError(f"choice sample {sample.id!r} has no options to show")
        lines += [f"{letter}. {text}" for letter, text in sample.options.items()]
    lines.append(INSTRUCTIONS[sample.kind])
    return "\n".join(lines)


def medevalkit_prompt(sample: Sample) -> str:
    """The question prompt MedEvalKit writes for `sample` (utils/question_formats.py, REASONING=False;
    MMMU: utils/MMMU/data_utils.py `construct_prompt`), from `sample.meta['kit']` where the loader set it.

    choice: "\\nQuestion: <q>\\nOptions: \\n<kit choices, one a line>\\nAnswer with the option's letter from the
    given choices directly."; yes/no: "<q>\\nPlease output 'yes' or 'no'(no extra output)."; open: "<q>\\nPlease
    answer the question concisely."; SLAKE closed: "<q>\\nAnswer the question using a single word or phrase."
    (and the Chinese wordings for Chinese rows); MMMU: its own template with "(A) option" lines.
    """
    kit = sample.meta.get("kit") or {}
    bench = sample.meta.get("benchmark")
    q = sample.question
    if bench == "mmmu_med":
        if sample.kind == "choice":
            letters = kit.get("all_choices") or list(sample.options or {})
            texts = kit.get("index2ans") or dict(sample.options or {})
            example = "".join(f"({c}) {texts[c]}\n" for c in letters)
            return f"\n{q}\n\n{example}\n\n        Answer with the option's letter from the given choices directly."
        return f"\n{q}\n\n        Answer the question using a single word or phrase."
    zh = kit.get("lang") == "zh"
    if sample.kind == "choice":
        choices = kit.get("choices") or [f"{k}. {v}" for k, v in (sample.options or {}).items()]
        options = "\n".join(str(c) for c in choices)
        if zh:
            return f"\n问题： {q}\n选项： \n{options}\n请直接使用给定选项中的选项字母来回答该问题。"
        return f"\nQuestion: {q}\nOptions: \n{options}\nAnswer with the option's letter from the given choices directly."
    if bench == "slake":
        if kit.get("answer_type", "OPEN") == "OPEN":
            return q + ("\n请简要回答该问题。" if zh else "\nPlease answer the question concisely.")
        return q + ("\n请用一个单词或者短语回答该问题。" if zh else "\nAnswer the question using a single word or phrase.")
    if sample.kind == "yes_no":
        return q + "\nPlease output 'yes' or 'no'(no extra output)."
    return q + "\nPlease answer the question concisely."


def require(row: Mapping[str, Any], field: str, where: str, *, allow_empty: bool = False) -> Any:
    """`row[field]`, or a MalformedDataError naming `where` (file and row) and the missing field."""
    if not isinstance(row, Mapping):
        raise MalformedDataError(f"{where}: expected an object with field {field!r}, got {type(row).__name__}")
    if field not in row or row[field] is None:
        raise MalformedDataError(f"{where}: missing field {field!r} (fields present: {sorted(map(str, row))})")
    value = row[field]
    if not allow_empty and isinstance(value, str) and not value.strip():
        raise MalformedDataError(f"{where}: field {field!r} is empty")
    return value


def resolve_image(root: Path, relative: str, where: str, subdirs: Iterable[str] = ("",)) -> str:
    """Absolute path of `relative` under the first of `root/<subdir>` that holds it, else FileNotFoundError."""
    tried = []
    for sub in subdirs:
        candidate = (root / sub / relative) if sub else (root / relative)
        if candidate.is_file():
            return str(candidate.resolve())
        tried.append(str(candidate))
    raise FileNotFoundError(f"{where}: image {relative!r} not found; tried {tried}. Is the image archive extracted?")


def image_from_cell(cell: Any, where: str) -> Any:
    """A lazily decoded PIL image from a parquet image cell ({'bytes': ..., 'path': ...} or raw bytes)."""
    from PIL import Image

    data = cell.get("bytes") if isinstance(cell, Mapping) else cell
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise MalformedDataError(f"{where}: image cell holds no bytes (got {type(data).__name__})")
    try:
        return Image.open(io.BytesIO(data))  # header only; pixels are decoded on first use
    except Exception as exc:  # PIL raises several types for undecodable data
        raise MalformedDataError(f"{where}: image bytes cannot be decoded: {exc}") from exc


def read_parquet_rows(path: Path, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """All rows of a parquet file as dicts (pyarrow, imported lazily: only parquet benchmarks need it)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise RuntimeError("reading parquet needs pyarrow: pip install 'vitos[parquet]'") from exc
    table = pq.read_table(path)
    if columns:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise MalformedDataError(f"{path}: missing column(s) {missing} (columns present: {table.column_names})")
    return table.to_pylist()


def hub_parquet_files(root: Path, split: str) -> list[Path]:
    """The hub-layout parquet shards of `split`: `root/data/<split>-*.parquet` or `root/<split>-*.parquet`."""
    for folder in (root / "data", root):
        files = sorted(folder.glob(f"{split}-*.parquet"))
        if files:
            return files
    raise FileNotFoundError(
        f"no parquet files for split {split!r} under {root} (expected {root / 'data'}/{split}-*.parquet, "
        "the hub layout)"
    )


def iter_parquet_split(root: Path, split: str, columns: list[str]) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(running index, "file row i" for messages, row) over the hub-layout shards of `split`, in order."""
    index = 0
    for path in hub_parquet_files(root, split):
        for i, row in enumerate(read_parquet_rows(path, columns)):
            yield index, f"{path} row {i}", row
            index += 1


def cache_dir(name: str) -> Path:
    """Where `fetch_from_hub` keeps a benchmark: $VITOS_CACHE/benchmarks/<name> or ~/.cache/vitos/..."""
    base = os.environ.get("VITOS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vitos")
    return Path(base) / "benchmarks" / name


def fetch_from_hub(name: str, hub_id: str, allow_patterns: list[str], zips: Iterable[str] = ()) -> Path:
    """Download the files of `hub_id` matching `allow_patterns`, extract `zips` once; return the folder."""
    try:
        import huggingface_hub
    except ImportError as exc:
        raise RuntimeError(
            f"loading {name} from the hub ({hub_id}) needs huggingface_hub (pip install huggingface_hub); "
            f"or download it yourself and pass data_dir=<folder in the original release format>"
        ) from exc
    target = cache_dir(name)
    try:
        huggingface_hub.snapshot_download(
            repo_id=hub_id, repo_type="dataset", local_dir=str(target), allow_patterns=allow_patterns
        )
    except Exception as exc:  # offline, gated repo, missing file: all end the same way for the caller
        raise RuntimeError(
            f"could not download {name} from the hub ({hub_id}, files {allow_patterns}): {exc}. "
            f"Without network, download it elsewhere and pass data_dir=<folder in the original release format>"
        ) from exc
    for zip_name in zips:
        archive, marker = target / zip_name, target / f".{zip_name}.extracted"
        if archive.is_file() and not marker.exists():
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(target)
            marker.touch()
    return target


class Benchmark:
    """One benchmark: `name`, `hub_id`, `load(...) -> list[Sample]`, `prompt(sample) -> str`.

    Subclasses set `name`, `hub_id`, `splits` (accepted split names) and implement `read(root, split)`
    (yield Samples from a local copy in the original format) and `hub_files(split)` (what to download).
    """

    name: ClassVar[str]
    hub_id: ClassVar[str]
    splits: ClassVar[tuple[str, ...]] = ("test",)

    def load(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        split: str = "test",
        limit: int | None = None,
        strict: bool = False,
    ) -> list[Sample]:
        """Samples of `split` from `data_dir` (original release format) or, when None, from the hub copy.
        Bad rows are skipped (see `load_report`); `strict=True` raises on the first one instead."""
        return self.load_report(data_dir, split, limit, strict).samples

    def load_report(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        split: str = "test",
        limit: int | None = None,
        strict: bool = False,
    ) -> LoadReport:
        """The first `limit` good samples of `split` and every bad row met on the way (file and row named)."""
        if split not in self.splits:
            raise ValueError(f"{self.name}: unknown split {split!r}; accepted: {list(self.splits)}")
        if limit is not None and limit < 0:
            raise ValueError(f"{self.name}: limit must be >= 0 or None, got {limit}")
        if data_dir is None:
            root = self.fetch(split)
        else:
            root = Path(data_dir).expanduser()
            if not root.is_dir():
                raise FileNotFoundError(f"{self.name}: data_dir {str(root)!r} is not a folder")
        samples: list[Sample] = []
        skipped: list[SkippedRow] = []
        if limit == 0:
            return LoadReport(samples, skipped)
        for item in self.read(root, split):
            if isinstance(item, SkippedRow):
                if strict:
                    raise item.error if item.error is not None else MalformedDataError(item.reason)
                skipped.append(item)
                continue
            samples.append(item)
            if limit is not None and len(samples) >= limit:
                break
        return LoadReport(samples, skipped)

    def fetch(self, split: str) -> Path:
        """Download the hub copy (lazily importing huggingface_hub) and return its local folder."""
        patterns, zips = self.hub_files(split)
        return fetch_from_hub(self.name, self.hub_id, patterns, zips)

    def hub_files(self, split: str) -> tuple[list[str], list[str]]:
        """(allow_patterns, zip files to extract) of the hub repository for `split`."""
        raise NotImplementedError

    def read(self, root: Path, split: str) -> Iterator[RowItem]:
        """Yield the Samples of `split` from the local folder `root`, and a SkippedRow for each bad row."""
        raise NotImplementedError

    def prompt(self, sample: Sample) -> str:
        """Question (+ options) + the answer instruction; see the module docstring for the format."""
        return format_prompt(sample)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, hub_id={self.hub_id!r})"

"""The resumable prediction log of `vitos eval`: DIR/<benchmark>/predictions.jsonl.

One JSON line per finished sample, appended, flushed and fsync'd per batch (append-safe: a kill leaves
every earlier line intact and at most one torn last line). A rerun skips finished ids; a torn last line
(cut anywhere, inside a multi-byte character included) is dropped, the file rewritten atomically without
it (temp + rename), and its sample redone; duplicate ids keep the first
record; a broken line elsewhere is an error (`EvalError`). Fields: `vitos.eval.loop.RECORD_FIELDS`.

    records = read_predictions("runs/x/vqa_rad/predictions.jsonl")     # id -> record, file order
    budgets = load_budgets("runs/lingshu/vitos", "vqa_rad")            # id -> visual_tokens_kept
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vitos.eval.baselines import budgets_from_records
from vitos.paths import fsync_dir

__all__ = ["EvalError", "read_predictions", "open_log", "append_records", "load_budgets"]


class EvalError(ValueError):
    """A problem the user can fix (data missing, run folder holding another run, bad budget file)."""


def _scan(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """(records by id, lines dropped) of a predictions.jsonl; see `read_predictions`."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    records: dict[str, dict[str, Any]] = {}
    dropped = 0
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):  # a cut can split a multi-byte character too
            if i == len(lines) - 1:  # no newline after it: the write was cut by a kill
                dropped += 1
                continue
            raise EvalError(f"{path} line {i + 1} is not JSON; delete that line (its sample will be redone)") from None
        if not isinstance(rec, dict) or "id" not in rec:
            raise EvalError(f"{path} line {i + 1} is not a prediction record (no 'id'); delete that line")
        key = str(rec["id"])
        if key in records:
            dropped += 1
            continue
        records[key] = rec
    return records, dropped


def read_predictions(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Records of a predictions.jsonl by sample id (file order): a torn last line is ignored, a repeated
    id keeps its first record, a broken line elsewhere raises EvalError."""
    return _scan(Path(path))[0]


def open_log(path: Path) -> dict[str, dict[str, Any]]:
    """Finished records of `path`; rewrites the file (atomically) without a torn line or duplicates."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        return {}
    records, dropped = _scan(path)
    if dropped or (path.stat().st_size and not path.read_bytes().endswith(b"\n")):
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records.values())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    return records


def append_records(path: Path, records: list[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        f.flush()
        os.fsync(f.fileno())  # a finished batch survives a kill or a power cut


def load_budgets(source: str | os.PathLike[str], benchmark: str, several: bool = False) -> dict[str, int]:
    """Per-sample token budgets of `benchmark` from a run folder (SOURCE/<benchmark>/predictions.jsonl) or,
    when only one benchmark is evaluated, from one predictions.jsonl file."""
    src = Path(source).expanduser()
    if src.is_dir():
        path = src / benchmark / "predictions.jsonl"
    elif src.is_file() and not several:
        path = src
    elif src.is_file():
        raise EvalError(f"--budget-from {src} is one file but several benchmarks are evaluated; pass the run folder")
    else:
        raise EvalError(f"--budget-from {src} does not exist; pass a vitos run folder or its predictions.jsonl")
    if not path.is_file():
        raise EvalError(f"--budget-from: {path} not found; run `vitos eval --mode vitos` on {benchmark} first")
    return budgets_from_records(read_predictions(path).values())

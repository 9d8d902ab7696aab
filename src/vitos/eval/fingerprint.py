"""What a model IS, cheaply: the fingerprint that keys `vitos eval`'s resumable predictions.

A run folder's predictions are reused only for the same model. The model's path is not enough (new weights
saved under the same `--model` folder would reuse the old predictions), and hashing gigabytes of weights on
every resume is too slow. The choice, for a local folder:

    config.json          sha256 of its bytes (architecture, vocabulary, rope ...);
    every weight file    (*.safetensors, *.bin, *.pt, *.pth, *.ckpt, *.gguf, *.npz, below the folder)
                         its relative name, its size and the sha256 of its first and last MiB.

Safetensors put their header (tensor names, dtypes, shapes, offsets) in the first bytes, and every saved
tensor changes the data bytes around it; a retrained model of the same architecture changes the first MiB
of data after the header and the last MiB (the last tensors) with near certainty: the fingerprint of a 15 GB
checkpoint costs a few MiB of reads. A change only in the middle of a large file (a single tensor edited
in place) would go unseen; that is the price of a cheap key, stated here. Tokenizer files and
vitos_settings.json are not hashed: the settings they carry that change outputs (pruning, generation) are
part of the run's config already.

For a hub id the fingerprint is the commit of the cached snapshot (`huggingface_hub`'s cache, never a
download), or the bare id when nothing is cached (commit None: a run that downloads the model starts that
way, and any commit is then accepted once; the key is rewritten with the commit on every run). `describe_change(old, new)` names what differs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

__all__ = ["model_fingerprint", "describe_change", "WEIGHT_SUFFIXES", "EDGE_BYTES"]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".npz")
EDGE_BYTES = 1 << 20
"""Bytes hashed at the start and at the end of each weight file."""


def _file_digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(EDGE_BYTES))
        if size > EDGE_BYTES:
            f.seek(max(EDGE_BYTES, size - EDGE_BYTES))
            h.update(f.read(EDGE_BYTES))
    return h.hexdigest()


def model_fingerprint(model: str | os.PathLike[str]) -> dict[str, Any]:
    """{"kind": "folder", "config_sha256", "weights": {relative name: "size:sha256-of-edges"}} for a local
    folder, {"kind": "hub", "id", "commit"} for a hub id (commit None when not cached). Raises OSError when a
    file of the folder cannot be read."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        config = folder / "config.json"
        weights = {}
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix in WEIGHT_SUFFIXES and not any(p.startswith(".") for p in path.relative_to(folder).parts):
                weights[path.relative_to(folder).as_posix()] = f"{path.stat().st_size}:{_file_digest(path)}"
        return {
            "kind": "folder",
            "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None,
            "weights": weights,
        }
    commit = None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(model), "config.json")
        if isinstance(cached, str):
            commit = Path(cached).parent.name  # .../snapshots/<commit>/config.json
    except Exception:  # not a repo id, or no huggingface_hub: the id is all there is
        commit = None
    return {"kind": "hub", "id": str(model), "commit": commit}


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between two fingerprints, in words ('' when they are equal)."""
    if old == new:
        return ""
    if old.get("kind") != new.get("kind"):
        return f"the model was a {old.get('kind')} and is now a {new.get('kind')}"
    if new.get("kind") == "hub":
        if old.get("id") != new.get("id"):
            return f"hub id {old.get('id')} -> {new.get('id')}"
        if old.get("commit") is None or old.get("commit") == new.get("commit"):
            return ""  # not cached when the run started (downloaded by it): nothing known to differ
        return f"hub snapshot {old.get('commit')} -> {new.get('commit')}"
    parts = []
    if old.get("config_sha256") != new.get("config_sha256"):
        parts.append("config.json changed")
    ow, nw = old.get("weights") or {}, new.get("weights") or {}
    changed = sorted(k for k in set(ow) & set(nw) if ow[k] != nw[k])
    if changed:
        parts.append(f"weights changed: {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}")
    if set(nw) - set(ow):
        parts.append(f"new weight files: {', '.join(sorted(set(nw) - set(ow))[:3])}")
    if set(ow) - set(nw):
        parts.append(f"weight files gone: {', '.join(sorted(set(ow) - set(nw))[:3])}")
    return "; ".join(parts) or "the model differs"

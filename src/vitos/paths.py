"""Output paths that cannot destroy inputs, folders that can be written, and atomic file writes.

Every command that writes (`infer --overlay`, `train`'s run folder, `tiny-model`) checks its outputs here
before it reads or writes anything heavy:

    check_output_file(overlay, "--overlay", inputs=[("--image", image), ("--model", model)])
    check_output_dir(out_dir, "checkpoint.out_dir", inputs=[("data.train_path", data), ...])
    check_writable_dir(out_dir, "checkpoint.out_dir")          # a file, or read-only -> one clear error

The rules: an output file is never an input file (same path, symlink or hard link) nor an existing file
inside an input folder; an output folder never equals, contains, or lies inside an input. Each refusal is a
`PathError` (a ValueError: every CLI prints it as one line and exits 2) naming both paths and the fix.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

Inputs = Iterable[tuple[str, "str | os.PathLike[str] | None"]]
"""(what the user called it, path) pairs; None paths (hub ids, generated inputs) are skipped."""


class PathError(ValueError):
    """An output path would overwrite an input, or cannot be written; the message says which and what to do."""


def resolved(path: str | os.PathLike[str]) -> Path:
    """Absolute, symlinks resolved, `~` expanded; the path need not exist."""
    return Path(path).expanduser().resolve(strict=False)


def same_or_inside(inner: str | os.PathLike[str], outer: str | os.PathLike[str]) -> bool:
    """True when `inner` is `outer` or lies somewhere below it (after resolving both)."""
    a, b = resolved(inner), resolved(outer)
    return a == b or b in a.parents


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _local(inputs: Inputs) -> list[tuple[str, Path]]:
    return [(label, Path(p)) for label, p in inputs if p is not None and Path(p).exists()]


def check_output_file(output: str | os.PathLike[str], label: str, inputs: Inputs) -> None:
    """Refuse an output file that is an input file or an existing file inside an input folder."""
    out = resolved(output)
    for name, path in _local(inputs):
        src = resolved(path)
        if out == src or _same_file(out, src):
            raise PathError(f"{label} {output} is the {name} file {path}: writing it would replace that input; "
                            f"choose another {label} path")
        if src.is_dir() and src in out.parents and out.exists():
            raise PathError(f"{label} {output} would overwrite a file of the {name} folder {path}; "
                            f"choose a {label} path outside it")


def check_output_dir(output: str | os.PathLike[str], label: str, inputs: Inputs,
                     allowed: Iterable[str | os.PathLike[str]] = (), inside_ok: bool = False) -> None:
    """Refuse an output folder that is, contains or (unless `inside_ok`) lies inside an input (`allowed`:
    inputs the command itself generates inside the folder, e.g. a run's built-in tiny model)."""
    out = resolved(output)
    allow = {resolved(a) for a in allowed}
    for name, path in _local(inputs):
        src = resolved(path)
        if src in allow or any(a in src.parents for a in allow):
            continue
        if src == out or out in src.parents:
            raise PathError(f"{label} {output} contains the {name} {path}: the run's outputs (and --overwrite) "
                            f"could replace or delete it; choose a {label} folder outside it")
        if src.is_dir() and src in out.parents and not inside_ok:
            raise PathError(f"{label} {output} lies inside the {name} folder {path}: outputs would mix with that "
                            f"input; choose a {label} folder outside it")


def check_writable_dir(path: str | os.PathLike[str], label: str) -> None:
    """The folder `path` exists or can be created, and files can be written in it; else one PathError."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise PathError(f"{label} {p} is a file, not a folder; choose a folder path (or move the file away)")
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise PathError(f"{label} {p} cannot be created: {probe} is a file, not a folder; choose another path")
    try:
        fd, name = tempfile.mkstemp(prefix=".vitos-write-probe-", dir=probe)
    except OSError as err:
        raise PathError(f"{label} {p} is not writable ({probe}: {err.strerror or err}); choose a writable folder "
                        "or fix its permissions") from err
    os.close(fd)
    os.unlink(name)


def check_writable_file(path: str | os.PathLike[str], label: str) -> None:
    """An output file path: not a folder, and its folder can be created and written."""
    p = Path(path)
    if p.is_dir():
        raise PathError(f"{label} {p} is a folder; give a file path (e.g. {p / 'out.png'})")
    check_writable_dir(p.parent if str(p.parent) else ".", f"the folder of {label}")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` via a temporary file in the same folder and `os.replace`: a kill leaves the
    old content or the new one, never a mix."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{p.name}-", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_dir(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move the complete folder `src` to `dst`, replacing a folder already there: the old one is renamed
    aside (`.old-<name>`) first, so at every moment `dst` is the old complete folder, absent, or the new one."""
    src, dst = Path(src), Path(dst)
    old = dst.parent / f".old-{dst.name}"
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    fsync_dir(dst.parent)
    shutil.rmtree(old, ignore_errors=True)

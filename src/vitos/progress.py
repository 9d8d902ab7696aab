"""Progress of a long loop: a tqdm bar on a terminal, plain parseable lines elsewhere (logs, pipes, CI).

    with StageProgress(steps, "warm start (read)") as progress:
        for step in range(steps):
            ...
            progress.update(loss=loss)

Used by the warm start (vitos.sft), the demo, the study and `vitos train`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import IO, Any


class StageProgress:
    """Progress of a loop of `total` steps, on `stream` (default stderr).

    On a terminal: a tqdm bar with rate and ETA (and `update(**stats)` as its postfix). Elsewhere (a log file,
    a pipe, CI) no redraws: a line when the loop starts and then one every `every` steps (default: about
    `lines` lines per loop) and at the last step, parseable as
        [progress] <desc>: step 30/150 (20%), 2.14 step/s, elapsed 14 s, ETA 56 s, loss=1.234
    `enabled=False` prints nothing. Usable as a context manager (closes the bar).
    """

    def __init__(self, total: int, desc: str, enabled: bool = True, *, stream: IO[str] | None = None,
                 every: int | None = None, lines: int = 10, unit: str = "step") -> None:
        self.total, self.desc, self.unit, self.n = int(total), desc, unit, 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(enabled) and self.total > 0
        self.every = max(1, every if every else math.ceil(self.total / max(1, lines)))
        self.t0 = time.perf_counter()
        self.bar = None
        if not self.enabled:
            return
        if _isatty(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True, leave=True)
        else:
            self._line(f"started, {self.total} {unit}s")

    def update(self, n: int = 1, **stats: float | str | None) -> None:
        """Advance by `n` steps; `stats` (e.g. loss=1.23) are shown beside the bar or at the end of the line."""
        self.n += n
        if not self.enabled:
            return
        shown = {k: (f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in stats.items() if v is not None}
        if self.bar is not None:
            if shown:
                self.bar.set_postfix(shown, refresh=False)
            self.bar.update(n)
        elif self.n % self.every == 0 or self.n >= self.total:
            elapsed = time.perf_counter() - self.t0
            rate = self.n / elapsed if elapsed > 0 else float("inf")
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            text = (f"{self.unit} {self.n}/{self.total} ({100 * self.n / self.total:.0f}%), {rate:.2f} {self.unit}/s, "
                    f"elapsed {elapsed:.0f} s, ETA {eta:.0f} s")
            self._line(text + "".join(f", {k}={v}" for k, v in shown.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _line(self, text: str) -> None:
        print(f"[progress] {self.desc}: {text}", file=self.stream, flush=True)

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _isatty(stream: Any) -> bool:
    """A terminal a bar can be drawn on: isatty, and a width above 0 (a zero-width pseudo-terminal, e.g.
    `script` without a window, would show an empty bar: it gets the plain lines)."""
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):  # no file descriptor (a stand-in stream): trust isatty
        return True

"""The one record every reader produces and every consumer (trainer, evaluator, demo) takes.

A reader turns its source format (authors' JSON, parquet, a benchmark release) into `Sample`s; nothing
downstream knows where a sample came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

QuestionKind = Literal["yes_no", "choice", "open"]


@dataclass
class Sample:
    """One visual question with its reference answer and optional evidence boxes."""

    id: str
    """Unique, stable id within its data set (used for resumable runs and de-duplication)."""
    images: list[Any]
    """Image file paths (str) or already-loaded PIL images, in prompt order."""
    question: str
    """The question text, without any `<image>` placeholder and without the options."""
    answer: str
    """The reference answer: 'yes'/'no', an option letter ('A'..) for choice questions, or free text."""
    kind: QuestionKind = "open"
    """How the answer is judged: 'yes_no', 'choice' (letter) or 'open' (normalised text)."""
    options: dict[str, str] | None = None
    """Choice questions only: letter -> option text, e.g. {'A': 'Glioma', 'B': 'Meningioma'}."""
    boxes: list[list[float]] = field(default_factory=list)
    """Ground-truth evidence boxes, normalised [x1, y1, x2, y2] in [0, 1] relative to images[0]; may be empty."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Anything else a source carries (organ, original answer_type, split ...); never used for scoring."""

    @property
    def closed(self) -> bool:
        """Closed questions (yes/no or multiple choice) vs open-ended ones, as benchmarks report them."""
        return self.kind in ("yes_no", "choice")

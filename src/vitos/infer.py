"""`vitos infer`: ground -> prune -> answer for one image, with the kept-token map drawn on it.

    vitos tiny-model /tmp/tiny
    vitos infer --model /tmp/tiny --image scan.png --question "Is there a fracture?" --json --overlay out.png
    vitos infer --model lingshu-medical-mllm/Lingshu-7B --image cxr.dcm --question "..." \
        --options "A=Pneumonia,B=Effusion,C=Normal"

`--json` prints answer, boxes, visual_tokens_total, visual_tokens_kept, fallback (why pruning was
skipped, or null), grounding (how the grounding pass ran: short, stopped after its boxes, or full, with its
own answer; null without one) and timings_ms per stage. `--mode full` answers on all visual tokens (no grounding).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from vitos.data.sample import Sample
from vitos.engine import SamplingConfig
from vitos.images import load_image
from vitos.overlay import render_overlay
from vitos.pipeline import Answer, PruneConfig, run
from vitos.prompts import ParsedOutput, parse_boxes


def check_overlay_path(overlay: str, image: str | None = None, model: str | None = None) -> None:
    """The overlay is a writable image file path that is not the input image nor a file of the model folder."""
    from PIL import Image

    from vitos.paths import PathError, check_output_file, check_writable_file

    check_writable_file(overlay, "--overlay")
    check_output_file(overlay, "--overlay", [("--image", image), ("--model", model)])
    if Path(overlay).suffix.lower() not in Image.registered_extensions():
        raise PathError(f"--overlay {overlay}: unknown image extension {Path(overlay).suffix or '(none)'!r}; use .png")


def parse_options(text: str | None) -> dict[str, str] | None:
    """'A=Glioma,B=Meningioma' or 'Glioma|Meningioma' -> {'A': 'Glioma', 'B': 'Meningioma'}."""
    if not text:
        return None
    if "=" in text:
        out = {}
        for part in text.split(","):
            if "=" not in part:
                raise ValueError(f"option {part!r} must look like LETTER=text (e.g. A=Glioma)")
            k, v = part.split("=", 1)
            out[k.strip().upper()] = v.strip()
        return out
    return {chr(ord("A") + i): v.strip() for i, v in enumerate(text.split("|"))}


@dataclass
class InferResult:
    answer: str | None
    answer_text: str
    grounding_text: str | None
    boxes: list[list[float]]
    visual_tokens_total: int
    visual_tokens_kept: int
    kept_ratio: float
    fallback: str | None
    mode: str
    timings_ms: dict[str, float]
    overlay: str | None = None
    grounding: str | None = None
    """How the grounding pass ran: short (stopped after </box>), full (it wrote its own answer too), None (none)."""


def infer_one(
    adapter: Any,
    image_path: str,
    question: str,
    options: dict[str, str] | None = None,
    kind: str | None = None,
    mode: str = "vitos",
    prune: PruneConfig | None = None,
    sampling: SamplingConfig | None = None,
    overlay: str | None = None,
    boxes: str | None = None,
    grounding: str = "short",
    engine: Any = None,
) -> InferResult:
    """Answer one question about one image. `boxes` (a JSON-ish box list such as "[[0.1,0.2,0.5,0.6]]")
    replaces the grounding pass with user-given evidence regions; a malformed one falls back to all tokens.
    `grounding`: "short" (default: stop the grounding pass after its boxes) or "full" (`vitos.pipeline.run`).
    `engine`: None (the Python decode loop) or a `vitos.vllm_engine.engine.VllmEngine`."""
    if overlay:  # before any work: the overlay must never replace the input image
        check_overlay_path(overlay, image_path)
    image = load_image(image_path)  # raises ImageError with a clear message
    kind = kind or ("choice" if options else "open")
    sample = Sample(id="cli", images=[image], question=question, answer="", kind=kind, options=options)
    given = None
    if boxes is not None:
        parsed_boxes, box_images, error = parse_boxes(boxes, n_images=1)
        given = [ParsedOutput(None, parsed_boxes, box_images, None, error, False)]
    res: Answer = run(adapter, [sample], mode=mode, prune=prune, sampling=sampling, images=[[image]], given_boxes=given,
                      grounding=grounding, engine=engine)[0]  # type: ignore[arg-type]
    overlay_path = None
    if overlay:
        mask = res.keep_masks[0] if res.keep_masks else None
        Path(overlay).parent.mkdir(parents=True, exist_ok=True)
        region = res.grid_regions[0] if res.grid_regions else (0.0, 0.0, 1.0, 1.0)
        # Captioned for a reader (vitos.overlay.render_overlay): enlarged to >= 512 px wide, question, answer,
        # kept-token count and a legend under the image; no reference here, so no CORRECT / WRONG.
        picture = render_overlay(image, res.boxes, mask, grid_region=region, title=f"vitos infer, mode {mode}",
                                 question=question, answer=res.answer,
                                 kept_tokens=(res.visual_tokens_kept, res.visual_tokens_total))
        tmp = Path(overlay).with_name(f".tmp-{Path(overlay).name}")
        picture.save(tmp, format=Image.registered_extensions()[Path(overlay).suffix.lower()])
        os.replace(tmp, overlay)  # atomic: a kill never leaves a half-written image
        overlay_path = str(overlay)
    return InferResult(
        answer=res.answer,
        answer_text=res.answer_text,
        grounding_text=res.grounding_text,
        boxes=res.boxes,
        visual_tokens_total=res.visual_tokens_total,
        visual_tokens_kept=res.visual_tokens_kept,
        kept_ratio=res.visual_tokens_kept / max(1, res.visual_tokens_total),
        fallback=res.fallback,
        mode=mode,
        timings_ms={k: round(v, 2) for k, v in res.timings_ms.items()},
        overlay=overlay_path,
        grounding=res.grounding,
    )


def render(result: InferResult, as_json: bool) -> str:
    if as_json:
        return json.dumps(asdict(result), indent=2)
    lines = [
        f"answer: {result.answer if result.answer is not None else '(no <answer> tag) ' + result.answer_text[:200]!s}",
        f"mode: {result.mode}   visual tokens kept: {result.visual_tokens_kept}/{result.visual_tokens_total}"
        f" ({100 * result.kept_ratio:.1f}%)" + (f"   grounding: {result.grounding}" if result.grounding else ""),
    ]
    if result.boxes:
        lines.append(f"boxes: {result.boxes}")
    if result.fallback:
        lines.append(f"fallback: {result.fallback}")
    lines.append("timings (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in result.timings_ms.items()))
    if result.overlay:
        lines.append(f"overlay: {result.overlay}")
    return "\n".join(lines)

"""`vitos app`: a local web page to see what the model kept.

    pip install -e ".[app]"          # gradio (optional extra)
    vitos app                        # http://127.0.0.1:7860, the embedded demo model, offline
    vitos app --model /path/to/model_or_hub_id --port 8080

Upload a JPEG, PNG or DICOM file (or pick a bundled MedPhantom example), type a question (and options for
a multiple-choice question), choose a model folder or hub id, press Run. The page shows:

  * the grounding branch's evidence boxes and its reasoning (<think>), and its own answer when the grounding
    pass runs in full ("grounding pass" control or `--grounding full`; the default, short, stops it once its
    boxes are written, `vitos.pipeline`);
  * the kept-token overlay (`vitos.overlay.render_overlay`: predicted boxes, kept cells outlined, pruned
    cells dimmed, the ground-truth box of an example, the answer and whether it matches the reference);
  * the sparse branch's reasoning and answer (only the kept visual tokens), and beside it the answer of one
    pass on ALL visual tokens (mode `full`), with token counts and per-stage latencies.

The margin / fusion / min_keep controls re-run ONLY the sparse pass: the vision tower's output and the
grounding completion of the last Run are reused (`vitos.pipeline.run(..., encoded=..., given_boxes=...)`).
The controls start at the model's saved settings (`vitos.models.settings`). Nothing is downloaded: the
default model is the demo warm start shipped in the package; a hub id loads from the local cache unless
the hub is reachable. The work is done by `vitos.pipeline` (encode, run) and judged by `vitos.answers`.
"""

from __future__ import annotations

import argparse
import html
import os
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vitos.data.sample import Sample
from vitos.engine import SamplingConfig
from vitos.pipeline import Answer, PruneConfig
from vitos.prompts import ParsedOutput

DEFAULT_MODEL = "builtin"
"""The demo warm start shipped in the package (`vitos.demo.resolve_warm_start('builtin')`)."""
N_EXAMPLES = 6
KINDS = ("auto", "yes_no", "choice", "open")
FUSIONS = ("none", "merge", "contextual")


# ------------------------------------------------------------------------------------- the work (no gradio)
def resolve_model(name: str | None) -> str:
    """'' / 'builtin' -> the shipped demo warm start's folder; anything else unchanged (folder or hub id)."""
    name = (name or "").strip()
    if name in ("", DEFAULT_MODEL):
        from vitos.demo import resolve_warm_start

        return str(resolve_warm_start("builtin"))
    return name


class ModelCache:
    """Loaded adapters by (model, dtype, device); one load at a time (gradio runs handlers in threads)."""

    def __init__(self, dtype: str = "float32", device: str = "cpu") -> None:
        self.dtype, self.device = dtype, device
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> tuple[Any, float]:
        """(adapter, load time in ms; 0 when cached)."""
        from vitos.models import load_model

        with self._lock:
            if name not in self._models:
                t0 = time.perf_counter()
                self._models[name] = load_model(name, dtype=self.dtype, device=self.device)
                return self._models[name], (time.perf_counter() - t0) * 1e3
            return self._models[name], 0.0


@dataclass
class Analysis:
    """One Run: the inputs, the reusable grounding output, and both answers."""

    model: str
    sample: Sample
    image: Any
    """The loaded RGB PIL image."""
    encoded: list
    """`vitos.pipeline.encode` output for [[image]], reused by every re-run."""
    grounding_text: str | None
    grounding: ParsedOutput
    """The grounding completion, parsed; its boxes are given to every sparse re-run."""
    prune: PruneConfig
    sampling: SamplingConfig
    sparse: Answer
    full: Answer
    timings_ms: dict[str, float]
    """load, encode, grounding, prune, sparse answer, full answer."""
    grounding_mode: str = "full"
    """How the grounding pass ran: short (stopped after its boxes, no answer of its own) or full."""


def kind_for(kind: str | None, options: dict[str, str] | None) -> str:
    """'auto' -> choice with options, else open (as `vitos infer`)."""
    if kind in (None, "", "auto"):
        return "choice" if options else "open"
    return kind


def analyse(adapter: Any, model: str, image: Any, question: str, options: dict[str, str] | None = None,
            kind: str | None = None, reference: str | None = None, gt_boxes: list[list[float]] | None = None,
            prune: PruneConfig | None = None, sampling: SamplingConfig | None = None,
            grounding: str = "short") -> Analysis:
    """Encode once, run the ViToS path (grounding -> prune -> sparse answer) and the full-token answer.
    `grounding`: short (stop the grounding pass after its boxes) or full (it writes its own answer too)."""
    from vitos.images import load_image
    from vitos.pipeline import encode, run
    from vitos.prompts import parse_output

    if not question or not question.strip():
        raise ValueError("type a question first")
    prune, sampling = prune or PruneConfig(), sampling or SamplingConfig()
    image = load_image(image)
    sample = Sample(id="app", images=[image], question=question.strip(), answer=(reference or "").strip(),
                    kind=kind_for(kind, options), options=options, boxes=list(gt_boxes or []))  # type: ignore[arg-type]
    t0 = time.perf_counter()
    encoded = encode(adapter, [[image]])
    encode_ms = (time.perf_counter() - t0) * 1e3
    sparse = run(adapter, [sample], mode="vitos", prune=prune, sampling=sampling, encoded=encoded,
                 grounding=grounding)[0]  # type: ignore[arg-type]
    full = run(adapter, [sample], mode="full", prune=prune, sampling=sampling, encoded=encoded)[0]
    parsed = parse_output(sparse.grounding_text or "", "grounding", n_images=1)
    timings = {"encode": encode_ms, "grounding": sparse.timings_ms.get("grounding", 0.0),
               "prune": sparse.timings_ms.get("prune", 0.0), "sparse answer": sparse.timings_ms.get("answer", 0.0),
               "full answer": full.timings_ms.get("answer", 0.0)}
    return Analysis(model, sample, image, encoded, sparse.grounding_text, parsed, prune, sampling, sparse, full,
                    timings, grounding)


def rerun_sparse(adapter: Any, analysis: Analysis, prune: PruneConfig) -> Analysis:
    """The sparse pass again with other pruning settings, on the SAME grounding output and vision features."""
    from vitos.pipeline import run

    sparse = run(adapter, [analysis.sample], mode="vitos", prune=prune, sampling=analysis.sampling,
                 encoded=analysis.encoded, given_boxes=[analysis.grounding])[0]
    timings = {**analysis.timings_ms, "prune": sparse.timings_ms.get("prune", 0.0),
               "sparse answer": sparse.timings_ms.get("answer", 0.0)}
    return replace(analysis, sparse=sparse, prune=prune, timings_ms=timings)


def verdict(answer: Answer, sample: Sample) -> bool | None:
    """Right / wrong against the reference (`vitos.answers.judge_completion`), None without a reference."""
    if not sample.answer:
        return None
    from vitos.answers import judge_completion

    return bool(judge_completion(answer.answer_text, sample).correct)


def overlay_image(analysis: Analysis) -> Any:
    """The kept-token overlay of the sparse pass, captioned (vitos.overlay.render_overlay)."""
    from vitos.overlay import render_overlay

    s = analysis.sparse
    mask = s.keep_masks[0] if s.keep_masks else None
    region = s.grid_regions[0] if s.grid_regions else (0.0, 0.0, 1.0, 1.0)
    return render_overlay(
        analysis.image, s.boxes, mask, gt_boxes=analysis.sample.boxes or None, grid_region=region,
        title="sparse branch (ViToS): what it kept", question=analysis.sample.question, answer=s.answer,
        reference=analysis.sample.answer or None, correct=verdict(s, analysis.sample),
        kept_tokens=(s.visual_tokens_kept, s.visual_tokens_total),
    )


def _think(text: str | None, branch: str) -> str | None:
    from vitos.prompts import parse_output

    return parse_output(text or "", branch).think


def _block(title: str, answer: str | None, think: str | None, raw: str, correct: bool | None, extra: str = "",
           no_answer: str = "_(no &lt;answer&gt; tag)_") -> str:
    mark = "" if correct is None else (" — **right**" if correct else " — **wrong**")
    shown = html.escape(answer) if answer is not None else no_answer
    out = [f"### {title}", f"**Answer:** {shown}{mark}"]
    if extra:
        out.append(extra)
    out.append(f"**Reasoning:** {html.escape(think) if think else '_(no &lt;think&gt; tag)_'}")
    out.append(f"<details><summary>raw completion</summary>\n\n```\n{raw}\n```\n</details>")
    return "\n\n".join(out)


def describe(analysis: Analysis) -> dict[str, str]:
    """Markdown for the page: grounding, sparse, full, stats."""
    a, s, f = analysis, analysis.sparse, analysis.full
    g = a.grounding
    boxes = ", ".join("[" + ", ".join(f"{v:.2f}" for v in b) + "]" for b in (g.boxes or [])) or "none"
    g_extra = f"**Boxes:** {boxes}" + (f"  \n**Box error:** {html.escape(g.box_error)}" if g.box_error else "")
    short = a.grounding_mode == "short"
    grounding = _block("Grounding branch (all tokens)", g.answer, g.think, a.grounding_text or "",
                       None, g_extra, "_(not generated: the grounding pass stopped after its boxes; "
                       "choose grounding pass full to see it)_" if short else "_(no &lt;answer&gt; tag)_")
    fallback = f"**Fallback:** {html.escape(s.fallback)}" if s.fallback else ""
    sparse = _block(f"Sparse branch (ViToS, {s.visual_tokens_kept} of {s.visual_tokens_total} visual tokens)",
                    s.answer, _think(s.answer_text, "sparse"), s.answer_text, verdict(s, a.sample), fallback)
    full = _block(f"Full tokens ({f.visual_tokens_total} visual tokens, one pass)", f.answer,
                  _think(f.answer_text, "sparse"), f.answer_text, verdict(f, a.sample))
    p = a.prune
    rows = [
        "| | visual tokens | latency (ms) |",
        "|---|---|---|",
        f"| vision tower (once, shared) | {f.visual_tokens_total} | {a.timings_ms['encode']:.0f} |",
        f"| grounding pass (all tokens, {a.grounding_mode}) | {f.visual_tokens_total} | {a.timings_ms['grounding']:.0f} |",
        f"| prune | {s.visual_tokens_kept} kept ({100 * s.visual_tokens_kept / max(1, s.visual_tokens_total):.0f}%) "
        f"| {a.timings_ms['prune']:.0f} |",
        f"| sparse answer pass | {s.visual_tokens_kept} | {a.timings_ms['sparse answer']:.0f} |",
        f"| full-token answer pass | {f.visual_tokens_total} | {a.timings_ms['full answer']:.0f} |",
    ]
    stats = "\n".join(rows) + (f"\n\nPruning: margin {p.margin:g}, fusion {p.fusion}, min_keep {p.min_keep}; "
                               f"max_new_tokens {a.sampling.max_new_tokens}, temperature {a.sampling.temperature:g}. "
                               f"Model: `{a.model}`")
    return {"grounding": grounding, "sparse": sparse, "full": full, "stats": stats}


def examples(n: int = N_EXAMPLES, folder: str | Path | None = None) -> list[dict[str, Any]]:
    """Bundled examples: MedPhantom test samples 0..n-1 (seed 0, the demo's data), drawn on the fly and
    written as PNG to `folder` (a temp dir by default) so they can be uploaded like any file."""
    from vitos.data.medphantom import PhantomConfig, make_sample

    folder = Path(folder or tempfile.mkdtemp(prefix="vitos_app_examples_"))
    folder.mkdir(parents=True, exist_ok=True)
    cfg = PhantomConfig(seed=0)
    out = []
    for i in range(n):
        s = make_sample(cfg, "test", i)
        path = folder / f"{s.id}.png"
        s.images[0].save(path)
        options = ",".join(f"{k}={v}" for k, v in (s.options or {}).items())
        out.append({"label": f"MedPhantom #{i}: {s.question}", "path": str(path), "question": s.question,
                    "options": options, "kind": s.kind, "reference": s.answer, "boxes": s.boxes})
    return out


def model_settings(model: str) -> Any:
    """The model's saved settings, or the built-in defaults (`vitos.models.settings`)."""
    from vitos.models.settings import ModelSettings, read_settings

    try:
        return read_settings(model) or ModelSettings()
    except Exception:  # a broken settings file must not stop the page; Run reports it
        return ModelSettings()


# ------------------------------------------------------------------------------------------------ the page
def build_app(default_model: str = DEFAULT_MODEL, dtype: str = "float32", device: str = "cpu",
              n_examples: int = N_EXAMPLES, grounding: str = "short") -> Any:
    """The gradio Blocks of the page (not launched); `grounding`: the grounding pass control's start value."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from vitos.infer import parse_options
    from vitos.models.settings import SYNTHETIC_NOTE

    cache = ModelCache(dtype=dtype, device=device)
    bundled = examples(n_examples)
    by_label = {e["label"]: e for e in bundled}
    default_path = resolve_model(default_model)
    start = model_settings(default_path)

    def on_example(label):
        e = by_label.get(label)
        if e is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), None
        return e["path"], e["question"], e["options"], e["kind"], e["reference"], e["boxes"]

    def on_upload(_file):
        return None, None  # an uploaded file is not the example: no ground-truth box

    def on_model(name):
        s = model_settings(resolve_model(name))
        return s.margin, s.fusion, s.min_keep, s.max_new_tokens

    def outputs_for(analysis: Analysis, status: str):
        d = describe(analysis)
        return analysis, overlay_image(analysis), d["grounding"], d["sparse"], d["full"], d["stats"], status

    def on_run(file, question, options, kind, reference, gt_boxes, model, margin, fusion, min_keep, max_new,
               grounding_mode="short"):
        empty = (None, None, "", "", "", "")
        if not file:
            return (*empty, "**Upload an image or pick an example first.**")
        try:
            name = resolve_model(model)
            adapter, load_ms = cache.get(name)
            saved = model_settings(name)
            prune = PruneConfig(margin=float(margin), min_keep=int(min_keep), fusion=fusion,
                                num_contextual=saved.num_contextual)
            sampling = SamplingConfig(max_new_tokens=int(max_new), temperature=saved.temperature)
            analysis = analyse(adapter, name, file, question, parse_options(options or None), kind, reference,
                               gt_boxes, prune, sampling, grounding_mode or "short")
        except Exception as err:  # shown on the page, never a stack trace
            return (*empty, f"**Error:** {html.escape(str(err))}")
        notes = [f"Loaded `{name}` in {load_ms:.0f} ms." if load_ms else f"Model `{name}` (already loaded)."]
        used = {"fusion": prune.fusion, "margin": prune.margin, "min_keep": prune.min_keep,
                "max_new_tokens": sampling.max_new_tokens}
        changed = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in used.items() if v != getattr(saved, k)]
        origin = "the model's saved settings" if saved.source else "the built-in defaults (the model saves none)"
        notes.append(f"Settings: {origin}" + (f", changed here: {', '.join(changed)}." if changed else "."))
        if saved.synthetic and not gt_boxes:  # an uploaded image, not a bundled phantom
            notes.append(SYNTHETIC_NOTE.format(model="this model").replace("note: ", "Note: "))
        return outputs_for(analysis, " ".join(notes))

    def on_rerun(analysis, margin, fusion, min_keep):
        if analysis is None:
            return (None, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), "**Press Run first.**")
        try:
            adapter, _ = cache.get(analysis.model)
            prune = PruneConfig(margin=float(margin), min_keep=int(min_keep), fusion=fusion,
                                num_contextual=analysis.prune.num_contextual)
            new = rerun_sparse(adapter, analysis, prune)
        except Exception as err:
            return (analysis, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"**Error:** {html.escape(str(err))}")
        return outputs_for(new, f"Re-ran the sparse pass only (margin {prune.margin:g}, fusion {prune.fusion}, "
                                f"min_keep {prune.min_keep}); grounding output reused.")

    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web fonts: offline
    with gr.Blocks(title="ViToS: what the model kept") as page:
        gr.Markdown("## ViToS — what the model kept\nThe grounding branch writes evidence boxes; the sparse "
                    "branch answers from only the visual tokens inside them. Compare with one pass on all tokens.")
        state = gr.State(None)
        gt_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=2):
                upload = gr.File(label="Image: JPEG, PNG or DICOM", type="filepath", elem_id="upload")
                example = gr.Dropdown([e["label"] for e in bundled], value=None, label="…or a bundled example "
                                      "(MedPhantom, synthetic)", elem_id="example")
                question = gr.Textbox(label="Question", elem_id="question", lines=2)
                options = gr.Textbox(label="Options (optional)", placeholder="A=dark,B=bright,C=none  or  dark|bright|none",
                                     elem_id="options")
                with gr.Row():
                    kind = gr.Dropdown(list(KINDS), value="auto", label="Answer kind", elem_id="kind")
                    reference = gr.Textbox(label="Reference answer (optional)", elem_id="reference")
                model = gr.Textbox(label="Model: folder or hub id ('builtin' = the shipped demo model)",
                                   value=default_model, elem_id="model")
                max_new = gr.Number(value=start.max_new_tokens, precision=0, minimum=1, label="max new tokens",
                                    elem_id="max_new")
                grounding_mode = gr.Radio(["short", "full"], value=grounding, label="grounding pass: short stops "
                                          "after the boxes, full also writes its own answer", elem_id="grounding_mode")
                run_btn = gr.Button("Run", variant="primary", elem_id="run")
                gr.Markdown("**Pruning** (changes re-run only the sparse pass)")
                margin = gr.Slider(0.0, 0.5, value=start.margin, step=0.01, label="margin (box dilation)",
                                   elem_id="margin")
                fusion = gr.Radio(list(FUSIONS), value=start.fusion, label="fusion of pruned tokens", elem_id="fusion")
                min_keep = gr.Slider(1, 64, value=start.min_keep, step=1, label="min_keep", elem_id="min_keep")
                rerun_btn = gr.Button("Re-run the sparse pass", elem_id="rerun")
            with gr.Column(scale=3):
                status = gr.Markdown("", elem_id="status")
                overlay = gr.Image(label="Kept-token overlay", type="pil", elem_id="overlay", format="png",
                                   interactive=False)
                with gr.Row():
                    grounding_md = gr.Markdown("", elem_id="grounding")
                    sparse_md = gr.Markdown("", elem_id="sparse")
                    full_md = gr.Markdown("", elem_id="full")
                stats = gr.Markdown("", elem_id="stats")

        example.input(on_example, [example], [upload, question, options, kind, reference, gt_state])
        upload.upload(on_upload, [upload], [example, gt_state])
        model.submit(on_model, [model], [margin, fusion, min_keep, max_new])
        model.blur(on_model, [model], [margin, fusion, min_keep, max_new])
        outs = [state, overlay, grounding_md, sparse_md, full_md, stats, status]
        run_btn.click(on_run, [upload, question, options, kind, reference, gt_state, model, margin, fusion, min_keep,
                               max_new, grounding_mode], outs)
        rerun_btn.click(on_rerun, [state, margin, fusion, min_keep], outs)
        margin.release(on_rerun, [state, margin, fusion, min_keep], outs)
        fusion.input(on_rerun, [state, margin, fusion, min_keep], outs)
        min_keep.release(on_rerun, [state, margin, fusion, min_keep], outs)
    page.vitos_theme = theme  # launch() takes the theme in gradio 6
    page.vitos_examples = bundled
    return page


def launch(page: Any, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> Any:
    """Serve the page locally (never a public share link); `block=False` returns at once (tests)."""
    folders = sorted({str(Path(e["path"]).parent) for e in getattr(page, "vitos_examples", [])})
    page.queue(default_concurrency_limit=1)
    return page.launch(server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False,
                       prevent_thread_lock=not block, quiet=not block, allowed_paths=folders,
                       theme=getattr(page, "vitos_theme", None), footer_links=[])


def main_app(argv: list[str] | None = None) -> int:
    """`vitos app [--model M] [--host H] [--port P] [--dtype D] [--device D] [--threads N]`."""
    p = argparse.ArgumentParser(prog="vitos app", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="model folder or hub id the page starts with (default: builtin, the shipped demo model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--dtype", default="float32", help="model dtype: float32, bfloat16, float16 or auto (default: float32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument("--grounding", choices=["short", "full"], default="short",
                   help="the grounding pass control's start value: short stops it after its boxes (the sparse pass "
                        "answers), full also writes the grounding branch's own answer (default: short)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("vitos app: error: needs gradio; install the optional extra: pip install -e '.[app]'", flush=True)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        page = build_app(args.model, dtype=args.dtype, device=args.device, grounding=args.grounding)
    except (FileNotFoundError, ValueError) as err:
        print(f"vitos app: error: {err}")
        return 2
    print(f"vitos app: serving on http://{args.host}:{args.port} (Ctrl+C stops)", flush=True)
    launch(page, args.host, args.port, block=True)
    return 0

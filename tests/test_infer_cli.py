"""`vitos infer` and `vitos tiny-model` end to end on the tiny checkpoint and real VQA-RAD images."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from vitos.cli import main
from vitos.models import build_on_meta, load_model
from vitos.pipeline import run
from vitos.data.sample import Sample


def _infer(capsys, *args) -> tuple[int, str, str]:
    rc = main(["infer", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("mode", ["vitos", "full"])
def test_infer_runs_on_real_vqa_rad_images_in_both_modes(tiny_model_dir, vqa_rad_dir, capsys, mode):
    image = os.path.join(vqa_rad_dir, "images", "synpic54610.jpg")
    rc, out, _ = _infer(capsys, "--model", tiny_model_dir, "--image", image, "--question",
                        "Are regions of the brain infarcted?", "--kind", "yes_no", "--mode", mode,
                        "--json", "--max-new-tokens", "8", "--device", "cpu", "--dtype", "float32")
    assert rc == 0
    rec = json.loads(out)
    for key in ("answer", "boxes", "visual_tokens_total", "visual_tokens_kept", "fallback", "timings_ms"):
        assert key in rec
    w, h = Image.open(image).size
    assert rec["visual_tokens_total"] > 0
    assert rec["visual_tokens_kept"] <= rec["visual_tokens_total"]
    assert "answer" in rec["timings_ms"] and "encode" in rec["timings_ms"]
    if mode == "vitos":
        # A random tiny model writes no usable box: the documented fallback keeps every token and says why.
        assert rec["fallback"] and "kept all visual tokens" in rec["fallback"]
        assert rec["visual_tokens_kept"] == rec["visual_tokens_total"]
        assert "grounding" in rec["timings_ms"]
    else:
        assert rec["fallback"] is None and "grounding" not in rec["timings_ms"]


def test_infer_with_boxes_prunes_and_overlay_marks_the_box(tiny_model_dir, vqa_rad_dir, tmp_path, capsys):
    image = os.path.join(vqa_rad_dir, "images", "synpic28602.jpg")
    overlay = tmp_path / "ov.png"
    box = [0.25, 0.25, 0.75, 0.75]
    rc, out, _ = _infer(capsys, "--model", tiny_model_dir, "--image", image, "--question", "Where is the lesion?",
                        "--boxes", json.dumps([box]), "--json", "--overlay", str(overlay), "--max-new-tokens", "4",
                        "--device", "cpu", "--dtype", "float32", "--fusion", "none")
    assert rc == 0
    rec = json.loads(out)
    assert rec["fallback"] is None
    assert rec["boxes"] == [box]
    # A centred half-size box keeps about a quarter of the grid (cells touching its edges included).
    ratio = rec["visual_tokens_kept"] / rec["visual_tokens_total"]
    assert 0.2 <= ratio <= 0.45
    scan = Image.open(image).convert("RGB")
    width = min(max(scan.width, 512), 1024)  # render_overlay's display width
    src = np.asarray(scan.resize((width, round(scan.height * width / scan.width))), dtype=np.int16)
    ov = np.asarray(Image.open(overlay), dtype=np.int16)
    assert ov.shape[1] == src.shape[1] and ov.shape[0] > src.shape[0]  # the image, then a caption band
    ov = ov[: src.shape[0]]
    h, w = src.shape[:2]
    x1, y1, x2, y2 = int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)
    assert np.abs(ov[y1 : y2 + 1, x1 : x2 + 1] - src[y1 : y2 + 1, x1 : x2 + 1]).sum() > 0  # the box is drawn
    assert np.abs(ov[: h // 8, : w // 8] - src[: h // 8, : w // 8]).mean() > 1  # pruned corner is tinted


@pytest.mark.parametrize("bad", ["[[0.9, 0.1, 0.2, 0.5]]", "[[10, 20, 300, 400]]", "not a box", "[]"])
def test_malformed_boxes_fall_back_to_all_tokens_and_say_so(tiny_model_dir, vqa_rad_dir, capsys, bad):
    image = os.path.join(vqa_rad_dir, "images", "synpic54610.jpg")
    rc, out, _ = _infer(capsys, "--model", tiny_model_dir, "--image", image, "--question", "q", "--boxes", bad,
                        "--json", "--max-new-tokens", "2", "--device", "cpu", "--dtype", "float32")
    assert rc == 0
    rec = json.loads(out)
    assert rec["visual_tokens_kept"] == rec["visual_tokens_total"]
    assert rec["fallback"].startswith("kept all visual tokens")


def test_bad_inputs_give_one_line_errors_not_tracebacks(tiny_model_dir, tmp_path, capsys):
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    for args, needle in [
        (["--model", tiny_model_dir, "--image", str(tmp_path / "missing.png"), "--question", "q"], "not found"),
        (["--model", tiny_model_dir, "--image", str(corrupt), "--question", "q"], "broken.png"),
        (["--model", str(tmp_path / "no_model"), "--image", str(corrupt), "--question", "q"], "no_model"),
        (["--model", tiny_model_dir, "--image", str(corrupt), "--question", "q", "--options", "A=x,B"], "LETTER=text"),
    ]:
        rc, out, err = _infer(capsys, *args)
        assert rc == 2, args
        assert needle in err and "Traceback" not in err


def test_tiny_model_command_is_seeded_and_loads_through_the_hub_code_path(tmp_path, capsys):
    assert main(["tiny-model", str(tmp_path / "a"), "--seed", "3"]) == 0
    assert main(["tiny-model", str(tmp_path / "b"), "--seed", "3"]) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (tmp_path / "a" / name).is_file()
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    ad = load_model(str(tmp_path / "a"), dtype="float32", device="cpu")
    assert ad.tokenizer.convert_tokens_to_ids("<|image_pad|>") == ad.model.config.image_token_id
    assert ad.image_token_id in ad.suppressed_token_ids


def test_qwen2_5_vl_7b_config_builds_on_meta_with_8_29b_parameters():
    cfg = os.path.join(os.path.dirname(__file__), "data", "qwen2_5_vl_7b_config.json")
    model = build_on_meta(cfg)
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.visual.parameters())
    assert next(model.parameters()).device.type == "meta"
    assert abs(total / 1e9 - 8.29) < 0.01
    assert abs(vision / 1e9 - 0.68) < 0.01


def test_vision_tower_runs_once_per_image_in_two_stage_inference(tiny_adapter):
    calls = []
    handle = tiny_adapter.model.model.visual.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        rng = np.random.default_rng(0)
        imgs = [Image.fromarray(rng.integers(0, 255, (s, s, 3), dtype=np.uint8)) for s in (112, 168)]
        samples = [Sample(id=str(i), images=[im], question="q", answer="yes", kind="yes_no") for i, im in enumerate(imgs)]
        from vitos.engine import SamplingConfig

        run(tiny_adapter, samples, mode="vitos", sampling=SamplingConfig(max_new_tokens=3))
    finally:
        handle.remove()
    assert len(calls) == 1  # one tower call for both images, reused by the grounding and the sparse pass


def test_infer_reads_dicom_and_16_bit_png(tiny_model_dir, tmp_path, capsys):
    from test_images import _write_dicom

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4000, (128, 160), dtype=np.uint16)
    dcm = _write_dicom(tmp_path / "scan.dcm", pixels, center=1000, width=2000)
    png16 = tmp_path / "scan16.png"
    Image.fromarray(pixels.astype(np.uint16)).save(png16)
    for path in (dcm, png16):
        overlay = tmp_path / (path.stem + "_ov.png")
        rc, out, err = _infer(capsys, "--model", tiny_model_dir, "--image", str(path), "--question", "q", "--json",
                              "--boxes", "[[0,0,0.5,1]]", "--overlay", str(overlay), "--max-new-tokens", "2",
                              "--device", "cpu", "--dtype", "float32")
        assert rc == 0, err
        rec = json.loads(out)
        assert rec["fallback"] is None and 0 < rec["visual_tokens_kept"] < rec["visual_tokens_total"]
        assert Image.open(overlay).size[0] == 512 and Image.open(overlay).size[1] > 128 * 512 // 160  # + caption

"""Row readers: authors' JSON/JSONL, hub parquet, folders; bad rows; writing and reading back."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitos.data.readers import DataError, read_rows, split_options, strip_placeholders, write_rows
from vitos.data.sample import Sample

try:  # parquet is an optional extra: only its tests need pyarrow
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:  # pragma: no cover
    pa = pq = None
needs_pyarrow = pytest.mark.skipif(pa is None, reason="pyarrow not installed (pip install 'vitos[parquet]')")


def _png(path: Path, value: int = 100, size: tuple[int, int] = (8, 6)) -> Path:
    """A small PNG whose pixels encode `value` (so tests can tell images apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    arr[0, 0] = (value, 255 - value, 7)
    Image.fromarray(arr).save(path)
    return path


def _png_bytes(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((5, 7), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


GOOD_ROW = {"image_path": ["imgs/a.png"], "question": "<image>\nIs there a mass?", "answer": "no", "bbox": []}


# ---------------------------------------------------------------------------------------------- JSON(L)


def test_jsonl_rows_map_field_by_field(tmp_path: Path) -> None:
    img = _png(tmp_path / "imgs" / "a.png")
    rows = [
        {"image_path": ["imgs/a.png"], "question": "<image>\nIs there a lesion in the liver?", "answer": "Yes",
         "bbox": [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]]},
        {"id": "q7", "image_path": "imgs/a.png", "question": "<image>What is shown?\nA. Glioma\nB. Meningioma\nC. Pituitary tumour",
         "answer": "B", "bbox": [0.25, 0.25, 0.75, 0.5]},
        {"qid": 42, "image_path": ["imgs/a.png"], "question": "Which side? (A) left (B) right", "answer": "(A)", "bbox": None},
        {"image_path": ["imgs/a.png"], "question": "<image> What organ is this?", "answer": "left kidney",
         "answer_type": "OPEN"},
    ]
    result = read_rows(_jsonl(tmp_path / "train.jsonl", rows))
    assert result.skipped == []
    s0, s1, s2, s3 = result.samples

    assert s0.id == "train:0"
    assert s0.images == [str(img)]
    assert s0.question == "Is there a lesion in the liver?"
    assert (s0.answer, s0.kind, s0.options) == ("yes", "yes_no", None)
    assert s0.boxes == [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]]

    assert s1.id == "q7"
    assert s1.question == "What is shown?"  # options removed: Sample.question carries none
    assert s1.kind == "choice" and s1.answer == "B"
    assert s1.options == {"A": "Glioma", "B": "Meningioma", "C": "Pituitary tumour"}
    assert s1.boxes == [[0.25, 0.25, 0.75, 0.5]]  # a flat box is one box

    assert s2.id == "42"
    assert (s2.question, s2.kind, s2.answer, s2.options) == ("Which side?", "choice", "A", {"A": "left", "B": "right"})
    assert s2.boxes == []

    assert (s3.question, s3.kind, s3.answer, s3.options) == ("What organ is this?", "open", "left kidney", None)
    assert s3.meta == {"answer_type": "OPEN"}  # unknown keys are kept in meta


def test_json_list_with_image_root_resolves_paths_against_it(tmp_path: Path) -> None:
    img = _png(tmp_path / "elsewhere" / "imgs" / "a.png")
    (tmp_path / "rows.json").write_text(json.dumps([GOOD_ROW, {**GOOD_ROW, "answer": "yes"}]), encoding="utf-8")
    result = read_rows(tmp_path / "rows.json", image_root=tmp_path / "elsewhere")
    assert [s.images for s in result.samples] == [[str(img)], [str(img)]]
    assert [s.id for s in result.samples] == ["rows:0", "rows:1"]


def test_folder_reads_data_jsonl_and_ids_use_the_folder_name(tmp_path: Path) -> None:
    folder = tmp_path / "mini_set"
    _png(folder / "imgs" / "a.png")
    _jsonl(folder / "data.jsonl", [GOOD_ROW])
    (sample,) = read_rows(folder).samples
    assert sample.id == "mini_set:0"
    assert sample.images == [str(folder / "imgs" / "a.png")]


def test_folder_without_data_file_names_the_expected_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.jsonl"):
        read_rows(tmp_path)


def test_answer_text_equal_to_one_option_becomes_its_letter(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a.png")
    row = {**GOOD_ROW, "question": "Modality?\nA. CT\nB. MRI", "answer": "mri"}
    (sample,) = read_rows(_jsonl(tmp_path / "d.jsonl", [row])).samples
    assert (sample.kind, sample.answer, sample.question) == ("choice", "B", "Modality?")


def test_options_in_an_open_row_stay_in_the_question(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a.png")
    row = {**GOOD_ROW, "question": "Describe:\nA. foo\nB. bar", "answer": "something else"}
    (sample,) = read_rows(_jsonl(tmp_path / "d.jsonl", [row])).samples
    assert (sample.kind, sample.options, sample.question) == ("open", None, "Describe:\nA. foo\nB. bar")


def test_limit_stops_after_that_many_samples(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a.png")
    path = _jsonl(tmp_path / "d.jsonl", [{**GOOD_ROW, "id": f"r{k}"} for k in range(5)])
    assert [s.id for s in read_rows(path, limit=2).samples] == ["r0", "r1"]


# ----------------------------------------------------------------------------------------------- parquet


def _parquet(path: Path, rows: list[dict], image_type: "pa.DataType") -> Path:
    schema = pa.schema(
        [("image", image_type), ("question", pa.string()), ("answer", pa.string()), ("bbox", pa.list_(pa.list_(pa.float64())))]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def _hf_image() -> "pa.DataType":
    """The struct HF `datasets` writes for an Image feature."""
    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@needs_pyarrow
def test_parquet_with_hf_image_dicts_decodes_embedded_bytes(tmp_path: Path) -> None:
    rows = [
        {"image": {"bytes": _png_bytes(10), "path": "x1.png"}, "question": "<image>\nIs it normal?", "answer": "yes",
         "bbox": [[0.1, 0.1, 0.2, 0.3]]},
        {"image": {"bytes": _png_bytes(200), "path": "x2.png"}, "question": "<image>\nWhat is it?", "answer": "cyst", "bbox": []},
    ]
    result = read_rows(_parquet(tmp_path / "vitar.parquet", rows, _hf_image()))
    s0, s1 = result.samples
    assert s0.id == "vitar:0" and s1.id == "vitar:1"
    assert isinstance(s0.images[0], Image.Image) and s0.images[0].size == (7, 5)
    assert int(np.asarray(s0.images[0]).max()) == 10 and int(np.asarray(s1.images[0]).min()) == 200
    assert (s0.question, s0.answer, s0.kind, s0.boxes) == ("Is it normal?", "yes", "yes_no", [[0.1, 0.1, 0.2, 0.3]])
    assert (s1.question, s1.answer, s1.kind, s1.boxes) == ("What is it?", "cyst", "open", [])


@needs_pyarrow
def test_parquet_with_raw_bytes_and_image_lists(tmp_path: Path) -> None:
    raw = _parquet(tmp_path / "raw.parquet", [{"image": _png_bytes(33), "question": "q?", "answer": "a", "bbox": []}], pa.binary())
    (sample,) = read_rows(raw).samples
    assert int(np.asarray(sample.images[0]).max()) == 33

    listed = _parquet(
        tmp_path / "listed.parquet",
        [{"image": [{"bytes": _png_bytes(1), "path": None}, {"bytes": _png_bytes(2), "path": None}],
          "question": "q?", "answer": "a", "bbox": []}],
        pa.list_(_hf_image()),
    )
    (sample,) = read_rows(listed).samples
    assert [int(np.asarray(im).max()) for im in sample.images] == [1, 2]


@needs_pyarrow
def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _parquet(tmp_path / "p.parquet", [{"image": _png_bytes(1), "question": "q", "answer": "a", "bbox": []}], pa.binary())
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # makes `import pyarrow.parquet` fail
    with pytest.raises(ImportError, match=r"pip install"):
        read_rows(path)


# ---------------------------------------------------------------------------------------------- bad rows

BAD_ROWS = {
    "missing question": ({k: v for k, v in GOOD_ROW.items() if k != "question"}, "question"),
    "missing answer": ({k: v for k, v in GOOD_ROW.items() if k != "answer"}, "answer"),
    "missing image": ({k: v for k, v in GOOD_ROW.items() if k != "image_path"}, "image_path"),
    "box arity": ({**GOOD_ROW, "bbox": [[0.1, 0.2, 0.3]]}, "bbox[0]"),
    "box non-numeric": ({**GOOD_ROW, "bbox": [[0.1, "a", 0.3, 0.4]]}, "bbox[0]"),
    "box out of range": ({**GOOD_ROW, "bbox": [[0.1, 0.1, 0.2, 0.2], [10, 20, 200, 300]]}, "bbox[1]"),
    "box inverted": ({**GOOD_ROW, "bbox": [[0.5, 0.5, 0.2, 0.9]]}, "bbox[0]"),
    "image file missing": ({**GOOD_ROW, "image_path": ["imgs/missing.png"]}, "image_path[0]"),
    "yes_no kind, other answer": ({**GOOD_ROW, "kind": "yes_no", "answer": "maybe"}, "answer"),
    "choice kind, no options": ({**GOOD_ROW, "kind": "choice", "answer": "A"}, "options"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_error_names_file_row_and_field(tmp_path: Path, case: str) -> None:
    _png(tmp_path / "imgs" / "a.png")
    bad, field_name = BAD_ROWS[case]
    path = _jsonl(tmp_path / "rows.jsonl", [GOOD_ROW, GOOD_ROW, bad])
    with pytest.raises(DataError) as err:
        read_rows(path)
    message = str(err.value)
    assert "rows.jsonl" in message
    assert "row 2 (line 3)" in message
    assert f"'{field_name}'" in message


@needs_pyarrow
def test_unreadable_image_bytes_name_the_parquet_row_and_field(tmp_path: Path) -> None:
    rows = [{"image": {"bytes": _png_bytes(1), "path": None}, "question": "q", "answer": "a", "bbox": []},
            {"image": {"bytes": b"definitely not an image", "path": None}, "question": "q", "answer": "a", "bbox": []}]
    path = _parquet(tmp_path / "broken.parquet", rows, _hf_image())
    with pytest.raises(DataError) as err:
        read_rows(path)
    assert "broken.parquet" in str(err.value) and "row 1" in str(err.value) and "'image[0]'" in str(err.value)


def test_invalid_json_line_and_duplicate_ids_are_bad_rows(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a.png")
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD_ROW) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 1 \(line 2\).*'<json>'"):
        read_rows(path)
    dup = _jsonl(tmp_path / "dup.jsonl", [{**GOOD_ROW, "id": "x"}, {**GOOD_ROW, "id": "x"}])
    with pytest.raises(DataError, match=r"row 1 .*'id'"):
        read_rows(dup)


def test_skip_bad_rows_keeps_good_ones_and_reports_each_skipped_row(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a.png")
    rows = [GOOD_ROW, BAD_ROWS["box inverted"][0], GOOD_ROW, BAD_ROWS["missing answer"][0], GOOD_ROW]
    result = read_rows(_jsonl(tmp_path / "mixed.jsonl", rows), skip_bad_rows=True)
    assert [s.id for s in result.samples] == ["mixed:0", "mixed:2", "mixed:4"]
    assert len(result.skipped) == 2
    assert "row 1" in result.skipped[0] and "'bbox[0]'" in result.skipped[0]
    assert "row 3" in result.skipped[1] and "'answer'" in result.skipped[1]


# ------------------------------------------------------------------------------------- text helpers


def test_split_options_handles_line_inline_and_paren_markers() -> None:
    assert split_options("Q?\nA. x\nB. y\nAnswer with the letter.") == ("Q?\nAnswer with the letter.", {"A": "x", "B": "y"})
    assert split_options("Q? A) x B) y C) z") == ("Q?", {"A": "x", "B": "y", "C": "z"})
    assert split_options("Q?\n(A) x\n(B) y") == ("Q?", {"A": "x", "B": "y"})
    # A lone "A." is not an option list.
    assert split_options("Is vitamin A. deficient?") == ("Is vitamin A. deficient?", None)


def test_strip_placeholders_removes_all_image_tags() -> None:
    assert strip_placeholders("<image>\n<image_2> Compare <image1>  these.") == "Compare these."


# -------------------------------------------------------------------------------------------- writing


def test_write_then_read_round_trips_samples(tmp_path: Path) -> None:
    file_img = _png(tmp_path / "out" / "given" / "g.png", value=50)
    pil = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    samples = [
        Sample(id="s/1", images=[pil], question="Is there a lesion?", answer="yes", kind="yes_no",
               boxes=[[0.1, 0.2, 0.3, 0.4]], meta={"organ": "liver", "spots": [1, 2]}),
        Sample(id="s:2", images=[str(file_img), pil], question="What is it?", answer="C", kind="choice",
               options={"A": "cyst", "B": "stone", "C": "mass"}, boxes=[]),
        Sample(id="s3", images=[str(file_img)], question="Which lobe?", answer="left lobe", kind="open"),
    ]
    for suffix in (".jsonl", ".json"):
        out = tmp_path / "out" / f"rows{suffix}"
        write_rows(samples, out)
        back = read_rows(out).samples
        assert len(back) == len(samples)
        for a, b in zip(samples, back):
            assert (a.id, a.question, a.answer, a.kind, a.options, a.boxes, a.meta) == (
                b.id, b.question, b.answer, b.kind, b.options, b.boxes, b.meta
            )
            assert len(a.images) == len(b.images)
            for ia, ib in zip(a.images, b.images):
                pa_ = np.asarray(ia if isinstance(ia, Image.Image) else Image.open(ia))
                pb_ = np.asarray(Image.open(ib))
                np.testing.assert_array_equal(pa_, pb_)


def test_written_rows_use_the_authors_fields_with_relative_paths(tmp_path: Path) -> None:
    pil = Image.new("RGB", (4, 4))
    sample = Sample(id="a", images=[pil], question="What is it?", answer="B", kind="choice", options={"A": "x", "B": "y"},
                    boxes=[[0.0, 0.0, 0.5, 0.5]])
    out = write_rows([sample], tmp_path / "set" / "train.jsonl")
    row = json.loads(Path(out).read_text(encoding="utf-8").splitlines()[0])
    assert row["image_path"] == ["images/a.png"]
    assert row["question"] == "<image>\nWhat is it?\nA. x\nB. y"
    assert row["answer"] == "B" and row["bbox"] == [[0.0, 0.0, 0.5, 0.5]]
    assert (tmp_path / "set" / "images" / "a.png").is_file()

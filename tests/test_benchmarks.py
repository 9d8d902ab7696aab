"""Benchmark loaders: VQA-RAD on real release files (the subset shipped in tests/data/vqa_rad, or the full
release given by $VITOS_VQA_RAD_DIR), the others on tiny fixtures in their original format.

Each fixture is written here (PNG/JPEG via PIL, JSON, CSV, parquet via pyarrow), read back through the
loader, and checked field by field against values written by hand; a broken copy must fail with an error
naming the file, the row and the field.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import vqa_rad_is_subset, vqa_rad_path
from vitos.eval.benchmarks import BENCHMARKS, MalformedDataError, format_prompt, get_benchmark
from vitos.eval.benchmarks.slake import Slake

VQA_RAD_DIR = vqa_rad_path()  # the shipped subset, or $VITOS_VQA_RAD_DIR (the full release)
# Counts by hand: the full release from its PROVENANCE.md, the subset from tests/data/vqa_rad/PROVENANCE.md.
VQA_RAD_COUNTS = {
    "full": dict(test=451, test_freeform=308, yes_no=251, open=200, closed=272, open_type=179, train=1797),
    "subset": dict(test=28, test_freeform=19, yes_no=16, open=12, closed=17, open_type=11, train=57),
}["subset" if vqa_rad_is_subset(VQA_RAD_DIR) else "full"]


def write_image(path: Path, size: tuple[int, int] = (32, 16), color: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def png_bytes(size: tuple[int, int] = (8, 4), color: str = "blue") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def assert_boxes(actual: list[list[float]], expected: list[list[float]]) -> None:
    assert len(actual) == len(expected), (actual, expected)
    for a, e in zip(actual, expected):
        assert a == pytest.approx(e), (actual, expected)


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# =============================================================================================== registry


def test_registry_holds_the_seven_paper_benchmarks_with_hub_ids():
    assert set(BENCHMARKS) == {"vqa_rad", "slake", "pathvqa", "pmc_vqa", "omnimedvqa", "mmmu_med", "medxpertqa"}
    for name, bench in BENCHMARKS.items():
        assert bench.name == name and "/" in bench.hub_id
    assert BENCHMARKS["mmmu_med"].hub_id == "MMMU/MMMU"
    with pytest.raises(KeyError, match="known"):
        get_benchmark("vqa-rad")


def test_unknown_split_and_missing_folder_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'val'"):
        BENCHMARKS["slake"].load(str(tmp_path), split="val")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        BENCHMARKS["slake"].load(str(tmp_path / "nope"))


def test_hub_loading_without_network_or_package_says_to_pass_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VITOS_CACHE", str(tmp_path))
    import huggingface_hub

    def offline(**kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(RuntimeError, match=r"flaviagiammarino/vqa-rad.*data_dir"):
        BENCHMARKS["vqa_rad"].load(None)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import now fails
    with pytest.raises(RuntimeError, match="needs huggingface_hub"):
        BENCHMARKS["pathvqa"].load(None)


# =============================================================================================== VQA-RAD (real)


def test_vqa_rad_test_split_counts_match_the_release():
    n = VQA_RAD_COUNTS
    samples = BENCHMARKS["vqa_rad"].load(str(VQA_RAD_DIR), split="test")
    assert len(samples) == n["test"]  # full release: 308 test_freeform + 143 test_para
    assert sum(s.meta["phrase_type"] == "test_freeform" for s in samples) == n["test_freeform"]
    # PROVENANCE.md: yes/no answers 251 / 200 others; OSF answer_type 272 CLOSED / 179 OPEN (full release)
    assert sum(s.kind == "yes_no" for s in samples) == n["yes_no"]
    assert sum(s.kind == "open" for s in samples) == n["open"]
    assert sum(s.meta["answer_type"] == "CLOSED" for s in samples) == n["closed"]
    assert sum(s.meta["answer_type"] == "OPEN" for s in samples) == n["open_type"]
    assert len({s.id for s in samples}) == n["test"]
    assert all(len(s.images) == 1 and os.path.isabs(s.images[0]) and os.path.isfile(s.images[0]) for s in samples)
    assert all(s.answer in ("yes", "no") for s in samples if s.kind == "yes_no")


def test_vqa_rad_known_rows_by_hand():
    samples = {s.id: s for s in BENCHMARKS["vqa_rad"].load(str(VQA_RAD_DIR), split="test")}
    first = samples["10"]
    assert first.question == "Is there evidence of an aortic aneurysm?"
    assert (first.answer, first.kind, first.meta["image_organ"]) == ("yes", "yes_no", "CHEST")
    assert first.images == [str((VQA_RAD_DIR / "images" / "synpic42202.jpg").resolve())]
    para = samples["1998"]  # answer "No" in the file
    assert (para.answer, para.kind, para.meta["phrase_type"]) == ("no", "yes_no", "test_freeform")
    assert para.question == "Is there cardiomegaly present?"


def test_vqa_rad_train_split_survives_the_quirks():
    samples = {s.id: s for s in BENCHMARKS["vqa_rad"].load(str(VQA_RAD_DIR), split="train")}
    assert len(samples) == VQA_RAD_COUNTS["train"]
    assert (samples["0"].answer, samples["0"].kind) == ("yes", "yes_no")  # qid "0" is a string, answer "Yes"
    assert (samples["1511"].answer, samples["1511"].kind) == ("4", "open")  # int answer
    assert samples["2234"].answer == "12"
    assert samples["2239"].answer == "superficial to the patient's skin"  # leading space stripped
    assert samples["2156"].meta["answer_type"] == "CLOSED"  # "CLOSED " in the file
    assert samples["2156"].answer == "Maybe" and samples["2156"].kind == "open"


def test_vqa_rad_limit_keeps_file_order_and_prompts_follow_the_kind():
    bench = BENCHMARKS["vqa_rad"]
    five = bench.load(str(VQA_RAD_DIR), split="test", limit=5)
    assert [s.id for s in five] == [s.id for s in bench.load(str(VQA_RAD_DIR), split="test")[:5]]
    assert bench.prompt(five[0]) == "Is there evidence of an aortic aneurysm?\nAnswer yes or no."
    open_sample = next(s for s in bench.load(str(VQA_RAD_DIR), split="test") if s.kind == "open")
    assert bench.prompt(open_sample).endswith("\nAnswer with a concise phrase.")


def test_vqa_rad_bad_row_is_skipped_and_named(tmp_path):
    records = json.loads((VQA_RAD_DIR / "VQA_RAD Dataset Public.json").read_text(encoding="utf-8"))[:3]
    del records[2]["answer"]
    records[1]["phrase_type"] = "validation"
    (tmp_path / "VQA_RAD Dataset Public.json").write_text(json.dumps(records), encoding="utf-8")
    (tmp_path / "images").symlink_to(VQA_RAD_DIR / "images")
    bench = BENCHMARKS["vqa_rad"]
    report = bench.load_report(str(tmp_path), split="train")
    assert [s.id for s in report.samples] == [str(records[0]["qid"])]
    assert [r.where.rsplit("/", 1)[-1] for r in report.skipped] == [
        "VQA_RAD Dataset Public.json row 1", "VQA_RAD Dataset Public.json row 2",
    ]  # fmt: skip
    assert "unknown phrase_type 'validation'" in report.skipped[0].reason
    assert re.search(r"Public\.json row 2: missing field 'answer'", report.skipped[1].reason)
    assert bench.load(str(tmp_path), split="train") == report.samples
    with pytest.raises(MalformedDataError, match=r"row 1: unknown phrase_type 'validation'"):
        bench.load(str(tmp_path), split="train", strict=True)


def test_vqa_rad_reads_the_hub_parquet_copy_too(tmp_path):
    write_parquet(
        tmp_path / "data" / "test-00000-of-00001.parquet",
        [
            {"image": {"bytes": png_bytes((8, 4)), "path": None}, "question": "is this a ct?", "answer": "Yes"},
            {"image": {"bytes": png_bytes((6, 6)), "path": None}, "question": "what organ?", "answer": "liver"},
        ],
    )
    a, b = BENCHMARKS["vqa_rad"].load(str(tmp_path))
    assert (a.id, a.answer, a.kind, a.images[0].size) == ("test-0", "yes", "yes_no", (8, 4))
    assert (b.id, b.answer, b.kind, b.images[0].size) == ("test-1", "liver", "open", (6, 6))


# =============================================================================================== SLAKE


def slake_row(qid, question, answer, answer_type="OPEN", lang="en", img="xmlab1/source.jpg"):
    return {
        "img_id": 1, "img_name": img, "question": question, "answer": answer, "q_lang": lang,
        "location": "Abdomen", "modality": "CT", "answer_type": answer_type, "base_type": "vqa",
        "content_type": "Organ", "triple": ["vhead", "_", "_"], "qid": qid,
    }  # fmt: skip


@pytest.fixture
def slake_dir(tmp_path):
    write_image(tmp_path / "imgs/xmlab1/source.jpg", size=(200, 100))
    detections = [
        {"Liver": [20, 10, 40, 30]},
        {"Left Lung": [100, 0, 50, 50]},
        {"Right Lung": [150, 0, 50, 50]},
        {"Spleen": [0, 50, 20, 60]},  # reaches past the bottom edge: clipped
    ]
    (tmp_path / "imgs/xmlab1/detection.json").write_text(json.dumps(detections))
    write_image(tmp_path / "imgs/xmlab2/source.jpg")  # no detection.json
    rows = [
        slake_row(11, "Does the picture contain liver?", "Yes", "CLOSED"),
        slake_row(12, "Where is the left lung?", "Right Upper", "OPEN"),
        slake_row(13, "Are the lungs healthy?", "No", "CLOSED"),
        slake_row(14, "Which is bigger, liver or spleen?", "Liver", "CLOSED"),
        slake_row(15, "What modality is used?", "CT", "OPEN"),
        slake_row(16, "图中有肝脏吗?", "是", "CLOSED", lang="zh"),
        slake_row(17, "Is the liver abnormal?", "No", "CLOSED", img="xmlab2/source.jpg"),
    ]
    (tmp_path / "test.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return tmp_path


def test_slake_english_rows_kinds_closed_labels_and_organ_boxes(slake_dir):
    samples = {s.id: s for s in BENCHMARKS["slake"].load(str(slake_dir))}
    assert sorted(samples) == ["11", "12", "13", "14", "15", "17"]  # Chinese row 16 left out
    liver = samples["11"]
    assert (liver.answer, liver.kind, liver.meta["closed"]) == ("yes", "yes_no", True)
    assert liver.images == [str((slake_dir / "imgs/xmlab1/source.jpg").resolve())]
    assert_boxes(liver.boxes, [[20 / 200, 10 / 100, 60 / 200, 40 / 100]])
    left = samples["12"]  # full name wins: only the left lung
    assert (left.answer, left.kind, left.meta["closed"]) == ("Right Upper", "open", False)
    assert_boxes(left.boxes, [[0.5, 0.0, 0.75, 0.5]])
    assert_boxes(samples["13"].boxes, [[0.5, 0.0, 0.75, 0.5], [0.75, 0.0, 1.0, 0.5]])  # "lungs"
    bigger = samples["14"]  # CLOSED but judged as text; both named organs, spleen clipped to 1.0
    assert (bigger.kind, bigger.meta["closed"], bigger.closed) == ("open", True, False)
    assert_boxes(bigger.boxes, [[0.1, 0.1, 0.3, 0.4], [0.0, 0.5, 0.1, 1.0]])
    assert samples["15"].boxes == []  # names no organ
    assert samples["17"].boxes == []  # image without detection.json


def test_slake_all_languages_keeps_chinese_rows_as_text_questions(slake_dir):
    samples = {s.id: s for s in Slake(languages=None).load(str(slake_dir))}
    zh = samples["16"]
    assert (zh.answer, zh.kind, zh.boxes, zh.meta["q_lang"], zh.meta["closed"]) == ("是", "open", [], "zh", True)
    assert len(samples) == 7


def test_slake_bad_rows_and_detection_files_are_skipped_and_named(slake_dir):
    detection = slake_dir / "imgs/xmlab1/detection.json"
    good = detection.read_text()
    detection.write_text(json.dumps([{"Liver": [1, 2, 3]}]))
    report = BENCHMARKS["slake"].load_report(str(slake_dir))
    # every English row on xmlab1 needs that file; row 17 (xmlab2) survives
    assert [s.id for s in report.samples] == ["17"]
    assert [r.where.rsplit(" ", 1)[-1] for r in report.skipped] == ["0", "1", "2", "3", "4"]
    assert all(re.search(r"detection\.json: box of 'Liver' must be 4 numbers", r.reason) for r in report.skipped)
    detection.write_text(good)
    rows = json.loads((slake_dir / "test.json").read_text(encoding="utf-8"))
    del rows[1]["answer_type"]
    (slake_dir / "test.json").write_text(json.dumps(rows), encoding="utf-8")
    report = BENCHMARKS["slake"].load_report(str(slake_dir))
    assert len(report.samples) == 5 and len(report.skipped) == 1
    assert re.search(r"test\.json row 1: missing field 'answer_type'", report.skipped[0].reason)


def test_slake_kit_fields_keep_the_raw_answer(slake_dir):
    samples = {s.id: s for s in Slake(languages=None).load(str(slake_dir))}
    assert samples["11"].meta["kit"] == {"answer": "Yes", "answer_type": "CLOSED", "lang": "en"}
    assert samples["16"].meta["kit"]["answer"] == "是"


# =============================================================================================== PathVQA


def test_pathvqa_reads_hub_parquet_shards_in_order(tmp_path):
    write_parquet(
        tmp_path / "data" / "test-00000-of-00002.parquet",
        [{"image": {"bytes": png_bytes((5, 3)), "path": "a.png"}, "question": "is there necrosis?", "answer": "no"}],
    )
    write_parquet(
        tmp_path / "data" / "test-00001-of-00002.parquet",
        [{"image": {"bytes": png_bytes((4, 4)), "path": "b.png"}, "question": "what stain is used?", "answer": "H&E"}],
    )
    write_parquet(
        tmp_path / "data" / "train-00000-of-00001.parquet",
        [{"image": {"bytes": png_bytes(), "path": "c.png"}, "question": "train?", "answer": "yes"}],
    )
    a, b = BENCHMARKS["pathvqa"].load(str(tmp_path))
    assert (a.id, a.question, a.answer, a.kind) == ("test-0", "is there necrosis?", "no", "yes_no")
    assert a.images[0].size == (5, 3)
    assert (b.id, b.answer, b.kind, b.images[0].size) == ("test-1", "H&E", "open", (4, 4))
    assert len(BENCHMARKS["pathvqa"].load(str(tmp_path), split="train")) == 1


def test_pathvqa_bad_row_is_skipped_and_named(tmp_path):
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", [
        {"image": {"bytes": png_bytes(), "path": None}, "question": "is it?", "answer": None},
        {"image": {"bytes": b"", "path": None}, "question": "what?", "answer": "gland"},
        {"image": {"bytes": png_bytes(), "path": None}, "question": "what?", "answer": "gland"},
    ])  # fmt: skip
    report = BENCHMARKS["pathvqa"].load_report(str(tmp_path))
    assert [s.id for s in report.samples] == ["test-2"]
    assert re.search(r"test-00000-of-00001\.parquet row 0: missing field 'answer'", report.skipped[0].reason)
    assert "row 1" in report.skipped[1].where and "holds no bytes" in report.skipped[1].reason
    assert report.samples[0].meta["kit"] == {"answer": "gland"}


def test_limit_counts_good_samples_and_stops_reading(tmp_path):
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", [
        {"image": {"bytes": png_bytes(), "path": None}, "question": "q", "answer": None},
        {"image": {"bytes": png_bytes(), "path": None}, "question": "q", "answer": "a"},
        {"image": {"bytes": png_bytes(), "path": None}, "question": "q", "answer": None},
    ])  # fmt: skip
    report = BENCHMARKS["pathvqa"].load_report(str(tmp_path), limit=1)
    assert [s.id for s in report.samples] == ["test-1"] and len(report.skipped) == 1


def test_pathvqa_missing_column_and_missing_split_are_clear(tmp_path):
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", [{"question": "q", "answer": "yes"}])
    with pytest.raises(MalformedDataError, match=r"missing column\(s\) \['image'\]"):
        BENCHMARKS["pathvqa"].load(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="split 'validation'"):
        BENCHMARKS["pathvqa"].load(str(tmp_path), split="validation")


# =============================================================================================== PMC-VQA


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


V2_HEADER = [
    "", "Figure_path", "Caption", "Question", "Choice A", "Choice B", "Choice C", "Choice D", "Answer", "split",
]  # fmt: skip


def test_pmc_vqa_version2_csv_with_letter_answers(tmp_path):
    write_image(tmp_path / "figures" / "PMC1_F1.jpg")
    write_image(tmp_path / "figures" / "PMC2_F2.jpg")
    write_csv(tmp_path / "test_2.csv", V2_HEADER, [
        ["0", "PMC1_F1.jpg", "cap", "What is the uptake pattern?", " A:Diffuse uptake ", "B:Focal uptake",
         "C:No uptake", "D:Cannot determine", "B", "test"],
        ["1", "PMC2_F2.jpg", "cap", "Which modality?", "A:CT", "B:MRI", "C:PET", "D:X-ray", "D", "test"],
    ])  # fmt: skip
    first, second = BENCHMARKS["pmc_vqa"].load(str(tmp_path))
    assert first.id == "test_2-0" and first.kind == "choice"
    assert first.options == {"A": "Diffuse uptake", "B": "Focal uptake", "C": "No uptake", "D": "Cannot determine"}
    assert (first.question, first.answer) == ("What is the uptake pattern?", "B")
    assert first.images == [str((tmp_path / "figures" / "PMC1_F1.jpg").resolve())]
    assert (second.answer, second.options["D"]) == ("D", "X-ray")
    assert BENCHMARKS["pmc_vqa"].prompt(second) == (
        "Which modality?\nA. CT\nB. MRI\nC. PET\nD. X-ray\n"
        "Answer with the option's letter from the given choices directly."
    )


def test_pmc_vqa_version1_clean_csv_uses_answer_label(tmp_path):
    write_image(tmp_path / "images" / "PMC9_F1.jpg")
    header = ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"]
    write_csv(tmp_path / "test_clean.csv", header, [
        ["PMC9_F1.jpg", "What is shown?", "Focal uptake pattern", "A:Diffuse", "B:Focal uptake pattern",
         "C:None", "D:Unclear", "B"],
    ])  # fmt: skip
    (sample,) = BENCHMARKS["pmc_vqa"].load(str(tmp_path), split="test_clean")
    assert (sample.id, sample.answer, sample.options["B"]) == ("test_clean-0", "B", "Focal uptake pattern")
    assert sample.images[0].endswith("images/PMC9_F1.jpg")


def test_pmc_vqa_bad_rows_are_skipped_and_named(tmp_path):
    write_image(tmp_path / "figures" / "PMC1_F1.jpg")
    write_csv(tmp_path / "test_2.csv", V2_HEADER, [
        ["0", "PMC1_F1.jpg", "", "Q?", "A:CT", "B:MRI", "C:PET", "D:X-ray", "Z", "test"],
        ["1", "missing.jpg", "", "Q?", "A:x", "B:y", "C:z", "D:w", "A", "test"],
        ["2", "PMC1_F1.jpg", "", "Q?", " A:CT", "B:MRI", "C:PET", "D:X-ray", "B", "test"],
    ])  # fmt: skip
    report = BENCHMARKS["pmc_vqa"].load_report(str(tmp_path))
    assert [s.id for s in report.samples] == ["test_2-2"]
    assert re.search(r"test_2\.csv row 0: field 'Answer' = 'Z' names none", report.skipped[0].reason)
    assert re.search(r"row 1: image 'missing\.jpg' not found", report.skipped[1].reason)
    assert report.samples[0].meta["kit"] == {"choices": [" A:CT", "B:MRI", "C:PET", "D:X-ray"], "answer": "B"}
    with pytest.raises(MalformedDataError, match="names none"):
        BENCHMARKS["pmc_vqa"].load(str(tmp_path), strict=True)


# =============================================================================================== OmniMedVQA


def test_omnimedvqa_open_access_json_to_choice_samples(tmp_path):
    write_image(tmp_path / "Images/ACRIMA/im1.png")
    write_image(tmp_path / "Images/Chest/im2.png")
    qa = tmp_path / "QA_information/Open-access"
    qa.mkdir(parents=True)
    (qa / "B_Chest.json").write_text(json.dumps([{
        "dataset": "Chest", "question_id": "Chest_0001", "question_type": "Disease Diagnosis",
        "question": "What abnormality is shown?", "gt_answer": "Pneumonia", "image_path": "Images/Chest/im2.png",
        "option_A": "Normal", "option_B": "Effusion", "option_C": "Pneumonia", "option_D": "Nodule",
        "modality_type": "X-Ray",
    }]))  # fmt: skip
    (qa / "A_ACRIMA.json").write_text(json.dumps([{
        "dataset": "ACRIMA", "question_id": "ACRIMA_0000", "question_type": "Disease Diagnosis",
        "question": "Is glaucoma present?", "gt_answer": "No", "image_path": "Images/ACRIMA/im1.png",
        "option_A": "Yes", "option_B": "No", "modality_type": "Fundus Photography",
    }]))  # fmt: skip
    a, b = BENCHMARKS["omnimedvqa"].load(str(tmp_path))  # files in sorted name order
    assert (a.id, a.answer, a.options, a.kind) == ("ACRIMA_0000", "B", {"A": "Yes", "B": "No"}, "choice")
    assert a.images == [str((tmp_path / "Images/ACRIMA/im1.png").resolve())]
    assert (b.id, b.answer, b.options["C"], b.meta["modality_type"]) == ("Chest_0001", "C", "Pneumonia", "X-Ray")


def test_omnimedvqa_bad_row_and_bad_file_are_skipped_and_named(tmp_path):
    write_image(tmp_path / "Images/x.png")
    qa = tmp_path / "QA_information/Open-access"
    qa.mkdir(parents=True)
    (qa / "X.json").write_text(json.dumps([
        {"question_id": "X_0", "question": "q?", "gt_answer": "Maybe", "image_path": "Images/x.png",
         "option_A": "Yes", "option_B": "No"},
        {"question_id": "X_1", "question": "q?", "gt_answer": "No", "image_path": "Images/x.png",
         "option_A": "Yes", "option_B": "No", "option_C": None},
    ]))  # fmt: skip
    (qa / "Y.json").write_text(json.dumps({"not": "a list"}))
    report = BENCHMARKS["omnimedvqa"].load_report(str(tmp_path))
    assert [s.id for s in report.samples] == ["X_1"]
    assert len(report.skipped) == 2
    assert re.search(r"X\.json row 0: field 'gt_answer' = 'Maybe' equals none", report.skipped[0].reason)
    assert report.skipped[1].where.endswith("Y.json (whole file)")
    # the kit's view: every option_X key present, null included; answer = the letter of the equal option
    assert report.samples[0].meta["kit"] == {"choices": ["A. Yes", "B. No", "C. None"], "answer": "B"}


# =============================================================================================== MMMU


MMMU_SUBJECTS = [
    "Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine", "Pharmacy", "Public_Health",
]  # fmt: skip


def mmmu_row(id_, question, options, answer, qtype="multiple-choice", images=None):
    row = {"id": id_, "question": question, "options": options, "explanation": "", "answer": answer,
           "question_type": qtype, "subfield": "sub", "img_type": "['Photos']", "topic_difficulty": "Easy"}  # fmt: skip
    for k in range(1, 8):
        row[f"image_{k}"] = (images or {}).get(k)
    return row


def test_mmmu_med_five_subjects_placeholders_and_several_images(tmp_path):
    img = {"bytes": png_bytes((3, 2)), "path": "x.png"}
    img_big = {"bytes": png_bytes((7, 5)), "path": "y.png"}
    for subject in MMMU_SUBJECTS:
        options = "['Edema', 'Fibrosis']"
        rows = [mmmu_row(f"validation_{subject}_1", "Which <image 1> finding?", options, "B", images={1: img})]
        if subject == "Clinical_Medicine":
            rows.append(mmmu_row(
                f"validation_{subject}_2", "Compare <image 2> and <image 3>.", "['<image 3> is larger', 'same']",
                "A", images={2: img, 3: img_big},
            ))  # fmt: skip
            rows.append(
                mmmu_row(f"validation_{subject}_3", "Dose in mg?", "[]", "['6', '6.0']", qtype="open", images={1: img})
            )
        write_parquet(tmp_path / subject / "validation-00000-of-00001.parquet", rows)
    samples = BENCHMARKS["mmmu_med"].load(str(tmp_path))  # "test" is the validation split
    subjects = [s.meta["subject"] for s in samples]
    assert subjects == ["Basic_Medical_Science", *["Clinical_Medicine"] * 3, *MMMU_SUBJECTS[2:]]
    assert len(samples) == 7
    first = samples[0]
    assert (first.question, first.options, first.answer, first.kind) == (
        "Which image 1 finding?", {"A": "Edema", "B": "Fibrosis"}, "B", "choice"
    )
    multi = samples[2]
    assert multi.question == "Compare image 1 and image 2."  # image_2 -> position 1, image_3 -> position 2
    assert multi.options == {"A": "image 2 is larger", "B": "same"}
    assert [im.size for im in multi.images] == [(3, 2), (7, 5)]
    dose = samples[3]
    assert (dose.kind, dose.answer, dose.meta["answers"], dose.options) == ("open", "6", ["6", "6.0"], None)
    assert BENCHMARKS["mmmu_med"].prompt(dose) == "Dose in mg?\nAnswer with a concise phrase."


def test_mmmu_med_bad_row_is_skipped_and_missing_subject_is_an_error(tmp_path):
    img = {"bytes": png_bytes(), "path": "x.png"}
    for subject in MMMU_SUBJECTS:
        write_parquet(
            tmp_path / subject / "validation-00000-of-00001.parquet",
            [mmmu_row(f"{subject}_1", "See <image 2>.", "['a', 'b']", "A", images={1: img}),
             mmmu_row(f"{subject}_2", "See <image 1>.", "['a', 'b']", "A", images={1: img})],
        )  # fmt: skip
    report = BENCHMARKS["mmmu_med"].load_report(str(tmp_path))
    assert [s.id for s in report.samples] == [f"{subject}_2" for subject in MMMU_SUBJECTS]
    assert len(report.skipped) == 5
    assert re.search(r"row 0: text refers to <image 2> but field 'image_2' is empty", report.skipped[0].reason)
    (tmp_path / "Pharmacy" / "validation-00000-of-00001.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="Pharmacy"):
        BENCHMARKS["mmmu_med"].load(str(tmp_path), split="validation")


def test_mmmu_med_first_image_only_as_medevalkit(tmp_path):
    img = {"bytes": png_bytes((3, 2)), "path": "x.png"}
    img_big = {"bytes": png_bytes((7, 5)), "path": "y.png"}
    for subject in MMMU_SUBJECTS:
        write_parquet(
            tmp_path / subject / "validation-00000-of-00001.parquet",
            [mmmu_row(f"{subject}_1", "Compare <image 1> and <image 2>.", "['<image 2> is larger', 'same']", "A",
                      images={1: img, 2: img_big})],
        )  # fmt: skip
    from vitos.eval.benchmarks.mmmu_med import MMMUMed

    all_images = BENCHMARKS["mmmu_med"].load(str(tmp_path))[0]
    first = MMMUMed(images="first").load(str(tmp_path))[0]
    assert [im.size for im in all_images.images] == [(3, 2), (7, 5)]
    assert [im.size for im in first.images] == [(3, 2)]
    assert first.question == "Compare image 1 and image 2." and first.options["A"] == "image 2 is larger"
    assert first.meta["kit"] == {
        "question_type": "multiple-choice", "answer": "A", "all_choices": ["A", "B"],
        "index2ans": {"A": "<image 2> is larger", "B": "same"},
    }  # fmt: skip


# =============================================================================================== MedXpertQA


def mxq_row(id_, images, label="C"):
    return {
        "id": id_,
        "question": "A 70-year-old woman has a rash. Diagnosis?\nAnswer Choices: (A) a (B) b (C) c (D) d (E) e",
        "options": {"A": "Erythema infectiosum", "B": "Larva migrans", "C": "Cold agglutinin disease",
                    "D": "Cutis marmorata", "E": "Erythema ab igne"},
        "label": label, "images": images, "medical_task": "Diagnosis", "body_system": "Integumentary",
        "question_type": "Reasoning",
    }  # fmt: skip


def test_medxpertqa_mm_jsonl_with_several_images(tmp_path):
    for name in ("MM-1-a.jpeg", "MM-1-b.jpeg", "MM-2-a.png"):
        write_image(tmp_path / "images" / name)
    (tmp_path / "MM").mkdir()
    lines = [
        json.dumps(mxq_row("MM-1", ["MM-1-a.jpeg", "MM-1-b.jpeg"])),
        "",  # blank lines are skipped
        json.dumps(mxq_row("MM-2", ["MM-2-a.png"], "A")),
    ]
    (tmp_path / "MM" / "test.jsonl").write_text("\n".join(lines) + "\n")
    one, two = BENCHMARKS["medxpertqa"].load(str(tmp_path))
    assert one.id == "MM-1" and one.kind == "choice" and one.answer == "C"
    assert one.question == "A 70-year-old woman has a rash. Diagnosis?"  # the written-out choices removed
    assert list(one.options) == ["A", "B", "C", "D", "E"] and one.options["C"] == "Cold agglutinin disease"
    assert one.images == [str((tmp_path / "images" / n).resolve()) for n in ("MM-1-a.jpeg", "MM-1-b.jpeg")]
    assert (two.answer, len(two.images), two.meta["medical_task"]) == ("A", 1, "Diagnosis")
    prompt = BENCHMARKS["medxpertqa"].prompt(one)
    assert prompt.count("Erythema infectiosum") == 1 and "\nE. Erythema ab igne\n" in prompt


def test_medxpertqa_bad_lines_are_skipped_and_named(tmp_path):
    write_image(tmp_path / "images" / "MM-1-a.jpeg")
    (tmp_path / "MM").mkdir()
    lines = [json.dumps(mxq_row("MM-1", ["MM-1-a.jpeg"])), "{not json", json.dumps(mxq_row("MM-2", ["MM-1-a.jpeg"], "F"))]
    (tmp_path / "MM" / "test.jsonl").write_text("\n".join(lines) + "\n")
    report = BENCHMARKS["medxpertqa"].load_report(str(tmp_path))
    assert [s.id for s in report.samples] == ["MM-1"]
    assert re.search(r"test\.jsonl line 2: not valid JSON", report.skipped[0].reason)
    assert re.search(r"line 3: field 'label' = 'F' is not one of the option letters", report.skipped[1].reason)
    kit = report.samples[0].meta["kit"]
    assert kit["answer"] == "C" and kit["choices"][0] == "A. Erythema infectiosum" and len(kit["choices"]) == 5


def test_medxpertqa_keeps_the_answer_choices_block_as_medevalkit(tmp_path):
    write_image(tmp_path / "images" / "MM-1-a.jpeg")
    (tmp_path / "MM").mkdir()
    (tmp_path / "MM" / "test.jsonl").write_text(json.dumps(mxq_row("MM-1", ["MM-1-a.jpeg"])) + "\n")
    from vitos.eval.benchmarks.medxpertqa import MedXpertQA

    (kept,) = MedXpertQA(keep_choices_block=True).load(str(tmp_path))
    assert kept.question.endswith("Answer Choices: (A) a (B) b (C) c (D) d (E) e")


# =============================================================================================== prompts


def test_format_prompt_for_each_kind():
    from vitos.data.sample import Sample

    yn = Sample(id="1", images=[], question=" Is it normal? ", answer="yes", kind="yes_no")
    assert format_prompt(yn) == "Is it normal?\nAnswer yes or no."
    mc = Sample(id="2", images=[], question="Which?", answer="A", kind="choice", options={"A": "x", "B": "y"})
    assert format_prompt(mc) == "Which?\nA. x\nB. y\nAnswer with the option's letter from the given choices directly."
    with pytest.raises(ValueError, match="no options"):
        format_prompt(Sample(id="3", images=[], question="Which?", answer="A", kind="choice"))

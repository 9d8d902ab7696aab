"""Outputs that cannot overwrite inputs (issue 17): the shared helper (vitos.paths) and every command that
writes: `infer --overlay`, `train`'s run folder, `tiny-model`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vitos.paths import (
    PathError, atomic_write_text, check_output_dir, check_output_file, check_writable_dir, check_writable_file,
    replace_dir, same_or_inside,
)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"


def test_same_or_inside(tmp_path):
    assert same_or_inside(tmp_path, tmp_path) and same_or_inside(tmp_path / "a" / "b", tmp_path)
    assert same_or_inside(tmp_path / "a" / ".." / "a", tmp_path / "a")
    assert not same_or_inside(tmp_path / "ab", tmp_path / "a") and not same_or_inside(tmp_path, tmp_path / "a")


def test_an_output_file_is_never_an_input_file_by_path_symlink_or_hard_link(tmp_path):
    scan = tmp_path / "scan.png"
    scan.write_bytes(b"png")
    (tmp_path / "link.png").symlink_to(scan)
    os.link(scan, tmp_path / "hard.png")
    for out in (scan, tmp_path / "link.png", tmp_path / "hard.png", tmp_path / "x" / ".." / "scan.png"):
        with pytest.raises(PathError, match="--overlay .* is the --image file"):
            check_output_file(out, "--overlay", [("--image", scan)])
    check_output_file(tmp_path / "overlay.png", "--overlay", [("--image", scan), ("--model", None)])


def test_an_output_file_may_not_replace_a_file_of_an_input_folder(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(PathError, match="would overwrite a file of the --model folder"):
        check_output_file(model / "config.json", "--overlay", [("--model", model)])
    check_output_file(model / "new.png", "--overlay", [("--model", model)])  # a new file beside it destroys nothing


def test_an_output_folder_never_is_contains_or_lies_inside_an_input(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = data / "train.jsonl"
    rows.write_text("")
    inputs = [("data", rows), ("model", tmp_path / "model")]  # the model does not exist: skipped
    for out, words in ((data, "contains the data"), (tmp_path, "contains the data"), (rows, "contains the data")):
        with pytest.raises(PathError, match=words):
            check_output_dir(out, "out", inputs)
    with pytest.raises(PathError, match="lies inside the data folder"):
        check_output_dir(data / "run", "out", [("data folder", data)])
    check_output_dir(data / "run", "out", [("data folder", data)], inside_ok=True)
    check_output_dir(tmp_path / "run", "out", inputs)
    check_output_dir(tmp_path, "out", [("tiny model", tmp_path / "run")], allowed=[tmp_path / "run"])


def test_writable_dir_and_file(tmp_path, monkeypatch):
    import tempfile

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PathError, match="is a file, not a folder"):
        check_writable_dir(blocker, "out")
    with pytest.raises(PathError, match=f"cannot be created: {blocker} is a file"):
        check_writable_dir(blocker / "a" / "b", "out")
    with pytest.raises(PathError, match="is a folder; give a file path"):
        check_writable_file(tmp_path, "--overlay")
    check_writable_dir(tmp_path / "new" / "deeper", "out")
    assert not (tmp_path / "new").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # probe left nothing

    def denied(*a, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(PathError, match="is not writable .*Permission denied"):
        check_writable_dir(tmp_path, "out")


def test_atomic_write_keeps_the_old_content_when_killed(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    target.write_text("old")

    def killed(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    atomic_write_text(target, "new")
    assert target.read_text() == "new"


def test_replace_dir_swaps_whole_folders(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "a").write_text("new")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "b").write_text("old")
    replace_dir(tmp_path / "new", tmp_path / "dst")
    assert [p.name for p in (tmp_path / "dst").iterdir()] == ["a"] and sorted(p.name for p in tmp_path.iterdir()) == ["dst"]


# ------------------------------------------------------------------------------ the commands


def _main(capsys, *argv):
    from vitos.cli import main

    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def test_infer_overlay_onto_the_image_is_refused_and_the_scan_survives(tmp_path, tiny_model_dir, capsys):
    from conftest import random_image

    scan = tmp_path / "scan.png"
    random_image(40, 30).save(scan)
    original = scan.read_bytes()
    (tmp_path / "alias.png").symlink_to(scan)
    base = ["infer", "--model", tiny_model_dir, "--image", scan, "--question", "x?", "--max-new-tokens", "2",
            "--device", "cpu", "--dtype", "float32"]
    fake_model = tmp_path / "model"
    fake_model.mkdir()
    (fake_model / "logo.png").write_bytes(b"logo")
    refused = ["infer", "--model", fake_model, *base[3:]]
    rc, err = _main(capsys, *refused, "--overlay", fake_model / "logo.png")
    assert rc == 2 and "would overwrite a file of the --model folder" in err and (fake_model / "logo.png").read_bytes() == b"logo"
    for overlay, words in ((scan, "is the --image file"), (tmp_path / "alias.png", "is the --image file"),
                           (tmp_path, "is a folder"), (tmp_path / "scan.png" / "x.png", "is a file"),
                           (tmp_path / "out.xyz", "unknown image extension")):
        rc, err = _main(capsys, *base, "--overlay", overlay)
        assert rc == 2 and words in err and err.count("\n") == 1, (overlay, err)
    assert scan.read_bytes() == original
    rc, err = _main(capsys, *base, "--overlay", tmp_path / "out" / "overlay.png")
    assert rc == 0 and (tmp_path / "out" / "overlay.png").is_file() and scan.read_bytes() == original
    assert not list((tmp_path / "out").glob(".tmp-*"))


@pytest.mark.parametrize("flag, value, words", [("--max-new-tokens", "0", "--max-new-tokens >= 1"),
                                                ("--margin", "nan", "--margin = nan is not a finite number"),
                                                ("--margin", "-0.5", "0 <= --margin <= 1"),
                                                ("--min-keep", "0", "--min-keep >= 1")])
def test_infer_refuses_bad_numbers_before_loading_the_model(flag, value, words, tmp_path, capsys):
    rc, err = _main(capsys, "infer", "--model", tmp_path / "no-such-model", "--image", tmp_path / "x.png",
                    "--question", "q", flag, value)
    assert rc == 2 and words in err and err.count("\n") == 1, err


def test_tiny_model_never_mixes_into_or_deletes_a_folder_that_is_not_its_own(tmp_path, capsys):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    rc, err = _main(capsys, "tiny-model", mine)
    assert rc == 2 and "is not empty" in err and "--overwrite" in err
    rc, err = _main(capsys, "tiny-model", mine, "--overwrite")
    assert rc == 2 and "has no config.json" in err
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc, err = _main(capsys, "tiny-model", blocker)
    assert rc == 2 and "is a file" in err

    model = tmp_path / "model"
    assert _main(capsys, "tiny-model", model, "--seed", "1")[0] == 0
    rc, err = _main(capsys, "tiny-model", model, "--seed", "2")
    assert rc == 2 and "is not empty" in err
    before = (model / "model.safetensors").read_bytes()
    assert _main(capsys, "tiny-model", model, "--seed", "2", "--overwrite")[0] == 0
    assert (model / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "model", "notes"]  # no temporary folder left


def test_train_refuses_a_run_folder_that_is_contains_or_lies_inside_an_input(tmp_path, tiny_model_dir, capsys):
    from vitos.data.medphantom import PhantomConfig, write_dataset

    data_dir = tmp_path / "data"
    rows = write_dataset(PhantomConfig(seed=0, n_train=2, n_test=0), data_dir)["train"]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    model = Path(tiny_model_dir)
    for out, data, words in ((model, rows, "contains the model folder"),
                             (model / "run", rows, "lies inside the model folder"),
                             (data_dir, rows, "contains the data"),
                             (tmp_path, rows, "contains the data"),
                             (data_dir / "run", data_dir, "lies inside the data")):
        rc, err = _main(capsys, "train", "--config", CONFIG, f"checkpoint.out_dir={out}", f"data.train_path={data}",
                        f"model.name_or_path={model}", "logging.progress=false")
        assert rc == 2 and words in err and err.count("\n") == 1, (out, err)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (model / "run").exists() and not (model / "metrics.jsonl").exists()


def test_train_overwrite_refuses_a_config_inside_the_folder_it_deletes(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    config = run / "my.yaml"
    config.write_text(CONFIG.read_text())
    rc, err = _main(capsys, "train", "--config", config, f"checkpoint.out_dir={run}", "--overwrite")
    assert rc == 2 and "copy the config elsewhere" in err and config.is_file()

"""vitos_settings.json: written by `vitos tiny-model`, read by `vitos infer` as its defaults; flags override
them with a warning; a synthetic toy model on a real image says so in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import vitos.infer
from conftest import vqa_rad_path
from vitos.cli import main
from vitos.models.settings import (
    SETTINGS_FILE,
    ModelSettings,
    SettingsError,
    read_settings,
    resolve_settings,
    write_settings,
)

REAL = str(vqa_rad_path() / "images" / "synpic54610.jpg")


@pytest.fixture()
def spy(monkeypatch):
    """Record the prune / sampling settings `vitos infer` hands to infer_one (the real one still runs)."""
    seen = {}
    real = vitos.infer.infer_one

    def recording(adapter, image, question, **kw):
        seen.update(prune=kw["prune"], sampling=kw["sampling"])
        return real(adapter, image, question, **kw)

    monkeypatch.setattr(vitos.infer, "infer_one", recording)
    return seen


@pytest.fixture()
def model_with(tiny_model_dir, tmp_path):
    """A copy of the tiny model whose vitos_settings.json says what the test wants."""

    def make(**values):
        folder = tmp_path / "model"
        shutil.copytree(tiny_model_dir, folder)
        write_settings(folder, ModelSettings(**{"synthetic": True, "made_by": "test", **values}))
        return str(folder)

    return make


def _infer(capsys, model, image, *flags):
    rc = main(["infer", "--model", model, "--image", image, "--question", "Is it normal?", "--json",
               "--device", "cpu", "--dtype", "float32", *flags])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_tiny_model_carries_synthetic_settings(tiny_model_dir):
    data = json.loads(Path(tiny_model_dir, SETTINGS_FILE).read_text())
    assert data["provenance"]["synthetic"] is True and data["provenance"]["made_by"] == "vitos tiny-model"
    assert data["pruning"] == {"fusion": "merge", "margin": 0.0, "min_keep": 1, "num_contextual": 4}
    assert data["generation"] == {"max_new_tokens": 256, "temperature": 0.0}
    s = read_settings(tiny_model_dir)
    assert s.synthetic and s.source.endswith(SETTINGS_FILE)


def test_demo_warm_start_reads_the_settings_it_was_evaluated_with():
    from vitos.demo import resolve_warm_start

    s = read_settings(resolve_warm_start("builtin"))
    assert (s.fusion, s.max_new_tokens, s.margin, s.min_keep, s.temperature, s.synthetic) == ("none", 64, 0.0, 1, 0.0, True)


def test_infer_defaults_to_the_saved_settings_and_says_so(model_with, spy, capsys):
    model = model_with(fusion="none", margin=0.1, min_keep=3, max_new_tokens=5)
    rc, out, err = _infer(capsys, model, REAL)
    assert rc == 0, err
    json.loads(out)  # stdout stays one JSON document
    p, g = spy["prune"], spy["sampling"]
    assert (p.fusion, p.margin, p.min_keep, g.max_new_tokens, g.temperature) == ("none", 0.1, 3, 5, 0.0)
    assert "settings: fusion=none, margin=0.1, min_keep=3, num_contextual=4, max_new_tokens=5" in err
    assert "saved with the model" in err and "warning" not in err


def test_a_flag_overrides_a_saved_setting_with_a_warning(model_with, spy, capsys):
    model = model_with(fusion="none", max_new_tokens=5)
    rc, _, err = _infer(capsys, model, REAL, "--fusion", "merge", "--max-new-tokens", "5")  # 5 = saved: no warning
    assert rc == 0, err
    assert spy["prune"].fusion == "merge" and spy["sampling"].max_new_tokens == 5
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: --fusion merge overrides the model's saved fusion=none"]
    assert "flags changed fusion" in err


def test_synthetic_model_on_a_real_image_prints_one_note_and_not_on_a_phantom(model_with, tmp_path, capsys):
    from vitos.data.medphantom import PhantomConfig, write_dataset

    model = model_with(max_new_tokens=2)
    _, _, err = _infer(capsys, model, REAL)
    assert sum("synthetic toy model" in line for line in err.splitlines()) == 1
    write_dataset(PhantomConfig(n_train=0, n_test=1), tmp_path / "phantom")
    phantom = next((tmp_path / "phantom" / "images").glob("*.png"))
    rc, _, err = _infer(capsys, model, str(phantom))
    assert rc == 0 and "synthetic toy model" not in err


def test_a_model_without_settings_uses_the_built_in_defaults(tiny_model_dir, tmp_path, spy, capsys):
    folder = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, folder)
    (folder / SETTINGS_FILE).unlink()
    rc, _, err = _infer(capsys, str(folder), REAL, "--max-new-tokens", "2")
    assert rc == 0, err
    assert spy["prune"].fusion == "merge" and "built-in defaults" in err and "warning" not in err
    assert "synthetic toy model" not in err  # nothing says it is one


def test_a_broken_settings_file_is_a_one_line_error_naming_file_and_field(model_with, capsys):
    model = model_with()
    path = Path(model, SETTINGS_FILE)
    data = json.loads(path.read_text())
    data["pruning"]["fusion"] = "average"
    path.write_text(json.dumps(data))
    rc, _, err = _infer(capsys, model, REAL)
    assert rc == 2 and SETTINGS_FILE in err and "pruning.fusion 'average'" in err and "Traceback" not in err
    data["pruning"]["fusion"], data["pruning"]["keep"] = "none", 3
    path.write_text(json.dumps(data))
    with pytest.raises(SettingsError, match=r"unknown pruning setting\(s\) \['keep'\]"):
        read_settings(model)


def test_resolve_without_saved_settings_never_warns():
    r = resolve_settings(None, {"fusion": "none", "margin": None})
    assert r.settings.fusion == "none" and r.overridden == {} and r.warnings() == []
    with pytest.raises(ValueError, match="unknown run settings"):
        resolve_settings(None, {"fuse": "none"})

"""`vitos infer` says it is loading the model (stderr) unless --quiet; --json stdout stays one document."""
from __future__ import annotations

import json

import pytest

from conftest import vqa_rad_path
from vitos.cli import main

REAL = str(vqa_rad_path() / "images" / "synpic54610.jpg")


@pytest.mark.parametrize("quiet", [False, True])
def test_infer_announces_the_model_load_unless_quiet(tiny_model_dir, capsys, quiet):
    rc = main(["infer", "--model", tiny_model_dir, "--image", REAL, "--question", "q", "--json", "--max-new-tokens", "2",
               "--device", "cpu", "--dtype", "float32", *(["--quiet"] if quiet else [])])
    out = capsys.readouterr()
    assert rc == 0, out.err
    json.loads(out.out)
    lines = out.err.splitlines()
    assert (f"loading model {tiny_model_dir} ..." in lines) != quiet
    assert any(line.startswith(f"loaded {tiny_model_dir} in ") for line in lines) != quiet
    assert any(line.startswith("settings: ") for line in lines)  # the settings line is not progress: it stays

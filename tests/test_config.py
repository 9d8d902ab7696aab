"""Typed configs: defaults <- YAML <- key=value, with unknown keys and bad values rejected by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from vitos.config import ConfigError, describe, field_docs, load_config, save_config


@dataclass
class Inner:
    lr: float = 1e-3
    """Learning rate."""
    steps: int = 10
    """Optimizer steps."""


@dataclass
class Outer:
    name: str = "run"
    """Run name."""
    mode: Literal["a", "b"] = "a"
    """Which mode."""
    tags: list[str] = field(default_factory=list)
    """Free-form tags."""
    path: str | None = None
    """Optional path."""
    inner: Inner = field(default_factory=Inner)
    """Nested section."""


def test_defaults_then_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: from_yaml\ninner:\n  steps: 5\n")
    cfg = load_config(Outer, f, ["inner.lr=1e-6", "mode=b", "tags=[x, y]"])
    assert cfg.name == "from_yaml" and cfg.inner.steps == 5  # YAML over defaults
    assert cfg.inner.lr == 1e-6 and isinstance(cfg.inner.lr, float)  # YAML 1.1 reads 1e-6 as a string
    assert cfg.mode == "b" and cfg.tags == ["x", "y"] and cfg.path is None


def test_unknown_keys_list_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"inner\.lrr.*valid keys here: inner\.lr, inner\.steps"):
        load_config(Outer, None, ["inner.lrr=1"])
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(Outer, None, ["nme=x"])


@pytest.mark.parametrize("override, needle", [
    ("inner.steps=2.5", "expected an integer"),
    ("inner.lr=fast", "expected a number"),
    ("mode=c", "not one of"),
    ("tags=3", "expected a list"),
    ("inner=5", "expected a mapping"),
    ("noequals", "key=value"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(Outer, None, [override])


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, bad)


def test_saved_config_reloads_to_an_equal_config(tmp_path):
    cfg = load_config(Outer, None, ["inner.steps=7", "path=/x"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["inner"] == {"lr": 1e-3, "steps": 7}  # every field written, defaults included
    assert load_config(Outer, tmp_path / "run" / "config.yaml") == cfg


def test_field_docstrings_are_read_for_help():
    assert field_docs(Inner) == {"lr": "Learning rate.", "steps": "Optimizer steps."}
    rows = {key: doc for key, _, doc in describe(Outer)}
    assert rows["inner.lr"] == "Learning rate." and rows["mode"] == "Which mode."

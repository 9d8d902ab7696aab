"""Typed configs: defaults <- YAML <- key=value, with unknown keys and bad values rejected by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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


# ------------------------------------------------------------------------------ declared ranges (issue 17)


def _numeric_keys(cls, prefix=""):
    """Every int / float field of a config class (nested sections expanded) as a dotted key."""
    import dataclasses
    import typing

    out = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            out += _numeric_keys(tp, prefix + f.name + ".")
        elif {int, float} & ({tp} | set(typing.get_args(tp))) and tp is not bool:
            out.append(prefix + f.name)
    return out


def _train_keys():
    from vitos.rl.config import TrainConfig

    return _numeric_keys(TrainConfig)


def test_train_config_has_the_numeric_fields_the_issue_names():
    keys = set(_train_keys())
    assert {"rollout.temperature", "rollout.top_p", "rollout.max_new_tokens", "prune.margin", "optim.warmup_steps",
            "optim.lr", "rewards.cross", "grpo.epochs", "grpo.dual_clip", "data.limit"} <= keys
    assert len(keys) >= 35


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_every_numeric_train_field_refuses_nan_and_infinity(value):
    from vitos.rl.config import TrainConfig

    for key in _train_keys():
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
            load_config(TrainConfig, None, [f"{key}={value}"])
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("override, message", [
    ("rollout.top_p=0", r"rollout\.top_p = 0\.0 is out of range \(valid: 0 < rollout\.top_p <= 1\)"),  # float, two-sided
    ("rollout.top_p=1.5", r"0 < rollout\.top_p <= 1"),
    ("rollout.temperature=0", r"rollout\.temperature > 0"),                                          # float, open bound
    ("rollout.max_new_tokens=0", r"rollout\.max_new_tokens = 0 is out of range \(valid: rollout\.max_new_tokens >= 1\)"),  # int
    ("optim.warmup_steps=-1", r"optim\.warmup_steps >= 0"),
    ("prune.margin=-0.1", r"0 <= prune\.margin <= 1"),                                               # a shared section
    ("grpo.dual_clip=0.5", r"grpo\.dual_clip > 1"),                                                   # float | None
    ("data.limit=0", r"data\.limit >= 1"),                                                            # int | None
    ("data.limit=.nan", r"data\.limit: expected an integer or null, got nan"),
    ("rewards.iou=.nan", r"rewards\.iou = nan is not a finite number \(valid: any finite number\)"),  # weight, no Range
    ("optim.lr=0", r"optim\.lr > 0"),
    ("grpo.epochs=0", r"grpo\.epochs >= 1"),
    ("seed=-1", r"seed >= 0"),
])
def test_an_out_of_range_value_is_refused_at_load_time_with_its_range(override, message):
    from vitos.rl.config import TrainConfig

    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, None, [override])


def test_valid_edge_values_load():
    from vitos.rl.config import TrainConfig, validate

    cfg = load_config(TrainConfig, None, ["rollout.top_p=1", "optim.warmup_steps=0", "prune.margin=0", "grpo.dual_clip=null",
                                          "rewards.cross=-1", "rollout.temperature=0.01", "data.limit=1"])
    validate(cfg)
    assert cfg.grpo.dual_clip is None and cfg.rewards.cross == -1.0


def test_ranges_are_checked_on_configs_built_in_code_too():
    from vitos.config import check_ranges
    from vitos.engine import SamplingConfig
    from vitos.pipeline import PruneConfig
    from vitos.rl.config import TrainConfig, validate

    cfg = TrainConfig()
    cfg.rollout.temperature = float("nan")
    with pytest.raises(ConfigError, match="rollout.temperature = nan"):
        validate(cfg)
    assert check_ranges(SamplingConfig(max_new_tokens=0, top_p=0.0), names={"max_new_tokens": "--max-new-tokens"}) == [
        "--max-new-tokens = 0 is out of range (valid: --max-new-tokens >= 1)",
        "top_p = 0.0 is out of range (valid: 0 < top_p <= 1)"]
    assert check_ranges(PruneConfig(min_keep=0))[0].startswith("min_keep = 0 is out of range")
    assert check_ranges(SamplingConfig()) == [] and check_ranges(PruneConfig()) == []


def test_help_config_shows_each_range():
    from vitos.rl.config import TrainConfig

    docs = {key: doc for key, _, doc in describe(TrainConfig)}
    assert docs["rollout.top_p"].endswith("[valid: 0 < value <= 1]")
    assert docs["optim.lr"].endswith("[valid: value > 0]")


@pytest.mark.parametrize("override", ["rollout.temperature=.nan", "rewards.format=.nan", "rollout.max_new_tokens=0",
                                      "rollout.top_p=0", "prune.margin=-1", "optim.warmup_steps=-2"])
def test_vitos_train_exits_2_with_one_line(override, capsys, tmp_path):
    from vitos.rl.trainer import main_train

    config = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
    assert main_train(["--config", str(config), f"checkpoint.out_dir={tmp_path / 'run'}", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vitos train: error: ") and override.split("=")[0] in err
    assert not (tmp_path / "run").exists()  # refused before anything was written

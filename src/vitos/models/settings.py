"""A checkpoint says how it must be run: `vitos_settings.json` beside the weights.

    {"format": 1,
     "pruning":    {"fusion": "none", "margin": 0.0, "min_keep": 1, "num_contextual": 4},
     "generation": {"max_new_tokens": 64, "temperature": 0.0},
     "provenance": {"synthetic": true, "made_by": "vitos tiny-model", "note": "..."}}

`write_settings(folder, ...)` writes it (`vitos tiny-model` does; the trainer's export and `vitos eval` can
use the same two functions); `read_settings(model)` reads it from a local folder, from the hub cache of a
hub id (never downloads), or, for a `vitos demo` warm start that predates this file, from the
`provenance.json` the demo writes beside it. `resolve_settings(saved, flags)` merges command-line flags
over them and says which were used and which a flag overrode, so callers can print both.

`synthetic: true` marks a toy model (random weights, or trained only on MedPhantom phantoms): callers
print `SYNTHETIC_NOTE` when such a model is run on a real image.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

SETTINGS_FILE = "vitos_settings.json"
FORMAT = 1
FUSIONS = ("none", "merge", "contextual")


@dataclass
class ModelSettings:
    """How a checkpoint is meant to be run. The defaults are `vitos infer`'s built-in ones."""

    fusion: str = "merge"
    margin: float = 0.0
    min_keep: int = 1
    num_contextual: int = 4
    max_new_tokens: int = 256
    temperature: float = 0.0
    synthetic: bool = False
    """A toy model (random weights or MedPhantom-only training), not a medical one."""
    made_by: str | None = None
    """What wrote the model (e.g. 'vitos tiny-model', 'vitos demo')."""
    source: str | None = None
    """Where these settings were read from (a file path), or None for the built-in defaults. Not written."""


PRUNING_KEYS = ("fusion", "margin", "min_keep", "num_contextual")
GENERATION_KEYS = ("max_new_tokens", "temperature")
RUN_KEYS = PRUNING_KEYS + GENERATION_KEYS
"""The settings a flag can override."""


class SettingsError(ValueError):
    """A vitos_settings.json that cannot be used; the message names the file and the field."""


def settings_to_json(s: ModelSettings, note: str | None = None) -> dict[str, Any]:
    provenance: dict[str, Any] = {"synthetic": bool(s.synthetic), "made_by": s.made_by}
    if note:
        provenance["note"] = note
    return {
        "format": FORMAT,
        "pruning": {k: getattr(s, k) for k in PRUNING_KEYS},
        "generation": {k: getattr(s, k) for k in GENERATION_KEYS},
        "provenance": provenance,
    }


def write_settings(folder: str | Path, settings: ModelSettings, note: str | None = None) -> Path:
    """Write `folder/vitos_settings.json` (the folder must exist) and return its path."""
    _check(settings, "settings to write")
    path = Path(folder) / SETTINGS_FILE
    path.write_text(json.dumps(settings_to_json(settings, note), indent=2) + "\n", encoding="utf-8")
    return path


def _check(s: ModelSettings, where: str) -> None:
    if s.fusion not in FUSIONS:
        raise SettingsError(f"{where}: pruning.fusion {s.fusion!r} is not one of {list(FUSIONS)}")
    if not 0.0 <= float(s.margin) <= 1.0:
        raise SettingsError(f"{where}: pruning.margin {s.margin!r} must be in [0, 1]")
    for key in ("min_keep", "num_contextual", "max_new_tokens"):
        value = getattr(s, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "num_contextual" else 1):
            raise SettingsError(f"{where}: {key} {value!r} must be a positive integer")
    if float(s.temperature) < 0:
        raise SettingsError(f"{where}: generation.temperature {s.temperature!r} must be >= 0")


def settings_from_json(data: Any, where: str) -> ModelSettings:
    if not isinstance(data, dict):
        raise SettingsError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if data.get("format", FORMAT) != FORMAT:
        raise SettingsError(f"{where}: format {data.get('format')!r} is not {FORMAT} (written by a newer vitos?)")
    values: dict[str, Any] = {}
    for section, keys in (("pruning", PRUNING_KEYS), ("generation", GENERATION_KEYS)):
        part = data.get(section, {})
        if not isinstance(part, dict):
            raise SettingsError(f"{where}: {section!r} must be an object")
        unknown = set(part) - set(keys)
        if unknown:
            raise SettingsError(f"{where}: unknown {section} setting(s) {sorted(unknown)}; known: {list(keys)}")
        values.update(part)
    provenance = data.get("provenance", {}) or {}
    s = ModelSettings(**values, synthetic=bool(provenance.get("synthetic", False)), made_by=provenance.get("made_by"),
                      source=where)
    _check(s, where)
    return s


def _from_demo_provenance(path: Path) -> ModelSettings | None:
    """A `vitos demo` warm start's provenance.json ({"made_by": "vitos demo ...", "config": DemoConfig}) ->
    the settings the demo evaluated it with (greedy decoding: the demo's `temperature` is the RL one)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    cfg = data.get("config") if isinstance(data, dict) else None
    if not (isinstance(cfg, dict) and str(data.get("made_by", "")).startswith("vitos demo")):
        return None
    base = ModelSettings()
    s = ModelSettings(
        fusion=cfg.get("fusion", base.fusion), margin=float(cfg.get("margin", base.margin)),
        min_keep=int(cfg.get("min_keep", base.min_keep)), max_new_tokens=int(cfg.get("max_new_tokens", 64)),
        temperature=0.0, synthetic=True, made_by="vitos demo (MedPhantom warm start)", source=str(path),
    )
    _check(s, str(path))
    return s


def read_settings(name_or_path: str | Path) -> ModelSettings | None:
    """The saved settings of a model folder or hub id, or None when it carries none. Never downloads."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        path = folder / SETTINGS_FILE
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise SettingsError(f"{path}: not valid JSON ({err})") from err
            return settings_from_json(data, str(path))
        if (folder / "provenance.json").is_file():
            return _from_demo_provenance(folder / "provenance.json")
        return None
    try:  # a hub id: only what is already in the local hub cache
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(name_or_path), SETTINGS_FILE)
    except Exception:  # not a valid repo id, or no huggingface_hub: nothing saved
        return None
    if isinstance(cached, str) and Path(cached).is_file():
        return settings_from_json(json.loads(Path(cached).read_text(encoding="utf-8")), cached)
    return None


@dataclass
class Resolved:
    """The settings a run uses, and why."""

    settings: ModelSettings
    """Effective values (saved <- flags)."""
    overridden: dict[str, tuple[Any, Any]]
    """Setting -> (saved value, flag value) for every flag that changed a saved value."""
    saved: ModelSettings | None

    def describe(self) -> str:
        """One line: which settings are used and where they came from."""
        s = self.settings
        values = ", ".join(f"{k}={getattr(s, k)}" for k in RUN_KEYS)
        origin = f"saved with the model: {self.saved.source}" if self.saved else "built-in defaults: the model saves none"
        flags = f"; flags changed {', '.join(self.overridden)}" if self.overridden else ""
        return f"settings: {values} ({origin}{flags})"

    def warnings(self) -> list[str]:
        return [f"warning: --{k.replace('_', '-')} {new} overrides the model's saved {k}={old}"
                for k, (old, new) in self.overridden.items()]


def resolve_settings(saved: ModelSettings | None, flags: dict[str, Any]) -> Resolved:
    """Flags (None = not given) over the saved settings (or the built-in defaults when there are none)."""
    unknown = set(flags) - set(RUN_KEYS)
    if unknown:
        raise ValueError(f"unknown run settings {sorted(unknown)}; known: {list(RUN_KEYS)}")
    base = saved if saved is not None else ModelSettings()
    values = {f.name: getattr(base, f.name) for f in fields(ModelSettings)}
    overridden = {}
    for key, value in flags.items():
        if value is None:
            continue
        if saved is not None and value != getattr(saved, key):
            overridden[key] = (getattr(saved, key), value)
        values[key] = value
    return Resolved(ModelSettings(**values), overridden, saved)


SYNTHETIC_NOTE = ("note: {model} is a synthetic toy model (random weights or trained on MedPhantom phantoms), "
                  "not a medical one: its answers on a real image mean nothing")


def looks_like_phantom(image_path: str | Path) -> bool:
    """True for an image inside a MedPhantom folder written by `write_dataset` (phantom_config.json beside
    its images/ folder), the only images a synthetic model was made for."""
    p = Path(image_path).resolve()
    return any((parent / "phantom_config.json").is_file() for parent in list(p.parents)[:2])


def as_dict(s: ModelSettings) -> dict[str, Any]:
    return asdict(s)

"""Typed configs: dataclass defaults <- YAML values <- `key=value` overrides, validated, saved with each run.

Every config is a (nested) dataclass whose fields carry a docstring (the string literal under the field),
so `vitos train --help-config` can list every key with its meaning. YAML files hold values only; no
logic. Unknown keys are rejected with the list of valid ones.

    cfg = load_config(TrainConfig, "configs/tiny_cpu.yaml", ["rl.group_size=4", "schedule=interleaved"])
    save_config(cfg, run_dir / "config.yaml")

Valid ranges are declared on the field itself, `lr: Annotated[float, Range(gt=0)] = 1e-6`, and checked by
one validator (`check_ranges`) when a config is loaded: every float field must also be finite (NaN and
inf are refused everywhere, with or without a Range). `--help-config` prints each range beside the field.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is wrong; the message names it and lists what is valid."""


def error_line(err: BaseException) -> str:
    """An error as the one line a CLI prints: newlines folded; an OSError names its file and the fix."""
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.filename:
        text = f"cannot write or read {err.filename}: {err.strerror or err}; check the path and its permissions"
    else:
        text = str(err)
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


@dataclasses.dataclass(frozen=True)
class Range:
    """Valid interval of a numeric field, as `Annotated` metadata: `Annotated[float, Range(gt=0, le=1)]`.

    ge / gt: lower bound (inclusive / exclusive); le / lt: upper bound. Float fields are also required to
    be finite, Range or not (see `check_ranges`)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, value: float) -> bool:
        return not ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
                    or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt))

    def describe(self, name: str = "value") -> str:
        """'0 < name <= 1', 'name >= 1', 'name < 1' ..."""
        low = f"{_num(self.ge)} <= " if self.ge is not None else f"{_num(self.gt)} < " if self.gt is not None else ""
        high = f" <= {_num(self.le)}" if self.le is not None else f" < {_num(self.lt)}" if self.lt is not None else ""
        if low and not high:  # one-sided: read it as 'name >= 1'
            return f"{name} {'>=' if self.ge is not None else '>'} {low.split(' ')[0]}"
        return f"{low}{name}{high}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _ranges_of(cls: type) -> dict[str, Range]:
    """Field name -> its `Range` (from `Annotated[..., Range(...)]`, also inside `X | None`)."""
    out: dict[str, Range] = {}
    for name, tp in typing.get_type_hints(cls, include_extras=True).items():
        stack = [tp]
        while stack:
            t = stack.pop()
            if typing.get_origin(t) is typing.Annotated:
                out.update({name: m for m in t.__metadata__ if isinstance(m, Range)})
            else:
                stack.extend(a for a in typing.get_args(t) if a is not type(None))
    return out


def check_ranges(cfg: Any, prefix: str = "", names: dict[str, str] | None = None) -> list[str]:
    """One message per numeric field of the dataclass instance `cfg` (nested ones included) that is NaN,
    infinite or outside its `Range`; [] when all are valid. `names` maps dotted keys to what the user
    typed (e.g. {"max_new_tokens": "--max-new-tokens"})."""
    errors: list[str] = []
    ranges = _ranges_of(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = prefix + f.name
        shown = (names or {}).get(key, key)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            errors += check_ranges(value, key + ".", names)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        rng = ranges.get(f.name)
        valid = f" (valid: {rng.describe(shown)})" if rng else " (valid: any finite number)"
        if isinstance(value, float) and not math.isfinite(value):
            errors.append(f"{shown} = {value} is not a finite number{valid}")
        elif rng is not None and not rng.contains(value):
            errors.append(f"{shown} = {value!r} is out of range (valid: {rng.describe(shown)})")
    return errors


def require_ranges(cfg: Any, prefix: str = "", names: dict[str, str] | None = None) -> None:
    """`check_ranges`, raising one ConfigError (one line, every bad field) when something is invalid."""
    errors = check_ranges(cfg, prefix, names)
    if errors:
        raise ConfigError("; ".join(errors))


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                if isinstance(nxt.value.value, str):
                    docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML-parsed value to the annotated type (int -> float allowed, str -> Path ...)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1 and type(None) in args:  # `int | None`: say what is valid in words
            raise ConfigError(errors[0].replace(", got ", " or null, got ", 1))
        raise ConfigError(f"{key}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string; float() does not mind
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; valid keys here: "
            f"{', '.join(prefix + n for n in names)}"
        )
    kwargs = {}
    base = cls()  # defaults for nested dataclasses
    for name, value in values.items():
        tp = hints[name]
        if _is_dataclass_type(tp) and isinstance(value, dict):
            current = dataclasses.asdict(getattr(base, name))
            current.update(value)
            value = current
        kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
    node[parts[-1]] = value


def _deep_update(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v
    return dst


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of `cls`, updated by the YAML file at `path`, then by `key=value` overrides (dotted keys)."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of config keys")
        _deep_update(values, loaded)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. rl.group_size=4)")
        key, raw = item.split("=", 1)
        _set_dotted(values, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    cfg = _build(cls, values)
    require_ranges(cfg)  # NaN / inf / out-of-range numbers are refused at load time
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the fully resolved config (every field, defaults included) as YAML."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, docstring) for every field, nested sections expanded."""
    rows = []
    docs = field_docs(cls)
    hints = _hints(cls)
    ranges = _ranges_of(cls)
    base = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            rows.extend(describe(tp, prefix + f.name + "."))
        else:
            doc = docs.get(f.name, "")
            if f.name in ranges:
                doc += f" [valid: {ranges[f.name].describe()}]"
            rows.append((prefix + f.name, repr(getattr(base, f.name)), doc))
    return rows

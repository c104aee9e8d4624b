"""Presets and configs: YAML presets, `--set key=value` overrides, validation.

A model's default preset (`presets/<model>.yaml`) lists every key the model knows, so
it is also the schema: a key not in it is unknown, and its default value gives the
type. Other presets and `--set` may only change those keys. Torch-free.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from dlcli.errors import DlcliError

PRESET_DIR = Path(__file__).parent / "presets"
POSITIVE_INTS = ("epochs", "batch_size")
POSITIVE_FLOATS = ("lr",)


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _floats(value):
    """YAML 1.1 reads 1e-3 (no dot) as a string; read it as the float everyone means."""
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    return value


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DlcliError(f"cannot read preset {path}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise DlcliError(f"malformed YAML in {path}{line}: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DlcliError(f"preset {path} must be a YAML mapping of key: value")
    return _floats(data)


def _description(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[:1]
    return first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""


def list_presets() -> list[dict]:
    """Bundled presets: name, model, description."""
    out = []
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        data = _read_yaml(path)
        out.append({"name": path.stem, "model": data.get("model", ""),
                    "description": _description(path), "path": str(path)})
    return out


def preset_path(name_or_file: str) -> Path:
    """A bundled preset by name, or a YAML file by path."""
    bundled = PRESET_DIR / f"{name_or_file}.yaml"
    if bundled.is_file():
        return bundled
    path = Path(name_or_file)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise DlcliError(f"preset file not found: {path}")
        return path
    names = ", ".join(p["name"] for p in list_presets())
    raise DlcliError(f"unknown preset {name_or_file!r}; choose one of: {names} (or a .yaml file)")


def default_config(model: str) -> dict:
    path = PRESET_DIR / f"{model}.yaml"
    if not path.is_file():
        raise DlcliError(f"model {model!r} has no default preset ({path.name})")
    return _read_yaml(path)


def parse_override(text: str) -> tuple[str, object]:
    """'key=value' with a YAML-typed value: 3 -> int, 1e-3 -> float, true -> bool, [1,2] -> list."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise DlcliError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, _floats(value)


def _coerce(key: str, value, default):
    """Check `value` against the type of `default`; ints are accepted where floats are,
    numbers where strings are (`--set precision=32`)."""
    if default is None or value is None:
        return value
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise DlcliError(
        f"bad value for {key!r}: {value!r} is {type(value).__name__}, expected {expected.__name__}"
    )


def resolve_config(model: str, preset: str | None = None, overrides=(), **flags) -> dict:
    """Default preset <- named preset <- --set overrides <- explicit flags (None = not given)."""
    schema = default_config(model)
    config = dict(schema)
    layers = []
    if preset:
        path = preset_path(preset)
        data = _read_yaml(path)
        if data.get("model", model) != model:
            raise DlcliError(f"preset {preset!r} is for model {data['model']!r}, not {model!r}")
        layers.append((f"preset {path.name}", data))
    layers.append(("--set", dict(parse_override(o) for o in overrides)))
    layers.append(("option", {k: v for k, v in flags.items() if v is not None}))
    for source, values in layers:
        for key, value in values.items():
            if key not in schema:
                valid = ", ".join(sorted(k for k in schema if k != "model"))
                raise DlcliError(f"unknown key {key!r} ({source}) for {model}; valid keys: {valid}")
            if key == "model" and value != model:
                raise DlcliError(f"{source} sets model {value!r}, but the command trains {model!r}")
            config[key] = _coerce(key, value, schema[key])
    validate_numbers(config)
    return config


def validate_numbers(config: dict) -> None:
    for key in POSITIVE_INTS:
        if key in config and config[key] < 1:
            raise DlcliError(f"{key} must be a positive integer, got {config[key]}")
    for key in POSITIVE_FLOATS:
        if key in config and not config[key] > 0:
            raise DlcliError(f"{key} must be positive, got {config[key]}")

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

# An installed wheel carries the presets inside the package; a source checkout (editable
# install, PYTHONPATH) reads them from the top-level presets/ folder.
_PACKAGED_PRESETS = Path(__file__).parent / "presets"
PRESET_DIR = _PACKAGED_PRESETS if _PACKAGED_PRESETS.is_dir() else Path(__file__).parent.parent / "presets"
PRECISIONS = ("auto", "32", "bf16", "bf16-matmul", "16-mixed")
# Keys every model has that its preset need not list; checkpoints older than a key lack it.
COMMON = {
    "logger": [],  # where a run reports besides its folder: tensorboard, mlflow
    # last.safetensors between epoch ends too: every N optimizer steps ("500") or every
    # so long ("90s", "10m", "1h"); "0" only at epoch ends. 10 minutes bounds what a kill
    # (out of memory, a lost node) throws away, and a save every 10 minutes costs far less
    # than 1% of the time (a few hundred ms on the transformer preset).
    "checkpoint_every": "10m",
}

# The keys of your own folder of images (`--data DIR`), which every model that trains on
# images takes: added to its schema here rather than repeated in each preset. Checkpoints
# written before they existed read as the defaults.
IMAGE_KEYS = {
    "data": None,  # [DIR]: a folder of images (--data DIR); the dataset is then "folder"
    "image_size": None,  # pixels per side; null: the images' own size when they share one
    "image_channels": "auto",  # 1 | 3 | auto (1 when every image is grayscale)
    "resize": "center-crop",  # center-crop | pad | stretch
    "val_fraction": 0.1,  # of the training images, held out by the seed (no val/ folder)
    "shapes_grid": "full",  # dataset shapes: full (737,280 images) | small (23,040)
    # images an epoch trains on, drawn afresh by each epoch's shuffle; 0: the whole training
    # split. For data too large to pass over whole between validations (shapes' full grid).
    "epoch_images": 0,
}
IMAGE_SIZES = (8, 4096)  # smaller holds nothing to learn; larger is not what these models take

# Keys added to a model's schema after checkpoints were written without them: such a
# checkpoint reads as these values, which give the behaviour it was trained with.
KEYS_ADDED_LATER = {  # key: value, or {model: value}
    "schedule": "exponential",  # the VAEs: lr *= lr_decay after each epoch, before the key
    "kl_warmup": 0.0, "free_bits": 0.0, "iwae_samples": 1,  # the VAEs: off
    "decoder": "deconv",  # the VAEs' conv decoder
    "activation": "relu",  # the VAEs
    "loss": "nonsaturating",  # GANs
    "d_norm": {"dcgan": "batch", "gan": "none", "cgan": "none"},
    "r1": 0.0,
    "d_dropout": 0.0,  # dcgan; the MLP GANs always had it
    "codes": 0,
    "clusters": 0,
    "classify": 0.0,
    "attention_dropout": None,  # None: the same as `dropout` (one rate for everything)
    "activation_dropout": None,
    "lowercase": False,
    "moses": False,
    "bpe_merges": 0,  # 0: the vocabulary's size is `vocab_size`
    "average_every": 0,  # 0: snapshots at epoch ends
}
# Keys that were renamed: a preset or checkpoint with the old name means the new one.
RENAMED_KEYS = {"keep_epochs": "average_last"}

# What each number may be, whichever model has the key; a list (layer widths) is checked
# element by element. A value outside these would fail deep inside torch, or train nothing.
AT_LEAST_1 = (lambda x: x >= 1, "at least 1")
AT_LEAST_0 = (lambda x: x >= 0, "0 or more")
POSITIVE = (lambda x: x > 0, "more than 0")
FRACTION = (lambda x: 0 <= x < 1, "in [0, 1)")
NUMBER_RULES = {
    **dict.fromkeys(("epochs", "batch_size", "latent", "latent_dim", "hidden", "g_hidden",
                     "d_hidden", "channels", "width", "d_model", "d_ff", "heads",
                     "encoder_layers", "decoder_layers", "beam", "train_size", "pack",
                     "vocab_size", "iwae_samples"), AT_LEAST_1),
    "epoch_images": AT_LEAST_0,
    # temperature/truncation 0: sample the mean
    **dict.fromkeys(("val_size", "average_last", "average_every", "bpe_merges", "warmup",
                     "weight_decay", "clip_norm", "beta", "capacity", "capacity_epochs",
                     "gamma", "length_penalty", "temperature", "truncation", "kl_warmup",
                     "free_bits", "r1", "classify"), AT_LEAST_0),
    **dict.fromkeys(("lr", "lr_decay", "d_lr_scale"), POSITIVE),
    **dict.fromkeys(("dropout", "attention_dropout", "activation_dropout", "d_dropout",
                     "label_smoothing", "momentum", "ema", "beta1", "beta2", "val_fraction"),
                    FRACTION),
    **dict.fromkeys(("codes", "clusters"), (lambda x: x == 0 or x >= 2, "0 (off) or at least 2")),
    "max_len": (lambda x: x >= 2, "at least 2 (an end token and one more)"),
    "seed": (lambda x: -2**63 <= x < 2**63, "64 bits (-2**63 to 2**63 - 1)"),
}


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
# A preset holds tens of values. YAML aliases can make 1 KB expand to billions of them (the
# "billion laughs"), which no walk over the result survives: such a document is refused.
MAX_YAML_VALUES = 10_000


def _expanded_size(node, sizes: dict) -> int:
    """How many values the YAML node becomes once every alias is expanded (a repeated
    node is counted each time, but measured once; a node inside itself counts as too many)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    sizes[key] = MAX_YAML_VALUES + 1  # until measured: an alias back into itself
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    else:
        children = []
    sizes[key] = min(MAX_YAML_VALUES + 1, 1 + sum(_expanded_size(c, sizes) for c in children))
    return sizes[key]


def safe_yaml(text: str):
    """yaml.safe_load, refusing documents whose aliases expand beyond MAX_YAML_VALUES values."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_VALUES:
            raise DlcliError(f"YAML expands to more than {MAX_YAML_VALUES:,} values (aliases "
                             "repeating aliases?); a preset holds key: value lines")
        return loader.construct_document(node)
    except RecursionError:
        raise DlcliError("YAML nested too deeply; a preset holds key: value lines") from None
    finally:
        loader.dispose()


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
        data = safe_yaml(text)
    except DlcliError as e:
        raise DlcliError(f"preset {path}: {e}") from None
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
    schema = _read_yaml(path)
    if _takes_images(schema):
        schema = {**IMAGE_KEYS, **schema}
    return {**COMMON, **schema}


def _takes_images(schema: dict) -> bool:
    """Does the model train on images (its default dataset is an image dataset)?"""
    from dlcli.data.catalog import list_datasets

    return schema.get("dataset") in {d.name for d in list_datasets("image")}


def parse_override(text: str) -> tuple[str, object]:
    """'key=value' with a YAML-typed value: 3 -> int, 1e-3 -> float, true -> bool, [1,2] -> list."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise DlcliError(f"--set expects key=value, got {text!r}")
    try:
        value = safe_yaml(raw) if raw.strip() else ""
    except DlcliError as e:
        raise DlcliError(f"--set {key}: {e}") from None
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
        if expected is list and default:  # layer widths: each element like the default's
            return [_coerce(f"{key}[{i}]", v, default[0]) for i, v in enumerate(value)]
        return value
    raise DlcliError(
        f"bad value for {key!r}: {value!r} is {type(value).__name__}, expected {expected.__name__}"
    )


def resolve_config(model: str, preset: str | None = None, overrides=(), **flags) -> dict:
    """Default preset <- named preset <- --set overrides <- explicit flags (None = not given)."""
    return traced_config(model, preset, overrides, **flags)[0]


def traced_config(model: str, preset: str | None = None, overrides=(), **flags) -> tuple[dict, dict]:
    """resolve_config's config, and for each key where its value came from: 'default',
    'preset NAME.yaml', '--set' or the flag (`--epochs`)."""
    schema = default_config(model)
    config = dict(schema)
    sources = dict.fromkeys(schema, "default")
    layers = []
    if preset:
        path = preset_path(preset)
        layers.append((f"preset {path.name}", preset_values(path, model)))
    layers.append(("--set", dict(parse_override(o) for o in overrides)))
    layers += [(f"--{k.replace('_', '-')}", {k: v}) for k, v in flags.items() if v is not None]
    for source, values in layers:
        for key, value in values.items():
            key = RENAMED_KEYS.get(key, key)
            if key not in schema:
                valid = ", ".join(sorted(k for k in schema if k != "model"))
                raise DlcliError(f"unknown key {key!r} ({source}) for {model}; valid keys: {valid}")
            if key == "model" and value != model:
                raise DlcliError(f"{source} sets model {value!r}, but the command trains {model!r}")
            config[key] = _coerce(key, value, schema[key])
            sources[key] = source
    if config.get("data") and _takes_images(schema):  # your own images: the dataset is the folder
        if sources["dataset"] == "--dataset" and config["dataset"] != "folder":
            raise DlcliError(f"--dataset {config['dataset']} and --data both name the data; "
                             "give one (--data DIR trains on your folder of images)")
        config["dataset"], sources["dataset"] = "folder", sources["data"]
    validate_numbers(config)
    return config, sources


def preset_values(path: Path, model: str | None = None) -> dict:
    """A preset file's keys, less the provenance a run's config.yaml carries (so that file
    works as a preset too); checked to be for `model` when given."""
    data = _read_yaml(path)
    data.pop("provenance", None)
    if model is not None and data.get("model", model) != model:
        raise DlcliError(f"preset {path} is for model {data['model']!r}, not {model!r}")
    return data


def validate_preset(path: Path) -> tuple[str, dict]:
    """Check a preset file against its model's schema (its default preset): known keys,
    values of the right type and range. Returns (model, resolved config)."""
    from dlcli.registry import get_spec

    data = preset_values(path)
    if "model" not in data:
        raise DlcliError(f"{path} names no model; add a line `model: NAME` (see `dlcli models`)")
    model = str(data["model"])
    get_spec(model)
    return model, resolve_config(model, str(path))


def config_against_schema(model: str, config) -> dict:
    """A config read back from a checkpoint, checked against the model's schema: a
    mapping for this model, with every key of the schema, each value of the schema's type
    and within NUMBER_RULES."""
    schema = default_config(model)
    if not isinstance(config, dict):
        raise DlcliError("it is not a mapping of key: value")
    if config.get("model", model) != model:
        raise DlcliError(f"it is the config of a {config['model']!r} model")
    if _takes_images(schema):
        config = {**IMAGE_KEYS, **config}
    added = {k: v.get(model) if isinstance(v, dict) else v
             for k, v in KEYS_ADDED_LATER.items() if k in schema}
    config = {**added, **{new: config[old] for old, new in RENAMED_KEYS.items() if old in config},
              **config}
    missing = [k for k in schema if k not in config and k != "model" and k not in COMMON]
    if missing:
        raise DlcliError(f"key {missing[0]!r} is missing")
    checked = {**config, **{k: _coerce(k, config[k], schema[k]) for k in schema if k in config}}
    validate_numbers(checked)
    return checked


def validate_numbers(config: dict) -> None:
    """Every number within what its model can use (NUMBER_RULES), d_model split evenly
    across heads, a precision that exists."""
    for key, (ok, wording) in NUMBER_RULES.items():
        value = config.get(key)
        for x in value if isinstance(value, list) else [value]:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                if x is not None:
                    raise DlcliError(f"bad value for {key!r}: {x!r} is not a number")
                continue
            if not ok(x):  # also false for NaN
                raise DlcliError(f"{key} must be {wording}, got {value}")
    if "d_model" in config and "heads" in config and config["d_model"] % config["heads"]:
        raise DlcliError(f"d_model ({config['d_model']}) must be a multiple of heads "
                         f"({config['heads']}): each head gets d_model / heads dimensions")
    check_image_keys(config)
    if "checkpoint_every" in config:
        checkpoint_interval(config["checkpoint_every"])
    if "precision" in config and str(config["precision"]) not in PRECISIONS:
        raise DlcliError(f"unknown precision {config['precision']!r}; choose one of: "
                         + ", ".join(PRECISIONS))


SECONDS_PER = {"s": 1, "m": 60, "h": 3600}


def checkpoint_interval(value) -> tuple[int | None, float | None]:
    """checkpoint_every as (steps, seconds), one of them None; (None, None): epoch ends only."""
    text = str(value).strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smh]?)", text)
    if match is None or (not match[2] and "." in match[1]):
        raise DlcliError(f"bad value for 'checkpoint_every': {value!r}; give optimizer steps "
                         "(500), a duration (90s, 10m, 1h), or 0 for epoch ends only")
    number = float(match[1])
    if number == 0:
        return None, None
    return (None, number * SECONDS_PER[match[2]]) if match[2] else (int(number), None)


def check_image_keys(config: dict) -> None:
    """image_size, image_channels, resize and shapes_grid (when the config has them)
    within their choices."""
    size = config.get("image_size")
    if size is not None:
        low, high = IMAGE_SIZES
        if isinstance(size, bool) or not isinstance(size, int) or not low <= size <= high:
            raise DlcliError(f"image_size must be a whole number from {low} to {high}, or null "
                             f"(the images' own size), got {size!r}")
    if "image_channels" in config and str(config["image_channels"]) not in ("auto", "1", "3"):
        raise DlcliError(f"image_channels must be 1, 3 or auto, got {config['image_channels']!r}")
    if config.get("dataset") == "shapes" and not config.get("data"):
        from dlcli.data.catalog import check_shapes_keys

        check_shapes_keys(config)
    if "resize" in config:
        from dlcli.data.catalog import RESIZE_MODES

        if config["resize"] not in RESIZE_MODES:
            raise DlcliError(f"unknown resize {config['resize']!r}; choose one of: "
                             + ", ".join(RESIZE_MODES))


# what a resumed run may change: how long it trains, where it reports, how often it saves
FROM_COMMAND_LINE = ("epochs", "logger", "checkpoint_every")


def resumed_config(saved: dict, asked: dict, sources: dict, given: set[str],
                   epochs: int | None, checkpoint_name: str) -> tuple[dict, dict]:
    """The config a resumed run trains with: the checkpoint's (`saved`; architecture and
    data must not change under the weights), with only the epoch budget, the loggers and
    checkpoint_every taken from the command line. Keys the user set (`given`) that differ
    are named in a warning. Returns (config, sources) like traced_config."""
    from dlcli.console import warn

    changed = {k: v for k, v in asked.items()
               if k not in FROM_COMMAND_LINE and k in given and saved.get(k) != v}
    if changed:
        warn("resuming keeps the checkpoint's config; ignored: "
             + ", ".join(f"{k}={v}" for k, v in changed.items()))
    config = {**saved, "epochs": epochs if epochs is not None else saved["epochs"]}
    for key in ("logger", "checkpoint_every"):
        if key in given:
            config[key] = asked[key]
    if config["epochs"] != saved["epochs"] and saved.get("schedule") == "cosine":
        warn(f"the cosine schedule was planned for {saved['epochs']} epochs; it now "
             f"stretches to {config['epochs']}")
    validate_numbers(config)
    sources = {k: f"checkpoint {checkpoint_name}" for k in config} | (
        {"epochs": sources["epochs"]} if epochs is not None else {})
    return config, sources


def dataset_name(config: dict) -> str:
    if not config.get("data"):
        return config["dataset"]
    return "your own images" if config["dataset"] == "folder" else "your own text"

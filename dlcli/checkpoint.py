"""Checkpoints: one self-contained safetensors file per snapshot, written atomically.

Layout of a file:
  tensors   "model/<module>/<param>"      weights of each named module (generator, ...)
            "state/..."                    training state for --resume (optimizer moments,
                                           RNG states), flattened from nested dicts
  metadata  format, model, dlcli version, config (JSON), epoch, step, metrics (JSON),
            "state" (JSON skeleton of the training state, tensors replaced by their keys),
            plus whatever a task adds (a tokenizer, say) -- all values are strings.
Nothing is pickled, and nothing here calls torch.load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from dlcli import __version__
from dlcli.errors import DlcliError
from dlcli.fileio import atomic_write
from dlcli.header import check_metadata

FORMAT = "dlcli/1"


# ---- nested state <-> flat tensors + JSON skeleton ---------------------------------

def flatten_state(obj, prefix: str, tensors: dict):
    """Replace every tensor inside dicts/lists by {"__tensor__": key}, storing it in `tensors`."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten_state(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [flatten_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    return obj


def unflatten_state(obj, tensors: dict):
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:  # keeps int keys (optimizer state ids)
        return {k: unflatten_state(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


# ---- writing ------------------------------------------------------------------------

def module_tensors(modules: dict) -> dict:
    """Weights of named modules; a tensor shared by two names (tied embeddings) is cloned."""
    out, seen = {}, set()
    for name, module in modules.items():
        for key, t in module.state_dict().items():
            t = t.detach().cpu()
            ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            out[f"model/{name}/{key}"] = t.clone() if ptr in seen else t.contiguous()
            seen.add(ptr)
    return out


def parameter_counts(modules: dict) -> dict[str, int]:
    """Trainable parameters of each module and of its direct children ("model.hidden")."""
    counts = {}
    for name, module in modules.items():
        counts[name] = sum(p.numel() for p in module.parameters())
        for child, sub in module.named_children():
            counts[f"{name}.{child}"] = sum(p.numel() for p in sub.parameters())
    return counts


def save_checkpoint(path, *, model: str, config: dict, modules: dict, epoch: int = 0,
                    step: int = 0, metrics: dict | None = None, state: dict | None = None,
                    extra: dict[str, str] | None = None) -> Path:
    tensors = module_tensors(modules)
    meta = {
        "format": FORMAT,
        "model": model,
        "dlcli_version": __version__,
        "config": json.dumps(config),
        "epoch": str(epoch),
        "step": str(step),
        "metrics": json.dumps(metrics or {}),
        "modules": json.dumps(sorted(modules)),
        "parameters": json.dumps(parameter_counts(modules)),
    }
    if state is not None:
        meta["state"] = json.dumps(flatten_state(state, "state", tensors))
    for key, value in (extra or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))
    return Path(path)


# ---- reading ------------------------------------------------------------------------

@dataclass
class Checkpoint:
    path: Path
    meta: dict[str, str]
    tensors: dict[str, torch.Tensor]

    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def config(self) -> dict:
        return json.loads(self.meta["config"])

    @property
    def epoch(self) -> int:
        return int(self.meta.get("epoch", 0))

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))

    @property
    def metrics(self) -> dict:
        return json.loads(self.meta.get("metrics", "{}"))

    @property
    def batch(self) -> int:
        """Batches of the next epoch already trained (0: saved at an epoch's end); from the
        state's plain values, so it needs no tensors."""
        raw = self.meta.get("state")
        return int(dict(json.loads(raw)["__dict__"]).get("batch", 0)) if raw else 0

    @property
    def state(self) -> dict | None:
        raw = self.meta.get("state")
        if not raw:
            return None
        try:
            state = unflatten_state(json.loads(raw), self.tensors)
        except (KeyError, TypeError, ValueError, RecursionError):
            state = None
        if not isinstance(state, dict):
            raise DlcliError(f"{self.path}: its training state is not what dlcli writes (a "
                             "damaged or edited checkpoint)")
        return state

    def data_dir(self, given=None):
        """The data folder to use with this checkpoint: `given` (--data-dir), else the one
        it was trained on (recorded by train), else None (the usual look-up)."""
        if given is not None or not self.meta.get("data_dir"):
            return given
        recorded = self.meta["data_dir"]
        if not Path(recorded).is_dir():
            raise DlcliError(f"{self.path} was trained on data from {recorded}, which is gone; "
                             "pass --data-dir")
        return recorded

    def module_names(self) -> list[str]:
        return json.loads(self.meta.get("modules", "[]"))

    def state_dict(self, module: str) -> dict:
        prefix = f"model/{module}/"
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def load_into(self, modules: dict) -> None:
        """Load the weights, each checked first against the model's own tensor: the same
        shape, a float where the model has a float, and finite values (NaN weights would
        give black pictures and NaN metrics, not an error)."""
        for name, module in modules.items():
            saved = self.state_dict(name)
            expected = module.state_dict()
            for key, want in expected.items():
                tensor = f"model/{name}/{key}"
                if key not in saved:
                    raise DlcliError(f"{self.path}: tensor {tensor} is missing (a damaged "
                                     "checkpoint, or one of another architecture)")
                got = saved[key]
                if tuple(got.shape) != tuple(want.shape):
                    raise DlcliError(f"{self.path}: weights do not fit the model: tensor "
                                     f"{tensor} has shape {list(got.shape)}, the model needs "
                                     f"{list(want.shape)}")
                if (got.is_floating_point() != want.is_floating_point()
                        or (got.dtype == torch.bool) != (want.dtype == torch.bool)):
                    raise DlcliError(f"{self.path}: tensor {tensor} is {str(got.dtype)[6:]} "
                                     f"where the model holds {str(want.dtype)[6:]}")
                if got.is_floating_point() and not bool(torch.isfinite(got).all()):
                    raise DlcliError(f"{self.path}: tensor {tensor} holds NaN or infinite "
                                     "values; this checkpoint cannot be used")
            extra = sorted(saved.keys() - expected.keys())
            if extra:
                raise DlcliError(f"{self.path}: tensor model/{name}/{extra[0]} is not part of "
                                 f"the {self.model} model (a checkpoint of another architecture)")
            module.load_state_dict(saved)


def _read(path: Path, with_tensors: bool) -> tuple[dict, dict]:
    if not path.is_file():
        raise DlcliError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DlcliError(f"{path} is not a readable safetensors checkpoint ({e})") from None
    check_format(path, meta)
    check_metadata(path, meta)
    return meta, tensors


def check_format(path: Path, meta: dict[str, str]) -> None:
    written = meta.get("format", "")
    if written.startswith("dlcli/") and written != FORMAT:
        raise DlcliError(f"{path} was written by dlcli {meta.get('dlcli_version', '?')} in "
                         f"checkpoint format {written}; this dlcli {__version__} reads {FORMAT} "
                         "(upgrade dlcli to use it)")
    if written != FORMAT or "model" not in meta or "config" not in meta:
        raise DlcliError(f"{path} is a safetensors file but not a dlcli checkpoint")


def checked_config(ckpt: "Checkpoint") -> dict:
    """The checkpoint's config, checked against its model's schema (the default preset)
    before anything is built from it: every key there, each value of its type and range."""
    from dlcli.config import config_against_schema
    from dlcli.registry import get_spec

    try:
        get_spec(ckpt.model)
    except DlcliError:
        raise DlcliError(f"{ckpt.path} names a model dlcli does not know: {ckpt.model!r}") from None
    try:
        return config_against_schema(ckpt.model, ckpt.config)
    except DlcliError as e:
        raise DlcliError(f"{ckpt.path}: its config does not fit the {ckpt.model} model: {e}") from None


def load_checkpoint(path, expect_model: str | None = None, tensors: bool = True) -> Checkpoint:
    """tensors=False: the metadata alone (config, epoch, resume position), read without
    loading the weights and optimizer state."""
    path = Path(path)
    meta, tensors = _read(path, with_tensors=tensors)
    ckpt = Checkpoint(path, meta, tensors)
    if expect_model and ckpt.model != expect_model:
        raise DlcliError(
            f"{path} is a {ckpt.model} checkpoint, not {expect_model}; pass a {expect_model} "
            f"checkpoint (or name {ckpt.model} in the command instead)"
        )
    return ckpt


def read_metadata(path) -> dict[str, str]:
    """Metadata only, without loading tensors (for run listings)."""
    return _read(Path(path), with_tensors=False)[0]

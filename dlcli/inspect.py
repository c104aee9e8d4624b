"""`dlcli inspect`: read a checkpoint's header without torch (safetensors is a JSON header
followed by raw bytes), so inspecting is instant and loads no weights."""

from __future__ import annotations

import json
from pathlib import Path

from dlcli.errors import DlcliError
from dlcli.header import check_metadata, read_header


def describe(path) -> dict:
    path = Path(path)
    header = read_header(path)
    meta = header.pop("__metadata__", {}) or {}
    if "model" not in meta or "config" not in meta:
        raise DlcliError(f"{path} is a safetensors file but not a dlcli checkpoint")
    check_metadata(path, meta)
    tensors, modules, state_numel = [], {}, 0  # modules: numel incl. buffers, by submodule
    for name, t in sorted(header.items()):
        numel = 1
        for d in t["shape"]:
            numel *= d
        tensors.append({"name": name, "dtype": t["dtype"], "shape": t["shape"], "numel": numel})
        parts = name.split("/")
        if parts[0] == "model":
            module = f"{parts[1]}.{parts[2].split('.')[0]}" if len(parts) > 2 else parts[1]
            modules[module] = modules.get(module, 0) + numel
        else:
            state_numel += numel
    # trainable parameters per module, as counted at save time (buffers excluded)
    counts = json.loads(meta.get("parameters", "{}"))
    plain = {k: v for k, v in meta.items()
             if k not in ("config", "metrics", "state", "modules", "parameters", "provenance",
                          "image_data")}
    return {
        "path": str(path),
        "file_size": path.stat().st_size,
        "model": meta["model"],
        "format": meta.get("format"),
        "dlcli_version": meta.get("dlcli_version"),
        "epoch": int(meta.get("epoch", 0)),
        "step": int(meta.get("step", 0)),
        "metrics": json.loads(meta.get("metrics", "{}")),
        "config": json.loads(meta["config"]),
        "provenance": json.loads(meta.get("provenance", "{}")),
        "data": json.loads(meta.get("image_data", "{}")),  # the images it learned: shape, classes
        "parameters": sum(v for k, v in counts.items() if "." not in k),
        "parameters_by_module": counts,
        "numel_by_tensor_group": modules,
        "has_training_state": "state" in meta,
        "training_state_numel": state_numel,
        "metadata": {k: (v if len(v) < 200 else f"<{len(v)} characters>") for k, v in plain.items()},
        "tensors": tensors,
    }


def render(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console(soft_wrap=True)
    c.print(f"[bold]{info['path']}[/bold]  {info['model']}  epoch {info['epoch']}  "
            f"step {info['step']}  {info['file_size'] / 1e6:.2f} MB  dlcli {info['dlcli_version']}")
    if info["metrics"]:
        c.print("metrics: " + "  ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info["metrics"].items()))
    c.print("config:  " + "  ".join(f"{k}={v}" for k, v in info["config"].items()))
    data = info["data"]
    if data:
        shape, classes = data.get("shape", []), data.get("classes", [])
        names = ", ".join(map(str, classes[:10])) + (", ..." if len(classes) > 10 else "")
        c.print(f"data: {data.get('dataset')}  {'x'.join(map(str, shape))}  "
                f"{len(classes)} classes ({names or 'unlabeled'})  "
                f"mean {data.get('mean')}  std {data.get('std')}")
    if info["provenance"]:
        c.print("provenance: " + "  ".join(f"{k}={v}" for k, v in info["provenance"].items()))
    c.print(f"parameters: {info['parameters']:,}"
            + ("  (+ training state for --resume)" if info["has_training_state"] else ""))
    mods = Table("module", "parameters", box=None)
    for k, v in info["parameters_by_module"].items():
        mods.add_row(k, f"{v:,}")
    c.print(mods)
    table = Table("tensor", "dtype", "shape", box=None)
    for t in info["tensors"]:
        if t["name"].startswith("model/"):
            table.add_row(t["name"][6:], t["dtype"], "x".join(map(str, t["shape"])) or "scalar")
    c.print(table)

"""`dlcli average`: the element-wise mean of the weights of several checkpoints of one
model (the last N epochs, say), as fairseq and OpenNMT offer. Works for any model family:
the architecture is the checkpoints' own; the metadata (config, tokenizer) is the last one's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dlcli.checkpoint import load_checkpoint, save_checkpoint
from dlcli.errors import DlcliError
from dlcli.registry import get_spec

STANDARD_KEYS = {"format", "model", "dlcli_version", "config", "epoch", "step", "metrics",
                 "modules", "parameters", "state"}
# Config keys that steer how a model trains or samples, not what it computes: checkpoints
# may differ in these (the epochs of one run, runs of several seeds) and still be averaged.
TRAINING_KEYS = {"epochs", "lr", "seed", "batch_size", "optimizer", "momentum", "weight_decay",
                 "schedule", "lr_decay", "warmup", "clip_norm", "beta1", "beta2", "d_lr_scale",
                 "label_smoothing", "dropout", "d_dropout", "precision", "val_size", "keep_epochs",
                 "val_translate", "ema", "beta", "gamma", "capacity", "capacity_epochs",
                 "truncation", "temperature", "beam", "length_penalty", "data", "train_size"}
# Metadata that gives the weights their meaning: the same numbers under another tokenizer
# or other class names are another model.
MEANING_KEYS = ("tokenizer", "image_data", "classes", "class_names", "image_shape",
                "normalization")


def meaning_difference(a, b) -> str | None:
    """What makes checkpoints a and b models of different things, or None."""
    ca, cb = a.config, b.config
    for key in sorted((ca.keys() | cb.keys()) - TRAINING_KEYS):
        if ca.get(key) != cb.get(key):
            return f"config {key} is {ca.get(key)!r} in one and {cb.get(key)!r} in the other"
    for key in MEANING_KEYS:
        if a.meta.get(key) != b.meta.get(key):
            return f"their {key.replace('_', ' ')} differ"
    return None


def average_checkpoints(paths, output) -> Path:
    ckpts = [load_checkpoint(p) for p in paths]
    last = ckpts[-1]
    for c in ckpts[:-1]:
        if c.model != last.model:
            raise DlcliError(f"cannot average a {c.model} checkpoint ({c.path}) with a "
                             f"{last.model} one ({last.path})")
        difference = meaning_difference(c, last)
        if difference:
            raise DlcliError(f"cannot average {c.path} with {last.path}: {difference}")
    modules = {}
    for name in last.module_names():
        reference = last.state_dict(name)
        summed = {}
        for c in ckpts:
            state = c.state_dict(name)
            if state.keys() != reference.keys() or any(
                    state[k].shape != reference[k].shape for k in reference):
                raise DlcliError(f"{c.path} and {last.path} hold different architectures; "
                                 "only checkpoints of one training setup can be averaged")
            for key, tensor in state.items():
                summed[key] = summed.get(key, 0) + tensor.double()
        modules[name] = {
            # integer buffers (BatchNorm's batch counter) are counts, not weights: keep the last
            key: (value / len(ckpts)).to(reference[key].dtype)
            if reference[key].is_floating_point() else reference[key]
            for key, value in summed.items()}
    # Rebuild the model from the last checkpoint and give it the mean weights, so what is
    # saved is a real module (parameter counts, tied weights) like any training checkpoint.
    spec = get_spec(last.model)
    task = spec.load_task().from_checkpoint(spec, last, torch.device("cpu"))
    for name, module in task.modules.items():
        module.load_state_dict(modules[name])
    extra = {k: v for k, v in last.meta.items() if k not in STANDARD_KEYS}
    extra["averaged_from"] = json.dumps([str(c.path) for c in ckpts])
    metrics = {"averaged_checkpoints": len(ckpts)}
    return save_checkpoint(output, model=last.model, config=last.config, modules=task.modules,
                           epoch=last.epoch, step=last.step, metrics=metrics, extra=extra)


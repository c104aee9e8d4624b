"""The model registry: one table from a model name to what it is and how to train it.

This module is imported by `dlcli --help` and `dlcli models`, so it must stay free of
torch: a spec names its task class by import path, and `load_task()` imports it only
when a command needs it. Adding a model is one module under `dlcli/models/`, one
preset under `presets/`, and one `register(...)` line below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from dlcli.errors import DlcliError, did_you_mean

IMAGE_DATASETS = ("mnist", "fashion-mnist")
TOY_DATASETS = ("and", "or", "xor")
TEXT_DATASETS = ("numbers", "multi30k")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # classifier | vae | gan | seq2seq
    task: str  # "module:Class" of the Task that trains, evaluates and samples it
    default_dataset: str
    datasets: tuple[str, ...]
    description: str
    conditional: bool = False  # takes --label when sampling
    grids: tuple[str, ...] = field(default=())  # --grid kinds `sample` offers; first is default

    def load_task(self):
        module, cls = self.task.split(":")
        return getattr(importlib.import_module(module), cls)

    @property
    def samples(self) -> bool:
        return bool(self.grids)


_MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _MODELS:
        raise ValueError(f"model {spec.name!r} registered twice")
    _MODELS[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    try:
        return _MODELS[name]
    except KeyError:
        raise DlcliError(did_you_mean("model", name, _MODELS)) from None


def list_models() -> list[ModelSpec]:
    return list(_MODELS.values())


def all_datasets() -> list[str]:
    """Every dataset some model trains on, in registration order."""
    return list(dict.fromkeys(d for spec in _MODELS.values() for d in spec.datasets))


_CLASSIFY = "dlcli.tasks.classify:ClassifierTask"

register(ModelSpec(
    "perceptron", "classifier", _CLASSIFY, "mnist", IMAGE_DATASETS + TOY_DATASETS,
    "Rosenblatt's perceptron: weighted sum + bias, threshold, perceptron learning rule",
))
register(ModelSpec(
    "mlp", "classifier", _CLASSIFY, "mnist", IMAGE_DATASETS + TOY_DATASETS,
    "multilayer perceptron trained by backpropagation, optional Batch Normalization",
))
register(ModelSpec(
    "cnn", "classifier", _CLASSIFY, "mnist", IMAGE_DATASETS,
    "small LeNet-style CNN with BatchNorm; also the evaluator for GAN/VAE metrics",
))

_VAE = "dlcli.tasks.vae:VAETask"
register(ModelSpec(
    "vae", "vae", _VAE, "mnist", IMAGE_DATASETS,
    "variational autoencoder: Gaussian latent, Bernoulli pixels, ELBO in nats",
    grids=("samples", "manifold", "traverse", "recon"),
))
register(ModelSpec(
    "cvae", "vae", _VAE, "mnist", IMAGE_DATASETS,
    "conditional VAE: the label picks the digit, the latent carries the style",
    conditional=True, grids=("samples", "manifold", "recon"),
))
register(ModelSpec(
    "beta-vae", "vae", _VAE, "mnist", IMAGE_DATASETS,
    "beta-VAE: KL weighted by beta for disentangled latents (traversal grids)",
    grids=("samples", "traverse", "recon"),
))

_GAN = "dlcli.tasks.gan:GANTask"
register(ModelSpec(
    "gan", "gan", _GAN, "mnist", IMAGE_DATASETS,
    "GAN with MLP generator and discriminator (Goodfellow et al., 2014)",
    grids=("samples",),
))
register(ModelSpec(
    "dcgan", "gan", _GAN, "mnist", IMAGE_DATASETS,
    "deep convolutional GAN with BatchNorm (Radford et al., 2015)",
    grids=("samples",),
))
register(ModelSpec(
    "cgan", "gan", _GAN, "mnist", IMAGE_DATASETS,
    "conditional GAN: the label goes into both networks (Mirza & Osindero, 2014)",
    conditional=True, grids=("samples",),
))

register(ModelSpec(
    "transformer", "seq2seq", "dlcli.tasks.seq2seq:Seq2SeqTask", "numbers", TEXT_DATASETS,
    "encoder-decoder Transformer (Vaswani et al., 2017) behind `dlcli translate`",
))

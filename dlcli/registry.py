"""The model registry: one table from a model name to what it is and how to train it.

This module is imported by `dlcli --help` and `dlcli models`, so it must stay free of
torch: a spec names its task class by import path, and `load_task()` imports it only
when a command needs it; likewise its builder, the function that makes the model's
networks for a config and the data's shape and classes. Adding a model is one module under
`dlcli/models/`, one preset under `presets/`, and one `register(...)` line below.

A model names the kinds of data it takes ("image", "toy", "text"); which datasets those
are is the data catalog's business (dlcli/data/catalog.py).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from dlcli.data.catalog import names_of_kinds
from dlcli.errors import DlcliError, did_you_mean


def _load(path: str):
    """The object a "module:name" path names, imported now."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # classifier | vae | gan | seq2seq
    task: str  # "module:Class" of the Task that trains, evaluates and samples it
    default_dataset: str
    data: tuple[str, ...]  # the kinds of data it takes: image, toy, text
    description: str
    builder: str = ""  # "module:function" (config, data description) -> its network(s)
    conditional: bool = False  # takes --label when sampling
    grids: tuple[str, ...] = field(default=())  # --grid kinds `sample` offers; first is default

    def load_task(self):
        return _load(self.task)

    def build(self, config: dict, data: dict):
        """This model's network(s) for a config and the data it sees: `data` describes it
        (shape, classes, mean, std; see dlcli.data.images.ImageData.describe)."""
        return _load(self.builder)(config, data)

    @property
    def datasets(self) -> tuple[str, ...]:
        """The named datasets it can train on (a folder of images too, when it takes images)."""
        return names_of_kinds(self.data)

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
    """Every dataset some model trains on that --dataset names, in registration order."""
    from dlcli.data.catalog import get_dataset

    return list(dict.fromkeys(d for spec in _MODELS.values() for d in spec.datasets
                              if get_dataset(d).by_name))


register(ModelSpec(
    "perceptron", "classifier", "dlcli.tasks.classify:PerceptronTask", "mnist", ("image", "toy"),
    "Rosenblatt's perceptron: weighted sum + bias, threshold, perceptron learning rule",
    builder="dlcli.models.perceptron:build",
))
_CLASSIFY = "dlcli.tasks.classify:ClassifierTask"
register(ModelSpec(
    "mlp", "classifier", _CLASSIFY, "mnist", ("image", "toy"),
    "multilayer perceptron trained by backpropagation, optional Batch Normalization",
    builder="dlcli.models.mlp:build",
))
register(ModelSpec(
    "cnn", "classifier", _CLASSIFY, "mnist", ("image",),
    "small LeNet-style CNN with BatchNorm; also the evaluator for GAN/VAE metrics",
    builder="dlcli.models.cnn:build",
))

_VAE = "dlcli.tasks.vae:VAETask"
register(ModelSpec(
    "vae", "vae", _VAE, "mnist", ("image",),
    "variational autoencoder: Gaussian latent, Bernoulli pixels, ELBO in nats",
    builder="dlcli.models.vae:build", grids=("samples", "manifold", "traverse", "recon"),
))
register(ModelSpec(
    "cvae", "vae", _VAE, "mnist", ("image",),
    "conditional VAE: the label picks the class, the latent carries the style",
    builder="dlcli.models.vae:build_conditional", conditional=True,
    grids=("samples", "manifold", "recon"),
))
register(ModelSpec(
    "beta-vae", "vae", _VAE, "mnist", ("image",),
    "beta-VAE: KL weighted by beta for disentangled latents (traversal grids)",
    builder="dlcli.models.vae:build", grids=("samples", "traverse", "recon"),
))
register(ModelSpec(
    "beta-tcvae", "vae", "dlcli.tasks.vae:BetaTCVAETask", "mnist", ("image",),
    "beta-TCVAE: beta on the total correlation alone (Chen et al., 2018)",
    builder="dlcli.models.vae:build", grids=("samples", "traverse", "recon"),
))

_GAN = "dlcli.tasks.gan:GANTask"
register(ModelSpec(
    "gan", "gan", _GAN, "mnist", ("image",),
    "GAN with MLP generator and discriminator (Goodfellow et al., 2014)",
    builder="dlcli.models.gan:build_mlp", grids=("samples",),
))
register(ModelSpec(
    "dcgan", "gan", _GAN, "mnist", ("image",),
    "deep convolutional GAN with BatchNorm (Radford et al., 2015)",
    builder="dlcli.models.gan:build_dcgan", grids=("samples",),
))
register(ModelSpec(
    "cgan", "gan", _GAN, "mnist", ("image",),
    "conditional GAN: the label goes into both networks (Mirza & Osindero, 2014)",
    builder="dlcli.models.gan:build_conditional_mlp", conditional=True, grids=("samples",),
))

register(ModelSpec(
    "transformer", "seq2seq", "dlcli.tasks.seq2seq:Seq2SeqTask", "numbers", ("text",),
    "encoder-decoder Transformer (Vaswani et al., 2017) behind `dlcli translate`",
    builder="dlcli.models.transformer:build",
))

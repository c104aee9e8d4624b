"""`dlcli export`: a trained network in a form other programs run, checked before it is kept.

    onnx         one network (a GAN's generator, a VAE's decoder or encoder, a classifier)
                 with a dynamic batch axis; the model's metadata_props say how to call it
    torchscript  the same network traced; the extra file `dlcli.json` says how to call it
    safetensors  the checkpoint without its training state (optimizer moments, RNG states):
                 sample, evaluate, translate and inspect read it like any checkpoint
    ctranslate2  the Transformer as a CTranslate2 model folder (see dlcli/ct2.py)

A task describes what it can export with `networks()`: named Networks, each a module whose
forward takes the inputs in order, and a description of every input and output. The file
is written under a temporary name and checked there: the exported network must give the
PyTorch outputs within TOLERANCE on fixed batches of CHECK_BATCHES sizes, else the export
fails (exit 1, with the difference) and nothing takes the output's name.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from dlcli import __version__
from dlcli.errors import DlcliError

FORMATS = ("onnx", "torchscript", "safetensors", "ctranslate2")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript", "safetensors": "-weights.safetensors",
            "ctranslate2": "-ctranslate2"}
TOLERANCE = 1e-4  # largest absolute difference from PyTorch's outputs
CHECK_BATCHES = (1, 16)  # two sizes: the batch axis must really be dynamic
ONNX_OPSET = 17


class ExportMismatch(DlcliError):
    """The exported network does not compute what the PyTorch one does (a bug, not bad input)."""

    exit_code = 1


# ---- what a task exports --------------------------------------------------------------

@dataclass
class Port:
    """One input or output of an exported network, per item (the batch axis comes first)."""
    name: str
    shape: tuple[int, ...]  # without the batch axis
    values: str  # what the numbers mean, for whoever calls the network
    dtype: str = "float32"
    kind: str = "data"  # how the check draws an example input: noise | label | unit
    classes: int = 0  # labels: 0 <= label < classes


def image_port(shape, name: str = "images") -> Port:
    """Images of the checkpoint's shape (C, H, W), as the model saw them in training."""
    colours = {1: "grey", 3: "RGB"}.get(shape[0], f"{shape[0]}-channel")
    return Port(name, tuple(shape), f"{colours} pixel intensities in [0, 1]", kind="unit")


def label_port(classes: int) -> Port:
    return Port("label", (), f"the class to draw, 0 to {classes - 1}", dtype="int64",
                kind="label", classes=classes)


def noise_port(name: str, size: int, values: str) -> Port:
    return Port(name, (size,), values, kind="noise")


class Wrapped(nn.Module):
    """A network's forward written as a function over the modules it uses (registered here,
    so tracing sees their weights and switching to inference mode reaches them)."""

    def __init__(self, forward, **modules: nn.Module):
        super().__init__()
        self.parts = nn.ModuleDict(modules)
        self.function = forward

    def forward(self, *inputs):
        return self.function(*inputs)


@dataclass
class Network:
    module: nn.Module
    inputs: list[Port]
    outputs: list[Port]
    classes: list[str] = field(default_factory=list)  # class names, for classifiers

    def example(self, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """A fixed batch of valid inputs."""
        g = torch.Generator().manual_seed(seed)
        out = []
        for p in self.inputs:
            if p.kind == "label":
                out.append(torch.randint(p.classes, (batch,), generator=g))
            elif p.kind == "noise":
                out.append(torch.randn(batch, *p.shape, generator=g))
            else:
                out.append(torch.rand(batch, *p.shape, generator=g))
        return tuple(out)

    @torch.no_grad()
    def reference(self, inputs) -> list[torch.Tensor]:
        out = self.module(*inputs)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    def signature(self, ckpt, part: str) -> dict:
        """How to call the exported file: stored in it as JSON."""
        def describe(p: Port) -> dict:
            d = asdict(p)
            d["shape"] = ["batch", *p.shape]
            del d["kind"], d["classes"]
            return d
        return {"dlcli_version": __version__, "model": ckpt.model, "part": part,
                "dataset": ckpt.config.get("dataset"), "source_checkpoint": str(ckpt.path),
                "inputs": [describe(p) for p in self.inputs],
                "outputs": [describe(p) for p in self.outputs],
                **({"classes": self.classes} if self.classes else {})}


# ---- the command ------------------------------------------------------------------------

def default_output(checkpoint: Path, fmt: str, part: str | None = None) -> Path:
    """Next to the checkpoint: best.safetensors -> best.onnx, best-encoder.onnx, ..."""
    stem = checkpoint.name.removesuffix(".safetensors")
    return checkpoint.with_name(stem + (f"-{part}" if part else "") + SUFFIXES[fmt])


def export(checkpoint: Path, fmt: str, output: Path | None = None, part: str | None = None,
           quantization: str | None = None) -> Path:
    from dlcli.checkpoint import load_checkpoint
    from dlcli.fileio import atomic_write
    from dlcli.registry import get_spec

    if fmt not in FORMATS:
        raise DlcliError(f"unknown --format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if quantization is not None and fmt != "ctranslate2":
        raise DlcliError("--quantize applies to --format ctranslate2 only")
    one_network = fmt in ("onnx", "torchscript")
    if part is not None and not one_network:
        raise DlcliError(f"--part picks one network for onnx or torchscript; --format {fmt} "
                         "exports the whole model")
    ckpt = load_checkpoint(checkpoint)
    spec = get_spec(ckpt.model)
    seq2seq = spec.family == "seq2seq"
    if seq2seq and one_network:
        raise DlcliError(f"the {ckpt.model} exports to CTranslate2, its inference engine: "
                         "use --format ctranslate2 (or safetensors)")
    if fmt == "ctranslate2" and not seq2seq:
        raise DlcliError(f"--format ctranslate2 is for the transformer; export a {ckpt.model} "
                         "with --format onnx or torchscript")
    task = spec.load_task().from_checkpoint(spec, ckpt, torch.device("cpu"))
    if not one_network:
        target = output or default_output(ckpt.path, fmt)
        _refuse_existing(target)
        if fmt == "safetensors":
            write_weights_only(ckpt, spec, target)
        else:
            from dlcli.ct2 import export_ctranslate2

            export_ctranslate2(task, ckpt, target, quantization)
        return target
    networks = task.networks()
    part = part or next(iter(networks))
    if part not in networks:
        raise DlcliError(f"a {ckpt.model} has no part {part!r}; choose one of: "
                         + ", ".join(networks))
    network = networks[part]
    network.module.train(False)
    target = output or default_output(ckpt.path, fmt, part if len(networks) > 1 else None)
    _refuse_existing(target)
    write = write_onnx if fmt == "onnx" else write_torchscript
    atomic_write(target, lambda tmp: write(network, network.signature(ckpt, part), tmp))
    return target


def _refuse_existing(target: Path) -> None:
    if target.exists():
        raise DlcliError(f"{target} exists; not overwriting it (remove it or pass another -o)")


def compare(name: str, expected: list[torch.Tensor], got, batch: int,
            tolerance: float = TOLERANCE) -> None:
    for want, have in zip(expected, got):
        have = torch.as_tensor(have)
        if have.shape != want.shape:
            raise ExportMismatch(f"{name} gives an output of shape {tuple(have.shape)} for a "
                                 f"batch of {batch}, PyTorch {tuple(want.shape)}")
        diff = (have.double() - want.double()).abs().max().item()
        if not diff <= tolerance:
            raise ExportMismatch(f"{name} differs from PyTorch by {diff:.3g} (more than "
                                 f"{tolerance:g}) on a batch of {batch}; the file is not kept")


def _quiet():
    """The exporters' advice to torch developers (tracer and deprecation warnings) is no
    news to a user: the check after writing is what tells whether the file is right."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


# ---- ONNX -----------------------------------------------------------------------------

def _require(*modules: str, extra: str):
    import importlib

    try:
        return [importlib.import_module(m) for m in modules]
    except ImportError:
        raise DlcliError(f"this export needs {' and '.join(modules)}: "
                         f"pip install 'dlcli[{extra}]'") from None


def write_onnx(network: Network, signature: dict, path) -> None:
    onnx, ort = _require("onnx", "onnxruntime", extra="export")
    names_in = [p.name for p in network.inputs]
    names_out = [p.name for p in network.outputs]
    with _quiet(), torch.no_grad():
        # the TorchScript-based exporter: one pass, no onnxscript needed, every op used here
        torch.onnx.export(network.module, network.example(2), path, input_names=names_in,
                          output_names=names_out, opset_version=ONNX_OPSET, dynamo=False,
                          dynamic_axes={n: {0: "batch"} for n in names_in + names_out})
    model = onnx.load(path)
    props = {"dlcli": json.dumps(signature), "dlcli_model": signature["model"],
             "dlcli_part": signature["part"]}
    onnx.helper.set_model_props(model, props)
    model.doc_string = describe_call(signature)
    onnx.save(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in CHECK_BATCHES:
        inputs = network.example(batch, seed=batch)
        got = session.run(names_out, {n: x.numpy() for n, x in zip(names_in, inputs)})
        compare("the ONNX export (onnxruntime)", network.reference(inputs), got, batch)


def describe_call(signature: dict) -> str:
    """One line a person reads: `images = generator(z[batch, 64], label[batch])`."""
    def fmt(ports):
        return ", ".join(f"{p['name']}[{', '.join(map(str, p['shape']))}]" for p in ports)
    return (f"dlcli {signature['model']} {signature['part']}: {fmt(signature['outputs'])} = "
            f"f({fmt(signature['inputs'])}); " + "; ".join(
                f"{p['name']}: {p['values']}" for p in signature["inputs"] + signature["outputs"]))


# ---- TorchScript ------------------------------------------------------------------------

def write_torchscript(network: Network, signature: dict, path) -> None:
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(network.module, network.example(2), check_trace=False)
        torch.jit.save(traced, path, _extra_files={"dlcli.json": json.dumps(signature)})
        loaded = torch.jit.load(path)  # TorchScript's own format, not a pickle of Python objects
    for batch in CHECK_BATCHES:
        inputs = network.example(batch, seed=batch)
        with torch.no_grad():
            got = loaded(*inputs)
        got = list(got) if isinstance(got, (tuple, list)) else [got]
        compare("the TorchScript export", network.reference(inputs), got, batch)


# ---- weights only ------------------------------------------------------------------------

def write_weights_only(ckpt, spec, target: Path) -> None:
    """The checkpoint's weights and metadata, without the training state; checked by
    rebuilding the model from the written file."""
    from safetensors.torch import save_file

    from dlcli.checkpoint import load_checkpoint
    from dlcli.fileio import atomic_write

    tensors = {k: v for k, v in ckpt.tensors.items() if k.startswith("model/")}
    meta = {k: v for k, v in ckpt.meta.items() if k != "state"}

    def write(tmp):
        save_file(tensors, tmp, metadata=meta)
        written = load_checkpoint(tmp)
        spec.load_task().from_checkpoint(spec, written, torch.device("cpu"))

    atomic_write(target, write)


# ---- folders (CTranslate2) ---------------------------------------------------------------

@contextlib.contextmanager
def folder_in_place(target: Path):
    """A temporary folder next to `target`, renamed to it when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

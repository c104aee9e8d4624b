"""What every command that runs torch sets up first: the device, the random number
generators, and the numeric precision (with the memory layouts and compilation that go with
it). `train`, `sample`, `evaluate`, `translate` and `predict` import this, not the trainer."""

from __future__ import annotations

import contextlib
import random

import torch

from dlcli.config import PRECISIONS
from dlcli.console import warn
from dlcli.errors import DlcliError


def pick_device(name: str = "auto") -> torch.device:
    """The device for --device NAME. Every command that runs torch calls this first, so it
    also settles the vector-math kernels (below) before any other work."""
    settle_vector_math()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DlcliError("--device cuda: no CUDA device here; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DlcliError("--device mps: no Apple GPU here; use --device cpu or auto")
    if name not in ("cpu", "cuda", "mps"):
        raise DlcliError(f"unknown device {name!r}; choose one of: auto, cpu, cuda, mps")
    return torch.device(name)


def settle_vector_math() -> None:
    """MKL picks its vector-math kernels (tanh, exp, ...) at their first call. When that
    first call comes from two threads at once, one of them can keep a less accurate kernel
    for the rest of the process: we saw tanh off by 8e-6 on one thread's half of a batch
    in about 5% of `dlcli sample` processes, so one --seed gave two different pictures.
    One tiny call on this thread alone, before any parallel work, makes the choice once."""
    torch.tanh(torch.zeros(1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in state["cuda"]])



def resolve_precision(device: torch.device, precision: str, convolutional: bool = False) -> str:
    """--precision (or a preset's `precision` key):
      32           float32 throughout;
      bf16         autocast to bfloat16 (activations too);
      bf16-matmul  float32 tensors, but matrix products multiply in bfloat16 and add up in
                   float32 (oneDNN's AMX path on a CPU; like TF32 on NVIDIA GPUs): no
                   casts, so the MLP nets train faster this way than under autocast;
      16-mixed     autocast to float16 with a gradient scaler (CUDA only);
      auto         where the hardware multiplies bfloat16 natively (CPUs with AMX or
                   AVX512-BF16, recent GPUs): bf16 for conv nets and on GPUs, bf16-matmul
                   for the others on a CPU; else 32.
    Weights, optimizer state and every evaluation stay in float32."""
    precision = str(precision)
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "32"
        if not (device.type == "cpu" and cpu_multiplies_bf16()):
            return "32"
        return "bf16" if convolutional else "bf16-matmul"
    if precision not in PRECISIONS:
        raise DlcliError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "16-mixed" and device.type != "cuda":
        raise DlcliError("precision 16-mixed needs a CUDA device; use bf16 on CPU")
    if precision.startswith("bf16") and device.type == "cpu" and not cpu_multiplies_bf16():
        warn(f"precision {precision}: this CPU has no bfloat16 arithmetic (AVX512-BF16 or AMX), "
             "so it is emulated and likely slower than --precision 32")
    return precision


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic (AVX512-BF16 or AMX), as oneDNN sees it."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Bf16Matmuls:
    """The bf16-matmul precision: inside, float32 matrix products multiply in bfloat16."""

    def __enter__(self):
        self.before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("medium")

    def __exit__(self, *exc):
        torch.set_float32_matmul_precision(self.before)


def precision_context(device: torch.device, precision: str):
    """What each training step runs inside (a reusable context manager)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "bf16-matmul":
        return Bf16Matmuls()
    if precision == "16-mixed":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def is_convolutional(modules: dict) -> bool:
    return any(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
               for module in modules.values() for m in module.modules())


def use_fast_paths(modules: dict, device: torch.device, precision: str) -> None:
    """TF32 matrix products on NVIDIA GPUs; channels-last memory for the conv nets there
    and under bf16 on a CPU, where oneDNN's bfloat16 convolutions run fastest that way
    (the cnn trains 1.5x faster). Neither changes a float32 CPU run."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif precision != "bf16":
        return
    if is_convolutional(modules):
        for module in modules.values():
            module.to(memory_format=torch.channels_last)


def apply_precision(task, precision: str | None = None) -> str:
    """Resolve `precision` (None: the config's, else 32) for the task's networks and device,
    and put the networks in the memory layout that runs fastest under it."""
    precision = resolve_precision(task.device, precision or task.config.get("precision", "32"),
                                  convolutional=is_convolutional(task.modules))
    use_fast_paths(task.modules, task.device, precision)
    return precision


def compile_modules(modules: dict) -> None:
    """--compile: compile each module's forward in place, so state-dict keys stay plain
    (torch.compile's wrapper would prefix them with `_orig_mod.`). Compilation happens at
    the first call; if it fails there, the module warns once and runs eagerly."""
    for name, module in modules.items():
        module.forward = _compiled_or_eager(name, module.forward)


def _compiled_or_eager(name: str, eager):
    compiled = torch.compile(eager)
    failed = []

    def forward(*args, **kwargs):
        if not failed:
            try:
                return compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 -- any backend failure: fall back, say so
                failed.append(e)
                warn(f"--compile: {name} runs uncompiled ({type(e).__name__}: "
                     f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})")
        return eager(*args, **kwargs)

    return forward

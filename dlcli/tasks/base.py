"""The Task interface: what a model family tells the one training loop.

A Task owns its modules (`self.modules`, saved as "model/<name>/..."; made by build()), its
optimizers and schedulers (made by build_optimizers(), for training only), and its data.
The loop in dlcli/train.py calls only what this class declares. Per epoch:

    task.train_mode(True)
    batches = task.train_batches(epoch)      # a Sequence; deterministic for (seed, epoch)
    for batch in batches:
        logs = task.train_step(batch)        # floats; task.losses must stay finite
        task.batch_items(batch)              # throughput, in task.item_name per second
    task.train_mode(False)
    metrics = task.validate()                # floats; task.monitor picks best.safetensors
    pictures = task.end_of_epoch(epoch)      # {tag: (images, nrow, captions)}, for reporters
    if task.done: stop early                 # converged (set in validate)

and at the end, task.report(epochs) for the console. Checkpoints hold task.modules,
task.training_state() and task.checkpoint_extra(); a resume calls
task.load_training_state(). `sample`, `evaluate` and `translate` rebuild a Task, without
optimizers, with `Task.from_checkpoint(ckpt, device)`.
"""

from __future__ import annotations

import torch

from dlcli.console import notice
from dlcli.errors import DlcliError


class Task:
    monitor: str | None = "val_loss"  # lower is better; None: best.safetensors = last epoch
    losses: tuple[str, ...] = ("loss",)  # train_step's losses: one not finite = diverged
    item_name = "img"  # unit of throughput on the progress bar (img/s, tok/s)
    done = False  # converged: set (in validate) to stop before the last epoch
    data_source = ""  # where the data came from, in words (set by setup_data)

    def __init__(self, spec, config: dict, device: torch.device, data_dir=None,
                 meta: dict[str, str] | None = None, trains: bool = True):
        self.spec = spec
        self.meta = meta or {}  # checkpoint metadata when rebuilt from one (a tokenizer, say)
        self.config = config
        self.device = device
        self.data_dir = data_dir
        self.modules: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, object] = {}
        self.build()
        if trains:  # sampling and evaluating need none (and making one costs a second)
            self.build_optimizers()

    # ---- to implement -------------------------------------------------------------
    def build(self) -> None:
        """Create self.modules (on self.device).

        When rebuilt from a checkpoint, self.meta holds its metadata (what
        checkpoint_extra() saved), so a tokenizer can be restored before the modules."""
        raise NotImplementedError

    def build_optimizers(self) -> None:
        """Create self.optimizers and self.schedulers (tasks that train only)."""

    def setup_data(self) -> None:
        """Load the training/validation data named by the config (train and evaluate only)."""
        raise NotImplementedError

    def train_batches(self, epoch: int):
        raise NotImplementedError

    def train_step(self, batch) -> dict[str, float]:
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        return {}

    def end_of_epoch(self, epoch: int) -> dict:
        """Pictures of the model after `epoch` epochs (1-based; after validation), by tag:
        {tag: (images in [0, 1] of shape (N, C, H, W), images per row, captions or None)}.
        Reporters write them as samples/TAG-NNN.png and log them."""
        return {}

    def report(self, epochs_run: int) -> str | None:
        """A verdict for the console when training has finished (or None)."""
        return None

    def evaluate(self, **options) -> dict:
        raise DlcliError(f"evaluate is not available for {self.spec.name}")

    def test_items(self) -> int:
        """How many items the test split holds (after setup_data)."""
        raise NotImplementedError

    def sample(self, n: int, label=None, grid: str | None = None, interpolate: bool = False):
        """Return (images in [0, 1] of shape (N, 1, H, W), images per row)."""
        raise DlcliError(f"{self.spec.name} does not generate images")

    def captions(self, n: int, label=None, grid: str | None = None, interpolate: bool = False):
        """Words for the picture sample() makes with the same arguments (an images.Captions:
        which class each row is, which latent unit an axis sweeps), or None."""
        return None

    def networks(self) -> dict:
        """The networks `dlcli export` writes as ONNX or TorchScript, by name, the default
        first: {name: dlcli.export.Network}."""
        raise DlcliError(f"{self.spec.name} has no network to export as onnx or torchscript")

    # ---- shared behaviour ---------------------------------------------------------
    scaler = None  # a torch.amp.GradScaler under --precision 16-mixed, set by the loop

    def optimize(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                 clip_norm: float = 0.0, inputs=None) -> None:
        """One optimizer step on `loss`: zero the gradients, backpropagate (into `inputs`
        only, when given), clip the gradient norm if asked, step. Under float16 mixed
        precision the loss is scaled so small gradients do not underflow, and steps with
        inf/NaN gradients are skipped."""
        optimizer.zero_grad(set_to_none=True)
        params = [p for g in optimizer.param_groups for p in g["params"]] if clip_norm > 0 else []
        if self.scaler is None:
            loss.backward(inputs=inputs)
            if clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, clip_norm)
            optimizer.step()
        else:
            self.scaler.scale(loss).backward(inputs=inputs)
            if clip_norm > 0:
                self.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, clip_norm)
            self.scaler.step(optimizer)
            self.scaler.update()
        if torch.is_autocast_enabled(optimizer.param_groups[0]["params"][0].device.type):
            # autocast keeps its low-precision copies of the weights until the region ends;
            # after this step they are stale, and a later forward in the same step (G
            # against the just-updated D) must see the new weights
            torch.clear_autocast_cache()

    def data_info(self) -> dict:
        """What evaluate scores (after setup_data): dataset, split, items, where from."""
        from dlcli.config import dataset_name

        return {"dataset": dataset_name(self.config), "split": "test", "items": self.test_items(),
                "source": self.data_source}

    def setup_eval_data(self) -> None:
        """setup_data(), then say on stderr which data evaluate scores."""
        self.setup_data()
        d = self.data_info()
        notice(f"scoring {d['dataset']}, {d['split']} split, {d['items']:,} items, "
               f"from {d['source']}")

    def batch_items(self, batch) -> int:
        """How many items (images, tokens) a batch holds, for throughput."""
        return len(batch[0])

    def data_sha256(self) -> str:
        """SHA-256 of the data this task loaded (setup_data), as it holds it: a run's
        record of exactly what it trained and was tested on."""
        raise NotImplementedError

    def checkpoint_extra(self) -> dict[str, str]:
        """Extra metadata strings saved with every checkpoint (a tokenizer, say)."""
        return {}

    @classmethod
    def check_checkpoint(cls, ckpt) -> None:
        """Refuse, before building, metadata that does not fit the checkpoint's tensors
        (a tokenizer far larger than the embedding it came with, say)."""

    def train_mode(self, training: bool = True) -> None:
        for module in self.modules.values():
            module.train(training)

    def training_state(self) -> dict:
        state = {
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
        }
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def load_training_state(self, state: dict) -> None:
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        for key, opt in self.optimizers.items():
            # how to step (fused or not) is this build's choice, not the checkpoint's: a
            # checkpoint from an unfused build would otherwise resume several times slower
            # (patched in before loading: torch places Adam's `step` by the loaded flags)
            saved = state["optimizers"][key]
            kernels = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in opt.param_groups]
            saved = {**saved, "param_groups": [{**g, **kept} for g, kept
                                               in zip(saved["param_groups"], kernels)]}
            opt.load_state_dict(saved)
            match_layouts(opt)
        for key, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][key])

    @classmethod
    def from_checkpoint(cls, spec, ckpt, device, data_dir=None) -> "Task":
        from dlcli.checkpoint import checked_config

        config = checked_config(ckpt)  # before anything is built from it
        cls.check_checkpoint(ckpt)
        task = cls(spec, config, device, data_dir, meta=ckpt.meta, trains=False)
        task.checkpoint_path = ckpt.path
        ckpt.load_into(task.modules)
        task.train_mode(False)
        return task


def sha256_of(*parts) -> str:
    """One SHA-256 over tensors (their bytes), strings, and lists, tuples or dicts of them."""
    import hashlib

    digest = hashlib.sha256()

    def feed(x):
        if isinstance(x, torch.Tensor):
            digest.update(x.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(x, str):
            digest.update(x.encode() + b"\n")
        elif isinstance(x, dict):
            for k, v in x.items():
                feed(str(k))
                feed(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                feed(v)

    for part in parts:
        feed(part)
    return digest.hexdigest()


def match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (Adam's moments, say) its parameter's memory
    layout. Checkpoints hold plain contiguous tensors, but a conv weight may be
    channels-last (use_fast_paths), and the fused optimizers pair parameter and state
    element by element in memory order: without this a resumed run would update each
    weight with another weight's moments."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for k, v in state.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)

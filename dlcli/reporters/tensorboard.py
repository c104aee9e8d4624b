"""--logger tensorboard: the run as TensorBoard event files in RUN/tensorboard/ (written
with torch's SummaryWriter): every scalar of metrics.jsonl under step/NAME or epoch/NAME at
its optimizer step, the sample pictures under samples/TAG, and at the end the config as
hyperparameters with the final metrics. `tensorboard --logdir runs` shows every run."""

from __future__ import annotations

from dlcli.reporters import End, Reporter, Run

NOT_SCALARS = {"kind", "epoch", "step"}


def scalars(record: dict) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if k not in NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def hparam(value):
    """TensorBoard takes numbers, strings and booleans as hyperparameters."""
    return value if isinstance(value, (int, float, str, bool)) else str(value)


class TensorBoard(Reporter):
    def start(self, run: Run) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run, self.at_step, self.final = run, 0, {}
        self.writer = SummaryWriter(str(run.dir / "tensorboard"))

    def record(self, record: dict) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(f"{record['kind']}/{name}", value, record["step"])
        if record["kind"] == "epoch":
            self.at_step, self.final = record["step"], scalars(record)
        self.writer.flush()

    def images(self, epoch: int, tag: str, images, nrow: int, captions=None) -> None:
        from dlcli.images import grid_image

        # the same picture as samples/TAG-NNN.png, at the step its epoch ended
        self.writer.add_image(f"samples/{tag}", grid_image(images, nrow, captions=captions),
                              self.at_step)

    def end(self, end: End) -> None:
        config = {k: hparam(v) for k, v in self.run.config.items()}
        metrics = {f"final/{k}": v for k, v in self.final.items()}
        if metrics:  # a run stopped before its first epoch ended has nothing to compare
            # run_name ".": into this run's folder, not a subfolder of its own
            self.writer.add_hparams(config, metrics, run_name=".", global_step=self.at_step)
        self.writer.close()

"""--logger mlflow: the run as an MLflow run, in the local store ./mlruns unless
MLFLOW_TRACKING_URI names another (a server, a database): the config as parameters, every
metrics.jsonl value as a metric at its optimizer step, the sample pictures and the
checkpoint the run hands on (best, or the average of the last snapshots) as artifacts.
One experiment per model, dlcli/MODEL; one MLflow run per process (a resumed run is a new
one, tagged with the same run folder)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dlcli.reporters import End, Reporter, Run
from dlcli.reporters.tensorboard import scalars

STATUS = {"finished": "FINISHED", "interrupted": "KILLED"}  # else FAILED
MAX_PARAM = 6000  # characters MLflow keeps of a parameter's value


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the file store ./mlruns. MLflow 3 keeps that store in
    maintenance and refuses it unless MLFLOW_ALLOW_FILE_STORE is set: we set it (for this
    process only) when we choose the file store ourselves."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return Path("mlruns").absolute().as_uri()


class MLflow(Reporter):
    def start(self, run: Run) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri())
        name = f"dlcli/{run.model}"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(name))
        origin = {f"dlcli.{k}": str(v) for k, v in run.provenance.items()}  # command, data, ...
        self.id = self.client.create_run(experiment_id, run_name=run.dir.name, tags={
            "dlcli.run_dir": str(run.dir.absolute()), "dlcli.model": run.model, **origin}).info.run_id
        self.client.log_batch(self.id, params=[Param(k, str(v)[:MAX_PARAM])
                                               for k, v in run.config.items()])
        self.run = run

    def record(self, record: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.id, metrics=[Metric(k, v, now, record["step"])
                                                for k, v in scalars(record).items()])

    def images(self, epoch: int, tag: str, images, nrow: int, captions=None) -> None:
        from dlcli.images import grid_image

        picture = grid_image(images, nrow, captions=captions).mul(255).round().byte()
        self.client.log_image(self.id, picture.permute(1, 2, 0).squeeze(-1).numpy(),
                              artifact_file=f"samples/{tag}-{epoch:03d}.png")

    def end(self, end: End) -> None:
        if end.checkpoint is not None and Path(end.checkpoint).is_file():
            self.client.log_artifact(self.id, str(end.checkpoint), "checkpoints")
        self.client.set_terminated(self.id, STATUS.get(end.state, "FAILED"))

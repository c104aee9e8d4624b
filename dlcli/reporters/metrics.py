"""metrics.jsonl: one JSON object per line, appended and flushed as training goes, so a
killed run keeps every record up to its death, and `dlcli runs` reads how a run ended."""

from __future__ import annotations

import json

from dlcli.reporters import End, Reporter, Run


class MetricsFile(Reporter):
    def start(self, run: Run) -> None:
        self.file = open(run.dir / "metrics.jsonl", "a", encoding="utf-8")
        # what `dlcli runs` needs without importing the model's task (and torch)
        self.write({"kind": "start", "epochs": run.epochs, "monitor": run.monitor})

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def record(self, record: dict) -> None:
        self.write(record)

    def end(self, end: End) -> None:
        # a resumed run keeps the records up to its checkpoint's step: an interrupted run's
        # end record stays (the file tells the whole story), a diverged one's goes
        self.write({"kind": "end", "state": end.state, "epochs": end.epochs, "step": end.step,
                    "seconds": round(end.seconds, 3),
                    "checkpoint": str(end.checkpoint) if end.checkpoint else None})
        self.file.close()

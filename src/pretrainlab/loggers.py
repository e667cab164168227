"""Loggers that continue a resumed run instead of starting a new record of it.

Lightning's ``CSVLogger`` picks a new ``version_N`` folder for every start and, given a fixed
version, deletes the earlier ``metrics.csv``; W&B starts a new run unless told the old id. A
run resumed with ``resume=RUN_DIR`` should read as one run in both.
"""

from __future__ import annotations

import csv
import os
import secrets
import string
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class _ContinuingWriter(ExperimentWriter):
    """Keeps the rows an earlier session of the run wrote before the step this one starts at.

    Rows of a killed session after its last checkpoint are dropped when the resumed session
    logs its first row: that session logs those steps again.
    """

    def __init__(self, log_dir: str) -> None:
        path = Path(log_dir) / self.NAME_METRICS_FILE
        self._earlier: list[dict[str, str]] = []
        keys: list[str] = []
        if path.is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                keys = list(reader.fieldnames or [])
                self._earlier = list(reader)
            path.unlink()  # rewritten below, with the rows that stay, before new rows are added
        super().__init__(log_dir=log_dir)
        self.metrics_keys = keys

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if self._earlier is not None and step is not None:
            kept = [row for row in self._earlier if row.get("step") and int(row["step"]) < step]
            if kept:
                with open(self.metrics_file_path, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                    writer.writeheader()
                    writer.writerows(kept)
            self._earlier = None
        super().log_metrics(metrics_dict, step)


class CSVLogger(LightningCSVLogger):
    """Lightning's CSV logger in one folder per run (``csv/``), continued across a resume."""

    def __init__(self, save_dir: str, name: str = "csv", **kwargs: Any) -> None:
        kwargs.setdefault("version", "")
        super().__init__(save_dir=save_dir, name=name, **kwargs)

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment


def wandb_run_id(run_dir: str | os.PathLike[str]) -> str:
    """The W&B run id of this run folder: made at its first start, read back on a resume, so
    a resumed run logs into the same W&B run (with ``resume="allow"``)."""
    path = Path(run_dir) / "wandb" / "run_id"
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    # W&B's own form (8 lower-case letters and digits); its generator moved between releases.
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n", encoding="utf-8")
    return run_id

"""Hydra callbacks: checks that must run before Hydra writes into the run folder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

# Any of these in a folder means a run lives there.
RUN_MARKERS = (".hydra", "metrics.json", "checkpoints", "hf")


def is_run_dir(folder: Path) -> bool:
    """A folder that holds (part of) an earlier run."""
    return any((folder / marker).exists() for marker in RUN_MARKERS)


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class RunDirGuard(Callback):
    """Refuse to start a run whose folder already holds one: nothing the user had is overwritten.

    Hydra writes ``.hydra/`` into the run folder before the task starts, so the check cannot
    live in the task function; ``on_run_start`` runs before that write.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(OmegaConf.select(config, "hydra.run.dir")))
        if is_run_dir(folder):
            _refuse(f"hydra.run.dir={folder}: holds an earlier run; choose a new folder")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
        if folder.is_dir() and any(is_run_dir(child) for child in folder.iterdir() if child.is_dir()):
            _refuse(f"hydra.sweep.dir={folder}: holds an earlier sweep; choose a new folder")

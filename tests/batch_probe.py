"""Test callbacks: record what each training step trained on, and stop a run at a chosen step.

``RecordBatches`` appends one JSON line per training batch (the step it belongs to and a hash
of its tensors), and a ``start`` line when training starts or resumes, so a resumed run can be
compared with an uninterrupted one batch by batch. ``StopAtStep`` raises right after a given
step, leaving the run folder as a kill would (nothing is written after the step).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


class Stopped(RuntimeError):
    """Raised by ``StopAtStep``: the stand-in for a kill."""


def batch_hash(batch: dict[str, Any]) -> str:
    """A hash of every tensor of a batch (inputs, labels, masks), in key order."""
    h = hashlib.sha256()
    for key in sorted(batch):
        value = batch[key]
        if isinstance(value, torch.Tensor):
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class RecordBatches(pl.Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"start": trainer.global_step}) + "\n")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": trainer.global_step, "batch": batch_hash(batch)}) + "\n")


class StopAtStep(pl.Callback):
    def __init__(self, step: int, batch_in_step: int = 0) -> None:
        """Stop after ``step`` optimizer steps and ``batch_in_step`` more batches (accumulation)."""
        self.step = step
        self.batch_in_step = batch_in_step
        self.batches = 0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step < self.step:
            return
        if self.batches == self.batch_in_step:
            raise Stopped(f"stopped after step {self.step} + {self.batch_in_step} batches")
        self.batches += 1


class SignalAtStep(pl.Callback):
    """Send this process ``signum`` after ``step`` optimizer steps (as a user's Ctrl-C would)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step = step
        self.signum = signum

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class RecordBlocks(pl.Callback):
    """Append each training batch's ``input_ids`` (a list per block) as one JSON line to
    ``<path>.rank<r>``, a file per process, so a multi-process run shows what each rank trained on."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        path = Path(f"{self.path}.rank{trainer.global_rank}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(batch["input_ids"].tolist()) + "\n")

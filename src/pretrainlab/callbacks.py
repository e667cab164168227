"""Lightning callbacks of our own: only what no built-in callback measures."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


class TrainingFailure(RuntimeError):
    """A run that cannot go on, for a reason the user can act on: its message is one line."""


class NonFiniteLossError(TrainingFailure):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(pl.Callback):
    """Stop at the first NaN/inf training loss, before it reaches the weights.

    The check runs just before ``backward``, so no update is made from the bad loss; the
    exception ends ``fit`` before any further checkpoint is written, so ``checkpoints/last.ckpt``
    stays the last good state. All ranks stop together (the decision is reduced across them).
    """

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        callback = trainer.checkpoint_callback
        last = Path(callback.last_model_path) if callback is not None and callback.last_model_path else None
        kept = (
            f"the last good checkpoint is {last}"
            if last is not None and last.is_file()
            else "no checkpoint had been saved yet"
        )
        raise NonFiniteLossError(
            f"train/loss became {float(loss.detach()):g} at step {trainer.global_step}: training stopped, "
            f"{kept} (try a lower optimizer.optimizer.lr, longer warm-up or trainer.precision=32-true)"
        )


def logging_step(trainer: pl.Trainer, step: int) -> bool:
    """Whether values logged for optimizer step ``step`` (1-based) reach the loggers: every
    ``log_every_n_steps`` steps.

    The loggers write only these steps, so a value logged on another step would be overwritten
    by the next step's or, if that logs nothing, written late and stale. Logging only here saves
    ``self.log`` on every step (measurable for small models; see benchmarks/README.md) and writes
    each value at the step it belongs to.
    """
    return step % max(trainer.log_every_n_steps, 1) == 0


class TokenThroughput(pl.Callback):
    """Tokens seen and non-padding training tokens per second.

    The clock runs from the start of training and stops during validation, so the rate
    includes data loading and collation (what a user waits for) but not evaluation.
    Token counts come from the objective (``count_tokens``): padding never counts.
    """

    def __init__(self) -> None:
        self.tokens = 0
        self.train_seconds = 0.0
        self._since: float | None = None

    def _pause(self) -> None:
        if self._since is not None:
            self.train_seconds += time.perf_counter() - self._since
            self._since = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._since = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.training:
            self._since = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.tokens += pl_module.count_tokens(batch) * trainer.world_size
        if not logging_step(trainer, trainer.global_step):  # already advanced to this step
            return
        elapsed = self.train_seconds + (time.perf_counter() - self._since if self._since else 0.0)
        pl_module.log("tokens_seen", float(self.tokens), on_step=True, on_epoch=False)
        if elapsed > 0:
            pl_module.log("train/tokens_per_s", self.tokens / elapsed, on_step=True, on_epoch=False)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "train_seconds": self.train_seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tokens = state_dict["tokens"]
        self.train_seconds = state_dict["train_seconds"]


class ValidationCurve(pl.Callback):
    """Validation loss against steps and tokens, in ``curve.csv`` whatever the logger.

    ``pretrainlab-compare`` plots loss against tokens from it, so a sweep can be compared
    without W&B. Rows are keyed by step: a resumed run rewrites the steps it repeats.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.rows: dict[int, tuple[int, float]] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # During fit every validation; outside it (before and after fit) only a step not yet seen.
        fitting = trainer.state.fn == "fit"
        if trainer.sanity_checking or not (fitting or trainer.global_step not in self.rows):
            return
        loss = trainer.callback_metrics.get("val/loss")
        if loss is None or not trainer.is_global_zero:
            return
        tokens = next((c.tokens for c in trainer.callbacks if isinstance(c, TokenThroughput)), 0)
        self.rows[trainer.global_step] = (tokens, float(loss))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "tokens_seen", "val_loss"])
            for step in sorted(self.rows):
                writer.writerow([step, *self.rows[step]])

    @property
    def initial_loss(self) -> float | None:
        """Validation loss before the first step (kept across a resume)."""
        return self.rows[0][1] if 0 in self.rows else None

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = dict(state_dict["rows"])

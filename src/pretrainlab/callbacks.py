"""Lightning callbacks of our own: only what no built-in callback measures."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl


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

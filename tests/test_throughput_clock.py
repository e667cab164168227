"""``train/tokens_per_s`` must count the training time of every step, not only the steps before
the first validation (the clock used to stay stopped after it, which inflated the rate by the
number of validations: 48.8K instead of about 7K tokens/s for a tiny causal run)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel

import pretrainlab.callbacks as callbacks
from pretrainlab.callbacks import TokenThroughput

TRAIN_STEP_S, VALIDATION_STEP_S = 1.0, 5.0


class _Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class _TimedModel(BoringModel):
    """Each training step takes 1 s and each validation batch 5 s of a fake clock."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        self.clock.now += TRAIN_STEP_S
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        self.clock.now += VALIDATION_STEP_S
        return super().validation_step(batch, batch_idx)

    def count_tokens(self, batch: torch.Tensor) -> int:
        return 10


def test_the_clock_counts_training_time_after_every_validation(monkeypatch, tmp_path) -> None:
    clock = _Clock()
    monkeypatch.setattr(callbacks.time, "perf_counter", clock)
    throughput = TokenThroughput()
    trainer = pl.Trainer(
        max_steps=12,
        val_check_interval=3,
        limit_val_batches=2,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        callbacks=[throughput],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_TimedModel(clock))
    assert clock.now == 12 * TRAIN_STEP_S + 4 * 2 * VALIDATION_STEP_S  # the four validations ran
    assert throughput.tokens == 120
    assert throughput.train_seconds == 12 * TRAIN_STEP_S  # all the training, none of the validation
    assert throughput.tokens_per_second == 10.0

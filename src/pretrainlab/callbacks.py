"""Lightning callbacks of our own: only what no built-in callback measures."""

from __future__ import annotations

import csv
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint, RichProgressBar

# Defined apart (no torch there) for the entry point; raised here, importable from here too.
from pretrainlab.failures import Interrupted, NonFiniteLossError, TrainingFailure  # noqa: F401


class StopOnNonFiniteLoss(pl.Callback):
    """Stop at the first NaN/inf training loss, before it reaches the weights.

    The check runs just before ``backward``, so no update is made from the bad loss; the
    exception ends ``fit`` before any further checkpoint is written, so ``checkpoints/last.ckpt``
    stays the last good state. All ranks stop together (the decision is reduced across them).
    """

    def __init__(self) -> None:
        self._batch: Any = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._batch = batch

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        last = latest_checkpoint(trainer)
        kept = (
            f"the last good checkpoint is {last} (step {_saved_step(trainer)})"
            if last is not None
            else "no checkpoint had been saved yet"
        )
        if self._has_no_targets(pl_module):
            # A mean over no token: the settings, not the optimisation, are at fault.
            cause = (
                "its batch has no token to predict (raise objective.mask_probability, data.block_size "
                "or data.batch_size)"
            )
        else:
            cause = "try a lower optimizer.optimizer.lr, longer warm-up or trainer.precision=32-true"
        raise NonFiniteLossError(
            f"train/loss became {float(loss.detach()):g} at step {trainer.global_step}: training stopped, "
            f"{kept} ({cause})"
        )

    def _has_no_targets(self, pl_module: pl.LightningModule) -> bool:
        count = getattr(pl_module, "count_targets", None)
        if count is None or not isinstance(self._batch, dict) or "labels" not in self._batch:
            return False
        return count(self._batch) == 0


class LastCheckpoint(Checkpoint):
    """``last.ckpt``: the latest training state, whatever the validation loss does.

    Saved at the end of every validation during fit, every ``every_n_steps`` optimizer steps,
    and when the process gets SIGTERM (what clusters send before a kill or a requeue) or SIGINT
    (Ctrl-C): the run then saves at the next step boundary and stops with one line, so
    ``resume=RUN_DIR`` continues where it stopped. Saves happen only between optimizer steps,
    never inside a gradient accumulation, so a resumed run repeats nothing and skips nothing.
    Lightning's ``ModelCheckpoint`` keeps the best checkpoint; it saves ``last`` only when it
    saves a new best. Being a ``Checkpoint``, Lightning runs it after every other callback, so a
    save holds their state of the same step (tokens seen, the curve).
    """

    FILENAME = "last.ckpt"

    def __init__(self, dirpath: str, every_n_steps: int | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps or 0
        self.saved_step: int | None = None
        self._step_at_batch_start = -1
        self._signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}

    @property
    def path(self) -> Path:
        return self.dirpath / self.FILENAME

    def save(self, trainer: pl.Trainer) -> None:
        """Write last.ckpt now (all ranks take part; rank 0 writes)."""
        self.saved_step = trainer.global_step  # before saving: it is part of the saved state
        trainer.save_checkpoint(self.path)

    # -- signals --------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Ours replace Lightning's SIGTERM handler while training runs: Lightning's raises a bare
        # SystemExit (exit status 0, nothing saved) at the end of a step or inside a validation,
        # which wins whenever the signal lands after this callback's check, e.g. during a save.
        # Installed at train start, not fit start: Lightning records the handlers after fit
        # start and puts them back when fit ends, after on_train_end, where ours are undone.
        self._signal = None
        self._previous_handlers = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread: the signals keep their handlers
                break

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self._signal = self._signal or signum

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_signal_handlers()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_signal_handlers()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, err: BaseException) -> None:
        self._restore_signal_handlers()  # Lightning skips teardown hooks when fit ends in an exception

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous_handlers = {}

    # -- saving ---------------------------------------------------------------------------
    def _fitting(self, trainer: pl.Trainer) -> bool:
        return trainer.state.fn == "fit" and not trainer.sanity_checking

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if step == self._step_at_batch_start:  # inside a gradient accumulation
            return
        if getattr(trainer, "received_sigterm", False):  # Lightning's own SIGTERM flag
            self._signal = signal.SIGTERM
        stop = self._signal is not None
        if trainer.world_size > 1:  # all ranks save and stop together (the signal may reach one)
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            self._signal = self._signal or (signal.SIGTERM if stop else None)
        if stop:
            self.save(trainer)
            name = signal.Signals(self._signal).name
            raise Interrupted(
                f"{name} received: stopped after step {step}, state saved to {self.path} "
                f"(continue with resume={self.dirpath.parent})",
                self._signal,
            )
        if self.every_n_steps and step % self.every_n_steps == 0:
            self.save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Also when this step was just saved: that save preceded the validation's results.
        if self._fitting(trainer):
            self.save(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"saved_step": self.saved_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.saved_step = state_dict.get("saved_step")


def _last_checkpoint_callback(trainer: pl.Trainer) -> LastCheckpoint | None:
    return next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)


def latest_checkpoint(trainer: pl.Trainer) -> Path | None:
    """The newest ``last.ckpt`` this run holds, if one was saved."""
    callback = _last_checkpoint_callback(trainer)
    if callback is not None and callback.path.is_file():
        return callback.path
    for other in trainer.checkpoint_callbacks:  # a config without ours: Lightning's save_last
        last = getattr(other, "last_model_path", "")
        if last and Path(last).is_file():
            return Path(last)
    return None


def _saved_step(trainer: pl.Trainer) -> int | None:
    callback = _last_checkpoint_callback(trainer)
    return callback.saved_step if callback is not None else None


def logging_step(trainer: pl.Trainer, step: int) -> bool:
    """Whether values logged for optimizer step ``step`` (1-based) reach the loggers: every
    ``log_every_n_steps`` steps.

    The loggers write only these steps, so a value logged on another step would be overwritten
    by the next step's or, if that logs nothing, written late and stale. Logging only here saves
    ``self.log`` on every step (measurable for small models; see benchmarks/README.md) and writes
    each value at the step it belongs to.
    """
    return step % max(trainer.log_every_n_steps, 1) == 0


def flops_counter(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Callable[[int], float] | None:
    """``train/flops`` after a number of corpus tokens, estimated as ``metrics.json`` estimates it
    at the end (``train.bookkeeping``, the same functions), so that a logged row carries the
    compute spent so far: FLOPs are the fair x-axis across model sizes as tokens are across
    objectives. None for a module that is no pretrainlab objective, or a seq2seq run without
    pretrainlab's data module (its block length sets the encoder/decoder split).
    """
    from pretrainlab.evaluation.bookkeeping import seq2seq_token_counts, training_flops

    model, name = getattr(pl_module, "model", None), getattr(pl_module, "name", None)
    if not isinstance(model, torch.nn.Module) or not isinstance(name, str):
        return None
    if name != "seq2seq":
        return lambda tokens: training_flops(model, tokens, name)
    data = getattr(getattr(trainer, "datamodule", None), "data", None)
    settings = getattr(pl_module, "settings", None)
    try:
        block_size = int(data.block_size)
        noise, span = settings["mask_probability"], settings["mean_noise_span_length"]
    except (AttributeError, KeyError, TypeError):
        return None

    def seq2seq_flops(tokens: int) -> float:
        encoder, decoder = seq2seq_token_counts(tokens, block_size, noise, span)
        return training_flops(model, tokens, name, encoder_tokens=encoder, decoder_tokens=decoder)

    return seq2seq_flops


class TokenThroughput(pl.Callback):
    """Tokens seen and non-padding training tokens per second; ``tokens_seen`` and ``train/flops``
    on every training row the loggers write and on every validation row.

    The clock runs from the start of training and stops during validation, so the rate
    includes data loading and collation (what a user waits for) but not evaluation.
    Token counts come from the objective (``count_tokens``): padding never counts.
    """

    def __init__(self) -> None:
        self.tokens = 0
        self.train_seconds = 0.0
        self._since: float | None = None
        self._flops: Callable[[int], float] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Find how this module's FLOPs grow with tokens (fit and validate alike log rows)."""
        self._flops = flops_counter(trainer, pl_module)

    def _log_progress(self, pl_module: pl.LightningModule, **how: Any) -> None:
        """``tokens_seen`` (the W&B x-axis) and ``train/flops`` on the row being logged.

        float64: float32 (Lightning's default) counts tokens exactly only up to 2**24.
        """
        pl_module.log("tokens_seen", torch.tensor(float(self.tokens), dtype=torch.float64), **how)
        if self._flops is not None:
            flops = torch.tensor(self._flops(self.tokens), dtype=torch.float64)
            pl_module.log("train/flops", flops, **how)

    def _pause(self) -> None:
        if self._since is not None:
            self.train_seconds += time.perf_counter() - self._since
            self._since = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._since = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Every validation row (before, during and after fit) says how far training had got:
        # validations of runs with different steps per token line up on tokens.
        if not trainer.sanity_checking:
            self._log_progress(pl_module, on_step=False, on_epoch=True, batch_size=1)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A validation inside fit: the clock runs again. (`trainer.training` is still False
        # here, Lightning restores it after this hook; testing it stopped the clock for good
        # at the first validation, and the rate counted every token over the first interval's
        # time only: 5x too high at 5 validations.)
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
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
        self._log_progress(pl_module, on_step=True, on_epoch=False)
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


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, counting optimizer steps towards ``trainer.max_steps``.

    A run is budgeted in steps (``max_epochs=-1``), and an epoch of packed blocks is an accident
    of the corpus size: Lightning's own bar read "Epoch 0/-2" and restarted at every epoch. This
    one reads ``step  120/300`` for the whole run, resumed runs included (it starts at the
    restored step). Where no step budget is set it falls back to Lightning's epochs.
    """

    DESCRIPTION = "step"

    def _counts_steps(self) -> bool:
        return self.trainer.max_steps is not None and self.trainer.max_steps > 0

    @property
    def total_train_batches(self) -> int | float:
        """The bar's total: the step budget, not the batches of one epoch."""
        return self.trainer.max_steps if self._counts_steps() else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if not self._counts_steps():
            return super()._get_train_description(current_epoch)
        # As wide as "Validation", so the two bars' columns line up.
        return f"{self.DESCRIPTION:{max(len(self.DESCRIPTION), len(self.validation_description))}}"

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """One bar for the whole run: a new epoch neither resets it nor starts another."""
        if not self._counts_steps() or self.train_progress_bar_id is None:
            super().on_train_epoch_start(trainer, pl_module)
        if self._counts_steps():
            self._update(self.train_progress_bar_id, trainer.global_step)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Advance to the optimizer step reached (not the batch within the epoch)."""
        if not self._counts_steps():
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()

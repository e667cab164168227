"""A callback that SIGKILLs its own process after the step named by $KILL_AT_STEP.

Used by the resume test to interrupt a run the hard way; with the variable unset it does
nothing, so the interrupted and the resumed run have the same config.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytorch_lightning as pl


class KillAtStep(pl.Callback):
    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == int(os.environ.get("KILL_AT_STEP", "-1")):
            os.kill(os.getpid(), signal.SIGKILL)

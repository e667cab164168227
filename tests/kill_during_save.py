"""Kill the process in the middle of writing a checkpoint or the model export (test helper).

Loaded as a callback (``+callbacks.killer._target_=kill_during_save.KillDuringSave``) so that
it runs inside ``pretrainlab-train``; constructing it installs the fault named by
$KILL_DURING_SAVE, and with the variable unset it does nothing (so a resumed run has the
same config as the killed one):

* ``last:N`` - the N-th save of ``last.ckpt`` writes half of its bytes to wherever it was
  told to write, then the process is SIGKILLed;
* ``export`` - the model export writes its files, the weights file is cut in half, then the
  process is SIGKILLed.

A save that writes straight into ``last.ckpt`` or ``hf/`` leaves a truncated file behind; an
atomic one leaves the previous complete version (or nothing).
"""

from __future__ import annotations

import io
import itertools
import os
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from transformers import PreTrainedModel


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillDuringSave(pl.Callback):
    def __init__(self) -> None:
        fault = os.environ.get("KILL_DURING_SAVE", "")
        if fault.startswith("last:"):
            _kill_in_nth_last_checkpoint(int(fault.split(":", 1)[1]))
        elif fault == "export":
            _kill_in_export()


def _kill_in_nth_last_checkpoint(n: int) -> None:
    real_save = torch.save
    count = itertools.count(1)

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        name = str(getattr(f, "name", f))
        if "last.ckpt" not in name or next(count) < n:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        if hasattr(f, "write"):
            f.write(data[: len(data) // 2])
            f.flush()
        else:
            Path(f).write_bytes(data[: len(data) // 2])
        _die()

    torch.save = save


def _kill_in_export() -> None:
    real_save_pretrained = PreTrainedModel.save_pretrained

    def save_pretrained(self: PreTrainedModel, folder: Any, *args: Any, **kwargs: Any) -> None:
        real_save_pretrained(self, folder, *args, **kwargs)
        weights = max(Path(folder).glob("*.safetensors"), key=lambda p: p.stat().st_size)
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
        _die()

    PreTrainedModel.save_pretrained = save_pretrained

"""Checkpoints written so that a kill at any moment never leaves a truncated one behind.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction, which stages a local
file with ``tempfile.mkstemp`` in the system temp folder and moves it into place on commit.
When that folder is on another file system than the run (a node-local /tmp and a shared
run folder, as on most clusters) the move is a copy, and a kill during the copy leaves half a
``last.ckpt`` that ``resume=`` would then try to load. Here the temporary file lives next to
its target, is flushed to disk, and replaces the target with one ``os.replace``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are all-or-nothing on a local file system.

    Remote URLs (``s3://``, ...) keep Lightning's own path; object stores write whole objects.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        """Write under a temporary name in the same folder, fsync, then rename over ``path``."""
        if "://" in str(path) or storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        remove_stale_temporaries(path)


def remove_stale_temporaries(path: Path) -> None:
    """Delete what killed saves left next to ``path`` (a checkpoint file or its folder):
    ``.<name>.<pid>.tmp`` of processes that no longer run, whatever the checkpoint's name (a
    killed ``best-4.ckpt`` save is never repeated under that name). A temporary of a live
    process (a save in progress) is left alone."""
    folder = path if path.is_dir() else path.parent
    for stale in folder.glob(".*.tmp"):
        pid = stale.name[: -len(".tmp")].rsplit(".", 1)[-1]
        if pid.isdigit() and not _running(int(pid)):
            stale.unlink(missing_ok=True)


def remove_stale_checkpoint_temporaries(trainer: Any) -> None:
    """At the start of a run, fresh or resumed: clear what killed saves left in every checkpoint
    folder of ``trainer``, before anything trains; otherwise a leftover stays until the next
    save of the same file, which may never come. Remote folders (``s3://``, ...) are skipped."""
    for callback in trainer.checkpoint_callbacks:
        dirpath = getattr(callback, "dirpath", None)
        if dirpath and "://" not in str(dirpath) and Path(dirpath).is_dir():
            remove_stale_temporaries(Path(dirpath))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True

"""Hydra callbacks: checks that must run before Hydra writes into the run folder."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

# Any of these in a folder means a run lives there.
RUN_MARKERS = (".hydra", "metrics.json", "checkpoints", "hf")


def is_run_dir(folder: Path) -> bool:
    """A folder that holds (part of) an earlier run."""
    return any((folder / marker).exists() for marker in RUN_MARKERS)


def claim_run_dir(folder: Path, alternatives: bool) -> Path | None:
    """Take ``folder`` for a new run, atomically; with ``alternatives``, the first free of
    ``folder``, ``folder-1``, ``folder-2``, ... None if it (and no alternative) is free.

    The claim is the creation of the folder's ``.hydra/`` (where Hydra then saves the config),
    which succeeds for exactly one process: two runs started in the same second, whose default
    folders have the same name, get different folders instead of sharing one.
    """
    for n in range(1000 if alternatives else 1):
        candidate = folder if n == 0 else folder.with_name(f"{folder.name}-{n}")
        if is_run_dir(candidate):
            continue
        candidate.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(candidate / ".hydra")
        except FileExistsError:  # another run claimed it since the check
            continue
        return candidate
    return None


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def first_difference(
    old: Any, new: Any, path: str = "", tolerate: Callable[[str, bool, Any], bool] | None = None
) -> str | None:
    """The first key (dotted) whose value differs between two plain configs, else None.
    ``tolerate(key, in_old, value)`` may excuse a key only one side has (``in_old``: the old one)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                if tolerate is not None and tolerate(where, key in old, old[key] if key in old else new[key]):
                    continue
                return where
            found = first_difference(old[key], new[key], where, tolerate)
            if found is not None:
                return found
        return None
    return None if old == new else f"{path} ({old!r} -> {new!r})"


class RunDirGuard(Callback):
    """Refuse to start a run whose folder already holds one: nothing the user had is overwritten.

    Hydra writes ``.hydra/`` into the run folder before the task starts, so the check cannot
    live in the task function; ``on_run_start`` runs before that write.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from pretrainlab.distributed import is_rank_zero

        if not is_rank_zero():  # another rank of a DDP/FSDP run: rank 0 checked this folder
            return
        if config.get("resume") is not None:
            self._check_resume(config)
            return
        folder = Path(str(OmegaConf.select(config, "hydra.run.dir")))
        # A folder the user named is theirs to choose again; the default (a timestamp) is ours.
        chosen = any(o.startswith("hydra.run.dir=") for o in config.hydra.overrides.hydra)
        try:
            claimed = claim_run_dir(folder, alternatives=not chosen)
        except OSError as err:  # a read-only parent, a file where a folder should be, a full disk
            _refuse(f"hydra.run.dir={folder}: cannot be created ({err.strerror or type(err).__name__})")
        if claimed is None:
            _refuse(f"hydra.run.dir={folder}: holds an earlier run; choose a new folder")
        # Resolved once: the default's ${now:...} read again by Hydra could name another second.
        with read_write(config.hydra.run), open_dict(config.hydra.run):
            config.hydra.run.dir = str(claimed)

    @staticmethod
    def _check_resume(config: DictConfig) -> None:
        """A resumed run must be the same run: its settings are compared before Hydra
        overwrites the folder's saved config with the new one."""
        folder = Path(config.resume)
        saved = folder / ".hydra" / "config.yaml"
        if not saved.is_file() or not (folder / "checkpoints" / "last.ckpt").is_file():
            _refuse(f"resume={folder}: not a run folder with .hydra/config.yaml and checkpoints/last.ckpt")
        old = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
        new = OmegaConf.to_container(config, resolve=False)
        new.pop("hydra", None)
        for cfg in (old, new):
            cfg.pop("resume", None)
        from pretrainlab.validation import one_sided_setting_is_harmless

        # A key added or removed since the run was saved, whose absence meant what it holds now.
        difference = first_difference(
            old, new, tolerate=lambda *one_sided: one_sided_setting_is_harmless(config, folder, *one_sided)
        )
        if difference is not None:
            _refuse(
                f"resume={folder}: setting {difference} differs from the interrupted run; "
                f"repeat its overrides (see {folder / '.hydra' / 'overrides.yaml'})"
            )

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
        if folder.is_dir() and any(is_run_dir(child) for child in folder.iterdir() if child.is_dir()):
            _refuse(f"hydra.sweep.dir={folder}: holds an earlier sweep; choose a new folder")

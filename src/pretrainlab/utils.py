"""Small helpers shared by the entry points."""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# `PRETRAINLAB_PRINT_CONFIG=1`: also print the config tree at the start of a run (it always goes to
# the run folder's config_tree.log).
PRINT_CONFIG_VARIABLE = "PRETRAINLAB_PRINT_CONFIG"


def write_text_atomic(path: Path, text: str) -> None:
    """Write under a temporary name, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # open() (not mkstemp, which makes 0600 files) so the file gets the usual permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_dir_atomic(target: Path, write: Callable[[Path], None], *, replace: bool = False) -> None:
    """Fill a folder under a temporary name next to ``target``, then rename it into place.

    A crash or kill at any point leaves either no ``target`` or a complete one, never half of
    one. ``replace=False`` (caches): a ``target`` that appeared meanwhile, written by a
    concurrent job, is kept. ``replace=True`` (exports): an existing ``target`` is swapped with
    the new folder in one step (Linux ``renameat2(RENAME_EXCHANGE)``), so a complete ``target``
    (the old one, then the new one) exists at every moment; the old one, now under the
    temporary name, is deleted afterwards. Where the exchange is unavailable (not Linux, glibc
    before 2.28, a file system that answers EINVAL such as some network ones) it falls back to
    two renames, the old folder aside and the new one in: a kill between those two leaves no
    ``target``, only ``.<name>-old-*`` (complete) next to it, which the next export removes.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if replace:  # an export has one writer: any earlier temporary is what a killed write left
        for stale in target.parent.glob(f".{target.name}-*"):
            _remove(stale)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide an export from the user's group
    old: Path | None = None
    try:
        write(tmp)
        if replace and os.path.lexists(target):
            if _exchange(tmp, target):
                return  # `tmp` now holds the old folder: removed below
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-old-"))
            os.replace(target, old)
        os.replace(tmp, target)
    except OSError:
        if replace or not target.exists():  # a concurrent job may have won the race; its copy is as good
            raise
    finally:
        _remove(tmp)
        if old is not None:
            _remove(old)


# renameat2(2) arguments: relative paths resolve against the working directory; swap the two.
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# What renameat2 answers where the exchange cannot be done: a file system without it (EINVAL,
# EOPNOTSUPP), a kernel without the call (ENOSYS).
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


@functools.cache
def _libc_renameat2() -> Callable[..., int] | None:
    """libc's ``renameat2`` (glibc >= 2.28), or None where there is no such function."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False (nothing changed) where the system or
    file system cannot, so the caller falls back to renames. Other failures raise OSError."""
    renameat2 = _libc_renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _remove(path: Path) -> None:
    """Delete a folder (or whatever a swap left under its name); missing is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """metrics.json and friends: pretty JSON, replaced in one step."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """One JSON object per line (samples.jsonl), replaced in one step."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def print_config_tree(cfg: DictConfig, save_to: Path | None = None, *, echo: bool | None = None) -> None:
    """Keep the resolved config, as a tree, in the run folder; print it only when asked.

    The tree is ~130 lines: printed at every start it buried what a run has to say, so by default
    it only goes to ``save_to`` (``config_tree.log``). ``echo`` (default: the environment variable
    ``PRETRAINLAB_PRINT_CONFIG`` set to 1/true/yes) prints it too.
    """
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        branch = tree.add(str(key), style="bold")
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        branch.add(Syntax(text, "yaml", theme="ansi_dark"))
    if echo is None:
        echo = os.environ.get(PRINT_CONFIG_VARIABLE, "").strip().lower() in ("1", "true", "yes")
    if echo:
        Console().print(tree)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        with open(save_to, "w", encoding="utf-8") as f:
            Console(file=f, width=120, color_system=None).print(tree)


def finish_wandb() -> None:
    """Close the W&B run, so the next job of a multirun starts its own; a no-op when W&B was never
    imported (the entry point calls this after every job, and must not import W&B for it)."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


# Messages of the libraries underneath that tell a pretrainlab user nothing they can act on, by
# the logger that emits them: Lightning's advertisements for its cloud products (at every start)
# and its note on every checkpoint save that it keeps the full training state (what resuming needs).
THIRD_PARTY_NOISE = {
    "pytorch_lightning.utilities.rank_zero": ("💡 Tip:",),
    "lightning_fabric.utilities.rank_zero": ("💡 Tip:",),
    "pytorch_lightning.trainer.connectors.checkpoint_connector": ("`weights_only` was not set",),
}
THIRD_PARTY_WARNINGS = (
    # torch 2.13 deprecates LeafSpec, which Lightning 2.6's utilities/_pytree.py still uses.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # torch.load's notes on its `weights_only` default: pretrainlab loads only checkpoints its own
    # runs wrote (and passes weights_only=True where it calls torch.load itself).
    r".*`?weights_only`?",
    # A streamed corpus's data set (data/streaming.py) has the run's exact batch count as its
    # length, each DataLoader worker cutting its own shard: the case the warning is about.
    r"Your `IterableDataset` has `__len__` defined",
    # Said on every resume: pretrainlab's training stream resumes by itself (the batch number, or
    # a streamed corpus's positions in the checkpoint; tests/test_resume_exact.py, test_streaming.py).
    r"You're resuming from a checkpoint that ended before the epoch ended",
)


class _DropMessages(logging.Filter):
    """Drops the log records whose message starts with one of ``prefixes``; the rest pass."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_third_party() -> None:
    """Silence the known third-party noise of a run (``THIRD_PARTY_NOISE``, ``THIRD_PARTY_WARNINGS``).

    Why: a run's output should be what pretrainlab and the user's settings have to say; tips and
    deprecation notices repeat on every start and bury it. Only those messages are dropped: other
    warnings, and everything pretrainlab logs, still appear. Calling it again changes nothing.
    """
    for name, prefixes in THIRD_PARTY_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(prefixes))
    for message in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)

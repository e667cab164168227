"""Small helpers shared by the entry points."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree


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
    concurrent job, is kept. ``replace=True`` (exports): an existing ``target`` is moved aside
    and deleted only once the new one is in place.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if replace:  # an export has one writer: any earlier temporary is what a killed write left
        for stale in target.parent.glob(f".{target.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide an export from the user's group
    old: Path | None = None
    try:
        write(tmp)
        if replace and target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-old-"))
            os.replace(target, old)
        os.replace(tmp, target)
    except OSError:
        if replace or not target.exists():  # a concurrent job may have won the race; its copy is as good
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """metrics.json and friends: pretty JSON, replaced in one step."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """One JSON object per line (samples.jsonl), replaced in one step."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def print_config_tree(cfg: DictConfig, save_to: Path | None = None) -> None:
    """Show the resolved config as a rich tree, and keep a copy in the run folder."""
    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        branch = tree.add(str(key), style="bold")
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        branch.add(Syntax(text, "yaml", theme="ansi_dark"))
    Console().print(tree)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        with open(save_to, "w", encoding="utf-8") as f:
            Console(file=f, width=120, color_system=None).print(tree)

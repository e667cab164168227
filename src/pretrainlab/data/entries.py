"""Cache entries: folders built once from the entries they derive from, each with a manifest,
checked when first used in a process and rebuilt when damaged (see ``manifest.py``).

A data module describes its stages as ``Entry`` objects (corpus -> tokenized documents ->
blocks); ``CacheEntries`` makes each present and sound, once per process, under a lock, so
concurrent jobs on one cache build an entry once and never read a half-written one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pretrainlab.data import manifest
from pretrainlab.utils import write_dir_atomic

log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True)
class Entry:
    """One cache folder: how to write it, and the entries it is built from."""

    folder: Path
    write: Callable[[Path], None]
    sources: tuple[Entry, ...] = ()


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class CacheEntries:
    """The entries checked (or built) in this process, with their manifest digests.

    ``verify``: hash every file of an entry when checking it, however large (``data.verify_cache``).
    """

    def __init__(self, verify: bool = False) -> None:
        self.verify = verify
        self.ready: dict[Path, str | None] = {}  # entry folder -> its manifest digest
        self.built: list[Path] = []  # entries built or rebuilt here

    def _hashes(self) -> bool | None:
        """Hash every file on load when asked to, else when the entry is small (manifest.py)."""
        return True if self.verify else None

    def _sources(self, entry: Entry) -> dict[str, str | None]:
        return {source.folder.name: self.ready.get(source.folder) for source in entry.sources}

    def ensure(self, entry: Entry) -> str | None:
        """Make ``entry`` present and undamaged, once per process; returns its digest."""
        if entry.folder in self.ready:
            return self.ready[entry.folder]
        for source in entry.sources:
            self.ensure(source)
        seen = manifest.identity(entry.folder)
        problem = None
        if seen is not None:
            problem = manifest.check_manifest(entry.folder, self._hashes(), self._sources(entry))
        if seen is None or problem is not None:
            self._build(entry, problem, seen)
        self.ready[entry.folder] = manifest.digest(entry.folder)
        return self.ready[entry.folder]

    def load(self, entry: Entry, load: Callable[[], _T]) -> _T:
        """``load()`` from a checked entry; when it fails anyway (damage the check on load did
        not look for, or a concurrent rebuild), the entry is verified with hashes and rebuilt."""
        self.ensure(entry)
        seen = manifest.identity(entry.folder)
        try:
            return load()
        except Exception as err:  # datasets, pyarrow, json and tokenizers raise all sorts
            reason = f"fails to load: {type(err).__name__}: {err}"
        problem = manifest.check_manifest(entry.folder, True, self._sources(entry)) or reason
        self._build(entry, problem, seen)
        return load()

    def _build(self, entry: Entry, problem: str | None, seen: tuple[int, int] | None) -> None:
        """Build a missing entry (``problem`` None) or rebuild a damaged one, with one warning.

        Under the entry's lock: a job that waited finds what another one built meanwhile (a
        folder other than the one it judged, ``seen``), checks it and keeps it if it is sound.
        A damaged entry is renamed away before the new one is written (``manifest.discard``);
        the new one is renamed into place complete, its manifest written last inside it.
        """
        with manifest.entry_lock(entry.folder):
            now = manifest.identity(entry.folder)
            if now != seen:
                if now is None:
                    problem = None
                else:
                    problem = manifest.check_manifest(entry.folder, self._hashes(), self._sources(entry))
                    if problem is None:
                        return
            if problem is not None:
                log.warning("cache: %s is damaged (%s); rebuilding", entry.folder, _one_line(problem))
                manifest.discard(entry.folder)

            def write(tmp: Path) -> None:
                entry.write(tmp)
                manifest.write_manifest(tmp, self._sources(entry))  # last: complete with it

            write_dir_atomic(entry.folder, write)
        self.built.append(entry.folder)
        before, self.ready[entry.folder] = self.ready.get(entry.folder), manifest.digest(entry.folder)
        if before is not None and before != self.ready[entry.folder]:
            # Other content: what was built from it must be checked against it again.
            keep = self._closure(entry)
            self.ready = {folder: d for folder, d in self.ready.items() if folder in keep}

    def _closure(self, entry: Entry) -> set[Path]:
        """The entry's folder and those of everything it is built from."""
        return {entry.folder}.union(*(self._closure(source) for source in entry.sources))

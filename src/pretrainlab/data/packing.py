"""Tokenize documents and pack them into fixed blocks, identically for every objective.

Packing concatenates documents (each followed by eos) and cuts the stream into blocks of
``block_size`` tokens, so no position of a batch is padding. Unlike the ``group_texts``
recipe of transformers' examples, which drops a remainder at the end of every map batch,
the stream is cut in one pass: every document token lands in exactly one block, except the
final partial block, which is dropped.

Both stages work on whole batches: tokenization runs in ``num_proc`` processes
(``datasets.map``, contiguous shards concatenated in order, so the result does not depend on
the process count) and builds each batch's ids as one Arrow array; packing reads the
documents as Arrow batches and cuts blocks with array slicing, writing them as they are cut.
No Python loop runs per token, and no stage holds more than a batch in memory.

For whole-word masking a ``word_start`` column travels beside the ids (one flag per token,
see ``pretrainlab.data.words``); it is computed only when asked for.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.arrow_writer import ArrowWriter
from datasets.table import InMemoryTable, table_cast
from transformers import PreTrainedTokenizerBase

from pretrainlab.data import words
from pretrainlab.data.corpus import TEXT

IDS = "input_ids"
WORD_START = "word_start"
_FEATURES = {IDS: datasets.Value("int32"), WORD_START: datasets.Value("bool")}
# Below this many documents per process a worker's start-up (fork, pickled tokenizer, its own
# cache file) costs more than it saves: small corpora, the tests' among them, stay in one process.
MIN_DOCUMENTS_PER_PROCESS = 10_000
# Documents read per batch when packing (about 1M tokens of the built-in corpus's length).
_PACK_READ_DOCUMENTS = 10_000


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under taskset or a container's
    cpuset), which can be fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_count(num_proc: int | None, documents: int) -> int:
    """Processes to tokenize ``documents`` with: ``num_proc`` (None: the usable cores), but no
    more than one per ``MIN_DOCUMENTS_PER_PROCESS`` documents, and at least one.

    The count never shapes the result (shards are contiguous and concatenated in order), so it
    is not part of any cache key. A daemonic process (a worker of some launchers' pools) may not
    start processes of its own: it tokenizes alone.
    """
    if multiprocessing.current_process().daemon:
        return 1
    wanted = usable_cores() if num_proc is None else num_proc
    return max(1, min(wanted, documents // MIN_DOCUMENTS_PER_PROCESS))


@contextlib.contextmanager
def _single_threaded_tokenizers() -> Iterator[None]:
    """Forked workers each run one thread: a worker inheriting a used thread pool would print
    `tokenizers`' fork warning (and the cores are already taken by the workers)."""
    if "TOKENIZERS_PARALLELISM" in os.environ:
        yield
        return
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)


def encoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[str]], list[list[int]]]:
    """Token ids of a batch of texts, no special tokens.

    A fast tokenizer is called through its Rust backend (``encode_batch_fast``: no offsets, no
    attention masks or type ids built as Python lists), which gives the ids ``tokenizer(...)``
    gives as long as the backend pads, truncates and splits special tokens as that call would
    (not at all); otherwise, or for a slow tokenizer, through ``tokenizer(...)`` itself.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
    if (
        backend is not None
        and backend.truncation is None
        and backend.padding is None
        and not getattr(tokenizer, "split_special_tokens", False)
        and not getattr(backend, "encode_special_tokens", False)
    ):
        encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return lambda texts: [e.ids for e in encode_batch(texts, add_special_tokens=False)]
    return lambda texts: tokenizer(texts, add_special_tokens=False)[IDS]


def with_eos(docs: list[list[int]], eos: int) -> pa.Array:
    """The documents' ids with ``eos`` appended to each, as one Arrow list array of int32."""
    ids = pa.array(docs, type=pa.list_(pa.int32()))
    lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64) + 1
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.full(int(offsets[-1]), eos, dtype=np.int32)
    text = np.ones(len(values), dtype=bool)
    text[offsets[1:] - 1] = False  # the last position of every document: its eos
    values[text] = pc.list_flatten(ids).to_numpy(zero_copy_only=False)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))


def tokenize(
    ds: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    num_proc: int | None = None,
    word_segmenter: str | None = None,
) -> datasets.Dataset:
    """Token ids per document with eos appended; no [CLS]/[SEP] (blocks span documents).

    ``num_proc`` > 1 tokenizes contiguous shards in that many processes; the documents come
    out in the same order either way (``worker_count`` picks it for a corpus). With
    ``word_segmenter`` (whole-word masking) also a ``word_start`` flag per token, the eos
    included (it starts a "word" of its own); the ids are the same either way.
    """
    eos = tokenizer.eos_token_id
    continues = words.continuation_table(tokenizer) if word_segmenter else None
    encode_ids = encoder(tokenizer)

    def encode(batch: dict[str, list[str]]) -> pa.Table:
        return pa.table({IDS: with_eos(encode_ids(batch[TEXT]), eos)})

    def encode_words(batch: dict[str, list[str]]) -> dict[str, list[list[Any]]]:
        enc = tokenizer(batch[TEXT], add_special_tokens=False, return_offsets_mapping=True)
        out: dict[str, list[list[Any]]] = {IDS: [doc + [eos] for doc in enc[IDS]], WORD_START: []}
        # Looked up by name inside the worker: the closure stays picklable and hashable.
        cut = words.segmenter(word_segmenter)
        for text, ids, offsets in zip(batch[TEXT], enc[IDS], enc["offset_mapping"], strict=True):
            spans = np.array(offsets, dtype=np.int64).reshape(-1, 2)
            flags = words.word_starts(text, spans, continues[ids], cut)
            out[WORD_START].append([*flags.tolist(), True])  # eos: a word of its own
        return out

    parallel = num_proc is not None and num_proc > 1
    with _single_threaded_tokenizers() if parallel else contextlib.nullcontext():
        return ds.map(
            encode_words if word_segmenter else encode,
            batched=True,
            remove_columns=ds.column_names,
            num_proc=num_proc if parallel else None,
            features=_features([IDS, WORD_START] if word_segmenter else [IDS]),
            desc="tokenize + segment" if word_segmenter else "tokenize",
        )


def _features(columns: list[str]) -> datasets.Features:
    return datasets.Features({c: datasets.Sequence(_FEATURES[c]) for c in columns})


def pack_tables(docs: datasets.Dataset, block_size: int) -> Iterator[pa.Table]:
    """The blocks as Arrow tables, one per batch of documents read, in order.

    The documents of a batch are flattened into one array behind the tokens left over from the
    last batch (fewer than a block), and every whole block of it is cut by slicing; the rest is
    carried on. ``word_start`` is set on each block's first token (a word cut by the boundary
    starts again there).
    """
    columns = docs.column_names
    carry: dict[str, np.ndarray] = {}
    for batch in docs.with_format("arrow").iter(batch_size=_PACK_READ_DOCUMENTS):
        stream = {}
        for c in columns:
            flat = pc.list_flatten(batch[c]).to_numpy()
            stream[c] = np.concatenate([carry[c], flat]) if c in carry else flat
        cut = len(stream[IDS]) - len(stream[IDS]) % block_size
        if cut:
            offsets = pa.array(np.arange(0, cut + 1, block_size, dtype=np.int32))
            out = {}
            for c in columns:
                values = stream[c][:cut]
                if c == WORD_START:
                    values = values.copy()
                    values[::block_size] = True
                out[c] = pa.ListArray.from_arrays(offsets, pa.array(values))
            yield pa.table(out)
        carry = {c: stream[c][cut:].copy() for c in columns}


def pack(docs: datasets.Dataset, block_size: int, path: str | Path | None = None) -> datasets.Dataset:
    """Fixed blocks of ``block_size`` tokens cut from the concatenated documents.

    Every column of ``docs`` (the ids, and ``word_start`` when present) is cut at the same
    places. With ``path`` the blocks are written to that Arrow file as they are cut and the
    result is memory-mapped from it; without, they are kept in memory (small inputs). The
    caller checks that the documents hold at least one block (``count_tokens``).
    """
    features = _features(docs.column_names)
    if path is None:
        tables = [table_cast(t, features.arrow_schema) for t in pack_tables(docs, block_size)]
        table = pa.concat_tables(tables) if tables else features.arrow_schema.empty_table()
        return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=features))
    with ArrowWriter(features=features, path=str(path)) as writer:
        for table in pack_tables(docs, block_size):
            writer.write_table(table)
        writer.finalize()
    return datasets.Dataset.from_file(str(path))


def truncate(docs: datasets.Dataset, block_size: int) -> datasets.Dataset:
    """One document per example, cut to ``block_size`` (the classic per-document recipe)."""
    return docs.map(
        lambda batch: {c: [values[:block_size] for values in batch[c]] for c in batch},
        batched=True,
        desc="truncate",
    )


def same_ids(a: datasets.Dataset, b: datasets.Dataset) -> bool:
    """Whether two tokenized splits hold the same documents of the same ids (whatever int type)."""
    cols = [ds.with_format("arrow")[IDS].combine_chunks() for ds in (a, b)]
    lengths = [pc.list_value_length(c).to_numpy(zero_copy_only=False) for c in cols]
    values = [pc.list_flatten(c).to_numpy(zero_copy_only=False) for c in cols]
    return np.array_equal(*lengths) and np.array_equal(*values)


def count_tokens(ds: datasets.Dataset) -> int:
    """Total tokens in a split; a packed split of n blocks holds n * block_size.

    Summed from the lists' lengths batch by batch: only the offsets are read, not the ids.
    """
    return sum(
        int(pc.sum(pc.list_value_length(batch[IDS])).as_py() or 0)
        for batch in ds.with_format("arrow").iter(batch_size=100_000)
    )

"""Tokenize documents and pack them into fixed blocks, identically for every objective.

Packing concatenates documents (each followed by eos) and cuts the stream into blocks of
``block_size`` tokens, so no position of a batch is padding. Unlike the ``group_texts``
recipe of transformers' examples, which drops a remainder at the end of every map batch,
the stream is cut in one pass: every document token lands in exactly one block, except the
final partial block, which is dropped.

For whole-word masking a ``word_start`` column travels beside the ids (one flag per token,
see ``pretrainlab.data.words``); it is computed only when asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
from transformers import PreTrainedTokenizerBase

from pretrainlab.data import words
from pretrainlab.data.corpus import TEXT

IDS = "input_ids"
WORD_START = "word_start"
_FEATURES = {IDS: datasets.Value("int32"), WORD_START: datasets.Value("bool")}


def tokenize(
    ds: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    num_proc: int | None = None,
    word_segmenter: str | None = None,
) -> datasets.Dataset:
    """Token ids per document with eos appended; no [CLS]/[SEP] (blocks span documents).

    With ``word_segmenter`` (whole-word masking) also a ``word_start`` flag per token, the
    eos included (it starts a "word" of its own); the ids are the same either way.
    """
    eos = tokenizer.eos_token_id
    continues = words.continuation_table(tokenizer) if word_segmenter else None

    def encode(batch: dict[str, list[str]]) -> dict[str, list[list[Any]]]:
        enc = tokenizer(batch[TEXT], add_special_tokens=False, return_offsets_mapping=bool(word_segmenter))
        out: dict[str, list[list[Any]]] = {IDS: [doc + [eos] for doc in enc[IDS]]}
        if word_segmenter:
            # Looked up by name inside the worker: the closure stays picklable and hashable.
            cut = words.segmenter(word_segmenter)
            out[WORD_START] = []
            for text, ids, offsets in zip(batch[TEXT], enc[IDS], enc["offset_mapping"], strict=True):
                spans = np.array(offsets, dtype=np.int64).reshape(-1, 2)
                flags = words.word_starts(text, spans, continues[ids], cut)
                out[WORD_START].append([*flags.tolist(), True])  # eos: a word of its own
        return out

    return ds.map(
        encode,
        batched=True,
        remove_columns=ds.column_names,
        num_proc=num_proc,
        features=_features([IDS, WORD_START]) if word_segmenter else None,
        desc="tokenize + segment" if word_segmenter else "tokenize",
    )


def _features(columns: list[str]) -> datasets.Features:
    return datasets.Features({c: datasets.Sequence(_FEATURES[c]) for c in columns})


def _blocks(docs: datasets.Dataset, block_size: int) -> Iterator[dict[str, list[Any]]]:
    columns = docs.column_names
    buffers: dict[str, list[Any]] = {c: [] for c in columns}
    for batch in docs.iter(batch_size=1000):
        for c in columns:
            for values in batch[c]:
                buffers[c].extend(values)
        length = len(buffers[IDS])
        cut = length - length % block_size
        for start in range(0, cut, block_size):
            block = {c: buffers[c][start : start + block_size] for c in columns}
            if WORD_START in block:
                block[WORD_START][0] = True  # a word cut by the block boundary starts again here
            yield block
        buffers = {c: buffers[c][cut:] for c in columns}


def pack(docs: datasets.Dataset, block_size: int, cache_dir: str | None = None) -> datasets.Dataset:
    """Fixed blocks of ``block_size`` tokens cut from the concatenated documents.

    Every column of ``docs`` (the ids, and ``word_start`` when present) is cut at the same
    places. The caller checks that the documents hold at least one block (``count_tokens``).
    """
    return datasets.Dataset.from_generator(
        _blocks,
        gen_kwargs={"docs": docs, "block_size": block_size},
        features=_features(docs.column_names),
        cache_dir=cache_dir,
    )


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
    """Total tokens in a split; a packed split of n blocks holds n * block_size."""
    return sum(len(ids) for batch in ds.iter(batch_size=10_000) for ids in batch[IDS])

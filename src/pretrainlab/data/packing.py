"""Tokenize documents and pack them into fixed blocks, identically for every objective.

Packing concatenates documents (each followed by eos) and cuts the stream into blocks of
``block_size`` tokens, so no position of a batch is padding. Unlike the ``group_texts``
recipe of transformers' examples, which drops a remainder at the end of every map batch,
the stream is cut in one pass: every document token lands in exactly one block, except the
final partial block, which is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator

import datasets
from transformers import PreTrainedTokenizerBase

from pretrainlab.data.corpus import TEXT

IDS = "input_ids"


def tokenize(
    ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, num_proc: int | None = None
) -> datasets.Dataset:
    """Token ids per document with eos appended; no [CLS]/[SEP] (blocks span documents)."""
    eos = tokenizer.eos_token_id

    def encode(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        ids = tokenizer(batch[TEXT], add_special_tokens=False)[IDS]
        return {IDS: [doc + [eos] for doc in ids]}

    return ds.map(encode, batched=True, remove_columns=ds.column_names, num_proc=num_proc, desc="tokenize")


def _blocks(docs: datasets.Dataset, block_size: int) -> Iterator[dict[str, list[int]]]:
    buffer: list[int] = []
    for batch in docs.iter(batch_size=1000):
        for ids in batch[IDS]:
            buffer.extend(ids)
        cut = len(buffer) - len(buffer) % block_size
        for start in range(0, cut, block_size):
            yield {IDS: buffer[start : start + block_size]}
        buffer = buffer[cut:]


def pack(docs: datasets.Dataset, block_size: int, cache_dir: str | None = None) -> datasets.Dataset:
    """Fixed blocks of ``block_size`` tokens cut from the concatenated documents.

    The caller checks that the documents hold at least one block (``count_tokens``).
    """
    features = datasets.Features({IDS: datasets.Sequence(datasets.Value("int32"))})
    return datasets.Dataset.from_generator(
        _blocks, gen_kwargs={"docs": docs, "block_size": block_size}, features=features, cache_dir=cache_dir
    )


def truncate(docs: datasets.Dataset, block_size: int) -> datasets.Dataset:
    """One document per example, cut to ``block_size`` (the classic per-document recipe)."""
    return docs.map(
        lambda batch: {IDS: [ids[:block_size] for ids in batch[IDS]]}, batched=True, desc="truncate"
    )


def count_tokens(ds: datasets.Dataset) -> int:
    """Total tokens in a split; a packed split of n blocks holds n * block_size."""
    return sum(len(ids) for batch in ds.iter(batch_size=10_000) for ids in batch[IDS])

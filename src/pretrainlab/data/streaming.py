"""Training blocks cut while the model trains (``data.streaming=true``), for corpora that do not fit.

The corpus is a ``datasets.IterableDataset`` (``corpus.stream_corpus``). Its first
``data.validation_documents`` documents are the validation split and the tokenizer's sample,
cached like any corpus's; the documents after them are read, tokenized and packed into
blocks on the fly, as ``packing.pack`` would cut them, by the process and worker that trains
on them.

Sharding: with P processes and W DataLoader workers each there are S = P * W shards;
document i of the training stream belongs to shard i mod S (``split_dataset_by_node`` with
the "examples" strategy: splitting by file would make a shard's documents, and so the order,
depend on how the files fall). Each shard reads the stream and tokenizes only its own
documents, so no block is trained twice. Batch b of a process comes from its shard b mod W,
the order in which a DataLoader takes its workers' batches.

Order: each shard cuts ``data.shuffle_window`` blocks at a time and visits them in an order
seeded by (seed, shard, epoch, window); 1 keeps the corpus order. At the end of the stream a
shard starts its next epoch from the first document.

Resume: every batch carries its shard's position after it (where the window it came from
starts: the stream's own ``state_dict`` and a token offset; and how many of the window's
blocks are done). The data module keeps the positions of the batches trained
and saves them in the checkpoint, so a resumed run rebuilds that window and goes on with the
next block: the batches, their masks included (seeded by batch number), are the ones an
uninterrupted run trains on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
from datasets.distributed import split_dataset_by_node
from torch.utils.data import IterableDataset, get_worker_info
from transformers import PreTrainedTokenizerBase

from pretrainlab.data.corpus import TEXT, stream_corpus
from pretrainlab.data.packing import IDS, encoder, with_eos
from pretrainlab.data.sampling import BATCH_KEY

POSITION = "_stream_position"
# Documents of a shard tokenized together; a window's start is always at such a chunk's start
# (plus a token offset), so the stream's state is taken once per chunk, not per document.
CHUNK_DOCUMENTS = 256
Position = dict[str, Any]


def training_documents(data: Any, cache_dir: Path) -> datasets.IterableDataset:
    """The stream of training documents: all but the first ``data.validation_documents``.

    A module-level function (given to the data set with ``functools.partial``), so that
    DataLoader workers started by spawn or forkserver can unpickle it.
    """
    return stream_corpus(data, cache_dir).skip(data.validation_documents)


def start_position() -> Position:
    """A shard's position before it has trained on anything."""
    return {"epoch": 0, "window": 0, "state": None, "skip": 0, "taken": 0}


class _Tokens:
    """The shard's tokens in order, as chunks, with where the first pending token came from."""

    def __init__(self, chunks: Iterator[tuple[Any, np.ndarray]], skip: int) -> None:
        self.chunks = chunks
        self.pending: deque[tuple[Any, np.ndarray]] = deque()
        self.offset = skip  # tokens of the first pending chunk already taken
        self.available = 0
        self.ended = False

    def origin(self) -> tuple[Any, int]:
        """(stream state, token offset) of the next token."""
        self._fill(1)
        if not self.pending:
            return None, 0
        state, _ = self.pending[0]
        return state, self.offset

    def _fill(self, count: int) -> None:
        while self.available < count and not self.ended:
            try:
                key, tokens = next(self.chunks)
            except StopIteration:
                self.ended = True
                return
            skip = self.offset if not self.pending else 0
            self.pending.append((key, tokens))
            self.available += len(tokens) - skip

    def take(self, count: int) -> np.ndarray:
        """Up to ``count`` tokens (fewer only at the end of the stream)."""
        self._fill(count)
        parts, want = [], min(count, self.available)
        while want:
            _, tokens = self.pending[0]
            part = tokens[self.offset : self.offset + want]
            parts.append(part)
            want -= len(part)
            self.available -= len(part)
            self.offset += len(part)
            if self.offset == len(tokens):
                self.pending.popleft()
                self.offset = 0
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int32)


class StreamingBlocks(IterableDataset):
    """Batches of blocks for one process, each as ``(examples, position)``; see the module doc.

    Its length is the whole run's batches, also when resumed (as ``StreamBatchSampler``'s):
    Lightning counts on from the batches it restored.
    """

    def __init__(
        self,
        open_stream: Callable[[], datasets.IterableDataset],
        tokenizer: PreTrainedTokenizerBase,
        block_size: int,
        batch_size: int,
        seed: int,
        window: int,
        total_batches: int,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        positions: dict[int, Position] | None = None,
    ) -> None:
        self.open_stream = open_stream
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.window = max(1, window)
        self.total_batches = total_batches
        self.start_batch = start_batch
        self.rank = rank
        self.per_process = max(1, workers)
        self.shards = world_size * self.per_process
        self.positions = positions or {}

    def __len__(self) -> int:
        return self.total_batches

    def shard_of(self, batch: int) -> int:
        """The shard that cuts this process's batch number ``batch``."""
        return self.rank * self.per_process + batch % self.per_process

    def __iter__(self) -> Iterator[tuple[list[dict[str, Any]], tuple[int, Position]]]:
        """Worker w (or the process itself, without workers) yields batches start + w,
        start + w + W, ...: the DataLoader takes one from each worker in turn, so the process
        trains on its batches in number order."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.per_process:
            raise RuntimeError(f"StreamingBlocks made for {self.per_process} workers runs in {workers}")
        yield from self._batches(self.start_batch + worker)

    def _batches(self, first: int) -> Iterator[tuple[list[dict[str, Any]], tuple[int, Position]]]:
        """Batches ``first``, ``first + W``, ... of this process, from one shard."""
        shard = self.shard_of(first)
        blocks = self.blocks(shard, self.positions.get(shard, start_position()))
        for batch in range(first, self.total_batches, self.per_process):
            examples, position = [], None
            for _ in range(self.batch_size):
                ids, position = next(blocks)
                examples.append({IDS: ids, BATCH_KEY: batch})
            yield examples, (shard, position)

    # -- one shard ------------------------------------------------------------------------
    def _chunks(self, shard: int, state: Any) -> Iterator[tuple[Any, np.ndarray]]:
        """This shard's documents from ``state`` on (the stream's own ``state_dict``), tokenized
        ``CHUNK_DOCUMENTS`` at a time: (the state at the chunk's start, its tokens).

        ``IterableDataset.iter``, not ``iter()``: in a DataLoader worker the latter would split
        the stream among the workers once more.
        """
        stream = split_dataset_by_node(
            self.open_stream(), rank=shard, world_size=self.shards, strategy="examples"
        )
        if state is not None:
            stream.load_state_dict(state)
        chunks = stream.iter(batch_size=CHUNK_DOCUMENTS)
        encode = encoder(self.tokenizer)
        eos = self.tokenizer.eos_token_id
        # The first chunk starts where the stream was opened: before it is iterated, a stream
        # that loaded a state reports the initial one.
        key = state
        for chunk in chunks:
            yield key, pc.list_flatten(with_eos(encode(chunk[TEXT]), eos)).to_numpy()
            key = stream.state_dict()  # where the next chunk starts

    def blocks(self, shard: int, position: Position) -> Iterator[tuple[list[int], Position]]:
        """The shard's blocks from ``position`` on, each with the position after it."""
        epoch, window, taken = position["epoch"], position["window"], position["taken"]
        state, skip = position["state"], position["skip"]
        length = self.block_size
        while True:  # epochs
            tokens = _Tokens(self._chunks(shard, state), skip)
            cut_any = False
            while True:  # windows
                start = tokens.origin()
                window_tokens = tokens.take(self.window * length)
                count = len(window_tokens) // length
                if count == 0:
                    break
                cut_any = True
                order = np.random.default_rng([self.seed, shard, epoch, window]).permutation(count)
                blocks = window_tokens[: count * length].reshape(count, length)
                for done in range(taken, count):
                    after = {"epoch": epoch, "window": window, "state": start[0], "skip": start[1]}
                    yield blocks[order[done]].tolist(), {**after, "taken": done + 1}
                window, taken = window + 1, 0
            if not cut_any:
                raise RuntimeError(
                    f"data.streaming: shard {shard} of {self.shards} gets no block of {length} tokens from "
                    "the corpus (fewer processes or workers, or a larger corpus)"
                )
            epoch, window, taken, state, skip = epoch + 1, 0, 0, None, 0


class PositionedCollate:
    """The objective's collator for a streamed batch; the shard's position travels beside it
    (the data module takes it off before the model sees the batch)."""

    def __init__(self, collate: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.collate = collate

    def __call__(self, item: tuple[list[dict[str, Any]], tuple[int, Position]]) -> dict[str, Any]:
        examples, position = item
        return {**self.collate(examples), POSITION: position}

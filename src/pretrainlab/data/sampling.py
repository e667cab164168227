"""A training stream that is a pure function of (seed, batch number).

Epoch e visits the blocks in the order ``randperm(n)`` seeded by (seed, e); batch b of the
stream is a fixed slice of that order, and its collator randomness (which tokens are masked,
which spans dropped) is seeded by (seed, b). So a run resumed at batch b sees exactly the
batches and masks an uninterrupted run would have seen, whatever the number of DataLoader
workers; with several processes each rank takes its own slice of every global batch.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

BATCH_KEY = "_stream_batch"
# Added to every collated batch: the corpus tokens it holds (padding, sentinels, [MASK]s and
# GLM's part-B markers excluded), so every objective counts tokens the same way.
CORPUS_TOKENS = "_corpus_tokens"


class StreamBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields batches of ``(index, batch number)`` from ``start_batch`` to ``total_batches``.

    The whole run is one pass over this sampler (one Lightning "epoch"); a resumed run starts
    the pass at ``start_batch`` and Lightning, which restored how many batches were done,
    counts on from there.
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        seed: int,
        total_batches: int,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.global_batch = batch_size * world_size
        if num_examples < self.global_batch:
            raise ValueError(f"{num_examples} training examples cannot fill one batch of {self.global_batch}")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.total_batches = total_batches
        self.start_batch = start_batch
        self.rank = rank
        self.per_epoch = num_examples // self.global_batch  # the last partial batch is dropped

    def __len__(self) -> int:
        """The whole run's batches, also when resumed: Lightning restores how many batches of
        the epoch were done and ends the epoch when that count reaches this length, so a length
        of only the remaining batches would end a resumed epoch early and start it over."""
        return self.total_batches

    def order(self, epoch: int) -> torch.Tensor:
        """The visiting order of epoch ``epoch``: the same in every process and every resume."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_examples, generator=generator)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, order = -1, torch.empty(0, dtype=torch.long)
        for batch in range(self.start_batch, self.total_batches):
            batch_epoch, k = divmod(batch, self.per_epoch)
            if batch_epoch != epoch:
                epoch, order = batch_epoch, self.order(batch_epoch)
            start = k * self.global_batch + self.rank * self.batch_size
            yield [(int(i), batch) for i in order[start : start + self.batch_size]]


class StreamDataset(Dataset):
    """Looks examples up by ``(index, batch number)`` and tags them with the batch number."""

    def __init__(self, examples: Any) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, batch = key
        return {**self.examples[index], BATCH_KEY: batch}


class SeededCollator:
    """Run a collator with its randomness seeded per batch; the global RNG is left untouched.

    Training batches carry their stream position (``StreamDataset``); any other batch (the
    validation set) is keyed by its own tokens, so validation masks are the same at every
    evaluation and its loss moves only when the model does. The batch also gets
    ``CORPUS_TOKENS``, the number of corpus tokens it was made from.
    """

    def __init__(self, collate: Callable[[list[dict[str, Any]]], dict[str, Any]], seed: int) -> None:
        self.collate = collate
        self.seed = seed

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if BATCH_KEY in examples[0]:
            key = int(examples[0][BATCH_KEY])
            examples = [{k: v for k, v in e.items() if k != BATCH_KEY} for e in examples]
        else:
            key = zlib.crc32(b"".join(np.asarray(e["input_ids"], dtype=np.int64).tobytes() for e in examples))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + key) % (2**63))
            batch = self.collate(examples)
        batch[CORPUS_TOKENS] = torch.tensor(sum(len(e["input_ids"]) for e in examples))
        return batch

"""The objective-independent data pipeline as one LightningDataModule.

corpus -> split -> tokenizer -> tokenized documents -> packed blocks, each stage cached on
disk under a key made from every setting that shapes it; a second run with the same settings
loads the blocks and does no tokenization. The objective only plugs in its collator.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from pretrainlab.config import ConfigError
from pretrainlab.data import packing
from pretrainlab.data.corpus import TEXT, corpus_fingerprint, load_corpus
from pretrainlab.data.sampling import StreamBatchSampler, StreamDataset
from pretrainlab.data.tokenizer import build_tokenizer
from pretrainlab.utils import write_dir_atomic

log = logging.getLogger(__name__)
SPLITS = ("train", "validation")
# The tokenizer is cached with a large limit; export sets the model's real one.
_CACHED_MAX_LENGTH = 1_000_000


def settings_key(settings: dict[str, Any]) -> str:
    """A short stable hash of the settings that shape a cached artifact."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PretrainDataModule(pl.LightningDataModule):
    """Blocks of token ids for every objective; ``collate_fn`` is set by the objective.

    The collator should be seeded per batch (``sampling.SeededCollator``): training batches
    are then a function of the stream position, validation batches of their content.
    """

    def __init__(
        self,
        data: Any,
        tokenizer: Any,
        objective: str,
        cache_dir: str | Path,
        packed_length: int | None = None,
    ) -> None:
        """``packed_length`` overrides ``data.block_size`` for raw blocks (T5 packs longer blocks
        so that its inputs are exactly ``block_size`` after corruption)."""
        super().__init__()
        self.data = data
        self.tokenizer_cfg = tokenizer
        self.objective = objective
        self.cache_dir = Path(cache_dir).expanduser()
        self.packed_length = packed_length or data.block_size
        self.collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.splits: dict[str, datasets.Dataset] = {}
        self.cache_hit = False
        # The training stream: set by plan_stream() before fit (see data/sampling.py).
        self.stream_seed = 0
        self.total_batches = 0
        self.start_batch = 0

    def plan_stream(self, seed: int, total_batches: int, start_batch: int = 0) -> None:
        """How many batches training consumes, and where a resumed run picks up."""
        self.stream_seed, self.total_batches, self.start_batch = seed, total_batches, start_batch

    # -- cache keys ---------------------------------------------------------------------
    def corpus_settings(self) -> dict[str, Any]:
        d = self.data
        return {
            "source": d.source,
            "path": str(Path(d.path).expanduser().resolve()) if d.path else None,
            "name": d.name,
            "subset": d.subset,
            "split": d.split,
            "text_column": d.text_column,
            "max_documents": d.max_documents,
            "val_fraction": d.val_fraction,
            "split_seed": d.split_seed,
            "fingerprint": corpus_fingerprint(d),
        }

    def tokenizer_settings(self) -> dict[str, Any]:
        t = self.tokenizer_cfg
        return {
            "corpus": self.corpus_settings(),
            "pretrained": t.pretrained,
            "vocab_size": t.vocab_size,
            "min_frequency": t.min_frequency,
            # A loaded tokenizer is completed with the objective's tokens, trained ones hold all.
            "objective": self.objective if t.pretrained else None,
        }

    @property
    def tokenizer_dir(self) -> Path:
        return self.cache_dir / "tokenized" / settings_key(self.tokenizer_settings())

    @property
    def blocks_dir(self) -> Path:
        layout = f"packed-{self.packed_length}" if self.data.packing else f"docs-{self.packed_length}"
        return self.tokenizer_dir / layout

    # -- building -----------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Build whatever is not cached yet: tokenizer, tokenized documents, blocks."""
        if (self.blocks_dir / "train").exists():
            return
        if not (self.tokenizer_dir / "docs").exists():
            write_dir_atomic(self.tokenizer_dir / "docs", self._write_tokenized)
        docs = datasets.load_from_disk(str(self.tokenizer_dir / "docs"))
        write_dir_atomic(self.blocks_dir, lambda tmp: self._write_blocks(docs, tmp))

    def _write_tokenized(self, out: Path) -> None:
        corpus = load_corpus(self.data, self.cache_dir / "hf")
        if len(corpus) < 2:
            raise ConfigError(f"{self._where()}: needs at least 2 documents to split off validation")
        split = corpus.train_test_split(test_size=self.data.val_fraction, seed=self.data.split_seed)
        tokenizer = build_tokenizer(
            self.tokenizer_cfg, self.objective, split["train"][TEXT], _CACHED_MAX_LENGTH
        )
        tokenizer.save_pretrained(str(out / "tokenizer"))
        docs = datasets.DatasetDict(
            {
                "train": packing.tokenize(split["train"], tokenizer),
                "validation": packing.tokenize(split["test"], tokenizer),
            }
        )
        docs.save_to_disk(str(out / "docs"))
        # save_to_disk wants its own folder; lift its files one level so `docs` is the dict.
        for item in (out / "docs").iterdir():
            os.replace(item, out / item.name)
        (out / "docs").rmdir()

    def _write_blocks(self, docs: datasets.DatasetDict, out: Path) -> None:
        length = self.packed_length
        for name in SPLITS:
            if self.data.packing:
                total = packing.count_tokens(docs[name])
                if total < length:
                    raise ConfigError(
                        f"{self._where()}: the {name} split tokenizes to {total} tokens, fewer than "
                        f"one block of {length} (lower data.block_size"
                        + (" or raise data.val_fraction)" if name == "validation" else ")")
                    )
                blocks = packing.pack(docs[name], length, cache_dir=str(self.cache_dir / "hf"))
            else:
                blocks = packing.truncate(docs[name], length)
            blocks.save_to_disk(str(out / name))

    def _where(self) -> str:
        d = self.data
        return f"data.path={d.path}" if d.source == "files" else f"data.source={d.source}"

    def tokens_per_example(self) -> float:
        """Corpus tokens in one training example: the block length, or the mean document length
        when documents are not packed. A token budget becomes steps through it."""
        if self.data.packing:
            return float(self.packed_length)
        train = self.splits["train"]
        return packing.count_tokens(train) / max(len(train), 1)

    def heldout_documents(self, count: int, min_tokens: int) -> list[list[int]]:
        """The first ``count`` validation documents with at least ``min_tokens`` tokens (eos dropped).

        Fixed by the split alone, so every objective and seed is evaluated on the same text.
        """
        docs = datasets.load_from_disk(str(self.tokenizer_dir / "docs"))["validation"]
        eos = self.tokenizer.eos_token_id
        chosen: list[list[int]] = []
        for batch in docs.iter(batch_size=1000):
            for ids in batch[packing.IDS]:
                ids = ids[:-1] if ids and ids[-1] == eos else ids
                if len(ids) >= min_tokens:
                    chosen.append(ids)
                if len(chosen) == count:
                    return chosen
        return chosen

    # -- Lightning hooks ------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Load the cached tokenizer and blocks (memory-mapped)."""
        if self.splits:
            return
        self.cache_hit = (self.blocks_dir / "train").exists()
        self.prepare_data()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.tokenizer_dir / "docs" / "tokenizer"))
        self.splits = {name: datasets.load_from_disk(str(self.blocks_dir / name)) for name in SPLITS}
        log.info(
            "data: %d train / %d validation examples of %d tokens (%s)",
            len(self.splits["train"]),
            len(self.splits["validation"]),
            self.packed_length,
            "cache hit" if self.cache_hit else "built",
        )

    def _require(self, collate: Any) -> Any:
        if collate is None:
            raise RuntimeError("the objective must set datamodule.collate_fn before loading batches")
        return collate

    def train_dataloader(self) -> DataLoader:
        """One pass over a seeded stream of batches covering the whole run (resumable)."""
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = StreamBatchSampler(
            len(self.splits["train"]),
            self.data.batch_size,
            self.stream_seed,
            total_batches=self.total_batches,
            start_batch=self.start_batch,
            rank=rank,
            world_size=world,
        )
        return DataLoader(
            StreamDataset(self.splits["train"]),
            batch_sampler=sampler,
            collate_fn=self._require(self.collate_fn),
            num_workers=self.data.num_workers,
            persistent_workers=self.data.num_workers > 0,
            generator=self._generator(),
        )

    def _generator(self) -> torch.Generator:
        # Iterating a DataLoader draws a base seed from its generator, or else from the global RNG,
        # which would shift the dropout masks of a resumed run against an uninterrupted one.
        return torch.Generator().manual_seed(self.stream_seed)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.splits["validation"],
            batch_size=self.data.batch_size,
            shuffle=False,
            collate_fn=self._require(self.collate_fn),
            num_workers=self.data.num_workers,
            persistent_workers=self.data.num_workers > 0,
            generator=self._generator(),
        )

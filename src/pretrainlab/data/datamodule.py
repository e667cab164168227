"""The objective-independent data pipeline as one LightningDataModule.

corpus -> split -> tokenizer -> tokenized documents -> packed blocks, each stage cached on
disk under a key made from every setting that shapes it; a second run with the same settings
loads the blocks and does no tokenization. The objective only plugs in its collator.

Whole-word masking adds one stage beside the tokenized documents: a ``word_start`` flag per
token from a word segmenter, cached under the segmenter's name and version and packed with
the ids into blocks of their own. The tokenizer and the ids stay those every other run uses,
and a run without it never segments.
"""

from __future__ import annotations

import functools
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
from pretrainlab.data import packing, words
from pretrainlab.data.corpus import TEXT, corpus_fingerprint, load_corpus, stream_corpus
from pretrainlab.data.entries import CacheEntries, Entry
from pretrainlab.data.sampling import StreamBatchSampler, StreamDataset
from pretrainlab.data.streaming import (
    POSITION,
    Position,
    PositionedCollate,
    StreamingBlocks,
    training_documents,
)
from pretrainlab.data.tokenizer import DatasetTexts, build_tokenizer

log = logging.getLogger(__name__)
SPLITS = ("train", "validation")
# The tokenizer is cached with a large limit; export sets the model's real one.
_CACHED_MAX_LENGTH = 1_000_000
# The documents a tokenizer trained for a streamed corpus reads when tokenizer.max_training_documents
# is null: the stream has no end to read to (about 10M characters of the built-in corpus's length).
STREAM_TOKENIZER_DOCUMENTS = 100_000


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
        word_segmenter: str | None = None,
    ) -> None:
        """``packed_length`` overrides ``data.block_size`` for raw blocks (T5 packs longer blocks
        so that its inputs are exactly ``block_size`` after corruption). ``word_segmenter``
        (whole-word masking only) adds the ``word_start`` column to the blocks."""
        super().__init__()
        self.data = data
        self.tokenizer_cfg = tokenizer
        self.objective = objective
        self.cache_dir = Path(cache_dir).expanduser()
        self.packed_length = packed_length or data.block_size
        self.word_segmenter = word_segmenter
        self.collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.splits: dict[str, datasets.Dataset] = {}
        self.cache_hit = False
        self.entries = CacheEntries(verify=bool(getattr(data, "verify_cache", False)))
        # The training stream: set by plan_stream() before fit (see data/sampling.py).
        self.stream_seed = 0
        self.total_batches = 0
        self.start_batch = 0
        # data.streaming (getattr: configs saved before the key existed): the training blocks are
        # cut while training; `positions` holds each shard's place after the last batch trained.
        self.streaming = bool(getattr(data, "streaming", False))
        self.positions: dict[int, Position] = {}

    @property
    def built(self) -> list[Path]:
        """The cache entries this data module built or rebuilt (none: a cache hit)."""
        return self.entries.built

    def plan_stream(self, seed: int, total_batches: int, start_batch: int = 0) -> None:
        """How many batches training consumes, and where a resumed run picks up."""
        self.stream_seed, self.total_batches, self.start_batch = seed, total_batches, start_batch

    # -- cache keys ---------------------------------------------------------------------
    def corpus_settings(self) -> dict[str, Any]:
        d = self.data
        settings = {
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
        if self.streaming:  # the validation split is the stream's head, not a seeded share
            del settings["val_fraction"], settings["split_seed"]
            settings["streaming"] = {"validation_documents": d.validation_documents}
        return settings

    def tokenizer_settings(self) -> dict[str, Any]:
        t = self.tokenizer_cfg
        settings = {
            "corpus": self.corpus_settings(),
            "pretrained": t.pretrained,
            "vocab_size": t.vocab_size,
            "min_frequency": t.min_frequency,
            # A loaded tokenizer is completed with the objective's tokens, trained ones hold all.
            "objective": self.objective if t.pretrained else None,
        }
        cap = self.max_training_documents()
        if cap is not None:  # only when set, so the caches of runs without one keep their keys
            settings["max_training_documents"] = cap
        return settings

    def max_training_documents(self) -> int | None:
        """The cap on the documents a trained tokenizer reads (None: all; unused when loading one).

        ``getattr``: configs saved before the setting existed have no such key.
        """
        if self.tokenizer_cfg.pretrained:
            return None
        cap = getattr(self.tokenizer_cfg, "max_training_documents", None)
        return STREAM_TOKENIZER_DOCUMENTS if cap is None and self.streaming else cap

    def num_proc(self, documents: int) -> int:
        """Processes to tokenize ``documents`` with (``data.num_proc``; not part of any cache key:
        the documents come out the same whatever the count)."""
        return packing.worker_count(getattr(self.data, "num_proc", None), documents)

    @property
    def tokenizer_dir(self) -> Path:
        return self.cache_dir / "tokenized" / settings_key(self.tokenizer_settings())

    @property
    def words_dir(self) -> Path:
        """The tokenized documents' word starts: beside them, keyed by segmenter and version."""
        name = self.word_segmenter
        return self.tokenizer_dir / f"words-{name}-{words.segmenter_version(name)}"

    @property
    def blocks_dir(self) -> Path:
        layout = f"packed-{self.packed_length}" if self.data.packing else f"docs-{self.packed_length}"
        if self.word_segmenter:
            layout += "-" + self.words_dir.name
        return self.tokenizer_dir / layout

    # -- building -----------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Build whatever is not cached yet and rebuild whatever is damaged: tokenizer and
        tokenized documents, word starts (whole-word masking), blocks. Each entry is checked
        against its manifest once per process (see ``data/manifest.py``)."""
        self.entries.ensure(self._blocks_entry())

    def _docs_entry(self) -> Entry:
        return Entry(self.tokenizer_dir / "docs", self._write_tokenized)

    def _words_entry(self) -> Entry:
        return Entry(
            self.words_dir,
            lambda tmp: self._write_words(self._load_docs(), self._load_tokenizer(), tmp),
            (self._docs_entry(),),
        )

    def _blocks_entry(self) -> Entry:
        sources = (self._docs_entry(), self._words_entry()) if self.word_segmenter else (self._docs_entry(),)
        return Entry(self.blocks_dir, lambda tmp: self._write_blocks(self._block_inputs(), tmp), sources)

    def _load_docs(self) -> datasets.DatasetDict:
        return self.entries.load(
            self._docs_entry(), lambda: datasets.load_from_disk(str(self.tokenizer_dir / "docs"))
        )

    def _load_tokenizer(self) -> PreTrainedTokenizerBase:
        folder = str(self.tokenizer_dir / "docs" / "tokenizer")
        return self.entries.load(self._docs_entry(), lambda: AutoTokenizer.from_pretrained(folder))

    def _block_inputs(self) -> datasets.DatasetDict:
        """The tokenized documents, with their word starts when whole-word masking asks for them."""
        docs = self._load_docs()
        if not self.word_segmenter:
            return docs

        def with_words() -> datasets.DatasetDict:
            return datasets.DatasetDict(
                {
                    name: datasets.concatenate_datasets(
                        [docs[name], datasets.load_from_disk(str(self.words_dir / name))], axis=1
                    )
                    for name in SPLITS
                }
            )

        return self.entries.load(self._words_entry(), with_words)

    def _split_corpus(self) -> datasets.DatasetDict:
        if self.streaming:
            return self._stream_head()
        corpus = load_corpus(self.data, self.cache_dir / "hf")
        if len(corpus) < 2:
            raise ConfigError(f"{self._where()}: needs at least 2 documents to split off validation")
        return corpus.train_test_split(test_size=self.data.val_fraction, seed=self.data.split_seed)

    def _stream_head(self) -> datasets.DatasetDict:
        """A streamed corpus's first documents: ``data.validation_documents`` of them are the
        validation split ("test"), and the tokenizer's sample ("train") follows them (none when
        the tokenizer is loaded). The rest of the stream is read while training."""
        head = self.data.validation_documents
        sample = self.max_training_documents() or 0
        texts: list[str] = []
        # One document past the head at least: the training stream must not be empty.
        for document in stream_corpus(self.data, self.cache_dir / "hf").take(head + max(sample, 1)):
            texts.append(document[TEXT])
        if len(texts) <= head:
            raise ConfigError(
                f"{self._where()}: the stream holds {len(texts)} documents, no more than "
                f"data.validation_documents={head} (lower it: the rest of the stream is for training)"
            )
        features = datasets.Features({TEXT: datasets.Value("string")})
        return datasets.DatasetDict(
            {
                "train": datasets.Dataset.from_dict({TEXT: texts[head : head + sample]}, features=features),
                "test": datasets.Dataset.from_dict({TEXT: texts[:head]}, features=features),
            }
        )

    def training_stream(self) -> datasets.IterableDataset:
        """The stream of training documents: all but the validation head (``data.streaming``)."""
        return training_documents(self.data, self.cache_dir / "hf")

    def _block_splits(self) -> tuple[str, ...]:
        """The splits cut into cached blocks: a streamed corpus's training blocks are cut while training."""
        return ("validation",) if self.streaming else SPLITS

    def _write_tokenized(self, out: Path) -> None:
        """Train (or load) the tokenizer, streaming the train split's texts, then tokenize both
        splits in parallel; nothing holds the corpus as Python objects."""
        split = self._split_corpus()
        texts = DatasetTexts(split["train"], TEXT, self.max_training_documents())
        tokenizer = build_tokenizer(self.tokenizer_cfg, self.objective, texts, _CACHED_MAX_LENGTH)
        tokenizer.save_pretrained(str(out / "tokenizer"))
        parts = {name: split["test" if name == "validation" else name] for name in self._block_splits()}
        docs = datasets.DatasetDict(  # a streamed corpus: its validation split only
            {
                name: packing.tokenize(part, tokenizer, num_proc=self.num_proc(len(part)))
                for name, part in parts.items()
            }
        )
        docs.save_to_disk(str(out / "docs"))
        # save_to_disk wants its own folder; lift its files one level so `docs` is the dict.
        for item in (out / "docs").iterdir():
            os.replace(item, out / item.name)
        (out / "docs").rmdir()

    def _write_words(self, docs: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
        """Tokenize the split's text again, now with offsets and segmented, keeping only the
        word starts; the ids must come out as the cached ones, or the flags would not fit."""
        split = self._split_corpus()
        for name, part in (("train", "train"), ("validation", "test")):
            segmented = packing.tokenize(
                split[part], tokenizer, self.num_proc(len(split[part])), word_segmenter=self.word_segmenter
            )
            if not packing.same_ids(segmented, docs[name]):
                raise RuntimeError(f"{self.tokenizer_dir}: cached ids differ from the corpus's; delete it")
            segmented.select_columns([packing.WORD_START]).save_to_disk(str(out / name))

    def _write_blocks(self, docs: datasets.DatasetDict, out: Path) -> None:
        length = self.packed_length
        for name in self._block_splits():
            if self.data.packing:
                total = packing.count_tokens(docs[name])
                if total < length:
                    raise ConfigError(
                        f"{self._where()}: the {name} split tokenizes to {total} tokens, fewer than "
                        f"one block of {length} (lower data.block_size"
                        + (" or raise data.val_fraction)" if name == "validation" else ")")
                    )
                # Written as they are cut beside the entry, then saved in the dataset layout.
                staged = out / f".{name}-blocks.arrow"
                blocks = packing.pack(docs[name], length, path=staged)
                blocks.save_to_disk(str(out / name))
                del blocks  # unmapped before its file goes (the manifest must not list it)
                staged.unlink()
                continue
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
        eos = self.tokenizer.eos_token_id

        def collect() -> list[list[int]]:
            docs = datasets.load_from_disk(str(self.tokenizer_dir / "docs"))["validation"]
            chosen: list[list[int]] = []
            for batch in docs.iter(batch_size=1000):
                for ids in batch[packing.IDS]:
                    ids = ids[:-1] if ids and ids[-1] == eos else ids
                    if len(ids) >= min_tokens:
                        chosen.append(ids)
                    if len(chosen) == count:
                        return chosen
            return chosen

        trained_on = self.entries.ready.get(self.tokenizer_dir / "docs")
        chosen = self.entries.load(self._docs_entry(), collect)
        if trained_on is not None and self.entries.ready.get(self.tokenizer_dir / "docs") != trained_on:
            raise RuntimeError(
                f"cache: {self.tokenizer_dir / 'docs'} was rebuilt during the run with other token ids "
                "than it trained on; run again"
            )
        return chosen

    # -- Lightning hooks ------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Load the cached tokenizer and blocks (memory-mapped)."""
        if self.splits:
            return
        self.prepare_data()
        self.tokenizer = self._load_tokenizer()
        blocks = self._blocks_entry()
        self.splits = self.entries.load(
            blocks,
            lambda: {
                name: datasets.load_from_disk(str(self.blocks_dir / name)) for name in self._block_splits()
            },
        )
        self.cache_hit = not self.built
        train = "streamed train" if self.streaming else f"{len(self.splits['train'])} train"
        log.info(
            "data: %s / %d validation examples of %d tokens (%s)",
            train,
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
        if self.streaming:
            return self._streaming_dataloader(rank, world)
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

    def _streaming_dataloader(self, rank: int, world: int) -> DataLoader:
        """Batches cut from the stream by this process (and its workers, a shard each)."""
        if self.start_batch and not self.positions:
            raise ConfigError(
                "resume: the checkpoint holds no stream position (saved by a run without "
                "data.streaming=true); resume it as it was run"
            )
        if self.data.num_workers > 0:  # forked workers tokenize; each one thread (no fork warning)
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        blocks = StreamingBlocks(
            functools.partial(training_documents, self.data, self.cache_dir / "hf"),
            self.tokenizer,
            self.packed_length,
            self.data.batch_size,
            self.stream_seed,
            window=self.data.shuffle_window,
            total_batches=self.total_batches,
            start_batch=self.start_batch,
            rank=rank,
            world_size=world,
            workers=self.data.num_workers,
            positions=dict(self.positions),  # this module's go on with the batches trained
        )
        return DataLoader(
            blocks,
            batch_size=None,  # the data set yields whole batches
            collate_fn=PositionedCollate(self._require(self.collate_fn)),
            num_workers=self.data.num_workers,
            persistent_workers=self.data.num_workers > 0,
            generator=self._generator(),
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A streamed batch's position is noted as it is trained on, and taken off the batch."""
        if isinstance(batch, dict) and POSITION in batch:
            shard, position = batch.pop(POSITION)
            self.positions[int(shard)] = position
        return batch

    def _stream_layout(self) -> tuple[int, int, int]:
        """(this process's rank, processes, shards per process) of a streamed corpus."""
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        return rank, world, max(1, self.data.num_workers)

    def state_dict(self) -> dict[str, Any]:
        """Every shard's stream position (of all processes) for the checkpoint; empty otherwise.

        Lightning asks every process for it when saving, so each sends the positions of its own
        shards (the only ones it trains and keeps) and rank 0 writes them all.
        """
        if not self.streaming:
            return {}
        rank, world, workers = self._stream_layout()
        positions = {shard: p for shard, p in self.positions.items() if shard // workers == rank}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, positions)
            positions = {shard: p for part in gathered for shard, p in part.items()}
        return {"stream_processes": world, "stream_workers": workers, "stream_positions": positions}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore this process's shards' positions; the run must cut the stream as it was cut."""
        if not self.streaming or "stream_positions" not in state_dict:
            return
        rank, world, workers = self._stream_layout()
        saved = (state_dict["stream_processes"], state_dict["stream_workers"])
        if saved != (world, workers):
            raise ConfigError(
                f"resume: the stream was cut by {saved[0]} processes x {saved[1]} workers, this run uses "
                f"{world} x {workers}; resume with the run's trainer.devices and data.num_workers"
            )
        positions = {int(k): v for k, v in state_dict["stream_positions"].items()}
        self.positions = {shard: p for shard, p in positions.items() if shard // workers == rank}

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

"""Data preparation at scale: parallel tokenization, array packing, a streamed and capped tokenizer
sample (pretrainlab.data.packing, .datamodule, .tokenizer) and the preparation benchmark."""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets
import pytest
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerFast

import pretrainlab.data.datamodule as datamodule_module
import pretrainlab.data.packing as packing
import pretrainlab.data.tokenizer as tokenizer_module
from pretrainlab.data.datamodule import PretrainDataModule, settings_key

ComposeCfg = Callable[..., DictConfig]
IDS, WORD_START = packing.IDS, packing.WORD_START


def old_blocks(docs: datasets.Dataset, block_size: int) -> Iterator[dict[str, list[Any]]]:
    """The packer as it was before it worked on arrays (token by token into Python lists): the
    reference the new one must match block for block."""
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
                block[WORD_START][0] = True
            yield block
        buffers = {c: buffers[c][cut:] for c in columns}


def varied_docs(block_size: int, seed: int, words: bool, n: int = 400) -> datasets.Dataset:
    """Empty documents, single tokens, exact multiples of the block, documents of several blocks."""
    rng = random.Random(seed)
    lengths = [0, 0, 1, block_size, 2 * block_size, 3 * block_size + 1, block_size - 1]
    lengths += [rng.choice([0, 1, 2, block_size, rng.randrange(1, 5 * block_size)]) for _ in range(n)]
    rng.shuffle(lengths)
    columns: dict[str, list[Any]] = {IDS: [[rng.randrange(1, 5000) for _ in range(k)] for k in lengths]}
    features = {IDS: datasets.Sequence(datasets.Value("int64"))}  # caches before this change: int64
    if words:
        columns[WORD_START] = [[rng.random() < 0.4 for _ in range(k)] for k in lengths]
        features[WORD_START] = datasets.Sequence(datasets.Value("bool"))
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


@pytest.mark.parametrize("read", [3, 10_000])  # documents per batch read: many carries, or one batch
@pytest.mark.parametrize("words", [False, True])
@pytest.mark.parametrize("block_size", [1, 2, 7, 32])
def test_array_packer_cuts_exactly_the_old_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_size: int, words: bool, read: int
) -> None:
    monkeypatch.setattr(packing, "_PACK_READ_DOCUMENTS", read)
    docs = varied_docs(block_size, seed=block_size, words=words)
    expected = list(old_blocks(docs, block_size))
    assert expected  # the case has blocks to compare
    for blocks in (packing.pack(docs, block_size), packing.pack(docs, block_size, path=tmp_path / "b.arrow")):
        assert len(blocks) == len(expected)
        assert blocks.to_list() == expected  # same ids, order, boundaries and word starts
        assert blocks.features == packing._features(docs.column_names)  # int32 ids, bool starts
    assert (tmp_path / "b.arrow").is_file()  # written there as cut, memory-mapped from there


def test_array_packer_with_less_than_one_block_gives_none(tmp_path: Path) -> None:
    docs = datasets.Dataset.from_dict({IDS: [[1, 2], [], [3]]})
    assert list(old_blocks(docs, 4)) == []
    assert len(packing.pack(docs, 4)) == 0
    assert len(packing.pack(docs, 4, path=tmp_path / "b.arrow")) == 0
    assert packing.count_tokens(docs) == 3


def test_tokenize_in_processes_gives_the_documents_in_order(
    tiny_tokenizer: PreTrainedTokenizerFast, tiny_docs: list[str]
) -> None:
    ds = datasets.Dataset.from_dict({"text": tiny_docs[:90]})
    expected = [
        tiny_tokenizer(t, add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]
        for t in tiny_docs[:90]
    ]
    one = packing.tokenize(ds, tiny_tokenizer)
    two = packing.tokenize(ds, tiny_tokenizer, num_proc=2)
    assert one[IDS] == two[IDS] == expected
    assert one.features[IDS] == datasets.Sequence(datasets.Value("int32"))


def test_worker_count_is_the_usable_cores_but_one_process_for_a_small_corpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(packing, "usable_cores", lambda: 8)
    per = packing.MIN_DOCUMENTS_PER_PROCESS
    assert packing.worker_count(None, 300) == 1  # the tests' corpora: no process start-up to pay
    assert packing.worker_count(None, 3 * per) == 3
    assert packing.worker_count(None, 100 * per) == 8
    assert packing.worker_count(2, 100 * per) == 2
    assert packing.worker_count(1, 100 * per) == 1


def build(cfg: DictConfig, cache: Path) -> PretrainDataModule:
    dm = PretrainDataModule(cfg.data, cfg.tokenizer, "causal", cache)
    dm.setup()
    return dm


def test_datamodule_tokenizes_in_parallel_and_the_process_count_keeps_the_cache(
    compose_cfg: ComposeCfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packing, "MIN_DOCUMENTS_PER_PROCESS", 50)  # the tiny corpus: ~285 train docs
    calls: list[int | None] = []
    real = packing.tokenize
    monkeypatch.setattr(
        packing,
        "tokenize",
        lambda ds, tok, num_proc=None, **k: calls.append(num_proc) or real(ds, tok, num_proc, **k),
    )
    parallel = build(compose_cfg("data.num_proc=2"), tmp_path / "a")
    assert calls[0] == 2  # the train split, in two processes
    single = build(compose_cfg("data.num_proc=1"), tmp_path / "b")
    assert calls[2:] == [1, 1]
    for name in ("train", "validation"):
        assert parallel.splits[name][IDS] == single.splits[name][IDS]
    assert parallel.tokenizer.get_vocab() == single.tokenizer.get_vocab()
    # The process count is not part of any key: another count finds the blocks cached.
    assert parallel.blocks_dir.relative_to(tmp_path / "a") == single.blocks_dir.relative_to(tmp_path / "b")
    again = build(compose_cfg("data.num_proc=1"), tmp_path / "a")
    assert again.cache_hit


def test_tokenizer_trains_on_a_streamed_capped_sample_with_its_own_cache_key(
    compose_cfg: ComposeCfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Any] = []
    real = datamodule_module.build_tokenizer
    monkeypatch.setattr(
        datamodule_module,
        "build_tokenizer",
        lambda cfg, obj, texts, n: seen.append(texts) or real(cfg, obj, texts, n),
    )
    cache = tmp_path / "cache"
    full = build(compose_cfg(), cache)
    # No key for the unset cap: the caches of earlier runs keep their keys.
    settings = full.tokenizer_settings()
    assert "max_training_documents" not in settings
    with caplog.at_level(logging.INFO, logger="pretrainlab.data.tokenizer"):
        capped = build(compose_cfg("tokenizer.max_training_documents=40"), cache)
    assert not capped.cache_hit
    assert capped.tokenizer_dir != full.tokenizer_dir
    assert capped.tokenizer_settings() == {**settings, "max_training_documents": 40}
    assert settings_key(capped.tokenizer_settings()) != settings_key(settings)
    # Streamed from the split on disk (not a list of the corpus), 40 documents read.
    assert all(isinstance(texts, tokenizer_module.DatasetTexts) for texts in seen)
    assert [len(texts) for texts in seen] == [len(seen[0].ds), 40]
    assert any(re.search(r"trained on 40 texts", r.getMessage()) for r in caplog.records)
    assert len(capped.tokenizer) < len(full.tokenizer)  # a smaller sample, fewer pieces reach min_frequency
    # All documents are still tokenized with it.
    assert packing.count_tokens(datasets.load_from_disk(str(capped.tokenizer_dir / "docs"))["train"]) > 0
    # A pretrained tokenizer ignores the cap: it changes nothing there.
    cfg = compose_cfg("tokenizer.max_training_documents=40")
    cfg.tokenizer.pretrained = "some/folder"
    assert (
        "max_training_documents"
        not in PretrainDataModule(cfg.data, cfg.tokenizer, "causal", cache).tokenizer_settings()
    )


def test_dataset_texts_streams_the_column_in_order_up_to_the_cap() -> None:
    ds = datasets.Dataset.from_dict({"text": [f"doc {i}" for i in range(25)], "other": list(range(25))})
    assert list(tokenizer_module.DatasetTexts(ds, "text", batch_size=4)) == ds["text"]
    capped = tokenizer_module.DatasetTexts(ds, "text", limit=10, batch_size=4)
    assert len(capped) == 10 and list(capped) == ds["text"][:10]
    assert len(tokenizer_module.DatasetTexts(ds, "text", limit=100)) == 25


def test_prep_benchmark_prints_its_rows_and_a_json_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import prep

    corpus = tmp_path / "c.jsonl"
    documents = prep.make_corpus(corpus, 0.05)
    assert corpus.stat().st_size >= 0.05e6 and documents == sum(1 for _ in corpus.open(encoding="utf-8"))
    # Each measurement in this process instead of a new one (no second start-up of torch and co.).
    monkeypatch.setattr(prep, "_child", lambda args: prep.main(args))
    prep.main(["--sizes", "0.05", "--work", str(tmp_path / "work")])
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    (row,) = result["sizes"]
    assert row["documents"] == documents and row["tokens"] > 0
    assert row["prep_s"] > 0 and row["floor_s"] > 0
    assert row["ratio"] == pytest.approx(row["prep_s"] / row["floor_s"], rel=1e-3)
    assert row["peak_rss_mib"] > 0

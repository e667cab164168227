"""Tokenize -> pack -> split -> cache (pretrainlab.data.packing, pretrainlab.data.datamodule)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerFast

import pretrainlab.data.corpus as corpus_module
import pretrainlab.data.packing as packing
import pretrainlab.data.tokenizer as tokenizer_module
from pretrainlab.config import ConfigError
from pretrainlab.data.datamodule import PretrainDataModule
from pretrainlab.train import build_objective

ComposeCfg = Callable[..., DictConfig]


def stream(ds: datasets.Dataset) -> list[int]:
    return [i for ids in ds["input_ids"] for i in ids]


def encoded(tok: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    return [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]


def datamodule(cfg: DictConfig, cache: Path, objective: str = "causal") -> PretrainDataModule:
    dm = PretrainDataModule(cfg.data, cfg.tokenizer, objective, cache)
    dm.setup()
    return dm


def forbid(monkeypatch: pytest.MonkeyPatch, *targets: tuple[object, str]) -> None:
    """Make functions raise if called: proves a cached build does not redo that stage."""
    for module, name in targets:

        def boom(*args, _name=name, **kwargs):
            raise AssertionError(f"{_name} called on a cache hit")

        monkeypatch.setattr(module, name, boom)


# -- packing (unit) -----------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [32, 13])
def test_pack_is_the_prefix_of_the_concatenated_documents(
    tiny_tokenizer: PreTrainedTokenizerFast, tiny_docs: list[str], block_size: int
) -> None:
    # 2,400 documents: the stream crosses the 1,000-document batches the packer reads in.
    texts = [f"{i}:{doc}" for i in range(8) for doc in tiny_docs]
    docs = packing.tokenize(datasets.Dataset.from_dict({"text": texts}), tiny_tokenizer)
    expected_docs = encoded(tiny_tokenizer, texts)
    assert docs["input_ids"] == expected_docs  # each document + eos, no [CLS]/[SEP]

    blocks = packing.pack(docs, block_size)
    expected = [i for ids in expected_docs for i in ids]
    assert len(blocks) == len(expected) // block_size
    assert all(len(ids) == block_size for ids in blocks["input_ids"])
    got = stream(blocks)
    assert got == expected[: len(blocks) * block_size]
    # The final partial block is dropped, nothing else.
    assert len(expected) - len(got) == len(expected) % block_size
    assert tiny_tokenizer.pad_token_id not in got
    assert packing.count_tokens(blocks) == len(blocks) * block_size


def test_pack_eos_separates_documents_in_order(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    texts = ["一二三", "四五", "六七八九", "十"]
    blocks = packing.pack(packing.tokenize(datasets.Dataset.from_dict({"text": texts}), tiny_tokenizer), 4)
    eos = tiny_tokenizer.eos_token_id
    pieces, current = [], []
    for i in stream(blocks):
        if i == eos:
            pieces.append(tiny_tokenizer.decode(current))
            current = []
        else:
            current.append(i)
    # 3+1 + 2+1 + 4+1 + 1+1 = 14 tokens -> 3 blocks of 4; the last 2 tokens ("十", eos) dropped.
    assert len(blocks) == 3
    assert pieces == ["一二三", "四五", "六七八九"]


def test_truncate_keeps_one_document_per_example(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    texts = ["一二三四五六", "七", "八九"]
    docs = packing.tokenize(datasets.Dataset.from_dict({"text": texts}), tiny_tokenizer)
    assert packing.truncate(docs, 4)["input_ids"] == [ids[:4] for ids in encoded(tiny_tokenizer, texts)]


# -- the datamodule -------------------------------------------------------------------------


def test_packed_blocks_are_full_and_unpadded(compose_cfg: ComposeCfg, tmp_path: Path) -> None:
    dm = datamodule(compose_cfg(), tmp_path / "cache")
    pad = dm.tokenizer.pad_token_id
    for name in ("train", "validation"):
        blocks = dm.splits[name]["input_ids"]
        assert blocks
        assert all(len(ids) == 32 for ids in blocks)
        assert pad not in {i for ids in blocks for i in ids}


def test_train_blocks_are_the_train_documents_packed_in_order(
    compose_cfg: ComposeCfg, tmp_path: Path, tiny_docs: list[str]
) -> None:
    cache = tmp_path / "cache"
    # Unpacked with a block longer than any document: the split's whole documents, in order.
    whole = datamodule(compose_cfg("data.packing=false", "data.block_size=4096"), cache)
    packed = datamodule(compose_cfg(), cache)
    tok = packed.tokenizer
    by_ids = {tuple(ids): text for text, ids in zip(tiny_docs, encoded(tok, tiny_docs), strict=True)}

    train_docs = whole.splits["train"]["input_ids"]
    val_docs = whole.splits["validation"]["input_ids"]
    train_texts = [by_ids[tuple(ids)] for ids in train_docs]  # KeyError: not a corpus document + eos
    val_texts = [by_ids[tuple(ids)] for ids in val_docs]
    # Every document lands in exactly one split.
    assert sorted(train_texts + val_texts) == sorted(tiny_docs)
    assert not set(train_texts) & set(val_texts)
    assert len(val_texts) == pytest.approx(0.05 * len(tiny_docs), abs=1)

    for name, docs in (("train", train_docs), ("validation", val_docs)):
        expected = [i for ids in docs for i in ids]
        got = stream(packed.splits[name])
        n = len(packed.splits[name])
        assert n == len(expected) // 32
        assert got == expected[: n * 32]


def test_unpacked_documents_are_truncated_and_padded_dynamically(
    compose_cfg: ComposeCfg, tmp_path: Path, tiny_docs: list[str]
) -> None:
    cache = tmp_path / "cache"
    dm = datamodule(compose_cfg("data.packing=false"), cache)
    tok = dm.tokenizer
    full = {tuple(ids[:32]) for ids in encoded(tok, tiny_docs)}
    examples = dm.splits["train"]["input_ids"]
    assert len(examples) + len(dm.splits["validation"]) == len(tiny_docs)
    assert all(tuple(ids) in full for ids in examples)
    assert max(len(ids) for ids in examples) == 32
    assert min(len(ids) for ids in examples) < 32

    short = sorted(examples, key=len)[:4]
    longest = max(len(ids) for ids in short)
    assert longest < 32
    for objective in ("causal", "masked"):
        cfg = compose_cfg(f"objective={objective}", "data.packing=false")
        dm_obj = datamodule(cfg, cache, objective)
        build_objective(cfg, dm_obj)
        batch = dm_obj.collate_fn([{"input_ids": ids} for ids in short])
        assert batch["input_ids"].shape == (4, longest)  # padded to the batch, not to block_size
        lengths = torch.tensor([len(ids) for ids in short])
        real = torch.arange(longest)[None, :] < lengths[:, None]
        assert torch.equal(batch["attention_mask"].bool(), real)
        assert (batch["input_ids"][~real] == tok.pad_token_id).all()
        assert (batch["labels"][~real] == -100).all()


def test_split_is_deterministic_and_independent_of_the_global_seed(
    compose_cfg: ComposeCfg, tmp_path: Path
) -> None:
    builds = []
    for seed, folder in ((1, "a"), (12345, "b")):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        dm = datamodule(compose_cfg(f"seed={seed}"), tmp_path / folder)
        assert not dm.cache_hit
        builds.append({name: dm.splits[name]["input_ids"] for name in ("train", "validation")})
    assert builds[0] == builds[1]
    # Another split_seed gives another split (so the split does depend on split_seed alone).
    other = datamodule(compose_cfg("data.split_seed=1"), tmp_path / "c")
    assert other.splits["validation"]["input_ids"] != builds[0]["validation"]


def test_second_build_is_a_cache_hit_without_tokenizing(
    compose_cfg: ComposeCfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = datamodule(compose_cfg(), cache)
    assert not first.cache_hit
    forbid(
        monkeypatch,
        (packing, "tokenize"),
        (packing, "pack"),
        (tokenizer_module, "train_tokenizer"),
        (corpus_module, "load_files"),
    )
    second = datamodule(compose_cfg(), cache)
    assert second.cache_hit
    for name in ("train", "validation"):
        assert second.splits[name]["input_ids"] == first.splits[name]["input_ids"]
    assert second.tokenizer.get_vocab() == first.tokenizer.get_vocab()


def test_new_block_size_reuses_the_tokenizer_but_repacks(
    compose_cfg: ComposeCfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = datamodule(compose_cfg(), cache)
    forbid(monkeypatch, (packing, "tokenize"), (tokenizer_module, "train_tokenizer"))
    packs = []
    real_pack = packing.pack
    monkeypatch.setattr(
        packing, "pack", lambda docs, size, *a, **k: packs.append(size) or real_pack(docs, size, *a, **k)
    )
    second = datamodule(compose_cfg("data.block_size=16"), cache)
    assert not second.cache_hit
    assert packs == [16, 16]  # train and validation
    assert second.tokenizer.get_vocab() == first.tokenizer.get_vocab()
    assert all(len(ids) == 16 for ids in second.splits["train"]["input_ids"])
    assert stream(second.splits["train"])[:1024] == stream(first.splits["train"])[:1024]


@pytest.mark.parametrize(
    "override",
    ["tokenizer.vocab_size=400", "tokenizer.min_frequency=3", "data.val_fraction=0.1", "data.split_seed=7"],
)
def test_tokenizer_settings_change_retrains(
    compose_cfg: ComposeCfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, override: str
) -> None:
    cache = tmp_path / "cache"
    datamodule(compose_cfg(), cache)
    calls = []
    real_train = tokenizer_module.train_tokenizer
    monkeypatch.setattr(
        tokenizer_module, "train_tokenizer", lambda *a, **k: calls.append(a) or real_train(*a, **k)
    )
    dm = datamodule(compose_cfg(override), cache)
    assert not dm.cache_hit
    assert len(calls) == 1


def test_editing_the_corpus_invalidates_the_cache(
    compose_cfg: ComposeCfg, tmp_path: Path, tiny_docs: list[str]
) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(tiny_docs) + "\n", encoding="utf-8")
    cache = tmp_path / "cache"
    first = datamodule(compose_cfg(f"data.path={path}"), cache)
    path.write_text("\n".join(tiny_docs[::-1]) + "\n额外的一行\n", encoding="utf-8")
    second = datamodule(compose_cfg(f"data.path={path}"), cache)
    assert not second.cache_hit
    assert second.splits["train"]["input_ids"] != first.splits["train"]["input_ids"]


def test_corpus_smaller_than_one_block_is_a_config_error(compose_cfg: ComposeCfg, tmp_path: Path) -> None:
    path = tmp_path / "small.txt"
    path.write_text("".join(f"第{i}行。\n" for i in range(20)), encoding="utf-8")
    cfg = compose_cfg(f"data.path={path}", "data.block_size=256")
    with pytest.raises(ConfigError, match=r"data\.block_size"):
        datamodule(cfg, tmp_path / "cache")


def test_building_writes_nothing_outside_the_cache_folder(
    compose_cfg: ComposeCfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default_hf_cache = tmp_path / "default-hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", default_hf_cache)
    datamodule(compose_cfg(), tmp_path / "cache")
    assert not default_hf_cache.exists() or not any(default_hf_cache.iterdir())

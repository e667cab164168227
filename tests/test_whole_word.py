"""Whole-word masking on Chinese text: segmented words travel with the ids and are masked whole."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path

import datasets
import pytest
import torch
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerFast

import pretrainlab.data.packing as packing
import pretrainlab.data.tokenizer as tokenizer_module
from pretrainlab.config import ConfigError
from pretrainlab.data.tokenizer import CJK
from pretrainlab.objectives.masked import MaskedLM, MaskedLMCollator
from pretrainlab.train import build_datamodule, build_objective
from pretrainlab.validation import validate

ComposeCfg = Callable[..., DictConfig]
IGNORE = -100
WORD_START = "word_start"
SEGMENTER_MODULES = ("rjieba", "jieba")
CJK = re.compile(CJK)
BLOCK = 64

rjieba = pytest.importorskip("rjieba")  # in the `dev` extra


def oracle_word_starts(tok: PreTrainedTokenizerFast, text: str) -> tuple[list[int], list[bool]]:
    """The rule, spelt out independently of the pipeline: a `##` piece continues its word, a
    CJK character continues it when the previous token is a CJK character of the same rjieba
    word; anything else starts a word. eos ends the document and starts a word of its own."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    word_of_char: list[int] = []
    for w, word in enumerate(rjieba.cut(text)):
        word_of_char += [w] * len(word)
    assert len(word_of_char) == len(text)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    starts: list[bool] = []
    prev_cjk, prev_start = False, 0
    for token, (s, e) in zip(tokens, enc["offset_mapping"], strict=True):
        cjk = e - s == 1 and CJK.fullmatch(text[s]) is not None
        if token.startswith("##"):
            starts.append(False)
        elif cjk and prev_cjk and word_of_char[s] == word_of_char[prev_start]:
            starts.append(False)
        else:
            starts.append(True)
        prev_cjk, prev_start = cjk, s
    return [*enc["input_ids"], tok.eos_token_id], [*starts, True]


def oracle_blocks(
    tok: PreTrainedTokenizerFast, texts: list[str], size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The documents packed in blocks of `size`; a block cut inside a word starts a word there."""
    ids: list[int] = []
    starts: list[bool] = []
    for text in texts:
        doc_ids, doc_starts = oracle_word_starts(tok, text)
        ids += doc_ids
        starts += doc_starts
    n = len(ids) // size
    ids_t = torch.tensor(ids[: n * size]).view(n, size)
    starts_t = torch.tensor(starts[: n * size]).view(n, size)
    starts_t[:, 0] = True
    return ids_t, starts_t


def word_ids(starts: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(starts.long(), dim=1)


def assert_no_word_partly_masked(starts: torch.Tensor, chosen: torch.Tensor, special: torch.Tensor) -> int:
    """Every word's ordinary tokens all or none chosen (special tokens never are); returns how
    many words of 2+ tokens were chosen."""
    assert not chosen[special].any()
    words = word_ids(starts)
    whole_multi = 0
    for row_words, row_chosen, row_special in zip(words, chosen, special, strict=True):
        for w in row_words.unique():
            in_word = row_chosen[(row_words == w) & ~row_special]
            assert in_word.all() or not in_word.any(), "a word was masked partly"
            whole_multi += int(in_word.all() and len(in_word) > 1)
    return whole_multi


@pytest.fixture(scope="module")
def chinese_blocks(
    tiny_tokenizer: PreTrainedTokenizerFast, tiny_docs: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    ids, starts = oracle_blocks(tiny_tokenizer, tiny_docs, BLOCK)
    # The corpus is Chinese: most words span several characters, no token is a ## piece.
    assert float(starts.float().mean()) < 0.75
    return ids, starts


def collate_with_words(collator: MaskedLMCollator, ids: torch.Tensor, starts: torch.Tensor) -> dict:
    return collator(
        [{"input_ids": row.tolist(), WORD_START: s.tolist()} for row, s in zip(ids, starts, strict=True)]
    )


# -- tokenization and packing ----------------------------------------------------------------


def test_tokenize_marks_segmented_chinese_words_and_keeps_the_hash_rule_for_latin(
    tiny_tokenizer: PreTrainedTokenizerFast, tiny_docs: list[str]
) -> None:
    texts = [*tiny_docs[:50], "中共中央总书记 internationalization of pretraining", "X光机hello世界"]
    docs = packing.tokenize(
        datasets.Dataset.from_dict({"text": texts}), tiny_tokenizer, word_segmenter="rjieba"
    )
    plain = packing.tokenize(datasets.Dataset.from_dict({"text": texts}), tiny_tokenizer)
    assert docs[packing.IDS] == plain[packing.IDS]  # same ids with or without words
    for text, ids, starts in zip(texts, docs[packing.IDS], docs[WORD_START], strict=True):
        assert (ids, starts) == oracle_word_starts(tiny_tokenizer, text)
    # Latin: exactly the ## rule.
    ids, starts = docs[packing.IDS][-2], docs[WORD_START][-2]
    tokens = tiny_tokenizer.convert_ids_to_tokens(ids)
    latin = [i for i, t in enumerate(tokens) if t.isascii() or t.startswith("##")]
    assert latin
    assert all(starts[i] == (not tokens[i].startswith("##")) for i in latin)
    # 中共中央 / 总书记: two words of 4 and 3 characters.
    assert starts[:7] == [True, False, False, False, True, False, False]


@pytest.mark.parametrize("block_size", [BLOCK, 13])
def test_pack_keeps_word_starts_beside_the_ids(
    tiny_tokenizer: PreTrainedTokenizerFast, tiny_docs: list[str], block_size: int
) -> None:
    docs = packing.tokenize(
        datasets.Dataset.from_dict({"text": tiny_docs}), tiny_tokenizer, word_segmenter="rjieba"
    )
    blocks = packing.pack(docs, block_size)
    ids, starts = oracle_blocks(tiny_tokenizer, tiny_docs, block_size)
    assert torch.equal(torch.tensor(blocks[packing.IDS]), ids)
    assert torch.equal(torch.tensor(blocks[WORD_START]), starts)
    # Some block is cut inside a word: its first token is marked as a word start all the same.
    stream = [s for doc in docs[WORD_START] for s in doc]
    assert any(not stream[b * block_size] for b in range(len(blocks)))
    truncated = packing.truncate(docs, 5)
    assert truncated[WORD_START] == [s[:5] for s in docs[WORD_START]]
    assert truncated[packing.IDS] == [i[:5] for i in docs[packing.IDS]]


# -- the collator -----------------------------------------------------------------------------


@pytest.mark.parametrize("probability", [0.15, 0.3])
def test_whole_words_are_masked_whole_at_the_configured_token_share(
    tiny_tokenizer: PreTrainedTokenizerFast,
    chinese_blocks: tuple[torch.Tensor, torch.Tensor],
    probability: float,
) -> None:
    ids, starts = chinese_blocks
    collator = MaskedLMCollator(tiny_tokenizer, mask_probability=probability, whole_word_mask=True)
    special = torch.isin(ids, torch.tensor(tiny_tokenizer.all_special_ids))
    chosen_total = ordinary_total = 0
    counts = {"mask": 0, "same": 0, "random": 0}
    multi = 0
    for seed in range(4):
        torch.manual_seed(seed)
        batch = collate_with_words(collator, ids, starts)
        labels, inputs = batch["labels"], batch["input_ids"]
        chosen = labels != IGNORE
        assert torch.equal(labels[chosen], ids[chosen])
        assert torch.equal(inputs[~chosen], ids[~chosen])
        multi += assert_no_word_partly_masked(starts, chosen, special)
        chosen_total += int(chosen.sum())
        ordinary_total += int((~special).sum())
        masked_in = inputs[chosen]
        counts["mask"] += int((masked_in == tiny_tokenizer.mask_token_id).sum())
        counts["same"] += int((masked_in == ids[chosen]).sum())
        counts["random"] += int(
            ((masked_in != tiny_tokenizer.mask_token_id) & (masked_in != ids[chosen])).sum()
        )
    assert multi > 500
    # Words are chosen with probability p, so p of the tokens are, in expectation.
    assert chosen_total / ordinary_total == pytest.approx(probability, abs=0.01)
    assert counts["mask"] / chosen_total == pytest.approx(0.8, abs=0.02)
    assert counts["random"] / chosen_total == pytest.approx(0.1, abs=0.02)
    assert counts["same"] / chosen_total == pytest.approx(0.1, abs=0.02)


def test_word_starts_are_read_under_padding(tiny_tokenizer: PreTrainedTokenizerFast, chinese_blocks) -> None:
    ids, starts = chinese_blocks
    lengths = torch.randint(5, BLOCK + 1, (len(ids),), generator=torch.Generator().manual_seed(0))
    examples = [
        {"input_ids": row[:n].tolist(), WORD_START: s[:n].tolist()}
        for row, s, n in zip(ids, starts, lengths, strict=True)
    ]
    torch.manual_seed(0)
    batch = MaskedLMCollator(tiny_tokenizer, mask_probability=0.5, whole_word_mask=True)(examples)
    real = batch["attention_mask"].bool()
    assert not (batch["labels"] != IGNORE)[~real].any()
    cut = torch.where(real, starts[:, : real.shape[1]], torch.ones_like(real))
    special = ~real | torch.isin(ids[:, : real.shape[1]], torch.tensor(tiny_tokenizer.all_special_ids))
    assert assert_no_word_partly_masked(cut, batch["labels"] != IGNORE, special) > 100


def test_a_special_token_inside_a_word_does_not_split_it(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    """[UNK] stands for a character too rare for the vocabulary, often inside a Chinese word:
    it is never chosen, and the characters around it are chosen together."""
    tok = tiny_tokenizer
    chars = [t for t in tok.convert_ids_to_tokens(list(range(len(tok)))) if CJK.fullmatch(t)][:3]
    a, b, c = tok.convert_tokens_to_ids(chars)
    ids = torch.tensor([[a, tok.unk_token_id, b, c, tok.eos_token_id] * 40] * 50)
    starts = torch.tensor([[True, False, False, True, True] * 40] * 50)
    torch.manual_seed(0)
    batch = collate_with_words(MaskedLMCollator(tok, mask_probability=0.5, whole_word_mask=True), ids, starts)
    chosen = batch["labels"] != IGNORE
    assert not chosen[:, 1::5].any() and not chosen[:, 4::5].any()
    assert torch.equal(chosen[:, 0::5], chosen[:, 2::5])  # a [UNK] b: one word
    assert not torch.equal(chosen[:, 0::5], chosen[:, 3::5])  # c: a word of its own
    assert float(chosen[:, 0::5].float().mean()) == pytest.approx(0.5, abs=0.03)


# -- the data module --------------------------------------------------------------------------


def test_whole_word_blocks_reach_the_collator(
    compose_cfg: ComposeCfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    plain_cfg = compose_cfg("objective=masked", f"paths.cache_dir={cache}")
    plain = build_datamodule(plain_cfg, MaskedLM)
    plain.setup()
    assert plain.splits["train"].column_names == [packing.IDS]

    cfg = compose_cfg(
        "objective=masked",
        "objective.whole_word_mask=true",
        "objective.mask_probability=0.3",
        f"paths.cache_dir={cache}",
    )
    validate(cfg)
    # The tokenizer and the tokenized documents are shared with the run without words.
    monkeypatch.setattr(
        tokenizer_module, "train_tokenizer", lambda *a, **k: pytest.fail("tokenizer retrained")
    )
    dm = build_datamodule(cfg, MaskedLM)
    dm.setup()
    assert dm.tokenizer_dir == plain.tokenizer_dir
    assert dm.blocks_dir != plain.blocks_dir  # another cache key for the blocks
    for name in ("train", "validation"):
        assert dm.splits[name][packing.IDS] == plain.splits[name][packing.IDS]
        starts = dm.splits[name][WORD_START]
        assert all(
            len(s) == len(i) and s[0] for s, i in zip(starts, dm.splits[name][packing.IDS], strict=True)
        )
        assert sum(map(sum, starts)) < 0.75 * sum(map(len, starts))  # Chinese words, not characters

    build_objective(cfg, dm)
    seen: list[list[dict]] = []
    inner = dm.collate_fn.collate
    dm.collate_fn.collate = lambda examples: seen.append(examples) or inner(examples)
    dm.plan_stream(seed=0, total_batches=3)
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for batch in loader:
            examples = seen[-1]
            assert all(WORD_START in e for e in examples)
            starts = torch.tensor([e[WORD_START] for e in examples])
            ids = torch.tensor([e[packing.IDS] for e in examples])
            special = torch.isin(ids, torch.tensor(dm.tokenizer.all_special_ids))
            assert assert_no_word_partly_masked(starts, batch["labels"] != IGNORE, special) > 0
    assert len(seen) == 3 + len(dm.val_dataloader())

    # Cached: a second build segments nothing.
    monkeypatch.setattr(packing, "tokenize", lambda *a, **k: pytest.fail("tokenized again"))
    again = build_datamodule(cfg, MaskedLM)
    again.setup()
    assert again.cache_hit
    assert again.splits["train"][WORD_START] == dm.splits["train"][WORD_START]


def test_a_run_without_whole_word_masking_never_imports_a_segmenter(
    compose_cfg: ComposeCfg, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in SEGMENTER_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # `import rjieba` now raises ImportError
    cfg = compose_cfg("objective=masked", f"paths.cache_dir={tmp_path / 'fresh'}")
    validate(cfg)
    dm = build_datamodule(cfg, MaskedLM)
    dm.setup()
    assert not dm.cache_hit
    assert dm.splits["train"].column_names == [packing.IDS]
    build_objective(cfg, dm)
    batch = dm.collate_fn([{"input_ids": ids} for ids in dm.splits["train"][packing.IDS][:4]])
    assert (batch["labels"] != IGNORE).any()


# -- configuration ----------------------------------------------------------------------------


def test_unknown_segmenter_is_a_config_error(compose_cfg: ComposeCfg) -> None:
    cfg = compose_cfg("objective=masked", "objective.whole_word_mask=true", "objective.word_segmenter=thulac")
    with pytest.raises(ConfigError, match=r"^objective\.word_segmenter=thulac: must be one of") as err:
        validate(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("segmenter", SEGMENTER_MODULES)
def test_missing_segmenter_package_says_how_to_install_it(
    compose_cfg: ComposeCfg, monkeypatch: pytest.MonkeyPatch, segmenter: str
) -> None:
    monkeypatch.setitem(sys.modules, segmenter, None)
    assert importlib.util.find_spec(segmenter) is None
    cfg = compose_cfg(
        "objective=masked", "objective.whole_word_mask=true", f"objective.word_segmenter={segmenter}"
    )
    with pytest.raises(
        ConfigError, match=rf"^objective\.word_segmenter={segmenter}: .*pip install {segmenter}"
    ):
        validate(cfg)
    # Without whole-word masking the segmenter is never needed.
    validate(compose_cfg("objective=masked", f"objective.word_segmenter={segmenter}"))


def test_jieba_and_rjieba_give_the_same_words(
    tiny_tokenizer: PreTrainedTokenizerFast, tiny_docs: list[str]
) -> None:
    pytest.importorskip("jieba")
    ds = datasets.Dataset.from_dict({"text": tiny_docs[:40]})
    a = packing.tokenize(ds, tiny_tokenizer, word_segmenter="rjieba")
    b = packing.tokenize(ds, tiny_tokenizer, word_segmenter="jieba")
    assert a[WORD_START] == b[WORD_START]

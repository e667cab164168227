"""The corpus tokenizer (pretrainlab.data.tokenizer): trained locally or loaded from a folder."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from conftest import word_level_tokenizer
from pretrainlab.config import ConfigError
from pretrainlab.data.tokenizer import (
    EXTRA_SPECIAL,
    SPECIAL_TOKENS,
    load_pretrained_tokenizer,
    train_tokenizer,
)

CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
EXPECTED_SPECIALS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "</s>",
    *(f"<extra_id_{i}>" for i in range(100)),
    "[sop]",
    "[eop]",
    "[gMASK]",
]


@pytest.fixture(scope="module")
def docs(tiny_docs: list[str]) -> list[str]:
    return tiny_docs


@pytest.fixture(scope="module")
def tok(tiny_tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    # Trained on Chinese only: English must still work through the added ASCII pieces.
    return tiny_tokenizer


def mixed_texts(docs: list[str]) -> list[str]:
    zh = [d for d in docs if len(d) > 20][:3]
    return [
        f"{zh[0][:8]} Hello, World! 2024年 {zh[0][8:16]}",
        f"{zh[1][:12]}with English words and digits 1234567890{zh[1][12:]}",
        f"  leading and  double  spaces {zh[2][:6]} trailing ",
        "internationalization of pretraining, 3.14159 % (x+y)=z",
        *zh,
    ]


def test_cjk_characters_are_single_tokens(tok: PreTrainedTokenizerFast, docs: list[str]) -> None:
    checked = 0
    for doc in docs[:100]:
        for token in tok.tokenize(doc):
            if CJK.search(token):
                assert len(token) == 1, (token, doc)
                checked += 1
    assert checked > 1000
    assert tok.tokenize("西安交通大学") == list("西安交通大学")
    # Full-width digits and CJK punctuation stand alone too.
    assert tok.tokenize("１２月３１日，（附图片１张）《书》。") == list(
        "１２月３１日，（附图片１张）《书》。"
    )


def test_decode_encode_round_trip(tok: PreTrainedTokenizerFast, docs: list[str]) -> None:
    for text in mixed_texts(docs):
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text
    for doc in docs:
        ids = tok(doc)["input_ids"]
        assert tok.unk_token_id not in ids, doc
        assert tok.decode(ids) == doc


def test_every_special_token_is_one_special_token(tok: PreTrainedTokenizerFast) -> None:
    assert set(EXPECTED_SPECIALS) <= set(SPECIAL_TOKENS)
    specials = set(tok.all_special_tokens)
    ids = set()
    for token in EXPECTED_SPECIALS:
        assert token in specials, token
        token_id = tok.convert_tokens_to_ids(token)
        assert token_id != tok.unk_token_id or token == "[UNK]"
        assert tok(token, add_special_tokens=False)["input_ids"] == [token_id], token
        ids.add(token_id)
    assert len(ids) == len(EXPECTED_SPECIALS)
    roles = {
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
        "eos_token": "</s>",
    }
    assert {role: getattr(tok, role) for role in roles} == roles


def test_special_tokens_are_recognised_inside_raw_text(tok: PreTrainedTokenizerFast) -> None:
    text = "西安[MASK]交通<extra_id_7>大学</s>[gMASK]x[sop]y[eop]<extra_id_99>"
    tokens = tok.convert_ids_to_tokens(tok(text)["input_ids"])
    assert tokens == [
        "西",
        "安",
        "[MASK]",
        "交",
        "通",
        "<extra_id_7>",
        "大",
        "学",
        "</s>",
        "[gMASK]",
        "x",
        "[sop]",
        "y",
        "[eop]",
        "<extra_id_99>",
    ]


def test_no_cls_or_sep_added(tok: PreTrainedTokenizerFast) -> None:
    ids = tok("西安交通大学 hello")["input_ids"]
    assert ids == tok("西安交通大学 hello", add_special_tokens=False)["input_ids"]
    assert tok.cls_token_id not in ids
    assert tok.sep_token_id not in ids
    assert tok.eos_token_id not in ids
    assert tok.decode(ids) == "西安交通大学 hello"


def test_save_pretrained_round_trip(tok: PreTrainedTokenizerFast, docs: list[str], tmp_path: Path) -> None:
    tok.save_pretrained(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(loaded) == len(tok)
    assert set(loaded.all_special_tokens) == set(tok.all_special_tokens)
    for text in [*mixed_texts(docs), "西安[MASK]交通<extra_id_7>大学</s>"]:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
        assert loaded.decode(loaded(text)["input_ids"]) == tok.decode(tok(text)["input_ids"])


def test_vocab_smaller_than_requested_logs_a_warning(
    docs: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pretrainlab.data.tokenizer"):
        small = train_tokenizer(docs[:50], vocab_size=50_000, min_frequency=2, model_max_length=512)
    assert len(small) < 50_000
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("tokenizer.vocab_size" in r.getMessage() for r in warnings)


# -- loading a pretrained tokenizer ---------------------------------------------------------


def word_level_folder(folder: Path, specials: dict[str, str], words: int = 50) -> Path:
    """A plain WordLevel tokenizer saved with save_pretrained, with only the given roles."""
    tokens = [*specials.values(), *(f"w{i}" for i in range(words))]
    word_level_tokenizer(tokens, **specials).save_pretrained(str(folder))
    return folder


def test_pretrained_without_mask_is_rejected_for_masked(tmp_path: Path) -> None:
    folder = word_level_folder(
        tmp_path / "nomask", {"unk_token": "[UNK]", "pad_token": "[PAD]", "eos_token": "</s>"}
    )
    with pytest.raises(ConfigError, match=rf"^tokenizer\.pretrained={re.escape(str(folder))}.*mask"):
        load_pretrained_tokenizer(str(folder), "masked")
    # The causal objective needs no [MASK]: the same folder is fine there.
    assert load_pretrained_tokenizer(str(folder), "causal").eos_token == "</s>"


def test_pretrained_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^tokenizer\.pretrained="):
        load_pretrained_tokenizer(str(tmp_path / "nothing-here"), "causal")


def test_pretrained_without_pad_uses_eos_for_causal(tmp_path: Path) -> None:
    folder = word_level_folder(tmp_path / "nopad", {"unk_token": "[UNK]", "eos_token": "</s>"})
    tok = load_pretrained_tokenizer(str(folder), "causal")
    assert tok.pad_token == "</s>"
    assert tok.pad_token_id == tok.eos_token_id


def test_pretrained_missing_sentinels_gets_them_added(tmp_path: Path) -> None:
    roles = {"unk_token": "[UNK]", "pad_token": "[PAD]", "mask_token": "[MASK]", "eos_token": "</s>"}
    folder = word_level_folder(tmp_path / "nosentinels", roles)
    before = AutoTokenizer.from_pretrained(str(folder))
    tok = load_pretrained_tokenizer(str(folder), "masked")
    assert len(tok) == len(before) + len(EXTRA_SPECIAL)
    # Existing ids are untouched; the new tokens are special and stay whole inside raw text.
    assert tok("w1 w2 [MASK] w3")["input_ids"] == before("w1 w2 [MASK] w3")["input_ids"]
    specials = set(tok.all_special_tokens)
    for token in EXTRA_SPECIAL:
        assert token in specials, token
        assert tok(f"w1 {token} w2", add_special_tokens=False)["input_ids"] == [
            before.convert_tokens_to_ids("w1"),
            tok.convert_tokens_to_ids(token),
            before.convert_tokens_to_ids("w2"),
        ]
    assert tok.mask_token == "[MASK]"


def test_training_says_when_it_starts_and_ends(docs: list[str], caplog: pytest.LogCaptureFixture):
    """No progress bar (a bar is noise in a sweep's logs), but a start and an end line: how many
    texts, the vocabulary asked for and made, and the seconds it took."""
    with caplog.at_level(logging.INFO, logger="pretrainlab.data.tokenizer"):
        tok = train_tokenizer(docs, vocab_size=300, min_frequency=2, model_max_length=64)
        train_tokenizer((d for d in docs[:50]), vocab_size=300, min_frequency=2, model_max_length=64)
    lines = [r.getMessage() for r in caplog.records if r.name == "pretrainlab.data.tokenizer"]
    info = [line for line in lines if line.startswith("tokenizer: ")]
    assert len(info) == 4, lines
    start, end, start_generator, end_generator = info
    assert f"on {len(docs)} texts" in start and "vocab_size=300" in start and start.endswith("...")
    assert re.search(rf"trained on {len(docs)} texts in \d+\.\d s: a vocabulary of {len(tok)} tokens", end)
    assert end.endswith("(vocab_size=300 asked)")
    assert "vocab_size=300" in start_generator  # a generator's length is known only at the end
    assert "trained on 50 texts" in end_generator


def test_training_streams_a_split_in_batches_with_a_progress_bar(
    docs: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The texts come from the split on disk a batch at a time (never the whole corpus as a list),
    with a bar counting them that obeys datasets' progress-bar switch; the vocabulary is the one
    a list of the same texts gives."""
    import datasets
    from datasets import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled

    import pretrainlab.data.tokenizer as tokenizer_module

    split = datasets.Dataset.from_dict({"text": docs})
    widest: list[int] = []
    real_iter = datasets.Dataset.iter

    def iter_spy(self, batch_size, *args, **kwargs):
        widest.append(batch_size)
        return real_iter(self, batch_size, *args, **kwargs)

    monkeypatch.setattr(datasets.Dataset, "iter", iter_spy)
    was_enabled = is_progress_bar_enabled()
    enable_progress_bars()
    try:
        texts = tokenizer_module.DatasetTexts(split, "text", batch_size=64)
        streamed = train_tokenizer(texts, vocab_size=300, min_frequency=2, model_max_length=64)
        bar = capsys.readouterr().err
        disable_progress_bars()
        train_tokenizer(texts, vocab_size=300, min_frequency=2, model_max_length=64)
        silent = capsys.readouterr().err
    finally:
        (enable_progress_bars if was_enabled else disable_progress_bars)()
    assert widest and max(widest) == 64
    assert re.search(rf"train tokenizer: 100%.*\b{len(docs)}/{len(docs)}\b", bar), bar
    assert "train tokenizer" not in silent
    listed = train_tokenizer(docs, vocab_size=300, min_frequency=2, model_max_length=64)
    assert set(streamed.get_vocab()) == set(listed.get_vocab())

"""Word boundaries for whole-word masking: WordPiece ``##`` marks, and a segmenter for Chinese.

The tokenizer isolates every CJK character, so on Chinese text the ``##`` rule makes each
character a word and whole-word masking would change nothing. As in Chinese-BERT-wwm (Cui et
al.), a word segmenter groups the characters: a CJK character continues the word of the CJK
character before it when the segmenter put both in one word. Everything else keeps the
``##`` rule. The segmenter is imported only when a run asks for word boundaries.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import re
from collections.abc import Callable
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from pretrainlab.data.tokenizer import CJK, CONTINUATION

# Segmenter name -> the module to import (also its PyPI name). Both give the same words with
# their bundled dictionaries; rjieba (Rust) segments the built-in corpus ~7x faster than jieba.
SEGMENTERS = {"rjieba": "rjieba", "jieba": "jieba"}
DEFAULT_SEGMENTER = "rjieba"
_CJK_CHAR = re.compile(CJK)


def segmenter_for(objective: Any) -> str | None:
    """The segmenter an objective's data needs: only whole-word masking asks for one.

    Configs saved before ``word_segmenter`` existed get the default.
    """
    if not objective.get("whole_word_mask"):
        return None
    return objective.get("word_segmenter") or DEFAULT_SEGMENTER


def is_installed(name: str) -> bool:
    """Whether the segmenter's package can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(SEGMENTERS[name]) is not None
    except (ImportError, ValueError):
        return False


def segmenter_version(name: str) -> str:
    """The installed version, part of the cache key: a new dictionary may give other words."""
    try:
        return importlib.metadata.version(SEGMENTERS[name])
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def segmenter(name: str) -> Callable[[str], list[str]]:
    """``cut(text) -> words`` whose concatenation is ``text`` (loaded once per process)."""
    if name == "rjieba":
        import rjieba

        return rjieba.cut
    if name == "jieba":
        import jieba

        jieba.setLogLevel(logging.WARNING)  # it logs its dictionary loading at DEBUG to stderr
        return jieba.Tokenizer().lcut
    raise ValueError(f"unknown word segmenter {name!r} (one of {', '.join(SEGMENTERS)})")


def continuation_table(tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """(vocab,) bool: which ids are ``##`` pieces, looked up per token instead of decoding it."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return np.array([t.startswith(CONTINUATION) for t in tokens], dtype=bool)


@functools.cache
def _cjk_table() -> np.ndarray:
    """(65536,) bool: the BMP code points the tokenizer isolates (its CJK ranges are all there)."""
    return np.array([_CJK_CHAR.fullmatch(chr(c)) is not None for c in range(0x10000)], dtype=bool)


def word_starts(
    text: str, offsets: np.ndarray, continues: np.ndarray, cut: Callable[[str], list[str]]
) -> np.ndarray:
    """For each token of ``text`` (character ``offsets`` (n, 2), ``continues``: is a ``##``
    piece, (n,)): does it start a word?

    A ``##`` piece never does; a token that is one CJK character does not when the previous
    token is one too and ``cut`` put both characters in one word; every other token does.
    """
    lengths = [len(word) for word in cut(text)]
    if sum(lengths) != len(text):
        raise ValueError("the word segmenter dropped or added characters")
    starts = ~np.asarray(continues, dtype=bool)
    if len(starts) < 2:
        return starts
    word_of_char = np.repeat(np.arange(len(lengths)), lengths)
    first, last = offsets[:, 0], offsets[:, 1]
    points = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")[np.minimum(first, len(text) - 1)]
    table = _cjk_table()
    cjk = (last - first == 1) & (points < len(table)) & table[np.minimum(points, len(table) - 1)]
    same_word = word_of_char[np.minimum(first, len(text) - 1)]
    inside = cjk[1:] & cjk[:-1] & (same_word[1:] == same_word[:-1])
    starts[1:] &= ~inside
    return starts

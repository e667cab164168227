"""Bits per character of the true continuation of held-out prefixes.

Each generative objective scores the same text with its own ``continuation_nll`` (causal
after the prefix, seq2seq behind a sentinel, prefix in a [gMASK] piece). Dividing by
characters, not tokens, keeps the number comparable when tokenizers differ. The masked
objective cannot score a continuation: it reports None (not applicable), never zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pretrainlab.evaluation.cloze import eval_mode
from pretrainlab.evaluation.items import ItemScores, item_id

ContinuationItem = tuple[list[int], list[int]]


def make_continuation_items(
    documents: Sequence[Sequence[int]],
    prefix_tokens: int = 16,
    continuation_tokens: int = 32,
    count: int | None = None,
) -> list[ContinuationItem]:
    """``(prefix, continuation)`` = the first ``prefix_tokens`` tokens of a document and the
    (at most ``continuation_tokens``) tokens that follow them, for each document (in order)
    longer than ``prefix_tokens``; at most ``count`` items. No randomness: the same documents
    give the same items (bits per character weighs a short continuation by its characters)."""
    if prefix_tokens < 1 or continuation_tokens < 1:
        raise ValueError(
            f"prefix_tokens={prefix_tokens}, continuation_tokens={continuation_tokens}: must be >= 1"
        )
    items: list[ContinuationItem] = []
    for doc in documents:
        if count is not None and len(items) >= count:
            break
        if len(doc) > prefix_tokens:
            ids = [int(t) for t in doc]
            items.append((ids[:prefix_tokens], ids[prefix_tokens : prefix_tokens + continuation_tokens]))
    return items


def continuation_characters(tokenizer: Any, continuation: Sequence[int]) -> int:
    """Characters (not bytes) of the decoded continuation."""
    return len(tokenizer.decode(list(continuation)))


def continuation_item_scores(module: Any, items: Sequence[ContinuationItem]) -> ItemScores | None:
    """Per item: bits of the continuation (the numerator) and its characters (the weight), so
    ``value()`` is the pooled bits per character and a study can resample items. None where it
    does not apply (a non-generative objective: masked)."""
    if not getattr(module, "generative", False):
        return None
    ids: list[str] = []
    bits: list[float] = []
    characters: list[float] = []
    with eval_mode(module):
        for prefix, continuation in items:
            if not continuation:
                continue
            nats = float(module.continuation_nll(list(prefix), list(continuation)).double().sum())
            ids.append(item_id(prefix, continuation))
            bits.append(nats / math.log(2))
            characters.append(float(continuation_characters(module.tokenizer, continuation)))
    return ItemScores("continuation/bpc", ids, bits, characters)


def bits_per_character(module: Any, items: Sequence[ContinuationItem]) -> float | None:
    """sum of NLL (bits) over every continuation token / characters of all continuations.

    None where it does not apply: a non-generative objective (masked), or no characters.
    """
    scores = continuation_item_scores(module, items)
    return None if scores is None else scores.value()


def evaluate_continuation(module: Any, items: Sequence[ContinuationItem]) -> dict[str, float | None]:
    """``{"continuation/bpc": ...}``: null for the masked objective."""
    return {"continuation/bpc": bits_per_character(module, items)}

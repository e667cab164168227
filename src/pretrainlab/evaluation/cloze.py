"""Cloze: fill one blanked span of k tokens, each objective its own natural way.

Every objective answers the same held-out items (same documents, same spans), so the numbers
compare across objectives even though their training losses do not:

* masked  -- the span becomes k [MASK]s, read in parallel (argmax at each [MASK]);
* causal  -- greedy continuation of the left context only, exactly k tokens;
* seq2seq -- the span becomes one sentinel, the decoder writes the span behind it (greedy);
* prefix  -- the span becomes one GLM blank ([MASK]), decoded from [sop] (greedy).

seq2seq and prefix do not know k: a span they end early is padded with -1 (wrong tokens), a
longer one is cut to k. The causal model never stops early: an eos it predicts is a wrong token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pretrainlab.evaluation.items import ItemScores, item_id
from pretrainlab.generation.decode import generation_config

OBJECTIVES = ("masked", "causal", "seq2seq", "prefix")
# A prediction shorter than k is padded with this id, which matches no token.
MISSING = -1


@dataclass
class ClozeItem:
    """``left + answer + right`` is a window of a held-out document; ``answer`` is blanked.

    ``starts_document``: ``left`` begins at the document's first token (the causal model is
    then given the eos that precedes every document in packed training text).
    """

    left: list[int]
    answer: list[int]
    right: list[int]
    k: int
    document: int = 0
    starts_document: bool = False


def make_cloze_items(
    documents: Sequence[Sequence[int]],
    ks: Sequence[int] = (1, 2, 4),
    per_k: int = 64,
    seed: int = 0,
    max_context: int = 48,
    min_context: int = 1,
) -> list[ClozeItem]:
    """``per_k`` items for each k: a document and a span position drawn with a seeded generator.

    Documents need ``k + 2 * min_context`` tokens (context on both sides of the span); each k
    draws from its own generator (``seed``, k), so its items do not depend on the other ks, and
    the items for a smaller ``per_k`` are the first ones of a larger. Documents are visited in
    a seeded order, again from the start when there are fewer than ``per_k``. Context is cut to
    ``max_context`` tokens per side so a window fits the positions a model was trained on.
    A k that no document is long enough for gets no items.
    """
    if per_k < 0 or min_context < 0 or max_context < min_context:
        raise ValueError(f"per_k={per_k}, min_context={min_context}, max_context={max_context}: invalid")
    items: list[ClozeItem] = []
    for k in ks:
        if k < 1:
            raise ValueError(f"ks: span length {k} must be >= 1")
        rng = np.random.default_rng([seed, k])
        eligible = [i for i, doc in enumerate(documents) if len(doc) >= k + 2 * min_context]
        if not eligible:
            continue
        order = rng.permutation(len(eligible))
        for j in range(per_k):
            index = eligible[int(order[j % len(eligible)])]
            doc = [int(t) for t in documents[index]]
            start = int(rng.integers(min_context, len(doc) - k - min_context + 1))
            left_start = max(0, start - max_context)
            items.append(
                ClozeItem(
                    left=doc[left_start:start],
                    answer=doc[start : start + k],
                    right=doc[start + k : start + k + max_context],
                    k=k,
                    document=index,
                    starts_document=left_start == 0,
                )
            )
    return items


@contextlib.contextmanager
def eval_mode(module: Any) -> Iterator[None]:
    """Eval mode and no gradients inside; the module's training mode is restored afterwards."""
    was_training = getattr(module, "training", None)
    if isinstance(module, torch.nn.Module):
        module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if isinstance(module, torch.nn.Module) and was_training is not None:
            module.train(was_training)


def _device(module: Any) -> torch.device:
    return next(module.model.parameters()).device


def _fit(prediction: Sequence[int], k: int) -> list[int]:
    """Exactly k ids: cut, or padded with ``MISSING``."""
    prediction = [int(t) for t in prediction[:k]]
    return prediction + [MISSING] * (k - len(prediction))


def _greedy(tokenizer: Any, max_new_tokens: int) -> Any:
    return generation_config({"do_sample": False, "max_new_tokens": max_new_tokens}, tokenizer)


def fill_masked(module: Any, item: ClozeItem) -> list[int]:
    """k [MASK]s in place of the span, all predicted in one forward pass (argmax each)."""
    tok = module.tokenizer
    ids = [*item.left, *[tok.mask_token_id] * item.k, *item.right]
    batch = torch.tensor([ids], device=_device(module))
    logits = module.model(input_ids=batch, attention_mask=torch.ones_like(batch)).logits[0]  # (T, V)
    start = len(item.left)
    return logits[start : start + item.k].argmax(-1).tolist()


def fill_causal(module: Any, item: ClozeItem) -> list[int]:
    """Greedy: the argmax next token, k times, from the left context alone; eos does not stop it."""
    tok = module.tokenizer
    ids = ([tok.eos_token_id] if item.starts_document else []) + list(item.left)
    if not ids:  # nothing to condition on: start like a document
        ids = [tok.eos_token_id]
    out: list[int] = []
    device = _device(module)
    for _ in range(item.k):
        logits = module.model(input_ids=torch.tensor([ids + out], device=device)).logits[0, -1]  # (V,)
        out.append(int(logits.argmax()))
    return out


def fill_span(module: Any, item: ClozeItem) -> list[int]:
    """seq2seq / prefix: one [MASK] for the span, filled by the objective's own ``fill_spans``.

    seq2seq turns it into ``<extra_id_0>``; the decoder first writes that sentinel, so it may
    write k + 1 tokens. prefix (GLM) decodes the blank from [sop], k tokens at most.
    """
    tok = module.tokenizer
    budget = item.k + 1 if module.name == "seq2seq" else item.k
    spans, _ = module.fill_spans([*item.left, tok.mask_token_id, *item.right], _greedy(tok, budget))
    return list(spans[0]) if spans else []


def fill_cloze(module: Any, item: ClozeItem) -> list[int]:
    """The objective's prediction for the blank of ``item``: exactly ``item.k`` ids (-1 = none)."""
    fillers = {"masked": fill_masked, "causal": fill_causal, "seq2seq": fill_span, "prefix": fill_span}
    if module.name not in fillers:
        raise ValueError(f"objective={module.name}: no cloze adapter (one of {', '.join(OBJECTIVES)})")
    with eval_mode(module):
        return _fit(fillers[module.name](module, item), item.k)


def cloze_item_scores(
    items: Sequence[ClozeItem], predictions: Sequence[Sequence[int]], ks: Sequence[int] | None = None
) -> list[ItemScores]:
    """Per-item ``cloze/exact_match_k{k}`` (1 or 0) and ``cloze/token_accuracy_k{k}`` (share of
    the k positions right) for each k, so a study can test differences item by item."""
    ks = sorted({item.k for item in items}) if ks is None else list(ks)
    scores: list[ItemScores] = []
    for k in ks:
        ids, exact, tokens = [], [], []
        for item, prediction in zip(items, predictions, strict=True):
            if item.k != k:
                continue
            filled = _fit(prediction, k)
            ids.append(item_id(item.left, item.answer, item.right))
            exact.append(float(item.answer == filled))
            tokens.append(sum(a == p for a, p in zip(item.answer, filled, strict=True)) / k)
        scores += [
            ItemScores(f"cloze/exact_match_k{k}", ids, exact),
            ItemScores(f"cloze/token_accuracy_k{k}", ids, tokens),
        ]
    return scores


def score_cloze(
    items: Sequence[ClozeItem], predictions: Sequence[Sequence[int]], ks: Sequence[int] | None = None
) -> dict[str, float | None]:
    """``cloze/exact_match_k{k}`` (whole span right) and ``cloze/token_accuracy_k{k}`` (share of
    positions right) per k; None for a k without items."""
    return {scores.metric: scores.value() for scores in cloze_item_scores(items, predictions, ks)}


def evaluate_cloze_items(
    module: Any, items: Sequence[ClozeItem], ks: Sequence[int] | None = None
) -> list[ItemScores]:
    """Fill every item and score it per item and k (see ``cloze_item_scores``)."""
    with eval_mode(module):
        predictions = [fill_cloze(module, item) for item in items]
    return cloze_item_scores(items, predictions, ks)


def evaluate_cloze(
    module: Any, items: Sequence[ClozeItem], ks: Sequence[int] | None = None
) -> dict[str, float | None]:
    """Fill every item and score it per k (see ``score_cloze``); pass ``ks`` for stable keys
    even when a k got no items."""
    return {scores.metric: scores.value() for scores in evaluate_cloze_items(module, items, ks)}

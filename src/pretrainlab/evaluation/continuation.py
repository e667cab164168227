"""Bits per character of the true continuation of held-out prefixes.

Each generative objective scores the same text with its own ``continuation_nll`` (causal
after the prefix, seq2seq behind a sentinel, prefix in a [gMASK] piece). Dividing by
characters, not tokens, keeps the number comparable when tokenizers differ. The masked
objective cannot score a continuation: it reports None (not applicable), never zero.

Items are scored ``BATCH_SIZE`` at a time (``continuation_nll_batch``: the objectives' own
``continuation_nll`` with a batch dimension; items of one length share a batch, so the
per-item scores are those of one item at a time), so the evaluation is not per-call overhead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from pretrainlab.evaluation.cloze import eval_mode
from pretrainlab.evaluation.features import pad_batch
from pretrainlab.evaluation.items import ItemScores, item_id

ContinuationItem = tuple[list[int], list[int]]
# Items per forward pass in ``continuation_nll_batch``.
BATCH_SIZE = 32


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


def _causal_nll(module: Any, items: Sequence[ContinuationItem]) -> list[torch.Tensor]:
    """``CausalLM.continuation_nll`` for many items: eos + prefix + continuation per row,
    right-padded without a mask (a causal model's real tokens never see what follows them)."""
    tok = module.tokenizer
    rows = [[tok.eos_token_id, *prefix, *continuation] for prefix, continuation in items]
    ids, _ = pad_batch(rows, tok.pad_token_id, module.device)
    logits = module.model(input_ids=ids).logits.float()  # (B, T, V): position t predicts ids[:, t + 1]
    out = []
    for i, (row, (_, continuation)) in enumerate(zip(rows, items, strict=True)):
        span = slice(len(row) - 1 - len(continuation), len(row) - 1)
        out.append(F.cross_entropy(logits[i, span], ids[i, span.start + 1 : span.stop + 1], reduction="none"))
    return out


def _seq2seq_nll(module: Any, items: Sequence[ContinuationItem]) -> list[torch.Tensor]:
    """``Seq2SeqLM.continuation_nll`` for many items: prefix + ``<extra_id_0>`` + eos into the
    encoder (padding masked), ``<extra_id_0>`` + continuation as labels (-100 after the end)."""
    from pretrainlab.objectives.span_corruption import sentinel_ids

    tok = module.tokenizer
    sentinel = sentinel_ids(tok, 1)[0]
    inputs, mask = pad_batch(
        [[*prefix, sentinel, tok.eos_token_id] for prefix, _ in items], tok.pad_token_id, module.device
    )
    labels, real = pad_batch([[sentinel, *c] for _, c in items], tok.pad_token_id, module.device)
    labels = labels.masked_fill(real == 0, -100)
    # Without padding no mask, as one item alone is read (another attention kernel, other bits).
    mask = None if bool(mask.all()) else mask
    logits = module.model(input_ids=inputs, attention_mask=mask, labels=labels).logits.float()  # (B, T, V)
    # Position 0 predicts the sentinel itself: not part of the continuation.
    return [
        F.cross_entropy(logits[i, : 1 + len(c)], labels[i, : 1 + len(c)], reduction="none")[1:]
        for i, (_, c) in enumerate(items)
    ]


def _prefix_nll(module: Any, items: Sequence[ContinuationItem]) -> list[torch.Tensor]:
    """``PrefixLM.continuation_nll`` for many items: one [gMASK] piece each, laid out and
    padded by the training collator (real rows never see a pad column)."""
    from pretrainlab.objectives.blank_infilling import GMASK_TOKEN, BlankInfillingCollator, GLMSample

    collator = BlankInfillingCollator(module.tokenizer)  # only its layout is used, not its sampling
    gmask = module.tokenizer.convert_tokens_to_ids(GMASK_TOKEN)
    samples = [
        GLMSample(
            part_a=[*prefix, gmask],
            spans=[list(continuation)],
            mask_positions=[len(prefix)],
            order=[0],
            is_gmask=True,
            sop_id=collator.sop_id,
            eop_id=collator.eop_id,
        )
        for prefix, continuation in items
    ]
    batch = {k: v.to(module.device) for k, v in collator.collate_samples(samples).items()}
    logits = module.model(**batch).logits.float()  # (B, T, V)
    out = []
    for i, (prefix, continuation) in enumerate(items):
        start = len(prefix) + 1  # the [sop] position predicts the first continuation token
        span = slice(start, start + len(continuation))
        out.append(F.cross_entropy(logits[i, span], batch["labels"][i, span], reduction="none"))
    return out


def _batched_nll(module: Any) -> Callable[[Any, Sequence[ContinuationItem]], list[torch.Tensor]] | None:
    """The batched twin of the module's ``continuation_nll``, or None where the module's method
    is not an objective's own (a subclass that scores differently is asked item by item)."""
    from pretrainlab.objectives.causal import CausalLM
    from pretrainlab.objectives.prefix import PrefixLM
    from pretrainlab.objectives.seq2seq import Seq2SeqLM

    method = getattr(type(module), "continuation_nll", None)
    twins = {
        CausalLM.continuation_nll: _causal_nll,
        Seq2SeqLM.continuation_nll: _seq2seq_nll,
        PrefixLM.continuation_nll: _prefix_nll,
    }
    return twins.get(method)


def continuation_nll_batch(
    module: Any, items: Sequence[ContinuationItem], batch_size: int = BATCH_SIZE, same_shape: bool = True
) -> list[torch.Tensor]:
    """``[module.continuation_nll(prefix, continuation) for ...]`` (per-token NLL in nats, one
    tensor per item), up to ``batch_size`` items per forward pass.

    Why: one item per pass was mostly per-call overhead. ``same_shape`` (the default) batches
    only items of one prefix and continuation length, so nothing is padded and each item's
    numbers are what it gets alone: bit for bit where the matrix kernels round a batch as they
    round one row (Llama, GPT-2, Bloom and GLM here), else to float32 rounding (T5). The
    held-out items mostly share one shape (full-length continuations). ``same_shape=False``
    also pads mixed lengths into one batch (fewer passes, float32 rounding). A module without a batched twin
    (see ``_batched_nll``) and empty continuations are scored one at a time. Call it in eval mode.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    scores: list[torch.Tensor | None] = [None] * len(items)
    batched = _batched_nll(module) if batch_size > 1 else None
    todo = [i for i, (_, c) in enumerate(items) if batched is not None and c]

    def shape(i: int) -> tuple[int, ...]:
        prefix, continuation = items[i]
        return (len(prefix), len(continuation)) if same_shape else (len(prefix) + len(continuation),)

    todo.sort(key=lambda i: (*shape(i), i))
    chunks: list[list[int]] = []
    for i in todo:
        if chunks and len(chunks[-1]) < batch_size and (not same_shape or shape(chunks[-1][0]) == shape(i)):
            chunks[-1].append(i)
        else:
            chunks.append([i])
    for chunk in chunks:
        assert batched is not None
        with torch.no_grad():
            for i, nll in zip(chunk, batched(module, [items[i] for i in chunk]), strict=True):
                scores[i] = nll
    for i, (prefix, continuation) in enumerate(items):
        if scores[i] is None:
            scores[i] = module.continuation_nll(list(prefix), list(continuation))
    return [s if s is not None else torch.zeros(0) for s in scores]


def continuation_item_scores(
    module: Any, items: Sequence[ContinuationItem], batch_size: int = BATCH_SIZE
) -> ItemScores | None:
    """Per item: bits of the continuation (the numerator) and its characters (the weight), so
    ``value()`` is the pooled bits per character and a study can resample items. None where it
    does not apply (a non-generative objective: masked). Items without a continuation are
    skipped; the rest are scored ``batch_size`` at a time (``continuation_nll_batch``)."""
    if not getattr(module, "generative", False):
        return None
    scored = [(list(prefix), list(continuation)) for prefix, continuation in items if continuation]
    ids: list[str] = []
    bits: list[float] = []
    characters: list[float] = []
    with eval_mode(module):
        nlls = continuation_nll_batch(module, scored, batch_size)
    for (prefix, continuation), nll in zip(scored, nlls, strict=True):
        ids.append(item_id(prefix, continuation))
        bits.append(float(nll.double().sum()) / math.log(2))
        characters.append(float(continuation_characters(module.tokenizer, continuation)))
    return ItemScores("continuation/bpc", ids, bits, characters)


def bits_per_character(
    module: Any, items: Sequence[ContinuationItem], batch_size: int = BATCH_SIZE
) -> float | None:
    """sum of NLL (bits) over every continuation token / characters of all continuations.

    None where it does not apply: a non-generative objective (masked), or no characters.
    """
    scores = continuation_item_scores(module, items, batch_size)
    return None if scores is None else scores.value()


def evaluate_continuation(module: Any, items: Sequence[ContinuationItem]) -> dict[str, float | None]:
    """``{"continuation/bpc": ...}``: null for the masked objective."""
    return {"continuation/bpc": bits_per_character(module, items)}

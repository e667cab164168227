"""Cloze: fill one blanked span of k tokens, each objective its own natural way.

Every objective answers the same held-out items (same documents, same spans), so the numbers
compare across objectives even though their training losses do not:

* masked  -- the span becomes k [MASK]s, read in parallel (argmax at each [MASK]);
* causal  -- greedy continuation of the left context only, exactly k tokens;
* seq2seq -- the span becomes one sentinel, the decoder writes the span behind it (greedy);
* prefix  -- the span becomes one GLM blank ([MASK]), decoded from [sop] (greedy).

seq2seq and prefix do not know k: a span they end early is padded with -1 (wrong tokens), a
longer one is cut to k. The causal model never stops early: an eos it predicts is a wrong token.

``fill_cloze`` answers one item (the reference); ``fill_cloze_batch`` answers many per forward
pass, with the same predictions (items of one k, sorted by length, right-padded: an attention
mask hides the padding from the bidirectional readers, and the causal ones never look right).
The end-of-run evaluation uses the batched one: one item at a time it was mostly per-call
overhead (a tiny model's forward pass costs little more for 32 rows than for one).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pretrainlab.evaluation.features import pad_batch
from pretrainlab.evaluation.items import ItemScores, item_id
from pretrainlab.generation.decode import generate_with, generation_config

OBJECTIVES = ("masked", "causal", "seq2seq", "prefix")
# A prediction shorter than k is padded with this id, which matches no token.
MISSING = -1
# Items per forward pass (per ``generate`` call for seq2seq) in ``fill_cloze_batch``.
BATCH_SIZE = 32


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


# -- batched: the same predictions, many items per forward pass ---------------------------------


def _groups(
    items: Sequence[ClozeItem], batch_size: int, length: Callable[[ClozeItem], int]
) -> Iterator[list[int]]:
    """Indices of ``items`` in batches of one k and similar ``length`` (little padding).

    One k per batch: seq2seq and prefix decode to a budget set by k, and a batch shares one.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    order = sorted(range(len(items)), key=lambda i: (items[i].k, length(items[i]), i))
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == batch_size or items[batch[0]].k != items[i].k):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _accepts(model: Any, argument: str) -> bool:
    try:
        return argument in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _fill_masked_batch(module: Any, items: Sequence[ClozeItem]) -> list[list[int]]:
    """``fill_masked`` for items of one k: right-padded, the padding masked out; the prediction
    head runs only at the [MASK] rows (as ``MaskedLM``'s sparse head: the rest is never read)."""
    tok, model = module.tokenizer, module.model
    k = items[0].k
    rows = [[*i.left, *[tok.mask_token_id] * k, *i.right] for i in items]
    ids, mask = pad_batch(rows, tok.pad_token_id, _device(module))
    starts = torch.tensor([len(i.left) for i in items], device=ids.device)
    positions = starts[:, None] + torch.arange(k, device=ids.device)  # (B, k)
    batch = torch.arange(len(items), device=ids.device)[:, None]  # (B, 1)
    head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
    if head is None or not hasattr(model, "base_model"):
        logits = model(input_ids=ids, attention_mask=mask).logits[batch, positions]  # (B, k, V)
    else:
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
        logits = head(hidden[batch, positions])  # (B, k, V)
    return logits.argmax(-1).tolist()


def _fill_causal_batch(module: Any, items: Sequence[ClozeItem]) -> list[list[int]]:
    """``fill_causal`` for items of one k: k forward passes over the batch, each row's argmax
    read at its own last token. Right padding needs no mask: a causal model's real tokens never
    see the positions after them, so each row computes what it computes alone."""
    tok, model = module.tokenizer, module.model
    contexts = [([tok.eos_token_id] if i.starts_document else []) + list(i.left) for i in items]
    contexts = [c or [tok.eos_token_id] for c in contexts]
    device = _device(module)
    per_row = _accepts(model, "logits_to_keep")
    out: list[list[int]] = [[] for _ in items]
    for _ in range(items[0].k):
        seqs = [c + o for c, o in zip(contexts, out, strict=True)]
        ids, _ = pad_batch(seqs, tok.pad_token_id, device)
        last = torch.tensor([[len(s) - 1] for s in seqs], device=device)  # (B, 1)
        if per_row:  # the vocabulary projection only at each row's last token
            logits = model(input_ids=ids, logits_to_keep=last).logits[:, 0]  # (B, V)
        else:
            logits = model(input_ids=ids).logits[torch.arange(len(seqs), device=device), last[:, 0]]
        for row, token in zip(out, logits.argmax(-1).tolist(), strict=True):
            row.append(int(token))
    return out


def _fill_seq2seq_batch(module: Any, items: Sequence[ClozeItem]) -> list[list[int]]:
    """``Seq2SeqLM.fill_spans`` of one blank for items of one k: the blank becomes
    ``<extra_id_0>``, the encoder reads the right-padded batch under its attention mask, and
    ``generate`` decodes every row greedily to the same budget (k + 1) as one item alone."""
    from pretrainlab.data.tokenizer import NUM_SENTINELS
    from pretrainlab.objectives.span_corruption import sentinel_ids, split_target_by_sentinel

    tok = module.tokenizer
    sentinels = sentinel_ids(tok, NUM_SENTINELS)
    rows = [[*i.left, sentinels[0], *i.right, tok.eos_token_id] for i in items]
    ids, mask = pad_batch(rows, tok.pad_token_id, _device(module))
    out = generate_with(module.model, ids, mask, _greedy(tok, items[0].k + 1))
    # A finished row is padded after its eos, where reading stops.
    return [split_target_by_sentinel(row, sentinels, tok.eos_token_id).get(0, []) for row in out.tolist()]


def _fill_prefix_batch(module: Any, items: Sequence[ClozeItem]) -> list[list[int]]:
    """GLM's ``fill_blanks`` of one blank for items of one k, decoded greedily side by side.

    Part A (the text, [MASK] at the blank) is read bidirectionally into a cache, padding
    hidden; then every row feeds [sop] and its previous token at the blank's position, block
    positions 1, 2, ..., k, each seeing its own A and B so far: ``fill_blanks``' cached decoder
    with a batch dimension. A row's span ends at its first [eop].
    """
    from transformers import DynamicCache

    from pretrainlab.models.glm_hub.modeling_glm import EOP_TOKEN, SOP_TOKEN, special_token_id

    tok, model = module.tokenizer, module.model
    sop, eop = special_token_id(tok, SOP_TOKEN), special_token_id(tok, EOP_TOKEN)
    rows = [[*i.left, tok.mask_token_id, *i.right] for i in items]
    ids, real = pad_batch(rows, tok.pad_token_id, _device(module))
    real = real.bool()
    n, width = ids.shape
    device = ids.device
    # A rows see every real A token; a pad row sees only itself (no softmax row is empty).
    eye = torch.eye(width, dtype=torch.bool, device=device)
    visible = real[:, None, :].expand(n, width, width) | (~real[:, :, None] & eye)  # (B, T, T)
    cache = DynamicCache(config=model.config.backbone)
    model(
        input_ids=ids,
        attention_mask=visible,
        position_ids=torch.arange(width, device=device).expand(n, width),
        block_position_ids=torch.zeros_like(ids),
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    blank = torch.tensor([[len(i.left)] for i in items], device=device)  # (B, 1)
    keys = real  # (B, keys so far)
    token = torch.full((n, 1), sop, dtype=torch.long, device=device)
    spans: list[list[int]] = [[] for _ in items]
    open_rows = set(range(n))
    for block in range(1, items[0].k + 1):
        keys = torch.cat([keys, torch.ones(n, 1, dtype=torch.bool, device=device)], dim=1)
        out = model(
            input_ids=token,
            attention_mask=keys[:, None, None, :],  # (B, 1, 1, keys)
            position_ids=blank,
            block_position_ids=torch.full((n, 1), block, device=device),
            cache=cache,
            use_cache=True,
        )
        token = out.logits[:, -1].float().argmax(-1, keepdim=True)  # (B, 1)
        for row, chosen in enumerate(token[:, 0].tolist()):
            if row in open_rows:
                if chosen == eop:
                    open_rows.discard(row)
                else:
                    spans[row].append(int(chosen))
        if not open_rows:
            break
    return spans


def _batch_filler(module: Any) -> Callable[[Any, Sequence[ClozeItem]], list[list[int]]] | None:
    """The batched twin of the module's per-item adapter, or None where there is none: a
    module that is not a transformers model, or a seq2seq/prefix module whose ``fill_spans``
    is not the objective's own (the batched code repeats exactly what that one does)."""
    from transformers import PreTrainedModel

    if not isinstance(getattr(module, "model", None), PreTrainedModel):
        return None
    if module.name == "masked":
        return _fill_masked_batch
    if module.name == "causal":
        return _fill_causal_batch
    if module.name in ("seq2seq", "prefix"):
        from pretrainlab.objectives.prefix import PrefixLM
        from pretrainlab.objectives.seq2seq import Seq2SeqLM

        own = {"seq2seq": (Seq2SeqLM, _fill_seq2seq_batch), "prefix": (PrefixLM, _fill_prefix_batch)}
        cls, filler = own[module.name]
        return filler if getattr(type(module), "fill_spans", None) is cls.fill_spans else None
    return None


def _second_blanks(module: Any) -> set[int]:
    """Ids that the span fillers read as a blank wherever they stand ([MASK], GLM's [gMASK]):
    an item whose context holds one has two blanks, which only the one-item adapter handles."""
    if module.name not in ("seq2seq", "prefix"):
        return set()
    tok = module.tokenizer
    return {tok.mask_token_id, tok.convert_tokens_to_ids("[gMASK]")} - {None, tok.unk_token_id}


def fill_cloze_batch(
    module: Any, items: Sequence[ClozeItem], batch_size: int = BATCH_SIZE
) -> list[list[int]]:
    """``[fill_cloze(module, item) for item in items]``, computed ``batch_size`` items at a time.

    Why: one item per forward pass left the evaluation mostly per-call overhead. The
    predictions are the one-item ones (a test checks every objective): batches hold one k,
    padding is masked (or, for a causal model, after every token that is read), seq2seq and
    prefix decode to the same budget. Items a batch cannot take (a module without a batched
    adapter, an item whose context holds a [MASK]) go one at a time.
    """
    if module.name not in OBJECTIVES:
        raise ValueError(f"objective={module.name}: no cloze adapter (one of {', '.join(OBJECTIVES)})")
    predictions: list[list[int] | None] = [None] * len(items)
    filler = _batch_filler(module)
    blanks = _second_blanks(module)
    with eval_mode(module):
        batchable = [
            i
            for i, item in enumerate(items)
            if filler is not None
            and not blanks.intersection(item.left)
            and not blanks.intersection(item.right)
        ]
        if module.name == "causal":
            length: Callable[[ClozeItem], int] = lambda item: len(item.left)  # noqa: E731
        else:
            length = lambda item: len(item.left) + len(item.right)  # noqa: E731
        chosen = [items[i] for i in batchable]
        for group in _groups(chosen, batch_size, length):
            assert filler is not None
            filled = filler(module, [chosen[j] for j in group])
            for j, prediction in zip(group, filled, strict=True):
                predictions[batchable[j]] = _fit(prediction, chosen[j].k)
        for i, item in enumerate(items):
            if predictions[i] is None:
                predictions[i] = fill_cloze(module, item)
    return [p or [] for p in predictions]


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
    module: Any, items: Sequence[ClozeItem], ks: Sequence[int] | None = None, batch_size: int = BATCH_SIZE
) -> list[ItemScores]:
    """Fill every item (``fill_cloze_batch``) and score it per item and k (see
    ``cloze_item_scores``); ``batch_size=1`` fills one item at a time (``fill_cloze``)."""
    if batch_size == 1:
        with eval_mode(module):
            predictions = [fill_cloze(module, item) for item in items]
    else:
        predictions = fill_cloze_batch(module, items, batch_size)
    return cloze_item_scores(items, predictions, ks)


def evaluate_cloze(
    module: Any, items: Sequence[ClozeItem], ks: Sequence[int] | None = None, batch_size: int = BATCH_SIZE
) -> dict[str, float | None]:
    """Fill every item and score it per k (see ``score_cloze``); pass ``ks`` for stable keys
    even when a k got no items."""
    return {scores.metric: scores.value() for scores in evaluate_cloze_items(module, items, ks, batch_size)}

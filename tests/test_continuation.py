"""Bits per character of true continuations: a known distribution, the masked case, a trained run."""

from __future__ import annotations

import math

import pytest
import torch

from pretrainlab.evaluation.continuation import (
    bits_per_character,
    evaluate_continuation,
    make_continuation_items,
)
from pretrainlab.infer import load_run


class _CharTokenizer:
    """Token i decodes to i % 3 + 1 copies of one CJK character: lengths 1, 2, 3, 1, 2, 3, ..."""

    def decode(self, ids):
        return "".join("字" * (i % 3 + 1) for i in ids)


class _UniformModule:
    """Every continuation token has probability 1/V: log2(V) bits each."""

    name = "causal"
    generative = True
    tokenizer = _CharTokenizer()

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.calls = []

    def continuation_nll(self, prefix, continuation):
        self.calls.append((prefix, continuation))
        return torch.full((len(continuation),), math.log(self.vocab))


def test_uniform_distribution_gives_log2_v_bits_per_token_over_characters():
    module = _UniformModule(vocab=16)  # 4 bits per token
    items = [([1, 2], [0, 1, 2]), ([5], [3]), ([7], [])]  # 1 + 2 + 3 and 1 characters
    assert bits_per_character(module, items) == pytest.approx(4 * 4 / 7)
    assert module.calls == [([1, 2], [0, 1, 2]), ([5], [3])]  # an empty continuation is not scored
    assert bits_per_character(_UniformModule(vocab=2), [([1], [2, 2])]) == pytest.approx(2 / 6)


class _ScoredModule(_UniformModule):
    """Known NLL per token (nats): the token id / 10."""

    def continuation_nll(self, prefix, continuation):
        return torch.tensor([t / 10 for t in continuation])


def test_bits_are_summed_over_all_items_before_dividing_by_all_characters():
    items = [([1], [3]), ([1], [2, 2])]  # 1 and 3 + 3 characters
    expected = (0.3 + 0.4) / math.log(2) / 7  # not the mean of per-item ratios
    assert bits_per_character(_ScoredModule(2), items) == pytest.approx(expected)


def test_masked_objective_is_not_applicable_not_zero():
    module = _UniformModule(4)
    module.name, module.generative = "masked", False
    assert bits_per_character(module, [([1], [2])]) is None
    assert evaluate_continuation(module, [([1], [2])]) == {"continuation/bpc": None}
    assert module.calls == []
    assert bits_per_character(_UniformModule(4), []) is None  # nothing to score


def test_continuation_items_are_the_start_of_each_document_longer_than_the_prefix():
    docs = [list(range(10)), list(range(2)), list(range(20, 24)), list(range(40, 60))]
    items = make_continuation_items(docs, prefix_tokens=2, continuation_tokens=5)
    assert items == [([0, 1], [2, 3, 4, 5, 6]), ([20, 21], [22, 23]), ([40, 41], [42, 43, 44, 45, 46])]
    assert make_continuation_items(docs, 2, 5) == items  # no randomness
    assert make_continuation_items(docs, 2, 5, count=2) == items[:2]
    with pytest.raises(ValueError, match="prefix_tokens"):
        make_continuation_items(docs, 0, 5)


def test_trained_causal_run_gives_finite_positive_bits_per_character(trained_run, tiny_docs):
    module = load_run(trained_run("causal")).module
    tok = module.tokenizer
    docs = [tok(text, add_special_tokens=False)["input_ids"] for text in tiny_docs[-40:]]
    docs = [d for d in docs if len(d) >= 8]  # the test corpus has short documents
    items = make_continuation_items(docs, prefix_tokens=3, continuation_tokens=5, count=8)
    assert len(items) == 8 and all(len(c) == 5 for _, c in items)
    module.train()
    bpc = bits_per_character(module, items)
    assert module.training  # restored after scoring in eval mode
    assert math.isfinite(bpc) and bpc > 0
    # Barely trained: near the bits of a uniform guess over the vocabulary, not far above.
    characters = sum(len(tok.decode(c)) for _, c in items)
    uniform = math.log2(len(tok)) * sum(len(c) for _, c in items) / characters
    assert bpc < 1.5 * uniform
    assert evaluate_continuation(module, items) == {"continuation/bpc": pytest.approx(bpc)}

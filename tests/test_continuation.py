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


# -- batched scoring: each item's numbers are what it gets alone ---------------------------------


def _untrained(name: str, family: str):
    """A small randomly initialised module of the objective (every token id of TOK valid)."""
    from types import SimpleNamespace

    from conftest import special_word_tokenizer
    from pretrainlab.models.backbones import backbone_config
    from pretrainlab.objectives.causal import CausalLM
    from pretrainlab.objectives.prefix import PrefixLM
    from pretrainlab.objectives.seq2seq import Seq2SeqLM

    tok = special_word_tokenizer(40)
    size = SimpleNamespace(
        hidden_size=64, n_layers=2, n_heads=4, intermediate_size=256, max_position_embeddings=64, dropout=0.0
    )  # intermediate 4 x hidden: what Bloom requires
    cls = {"causal": CausalLM, "seq2seq": Seq2SeqLM, "prefix": PrefixLM}[name]
    torch.manual_seed(0)
    return cls(model=cls.model_from_config(backbone_config(family, size, tok)), tokenizer=tok)


def _varied_items(tok) -> list[tuple[list[int], list[int]]]:
    """Prefixes of 1-12 words and continuations of 0-10: rows of a batch differ in both."""
    g = torch.Generator().manual_seed(0)
    words = tok.convert_tokens_to_ids([f"w{i}" for i in range(40)])

    def draw(n: int) -> list[int]:
        return [words[j] for j in torch.randint(0, 40, (n,), generator=g).tolist()]

    mixed = [(draw(1 + i % 12), draw((3 * i) % 11)) for i in range(23)]
    return mixed + [(draw(6), draw(8)) for _ in range(9)]  # as held-out items: many of one shape


@pytest.mark.parametrize(
    ("name", "family"),
    [("causal", "llama"), ("causal", "gpt2"), ("causal", "bloom"), ("seq2seq", "t5"), ("prefix", "llama")],
)
def test_batched_scores_are_each_items_own(name, family):
    from pretrainlab.evaluation.continuation import continuation_item_scores, continuation_nll_batch

    module = _untrained(name, family)
    items = _varied_items(module.tokenizer)
    module.eval()
    alone = [module.continuation_nll(p, c) for p, c in items]
    # Mixed lengths padded into one batch: each item's numbers to float32 rounding.
    padded = continuation_nll_batch(module, items, batch_size=4, same_shape=False)
    assert [len(n) for n in padded] == [len(c) for _, c in items]
    for one, many in zip(alone, padded, strict=True):
        torch.testing.assert_close(many, one, rtol=1e-5, atol=1e-5)
    # The default batches one shape at a time: nothing padded (bit for bit where the matrix
    # kernels round a batch as they round one row: llama, gpt2, bloom, GLM here; not T5).
    for one, many in zip(alone, continuation_nll_batch(module, items, batch_size=4), strict=True):
        torch.testing.assert_close(many, one, rtol=1e-6, atol=1e-6)
    # The per-item scores (eval_items.jsonl): same items, ids, order and weights; bits to rounding.
    module.train()
    by_batch = continuation_item_scores(module, items, batch_size=4)
    by_item = continuation_item_scores(module, items, batch_size=1)
    assert module.training
    assert by_batch.ids == by_item.ids and by_batch.weights == by_item.weights
    assert len(by_batch.ids) == sum(1 for _, c in items if c)  # empty continuations are not scored
    assert by_batch.scores == pytest.approx(by_item.scores, rel=1e-6)


def test_a_module_with_its_own_scoring_is_asked_item_by_item():
    """A subclass that scores continuations its own way is not replaced by the batched twin."""
    from pretrainlab.evaluation.continuation import continuation_nll_batch
    from pretrainlab.objectives.causal import CausalLM

    class Scored(CausalLM):
        def continuation_nll(self, prefix, continuation):
            return torch.full((len(continuation),), float(len(prefix)))

    base = _untrained("causal", "llama")
    module = Scored(model=base.model, tokenizer=base.tokenizer)
    items = _varied_items(module.tokenizer)
    nll = continuation_nll_batch(module, items, batch_size=4)
    assert [n.tolist() for n in nll] == [[float(len(p))] * len(c) for p, c in items]

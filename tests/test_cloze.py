"""Cloze items and each objective's adapter: hand-built models and tiny models that memorised a text."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch

from conftest import special_word_tokenizer
from pretrainlab.evaluation.cloze import (
    MISSING,
    ClozeItem,
    evaluate_cloze,
    evaluate_cloze_items,
    fill_cloze,
    fill_cloze_batch,
    make_cloze_items,
    score_cloze,
)
from pretrainlab.models.backbones import backbone_config
from pretrainlab.objectives.blank_infilling import BlankInfillingCollator, GLMSample
from pretrainlab.objectives.causal import CausalLM
from pretrainlab.objectives.masked import MaskedLM
from pretrainlab.objectives.prefix import PrefixLM
from pretrainlab.objectives.seq2seq import Seq2SeqLM
from pretrainlab.objectives.span_corruption import sentinel_ids

TOK = special_word_tokenizer(40)
TEXT = TOK.convert_tokens_to_ids(
    [f"w{i}" for i in (3, 17, 8, 25, 11, 30, 2, 19, 7, 33, 14, 5, 28, 21, 9, 36)]
)


def blanks(ks=(1, 2)) -> list[ClozeItem]:
    """Every blank of k tokens in TEXT with at least one token on each side."""
    return [
        ClozeItem(TEXT[:s], TEXT[s : s + k], TEXT[s + k :], k, starts_document=True)
        for k in ks
        for s in range(1, len(TEXT) - k)
    ]


# -- items ----------------------------------------------------------------------------------------


def _documents() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(100, 200, (n,), generator=g).tolist() for n in (3, 5, 9, 40, 120, 7, 60)]


def test_items_are_deterministic_and_cover_each_k():
    docs = _documents()
    items = make_cloze_items(docs, ks=(1, 2, 4), per_k=10, seed=3)
    assert items == make_cloze_items(docs, ks=(1, 2, 4), per_k=10, seed=3)
    assert items != make_cloze_items(docs, ks=(1, 2, 4), per_k=10, seed=4)
    assert [sum(i.k == k for i in items) for k in (1, 2, 4)] == [10, 10, 10]
    # Each k draws on its own: asking for fewer ks, or fewer items, gives the same first items.
    assert make_cloze_items(docs, ks=(4,), per_k=10, seed=3) == [i for i in items if i.k == 4]
    assert make_cloze_items(docs, ks=(2,), per_k=4, seed=3) == [i for i in items if i.k == 2][:4]


def test_items_are_spans_of_their_document():
    docs = _documents()
    for item in make_cloze_items(docs, ks=(1, 2, 4), per_k=20, seed=0, max_context=16):
        doc = docs[item.document]
        assert len(item.answer) == item.k and item.left and item.right
        assert len(item.left) <= 16 and len(item.right) <= 16
        window = item.left + item.answer + item.right
        starts = [s for s in range(len(doc)) if doc[s : s + len(window)] == window]
        assert starts, "left + answer + right is a contiguous window of the document"
        # The answer is the original tokens at the blank.
        assert doc[starts[0] + len(item.left) : starts[0] + len(item.left) + item.k] == item.answer
        assert item.starts_document == (starts[0] == 0)


def test_items_skip_documents_too_short_for_k():
    docs = [[1, 2, 3], [4, 5, 6, 7]]
    items = make_cloze_items(docs, ks=(1, 2, 4), per_k=3, seed=0)
    assert {i.k for i in items} == {1, 2}  # k=4 needs 6 tokens
    assert all(i.document == 1 for i in items if i.k == 2)


# -- hand-built adapters --------------------------------------------------------------------------


class _PositionLM(torch.nn.Module):
    """Logits whose argmax at position t is token 100 + t; records every input."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[list[int]] = []

    def forward(self, input_ids, attention_mask=None):
        self.calls.append(input_ids[0].tolist())
        width = input_ids.shape[1]
        logits = torch.zeros(1, width, 300)
        logits[0, torch.arange(width), 100 + torch.arange(width)] = 1.0
        return SimpleNamespace(logits=logits)


def _module(name: str, model: torch.nn.Module | None = None, **methods) -> SimpleNamespace:
    return SimpleNamespace(name=name, tokenizer=TOK, model=model or _PositionLM(), **methods)


def test_masked_adapter_puts_k_masks_and_reads_k_argmaxes_in_one_pass():
    module = _module("masked")
    item = ClozeItem([7, 8, 9], [50, 51, 52], [10, 11], 3)
    assert fill_cloze(module, item) == [103, 104, 105]  # the argmax at the three [MASK] positions
    assert module.model.calls == [[7, 8, 9, TOK.mask_token_id, TOK.mask_token_id, TOK.mask_token_id, 10, 11]]


def test_causal_adapter_continues_the_left_context_for_exactly_k_tokens():
    module = _module("causal")
    # Mid-document: the left context alone; each step feeds the previous argmax back.
    assert fill_cloze(module, ClozeItem([7, 8], [1, 2, 3], [4], 3)) == [101, 102, 103]
    assert module.model.calls == [[7, 8], [7, 8, 101], [7, 8, 101, 102]]
    # At a document start the eos that precedes every document in training comes first.
    module.model.calls.clear()
    assert fill_cloze(module, ClozeItem([7], [1], [4], 1, starts_document=True)) == [101]
    assert module.model.calls == [[TOK.eos_token_id, 7]]


class _EosLM(_PositionLM):
    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(1, input_ids.shape[1], 300)
        logits[..., TOK.eos_token_id] = 1.0
        return SimpleNamespace(logits=logits)


def test_causal_adapter_does_not_stop_at_eos():
    assert fill_cloze(_module("causal", _EosLM()), ClozeItem([7], [1, 2], [4], 2)) == [TOK.eos_token_id] * 2


@pytest.mark.parametrize("name", ["seq2seq", "prefix"])
def test_span_adapters_ask_for_one_blank_and_fit_the_span_to_k(name):
    asked = []

    def fill_spans(ids, config):
        asked.append((ids, config.max_new_tokens, config.do_sample))
        return [span], ids

    module = _module(name, fill_spans=fill_spans)
    item = ClozeItem([7, 8], [1, 2, 3], [9], 3)
    span = [5]  # ended early: padded
    assert fill_cloze(module, item) == [5, MISSING, MISSING]
    span = [5, 6, 7, 8, 9]  # too long: cut
    assert fill_cloze(module, item) == [5, 6, 7]
    budget = 4 if name == "seq2seq" else 3  # seq2seq writes <extra_id_0> before the span
    assert asked[0] == ([7, 8, TOK.mask_token_id, 9], budget, False)


def test_scores_per_k():
    items = [
        ClozeItem([1], [5], [2], 1),
        ClozeItem([1], [6], [2], 1),
        ClozeItem([1], [5, 6], [2], 2),
        ClozeItem([1], [7, 8], [2], 2),
    ]
    metrics = score_cloze(items, [[5], [9], [5, 6], [7, MISSING]], ks=(1, 2, 4))
    assert metrics == {
        "cloze/exact_match_k1": 0.5,
        "cloze/token_accuracy_k1": 0.5,
        "cloze/exact_match_k2": 0.5,
        "cloze/token_accuracy_k2": 0.75,
        "cloze/exact_match_k4": None,
        "cloze/token_accuracy_k4": None,
    }
    assert score_cloze(items, [[5, 0, 0], [], [5, 6], [7]])["cloze/token_accuracy_k2"] == 0.75


def test_unknown_objective_is_refused():
    with pytest.raises(ValueError, match="objective=other"):
        fill_cloze(_module("other"), ClozeItem([1], [2], [3], 1))


# -- tiny models that memorised TEXT --------------------------------------------------------------

SIZE = SimpleNamespace(
    hidden_size=64, n_layers=2, n_heads=4, intermediate_size=128, max_position_embeddings=64, dropout=0.0
)


def _seq2seq_batch() -> dict[str, torch.Tensor]:
    """T5's training format for every blank: input = text with one sentinel, target = the span."""
    sentinel = sentinel_ids(TOK, 1)[0]
    rows = [
        ([*i.left, sentinel, *i.right, TOK.eos_token_id], [sentinel, *i.answer, TOK.eos_token_id])
        for i in blanks()
    ]
    width_in, width_out = (max(len(r[j]) for r in rows) for j in (0, 1))
    inputs = torch.tensor([r[0] + [TOK.pad_token_id] * (width_in - len(r[0])) for r in rows])
    labels = torch.tensor([r[1] + [-100] * (width_out - len(r[1])) for r in rows])
    return {"input_ids": inputs, "attention_mask": (inputs != TOK.pad_token_id).long(), "labels": labels}


def _prefix_batch(collator: BlankInfillingCollator) -> dict[str, torch.Tensor]:
    """GLM's training format for every blank: part A with one [MASK], part B the span."""
    samples = [
        GLMSample(
            [*i.left, TOK.mask_token_id, *i.right],
            [i.answer],
            [len(i.left)],
            [0],
            False,
            collator.sop_id,
            collator.eop_id,
        )
        for i in blanks()
    ]
    return collator.collate_samples(samples)


def memorise(name: str, steps: int = 200):
    """A tiny model of the objective trained on TEXT until it knows it by heart.

    masked and causal learn it through their own collators (random masks / next token);
    seq2seq and prefix learn every one-blank layout of it in their own training format.
    """
    cls, family, settings = {
        "masked": (MaskedLM, "bert", {"mask_probability": 0.3}),
        "causal": (CausalLM, "llama", {}),
        "seq2seq": (Seq2SeqLM, "t5", {}),
        "prefix": (PrefixLM, "llama", {}),
    }[name]
    torch.manual_seed(0)
    module = cls(model=cls.model_from_config(backbone_config(family, SIZE, TOK)), tokenizer=TOK, **settings)
    if name == "seq2seq":
        batches = _seq2seq_batch
    elif name == "prefix":
        batch = _prefix_batch(BlankInfillingCollator(TOK))
        batches = lambda: batch  # noqa: E731
    else:
        collate = module.build_collator()
        start = [TOK.eos_token_id] if name == "causal" else []
        batches = lambda: collate([{"input_ids": start + TEXT}] * 16)  # noqa: E731
    optimizer = torch.optim.Adam(module.model.parameters(), lr=3e-3)
    module.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = module(batches()).loss
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    return module


@functools.cache
def memorised(name: str):
    """``memorise(name)``, trained once per test session (the tests only read the model)."""
    return memorise(name)


@pytest.mark.parametrize("name", ["masked", "causal", "seq2seq", "prefix"])
def test_a_model_that_memorised_the_text_fills_its_blanks_exactly(name):
    module = memorised(name)
    items = blanks()
    for item in items[:: len(items) // 5]:
        assert fill_cloze(module, item) == item.answer
    assert module.training  # the adapter restores the training mode
    metrics = evaluate_cloze(module, items)
    assert metrics == {
        "cloze/exact_match_k1": 1.0,
        "cloze/token_accuracy_k1": 1.0,
        "cloze/exact_match_k2": 1.0,
        "cloze/token_accuracy_k2": 1.0,
    }
    assert module.training


# -- batched filling: the one-item predictions, many items per forward pass -----------------------


def _varied_documents() -> list[list[int]]:
    """TEXT and random documents of 4 to 30 words: items of many lengths, some that a model
    knows (TEXT) and many it does not, so the predictions vary."""
    g = torch.Generator().manual_seed(1)
    words = TOK.convert_tokens_to_ids([f"w{i}" for i in range(40)])
    lengths = torch.randint(4, 31, (12,), generator=g).tolist()
    return [TEXT] + [[words[j] for j in torch.randint(0, 40, (n,), generator=g).tolist()] for n in lengths]


def untrained(name: str):
    """A randomly initialised module of the objective: unsure everywhere, so padding that leaked
    into a row would change its argmax."""
    cls, family = {"masked": (MaskedLM, "bert"), "causal": (CausalLM, "llama")}[name]
    torch.manual_seed(0)
    return cls(model=cls.model_from_config(backbone_config(family, SIZE, TOK)), tokenizer=TOK)


@pytest.mark.parametrize(
    ("name", "trained"),
    # Untrained, seq2seq rarely writes its sentinel first (empty spans) and prefix repeats one
    # token: their memorised models are the ones with varied predictions.
    [(n, True) for n in ("masked", "causal", "seq2seq", "prefix")] + [("masked", False), ("causal", False)],
)
def test_batched_filling_predicts_what_one_item_at_a_time_predicts(name, trained):
    module = memorised(name) if trained else untrained(name)
    items = make_cloze_items(_varied_documents(), ks=(1, 2, 4), per_k=12, seed=0, max_context=12)
    one_by_one = [fill_cloze(module, item) for item in items]
    # Batches of 5 leave a short last batch per k; batches of 12 hold a whole k, 3 to 25 tokens.
    assert fill_cloze_batch(module, items, batch_size=5) == one_by_one
    assert fill_cloze_batch(module, items, batch_size=12) == one_by_one
    assert module.training  # restored
    # Not vacuous: the items differ in length and the predictions differ between items.
    assert len({len(i.left) + len(i.right) for i in items}) >= 8
    assert len({tuple(p) for p in one_by_one}) >= 8
    # The per-item scores (eval_items.jsonl) are the same, in the same order.
    assert evaluate_cloze_items(module, items, batch_size=5) == evaluate_cloze_items(
        module, items, batch_size=1
    )


def test_batched_filling_sends_items_with_a_second_blank_one_at_a_time():
    module = memorised("seq2seq")
    items = [ClozeItem(TEXT[:3], TEXT[3:5], [TOK.mask_token_id, *TEXT[5:9]], 2), *blanks()[:6]]
    assert fill_cloze_batch(module, items, batch_size=4) == [fill_cloze(module, item) for item in items]

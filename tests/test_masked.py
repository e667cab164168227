"""BERT-style masking (pretrainlab.objectives.masked) and the seeded validation collator."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerFast

from pretrainlab.data.sampling import SeededCollator as PerBatchSeeded
from pretrainlab.data.tokenizer import EXTRA_SPECIAL
from pretrainlab.objectives.masked import MaskedLM, MaskedLMCollator
from pretrainlab.train import build_datamodule, build_objective

IGNORE = -100
ROWS, LENGTH = 200, 256  # 51,200 tokens per batch


def ordinary_ids(tok: PreTrainedTokenizerFast) -> torch.Tensor:
    special = set(tok.all_special_ids)
    return torch.tensor([i for i in range(len(tok)) if i not in special])


def random_blocks(
    tok: PreTrainedTokenizerFast, seed: int, rows: int = ROWS, length: int = LENGTH
) -> torch.Tensor:
    pool = ordinary_ids(tok)
    g = torch.Generator().manual_seed(seed)
    return pool[torch.randint(len(pool), (rows, length), generator=g)]


def collate(collator: Callable, blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    return collator([{"input_ids": row.tolist()} for row in blocks])


def outcome_shares(original: torch.Tensor, batch: dict[str, torch.Tensor], mask_id: int) -> dict[str, float]:
    chosen = batch["labels"] != IGNORE
    n = int(chosen.sum())
    inputs = batch["input_ids"][chosen]
    kept = original[chosen]
    return {
        "rate": n / original.numel(),
        "mask": float((inputs == mask_id).sum()) / n,
        "same": float((inputs == kept).sum()) / n,
        "random": float(((inputs != mask_id) & (inputs != kept)).sum()) / n,
    }


def assert_labels_consistent(original: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
    """-100 exactly where nothing was chosen (input untouched), the original token elsewhere."""
    labels, inputs = batch["labels"], batch["input_ids"]
    chosen = labels != IGNORE
    assert torch.equal(labels[chosen], original[chosen])
    assert torch.equal(inputs[~chosen], original[~chosen])


@pytest.mark.parametrize("probability", [0.15, 0.3])
def test_masking_rate_and_80_10_10_split(tiny_tokenizer: PreTrainedTokenizerFast, probability: float) -> None:
    blocks = random_blocks(tiny_tokenizer, seed=1)
    torch.manual_seed(0)
    batch = collate(MaskedLMCollator(tiny_tokenizer, mask_probability=probability), blocks)
    assert_labels_consistent(blocks, batch)
    shares = outcome_shares(blocks, batch, tiny_tokenizer.mask_token_id)
    assert shares["rate"] == pytest.approx(probability, abs=0.01)
    assert shares["mask"] == pytest.approx(0.8, abs=0.02)
    assert shares["random"] == pytest.approx(0.1, abs=0.02)
    assert shares["same"] == pytest.approx(0.1, abs=0.02)
    assert torch.equal(batch["attention_mask"], torch.ones_like(blocks))


def test_custom_replacement_split(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    blocks = random_blocks(tiny_tokenizer, seed=2)
    torch.manual_seed(0)
    collator = MaskedLMCollator(
        tiny_tokenizer, mask_probability=0.15, mask_replace_prob=0.5, random_replace_prob=0.5
    )
    batch = collate(collator, blocks)
    assert_labels_consistent(blocks, batch)
    shares = outcome_shares(blocks, batch, tiny_tokenizer.mask_token_id)
    assert shares["rate"] == pytest.approx(0.15, abs=0.01)
    assert shares["mask"] == pytest.approx(0.5, abs=0.02)
    assert shares["random"] == pytest.approx(0.5, abs=0.02)
    # "Unchanged" only when the random token happens to be the original one (1 / vocab).
    assert shares["same"] < 0.005


def test_special_tokens_are_never_masked(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    tok = tiny_tokenizer
    names = ["</s>", "[CLS]", "[SEP]", "[UNK]", "[sop]", "[eop]", "[gMASK]", *EXTRA_SPECIAL[:100]]
    specials = torch.tensor(tok.convert_tokens_to_ids(names))
    blocks = random_blocks(tok, seed=3)
    g = torch.Generator().manual_seed(4)
    where = torch.rand(blocks.shape, generator=g) < 0.25
    blocks[where] = specials[torch.randint(len(specials), (int(where.sum()),), generator=g)]
    torch.manual_seed(0)
    batch = collate(MaskedLMCollator(tok, mask_probability=0.9), blocks)
    assert_labels_consistent(blocks, batch)
    assert (batch["labels"][where] == IGNORE).all()
    assert torch.equal(batch["input_ids"][where], blocks[where])
    # Everything else is masked at the configured rate.
    assert float((batch["labels"][~where] != IGNORE).float().mean()) == pytest.approx(0.9, abs=0.01)


def test_padding_is_never_masked(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    blocks = random_blocks(tiny_tokenizer, seed=5, rows=64, length=40)
    lengths = torch.randint(5, 41, (64,), generator=torch.Generator().manual_seed(6))
    examples = [{"input_ids": row[:n].tolist()} for row, n in zip(blocks, lengths, strict=True)]
    torch.manual_seed(0)
    batch = MaskedLMCollator(tiny_tokenizer, mask_probability=0.9)(examples)
    pad = batch["attention_mask"] == 0
    assert torch.equal(pad.sum(1), 40 - lengths)
    assert (batch["input_ids"][pad] == tiny_tokenizer.pad_token_id).all()
    assert (batch["labels"][pad] == IGNORE).all()


def word_ids(tokens: list[str]) -> list[int]:
    """A `##` piece belongs to the word before it; every other token starts a word."""
    ids, word = [], -1
    for token in tokens:
        if not token.startswith("##"):
            word += 1
        ids.append(word)
    return ids


ENGLISH = (
    "internationalization of pretraining objectives requires understanding tokenization "
    "and whole word masking for transformers"
)


@pytest.fixture(scope="module")
def word_blocks(tiny_tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    # English words split into ## pieces (the tokenizer learnt Chinese only); blocks start at
    # different offsets, so some begin inside a word, as packed blocks do.
    ids = tiny_tokenizer(" ".join([ENGLISH, "西安交通大学", ENGLISH] * 8))["input_ids"]
    assert sum(t.startswith("##") for t in tiny_tokenizer.convert_ids_to_tokens(ids)) > len(ids) // 2
    return torch.tensor([ids[start : start + 64] for start in range(0, 20 * 17, 17)])


def test_whole_word_mask_masks_all_pieces_of_a_word(
    tiny_tokenizer: PreTrainedTokenizerFast, word_blocks: torch.Tensor
) -> None:
    torch.manual_seed(0)
    collator = MaskedLMCollator(tiny_tokenizer, mask_probability=0.3, whole_word_mask=True)
    batch = collate(collator, word_blocks)
    assert_labels_consistent(word_blocks, batch)
    chosen = batch["labels"] != IGNORE
    multi_piece_words_masked = 0
    for row, row_chosen in zip(word_blocks, chosen, strict=True):
        words = torch.tensor(word_ids(tiny_tokenizer.convert_ids_to_tokens(row.tolist())))
        for w in words.unique():
            in_word = row_chosen[words == w]
            assert in_word.all() or not in_word.any(), "a word was masked partly"
            multi_piece_words_masked += int(in_word.all() and len(in_word) > 1)
    assert multi_piece_words_masked > 20
    assert 0.1 < float(chosen.float().mean()) < 0.6


def test_whole_word_mask_keeps_the_replacement_split(
    tiny_tokenizer: PreTrainedTokenizerFast, word_blocks: torch.Tensor
) -> None:
    blocks = word_blocks.repeat(10, 1)
    torch.manual_seed(0)
    collator = MaskedLMCollator(tiny_tokenizer, mask_probability=0.3, whole_word_mask=True)
    batch = collate(collator, blocks)
    assert_labels_consistent(blocks, batch)
    shares = outcome_shares(blocks, batch, tiny_tokenizer.mask_token_id)
    assert shares["mask"] == pytest.approx(0.8, abs=0.03)
    assert shares["random"] == pytest.approx(0.1, abs=0.03)
    assert shares["same"] == pytest.approx(0.1, abs=0.03)


# -- the validation collator ------------------------------------------------------------------


def rng_states() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


@pytest.mark.parametrize("whole_word_mask", [False, True])
def test_per_batch_seeded_is_repeatable_and_leaves_global_rng_alone(
    tiny_tokenizer: PreTrainedTokenizerFast, word_blocks: torch.Tensor, whole_word_mask: bool
) -> None:
    collator = PerBatchSeeded(
        MaskedLMCollator(tiny_tokenizer, mask_probability=0.3, whole_word_mask=whole_word_mask), seed=42
    )
    examples = [{"input_ids": row.tolist()} for row in word_blocks]
    others = [{"input_ids": row.tolist()} for row in word_blocks.flip(0)]

    torch.manual_seed(0)
    before = rng_states()
    first = collator(examples)
    after = rng_states()
    assert torch.equal(before[0], after[0])
    assert np.array_equal(before[1], after[1])
    assert before[2] == after[2]

    torch.manual_seed(123)  # another global state, and another batch in between
    collator(others)
    again = collator(examples)
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(first[key], again[key])
    assert (first["labels"] != IGNORE).any()

    # Another seed gives other masks.
    assert not torch.equal(PerBatchSeeded(collator.collate, seed=7)(examples)["labels"], first["labels"])


# -- the LightningModule ----------------------------------------------------------------------


@pytest.fixture
def masked_setup(compose_cfg: Callable[..., DictConfig]):
    def _build(*overrides: str):
        cfg = compose_cfg("objective=masked", *overrides)
        dm = build_datamodule(cfg, MaskedLM)
        dm.setup()
        return cfg, dm, build_objective(cfg, dm)

    return _build


def test_masked_lm_uses_the_configured_masking(masked_setup) -> None:
    _, dm, module = masked_setup("objective.mask_probability=0.3")
    assert module.model.config.model_type == "bert"
    blocks = torch.tensor(dm.splits["train"]["input_ids"][:640])
    torch.manual_seed(0)
    batch = collate(dm.collate_fn, blocks)
    assert_labels_consistent(blocks, batch)
    shares = outcome_shares(blocks, batch, dm.tokenizer.mask_token_id)
    specials = torch.isin(blocks, torch.tensor(dm.tokenizer.all_special_ids))
    rate = float((batch["labels"][~specials] != IGNORE).float().mean())
    assert rate == pytest.approx(0.3, abs=0.015)
    assert shares["mask"] == pytest.approx(0.8, abs=0.03)
    # Validation batches get the same masks every time they are collated.
    val_collate = dm.val_dataloader().collate_fn
    examples = [{"input_ids": row} for row in dm.splits["validation"]["input_ids"][:4]]
    torch.manual_seed(1)
    first = val_collate(examples)
    torch.manual_seed(2)
    assert torch.equal(val_collate(examples)["labels"], first["labels"])


def test_masked_lm_loss_is_cross_entropy_on_masked_positions(masked_setup) -> None:
    _, dm, module = masked_setup("objective.sparse_head=false")
    blocks = torch.tensor(dm.splits["validation"]["input_ids"][:4])
    batch = dm.val_dataloader().collate_fn([{"input_ids": row.tolist()} for row in blocks])
    module.eval()
    with torch.no_grad():
        out = module(batch)
    logits = out.logits
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-5)
    assert module.count_targets(batch) == int((batch["labels"] != IGNORE).sum())


def test_sparse_head_gives_the_dense_loss_and_gradients(masked_setup) -> None:
    """The head only at the labelled positions: same loss, same gradients, N x V logits."""
    _, dm, module = masked_setup("objective.sparse_head=true")
    blocks = torch.tensor(dm.splits["validation"]["input_ids"][:4])
    batch = dm.val_dataloader().collate_fn([{"input_ids": row.tolist()} for row in blocks])
    results = []
    for sparse in (True, False):
        module.settings["sparse_head"] = sparse
        module.zero_grad()
        out = module(batch)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (sparse_out, sparse_grads), (dense_out, dense_grads) = results
    labelled = int((batch["labels"] != IGNORE).sum())
    assert sparse_out.logits.shape == (labelled, len(dm.tokenizer))
    assert dense_out.logits.shape[:2] == batch["labels"].shape
    assert float(sparse_out.loss) == pytest.approx(float(dense_out.loss), rel=1e-6)
    assert sparse_grads.keys() == dense_grads.keys()
    for name, grad in sparse_grads.items():
        torch.testing.assert_close(grad, dense_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_compiling_the_backbone_keeps_parameter_names(masked_setup) -> None:
    """Checkpoints and the export of a compiled run load into an uncompiled model."""
    _, _, module = masked_setup()
    names = list(module.state_dict())
    module.compile_backbone()
    assert list(module.state_dict()) == names

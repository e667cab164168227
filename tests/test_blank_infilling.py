"""Tests for the GLM blank-infilling collator (objectives/blank_infilling.py)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from transformers import PreTrainedTokenizerFast

from conftest import word_level_tokenizer
from pretrainlab.config import ConfigError
from pretrainlab.objectives.blank_infilling import (
    IGNORE_INDEX,
    BlankInfillingCollator,
    GLMSample,
    reconstruct_from_batch_row,
    reconstruct_from_parts,
)
from pretrainlab.objectives.prefix import PrefixLM
from pretrainlab.validation import validate

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "</s>", "[sop]", "[eop]", "[gMASK]"]
N_WORDS = 200


def make_tokenizer(specials: list[str] = SPECIALS) -> PreTrainedTokenizerFast:
    """Tiny word-level tokenizer: the specials, then t0..t199."""
    extra = [t for t in ("[sop]", "[eop]", "[gMASK]") if t in specials]
    return word_level_tokenizer(
        specials + [f"t{i}" for i in range(N_WORDS)],
        pad_token="[PAD]",
        mask_token="[MASK]",
        eos_token="</s>",
        additional_special_tokens=extra,
    )


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="module")
def ids(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    names = ("[PAD]", "[MASK]", "[gMASK]", "[sop]", "[eop]")
    return {n: tok.convert_tokens_to_ids(n) for n in names}


def random_block(length: int, generator: torch.Generator) -> list[int]:
    """Ordinary (non-special) token ids."""
    first = len(SPECIALS)
    return torch.randint(first, first + N_WORDS, (length,), generator=generator).tolist()


def random_examples(n: int, lo: int, hi: int, seed: int) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [{"input_ids": random_block(L, g)} for L in lengths]


def real_lengths(batch: dict[str, torch.Tensor]) -> list[int]:
    """A + B length per row: A length + number of B tokens (labels != -100)."""
    n_b = (batch["labels"] != IGNORE_INDEX).sum(1)
    return (batch["part_a_length"] + n_b).tolist()


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"mask_probability": 0.0}, "mask_probability"),
        ({"mask_probability": 1.0}, "mask_probability"),
        ({"span_poisson_lambda": 0.0}, "span_poisson_lambda"),
        ({"mode": "prefix"}, "mode"),
        ({"gmask_probability": 1.5}, "gmask_probability"),
        ({"pad_to_multiple_of": 0}, "pad_to_multiple_of"),
    ],
)
def test_invalid_settings_name_the_key(tok, kwargs, key):
    with pytest.raises(ValueError, match=key):
        BlankInfillingCollator(tok, **kwargs)


@pytest.mark.parametrize("missing", ["[sop]", "[eop]", "[gMASK]"])
def test_missing_special_token_is_named(missing):
    tok = make_tokenizer([t for t in SPECIALS if t != missing])
    with pytest.raises(ValueError, match=f"'{missing}'".replace("[", r"\[").replace("]", r"\]")):
        BlankInfillingCollator(tok)


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("p", [0.15, 0.3])
def test_covered_fraction_and_span_length(tok, p):
    """Coverage is unbiased (±0.02 over >= 50k tokens); spans ~ Poisson(λ).

    Zero draws are clamped to 1, so the expected span length is λ + e^-λ
    (3.05 for λ=3), slightly lowered by spans truncated to fit short
    sequences; ±0.25 around λ covers both effects.
    """
    torch.manual_seed(0)
    lam = 3.0
    collator = BlankInfillingCollator(tok, mask_probability=p, span_poisson_lambda=lam)
    examples = random_examples(600, 64, 128, seed=1)
    covered = total = 0
    span_lengths: list[int] = []
    for ex in examples:
        sample = collator.corrupt(ex["input_ids"])
        covered += sum(len(s) for s in sample.spans)
        total += len(ex["input_ids"])
        span_lengths += [len(s) for s in sample.spans]
    assert total >= 50_000
    assert abs(covered / total - p) < 0.02
    assert abs(sum(span_lengths) / len(span_lengths) - lam) < 0.25


def test_span_lengths_follow_lambda(tok):
    torch.manual_seed(0)
    collator = BlankInfillingCollator(tok, mask_probability=0.3, span_poisson_lambda=6.0)
    lengths = []
    for ex in random_examples(300, 200, 200, seed=2):
        lengths += [len(s) for s in collator.corrupt(ex["input_ids"]).spans]
    assert abs(sum(lengths) / len(lengths) - 6.0) < 0.4


def test_spans_do_not_overlap_or_touch(tok, ids):
    torch.manual_seed(0)
    collator = BlankInfillingCollator(tok, mask_probability=0.5, span_poisson_lambda=2.0)
    for ex in random_examples(300, 1, 40, seed=3):
        sample = collator.corrupt(ex["input_ids"])
        pos = sample.mask_positions
        assert all(b - a >= 2 for a, b in zip(pos, pos[1:], strict=False)), "adjacent spans"
        assert all(len(s) >= 1 for s in sample.spans)
        unmasked = [t for t in sample.part_a if t != ids["[MASK]"]]
        assert len(unmasked) >= 1, "at least one token must stay unmasked"
        assert all(sample.part_a[q] == ids["[MASK]"] for q in pos)


def test_spans_cover_all_regions(tok):
    """Spans land anywhere: the first and the last token are both masked sometimes."""
    torch.manual_seed(0)
    collator = BlankInfillingCollator(tok)
    first = last = 0
    for ex in random_examples(400, 30, 30, seed=4):
        s = collator.corrupt(ex["input_ids"])
        first += s.mask_positions[0] == 0
        last += s.mask_positions[-1] == len(s.part_a) - 1
    assert first > 10 and last > 10


def test_part_b_order_is_shuffled(tok):
    torch.manual_seed(0)
    collator = BlankInfillingCollator(tok, mask_probability=0.3)
    orders = [collator.corrupt(ex["input_ids"]).order for ex in random_examples(50, 100, 100, 5)]
    assert any(o != sorted(o) for o in orders)
    assert all(sorted(o) == list(range(len(o))) for o in orders)


def test_span_lengths_are_shuffled_before_placement(tok):
    """The span that crosses the mask target is size-biased; unshuffled it always lands rightmost.

    GLM shuffles the lengths before placing them, so the rightmost span of a block is as long
    as its average span. (Per block: pooling all spans would weight blocks with many, hence
    shorter, spans more.)
    """
    collator = BlankInfillingCollator(tok, generator=torch.Generator().manual_seed(2))
    excess = []
    for ex in random_examples(2000, 128, 128, seed=10):
        lengths = [len(span) for span in collator.corrupt(ex["input_ids"]).spans]
        excess.append(lengths[-1] - sum(lengths) / len(lengths))
    assert abs(sum(excess) / len(excess)) < 0.1


# ----------------------------------------------------------------------------- documents


def packed_blocks(n: int, length: int, lo: int, hi: int, seed: int, eos: int) -> list[list[int]]:
    """Blocks cut from a stream of documents of lo..hi tokens, each followed by eos (as packing does)."""
    g = torch.Generator().manual_seed(seed)
    stream: list[int] = []
    while len(stream) < n * length:
        stream += random_block(int(torch.randint(lo, hi + 1, (), generator=g)), g) + [eos]
    return [stream[i * length : (i + 1) * length] for i in range(n)]


def documents(block: list[int], eos: int) -> list[tuple[int, int]]:
    """(start, end) of every maximal run of non-eos tokens."""
    runs, start = [], None
    for i, t in enumerate([*block, eos]):
        if t != eos and start is None:
            start = i
        elif t == eos and start is not None:
            runs.append((start, i))
            start = None
    return runs


def span_starts(sample: GLMSample) -> list[int]:
    """Where each span (text order) starts in the original sequence."""
    starts, removed = [], 0
    for pos, span in zip(sample.mask_positions, sample.spans, strict=True):
        starts.append(pos + removed)
        removed += len(span) - 1
    return starts


@pytest.mark.parametrize(("lo", "hi"), [(1, 12), (5, 60), (40, 200)])
def test_spans_stay_inside_one_document(tok, ids, lo, hi):
    """GLM corrupts per document: no span holds an eos, an eos is never masked, and every
    document keeps an unmasked token (its spans' context); the usual invariants still hold."""
    eos = tok.eos_token_id
    collator = BlankInfillingCollator(tok, mask_probability=0.3, generator=torch.Generator().manual_seed(3))
    for block in packed_blocks(300, 128, lo, hi, seed=11, eos=eos):
        sample = collator.corrupt(block)
        assert sample.reconstruct() == block
        assert all(eos not in span for span in sample.spans)
        assert sample.part_a.count(eos) == block.count(eos)
        pos = sample.mask_positions
        assert all(b - a >= 2 for a, b in zip(pos, pos[1:], strict=False)), "adjacent spans"
        starts = span_starts(sample)
        covered = {i for s, span in zip(starts, sample.spans, strict=True) for i in range(s, s + len(span))}
        for start, end in documents(block, eos):
            assert any(i not in covered for i in range(start, end)), "a document is fully masked"


def test_spans_may_cross_documents_when_asked(tok):
    eos = tok.eos_token_id
    collator = BlankInfillingCollator(
        tok, mask_probability=0.3, spans_cross_documents=True, generator=torch.Generator().manual_seed(4)
    )
    samples = [collator.corrupt(b) for b in packed_blocks(300, 128, 5, 30, seed=12, eos=eos)]
    assert sum(eos in span for s in samples for span in s.spans) > 50


@pytest.mark.parametrize("p", [0.15, 0.3])
@pytest.mark.parametrize(("lo", "hi"), [(5, 60), (10, 120)])
def test_covered_share_holds_with_several_documents(tok, p, lo, hi):
    """Spans kept inside documents still cover mask_probability of the block (eos included)."""
    eos = tok.eos_token_id
    collator = BlankInfillingCollator(tok, mask_probability=p, generator=torch.Generator().manual_seed(5))
    blocks = packed_blocks(800, 128, lo, hi, seed=13, eos=eos)
    assert sum(b.count(eos) for b in blocks) / len(blocks) > 1.2  # several documents per block
    covered = 0
    for block in blocks:
        covered += sum(len(span) for span in collator.corrupt(block).spans)
    assert abs(covered / (128 * len(blocks)) - p) < 0.02


def test_corruption_of_documents_is_deterministic_for_a_generator(tok):
    blocks = packed_blocks(40, 128, 5, 60, seed=14, eos=tok.eos_token_id)
    runs = []
    for _ in range(2):
        collator = BlankInfillingCollator(tok, mode="mixed", generator=torch.Generator().manual_seed(6))
        runs.append([collator.corrupt(b) for b in blocks])
    assert runs[0] == runs[1]


# ----------------------------------------------------------------------------- reconstruction


@pytest.mark.parametrize("mode", ["blank", "gmask", "mixed"])
def test_reconstruction_is_exact(tok, mode):
    """Original text == A with masks replaced by spans, from bookkeeping AND tensors."""
    torch.manual_seed(0)
    collator = BlankInfillingCollator(tok, mode=mode, mask_probability=0.3)
    examples = random_examples(400, 1, 90, seed=6)
    for start in range(0, len(examples), 16):
        chunk = examples[start : start + 16]
        samples = [collator.corrupt(ex["input_ids"]) for ex in chunk]
        batch = collator.collate_samples(samples)
        for row, (ex, sample) in enumerate(zip(chunk, samples, strict=True)):
            assert sample.reconstruct() == ex["input_ids"]
            rebuilt = reconstruct_from_batch_row(
                batch["input_ids"][row],
                batch["labels"][row],
                batch["position_ids"][row],
                batch["block_position_ids"][row],
                int(batch["part_a_length"][row]),
            )
            assert rebuilt == ex["input_ids"]


def test_reconstruct_from_parts_hand_built():
    part_a = [10, 4, 13, 4]
    assert reconstruct_from_parts(part_a, [[11, 12], [14]], [1, 3]) == [10, 11, 12, 13, 14]


def test_tensor_input_and_short_sequences(tok, ids):
    torch.manual_seed(0)
    collator = BlankInfillingCollator(tok)
    examples = [{"input_ids": torch.tensor(random_block(n, torch.Generator()))} for n in range(6)]
    batch = collator(examples)
    assert batch["input_ids"].shape[0] == 6
    assert (batch["labels"][0] == IGNORE_INDEX).all()  # empty document: nothing to predict
    assert (batch["labels"][1] == IGNORE_INDEX).all()  # L=1: keep one token unmasked
    for row in range(2, 6):  # every longer sequence gets at least one span
        assert (batch["labels"][row] == ids["[eop]"]).sum() >= 1


# ----------------------------------------------------------------------------- batch layout


def reference_visibility(a_len: int, n_real: int, width: int) -> torch.Tensor:
    """Loop-by-loop statement of the GLM visibility rules."""
    mask = torch.zeros(width, width, dtype=torch.bool)
    for i in range(width):
        for j in range(width):
            if i >= n_real:
                mask[i, j] = i == j  # pad rows see only themselves
            elif i < a_len:
                mask[i, j] = j < a_len  # A rows: all of A
            else:
                mask[i, j] = j < a_len or (a_len <= j <= i)  # B rows: A + causal B
    return mask


@pytest.fixture(scope="module")
def mixed_batch(tok):
    torch.manual_seed(0)
    collator = BlankInfillingCollator(tok, mode="mixed", mask_probability=0.3, pad_to_multiple_of=8)
    return collator(random_examples(12, 5, 40, seed=7))


def test_output_keys_shapes_dtypes(mixed_batch):
    b, t = mixed_batch["input_ids"].shape
    assert t % 8 == 0
    assert mixed_batch["attention_mask"].shape == (b, t, t)
    assert mixed_batch["attention_mask"].dtype == torch.bool
    for key in ("input_ids", "position_ids", "block_position_ids", "labels"):
        assert mixed_batch[key].shape == (b, t) and mixed_batch[key].dtype == torch.long
    assert mixed_batch["part_a_length"].shape == (b,)
    assert set(mixed_batch) == {
        "input_ids",
        "attention_mask",
        "position_ids",
        "block_position_ids",
        "labels",
        "part_a_length",
    }


def test_attention_visibility(mixed_batch):
    width = mixed_batch["input_ids"].shape[1]
    for row, n_real in enumerate(real_lengths(mixed_batch)):
        a_len = int(mixed_batch["part_a_length"][row])
        mask = mixed_batch["attention_mask"][row]
        assert torch.equal(mask, reference_visibility(a_len, n_real, width))
        assert not mask[:n_real, n_real:].any(), "a real row sees padding"
        assert mask.any(-1).all(), "a row sees nothing"


def test_position_ids_point_at_the_span_mask(mixed_batch, ids):
    blanks = {ids["[MASK]"], ids["[gMASK]"]}
    for row, n_real in enumerate(real_lengths(mixed_batch)):
        a_len = int(mixed_batch["part_a_length"][row])
        x = mixed_batch["input_ids"][row]
        pos = mixed_batch["position_ids"][row]
        block = mixed_batch["block_position_ids"][row]
        assert pos[:a_len].tolist() == list(range(a_len))
        assert (block[:a_len] == 0).all() and (block[n_real:] == 0).all()
        assert (x[n_real:] == ids["[PAD]"]).all()
        expected_block = 0
        for i in range(a_len, n_real):
            assert int(x[pos[i]]) in blanks
            assert pos[i] < a_len
            expected_block = 1 if x[i] == ids["[sop]"] else expected_block + 1
            assert int(block[i]) == expected_block
            if expected_block > 1:
                assert pos[i] == pos[i - 1], "a span must keep its mask position"


def test_labels_are_aligned(mixed_batch, ids):
    for row, n_real in enumerate(real_lengths(mixed_batch)):
        a_len = int(mixed_batch["part_a_length"][row])
        x = mixed_batch["input_ids"][row]
        y = mixed_batch["labels"][row]
        assert (y[:a_len] == IGNORE_INDEX).all() and (y[n_real:] == IGNORE_INDEX).all()
        for i in range(a_len, n_real):
            span_continues = i + 1 < n_real and x[i + 1] != ids["[sop]"]
            expected = x[i + 1] if span_continues else ids["[eop]"]
            assert int(y[i]) == int(expected)
        assert (x[a_len:n_real] == ids["[eop]"]).sum() == 0, "[eop] is never an input"


# ----------------------------------------------------------------------------- gmask / mixed


def test_gmask_is_a_prefix_lm(tok, ids):
    torch.manual_seed(0)
    collator = BlankInfillingCollator(tok, mode="gmask")
    examples = random_examples(40, 2, 60, seed=8)
    samples = [collator.corrupt(ex["input_ids"]) for ex in examples]
    batch = collator.collate_samples(samples)
    width = batch["input_ids"].shape[1]
    for row, (sample, n_real) in enumerate(zip(samples, real_lengths(batch), strict=True)):
        a = sample.part_a
        assert sample.is_gmask and len(sample.spans) == 1
        assert a.count(ids["[gMASK]"]) == 1 and a[-1] == ids["[gMASK]"]
        assert ids["[MASK]"] not in a
        assert len(a) >= 2, "the prefix keeps at least one token"
        a_len = len(a)
        prefix_lm = torch.tril(torch.ones(n_real, n_real, dtype=torch.bool))
        prefix_lm[:, :a_len] = True  # bidirectional prefix, causal suffix
        mask = batch["attention_mask"][row]
        assert torch.equal(mask[:n_real, :n_real], prefix_lm)
        assert torch.equal(mask, reference_visibility(a_len, n_real, width))


@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_gmask_length_is_uniform_from_min_ratio_to_the_whole_block(tok, ratio):
    """GLM's gpt branch: the generated length ~ U[int(ratio * L), L - 1], whatever mask_probability.

    The prefix keeps one token (GLM's ``L - 2`` counts the [CLS] it prepends). Drawn as a share
    of the mask probability instead, [gMASK] sat at positions 99-118 of a 128 block and block
    positions >= 31 never got a gradient although generation reads them.
    """
    collator = BlankInfillingCollator(
        tok, mode="gmask", gmask_min_ratio=ratio, generator=torch.Generator().manual_seed(0)
    )
    lengths = [len(collator.corrupt(list(range(9, 137))).spans[0]) for _ in range(2000)]
    lo, hi = int(ratio * 128), 127
    assert min(lengths) == lo and max(lengths) == hi
    assert abs(sum(lengths) / len(lengths) - (lo + hi) / 2) < 2.0
    assert abs(sum(n < (lo + hi) / 2 for n in lengths) / len(lengths) - 0.5) < 0.05  # not skewed


def test_mixed_mode_trains_every_block_position_generation_reads(tok):
    """Default settings: some row carries a label at every block position up to the block length."""
    collator = BlankInfillingCollator(tok, mode="mixed", generator=torch.Generator().manual_seed(1))
    seen: set[int] = set()
    for _ in range(2000):
        _, _, _, blocks = collator.corrupt(list(range(9, 137))).part_b()
        seen.update(blocks)
    assert seen == set(range(1, 129))  # 127 generated tokens + [eop] at block position 128


@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_invalid_gmask_min_ratio_names_the_key(tok, ratio):
    with pytest.raises(ValueError, match="gmask_min_ratio"):
        BlankInfillingCollator(tok, gmask_min_ratio=ratio)


@pytest.mark.parametrize(("prob", "lo", "hi"), [(0.0, 0, 0), (1.0, 1, 1), (0.5, 0.4, 0.6)])
def test_mixed_mode_gmask_rate(tok, prob, lo, hi):
    torch.manual_seed(0)
    collator = BlankInfillingCollator(tok, mode="mixed", gmask_probability=prob)
    flags = [collator.corrupt(list(range(9, 49))).is_gmask for _ in range(400)]
    assert lo <= sum(flags) / len(flags) <= hi


# ----------------------------------------------------------------------------- determinism


def test_global_seed_and_generator_govern_the_rng(tok):
    examples = random_examples(8, 10, 50, seed=9)
    collator = BlankInfillingCollator(tok, mode="mixed")
    torch.manual_seed(123)
    first = collator(examples)
    torch.manual_seed(123)
    second = collator(examples)
    assert all(torch.equal(first[k], second[k]) for k in first)
    seeded = [
        BlankInfillingCollator(tok, mode="mixed", generator=torch.Generator().manual_seed(5))(examples)
        for _ in range(2)
    ]
    assert all(torch.equal(seeded[0][k], seeded[1][k]) for k in first)


def test_sample_part_b_layout(ids):
    sample = GLMSample(
        part_a=[10, 4, 13, 4],
        spans=[[11, 12], [14]],
        mask_positions=[1, 3],
        order=[1, 0],
        sop_id=ids["[sop]"],
        eop_id=ids["[eop]"],
    )
    inputs, labels, positions, blocks = sample.part_b()
    sop, eop = ids["[sop]"], ids["[eop]"]
    assert inputs == [sop, 14, sop, 11, 12]
    assert labels == [14, eop, 11, 12, eop]
    assert positions == [3, 3, 1, 1, 1]
    assert blocks == [1, 2, 1, 2, 3]


# ----------------------------------------------------------------------------- config wiring


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("objective.gmask_min_ratio=1.5", "objective.gmask_min_ratio"),
        ("objective.gmask_min_ratio=-0.5", "objective.gmask_min_ratio"),
    ],
)
def test_config_rejects_bad_glm_settings(compose_cfg, override, key):
    with pytest.raises(ConfigError, match=f"^{key}="):
        validate(compose_cfg("objective=prefix", override))


def test_config_rejects_a_non_bool_spans_cross_documents(compose_cfg):
    """The schema types it; a config built without the schema still gets a one-line error."""
    cfg = compose_cfg("objective=prefix")
    OmegaConf.set_struct(cfg, False)
    cfg.objective = OmegaConf.create({**OmegaConf.to_container(cfg.objective), "spans_cross_documents": "no"})
    with pytest.raises(ConfigError, match="^objective.spans_cross_documents=no: must be true or false"):
        validate(cfg)


def test_prefix_config_reaches_the_collator(compose_cfg, tok):
    """The GLM knobs of conf/objective/prefix.yaml (defaults and overrides) reach the collator."""
    defaults = compose_cfg("objective=prefix").objective
    assert (defaults.gmask_min_ratio, defaults.spans_cross_documents) == (0.5, False)
    cfg = compose_cfg(
        "objective=prefix", "objective.gmask_min_ratio=0.3", "objective.spans_cross_documents=true"
    )
    validate(cfg)
    settings = {k: v for k, v in OmegaConf.to_container(cfg.objective).items() if k != "_target_"}
    collator = PrefixLM(None, tok, **settings).build_collator()
    assert (collator.gmask_min_ratio, collator.spans_cross_documents) == (0.3, True)
    old_run = {k: v for k, v in settings.items() if k not in ("gmask_min_ratio", "spans_cross_documents")}
    collator = PrefixLM(None, tok, **old_run).build_collator()  # a config saved before the keys
    assert (collator.gmask_min_ratio, collator.spans_cross_documents) == (0.5, False)

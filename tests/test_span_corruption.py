"""Property tests for T5 span corruption (pretrainlab.objectives.span_corruption)."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from conftest import word_level_tokenizer
from pretrainlab.objectives.span_corruption import (
    LABEL_PAD_ID,
    SpanCorruptionCollator,
    compute_input_and_target_lengths,
    fill_sentinels,
    noise_span_counts,
    random_spans_noise_mask,
    reconstruct,
    sentinel_ids,
    split_target_by_sentinel,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "</s>"]
SENTINELS = [f"<extra_id_{i}>" for i in range(100)]


def make_tokenizer(
    sentinels: list[str] | None = None,
) -> PreTrainedTokenizerFast:
    """WordLevel tokenizer; sentinels sit in the middle of the vocabulary."""
    sentinels = SENTINELS if sentinels is None else sentinels
    tokens = SPECIALS + [f"t{i}" for i in range(100)] + sentinels + [f"t{i}" for i in range(100, 200)]
    return word_level_tokenizer(
        tokens,
        pad_token="[PAD]",
        eos_token="</s>",
        mask_token="[MASK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="module")
def ordinary_ids(tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    ids = tokenizer.convert_tokens_to_ids([f"t{i}" for i in range(200)])
    return torch.tensor(ids, dtype=torch.long)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)


def random_tokens(ordinary_ids: torch.Tensor, length: int) -> torch.Tensor:
    return ordinary_ids[torch.randint(0, ordinary_ids.numel(), (length,))]


def runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of every run of True."""
    out: list[tuple[int, int]] = []
    start = None
    for i, v in enumerate([*mask.tolist(), False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            out.append((start, i - start))
            start = None
    return out


LAYOUTS = ["reference", "uniform"]


def expected_counts(length: int, density: float, mean: float, layout: str = "reference") -> tuple[int, int]:
    """Independent restatement of the T5 counts (T5's own for density < 0.5), plus the clamp
    that keeps every noise span separable: at most N non-noise runs (reference) or N + 1
    (uniform, where both ends may be noise) for N non-noise tokens."""
    n = min(max(round(length * density), 1), length - 1)
    return n, min(max(round(n / mean), 1), length - n + (layout == "uniform"))


def reference_mask_numpy(length: int, density: float, mean: float, rng: np.random.Generator) -> np.ndarray:
    """HF run_t5_mlm_flax.py's ``random_spans_noise_mask`` restated in numpy (itself a copy of
    T5's): ``[non-noise, noise] * num_noise_spans`` with both kinds split uniformly at random."""
    n = min(max(int(np.round(length * density)), 1), length - 1)
    s = max(int(np.round(n / mean)), 1)

    def segmentation(items: int, segments: int) -> np.ndarray:
        first_in_segment = np.pad(rng.permutation(np.arange(items - 1) < segments - 1), [[1, 0]])
        return np.bincount(np.cumsum(first_in_segment))

    interleaved = np.stack([segmentation(length - n, s), segmentation(n, s)], axis=1).reshape(-1)
    start_indicator = np.zeros(length, dtype=np.int64)
    start_indicator[np.cumsum(interleaved)[:-1]] = 1
    return np.cumsum(start_indicator) % 2 == 1


def hf_reference_lengths(inputs_length: int, density: float, mean: float):
    """HF run_t5_mlm_flax.compute_input_and_target_lengths, minus the 0.5 hack."""

    def lens(tokens_length: int) -> tuple[int, int]:
        n = round(tokens_length * density)
        s = round(n / mean)
        return tokens_length - n + s + 1, n + s + 1

    t = inputs_length
    while lens(t + 1)[0] <= inputs_length:
        t += 1
    return t, lens(t)[1]


def unpadded(row: torch.Tensor, pad: int) -> list[int]:
    ids = row.tolist()
    while ids and ids[-1] == pad:
        ids.pop()
    return ids


# --------------------------------------------------------------------------- #
# noise mask
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("density", [0.15, 0.3])
def test_noise_fraction_matches_density(density: float) -> None:
    total = noise = 0
    while total < 50_000:
        length = int(torch.randint(100, 600, ()).item())
        mask = random_spans_noise_mask(length, density, 3.0)
        assert mask.dtype == torch.bool and mask.shape == (length,)
        total += length
        noise += int(mask.sum())
    assert abs(noise / total - density) <= 0.01


def test_mean_span_length() -> None:
    lengths: list[int] = []
    for _ in range(300):
        mask = random_spans_noise_mask(512, 0.15, 3.0)
        lengths += [n for _, n in runs(mask)]
    assert abs(sum(lengths) / len(lengths) - 3.0) <= 0.2


def test_uniform_layout_spans_can_start_anywhere_and_end_need_not_be_noise() -> None:
    samples = 4000
    masks = torch.stack(
        [random_spans_noise_mask(20, 0.15, 3.0, noise_layout="uniform") for _ in range(samples)]
    )
    first, last = masks[:, 0].float().mean().item(), masks[:, -1].float().mean().item()
    assert first > 0 and last < 1  # reference: first == 0 and last == 1
    assert bool(masks.any(dim=0).all()), "every position is noise in some sample"
    # Uniform-over-masks theory: P(boundary is noise) = spans / (nonnoise + 1)
    # = 1 / 18 for (n=3, s=1, N=17); symmetric under reversal.
    assert abs(first - 1 / 18) < 0.015 and abs(last - 1 / 18) < 0.015
    # interior positions are not starved either
    assert masks[:, 5:15].float().mean().item() > 0.13


def test_uniform_layout_is_uniform_over_all_valid_masks() -> None:
    # length 7, 3 noise tokens in 2 spans -> C(2,1) * C(5,2) = 20 valid masks
    length, density, mean = 7, 0.4, 1.5
    assert noise_span_counts(length, density, mean) == (3, 2)
    valid = [
        m
        for m in itertools.product([0, 1], repeat=length)
        if sum(m) == 3 and len(runs(torch.tensor(m, dtype=torch.bool))) == 2
    ]
    assert len(valid) == 20
    gen = torch.Generator().manual_seed(7)
    draws = 10_000
    counts = Counter(
        tuple(random_spans_noise_mask(length, density, mean, gen, noise_layout="uniform").long().tolist())
        for _ in range(draws)
    )
    assert set(counts) == set(valid)
    expected = draws / len(valid)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 50  # 19 dof: p(chi2 > 50) ~ 1e-4


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("density,mean", [(0.15, 3.0), (0.3, 2.0), (0.5, 1.0)])
def test_exact_noise_and_span_count(density: float, mean: float, layout: str) -> None:
    for length in [*range(2, 60), 127, 300, 568]:
        n, s = expected_counts(length, density, mean, layout)
        assert noise_span_counts(length, density, mean, noise_layout=layout) == (n, s)
        for _ in range(3):
            mask = random_spans_noise_mask(length, density, mean, noise_layout=layout)
            assert int(mask.sum()) == n
            assert len(runs(mask)) == s


def test_high_density_and_span_cap_keep_masks_valid() -> None:
    # density 0.9 / span 1: 9 noise tokens cannot form 9 spans around 1 token
    assert noise_span_counts(10, 0.9, 1.0, noise_layout="uniform") == (9, 2)
    assert noise_span_counts(10, 0.9, 1.0, noise_layout="reference") == (9, 1)
    for _ in range(50):
        mask = random_spans_noise_mask(10, 0.9, 1.0, noise_layout="uniform")
        assert int(mask.sum()) == 9 and len(runs(mask)) == 2
        assert bool(mask[0]) and bool(mask[-1])  # the only possible layout
        mask = random_spans_noise_mask(10, 0.9, 1.0, noise_layout="reference")
        assert mask.tolist() == [False] + [True] * 9  # the only reference mask
    # span cap: same noise count spread over at most max_noise_spans spans
    for layout in LAYOUTS:
        mask = random_spans_noise_mask(2000, 0.15, 3.0, max_noise_spans=5, noise_layout=layout)
        assert int(mask.sum()) == 300 and len(runs(mask)) == 5


@pytest.mark.parametrize("density,mean", [(0.15, 3.0), (0.3, 2.0), (0.5, 1.0), (0.8, 1.0)])
def test_reference_layout_starts_with_non_noise_and_ends_with_noise(density: float, mean: float) -> None:
    """T5's layout: ``[non-noise, noise] * num_noise_spans``, exactly as many non-noise runs as
    noise spans, the first token never noise and the last always noise."""
    for length in [*range(2, 60), 127, 568]:
        n, s = expected_counts(length, density, mean)
        for _ in range(20):
            mask = random_spans_noise_mask(length, density, mean)  # the default layout
            assert not bool(mask[0]) and bool(mask[-1])
            assert int(mask.sum()) == n and len(runs(mask)) == s == len(runs(~mask))


def test_reference_layout_matches_hf_t5_sampler() -> None:
    """Same support, same (uniform) distribution as T5's / HF's sampler, and same counts and
    span lengths on average at a realistic packed length."""
    # length 8, 3 noise tokens in 2 spans: C(2,1) * C(4,1) = 8 reference masks
    length, density, mean = 8, 0.375, 1.5
    valid = [
        m
        for m in itertools.product([0, 1], repeat=length)
        if sum(m) == 3 and m[0] == 0 and m[-1] == 1 and len(runs(torch.tensor(m, dtype=torch.bool))) == 2
    ]
    assert len(valid) == 8
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(7)
    draws = 4000
    ours = Counter(
        tuple(random_spans_noise_mask(length, density, mean, gen).long().tolist()) for _ in range(draws)
    )
    theirs = Counter(
        tuple(reference_mask_numpy(length, density, mean, rng).astype(int).tolist()) for _ in range(draws)
    )
    assert set(ours) == set(theirs) == set(valid)
    expected = draws / len(valid)
    for counts in (ours, theirs):
        assert sum((c - expected) ** 2 / expected for c in counts.values()) < 30  # 7 dof: p ~ 1e-4
    # packed length of a 512-token T5 input: identical counts, matching span-length statistics
    ours_lengths, theirs_lengths = [], []
    for _ in range(200):
        mask = random_spans_noise_mask(568, 0.15, 3.0)
        ref = torch.from_numpy(reference_mask_numpy(568, 0.15, 3.0, rng))
        assert int(mask.sum()) == int(ref.sum()) == 85 and len(runs(mask)) == len(runs(ref)) == 28
        ours_lengths += [n for _, n in runs(mask)]
        theirs_lengths += [n for _, n in runs(ref)]
    assert abs(np.mean(ours_lengths) - np.mean(theirs_lengths)) < 1e-9  # both exactly 85 / 28
    assert abs(np.std(ours_lengths) - np.std(theirs_lengths)) < 0.15


def test_degenerate_lengths() -> None:
    assert random_spans_noise_mask(0, 0.15, 3.0).shape == (0,)
    assert not random_spans_noise_mask(1, 0.15, 3.0).any()
    mask = random_spans_noise_mask(2, 0.15, 3.0)
    assert int(mask.sum()) == 1


@pytest.mark.parametrize("layout", LAYOUTS)
def test_generator_makes_masks_reproducible(layout: str) -> None:
    a = random_spans_noise_mask(100, 0.15, 3.0, torch.Generator().manual_seed(3), noise_layout=layout)
    b = random_spans_noise_mask(100, 0.15, 3.0, torch.Generator().manual_seed(3), noise_layout=layout)
    assert torch.equal(a, b)
    torch.manual_seed(5)
    c = random_spans_noise_mask(100, 0.15, 3.0, noise_layout=layout)
    torch.manual_seed(5)
    assert torch.equal(c, random_spans_noise_mask(100, 0.15, 3.0, noise_layout=layout))


# --------------------------------------------------------------------------- #
# lengths
# --------------------------------------------------------------------------- #


def test_lengths_match_hf_reference() -> None:
    assert compute_input_and_target_lengths(512, 0.15, 3.0) == (568, 114)
    for args in [(128, 0.15, 3.0), (512, 0.15, 3.0), (64, 0.3, 2.0), (1024, 0.1, 3)]:
        assert compute_input_and_target_lengths(*args) == hf_reference_lengths(*args)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_lengths_arithmetic_is_exact_and_maximal(layout: str) -> None:
    settings = [(0.1, 3.0), (0.15, 3.0), (0.3, 2.0), (0.45, 1.0), (0.5, 1.0), (0.5, 3.0), (0.7, 1.0)]
    for density, mean in settings:
        # exact below density 0.5; at 0.5 too for uniform (see compute_input_and_target_lengths)
        exact = density < 0.5 or (density == 0.5 and layout == "uniform")
        for inputs_length in range(2, 200):
            t, tgt = compute_input_and_target_lengths(inputs_length, density, mean, noise_layout=layout)
            n, s = noise_span_counts(t, density, mean, noise_layout=layout)
            assert t - n + s + 1 == inputs_length if exact else t - n + s + 1 <= inputs_length
            assert tgt == n + s + 1
            n1, s1 = noise_span_counts(t + 1, density, mean, noise_layout=layout)
            assert t + 1 - n1 + s1 + 1 > inputs_length
    # the layouts differ only where the reference's "no more spans than non-noise runs" binds
    for density, mean in settings[:4]:
        for inputs_length in (32, 128, 512):
            assert (
                len(
                    {
                        compute_input_and_target_lengths(inputs_length, density, mean, noise_layout=x)
                        for x in LAYOUTS
                    }
                )
                == 1
            )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("inputs_length,density,mean", [(128, 0.15, 3.0), (512, 0.15, 3.0), (64, 0.3, 2.0)])
def test_packed_blocks_give_exact_input_length(
    tokenizer, ordinary_ids, inputs_length: int, density: float, mean: float, layout: str
) -> None:
    collator = SpanCorruptionCollator(tokenizer, density, mean, noise_layout=layout)
    tokens_length, targets_length = compute_input_and_target_lengths(
        inputs_length, density, mean, noise_layout=layout
    )
    assert collator.input_and_target_lengths(inputs_length) == (
        tokens_length,
        targets_length,
    )
    for _ in range(3):
        examples = [{"input_ids": random_tokens(ordinary_ids, tokens_length).tolist()} for _ in range(8)]
        batch = collator(examples)
        assert batch["input_ids"].shape == (8, inputs_length)
        assert bool((batch["input_ids"] != tokenizer.pad_token_id).all())
        assert bool((batch["attention_mask"] == 1).all())
        assert batch["labels"].shape[1] <= targets_length
        assert bool((batch["labels"] != LABEL_PAD_ID).all())


def test_span_cap_keeps_packed_length_exact(tokenizer, ordinary_ids) -> None:
    collator = SpanCorruptionCollator(tokenizer, num_sentinels=10)
    tokens_length, targets_length = collator.input_and_target_lengths(256)
    assert tokens_length > compute_input_and_target_lengths(256, 0.15, 3.0)[0]
    examples = [{"input_ids": random_tokens(ordinary_ids, tokens_length)} for _ in range(4)]
    batch = collator(examples)
    assert batch["input_ids"].shape == (4, 256)
    assert batch["labels"].shape == (4, targets_length)
    ids = set(collator.sentinel_ids)
    for row in batch["input_ids"]:
        assert sum(int(t) in ids for t in row) == 10


# --------------------------------------------------------------------------- #
# collator
# --------------------------------------------------------------------------- #


def test_sentinels_are_looked_up_by_name(tokenizer) -> None:
    ids = sentinel_ids(tokenizer, 100)
    assert ids == list(range(106, 206))  # middle of the vocabulary
    assert max(ids) < len(tokenizer) - 1
    assert tokenizer.convert_ids_to_tokens(ids[0]) == "<extra_id_0>"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_round_trip_packed_and_varying_lengths(tokenizer, ordinary_ids, layout: str) -> None:
    collator = SpanCorruptionCollator(tokenizer, noise_layout=layout)
    sids, eos, pad = collator.sentinel_ids, tokenizer.eos_token_id, tokenizer.pad_token_id
    tokens_length, _ = collator.input_and_target_lengths(128)
    for lengths in ([tokens_length] * 8, [0, 1, 2, 3, 5, 17, 64, 300]):
        for _ in range(25):
            originals = [random_tokens(ordinary_ids, n).tolist() for n in lengths]
            # eos inside a packed block (document separator) must survive
            if originals[-1]:
                originals[-1][len(originals[-1]) // 2] = eos
            batch = collator([{"input_ids": o} for o in originals])
            for i, original in enumerate(originals):
                rebuilt = reconstruct(batch["input_ids"][i], batch["labels"][i], sids, eos, pad)
                assert rebuilt == original


def test_sentinel_order_and_eos(tokenizer, ordinary_ids) -> None:
    collator = SpanCorruptionCollator(tokenizer)
    sids, eos, pad = collator.sentinel_ids, tokenizer.eos_token_id, tokenizer.pad_token_id
    index = {s: i for i, s in enumerate(sids)}
    examples = [{"input_ids": random_tokens(ordinary_ids, int(n))} for n in torch.randint(2, 400, (64,))]
    batch = collator(examples)
    for example, inp, tgt in zip(examples, batch["input_ids"], batch["labels"], strict=True):
        inp_ids, tgt_ids = unpadded(inp, pad), unpadded(tgt, LABEL_PAD_ID)
        assert inp_ids[-1] == eos and tgt_ids[-1] == eos
        in_sent = [index[t] for t in inp_ids if t in index]
        tgt_sent = [index[t] for t in tgt_ids if t in index]
        _, spans = noise_span_counts(len(example["input_ids"]), 0.15, 3.0)
        assert in_sent == tgt_sent == list(range(spans))
        assert tgt_ids[0] == sids[0]  # target starts with <extra_id_0>
        # a sentinel is never adjacent to another sentinel in the target
        assert all(not (a in index and b in index) for a, b in itertools.pairwise(tgt_ids))


def test_reference_layout_inputs_end_with_a_sentinel_then_eos(tokenizer, ordinary_ids) -> None:
    """The default collator is T5's: every input starts with a corpus token and ends
    ``<extra_id_k> </s>``, and every target starts ``<extra_id_0>`` and ends with a span, ``</s>``."""
    collator = SpanCorruptionCollator(tokenizer)
    assert collator.noise_layout == "reference"
    sids, eos, pad = set(collator.sentinel_ids), tokenizer.eos_token_id, tokenizer.pad_token_id
    examples = [{"input_ids": random_tokens(ordinary_ids, int(n))} for n in torch.randint(2, 400, (200,))]
    batch = collator(examples)
    for inp, tgt in zip(batch["input_ids"], batch["labels"], strict=True):
        inp_ids, tgt_ids = unpadded(inp, pad), unpadded(tgt, LABEL_PAD_ID)
        assert inp_ids[0] not in sids and inp_ids[-2] in sids and inp_ids[-1] == eos
        assert tgt_ids[0] == collator.sentinel_ids[0] and tgt_ids[-2] not in sids and tgt_ids[-1] == eos


def test_bad_noise_layout_names_key(tokenizer) -> None:
    for call in (
        lambda: SpanCorruptionCollator(tokenizer, noise_layout="t5"),
        lambda: random_spans_noise_mask(10, 0.15, 3.0, noise_layout="t5"),
        lambda: compute_input_and_target_lengths(128, 0.15, 3.0, noise_layout="t5"),
    ):
        with pytest.raises(ValueError, match="^noise_layout='t5': must be one of reference, uniform$"):
            call()


def test_padding_of_varying_length_examples(tokenizer, ordinary_ids) -> None:
    collator = SpanCorruptionCollator(tokenizer)
    pad = tokenizer.pad_token_id
    lengths = [3, 50, 11, 200, 1, 0]
    batch = collator([{"input_ids": random_tokens(ordinary_ids, n).tolist()} for n in lengths])
    ids, attn, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.dtype == attn.dtype == labels.dtype == torch.long
    assert ids.shape == attn.shape and ids.shape[0] == labels.shape[0] == len(lengths)
    assert torch.equal(attn, (ids != pad).long())  # zero exactly on padding
    for i, n in enumerate(lengths):
        noise, spans = noise_span_counts(n, 0.15, 3.0)
        in_len, tgt_len = n - noise + spans + 1, noise + spans + 1
        assert int(attn[i].sum()) == in_len
        assert bool((attn[i, :in_len] == 1).all())
        assert bool((labels[i, :tgt_len] != LABEL_PAD_ID).all())
        assert bool((labels[i, tgt_len:] == LABEL_PAD_ID).all())
    assert ids.shape[1] == max(attn.sum(1)).item()
    assert labels.shape[1] == max((labels != LABEL_PAD_ID).sum(1)).item()


def test_tensor_inputs_and_determinism(tokenizer, ordinary_ids) -> None:
    collator = SpanCorruptionCollator(tokenizer)
    examples = [{"input_ids": random_tokens(ordinary_ids, 100)} for _ in range(4)]
    torch.manual_seed(0)
    a = collator(examples)
    torch.manual_seed(0)
    b = collator(examples)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_t5_accepts_batch(tokenizer, ordinary_ids) -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    model = T5ForConditionalGeneration(config).eval()
    collator = SpanCorruptionCollator(tokenizer)
    tokens_length, _ = collator.input_and_target_lengths(64)
    packed = collator([{"input_ids": random_tokens(ordinary_ids, tokens_length)} for _ in range(2)])
    ragged = collator([{"input_ids": random_tokens(ordinary_ids, n)} for n in (5, 40, 90)])
    for batch in (packed, ragged):
        with torch.no_grad():
            out = model(**batch)
        assert torch.isfinite(out.loss)


# --------------------------------------------------------------------------- #
# inference helpers
# --------------------------------------------------------------------------- #


def test_split_target_and_fill_for_generated_output(tokenizer) -> None:
    sids = sentinel_ids(tokenizer, 100)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    a, b, c, d, e = tokenizer.convert_tokens_to_ids(["t1", "t2", "t3", "t4", "t5"])
    generated = [pad, sids[0], a, b, sids[1], c, eos, pad, pad]
    spans = split_target_by_sentinel(torch.tensor(generated), sids, eos)
    assert spans == {0: [a, b], 1: [c]}
    corrupted = [d, sids[0], e, sids[1], sids[2], eos, pad]
    assert fill_sentinels(corrupted, spans, sids, eos, pad) == [d, a, b, e, c]
    assert fill_sentinels(corrupted, spans, sids, eos, pad, keep_unfilled=True) == [
        d,
        a,
        b,
        e,
        c,
        sids[2],
    ]


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("density", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_density_names_key(tokenizer, density: float) -> None:
    with pytest.raises(ValueError, match="mask_probability"):
        SpanCorruptionCollator(tokenizer, noise_density=density)
    with pytest.raises(ValueError, match="mask_probability"):
        random_spans_noise_mask(10, density, 3.0)
    with pytest.raises(ValueError, match="mask_probability"):
        compute_input_and_target_lengths(128, density, 3.0)


@pytest.mark.parametrize("mean", [0.0, 0.5, -1.0, float("nan"), float("inf")])
def test_bad_mean_span_names_key(tokenizer, mean: float) -> None:
    with pytest.raises(ValueError, match="mean_noise_span_length"):
        SpanCorruptionCollator(tokenizer, mean_noise_span_length=mean)
    with pytest.raises(ValueError, match="mean_noise_span_length"):
        random_spans_noise_mask(10, 0.15, mean)
    with pytest.raises(ValueError, match="mean_noise_span_length"):
        compute_input_and_target_lengths(128, 0.15, mean)


def test_missing_sentinels_raise_naming_token() -> None:
    with pytest.raises(ValueError, match="<extra_id_0>") as info:
        SpanCorruptionCollator(make_tokenizer(sentinels=[]))
    assert "\n" not in str(info.value)
    partial = make_tokenizer(sentinels=[s for s in SENTINELS if s != "<extra_id_57>"])
    with pytest.raises(ValueError, match="<extra_id_57>"):
        SpanCorruptionCollator(partial)
    SpanCorruptionCollator(partial, num_sentinels=57)  # enough sentinels: fine

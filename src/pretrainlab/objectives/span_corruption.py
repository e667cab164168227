"""T5 span corruption: the pretraining objective of the T5 paper (Raffel et al.).

A fraction ``noise_density`` of the tokens of a sequence is chosen as *noise*,
grouped into contiguous spans whose mean length is ``mean_noise_span_length``.
The encoder input keeps the non-noise tokens and replaces every noise span by
one sentinel (``<extra_id_0>``, ``<extra_id_1>``, ... in order of appearance),
then ``eos``; the decoder target lists, for every span, its sentinel followed
by the span's tokens, then ``eos``::

    tokens  : a b c d e f g h
    mask    : . . X X . . . X
    input   : a b <extra_id_0> e f g <extra_id_1> </s>
    target  : <extra_id_0> c d <extra_id_1> h </s>

Two noise layouts (``noise_layout``, config key ``objective.noise_layout``):

* ``"reference"`` (default): T5's ``random_spans_noise_mask`` (also HF's
  ``run_t5_mlm_flax.py``), so published T5 numbers compare like with like. It
  interleaves ``[non-noise, noise] * num_noise_spans``: the first token is never
  noise and the last one always is, so every input ends ``<extra_id_k> </s>``
  and every target starts ``<extra_id_0>``. For short (unpacked) documents that
  means the end of every document is corrupted and its start never is.
* ``"uniform"``: spans can start anywhere. The mask is drawn *uniformly among
  all masks with exactly the requested number of noise tokens and noise spans*:
  whether the sequence starts and/or ends with noise is itself random (so there
  are ``num_noise_spans - 1``, ``num_noise_spans`` or ``num_noise_spans + 1``
  non-noise spans), each case weighted by how many masks it contains.

See :func:`random_spans_noise_mask`. Other differences from the reference
implementations, all deliberate:

* **Sentinels are looked up by name** (``<extra_id_i>``), never assumed to sit at
  the end of the vocabulary, and the number of spans per sequence is capped at
  the number of sentinels (the reference silently runs into ordinary tokens).
* **Inputs and targets are built directly** from the span indices, so the
  ``i``-th sentinel of the input and of the target always denote the same span
  (the reference derives the target by corrupting the *inverted* mask, which
  only lines up because its masks always start with non-noise). Under the
  reference layout both give the same sequences.
* **Span counts are clamped** so that the spans always fit between the
  non-noise tokens (at most ``num_nonnoise`` spans for the reference layout,
  ``num_nonnoise + 1`` for uniform). This binds only for ``noise_density >=
  0.5``; the reference has no such clamp and its segmentation fails there.
* :func:`compute_input_and_target_lengths` uses exactly the same (clamped) noise
  counts as the mask, so a packed block of ``tokens_length`` raw tokens always
  corrupts to *exactly* ``inputs_length`` input tokens (for
  ``noise_density < 0.5``, under both layouts; see that function for the
  exceptions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

__all__ = [
    "LABEL_PAD_ID",
    "NOISE_LAYOUTS",
    "SpanCorruptionCollator",
    "compute_input_and_target_lengths",
    "fill_sentinels",
    "noise_span_counts",
    "random_spans_noise_mask",
    "reconstruct",
    "sentinel_ids",
    "split_target_by_sentinel",
]

#: Value of padded label positions; ignored by ``torch.nn.CrossEntropyLoss``
#: and therefore by ``T5ForConditionalGeneration``'s loss.
LABEL_PAD_ID = -100

SENTINEL_TEMPLATE = "<extra_id_{}>"

#: ``noise_layout`` values: T5's ``[non-noise, noise] * spans`` first (the default).
NOISE_LAYOUTS = ("reference", "uniform")

TokenIds = Sequence[int] | torch.Tensor


class _TokenizerLike(Protocol):
    """The slice of a ``PreTrainedTokenizerFast`` this module relies on."""

    pad_token_id: int | None
    eos_token_id: int | None

    def convert_tokens_to_ids(self, tokens: str) -> int | None: ...


# --------------------------------------------------------------------------- #
# validation and counting
# --------------------------------------------------------------------------- #


def _validate_settings(noise_density: float, mean_noise_span_length: float) -> None:
    """Reject settings for which the objective is undefined, naming the config key."""
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"mask_probability (noise_density) must be in (0, 1), got {noise_density!r}")
    if not (math.isfinite(mean_noise_span_length) and mean_noise_span_length >= 1.0):
        raise ValueError(
            f"mean_noise_span_length must be a finite number >= 1, got {mean_noise_span_length!r}"
        )


def _validate_layout(noise_layout: str) -> None:
    if noise_layout not in NOISE_LAYOUTS:
        raise ValueError(f"noise_layout={noise_layout!r}: must be one of {', '.join(NOISE_LAYOUTS)}")


def _validate_max_noise_spans(max_noise_spans: int | None) -> None:
    if max_noise_spans is not None and max_noise_spans < 1:
        raise ValueError(f"max_noise_spans must be >= 1, got {max_noise_spans!r}")


def noise_span_counts(
    length: int,
    noise_density: float,
    mean_noise_span_length: float,
    *,
    max_noise_spans: int | None = None,
    noise_layout: str = "reference",
) -> tuple[int, int]:
    """Return ``(num_noise_tokens, num_noise_spans)`` for a sequence of ``length``.

    Why a separate function: the mask sampler and the packing arithmetic of
    :func:`compute_input_and_target_lengths` must agree *exactly*, otherwise
    packed blocks do not corrupt to the promised input length. Both call this.

    The counts follow T5 (Python's ``round``, i.e. round-half-to-even like
    ``np.round``/``tf.round``):

    * ``num_noise_tokens = round(length * noise_density)`` clamped to
      ``[1, length - 1]`` so that there is always noise and non-noise;
    * ``num_noise_spans = round(num_noise_tokens / mean_noise_span_length)``
      clamped to ``>= 1``;
    * additionally clamped so that the non-noise tokens can separate the spans:
      ``<= num_nonnoise_tokens`` for the ``"reference"`` layout (one non-noise
      run before each span), ``<= num_nonnoise_tokens + 1`` for ``"uniform"``
      (both ends may be noise). This binds only when ``noise_density >= 0.5``
      (T5 has no such clamp: its segmentation fails there);
    * and to ``<= max_noise_spans`` (the number of sentinels; the noise tokens
      are then spread over fewer, longer spans).

    Sequences shorter than 2 tokens cannot hold both noise and non-noise and get
    ``(0, 0)``: they are left uncorrupted.
    """
    _validate_settings(noise_density, mean_noise_span_length)
    _validate_max_noise_spans(max_noise_spans)
    _validate_layout(noise_layout)
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length!r}")
    if length < 2:
        return 0, 0
    num_noise_tokens = min(max(round(length * noise_density), 1), length - 1)
    num_nonnoise_tokens = length - num_noise_tokens
    num_noise_spans = max(round(num_noise_tokens / mean_noise_span_length), 1)
    num_noise_spans = min(num_noise_spans, num_nonnoise_tokens + (noise_layout == "uniform"))
    if max_noise_spans is not None:
        num_noise_spans = min(num_noise_spans, max_noise_spans)
    return num_noise_tokens, num_noise_spans


def _corrupted_lengths(
    tokens_length: int,
    noise_density: float,
    mean_noise_span_length: float,
    max_noise_spans: int | None,
    noise_layout: str,
) -> tuple[int, int]:
    """(input length, target length) after corrupting ``tokens_length`` tokens."""
    num_noise, num_spans = noise_span_counts(
        tokens_length,
        noise_density,
        mean_noise_span_length,
        max_noise_spans=max_noise_spans,
        noise_layout=noise_layout,
    )
    # inputs: non-noise tokens + one sentinel per span + eos
    # targets: noise tokens + one sentinel per span + eos
    return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1


def compute_input_and_target_lengths(
    inputs_length: int,
    noise_density: float,
    mean_noise_span_length: float,
    *,
    max_noise_spans: int | None = None,
    noise_layout: str = "reference",
) -> tuple[int, int]:
    """Return ``(tokens_length, targets_length)`` for a desired encoder length.

    Why: span corruption shrinks a sequence (each noise span collapses into one
    sentinel) and appends ``eos``. To feed the encoder full, unpadded blocks of
    ``inputs_length`` tokens, the data pipeline must pack *raw* blocks of
    ``tokens_length`` tokens. This is the arithmetic of T5's
    ``random_spans_helper`` / HF ``run_t5_mlm_flax.py``: the largest raw length
    whose corrupted input (``eos`` included) fits in ``inputs_length``.
    ``targets_length`` is the (fixed) decoder length of such a block.

    Guarantees: for ``noise_density < 0.5`` the span clamp of
    :func:`noise_span_counts` never binds, both layouts give the same lengths,
    and the corrupted input length grows by 0 or 1 per extra raw token, so the
    returned ``tokens_length`` corrupts to **exactly** ``inputs_length`` tokens
    (with ``"uniform"`` also at ``noise_density == 0.5``). Above that the clamp
    (at most ``num_nonnoise`` spans for ``"reference"``, ``num_nonnoise + 1``
    for ``"uniform"``) can make it jump by 2; when no raw length hits
    ``inputs_length`` exactly, the largest one that stays below is returned (as
    in T5) and the collator pads by one token.

    Pass ``max_noise_spans`` (the collator's ``num_sentinels``) if the span cap
    can bind, and the collator's ``noise_layout``
    (``SpanCorruptionCollator.input_and_target_lengths`` does both).

    Deliberately *not* reproduced: T5's "``noise_density == 0.5``" hack that
    shortens the block by one token to make targets no longer than inputs; it
    would break the exact-input-length guarantee.
    """
    _validate_settings(noise_density, mean_noise_span_length)
    _validate_max_noise_spans(max_noise_spans)
    _validate_layout(noise_layout)
    if inputs_length < 1:
        raise ValueError(f"inputs_length must be >= 1, got {inputs_length!r}")

    def input_len(n: int) -> int:
        return _corrupted_lengths(n, noise_density, mean_noise_span_length, max_noise_spans, noise_layout)[0]

    # input_len(inputs_length - 1) <= inputs_length always (spans <= noise
    # tokens since mean_noise_span_length >= 1), and input_len is non-decreasing.
    tokens_length = inputs_length - 1
    while input_len(tokens_length + 1) <= inputs_length:
        tokens_length += 1
    targets_length = _corrupted_lengths(
        tokens_length, noise_density, mean_noise_span_length, max_noise_spans, noise_layout
    )[1]
    return tokens_length, targets_length


# --------------------------------------------------------------------------- #
# noise mask
# --------------------------------------------------------------------------- #


def _random_segmentation(
    num_items: int, num_segments: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Split ``num_items`` into ``num_segments`` positive parts, uniformly at random.

    Choosing ``num_segments - 1`` distinct cut points among the ``num_items - 1``
    gaps is a bijection with the compositions of ``num_items``, so every
    composition is equally likely (the same distribution as T5's
    ``_random_segmentation``, which shuffles ``num_segments - 1`` "segment
    starts" among the same ``num_items - 1`` gaps).
    """
    if num_segments == 0:
        return torch.zeros(0, dtype=torch.long)
    cuts = torch.randperm(num_items - 1, generator=generator)[: num_segments - 1] + 1
    bounds = torch.cat(
        [
            torch.zeros(1, dtype=torch.long),
            torch.sort(cuts).values,
            torch.full((1,), num_items, dtype=torch.long),
        ]
    )
    return bounds[1:] - bounds[:-1]


def random_spans_noise_mask(
    length: int,
    noise_density: float,
    mean_noise_span_length: float,
    generator: torch.Generator | None = None,
    *,
    max_noise_spans: int | None = None,
    noise_layout: str = "reference",
) -> torch.Tensor:
    """Sample a boolean noise mask (``True`` = noise) of shape ``(length,)``.

    Exactly ``num_noise_tokens`` noise tokens form exactly ``num_noise_spans``
    runs (counts from :func:`noise_span_counts`, for both layouts).

    ``noise_layout="reference"`` is T5's sampler (``random_spans_noise_mask`` in
    ``t5/data/preprocessors.py``, copied by HF's ``run_t5_mlm_flax.py``), so
    that results compare with published T5 numbers: noise and non-noise tokens
    are each split into ``num_noise_spans`` positive runs uniformly at random
    and laid out ``[non-noise, noise, non-noise, noise, ..., noise]``. The first
    token is never corrupted and the last one always is, and all such masks are
    equally likely.

    ``noise_layout="uniform"`` removes that positional bias (strong for short,
    unpacked documents): the mask is drawn **uniformly among all masks** with
    those counts:

    1. pick whether the sequence starts with noise and whether it ends with
       noise. That fixes the number of non-noise runs ``k`` (``spans - 1`` if it
       starts and ends with noise, ``spans`` if exactly one end is noise,
       ``spans + 1`` if neither). Each of the 4 cases holds
       ``C(noise - 1, spans - 1) * C(nonnoise - 1, k - 1)`` masks, so it is
       drawn with probability proportional to ``C(nonnoise - 1, k - 1)``;
    2. split noise and non-noise tokens into ``spans`` resp. ``k`` positive runs
       uniformly (as T5's ``_random_segmentation``) and interleave them.

    Consequently the mask is reversal-symmetric and any position, including
    position 0, can start a span; the first (and last) position is noise with
    probability ``spans / (nonnoise + 1)`` (the span-start rate: a boundary
    token is noise only if a span starts/ends exactly there).

    Randomness comes from ``torch`` (``randperm``/``multinomial``) with
    ``generator``;
    with ``None`` the global torch RNG is used, so ``torch.manual_seed`` /
    ``lightning.seed_everything`` make it reproducible.
    """
    num_noise, num_spans = noise_span_counts(
        length,
        noise_density,
        mean_noise_span_length,
        max_noise_spans=max_noise_spans,
        noise_layout=noise_layout,
    )
    if num_noise == 0:
        return torch.zeros(length, dtype=torch.bool)
    num_nonnoise = length - num_noise

    if noise_layout == "reference":
        starts_noise, ends_noise = False, True
    else:
        starts_noise, ends_noise = _draw_uniform_ends(num_nonnoise, num_spans, generator)
    num_nonnoise_runs = num_spans - 1 + (not starts_noise) + (not ends_noise)
    noise_runs = _random_segmentation(num_noise, num_spans, generator)
    nonnoise_runs = _random_segmentation(num_nonnoise, num_nonnoise_runs, generator)

    # Interleave: [noise] nonnoise noise nonnoise ... [nonnoise]; noise runs sit
    # at even run positions if the sequence starts with noise, else at odd ones.
    num_runs = num_spans + num_nonnoise_runs
    first_noise_run = 0 if starts_noise else 1
    run_lengths = torch.empty(num_runs, dtype=torch.long)
    run_lengths[first_noise_run::2] = noise_runs
    run_lengths[1 - first_noise_run :: 2] = nonnoise_runs
    run_is_noise = torch.arange(num_runs) % 2 == first_noise_run
    # Expand runs to tokens: run id of token i = number of run starts <= i.
    # (Equivalent to ``repeat_interleave``, which is orders of magnitude slower
    # on CPU for these small sizes.)
    run_starts = torch.zeros(length, dtype=torch.long)
    run_starts[torch.cumsum(run_lengths, 0)[:-1]] = 1
    return run_is_noise[torch.cumsum(run_starts, 0)]


def _draw_uniform_ends(
    num_nonnoise: int, num_spans: int, generator: torch.Generator | None
) -> tuple[bool, bool]:
    """(starts with noise, ends with noise) of a mask drawn uniformly (step 1 above)."""
    # Relative weights C(N-1, k-1) / C(N-1, s-1) of the four layouts
    # (starts_with_noise, ends_with_noise), with N non-noise tokens, s spans.
    if num_spans == num_nonnoise + 1:
        # only noise-at-both-ends fits (s - 1 = N separating runs of 1 token)
        weights = [1.0, 0.0, 0.0, 0.0]
    else:  # 1 <= s <= N, so C(N-1, s-1) > 0
        both = (num_spans - 1) / (num_nonnoise - num_spans + 1)  # k = s - 1
        neither = (num_nonnoise - num_spans) / num_spans  # k = s + 1
        weights = [both, 1.0, 1.0, neither]  # (T,T), (T,F), (F,T), (F,F)
    layouts = [(True, True), (True, False), (False, True), (False, False)]
    choice = torch.multinomial(torch.tensor(weights, dtype=torch.float64), 1, generator=generator)
    return layouts[int(choice)]


# --------------------------------------------------------------------------- #
# sentinels and corruption of a single sequence
# --------------------------------------------------------------------------- #


def sentinel_ids(tokenizer: _TokenizerLike, n: int) -> list[int]:
    """Ids of ``<extra_id_0>`` ... ``<extra_id_{n-1}>``, looked up by name.

    Why by name: tokenizers differ in where (and whether) they put sentinels;
    assuming "the last 100 ids" silently corrupts with ordinary tokens when the
    assumption is wrong. A token the tokenizer does not know (it maps to the
    unknown-token id or ``None``) raises a one-line ``ValueError`` naming it.
    """
    if n < 1:
        raise ValueError(f"num_sentinels must be >= 1, got {n!r}")
    unk_id = getattr(tokenizer, "unk_token_id", None)
    ids: list[int] = []
    for i in range(n):
        name = SENTINEL_TEMPLATE.format(i)
        token_id = tokenizer.convert_tokens_to_ids(name)
        if token_id is None or (unk_id is not None and token_id == unk_id):
            raise ValueError(
                f"tokenizer has no sentinel token {name!r} "
                f"(span corruption needs <extra_id_0>..<extra_id_{n - 1}>)"
            )
        ids.append(int(token_id))
    if len(set(ids)) != n:
        raise ValueError("tokenizer maps several <extra_id_i> sentinels to one id")
    return ids


def _corrupt(
    tokens: torch.Tensor,
    mask: torch.Tensor,
    sentinels: torch.Tensor,
    eos_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build ``(input_ids, target_ids)`` of one sequence from its noise mask."""
    previous = torch.zeros_like(mask)
    previous[1:] = mask[:-1]
    span_start = mask & ~previous
    span_index = torch.cumsum(span_start.long(), 0) - 1  # valid where mask
    num_spans = int(span_start.sum())
    if num_spans > sentinels.numel():  # never happens with the capped sampler
        raise ValueError(f"{num_spans} noise spans but only {sentinels.numel()} sentinels")
    eos = torch.full((1,), eos_id, dtype=torch.long)

    # input: non-noise tokens, the first token of each span -> its sentinel
    keep = ~mask | span_start
    with_sentinels = torch.where(span_start, sentinels[span_index.clamp(min=0)], tokens)
    input_ids = torch.cat([with_sentinels[keep], eos])

    # target: sentinel_q span_q tokens ... eos. The j-th noise token (in order)
    # belonging to span q lands at j + q + 1; the sentinel of span q right before
    # the span's first token.
    noise_tokens = tokens[mask]
    noise_span = span_index[mask]
    noise_is_start = span_start[mask]
    j = torch.arange(noise_tokens.numel())
    target_ids = torch.empty(noise_tokens.numel() + num_spans + 1, dtype=torch.long)
    target_ids[j + noise_span + 1] = noise_tokens
    target_ids[(j + noise_span)[noise_is_start]] = sentinels[noise_span[noise_is_start]]
    target_ids[-1] = eos_id
    return input_ids, target_ids


def _as_1d_long(ids: Any, name: str = "input_ids") -> torch.Tensor:
    t = torch.as_tensor(ids, dtype=torch.long)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t


def _pad_right(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    width = max((r.numel() for r in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r
    return out


# --------------------------------------------------------------------------- #
# collator
# --------------------------------------------------------------------------- #


@dataclass
class SpanCorruptionCollator:
    """Batch collator turning raw token blocks into T5 span-corruption batches.

    Why a collator (not a dataset transform): the noise mask is resampled every
    time a block is seen, so each epoch corrupts different spans.

    Each example is a mapping with ``input_ids`` (``list[int]`` or 1-D tensor,
    without padding). Packed examples all have the ``tokens_length`` from
    :meth:`input_and_target_lengths` and come out as unpadded inputs of exactly
    ``inputs_length``; single documents of any length (unpacked mode) are also
    accepted and padded. Returns ``input_ids`` and ``attention_mask`` of shape
    ``(B, L_in)`` (right-padded with ``pad_token_id`` / 0) and ``labels`` of shape
    ``(B, L_tgt)`` right-padded with -100; ``T5ForConditionalGeneration`` derives
    ``decoder_input_ids`` from ``labels`` itself.

    A sequence never gets more noise spans than ``num_sentinels``: the span
    count is capped and the same number of noise tokens is spread over fewer,
    longer spans (so ``mean_noise_span_length`` is exceeded for such very long
    sequences; 100 sentinels suffice up to ~2000 raw tokens at 0.15 / 3.0).

    ``noise_layout`` is ``"reference"`` (T5's masks: every input ends
    ``<extra_id_k> </s>``) or ``"uniform"`` (spans may start anywhere); see
    :func:`random_spans_noise_mask`.

    ``generator`` (optional) makes masks reproducible independently of the
    global torch RNG; by default the global RNG is used.
    """

    tokenizer: _TokenizerLike
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    num_sentinels: int = 100
    generator: torch.Generator | None = None
    noise_layout: str = "reference"
    _sentinels: torch.Tensor = field(init=False, repr=False)
    _pad_id: int = field(init=False, repr=False)
    _eos_id: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _validate_settings(self.noise_density, self.mean_noise_span_length)
        _validate_layout(self.noise_layout)
        if self.num_sentinels < 1:
            raise ValueError(f"num_sentinels must be >= 1, got {self.num_sentinels!r}")
        pad_id = self.tokenizer.pad_token_id
        eos_id = self.tokenizer.eos_token_id
        if pad_id is None:
            raise ValueError("tokenizer has no pad_token_id (needed to pad input_ids)")
        if eos_id is None:
            raise ValueError("tokenizer has no eos_token_id (appended to inputs/targets)")
        self._pad_id = int(pad_id)
        self._eos_id = int(eos_id)
        self._sentinels = torch.tensor(sentinel_ids(self.tokenizer, self.num_sentinels), dtype=torch.long)

    @property
    def sentinel_ids(self) -> list[int]:
        """Sentinel ids in span order (``<extra_id_0>`` first)."""
        return self._sentinels.tolist()

    def input_and_target_lengths(self, inputs_length: int) -> tuple[int, int]:
        """``compute_input_and_target_lengths`` with this collator's settings.

        Why: it also applies the ``num_sentinels`` span cap and the layout's
        span clamp, so the packing length is consistent with what
        :meth:`__call__` produces.
        """
        return compute_input_and_target_lengths(
            inputs_length,
            self.noise_density,
            self.mean_noise_span_length,
            max_noise_spans=self.num_sentinels,
            noise_layout=self.noise_layout,
        )

    def corrupt(self, input_ids: TokenIds) -> tuple[torch.Tensor, torch.Tensor]:
        """Corrupt one sequence: return unpadded ``(input_ids, target_ids)``.

        Why public: handy for inspection and for building eval sets offline.
        """
        tokens = _as_1d_long(input_ids)
        mask = random_spans_noise_mask(
            tokens.numel(),
            self.noise_density,
            self.mean_noise_span_length,
            self.generator,
            max_noise_spans=self.num_sentinels,
            noise_layout=self.noise_layout,
        )
        return _corrupt(tokens, mask, self._sentinels, self._eos_id)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Corrupt every example and pad into a batch (see class docstring)."""
        inputs: list[torch.Tensor] = []
        targets: list[torch.Tensor] = []
        for example in examples:
            input_ids, target_ids = self.corrupt(example["input_ids"])
            inputs.append(input_ids)
            targets.append(target_ids)
        input_batch = _pad_right(inputs, self._pad_id)
        lengths = torch.tensor([r.numel() for r in inputs], dtype=torch.long)
        attention_mask = (torch.arange(input_batch.shape[1])[None, :] < lengths[:, None]).long()
        return {
            "input_ids": input_batch,
            "attention_mask": attention_mask,
            "labels": _pad_right(targets, LABEL_PAD_ID),
        }


# --------------------------------------------------------------------------- #
# undoing the corruption
# --------------------------------------------------------------------------- #


def _to_list(ids: TokenIds) -> list[int]:
    if isinstance(ids, torch.Tensor):
        return [int(x) for x in ids.reshape(-1).tolist()]
    return [int(x) for x in ids]


def _strip_trailing(ids: list[int], drop: set[int]) -> list[int]:
    end = len(ids)
    while end > 0 and ids[end - 1] in drop:
        end -= 1
    return ids[:end]


def _split_spans(ids: list[int], sentinel_to_index: dict[int, int]) -> dict[int, list[int]]:
    """Group tokens after each sentinel; tokens before the first one are dropped."""
    spans: dict[int, list[int]] = {}
    current: list[int] | None = None
    for token in ids:
        index = sentinel_to_index.get(token)
        if index is not None:
            if index in spans:  # repeated sentinel: first occurrence wins
                current = None
            else:
                current = spans[index] = []
        elif current is not None:
            current.append(token)
    return spans


def split_target_by_sentinel(
    target_ids: TokenIds,
    sentinel_ids: Sequence[int],
    eos_id: int,
) -> dict[int, list[int]]:
    """Map sentinel index -> span tokens of a (generated or label) target.

    Why: inference generates ``<extra_id_0> span <extra_id_1> span ... </s>``;
    this parses it so each span can be put back in place of its sentinel
    (:func:`fill_sentinels`). Made tolerant of generated output: reading stops
    at the first ``eos``; -100 label padding is ignored; tokens before the first
    sentinel (e.g. the decoder start token) are dropped; if a sentinel repeats,
    its first occurrence wins; sentinels absent from the target are absent
    from the result.

    Note: stopping at the first ``eos`` is ambiguous if a span itself contains
    ``eos`` (packed blocks whose documents are ``eos``-separated);
    :func:`reconstruct` handles that case by dropping only the final ``eos``.
    """
    ids = [t for t in _to_list(target_ids) if t != LABEL_PAD_ID]
    if eos_id in ids:
        ids = ids[: ids.index(eos_id)]
    return _split_spans(ids, {s: i for i, s in enumerate(sentinel_ids)})


def fill_sentinels(
    input_ids: TokenIds,
    spans: Mapping[int, Sequence[int]],
    sentinel_ids: Sequence[int],
    eos_id: int,
    pad_id: int,
    *,
    keep_unfilled: bool = False,
) -> list[int]:
    """Replace each sentinel of a corrupted input by its span's tokens.

    Why: the inverse step of corruption, for inference ("fill in the blanks"
    with predicted spans from :func:`split_target_by_sentinel`) and for tests.
    Trailing padding (``pad_id``) and the final ``eos`` appended by the
    collator are removed; ``eos`` tokens inside the sequence are kept. A
    sentinel without a span in ``spans`` is dropped, or kept as is with
    ``keep_unfilled=True``.
    """
    ids = _strip_trailing(_to_list(input_ids), {pad_id, LABEL_PAD_ID})
    if ids and ids[-1] == eos_id:
        ids = ids[:-1]
    sentinel_to_index = {s: i for i, s in enumerate(sentinel_ids)}
    out: list[int] = []
    for token in ids:
        index = sentinel_to_index.get(token)
        if index is None:
            out.append(token)
        elif index in spans:
            out.extend(int(t) for t in spans[index])
        elif keep_unfilled:
            out.append(token)
    return out


def reconstruct(
    input_ids: TokenIds,
    labels: TokenIds,
    sentinel_ids: Sequence[int],
    eos_id: int,
    pad_id: int,
) -> list[int]:
    """Merge a corrupted input and its target back into the original tokens.

    Why: the exact inverse of the collator, used to test it (``input`` and
    ``target`` together must carry every original token exactly once, in
    order) and as a reference for inference. Accepts padded rows straight from
    a batch (``pad_id`` / -100 padding after the final ``eos``). Only the final
    ``eos`` of each row is treated as the terminator, so ``eos`` tokens inside
    packed blocks survive. Original tokens that *are* sentinel ids cannot be
    told apart from sentinels and are not supported.
    """
    target = _strip_trailing(_to_list(labels), {LABEL_PAD_ID, pad_id})
    if target and target[-1] == eos_id:
        target = target[:-1]
    spans = _split_spans(target, {s: i for i, s in enumerate(sentinel_ids)})
    return fill_sentinels(input_ids, spans, sentinel_ids, eos_id, pad_id)

"""Paired bootstrap of the difference between two row groups of a sweep, on per-item scores.

Why paired: every run of a study scores the same held-out items, and items differ far more in
difficulty than objectives do. Comparing two rows item by item (resampling the *same* items
for both) removes that shared noise, so a difference the means alone cannot separate from the
seed spread may still be real, and one that looks large may not be. Why also over seeds: a
second training seed moves the scores of every item; with 3 or more seeds per row, the seed
runs are resampled too, so the interval covers training-seed noise, not only item noise.

Pure numpy, vectorised, seeded: the same inputs and seed give the same interval. Nothing here
knows about sweep folders; the rows hand over each run's :class:`ItemScores`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from pretrainlab.evaluation.items import ItemScores

SAMPLES = 2000
CONFIDENCE = 0.95
# Fewer common items than this: no test (an interval from a handful of items means little).
MIN_ITEMS = 10
# Both groups need this many seed runs before the seed runs are resampled too.
MIN_SEED_RUNS = 3
# Resampled item counts are built this many cells at a time (32 MiB of float64).
_CHUNK_CELLS = 1 << 22

Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class PairedResult:
    """value(A) − value(B) on the items both scored, with its percentile bootstrap interval."""

    diff: float
    low: float
    high: float
    n_items: int
    seeds_a: int
    seeds_b: int
    resampled: str  # "items", or "items+seeds" when both groups had MIN_SEED_RUNS runs

    @property
    def significant(self) -> bool:
        """The interval excludes 0: the sign of the difference is not item (or seed) noise."""
        return self.low > 0 or self.high < 0

    def flipped(self) -> PairedResult:
        """The same test read as B − A (the percentile interval mirrors exactly)."""
        return PairedResult(
            -self.diff, -self.high, -self.low, self.n_items, self.seeds_b, self.seeds_a, self.resampled
        )


def common_ids(runs: Iterable[ItemScores]) -> list[str]:
    """The ids every run scored, sorted: the order of a run's file never changes a result."""
    shared: set[str] | None = None
    for run in runs:
        shared = set(run.ids) if shared is None else shared & set(run.ids)
    return sorted(shared or ())


def paired_bootstrap(
    a: Sequence[ItemScores],
    b: Sequence[ItemScores],
    *,
    samples: int = SAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    min_items: int = MIN_ITEMS,
    min_seed_runs: int = MIN_SEED_RUNS,
) -> PairedResult | None:
    """Test value(A) − value(B) for one metric; None when the groups share too few items.

    ``a`` and ``b`` hold one :class:`ItemScores` per training-seed run. A group's value is the
    mean over its runs of each run's ``sum(scores) / sum(weights)`` on the items every run of
    both groups scored (a mean for accuracies, a ratio for bits per character).
    """
    return bootstrap_pairs(
        {"a": a, "b": b},
        [("a", "b")],
        samples=samples,
        seed=seed,
        confidence=confidence,
        min_items=min_items,
        min_seed_runs=min_seed_runs,
    )[("a", "b")]


def bootstrap_pairs(
    groups: Mapping[Key, Sequence[ItemScores]],
    pairs: Iterable[tuple[Key, Key]],
    *,
    samples: int = SAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    min_items: int = MIN_ITEMS,
    min_seed_runs: int = MIN_SEED_RUNS,
) -> dict[tuple[Key, Key], PairedResult | None]:
    """:func:`paired_bootstrap` for many pairs of groups at once, each result the same as alone.

    A report tests every pair of rows for every metric; pairs sharing the same common items
    (the usual case: one evaluation set) share one resampling of the items, so the cost is one
    matrix product per metric instead of one per pair.
    """
    results: dict[tuple[Key, Key], PairedResult | None] = {}
    by_items: dict[tuple[str, ...], list[tuple[Key, Key]]] = {}
    for a, b in pairs:
        runs = [*groups[a], *groups[b]]
        common = tuple(common_ids(runs)) if groups[a] and groups[b] else ()
        if len(common) < min_items:
            results[(a, b)] = None
        else:
            by_items.setdefault(common, []).append((a, b))
    for common, members in by_items.items():
        keys = list(dict.fromkeys(k for pair in members for k in pair))
        slices, runs, start = {}, [], 0
        for key in keys:
            slices[key] = slice(start, start + len(groups[key]))
            runs.extend(groups[key])
            start += len(groups[key])
        scores, weights = _aligned(runs, list(common))
        with np.errstate(divide="ignore", invalid="ignore"):
            point = scores.sum(axis=1) / weights.sum(axis=1)
        replicates = _resample_items(scores, weights, samples, np.random.default_rng(seed))
        for a, b in members:
            results[(a, b)] = _interval(
                point, replicates, slices[a], slices[b], len(common), seed, confidence, min_seed_runs
            )
    return results


def _aligned(runs: Sequence[ItemScores], common: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(scores, weights), one line per run, one column per common id.

    An id a run holds twice (the same text drawn twice) is one item with the summed score and
    weight, which keeps the run's value ``sum(scores) / sum(weights)`` exactly.
    """
    index = {item: position for position, item in enumerate(common)}
    n = len(common)
    scores, weights = np.zeros((len(runs), n)), np.zeros((len(runs), n))
    for line, run in enumerate(runs):
        positions = np.array([index.get(item, -1) for item in run.ids], dtype=np.int64)
        keep = positions >= 0
        values = np.asarray(run.scores, dtype=float)[keep]
        run_weights = np.ones(len(run.ids)) if run.weights is None else np.asarray(run.weights, dtype=float)
        scores[line] = np.bincount(positions[keep], weights=values, minlength=n)
        weights[line] = np.bincount(positions[keep], weights=run_weights[keep], minlength=n)
    return scores, weights


def _resample_items(
    scores: np.ndarray, weights: np.ndarray, samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Each run's value on ``samples`` resamplings of the items, the same draw for every run.

    A resampling is a count per item (how often it was drawn), so all runs' values come from
    one product ``counts @ scores.T`` (and the same for weights). Shape (samples, runs).
    """
    n = scores.shape[1]
    out = np.empty((samples, scores.shape[0]))
    step = max(1, _CHUNK_CELLS // n)
    for start in range(0, samples, step):
        rows = min(step, samples - start)
        draws = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
        counts = np.bincount(draws.ravel(), minlength=rows * n).reshape(rows, n).astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[start : start + rows] = (counts @ scores.T) / (counts @ weights.T)
    return out


def _interval(
    point: np.ndarray,
    replicates: np.ndarray,
    a: slice,
    b: slice,
    n_items: int,
    seed: int,
    confidence: float,
    min_seed_runs: int,
) -> PairedResult | None:
    """The percentile interval of one pair from the shared item resampling."""
    runs_a, runs_b = a.stop - a.start, b.stop - b.start
    values_a, values_b = replicates[:, a], replicates[:, b]
    if runs_a >= min_seed_runs and runs_b >= min_seed_runs:
        # Every replicate also draws each group's seed runs with replacement.
        rng = np.random.default_rng([seed, runs_a, runs_b])
        pick_a = rng.integers(0, runs_a, size=values_a.shape)
        pick_b = rng.integers(0, runs_b, size=values_b.shape)
        values_a = np.take_along_axis(values_a, pick_a, axis=1)
        values_b = np.take_along_axis(values_b, pick_b, axis=1)
        resampled = "items+seeds"
    else:
        resampled = "items"
    diffs = values_a.mean(axis=1) - values_b.mean(axis=1)
    diffs = diffs[np.isfinite(diffs)]  # a draw of weightless items only has no value
    if not diffs.size:
        return None
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(diffs, [tail, 100 - tail])
    diff = float(point[a].mean() - point[b].mean())
    return PairedResult(diff, float(low), float(high), n_items, runs_a, runs_b, resampled)

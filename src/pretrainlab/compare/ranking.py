"""Which row of a column is best, and which rows are tied with it.

Two rows are "different" only when the evidence says so: by a paired bootstrap over the items
both scored (and over seeds) when their runs kept per-item scores, else when their
[mean − std, mean + std] seed ranges do not overlap. Baseline rows (no pretraining) are
never a column's best: they answer "does pretraining help", not "which objective wins". A
column is marked only where some row is clearly behind the best: where every row ties with it
(all values equal, e.g. an all-zero cloze score), bold would claim a winner there is not.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from pretrainlab.compare.collect import FIXED, Row, decoding_dependent, trained_model
from pretrainlab.compare.statistics import bootstrap_pairs, common_ids

# A key containing one of these is better when lower / higher; any other key is not marked.
LOWER_IS_BETTER = ("loss", "ppl", "bpc", "repetition", "wall_time")
HIGHER_IS_BETTER = ("distinct", "accuracy", "exact_match", "f1", "tokens_per_s")


def direction(key: str) -> str | None:
    """``"min"``, ``"max"`` or None (neutral: never marked) for a column name.

    A spread (``*_std``) or an evaluation stage's time (``eval/*``) is never a "best".
    """
    lowered = key.lower()
    if lowered.endswith("_std") or lowered.startswith("eval/"):
        return None
    if any(word in lowered for word in LOWER_IS_BETTER):
        return "min"
    if any(word in lowered for word in HIGHER_IS_BETTER):
        return "max"
    return None


def ranges_overlap(a_mean: float, a_std: float | None, b_mean: float, b_std: float | None) -> bool:
    """Whether [mean − std, mean + std] of a and b share a point: then neither is clearly better.

    A missing std (a single run) counts as 0; touching ranges overlap.
    """
    a_std = abs(a_std) if a_std is not None and not math.isnan(a_std) else 0.0
    b_std = abs(b_std) if b_std is not None and not math.isnan(b_std) else 0.0
    return a_mean - a_std <= b_mean + b_std and b_mean - b_std <= a_mean + a_std


def pair_tests(groups: Sequence[Row], metrics: Sequence[str], labels: Sequence[str]) -> list[dict[str, Any]]:
    """The paired bootstrap of every pair of finished rows, per metric whose runs kept items.

    One record per pair (row positions ``a_row`` < ``b_row``, ``diff`` = a − b): what
    significance.csv holds, and what ``best_of`` reads.

    A row takes part when every one of its runs has the metric's item scores; rows of runs
    written before eval_items.jsonl existed are left to the seed-range rule. Two rows of the
    same trained models (one model under two decodings) are not tested on a metric the
    decoding does not change: their values are the same numbers, tied by the seed-range rule.
    """
    records: list[dict[str, Any]] = []
    models = [frozenset(trained_model(str(m["dir"])) for m in group["members"]) for group in groups]
    for metric in metrics:
        runs = {
            position: [m["items"][metric] for m in group["members"]]
            for position, group in enumerate(groups)
            if group["status"] == "ok" and all(metric in m.get("items", {}) for m in group["members"])
        }
        pairs = [
            (a, b)
            for a, b in itertools.combinations(sorted(runs), 2)
            if decoding_dependent(metric) or models[a] != models[b]
        ]
        for (a, b), result in bootstrap_pairs(runs, pairs).items():
            record = {
                "metric": metric, "a": labels[a], "b": labels[b], "a_row": a, "b_row": b,
                "diff": math.nan, "low": math.nan, "high": math.nan, "n_items": 0,
                "seeds_a": len(runs[a]), "seeds_b": len(runs[b]), "resampled": "none", "significant": None,
            }  # fmt: skip
            if result is None:
                record["n_items"] = len(common_ids([*runs[a], *runs[b]]))
            else:
                record.update(
                    diff=result.diff, low=result.low, high=result.high, n_items=result.n_items,
                    resampled=result.resampled, significant=result.significant,
                )  # fmt: skip
            records.append(record)
    return records


@dataclass
class Best:
    """A column's best row, the rows tied with it, whether a paired test decided any tie, and
    every candidate row (trained, with a value)."""

    row: int
    marked: set[int]
    paired: bool
    candidates: set[int] = field(default_factory=set)

    @property
    def real(self) -> bool:
        """Whether some candidate is clearly behind the best: only then is the best worth a mark."""
        return bool(self.candidates - self.marked)


def best_of(df: pd.DataFrame, column: str) -> Best | None:
    """The best row of a column among the trained rows, and the rows tied with it.

    Tied: for a pair of rows with a paired test, its interval includes 0; for any other pair,
    their seed ranges overlap. Baseline rows are never candidates.
    """
    goal = direction(column)
    if goal is None or column not in df:
        return None
    means = pd.to_numeric(df[column], errors="coerce").astype(float)
    spread = df.attrs.get("std_columns", {}).get(column, f"{column}_std")
    stds = df[spread].astype(float) if spread in df else pd.Series(0.0, index=df.index)
    baselines = set(df.attrs.get("baseline_rows", ()))
    candidates = [
        (i, m, s)
        for i, (m, s) in enumerate(zip(means, stds, strict=True))
        if not math.isnan(m) and i not in baselines
    ]
    if len(candidates) < 2:
        return None
    pick = min if goal == "min" else max
    best, best_mean, best_std = pick(candidates, key=lambda c: c[1])
    tests = {
        frozenset((r["a_row"], r["b_row"])): r["significant"]
        for r in df.attrs.get("significance", ())
        if r["metric"] == column and r["significant"] is not None
    }
    marked, paired = {best}, False
    for i, mean, std in candidates:
        significant = tests.get(frozenset((i, best)))
        if i == best:
            continue
        if significant is not None:
            paired = True
            tied = not significant
        else:
            tied = ranges_overlap(mean, std, best_mean, best_std)
        if tied:
            marked.add(i)
    return Best(best, marked, paired, {i for i, _, _ in candidates})


def best_rows(df: pd.DataFrame) -> dict[str, set[int]]:
    """Row positions to mark per column: the best and every row tied with it, in the columns
    where the difference is real (not every row tied with the best)."""
    marks: dict[str, set[int]] = {}
    for column in [*FIXED, *df.attrs.get("metrics", [])]:
        best = best_of(df, column)
        if best is not None and best.real:
            marks[column] = best.marked
    return marks


def paired_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns whose marks a paired test decided (the notes under the table say so)."""
    return [c for c in df.attrs.get("metrics", []) if (b := best_of(df, c)) is not None and b.paired]

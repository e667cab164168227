"""What the paired tests say, written out: significance.csv (every pair of rows, per metric)
and the report's ``## Significance`` section (each row against the best, each trained row
against its no-pretraining baseline), so a reader sees which differences are real."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from pretrainlab.compare.formatting import format_value, md_escape
from pretrainlab.compare.ranking import best_of, direction
from pretrainlab.compare.statistics import MIN_ITEMS, MIN_SEED_RUNS, SAMPLES

SIGNIFICANCE_CSV = "significance.csv"
COLUMNS = (
    "metric",
    "a",
    "b",
    "diff",
    "low",
    "high",
    "n_items",
    "seeds_a",
    "seeds_b",
    "resampled",
    "significant",
)
TABLE_HEAD = (
    "| comparison | difference | 95% interval | items | seeds | result |\n|---|---:|---:|---:|---:|---|"
)
INTRO = (
    "Each difference is the first row's value minus the second's, on the items that every run of "
    "both rows scored. Its 95% interval is a paired percentile bootstrap ({samples} resamplings): the "
    "same resampled items for both rows and, where both rows have ≥ {seeds} seeds, their seed runs "
    "resampled too, so the interval also covers training-seed noise. *significant*: the interval "
    "excludes 0; *tie*: it does not, and the row is marked in the table like the best. Rows sharing "
    "fewer than {items} items are not tested. Every pair of rows: [{csv}]({csv})."
)


def significance_frame(df: pd.DataFrame) -> pd.DataFrame:
    """significance.csv: one line per pair of rows and metric (``diff`` = a − b; blank: no test)."""
    records = [{c: r[c] for c in COLUMNS} for r in df.attrs.get("significance", ())]
    return pd.DataFrame.from_records(records, columns=list(COLUMNS))


def significance_section(df: pd.DataFrame) -> str | None:
    """``## Significance``: one compact table per metric with item scores; None without any."""
    records = df.attrs.get("significance", ())
    if not any(r["significant"] is not None for r in records):
        return None
    parts = [
        "## Significance",
        INTRO.format(samples=SAMPLES, seeds=MIN_SEED_RUNS, items=MIN_ITEMS, csv=SIGNIFICANCE_CSV),
    ]
    for metric in dict.fromkeys(r["metric"] for r in records):
        lines = _comparisons(df, metric)
        if lines:
            goal = "lower" if direction(metric) == "min" else "higher"
            parts.append(f"### {metric} ({goal} is better)\n\n{TABLE_HEAD}\n" + "\n".join(lines))
    return "\n\n".join(parts)


def _comparisons(df: pd.DataFrame, metric: str) -> list[str]:
    """The table lines of one metric: trained rows against the best, then against baselines."""
    labels = df.attrs["labels"]
    tests = {(r["a_row"], r["b_row"]): r for r in df.attrs["significance"] if r["metric"] == metric}
    baselines = set(df.attrs.get("baseline_rows", ()))
    lines = []
    best = best_of(df, metric)
    if best is not None:
        for row in sorted({i for pair in tests for i in pair} - baselines - {best.row}):
            test = _oriented(tests, row, best.row)
            if test is not None:
                verdict = "significant" if test["significant"] else "tie"
                lines.append(_line(metric, f"{labels[row]} − {labels[best.row]} (best)", test, verdict))
    for baseline, trained in df.attrs.get("baseline_of", {}).items():
        for row in trained:
            test = _oriented(tests, row, baseline)
            if test is not None:
                verdict = "significant" if test["significant"] else "not significant"
                lines.append(_line(metric, f"{labels[row]} − {labels[baseline]}", test, verdict))
    return lines


def _oriented(tests: dict[tuple[int, int], dict[str, Any]], a: int, b: int) -> dict[str, Any] | None:
    """The test of a − b (stored once per pair, in row order), or None where there was none."""
    if (a, b) in tests:
        test = tests[(a, b)]
    elif (b, a) in tests:
        stored = tests[(b, a)]
        test = {
            **stored, "diff": -stored["diff"], "low": -stored["high"], "high": -stored["low"],
            "seeds_a": stored["seeds_b"], "seeds_b": stored["seeds_a"],
        }  # fmt: skip
    else:
        return None
    return test if test["significant"] is not None else None


def _line(metric: str, comparison: str, test: dict[str, Any], verdict: str) -> str:
    interval = f"[{_signed(metric, test['low'])}, {_signed(metric, test['high'])}]"
    cells = [
        md_escape(comparison),
        _signed(metric, test["diff"]),
        interval,
        str(test["n_items"]),
        f"{test['seeds_a']} / {test['seeds_b']}",
        f"**{verdict}**" if verdict == "significant" else verdict,
    ]
    return "| " + " | ".join(cells) + " |"


def _signed(metric: str, value: float) -> str:
    if math.isnan(value):
        return ""
    return ("+" if value >= 0 else "−") + format_value(metric, abs(value))

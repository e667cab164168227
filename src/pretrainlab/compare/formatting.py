"""The table as a reader sees it: numbers formatted, ``mean ± std`` joined, best values marked,
baselines named in the objective cell; as markdown (report.md) or as raw CSV (report.csv)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from pretrainlab.compare.collect import FIXED
from pretrainlab.compare.ranking import best_rows
from pretrainlab.compare.table import swept_text

NO_PRETRAINING = " (no pretraining)"


def format_value(column: str, value: Any) -> str:
    """One number as a reader wants it: 1.12M params, losses to 4 decimals, rates to 1."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    key = column.lower()
    number = float(value)
    if any(word in key for word in ("params", "tokens_seen", "flops")):
        return _si(number)
    if any(word in key for word in ("tokens_per_s", "wall_time", "mean_length")):
        return f"{number:.1f}"
    if any(
        word in key for word in ("loss", "bpc", "distinct", "repetition", "accuracy", "exact_match", "f1")
    ):
        return f"{number:.4f}"  # losses and rates in [0, 1]
    if "ppl" in key:
        return f"{number:.2f}"
    if number.is_integer() and abs(number) < 1e6:
        return str(int(number))
    if abs(number) >= 1e6:
        return _si(number)
    return f"{number:.4f}" if abs(number) < 100 else f"{number:.1f}"


def _si(number: float) -> str:
    if abs(number) >= 1e15:
        return f"{number:.2e}"
    for size, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(number) >= size:
            return f"{number / size:.2f}{unit}"
    return str(int(number)) if number.is_integer() else f"{number:.1f}"


def _std_columns(df: pd.DataFrame) -> dict[str, str]:
    """Column -> its seed-spread column (tables built before ``std_columns`` existed: ``*_std``)."""
    if "std_columns" in df.attrs:
        return {c: s for c, s in df.attrs["std_columns"].items() if s in df}
    return {c[: -len("_std")]: c for c in df.columns if c.endswith("_std") and c[: -len("_std")] in df}


def display_cells(df: pd.DataFrame) -> tuple[list[str], list[list[str]], dict[str, set[int]]]:
    """(headers, cell texts, marks): ``mean ± std`` joined, ``n/a`` for nulls, no styling.

    A baseline row reads ``masked (no pretraining)`` in the objective column, and the
    ``baseline`` column goes; without an objective column it is shown as ``pretrained`` yes/no.
    """
    spreads = _std_columns(df)
    objective = df.attrs.get("objective_column")
    baseline = df.attrs.get("baseline_column")
    fold = baseline in df and objective in df
    hidden = {*spreads.values(), *([baseline] if fold else [])}
    headers = [c for c in df.columns if c not in hidden]
    swept = set(df.attrs.get("swept", []))
    baselines = set(df.attrs.get("baseline_rows", ()))
    not_applicable = {c: set(p) for c, p in df.attrs.get("not_applicable", {}).items()}
    cells: list[list[str]] = []
    for position in range(len(df)):
        line = []
        for column in headers:
            value = df[column].iloc[position]
            if column == baseline:
                line.append("no" if position in baselines else "yes")
            elif column in swept:
                text = swept_text(value)
                line.append(text + NO_PRETRAINING if column == objective and position in baselines else text)
            elif position in not_applicable.get(column, ()):
                line.append("n/a")
            else:
                text = format_value(column, value)
                std = df[spreads[column]].iloc[position] if column in spreads else math.nan
                if text and not pd.isna(std):
                    text = f"{text} ± {format_value(column, std)}"
                line.append(text)
        cells.append(line)
    headers = ["pretrained" if h == baseline else h for h in headers]
    return headers, cells, best_rows(df)


def numeric_headers(df: pd.DataFrame) -> set[str]:
    """The headers shown right-aligned: numbers."""
    return {*FIXED, *df.attrs.get("metrics", []), "seeds"}


def to_markdown(df: pd.DataFrame) -> str:
    """The table as GitHub markdown, best values in bold (no tabulate dependency)."""
    headers, cells, marks = display_cells(df)
    numeric = numeric_headers(df)
    lines = [
        "| " + " | ".join(md_escape(h) for h in headers) + " |",
        "|" + "|".join("---:" if h in numeric else "---" for h in headers) + "|",
    ]
    for position, line in enumerate(cells):
        texts = [
            f"**{text}**" if text and position in marks.get(column, ()) else md_escape(text)
            for column, text in zip(headers, line, strict=True)
        ]
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines)


def md_escape(text: str) -> str:
    """A cell's text that cannot break the markdown table."""
    return text.replace("|", "\\|").replace("\n", " ")


def to_csv_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The raw table with ``n/a`` written for nulls (pandas reads ``n/a`` back as NaN)."""
    out = df.copy()
    for column, positions in df.attrs.get("not_applicable", {}).items():
        if column in out:
            out[column] = out[column].astype(object)
            out.iloc[positions, out.columns.get_loc(column)] = "n/a"
    return out

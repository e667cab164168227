"""The table as a reader sees it: numbers formatted, ``mean ± std`` joined, best values marked,
baselines named in the objective cell; as markdown (report.md) or as raw CSV (report.csv).

What is shown is a view of the full table (``view_of``): by default the compact one (the swept
settings, status and the headline metrics under short names, errors as lines below it), which
fits 120 columns where the full table of a study is ~27 columns and ~500 characters wide;
``--metrics all`` shows every column. report.csv always holds every column.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from pretrainlab.compare.collect import FIXED
from pretrainlab.compare.ranking import best_rows
from pretrainlab.compare.table import swept_text

NO_PRETRAINING = " (no pretraining)"
ALL = "all"  # ``--metrics all``: every column
# The compact view's metrics, in this order, and their headers.
HEADLINE = {
    "val/loss": "val loss",
    "cloze/exact_match_k1": "cloze@1",
    "continuation/bpc": "bits/char",
    "probe/accuracy": "probe",
    "finetune/accuracy": "finetune",
    "train/tokens_per_s": "tok/s",
}
# Added to the compact view when the sweep varies the decoding (what a decoding changes; the
# training throughput makes room: one model serves every decoding).
DECODING_HEADLINE = {
    "gen/distinct_2": "distinct-2",
    "gen/repetition_4": "rep-4",
    "gen/self_ppl": "self-ppl",
    "gen/mean_length": "length",
}
COMPACT_COLUMNS = {**HEADLINE, **DECODING_HEADLINE}
# What a reader must know to read a headline column.
CAVEATS = {"val/loss": "each objective's own loss: not comparable across objectives"}
FALLBACK_METRICS = 4  # what the compact view shows of a sweep without any headline metric


# -- views --------------------------------------------------------------------------------
def view_of(df: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """The table a reader is shown: the compact view (``metrics`` None), every column
    (``[ALL]``), or every column but only the metrics ``metrics`` names (globs allowed).

    The full table stays what report.csv holds; a view only leaves columns out, so its rows,
    the paired tests and the marks are the full table's.
    """
    if metrics is None:
        return compact_view(df)
    if ALL in metrics:
        return df
    keys = df.attrs.get("metrics", [])
    chosen = [k for pattern in metrics for k in keys if fnmatch.fnmatchcase(k, pattern)]
    return _subset(df, list(dict.fromkeys(chosen)), compact=False)


def compact_view(df: pd.DataFrame) -> pd.DataFrame:
    """The swept settings, ``seeds``, status and the headline metrics present (``HEADLINE``),
    under short headers (``attrs["headers"]``); errors and notes become ``attrs["row_notes"]``."""
    keys = df.attrs.get("metrics", [])
    headers = dict(HEADLINE)
    if "decoding" in df.attrs.get("swept", []):
        headers.pop("train/tokens_per_s")
        headers.update(DECODING_HEADLINE)
    headline = [k for k in headers if k in keys] or list(keys[:FALLBACK_METRICS])
    view = _subset(df, headline, compact=True)
    view.attrs.update(compact=True, headers={k: headers[k] for k in headline if k in headers})
    view.attrs["row_notes"] = row_notes(df)
    if "seeds" in view and view["seeds"].nunique() == 1:  # every row: the same count, said once
        view.attrs["seeds"] = int(view["seeds"].iloc[0])
        view = view.drop(columns="seeds")
    return view


def _subset(df: pd.DataFrame, metrics: list[str], compact: bool) -> pd.DataFrame:
    """``df`` with only ``metrics`` (each with its seed spread); ``compact`` also leaves out the
    job, the bookkeeping columns (params, tokens, time) and errors/notes."""
    spreads = _std_columns(df)
    every_metric = set(df.attrs.get("metrics", []))
    swept = df.attrs.get("swept", [])
    varied = df.attrs.get("varied", swept)  # a setting that only looks swept (n/a for some rows) goes
    settings = {*varied, df.attrs.get("baseline_column"), "seeds", "status"}
    lead = [c for c in df.columns if c not in every_metric and c not in spreads.values()]
    lead = [c for c in lead if c not in ("error", "note")]
    if compact:
        lead = [c for c in lead if c in settings]
    columns = [c for column in [*lead, *metrics] for c in (column, spreads.get(column)) if c is not None]
    if not compact:
        columns += [c for c in ("error", "note") if c in df]
    view = df[columns].copy()
    view.attrs = {
        **df.attrs,
        "metrics": metrics,
        "std_columns": {c: s for c, s in df.attrs.get("std_columns", {}).items() if s in view},
        # The report's Significance section: the metrics shown (significance.csv: all of them).
        "significance": [r for r in df.attrs.get("significance", ()) if r["metric"] in metrics],
    }
    return view


def row_notes(df: pd.DataFrame) -> list[str]:
    """One line per row with an error or a note (a failed job's error, a skipped duplicate):
    what the compact view says below the table instead of in a wide column."""
    labels = df.attrs.get("labels") or [""] * len(df)
    notes = []
    for position in range(len(df)):
        texts = [str(df[c].iloc[position]) for c in ("error", "note") if c in df and df[c].iloc[position]]
        if texts:
            job = df["job"].iloc[position] if "job" in df else ""
            where = f"job {job}" if job else "not run"
            label = labels[position] or where
            notes.append(f"{label} ({where}, {df['status'].iloc[position]}): {' '.join(texts)}")
    return notes


def legend(df: pd.DataFrame, code: str = "") -> str:
    """What the short headers stand for (``val loss = val/loss (...)``); ``code`` quotes the keys."""
    return ", ".join(
        f"{short} = {code}{key}{code}" + (f" ({CAVEATS[key]})" if key in CAVEATS else "")
        for key, short in df.attrs.get("headers", {}).items()
    )


def seeds_note(df: pd.DataFrame) -> str | None:
    """What the compact view says instead of a ``seeds`` column holding one count on every row."""
    n = df.attrs.get("seeds")
    return f"Each row: the mean ± std over its {n} seeds." if n and n > 1 else None


def compact_value(column: str, value: Any) -> str:
    """A headline number in the compact view: 3 decimals (rates, losses, bits), throughput whole."""
    if value is None or isinstance(value, str) or pd.isna(value):
        return format_value(column, value)
    return f"{float(value):.0f}" if "tokens_per_s" in column else f"{float(value):.3f}"


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
    """(headers, cell texts, marks by header): ``mean ± std`` joined, ``n/a`` for nulls, no styling;
    a view's short headers (``attrs["headers"]``) replace the metric keys.

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
    compact = df.attrs.get("compact", False)
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
                show = compact_value if compact and column in COMPACT_COLUMNS else format_value
                text = show(column, value)
                std = df[spreads[column]].iloc[position] if column in spreads else math.nan
                if text and not pd.isna(std):
                    text = f"{text} ± {show(column, std)}"
                line.append(text)
        cells.append(line)
    renamed = {baseline: "pretrained", **df.attrs.get("headers", {})}
    marks = {renamed.get(c, c): rows for c, rows in best_rows(df).items()}
    return [renamed.get(h, h) for h in headers], cells, marks


def numeric_headers(df: pd.DataFrame) -> set[str]:
    """The headers shown right-aligned: numbers."""
    renamed = df.attrs.get("headers", {})
    return {renamed.get(c, c) for c in (*FIXED, *df.attrs.get("metrics", []))} | {"seeds"}


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

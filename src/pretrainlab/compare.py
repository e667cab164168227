"""``pretrainlab-compare``: one report (table, CSV, plots) for a Hydra multirun sweep folder.

A sweep is only useful if its jobs can be read side by side. This reads every job folder of
a sweep (and the combinations our sweeper skipped as duplicates), puts one row per setting
in a table (runs that differ only by ``seed`` merged into mean ± std), marks the best value
of each metric, and draws the plots that answer "which objective, at which masking rate,
with which decoding".

Pure pieces (``collect``, ``group_by_seed``, ``ranges_overlap``, ``build_table``,
``to_markdown``) are public so notebooks and tests can reuse them without writing files.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import shlex
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pretrainlab.reproduce import RERUN_MARKER

Row = dict[str, Any]

# Bookkeeping columns shown for every job, before the metrics.
FIXED = ("params", "tokens_seen", "wall_time_s")
# A key containing one of these is better when lower / higher; any other key is not marked.
LOWER_IS_BETTER = ("loss", "ppl", "bpc", "repetition", "wall_time")
HIGHER_IS_BETTER = ("distinct", "accuracy", "exact_match", "tokens_per_s")
# Config keys the report reads; the run's effective values, whatever the overrides said.
CONFIG_KEYS = (
    "objective.name",
    "objective.mask_probability",
    "model.name",
    "model.n_layers",
    "model.hidden_size",
    "decoding.name",
    "seed",
    "data.block_size",
)
STRIPPABLE = ("objective.", "model.")
PLOTS = ("val_loss_vs_tokens.png", "metrics_vs_mask_probability.png", "generation_by_decoding.png")
# Known objectives keep their colour from one report to the next.
OBJECTIVE_COLOURS = {"masked": "#1f77b4", "causal": "#d62728", "seq2seq": "#2ca02c", "prefix": "#9467bd"}
SPARE_COLOURS = ("#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
ERROR_WIDTH = 80

SEED_NOTE = (
    "Runs that differ only in `seed` are merged into one row: each value is the mean ± the sample "
    "standard deviation over the `seeds` runs of that row. Two rows are only counted as different when "
    "their [mean − std, mean + std] ranges do not overlap, so **bold** marks the best value of a column "
    "and every value whose range overlaps the best one's (a tie within the seed noise). Lower is better "
    "for loss, perplexity, bits per character, repetition and wall time; higher for distinct-n, accuracy, "
    "exact match and throughput; other columns (params, tokens, steps, length) are not marked."
)
CELL_NOTE = (
    "`n/a`: the metric does not apply to that job (its value is null); a blank cell: not measured, "
    "or the job failed, is missing or was skipped."
)


# Marks "key not there", where None would mean a null value.
_ABSENT = object()


class CompareError(ValueError):
    """Input that cannot give a report; the command prints it as one ``error:`` line."""


# -- reading a sweep ----------------------------------------------------------------------
def collect(sweep_dir: str | Path) -> list[Row]:
    """One row per job folder and per skipped combination, in launch order.

    Each row: ``dir`` (job folder name, None when skipped), ``status`` (ok, failed, missing,
    skipped), ``overrides`` (key -> value), ``metrics`` (metrics.json as written), ``curve``
    ((step, tokens, loss) tuples), ``error`` (first line, or None), ``config`` (the
    ``CONFIG_KEYS`` found in .hydra/config.yaml), ``duplicate_of`` and ``reason`` (skipped rows),
    ``covers`` (the overrides of the skipped combinations a job's row stands for).

    A skipped combination whose job ran with exactly the combination's cleaned overrides (its
    ``launch`` in sweep.json: without the settings its objective ignores) is that job: it is
    folded into the job's row (``covers``) instead of being listed again. It keeps a row of its
    own when the job ran with other values (a sweep from before the sweeper launched cleaned
    overrides) or left no overrides.yaml.
    """
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise CompareError(f"{sweep}: no such folder")
    plan = _read_plan(sweep)
    job_dirs = _job_dirs(sweep)
    if plan is None and not job_dirs:
        what = "a single run folder" if (sweep / ".hydra").is_dir() else "not a sweep folder"
        raise CompareError(f"{sweep}: {what} (no job folders and no sweep.json)")
    rows: list[Row] = []
    listed: dict[str, Row] = {}
    for entry in plan or []:
        if entry.get("dir") is None:
            covering = listed.get(str(entry.get("duplicate_of")))
            launch = entry.get("launch")
            if (
                covering is not None
                and isinstance(launch, list)
                and _parse_overrides(launch) == covering["overrides"]
            ):
                covering["covers"].append(_parse_overrides(entry.get("overrides") or []))
            else:
                rows.append(_skipped_row(entry))
            continue
        name = str(entry["dir"])
        listed[name] = _job_row(sweep / name, _parse_overrides(entry.get("overrides") or []))
        rows.append(listed[name])
    rows.extend(_job_row(path, {}) for path in job_dirs if path.name not in listed)
    return rows


def _read_plan(sweep: Path) -> list[dict[str, Any]] | None:
    """sweep.json's job list, or None when the sweep was not run by our sweeper."""
    file = sweep / "sweep.json"
    if not file.is_file():
        return None
    try:
        jobs = json.loads(file.read_text(encoding="utf-8")).get("jobs")
    except (OSError, ValueError, AttributeError) as err:
        raise CompareError(f"{file}: not a readable sweep.json ({err})") from err
    if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
        raise CompareError(f"{file}: 'jobs' must be a list of objects")
    return jobs


def _job_dirs(sweep: Path) -> list[Path]:
    """Hydra names job folders by number; any folder holding .hydra/ is a job too.

    Except, in a sweep folder, a ``pretrainlab-reproduce`` rerun (it holds ``RERUN_MARKER``): it
    repeats one of the jobs, and counted as a job it would be merged with it like another seed.
    """
    in_sweep = (sweep / "sweep.json").is_file() or (sweep / "multirun.yaml").is_file()
    found = [
        p
        for p in sweep.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and (p.name.isdigit() or (p / ".hydra").is_dir())
        and not (in_sweep and (p / RERUN_MARKER).is_file())
    ]
    return sorted(found, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))


def _skipped_row(entry: dict[str, Any]) -> Row:
    """A combination the sweeper did not train because an earlier job covers it."""
    return {
        "dir": None,
        "status": str(entry.get("status") or "skipped"),
        "overrides": _parse_overrides(entry.get("overrides") or []),
        "metrics": {},
        "curve": [],
        "error": None,
        "config": {},
        "duplicate_of": None if entry.get("duplicate_of") is None else str(entry["duplicate_of"]),
        "reason": entry.get("reason"),
        "covers": [],
    }


def _job_row(path: Path, planned: dict[str, Any]) -> Row:
    """What one job folder says; the overrides it ran with win over the ones planned."""
    metrics, status, error = _read_metrics(path)
    overrides = _read_overrides(path)
    return {
        "dir": path.name,
        "status": status,
        "overrides": planned if overrides is None else overrides,
        "metrics": metrics,
        "curve": _read_curve(path / "curve.csv"),
        "error": error,
        "config": _read_config(path),
        "duplicate_of": None,
        "reason": None,
        "covers": [],
    }


def _read_metrics(path: Path) -> tuple[dict[str, Any], str, str | None]:
    """(metrics, status, error); no metrics.json means the job died early or still runs."""
    if not path.is_dir():
        return {}, "missing", f"job folder {path.name} not found"
    file = path / "metrics.json"
    if not file.is_file():
        return {}, "missing", "no metrics.json (the job failed early or is still running)"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return {}, "failed", first_line(f"metrics.json unreadable: {err}")
    if not isinstance(data, dict):
        return {}, "failed", "metrics.json is not a JSON object"
    # Runs written before metrics carried a status are ok unless they name an error.
    status = str(data.get("status") or ("failed" if data.get("error") else "ok"))
    error = None if status == "ok" else first_line(data.get("error")) or f"{status} (no error message)"
    return data, status, error


def _read_overrides(path: Path) -> dict[str, Any] | None:
    file = path / ".hydra" / "overrides.yaml"
    try:
        items = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return _parse_overrides(items) if isinstance(items, list) else None


def _read_config(path: Path) -> dict[str, Any]:
    """The effective values of ``CONFIG_KEYS`` (plain YAML: interpolations are not resolved)."""
    try:
        config = yaml.safe_load((path / ".hydra" / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    found: dict[str, Any] = {}
    for key in CONFIG_KEYS:
        node: Any = config
        for part in key.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        if node is not _ABSENT:
            found[key] = node
    return found


def _read_curve(file: Path) -> list[tuple[int, int | None, float]]:
    """Validation points; unreadable rows are dropped rather than failing the report."""
    if not file.is_file():
        return []
    points: list[tuple[int, int | None, float]] = []
    with open(file, newline="", encoding="utf-8") as f:
        for record in csv.DictReader(f):
            try:
                tokens = record.get("tokens_seen")
                points.append(
                    (
                        int(float(record["step"])),
                        int(float(tokens)) if tokens else None,
                        float(record["val_loss"]),
                    )
                )
            except (KeyError, TypeError, ValueError):
                continue
    return points


def _parse_overrides(items: Iterable[Any]) -> dict[str, Any]:
    """``["a.b=0.15", "+c=x"]`` -> ``{"a.b": 0.15, "c": "x"}``; deletions (``~key``) are dropped."""
    parsed: dict[str, Any] = {}
    for item in items:
        text = str(item)
        if "=" not in text:
            continue
        key, value = text.split("=", 1)
        parsed[key.lstrip("+~")] = _scalar(value)
    return parsed


def _scalar(text: str) -> Any:
    """Numbers and booleans typed (so columns sort and plot); ``null`` stays the word."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def first_line(text: Any, width: int = ERROR_WIDTH) -> str | None:
    """The first non-empty line, cut to ``width`` characters: a table cell, not a traceback."""
    if text is None:
        return None
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    if not line:
        return None
    return line if len(line) <= width else line[: width - 1] + "…"


# -- seeds and significance ---------------------------------------------------------------
def group_by_seed(rows: Sequence[Row]) -> list[Row]:
    """Merge rows that differ only by ``seed`` into one row of means (sample std beside).

    Only finished (ok) and skipped rows merge; every failed or missing job keeps a row of its
    own so its error stays visible. A merged row has the input keys (``metrics`` now means,
    ``overrides`` without ``seed``) plus ``std`` (key -> sample std, None for a single run),
    ``n``, ``seeds``, ``dirs`` and ``members`` (the input rows).
    """
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(_group_key(row, index), []).append(row)
    return [_merge(members) for members in groups.values()]


def _group_key(row: Row, index: int) -> tuple[Any, ...]:
    setting = tuple(sorted((k, repr(v)) for k, v in row["overrides"].items() if k != "seed"))
    if row["status"] in ("ok", "skipped") and row["overrides"]:
        return (row["status"], setting)
    return (row["status"], setting, index)


def _merge(members: list[Row]) -> Row:
    first = members[0]
    keys = list(dict.fromkeys(k for m in members for k in m["metrics"]))
    means: dict[str, Any] = {}
    stds: dict[str, float | None] = {}
    for key in keys:
        values = [m["metrics"][key] for m in members if key in m["metrics"]]
        numbers = [v for v in values if is_number(v)]
        if len(numbers) > 1:
            means[key], stds[key] = statistics.fmean(numbers), statistics.stdev(numbers)
        elif numbers:
            means[key], stds[key] = numbers[0], None
        else:
            means[key] = None if all(v is None for v in values) else values[0]
    dirs = [m["dir"] for m in members if m["dir"] is not None]
    duplicates = list(dict.fromkeys(m["duplicate_of"] for m in members if m["duplicate_of"] is not None))
    return {
        **first,
        "dir": ",".join(dirs) or None,
        "dirs": dirs,
        "overrides": {k: v for k, v in first["overrides"].items() if k != "seed"},
        "metrics": means,
        "std": stds,
        "n": len(members),
        "seeds": [m["overrides"].get("seed") for m in members],
        "duplicate_of": ",".join(duplicates) or None,
        "members": list(members),
    }


def ranges_overlap(a_mean: float, a_std: float | None, b_mean: float, b_std: float | None) -> bool:
    """Whether [mean − std, mean + std] of a and b share a point: then neither is clearly better.

    A missing std (a single run) counts as 0; touching ranges overlap.
    """
    a_std = abs(a_std) if a_std is not None and not math.isnan(a_std) else 0.0
    b_std = abs(b_std) if b_std is not None and not math.isnan(b_std) else 0.0
    return a_mean - a_std <= b_mean + b_std and b_mean - b_std <= a_mean + a_std


def direction(key: str) -> str | None:
    """``"min"``, ``"max"`` or None (neutral: never marked) for a column name."""
    lowered = key.lower()
    if any(word in lowered for word in LOWER_IS_BETTER):
        return "min"
    if any(word in lowered for word in HIGHER_IS_BETTER):
        return "max"
    return None


def is_number(value: Any) -> bool:
    """A JSON number that is a measurement (booleans such as data_cache_hit are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# -- the table ----------------------------------------------------------------------------
def swept_keys(rows: Sequence[Row]) -> list[str]:
    """Override keys whose value is not the same in every row that has overrides."""
    known = [r["overrides"] for r in rows if r["overrides"]]
    keys = list(dict.fromkeys(k for o in known for k in o))
    return [k for k in keys if len({repr(o.get(k, _ABSENT)) for o in known}) > 1]


def display_names(keys: Sequence[str], taken: Iterable[str] = ()) -> dict[str, str]:
    """Drop ``objective.``/``model.`` from a key when no other column would get the same name."""
    full = set(keys) | set(taken)
    short = {k: k.split(".", 1)[1] if k.startswith(STRIPPABLE) else k for k in keys}
    counts: dict[str, int] = {}
    for name in short.values():
        counts[name] = counts.get(name, 0) + 1
    return {k: s if s == k or (counts[s] == 1 and s not in full) else k for k, s in short.items()}


def metric_keys(rows: Sequence[Row], selected: Sequence[str] | None = None) -> list[str]:
    """Metric columns: numeric (or null) keys of finished jobs, val/* then gen/* then the rest.

    ``selected`` (names or glob patterns such as ``gen/*``) keeps those metrics, in its order.
    """
    found: dict[str, bool] = {}
    for row in rows:
        if row["status"] != "ok":
            continue
        for key, value in row["metrics"].items():
            if key not in FIXED and key != "status" and (is_number(value) or value is None):
                found[key] = found.get(key, False) or is_number(value)
    # A key that is null everywhere is a metric only if it is named like one (namespace/name).
    keys = sorted((k for k, numeric in found.items() if numeric or "/" in k), key=_metric_order)
    if selected is None:
        return keys
    chosen = [k for pattern in selected for k in keys if fnmatch.fnmatchcase(k, pattern)]
    return list(dict.fromkeys(chosen))


def _metric_order(key: str) -> tuple[int, str]:
    return (0 if key.startswith("val/") else 1 if key.startswith("gen/") else 2, key)


def build_table(rows: Sequence[Row], metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per setting (seeds merged), with raw numbers: what report.csv holds.

    Columns: ``job``, the swept values, ``seeds`` (when seeds vary), ``status``, ``params``,
    ``tokens_seen``, ``wall_time_s``, the metrics (``<col>_std`` beside each when seeds were
    merged), then ``error`` and ``note`` when any row has one. Null metrics ("not
    applicable") are NaN like blanks; ``df.attrs["not_applicable"]`` lists them per column
    (row positions) and ``df.attrs["swept"]``/``["metrics"]`` name the column groups.
    """
    grouped = group_by_seed(rows)
    keys = swept_keys(rows)
    seeds_vary = "seed" in keys
    keys = [k for k in keys if k != "seed"]
    columns = metric_keys(rows, metrics)
    names = display_names(keys, taken=("job", "seeds", "status", "error", "note", *FIXED, *columns))
    with_std = any(g["n"] > 1 and g["status"] == "ok" for g in grouped)
    numeric = [*FIXED, *columns]
    records: list[dict[str, Any]] = []
    not_applicable: dict[str, list[int]] = {}
    for position, group in enumerate(grouped):
        record: dict[str, Any] = {"job": group["dir"] or ""}
        # A job folder without .hydra/overrides.yaml: its settings are unknown, not the defaults.
        record.update({names[k]: group["overrides"].get(k) if group["overrides"] else "" for k in keys})
        if seeds_vary:
            record["seeds"] = group["n"]
        record["status"] = group["status"]
        record.update(_numbers(group, numeric, with_std))
        record["error"] = group["error"] or ""
        record["note"] = _note(group)
        records.append(record)
        for column in _nulls(group, numeric):
            not_applicable.setdefault(column, []).append(position)
    df = pd.DataFrame.from_records(records)
    if df.empty:
        df = pd.DataFrame(columns=["job", "status", *FIXED])
    for column in ("error", "note"):
        if column in df and not df[column].astype(bool).any():
            df = df.drop(columns=column)
    _integer_columns(df, rows, numeric)
    df.attrs.update(swept=[names[k] for k in keys], metrics=columns, not_applicable=not_applicable)
    return df


def _numbers(group: Row, columns: Sequence[str], with_std: bool) -> dict[str, float]:
    """The row's numeric cells (NaN where blank); only finished jobs have numbers."""
    ok = group["status"] == "ok"
    cells: dict[str, float] = {}
    for column in columns:
        value = group["metrics"].get(column) if ok else None
        cells[column] = value if is_number(value) else math.nan
        # Model size and token budget are set, not measured: no spread to show.
        if with_std and column not in ("params", "tokens_seen"):
            std = group["std"].get(column) if ok else None
            cells[f"{column}_std"] = std if std is not None else math.nan
    return cells


def _nulls(group: Row, columns: Sequence[str]) -> list[str]:
    """Columns a finished job reported as null: "not applicable", shown n/a, never 0."""
    if group["status"] != "ok":
        return []
    return [c for c in columns if c in group["metrics"] and group["metrics"][c] is None]


def _note(group: Row) -> str:
    if group["status"] == "skipped":
        reason = f": {group['reason']}" if group.get("reason") else ""
        return f"duplicate of job {group['duplicate_of'] or '?'}{reason}"
    return ""


def _integer_columns(df: pd.DataFrame, rows: Sequence[Row], columns: Sequence[str]) -> None:
    """Counts (params, steps, tokens) stay integers in the CSV instead of becoming 1119845.0."""
    for column in columns:
        values = [r["metrics"].get(column) for r in rows if r["status"] == "ok"]
        numbers = [v for v in values if is_number(v)]
        data = df[column].dropna()
        if numbers and all(isinstance(v, int) for v in numbers) and (data == data.round()).all():
            df[column] = df[column].round().astype("Int64")


def best_rows(df: pd.DataFrame) -> dict[str, set[int]]:
    """Row positions to mark per column: the best and every row tied with it (ranges overlap)."""
    marks: dict[str, set[int]] = {}
    for column in [*FIXED, *df.attrs.get("metrics", [])]:
        goal = direction(column)
        if goal is None or column not in df:
            continue
        means = pd.to_numeric(df[column], errors="coerce").astype(float)
        stds = df[f"{column}_std"].astype(float) if f"{column}_std" in df else pd.Series(0.0, index=df.index)
        candidates = [
            (i, m, s) for i, (m, s) in enumerate(zip(means, stds, strict=True)) if not math.isnan(m)
        ]
        if len(candidates) < 2:
            continue
        pick = min if goal == "min" else max
        _, best_mean, best_std = pick(candidates, key=lambda c: c[1])
        marks[column] = {i for i, m, s in candidates if ranges_overlap(m, s, best_mean, best_std)}
    return marks


# -- formatting ---------------------------------------------------------------------------
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
    if any(word in key for word in ("loss", "bpc", "distinct", "repetition", "accuracy", "exact_match")):
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


def _swept_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "default"  # this job did not override the key
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def display_cells(df: pd.DataFrame) -> tuple[list[str], list[list[str]], dict[str, set[int]]]:
    """(headers, cell texts, marks): ``mean ± std`` joined, ``n/a`` for nulls, no styling."""
    headers = [c for c in df.columns if not (c.endswith("_std") and c[: -len("_std")] in df)]
    swept = set(df.attrs.get("swept", []))
    not_applicable = {c: set(p) for c, p in df.attrs.get("not_applicable", {}).items()}
    cells: list[list[str]] = []
    for position in range(len(df)):
        line = []
        for column in headers:
            value = df[column].iloc[position]
            if column in swept:
                line.append(_swept_text(value))
            elif position in not_applicable.get(column, ()):
                line.append("n/a")
            else:
                text = format_value(column, value)
                std = df[f"{column}_std"].iloc[position] if f"{column}_std" in df else math.nan
                if text and not pd.isna(std):
                    text = f"{text} ± {format_value(column, std)}"
                line.append(text)
        cells.append(line)
    return headers, cells, best_rows(df)


def to_markdown(df: pd.DataFrame) -> str:
    """The table as GitHub markdown, best values in bold (no tabulate dependency)."""
    headers, cells, marks = display_cells(df)
    numeric = {*FIXED, *df.attrs.get("metrics", []), "seeds"}
    lines = [
        "| " + " | ".join(_md_escape(h) for h in headers) + " |",
        "|" + "|".join("---:" if h in numeric else "---" for h in headers) + "|",
    ]
    for position, line in enumerate(cells):
        texts = [
            f"**{text}**" if text and position in marks.get(column, ()) else _md_escape(text)
            for column, text in zip(headers, line, strict=True)
        ]
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_csv_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The raw table with ``n/a`` written for nulls (pandas reads ``n/a`` back as NaN)."""
    out = df.copy()
    for column, positions in df.attrs.get("not_applicable", {}).items():
        if column in out:
            out[column] = out[column].astype(object)
            out.iloc[positions, out.columns.get_loc(column)] = "n/a"
    return out


# -- plots --------------------------------------------------------------------------------
def _objective(row: Row) -> str:
    return str(
        row["metrics"].get("objective")
        or row["config"].get("objective.name")
        or row["overrides"].get("objective")
        or "?"
    )


def _decoding(row: Row) -> str:
    return str(
        row["metrics"].get("decoding")
        or row["config"].get("decoding.name")
        or row["overrides"].get("decoding")
        or "default"
    )


def _mask_probability(row: Row) -> float | None:
    """The job's effective mask probability: config.yaml's (null where it does not apply)."""
    if "objective.mask_probability" in row["config"]:
        value = row["config"]["objective.mask_probability"]
    else:
        value = next((v for k, v in row["overrides"].items() if k.endswith("mask_probability")), None)
    return float(value) if is_number(value) else None


def _colours(objectives: Iterable[str]) -> dict[str, str]:
    spare = iter(SPARE_COLOURS * 4)
    return {o: OBJECTIVE_COLOURS.get(o) or next(spare, "#000000") for o in dict.fromkeys(objectives)}


def _label(row: Row, keys: Sequence[str], names: dict[str, str]) -> str:
    parts = [f"{names.get(k, k)}={_swept_text(row['overrides'].get(k))}" for k in keys]
    return ", ".join(parts) or f"job {row['dir']}"


def _figure(panels: int, width: float = 4.6, height: float = 3.4) -> tuple[Any, list[Any]]:
    """An Agg figure with one axes per panel, three to a line (no pyplot: no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, panels)
    lines = math.ceil(panels / cols)
    fig = Figure(figsize=(width * cols, height * lines), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(lines, cols, squeeze=False).ravel())
    for unused in axes[panels:]:
        unused.set_visible(False)
    return fig, axes[:panels]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def plot_val_loss(rows: Sequence[Row], keys: Sequence[str], names: dict[str, str], path: Path) -> bool:
    """Validation loss against tokens seen, one line per job, coloured by objective."""
    jobs = [r for r in rows if any(t is not None for _, t, _ in r["curve"])]
    if not jobs:
        return False
    colours = _colours(_objective(r) for r in jobs)
    fig, (ax,) = _figure(1, width=7.5, height=4.8)
    for row in jobs:
        points = [(t, loss) for _, t, loss in row["curve"] if t is not None]
        label = _label(row, keys, names) + ("" if row["status"] == "ok" else f" ({row['status']})")
        ax.plot(
            [t for t, _ in points],
            [loss for _, loss in points],
            marker=".",
            color=colours[_objective(row)],
            linestyle="-" if row["status"] == "ok" else ":",
            label=label,
        )
    ax.set(xlabel="tokens seen", ylabel="validation loss", title="Validation loss against tokens seen")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    fig.savefig(path, dpi=100)
    return True


def plot_mask_probability(
    rows: Sequence[Row], metrics: Sequence[str], keys: Sequence[str], names: dict[str, str], path: Path
) -> bool:
    """Each metric against mask_probability, one line per objective (and other swept setting).

    Seeds are averaged (error bars: std). An objective without a mask probability (causal)
    is a dashed horizontal line: it is one value, comparable with every masking rate.
    """
    done = [r for r in rows if r["status"] == "ok"]
    if not any(_mask_probability(r) is not None for r in done):
        return False
    panels = [m for m in metrics if any(is_number(r["metrics"].get(m)) for r in done)]
    if not panels:
        return False
    others = [k for k in keys if k not in ("seed", "objective") and not k.endswith("mask_probability")]
    colours = _colours(_objective(r) for r in done)
    fig, axes = _figure(len(panels))
    for ax, metric in zip(axes, panels, strict=True):
        for (objective, label), points in _series(done, metric, others, names).items():
            _draw_series(ax, points, colours[objective], label)
        ax.set(xlabel="mask_probability", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="x-small")
    fig.savefig(path, dpi=100)
    return True


def _series(
    done: Sequence[Row], metric: str, others: Sequence[str], names: dict[str, str]
) -> dict[tuple[str, str], dict[float | None, list[float]]]:
    """(objective, label) -> mask probability -> the metric's values (one per seed)."""
    series: dict[tuple[str, str], dict[float | None, list[float]]] = {}
    for row in done:
        if is_number(row["metrics"].get(metric)):
            settings = [f"{names.get(k, k)}={_swept_text(row['overrides'].get(k))}" for k in others]
            points = series.setdefault((_objective(row), ", ".join([_objective(row), *settings])), {})
            points.setdefault(_mask_probability(row), []).append(float(row["metrics"][metric]))
    return series


def _draw_series(ax: Any, points: dict[float | None, list[float]], colour: str, label: str) -> None:
    """A line with error bars, or a dashed level for an objective that never masks."""
    xs = sorted(x for x in points if x is not None)
    if xs:
        stats = [_mean_std(points[x]) for x in xs]
        means, stds = [m for m, _ in stats], [s for _, s in stats]
        ax.errorbar(xs, means, yerr=stds, marker="o", color=colour, label=label, capsize=3)
    elif None in points:
        ax.axhline(_mean_std(points[None])[0], color=colour, linestyle="--", label=f"{label} (no masking)")


def plot_generation(rows: Sequence[Row], metrics: Sequence[str], path: Path) -> bool:
    """Grouped bars: each gen/* metric per decoding strategy, one bar per objective.

    A bar is the mean over the objective's jobs with that decoding (seeds and any other
    swept setting); its error bar is their std.
    """
    done = [r for r in rows if r["status"] == "ok"]
    panels = [
        m for m in metrics if m.startswith("gen/") and any(is_number(r["metrics"].get(m)) for r in done)
    ]
    if not panels:
        return False
    decodings = list(dict.fromkeys(_decoding(r) for r in done))
    objectives = list(dict.fromkeys(_objective(r) for r in done))
    colours = _colours(objectives)
    width = 0.8 / len(objectives)
    fig, axes = _figure(len(panels))
    for ax, metric in zip(axes, panels, strict=True):
        for index, objective in enumerate(objectives):
            bars = _bars(done, metric, objective, decodings)
            xs = [position - 0.4 + width * (index + 0.5) for position, _, _ in bars]
            heights, errors = [m for _, m, _ in bars], [s for _, _, s in bars]
            if bars:
                ax.bar(xs, heights, width, yerr=errors, color=colours[objective], label=objective, capsize=2)
        ax.set_xticks(range(len(decodings)), decodings)
        ax.set(xlabel="decoding", ylabel=metric, title=metric)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="x-small")
    fig.savefig(path, dpi=100)
    return True


def _bars(
    done: Sequence[Row], metric: str, objective: str, decodings: Sequence[str]
) -> list[tuple[int, float, float]]:
    """(decoding position, mean, std) of one objective's bars; no bar where it has no value."""
    bars = []
    for position, decoding in enumerate(decodings):
        values = [
            float(r["metrics"][metric])
            for r in done
            if _objective(r) == objective and _decoding(r) == decoding and is_number(r["metrics"].get(metric))
        ]
        if values:
            bars.append((position, *_mean_std(values)))
    return bars


def _main_metrics(columns: Sequence[str], selected: bool) -> list[str]:
    """What the mask-probability plot shows: val/loss and every evaluation metric."""
    if selected:
        return list(columns)
    return [
        c for c in columns if c == "val/loss" or ("/" in c and c.split("/", 1)[0] not in ("val", "train"))
    ]


# -- the report ---------------------------------------------------------------------------
@dataclass
class Report:
    """What one report run produced, for printing."""

    table: pd.DataFrame
    files: dict[str, Path] = field(default_factory=dict)
    skipped_plots: dict[str, str] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)


def write_report(
    sweep_dir: str | Path, out_dir: str | Path | None = None, metrics: Sequence[str] | None = None
) -> dict[str, Path]:
    """Write report.md, report.csv and the plots into ``out_dir`` (default: the sweep folder).

    Returns file name -> path of every file written.
    """
    return make_report(sweep_dir, out_dir, metrics).files


def make_report(
    sweep_dir: str | Path,
    out_dir: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    command: str | None = None,
) -> Report:
    """``write_report`` keeping the table, so the command can print it without re-reading."""
    sweep = Path(sweep_dir)
    rows = collect(sweep)
    out = Path(out_dir) if out_dir is not None else sweep
    out.mkdir(parents=True, exist_ok=True)
    table = build_table(rows, metrics)
    report = Report(table)
    if metrics is not None:
        known = metric_keys(rows)
        report.unmatched = [p for p in metrics if not any(fnmatch.fnmatchcase(k, p) for k in known)]
    _write_plots(rows, table, out, selected=metrics is not None, report=report)
    csv_path = out / "report.csv"
    to_csv_frame(table).to_csv(csv_path, index=False)
    md_path = out / "report.md"
    command = command or shlex.join(["pretrainlab-compare", str(sweep_dir)])
    md_path.write_text(_markdown(sweep, command, rows, table, report), encoding="utf-8")
    report.files = {"report.md": md_path, "report.csv": csv_path, **report.files}
    return report


def _write_plots(rows: Sequence[Row], table: pd.DataFrame, out: Path, selected: bool, report: Report) -> None:
    """Draw each plot that has data; an old PNG of a plot with no data now is removed."""
    keys = swept_keys(rows)
    names = display_names([k for k in keys if k != "seed"])
    columns = table.attrs["metrics"]
    drawn = {
        PLOTS[0]: lambda p: plot_val_loss(rows, keys, names, p),
        PLOTS[1]: lambda p: plot_mask_probability(rows, _main_metrics(columns, selected), keys, names, p),
        PLOTS[2]: lambda p: plot_generation(rows, columns, p),
    }
    reasons = {
        PLOTS[0]: "no job has a validation curve (curve.csv)",
        PLOTS[1]: "no finished job has a mask probability, or no metric to plot",
        PLOTS[2]: "no finished job has generation metrics (gen/*)",
    }
    for name, draw in drawn.items():
        path = out / name
        if draw(path):
            report.files[name] = path
        else:
            path.unlink(missing_ok=True)
            report.skipped_plots[name] = reasons[name]


def _markdown(sweep: Path, command: str, rows: Sequence[Row], table: pd.DataFrame, report: Report) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items()) or "none"
    titles = {
        PLOTS[0]: "Validation loss against tokens seen",
        PLOTS[1]: "Metrics against mask probability",
        PLOTS[2]: "Generation metrics by decoding strategy",
    }
    parts = [
        f"# Sweep report: {sweep.resolve().name}",
        f"Produced by `{command}`.",
        f"{len(rows)} jobs and combinations: {summary}.",
        to_markdown(table),
        SEED_NOTE,
        CELL_NOTE,
        "## Plots",
    ]
    for name in PLOTS:
        if name in report.files:
            parts.append(f"### {titles[name]}\n\n![{titles[name]}]({name})")
        else:
            parts.append(f"### {titles[name]}\n\nNot drawn: {report.skipped_plots[name]}.")
    return "\n\n".join(parts) + "\n"


# -- command line -------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrainlab-compare",
        description="Compare the jobs of a Hydra multirun sweep: report.md, report.csv and plots.",
    )
    parser.add_argument("sweep_dir", help="the sweep folder (holds 0/, 1/, ... and/or sweep.json)")
    parser.add_argument("--out", help="folder for the report files (default: the sweep folder)")
    parser.add_argument(
        "--metrics",
        help="comma-separated metrics to show, in this order; glob patterns allowed (e.g. val/loss,gen/*)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Write the report and print its table; 2 with one ``error:`` line when there is no sweep.

    Returns the exit status instead of exiting, so the sweeper can call it in-process.
    """
    args = _parser().parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    command = ["pretrainlab-compare", args.sweep_dir]
    command += ["--out", args.out] if args.out else []
    command += ["--metrics", args.metrics] if args.metrics else []
    try:
        report = make_report(args.sweep_dir, args.out, metrics, shlex.join(command))
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot write the report: {err}", file=sys.stderr)
        return 2
    for pattern in report.unmatched:
        print(f"warning: --metrics {pattern!r} matches no metric", file=sys.stderr)
    _print_table(report.table, Path(args.sweep_dir).resolve().name)
    for path in report.files.values():
        print(f"wrote {path}")
    return 0


def _print_table(df: pd.DataFrame, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    headers, cells, marks = display_cells(df)
    numeric = {*FIXED, *df.attrs.get("metrics", []), "seeds"}
    table = Table(title=f"sweep {title}")
    for header in headers:
        table.add_column(header, justify="right" if header in numeric else "left")
    styles = {"ok": "green", "failed": "red", "missing": "magenta", "skipped": "yellow"}
    for position, line in enumerate(cells):
        styled = []
        for column, text in zip(headers, line, strict=True):
            if column == "status":
                styled.append(f"[{styles.get(text, 'white')}]{text}[/]")
            elif position in marks.get(column, ()):
                styled.append(f"[bold]{_rich_escape(text)}[/]")
            elif text == "n/a":
                styled.append("[dim]n/a[/]")
            else:
                styled.append(_rich_escape(text))
        table.add_row(*styled)
    # Never squeeze a column to a few characters: a line too long for the terminal wraps instead.
    needed = sum(max([len(h), *(len(c[i]) for c in cells)]) + 3 for i, h in enumerate(headers)) + 1
    console = Console()
    console.width = max(console.width, needed)
    console.print(table)


def _rich_escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


if __name__ == "__main__":
    sys.exit(main())

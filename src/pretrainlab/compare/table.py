"""One row per setting: runs merged over seeds, each baseline directly under its trained row(s).

``build_table`` gives the raw numbers (what report.csv holds) and, in ``df.attrs``, what the
display needs: which columns are swept settings and which metrics, which rows are baselines,
each row's short label, and the paired tests of every pair of rows for the metrics that have
per-item scores (``ranking`` reads them to mark the best values).
"""

from __future__ import annotations

import fnmatch
import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from pretrainlab.compare.collect import ABSENT, FIXED, Row, is_baseline, is_number, objective_of
from pretrainlab.compare.ranking import pair_tests

STRIPPABLE = ("objective.", "model.")
BASELINE = "baseline"
# Setting, not measurement: the seed spread of these is not shown.
SET_NOT_MEASURED = ("params", "tokens_seen")


# -- seeds --------------------------------------------------------------------------------
def group_by_seed(rows: Sequence[Row]) -> list[Row]:
    """Merge rows that differ only by ``seed`` into one row of means (sample std beside).

    Only finished (ok) and skipped rows merge; every failed or missing job keeps a row of its
    own so its error stays visible. A baseline never merges with a trained run. A merged row
    has the input keys (``metrics`` now means, ``overrides`` without ``seed``) plus ``std``
    (key -> sample std, None for a single run), ``n``, ``seeds``, ``dirs``, ``baseline`` and
    ``members`` (the input rows).
    """
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(_group_key(row, index), []).append(row)
    return [_merge(members) for members in groups.values()]


def _group_key(row: Row, index: int) -> tuple[Any, ...]:
    setting = tuple(sorted((k, repr(v)) for k, v in row["overrides"].items() if k != "seed"))
    if row["status"] in ("ok", "skipped") and row["overrides"]:
        return (row["status"], is_baseline(row), setting)
    return (row["status"], is_baseline(row), setting, index)


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
        "baseline": is_baseline(first),
        "members": list(members),
    }


def baselines_under_pretrained(groups: Sequence[Row]) -> list[Row]:
    """Each baseline row moved directly under the trained row(s) it is the baseline of.

    Its match: the trained rows with the same swept values (seed and ``baseline`` aside), else
    the trained rows of the same objective; a baseline matching none goes to the end.
    """
    order = [g for g in groups if not g["baseline"]]
    for group in (g for g in groups if g["baseline"]):
        partners = {id(p) for p in pretrained_of(group, order)}
        matches = [i for i, other in enumerate(order) if id(other) in partners]
        if not matches:
            order.append(group)
            continue
        place = matches[-1] + 1
        while place < len(order) and order[place]["baseline"]:
            place += 1
        order.insert(place, group)
    return order


def pretrained_of(baseline: Row, groups: Sequence[Row]) -> list[Row]:
    """The trained rows a baseline row stands beside: same settings, else same objective."""
    trained = [g for g in groups if not g["baseline"]]
    same = [g for g in trained if _setting(g) == _setting(baseline)]
    return same or [g for g in trained if objective_of(g) == objective_of(baseline)]


def _setting(group: Row) -> dict[str, str]:
    return {k: repr(v) for k, v in group["overrides"].items() if k not in ("seed", BASELINE)}


# -- the table ----------------------------------------------------------------------------
def swept_keys(rows: Sequence[Row]) -> list[str]:
    """Override keys whose value is not the same in every row that has overrides."""
    known = [r["overrides"] for r in rows if r["overrides"]]
    keys = list(dict.fromkeys(k for o in known for k in o))
    return [k for k in keys if len({repr(o.get(k, ABSENT)) for o in known}) > 1]


def varied_keys(rows: Sequence[Row], keys: Sequence[str]) -> list[str]:
    """The swept keys whose effective value differs between the rows it applies to: a row
    without the override has config.yaml's value, where null means "does not apply" (causal's
    mask probability), so 4 objectives at one mask probability vary only in objective."""
    known = [r for r in rows if r["overrides"]]
    values = {k: {repr(r["overrides"].get(k, r["config"].get(k, ABSENT))) for r in known} for k in keys}
    return [k for k in keys if len(values[k] - {repr(None)}) > 1]


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
    """One row per setting (seeds merged, baselines under their objective): report.csv's numbers.

    Columns: ``job``, the swept values (``baseline`` too when some rows are baselines),
    ``seeds`` (when seeds vary), ``status``, ``params``, ``tokens_seen``, ``wall_time_s``, the
    metrics (the seed spread beside each when seeds were merged, named in
    ``attrs["std_columns"]``), then ``error`` and ``note`` when any row has one. Null metrics
    ("not applicable") are NaN like blanks; ``attrs["not_applicable"]`` lists them per column.
    ``attrs`` also holds ``swept``/``metrics`` (column groups), ``varied`` (the swept settings
    whose effective values differ where they apply), ``baseline_rows``, ``baseline_of``
    (baseline row -> its trained rows), ``objective_column``, ``labels`` (short row names) and
    ``significance`` (the paired test of every pair of finished rows, per metric with items).
    """
    grouped = baselines_under_pretrained(group_by_seed(rows))
    keys = swept_keys(rows)
    seeds_vary = "seed" in keys
    keys = [k for k in keys if k != "seed"]
    if any(g["baseline"] for g in grouped) and BASELINE not in keys:
        keys.append(BASELINE)  # a baseline set in the config, not swept: still say which row it is
    columns = metric_keys(rows, metrics)
    names = display_names(keys, taken=("job", "seeds", "status", "error", "note", *FIXED, *columns))
    with_std = any(g["n"] > 1 and g["status"] == "ok" for g in grouped)
    numeric = [*FIXED, *columns]
    std_columns = _std_columns(numeric, columns) if with_std else {}
    records: list[dict[str, Any]] = []
    not_applicable: dict[str, list[int]] = {}
    for position, group in enumerate(grouped):
        record: dict[str, Any] = {"job": group["dir"] or ""}
        # A job folder without .hydra/overrides.yaml: its settings are unknown, not the defaults.
        record.update({names[k]: _setting_value(group, k) for k in keys})
        if seeds_vary:
            record["seeds"] = group["n"]
        record["status"] = group["status"]
        record.update(_numbers(group, numeric, std_columns))
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
    labels = _labels(grouped, [k for k in keys if k != BASELINE], names)
    df.attrs.update(
        swept=[names[k] for k in keys],
        varied=[names[k] for k in varied_keys(rows, keys) if k != BASELINE],
        metrics=columns,
        not_applicable=not_applicable,
        std_columns=std_columns,
        baseline_rows=[i for i, g in enumerate(grouped) if g["baseline"]],
        baseline_of=_baseline_of(grouped),
        objective_column=names.get("objective"),
        baseline_column=names.get(BASELINE),
        labels=labels,
        significance=pair_tests(grouped, columns, labels),
    )
    return df


def _baseline_of(groups: Sequence[Row]) -> dict[int, list[int]]:
    """Finished baseline row -> the finished trained rows it is the baseline of (positions)."""
    position = {id(g): i for i, g in enumerate(groups)}
    return {
        position[id(g)]: [position[id(p)] for p in pretrained_of(g, groups) if p["status"] == "ok"]
        for g in groups
        if g["baseline"] and g["status"] == "ok"
    }


def _setting_value(group: Row, key: str) -> Any:
    if key == BASELINE and BASELINE not in group["overrides"]:
        return group["baseline"]
    return group["overrides"].get(key) if group["overrides"] else ""


def _std_columns(numeric: Sequence[str], metrics: Sequence[str]) -> dict[str, str]:
    """Column -> its seed-spread column: ``<col>_std``, or ``<col>_seed_std`` where a metric is
    already called ``<col>_std`` (``finetune/accuracy_std``: a spread within each run)."""
    taken = set(metrics)
    return {
        c: f"{c}_seed_std" if f"{c}_std" in taken else f"{c}_std"
        for c in numeric
        if c not in SET_NOT_MEASURED and not c.endswith("_std")
    }


def _numbers(group: Row, columns: Sequence[str], std_columns: dict[str, str]) -> dict[str, float]:
    """The row's numeric cells (NaN where blank); only finished jobs have numbers."""
    ok = group["status"] == "ok"
    cells: dict[str, float] = {}
    for column in columns:
        value = group["metrics"].get(column) if ok else None
        cells[column] = value if is_number(value) else math.nan
        if column in std_columns:
            std = group["std"].get(column) if ok else None
            cells[std_columns[column]] = std if std is not None else math.nan
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


def _labels(groups: Sequence[Row], keys: Sequence[str], names: dict[str, str]) -> list[str]:
    """A short name per row for the significance tables: the swept values it set (``masked``,
    ``masked, mask_probability=0.3``), ``(no pretraining)`` after a baseline's."""
    any_baseline = any(g["baseline"] for g in groups)
    labels = []
    for group in groups:
        values = group["overrides"]
        # A key the row did not override (causal's mask probability) says nothing about it.
        text = ", ".join(
            swept_text(values[k]) if k == "objective" else f"{names[k]}={swept_text(values[k])}"
            for k in keys
            if values.get(k) is not None
        )
        if group["baseline"]:
            text = f"{text} (no pretraining)" if text else "no pretraining"
        elif not text:
            text = "pretrained" if any_baseline else f"job {group['dir']}"
        labels.append(text)
    return [
        f"{label} [job {group['dir']}]" if labels.count(label) > 1 else label
        for label, group in zip(labels, groups, strict=True)
    ]


def swept_text(value: Any) -> str:
    """A swept setting as a cell shows it; ``default`` where the job did not override the key."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "default"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).lower() if isinstance(value, bool) else str(value)

"""The report of a sweep: report.md, report.csv, significance.csv and the plots, and the
``pretrainlab-compare`` command that writes them and prints the table."""

from __future__ import annotations

import argparse
import fnmatch
import shlex
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pretrainlab.compare.collect import EVAL_DIR, CompareError, Row, collect
from pretrainlab.compare.formatting import (
    ALL,
    display_cells,
    legend,
    md_escape,
    numeric_headers,
    seeds_note,
    to_csv_frame,
    to_markdown,
    view_of,
)
from pretrainlab.compare.plots import (
    PLOTS,
    plot_generation,
    plot_mask_probability,
    plot_val_loss,
    plotted_metrics,
)
from pretrainlab.compare.ranking import paired_columns
from pretrainlab.compare.significance import SIGNIFICANCE_CSV, significance_frame, significance_section
from pretrainlab.compare.table import build_table, display_names, metric_keys, swept_keys

SEED_NOTE = (
    "Runs that differ only in `seed` are merged into one row: each value is the mean ± the sample "
    "standard deviation over the `seeds` runs of that row. Two rows are only counted as different when "
    "their [mean − std, mean + std] ranges do not overlap, so **bold** marks the best value of a column "
    "and every value whose range overlaps the best one's (a tie within the seed noise). Lower is better "
    "for loss, perplexity, bits per character, repetition and wall time; higher for distinct-n, accuracy, "
    "exact match, F1 and throughput; other columns (params, tokens, steps, length, spreads `*_std`, "
    "evaluation timings `eval/*`) are not marked. A column where every row ties with the best (all "
    "values equal, e.g. all 0) has no bold: no row is clearly better there."
)
PAIRED_NOTE = (
    "Columns with per-item scores ({columns}) are marked by a paired test instead: **bold** is the best "
    "value and every row whose paired bootstrap interval of the difference to the best row includes 0 "
    "(see Significance below); the seed-range rule applies to the other columns."
)
BASELINE_NOTE = (
    "`(no pretraining)` rows (`baseline=true`): the same model with random weights, evaluated without "
    "training, under the row(s) it is the baseline of. They show what pretraining adds and are never "
    "marked best."
)
CELL_NOTE = (
    "`n/a`: the metric does not apply to that job (its value is null); a blank cell: not measured, "
    "or the job failed, is missing or was skipped."
)
PLOT_TITLES = {
    PLOTS[0]: "Validation loss against tokens seen",
    PLOTS[1]: "Metrics against mask probability",
    PLOTS[2]: "Generation metrics by decoding strategy",
}
PLOT_REASONS = {
    PLOTS[0]: "no job has a validation curve (curve.csv)",
    PLOTS[1]: "the mask probability was not swept (no objective ran at two values or more), or no metric",
    PLOTS[2]: "the decoding strategy was not swept (fewer than two with generation metrics gen/*)",
}
COMPACT_NOTE = (
    "The table shows the swept settings and the headline metrics; every column is in "
    "[report.csv](report.csv), and `--metrics all` shows them all here."
)
WIDTH = 120  # the compact table's printed width at most


@dataclass
class Report:
    """What one report run produced, for printing."""

    table: pd.DataFrame
    view: pd.DataFrame | None = None
    files: dict[str, Path] = field(default_factory=dict)
    skipped_plots: dict[str, str] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)


def write_report(
    sweep_dir: str | Path, out_dir: str | Path | None = None, metrics: Sequence[str] | None = None
) -> dict[str, Path]:
    """Write report.md, report.csv, significance.csv (when runs kept item scores) and the plots
    into ``out_dir`` (default: the sweep folder).

    ``metrics``: None for report.md's compact table, ``["all"]`` for every column, or the metrics
    (globs allowed) to show; report.csv holds every column whatever it says.

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
    table = build_table(rows)
    report = Report(table, view_of(table, metrics))
    chosen = metrics is not None and ALL not in metrics
    if chosen:
        known = metric_keys(rows)
        report.unmatched = [p for p in metrics if not any(fnmatch.fnmatchcase(k, p) for k in known)]
    plotted = metric_keys(rows, metrics if chosen else None)
    _write_plots(rows, plotted, out, selected=chosen, report=report)
    csv_path = out / "report.csv"
    to_csv_frame(table).to_csv(csv_path, index=False)
    written = {"report.md": out / "report.md", "report.csv": csv_path}
    pairs = significance_frame(table)
    significance_path = out / SIGNIFICANCE_CSV
    if len(pairs):
        pairs.to_csv(significance_path, index=False)
        written[SIGNIFICANCE_CSV] = significance_path
    else:
        significance_path.unlink(missing_ok=True)  # from an earlier report of other runs
    command = command or shlex.join(["pretrainlab-compare", str(sweep_dir)])
    written["report.md"].write_text(_markdown(sweep, command, rows, table, report), encoding="utf-8")
    report.files = {**written, **report.files}
    return report


def _write_plots(rows: Sequence[Row], columns: list[str], out: Path, selected: bool, report: Report) -> None:
    """Draw each plot whose dimension was swept; an old PNG of a plot not drawn now is removed."""
    keys = swept_keys(rows)
    names = display_names([k for k in keys if k != "seed"])
    drawn = {
        PLOTS[0]: lambda p: plot_val_loss(rows, keys, names, p),
        PLOTS[1]: lambda p: plot_mask_probability(rows, plotted_metrics(columns, selected), keys, names, p),
        PLOTS[2]: lambda p: plot_generation(rows, columns, p, keys, names),
    }
    for name, draw in drawn.items():
        path = out / name
        if draw(path):
            report.files[name] = path
        else:
            path.unlink(missing_ok=True)
            report.skipped_plots[name] = PLOT_REASONS[name]


def _row_kinds(rows: Sequence[Row]) -> str:
    """``12 jobs and combinations``, or ``2 jobs and combinations and 10 evaluations of their
    models with other decodings`` when a sweep over decoding trained each model once."""
    evaluations = sum(1 for row in rows if f"/{EVAL_DIR}/" in str(row["dir"]))
    jobs = f"{len(rows) - evaluations} jobs and combinations"
    if not evaluations:
        return jobs
    return f"{jobs} and {evaluations} evaluations of their models with other decodings"


def _markdown(sweep: Path, command: str, rows: Sequence[Row], table: pd.DataFrame, report: Report) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items()) or "none"
    shown = report.view if report.view is not None else table  # its notes and tests: its metrics
    parts = [
        f"# Sweep report: {sweep.resolve().name}",
        f"Produced by `{command}`.",
        f"{_row_kinds(rows)}: {summary}.",
        to_markdown(shown),
        *_view_notes(shown),
        SEED_NOTE,
    ]
    paired = paired_columns(shown)
    if paired:
        parts.append(PAIRED_NOTE.format(columns=", ".join(f"`{c}`" for c in paired)))
    if table.attrs.get("baseline_rows"):
        parts.append(BASELINE_NOTE)
    parts.append(CELL_NOTE)
    section = significance_section(shown)
    if section:
        parts.append(section)
    parts.append("## Plots")
    for name in PLOTS:
        if name in report.files:
            parts.append(f"### {PLOT_TITLES[name]}\n\n![{PLOT_TITLES[name]}]({name})")
        else:
            parts.append(f"### {PLOT_TITLES[name]}\n\nNot drawn: {report.skipped_plots[name]}.")
    return "\n\n".join(parts) + "\n"


def _view_notes(view: pd.DataFrame) -> list[str]:
    """Under a compact table: what its short headers stand for, and the rows' errors and notes."""
    if not view.attrs.get("compact"):
        return []
    names = legend(view, code="`")
    notes = [" ".join(filter(None, [f"Columns: {names}." if names else "", seeds_note(view), COMPACT_NOTE]))]
    lines = view.attrs.get("row_notes", [])
    if lines:
        notes.append("\n".join(f"- {md_escape(line)}" for line in lines))
    return notes


# -- command line -------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrainlab-compare",
        description=(
            "Compare the jobs of a Hydra multirun sweep: report.md, report.csv, significance.csv and plots."
        ),
    )
    parser.add_argument("sweep_dir", help="the sweep folder (holds 0/, 1/, ... and/or sweep.json)")
    parser.add_argument("--out", help="folder for the report files (default: the sweep folder)")
    parser.add_argument(
        "--metrics",
        help=(
            "the metrics to show, comma-separated, in this order, glob patterns allowed (e.g. "
            "val/loss,gen/*), or 'all' for every column; default: a compact table of the headline "
            "metrics (report.csv always has every column)"
        ),
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
    view = report.view if report.view is not None else report.table
    _print_table(view, Path(args.sweep_dir).resolve().name)
    for path in report.files.values():
        print(f"wrote {path}")
    return 0


def _print_table(df: pd.DataFrame, title: str) -> None:
    """The table on the terminal; a compact view at most ``WIDTH`` columns wide, its seed spreads
    on a second line of the cell, its legend and the rows' errors below it."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    compact = bool(df.attrs.get("compact"))
    headers, cells, marks = display_cells(df)
    if compact:
        cells = [[text.replace(" ± ", "\n± ") for text in line] for line in cells]
    numeric = numeric_headers(df)
    table = Table(title=f"sweep {title}")
    text_columns = {"objective", df.attrs.get("objective_column")} - {None}
    for header in headers:
        table.add_column(
            header,
            justify="right" if header in numeric else "left",
            overflow="fold",  # never an ellipsis for a number
            no_wrap=compact and header not in text_columns,  # only names wrap, at their spaces
        )
    styles = {"ok": "green", "failed": "red", "missing": "magenta", "skipped": "yellow"}
    baselines = set(df.attrs.get("baseline_rows", ()))
    for position, line in enumerate(cells):
        styled = []
        for column, text in zip(headers, line, strict=True):
            if column == "status":
                styled.append(f"[{styles.get(text, 'white')}]{text}[/]")
            elif position in marks.get(column, ()):
                styled.append(f"[bold]{escape(text)}[/]")
            elif text == "n/a" or position in baselines:
                styled.append(f"[dim]{escape(text)}[/]")  # a baseline row: the reference, not a contender
            else:
                styled.append(escape(text))
        table.add_row(*styled)
    widths = [
        max(len(part) for text in [h, *(c[i] for c in cells)] for part in text.split("\n"))
        for i, h in enumerate(headers)
    ]
    needed = sum(w + 3 for w in widths) + 1
    console = Console()
    # The full table never squeezes a column to a few characters: a line too long for the
    # terminal wraps instead. The compact one fits WIDTH columns, wrapping a cell if it must.
    console.width = min(needed, WIDTH) if compact else max(console.width, needed)
    console.print(table)
    if compact:
        names = legend(df)
        note = " ".join(filter(None, [f"{names}." if names else "", seeds_note(df)]))
        below = [f"{note} Every column: report.csv, or --metrics all.".lstrip()]
        below += df.attrs.get("row_notes", [])
        for text in filter(None, below):
            print(textwrap.fill(text, WIDTH, subsequent_indent="  "))

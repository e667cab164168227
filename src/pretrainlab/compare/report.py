"""The report of a sweep: report.md, report.csv, significance.csv and the plots, and the
``pretrainlab-compare`` command that writes them and prints the table."""

from __future__ import annotations

import argparse
import fnmatch
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pretrainlab.compare.collect import CompareError, Row, collect
from pretrainlab.compare.formatting import display_cells, numeric_headers, to_csv_frame, to_markdown
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
    "evaluation timings `eval/*`) are not marked."
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
    PLOTS[1]: "no finished job has a mask probability, or no metric to plot",
    PLOTS[2]: "no finished job has generation metrics (gen/*)",
}


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
    """Write report.md, report.csv, significance.csv (when runs kept item scores) and the plots
    into ``out_dir`` (default: the sweep folder).

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


def _write_plots(rows: Sequence[Row], table: pd.DataFrame, out: Path, selected: bool, report: Report) -> None:
    """Draw each plot that has data; an old PNG of a plot with no data now is removed."""
    keys = swept_keys(rows)
    names = display_names([k for k in keys if k != "seed"])
    columns = table.attrs["metrics"]
    drawn = {
        PLOTS[0]: lambda p: plot_val_loss(rows, keys, names, p),
        PLOTS[1]: lambda p: plot_mask_probability(rows, plotted_metrics(columns, selected), keys, names, p),
        PLOTS[2]: lambda p: plot_generation(rows, columns, p),
    }
    for name, draw in drawn.items():
        path = out / name
        if draw(path):
            report.files[name] = path
        else:
            path.unlink(missing_ok=True)
            report.skipped_plots[name] = PLOT_REASONS[name]


def _markdown(sweep: Path, command: str, rows: Sequence[Row], table: pd.DataFrame, report: Report) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items()) or "none"
    parts = [
        f"# Sweep report: {sweep.resolve().name}",
        f"Produced by `{command}`.",
        f"{len(rows)} jobs and combinations: {summary}.",
        to_markdown(table),
        SEED_NOTE,
    ]
    paired = paired_columns(table)
    if paired:
        parts.append(PAIRED_NOTE.format(columns=", ".join(f"`{c}`" for c in paired)))
    if table.attrs.get("baseline_rows"):
        parts.append(BASELINE_NOTE)
    parts.append(CELL_NOTE)
    section = significance_section(table)
    if section:
        parts.append(section)
    parts.append("## Plots")
    for name in PLOTS:
        if name in report.files:
            parts.append(f"### {PLOT_TITLES[name]}\n\n![{PLOT_TITLES[name]}]({name})")
        else:
            parts.append(f"### {PLOT_TITLES[name]}\n\nNot drawn: {report.skipped_plots[name]}.")
    return "\n\n".join(parts) + "\n"


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
    from rich.markup import escape
    from rich.table import Table

    headers, cells, marks = display_cells(df)
    numeric = numeric_headers(df)
    table = Table(title=f"sweep {title}")
    for header in headers:
        table.add_column(header, justify="right" if header in numeric else "left")
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
    # Never squeeze a column to a few characters: a line too long for the terminal wraps instead.
    needed = sum(max([len(h), *(len(c[i]) for c in cells)]) + 3 for i, h in enumerate(headers)) + 1
    console = Console()
    console.width = max(console.width, needed)
    console.print(table)

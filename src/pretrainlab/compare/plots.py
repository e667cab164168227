"""The report's plots: validation loss against tokens, metrics against mask probability, and
generation metrics by decoding strategy. Drawn with Matplotlib's Agg canvas, no pyplot.

A plot along a setting is drawn only when the sweep varied it: the mask-probability plot when
some objective ran at two mask probabilities or more, the decoding bars when two strategies or
more have generation metrics. Lines and bars take their objective's colour while each objective
has one of them; once one has several (seeds, other settings), each gets its own (``run_colours``).

Baseline jobs (no pretraining) have one validation point, at step 0: the loss plot draws each
as a single ``X`` marker at 0 tokens (the loss pretraining starts from), not as a line. The
mask-probability plot draws a baseline as its own dotted series, ``(no pretraining)``; the
generation bars leave baselines out (a bar is the mean over an objective's trained jobs).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pretrainlab.compare.collect import (
    Row,
    decoding_of,
    is_baseline,
    is_number,
    mask_probability_of,
    objective_of,
)
from pretrainlab.compare.table import BASELINE, swept_text

PLOTS = ("val_loss_vs_tokens.png", "metrics_vs_mask_probability.png", "generation_by_decoding.png")
# Known objectives keep their colour from one report to the next.
OBJECTIVE_COLOURS = {"masked": "#1f77b4", "causal": "#d62728", "seq2seq": "#2ca02c", "prefix": "#9467bd"}
SPARE_COLOURS = ("#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
LIGHT_COLOURS = ("#aec7e8", "#ff9896", "#98df8a", "#c5b0d5", "#ffbb78", "#c49c94", "#f7b6d2", "#dbdb8d")
RUN_PALETTE = (*OBJECTIVE_COLOURS.values(), *SPARE_COLOURS, *LIGHT_COLOURS)
NO_PRETRAINING = " (no pretraining)"
LEGEND_INSIDE = 8  # legend entries that fit inside a panel without hiding its lines


def _colours(objectives: Iterable[str]) -> dict[str, str]:
    spare = iter(SPARE_COLOURS * 4)
    return {o: OBJECTIVE_COLOURS.get(o) or next(spare, "#000000") for o in dict.fromkeys(objectives)}


def run_colours(items: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(objective, label) -> colour of each line or bar series of a plot.

    While every objective has one trained series, the objective's colour (stable from one report
    to the next; a baseline shares it, told apart by its marker). Once an objective has several
    (seeds, other settings), same-coloured lines could not be told apart: each series its own.
    """
    items = list(dict.fromkeys(items))
    trained = Counter(objective for objective, label in items if not label.endswith(NO_PRETRAINING))
    if all(n <= 1 for n in trained.values()):
        colours = _colours(objective for objective, _ in items)
        return {item: colours[item[0]] for item in items}
    return {item: RUN_PALETTE[i % len(RUN_PALETTE)] for i, item in enumerate(items)}


def _swept(done: Sequence[Row], value_of: Any) -> bool:
    """Whether some objective ran at two or more values of a setting (None: does not apply)."""
    values: dict[str, set[Any]] = {}
    for row in done:
        value = value_of(row)
        if value is not None:
            values.setdefault(objective_of(row), set()).add(value)
    return any(len(v) >= 2 for v in values.values())


def _label(row: Row, keys: Sequence[str], names: dict[str, str]) -> str:
    """A job's swept settings, its objective first by name (``causal, seed=2``)."""
    parts = [
        swept_text(value) if k == "objective" else f"{names.get(k, k)}={swept_text(value)}"
        for k in keys
        if k != BASELINE and (value := row["overrides"].get(k)) is not None
    ]
    text = ", ".join(parts) or f"job {row['dir']}"
    return text + NO_PRETRAINING if is_baseline(row) else text


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


def _legend(fig: Any, ax: Any) -> None:
    """A short legend inside the (first) panel; a long one right of the panels, not over the lines."""
    handles, labels = ax.get_legend_handles_labels()
    if len(handles) <= LEGEND_INSIDE:
        ax.legend(fontsize="x-small")
    else:
        columns = math.ceil(len(handles) / 30)
        fig.legend(handles, labels, loc="outside right upper", fontsize="x-small", ncols=columns)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def plot_val_loss(rows: Sequence[Row], keys: Sequence[str], names: dict[str, str], path: Path) -> bool:
    """Validation loss against tokens seen, one line per job, coloured by objective (by job
    where an objective has several: ``run_colours``), labelled by its swept settings.

    A baseline job trained nothing: its one point (step 0) is an ``X`` marker, not a line.
    """
    jobs = [r for r in rows if any(t is not None for _, t, _ in r["curve"])]
    if not jobs:
        return False
    labels = [_label(row, keys, names) for row in jobs]
    colours = run_colours((objective_of(r), label) for r, label in zip(jobs, labels, strict=True))
    wide = len(jobs) > LEGEND_INSIDE  # room for the legend right of the plot
    fig, (ax,) = _figure(1, width=11.5 if wide else 7.5, height=max(4.8, 0.16 * min(len(jobs), 30)))
    for row, label in zip(jobs, labels, strict=True):
        colour = colours[objective_of(row), label]
        points = [(t, loss) for _, t, loss in row["curve"] if t is not None]
        label += "" if row["status"] == "ok" else f" ({row['status']})"
        if is_baseline(row):
            xs, ys = [t for t, _ in points], [loss for _, loss in points]
            ax.scatter(xs, ys, marker="X", s=60, color=colour, label=label, zorder=3)
            continue
        ax.plot(
            [t for t, _ in points],
            [loss for _, loss in points],
            marker=".",
            color=colour,
            linestyle="-" if row["status"] == "ok" else ":",
            label=label,
        )
    ax.set(xlabel="tokens seen", ylabel="validation loss", title="Validation loss against tokens seen")
    ax.grid(alpha=0.3)
    _legend(fig, ax)
    fig.savefig(path, dpi=100)
    return True


def plot_mask_probability(
    rows: Sequence[Row], metrics: Sequence[str], keys: Sequence[str], names: dict[str, str], path: Path
) -> bool:
    """Each metric against mask_probability, one line per objective (and other swept setting).

    Drawn only when the mask probability was swept (some objective ran at two values or more);
    False otherwise. Seeds are averaged (error bars: std). An objective without a mask
    probability (causal) is a dashed horizontal line: one value, comparable with every rate.
    """
    done = [r for r in rows if r["status"] == "ok"]
    if not _swept(done, mask_probability_of):
        return False
    panels = [m for m in metrics if any(is_number(r["metrics"].get(m)) for r in done)]
    if not panels:
        return False
    others = [k for k in keys if k not in ("seed", "objective") and not k.endswith("mask_probability")]
    series = {metric: _series(done, metric, others, names) for metric in panels}
    colours = run_colours(key for lines in series.values() for key in lines)
    fig, axes = _figure(len(panels))
    for ax, metric in zip(axes, panels, strict=True):
        for key, points in series[metric].items():
            _draw_series(ax, points, colours[key], key[1])
        ax.set(xlabel="mask_probability", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
    _legend(fig, axes[0])
    fig.savefig(path, dpi=100)
    return True


def _series(
    done: Sequence[Row], metric: str, others: Sequence[str], names: dict[str, str]
) -> dict[tuple[str, str], dict[float | None, list[float]]]:
    """(objective, label) -> mask probability -> the metric's values (one per seed).

    A baseline's label ends ``(no pretraining)``: its own series, never averaged with training.
    """
    series: dict[tuple[str, str], dict[float | None, list[float]]] = {}
    for row in done:
        if is_number(row["metrics"].get(metric)):
            settings = [
                f"{names.get(k, k)}={swept_text(row['overrides'].get(k))}" for k in others if k != BASELINE
            ]
            label = ", ".join([objective_of(row), *settings]) + (NO_PRETRAINING if is_baseline(row) else "")
            points = series.setdefault((objective_of(row), label), {})
            points.setdefault(mask_probability_of(row), []).append(float(row["metrics"][metric]))
    return series


def _draw_series(ax: Any, points: dict[float | None, list[float]], colour: str, label: str) -> None:
    """A line with error bars, or a dashed level for an objective that never masks.

    Baselines are dotted, with hollow markers: the level pretraining starts from.
    """
    xs = sorted(x for x in points if x is not None)
    baseline = label.endswith(NO_PRETRAINING)
    if xs:
        stats = [_mean_std(points[x]) for x in xs]
        means, stds = [m for m, _ in stats], [s for _, s in stats]
        style = {"linestyle": ":", "markerfacecolor": "none"} if baseline else {}
        ax.errorbar(xs, means, yerr=stds, marker="o", color=colour, label=label, capsize=3, **style)
    elif None in points:
        level = _mean_std(points[None])[0]
        ax.axhline(level, color=colour, linestyle=":" if baseline else "--", label=f"{label} (no masking)")


def plot_generation(
    rows: Sequence[Row],
    metrics: Sequence[str],
    path: Path,
    keys: Sequence[str] = (),
    names: dict[str, str] | None = None,
) -> bool:
    """Grouped bars: each gen/* metric per decoding strategy, one bar per objective (and other
    swept setting among ``keys``).

    Drawn only when the decoding was swept (two strategies or more have generation metrics);
    False otherwise. A bar is the mean over the seeds of its trained jobs (baselines left out);
    its error bar is their std.
    """
    done = [r for r in rows if r["status"] == "ok" and not is_baseline(r)]
    panels = [
        m for m in metrics if m.startswith("gen/") and any(is_number(r["metrics"].get(m)) for r in done)
    ]
    measured = [r for r in done if any(is_number(r["metrics"].get(m)) for m in panels)]
    decodings = list(dict.fromkeys(decoding_of(r) for r in measured))
    if len(decodings) < 2:
        return False
    others = [k for k in keys if k not in ("seed", "objective", BASELINE) and not k.startswith("decoding")]
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in measured:
        groups.setdefault(_bar_key(row, others, names or {}), []).append(row)
    colours = run_colours(groups)
    width = 0.8 / len(groups)
    fig, axes = _figure(len(panels))
    for ax, metric in zip(axes, panels, strict=True):
        for index, (key, members) in enumerate(groups.items()):
            bars = _bars(members, metric, decodings)
            xs = [position - 0.4 + width * (index + 0.5) for position, _, _ in bars]
            heights, errors = [m for _, m, _ in bars], [s for _, _, s in bars]
            if bars:
                ax.bar(xs, heights, width, yerr=errors, color=colours[key], label=key[1], capsize=2)
        ax.set_xticks(range(len(decodings)), decodings)
        ax.set(xlabel="decoding", ylabel=metric, title=metric)
        ax.grid(axis="y", alpha=0.3)
    _legend(fig, axes[0])
    fig.savefig(path, dpi=100)
    return True


def _bar_key(row: Row, others: Sequence[str], names: dict[str, str]) -> tuple[str, str]:
    """(objective, label) of the bars a job's values go into: its objective and other settings."""
    values = {k: row["overrides"].get(k) for k in others}
    settings = [f"{names.get(k, k)}={swept_text(v)}" for k, v in values.items() if v is not None]
    return objective_of(row), ", ".join([objective_of(row), *settings])


def _bars(members: Sequence[Row], metric: str, decodings: Sequence[str]) -> list[tuple[int, float, float]]:
    """(decoding position, mean, std) of one series' bars; no bar where it has no value."""
    bars = []
    for position, decoding in enumerate(decodings):
        values = [
            float(r["metrics"][metric])
            for r in members
            if decoding_of(r) == decoding and is_number(r["metrics"].get(metric))
        ]
        if values:
            bars.append((position, *_mean_std(values)))
    return bars


def plotted_metrics(columns: Sequence[str], selected: bool) -> list[str]:
    """What the mask-probability plot shows: val/loss and every evaluation metric (not the
    evaluation's stage timings ``eval/*_s`` or spreads ``*_std``), unless ``--metrics`` chose."""
    if selected:
        return list(columns)
    return [
        c
        for c in columns
        if c == "val/loss"
        or ("/" in c and c.split("/", 1)[0] not in ("val", "train", "eval") and not c.endswith("_std"))
    ]

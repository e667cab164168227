"""The report's plots: validation loss against tokens, metrics against mask probability, and
generation metrics by decoding strategy. Drawn with Matplotlib's Agg canvas, no pyplot.

Baseline jobs (no pretraining) have one validation point, at step 0: the loss plot draws each
as a single ``X`` marker at 0 tokens (the loss pretraining starts from), not as a line. The
mask-probability plot draws a baseline as its own dotted series, ``(no pretraining)``; the
generation bars leave baselines out (a bar is the mean over an objective's trained jobs).
"""

from __future__ import annotations

import math
import statistics
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
NO_PRETRAINING = " (no pretraining)"


def _colours(objectives: Iterable[str]) -> dict[str, str]:
    spare = iter(SPARE_COLOURS * 4)
    return {o: OBJECTIVE_COLOURS.get(o) or next(spare, "#000000") for o in dict.fromkeys(objectives)}


def _label(row: Row, keys: Sequence[str], names: dict[str, str]) -> str:
    parts = [f"{names.get(k, k)}={swept_text(row['overrides'].get(k))}" for k in keys if k != BASELINE]
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


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def plot_val_loss(rows: Sequence[Row], keys: Sequence[str], names: dict[str, str], path: Path) -> bool:
    """Validation loss against tokens seen, one line per job, coloured by objective.

    A baseline job trained nothing: its one point (step 0) is an ``X`` marker, not a line.
    """
    jobs = [r for r in rows if any(t is not None for _, t, _ in r["curve"])]
    if not jobs:
        return False
    colours = _colours(objective_of(r) for r in jobs)
    fig, (ax,) = _figure(1, width=7.5, height=4.8)
    for row in jobs:
        points = [(t, loss) for _, t, loss in row["curve"] if t is not None]
        label = _label(row, keys, names) + ("" if row["status"] == "ok" else f" ({row['status']})")
        if is_baseline(row):
            xs, ys = [t for t, _ in points], [loss for _, loss in points]
            ax.scatter(xs, ys, marker="X", s=60, color=colours[objective_of(row)], label=label, zorder=3)
            continue
        ax.plot(
            [t for t, _ in points],
            [loss for _, loss in points],
            marker=".",
            color=colours[objective_of(row)],
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
    if not any(mask_probability_of(r) is not None for r in done):
        return False
    panels = [m for m in metrics if any(is_number(r["metrics"].get(m)) for r in done)]
    if not panels:
        return False
    others = [k for k in keys if k not in ("seed", "objective") and not k.endswith("mask_probability")]
    colours = _colours(objective_of(r) for r in done)
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


def plot_generation(rows: Sequence[Row], metrics: Sequence[str], path: Path) -> bool:
    """Grouped bars: each gen/* metric per decoding strategy, one bar per objective.

    A bar is the mean over the objective's trained jobs with that decoding (seeds and any
    other swept setting; baselines left out); its error bar is their std.
    """
    done = [r for r in rows if r["status"] == "ok" and not is_baseline(r)]
    panels = [
        m for m in metrics if m.startswith("gen/") and any(is_number(r["metrics"].get(m)) for r in done)
    ]
    if not panels:
        return False
    decodings = list(dict.fromkeys(decoding_of(r) for r in done))
    objectives = list(dict.fromkeys(objective_of(r) for r in done))
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
            if objective_of(r) == objective
            and decoding_of(r) == decoding
            and is_number(r["metrics"].get(metric))
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

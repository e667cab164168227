"""``pretrainlab-compare``: one report (table, CSV, significance, plots) for a Hydra multirun sweep.

A sweep is only useful if its jobs can be read side by side. This reads every job folder of
a sweep (and the combinations our sweeper skipped as duplicates), puts one row per setting
in a table (runs that differ only by ``seed`` merged into mean ± std, a no-pretraining
baseline under its objective), marks the best value of each metric and the rows tied with it
(by a paired bootstrap over the evaluation items where the runs kept per-item scores, by the
seed ranges otherwise), and draws the plots that answer "which objective, at which masking
rate, with which decoding".

Layers, each importing only the ones before it: ``collect`` (reading a sweep folder),
``statistics`` (the paired bootstrap, pure numpy), ``ranking`` (best rows and ties),
``table`` (rows grouped by seed), ``formatting`` (the compact or full view, markdown/CSV),
``plots`` (only along the settings a sweep varied), ``significance``
(significance.csv and the report section), ``report`` (the files and the command). The pure
pieces are public so notebooks and tests can reuse them without writing files.
"""

from __future__ import annotations

from pretrainlab.compare.collect import (
    CONFIG_KEYS,
    ERROR_WIDTH,
    FIXED,
    CompareError,
    Row,
    collect,
    first_line,
    is_baseline,
    is_number,
)
from pretrainlab.compare.formatting import (
    ALL,
    HEADLINE,
    compact_view,
    display_cells,
    format_value,
    to_csv_frame,
    to_markdown,
    view_of,
)
from pretrainlab.compare.plots import (
    OBJECTIVE_COLOURS,
    PLOTS,
    SPARE_COLOURS,
    plot_generation,
    plot_mask_probability,
    plot_val_loss,
    run_colours,
)
from pretrainlab.compare.plots import (
    _series as _series,  # tests/test_sweep_launch.py reads the plot's series
)
from pretrainlab.compare.ranking import (
    HIGHER_IS_BETTER,
    LOWER_IS_BETTER,
    Best,
    best_of,
    best_rows,
    direction,
    paired_columns,
    ranges_overlap,
)
from pretrainlab.compare.report import CELL_NOTE, SEED_NOTE, Report, main, make_report, write_report
from pretrainlab.compare.significance import significance_frame, significance_section
from pretrainlab.compare.statistics import PairedResult, bootstrap_pairs, paired_bootstrap
from pretrainlab.compare.table import (
    STRIPPABLE,
    build_table,
    display_names,
    group_by_seed,
    metric_keys,
    swept_keys,
)

__all__ = [
    "ALL",
    "CELL_NOTE",
    "CONFIG_KEYS",
    "ERROR_WIDTH",
    "FIXED",
    "HEADLINE",
    "HIGHER_IS_BETTER",
    "LOWER_IS_BETTER",
    "OBJECTIVE_COLOURS",
    "PLOTS",
    "SEED_NOTE",
    "SPARE_COLOURS",
    "STRIPPABLE",
    "Best",
    "CompareError",
    "PairedResult",
    "Report",
    "Row",
    "best_of",
    "best_rows",
    "bootstrap_pairs",
    "build_table",
    "collect",
    "compact_view",
    "direction",
    "display_cells",
    "display_names",
    "first_line",
    "format_value",
    "group_by_seed",
    "is_baseline",
    "is_number",
    "main",
    "make_report",
    "metric_keys",
    "paired_bootstrap",
    "paired_columns",
    "plot_generation",
    "plot_mask_probability",
    "plot_val_loss",
    "ranges_overlap",
    "run_colours",
    "significance_frame",
    "significance_section",
    "swept_keys",
    "to_csv_frame",
    "to_markdown",
    "view_of",
    "write_report",
]

"""A report one can read: the compact table by default, bold only for real differences, and plots
only for the settings a sweep varied.

Sweeps are written by hand (the run/sweep folder contract, as in test_compare.py): no training.
"""

from __future__ import annotations

import json
import math
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pretrainlab.compare import build_table, collect, main, to_markdown, write_report

OBJECTIVES = ("masked", "causal", "seq2seq", "prefix")
WIDTH = 120


def write_job(sweep: Path, number: int, overrides: list[str], config: dict[str, Any], metrics: dict) -> None:
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides), encoding="utf-8")
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (job / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    curve = ["step,tokens_seen,val_loss", "0,0,8.5", f"10,20480,{metrics['val/loss'] + 0.5}"]
    (job / "curve.csv").write_text("\n".join(curve) + "\n", encoding="utf-8")


def many_metrics(objective: str, score: float, baseline: bool, decoding: str = "greedy") -> dict[str, Any]:
    """A finished job's metrics.json with every metric a study writes (~35 keys)."""
    metrics: dict[str, Any] = {
        "status": "ok", "objective": objective, "baseline": baseline, "decoding": decoding,
        "params": 1119845, "params_non_embedding": 413568, "tokens_seen": 0 if baseline else 12288000,
        "steps": 0 if baseline else 6000, "wall_time_s": 900.0 + 100 * score, "train/flops": 3.0e13,
        "val/loss": 8.5 - score, "val/ppl": math.exp(8.5 - score), "val/loss_initial": 8.5,
        "train/loss": None if baseline else 8.4 - score,
        "train/tokens_per_s": None if baseline else 5000.0 + 1000 * score,
        "continuation/bpc": None if objective == "masked" else 12.0 - score,
        "probe/accuracy": 0.6 + score / 50, "finetune/accuracy": 0.7 + score / 100,
        "finetune/accuracy_std": 0.01,
    }  # fmt: skip
    for k in (1, 2, 4):
        metrics[f"cloze/exact_match_k{k}"] = score / (10 * k)
        metrics[f"cloze/token_accuracy_k{k}"] = score / (8 * k)
    for stage in ("cloze", "continuation", "probe", "finetune", "generation"):
        metrics[f"eval/{stage}_s"] = 3.0 + score
    if objective != "masked":
        metrics.update({
            "gen/distinct_1": 0.1 + score / 20, "gen/distinct_2": 0.2 + score / 20,
            "gen/repetition_4": 0.9 - score / 10, "gen/mean_length": 40.0, "gen/self_ppl": 6.0 + score,
        })  # fmt: skip
    return metrics


def make_sweep(
    sweep: Path,
    masks: tuple[float, ...] = (0.15,),
    seeds: tuple[int, ...] = (1,),
    decodings: tuple[str, ...] = ("greedy",),
) -> Path:
    """Every objective x its no-pretraining baseline x ``masks`` x ``seeds`` x ``decodings``."""
    number = 0
    for objective in OBJECTIVES:
        for baseline in (False, True):
            for mask in masks if objective != "causal" else (None,):
                for seed in seeds:
                    for decoding in decodings:
                        score = (
                            0.0 if baseline else 1.0 + OBJECTIVES.index(objective) + (mask or 0) + seed / 10
                        )
                        overrides = [f"objective={objective}", f"baseline={str(baseline).lower()}"]
                        overrides += [f"objective.mask_probability={mask}"] if mask is not None else []
                        overrides += [f"seed={seed}"] if len(seeds) > 1 else []
                        overrides += [f"decoding={decoding}"] if len(decodings) > 1 else []
                        config = {
                            "objective": {"name": objective, "mask_probability": mask},
                            "decoding": {"name": decoding},
                            "seed": seed,
                            "baseline": baseline,
                        }
                        write_job(
                            sweep,
                            number,
                            overrides,
                            config,
                            many_metrics(objective, score, baseline, decoding),
                        )
                        number += 1
    return sweep


def run(sweep: Path, out: Path, *extra: str) -> list[str]:
    """The command's printed lines, the ``wrote`` lines (paths) left out."""
    stdout = StringIO()
    with redirect_stdout(stdout):
        assert main([str(sweep), "--out", str(out), *extra]) == 0
    return [line for line in stdout.getvalue().splitlines() if not line.startswith("wrote ")]


def markdown_rows(text: str) -> list[dict[str, str]]:
    """The first markdown table of ``text`` as one dict per row (bold kept)."""
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                lines.append(line)
        elif lines:
            break
    split = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    return [dict(zip(split[0], row, strict=True)) for row in split[1:]]


# -- 1. the compact table -----------------------------------------------------------------------
def test_default_table_fits_120_columns_and_all_shows_every_metric(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "sweep", masks=(0.15, 0.3), seeds=(1, 2))
    compact = run(sweep, tmp_path / "compact")
    assert compact and max(len(line) for line in compact) <= WIDTH, "\n".join(compact)
    header = next(line for line in compact if "val loss" in line)
    for name in (
        "objective",
        "mask_probability",
        "status",
        "cloze@1",
        "bits/char",
        "probe",
        "finetune",
        "tok/s",
    ):
        assert name in header
    text = "\n".join(compact)
    assert "cloze/token_accuracy_k4" not in text and "params" not in header  # left out of the compact view
    full = run(sweep, tmp_path / "full", "--metrics", "all")
    assert "cloze/token_accuracy_k4" in "\n".join(full) and max(len(line) for line in full) > WIDTH


def test_a_decoding_sweep_shows_what_decoding_changes_in_120_columns(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "sweep", decodings=("greedy", "top_k"))
    compact = run(sweep, tmp_path / "compact")
    assert max(len(line) for line in compact) <= WIDTH, "\n".join(compact)
    header = next(line for line in compact if "val loss" in line)
    for name in ("decoding", "distinct-2", "rep-4", "self-ppl", "length"):
        assert name in header
    assert "tok/s" not in header  # one model serves every decoding: its throughput makes room


def test_a_failed_job_keeps_its_error_below_the_compact_table(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "sweep")
    error = "RuntimeError: CUDA out of memory. " + "Tried to allocate 20.00 GiB. " * 5
    (sweep / "8" / ".hydra").mkdir(parents=True)
    (sweep / "8" / ".hydra" / "overrides.yaml").write_text("- objective=masked\n- baseline=false\n")
    (sweep / "8" / "metrics.json").write_text(json.dumps({"status": "failed", "error": error}))
    lines = run(sweep, tmp_path / "out")
    assert max(len(line) for line in lines) <= WIDTH
    assert any("(job 8, failed): RuntimeError: CUDA out of memory" in line for line in lines)


def test_report_md_shows_the_compact_table_and_csv_keeps_every_column(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "sweep")
    files = write_report(sweep, tmp_path / "out")
    rows = markdown_rows(files["report.md"].read_text(encoding="utf-8"))
    assert list(rows[0]) == [
        "objective",
        "status",
        "val loss",
        "cloze@1",
        "bits/char",
        "probe",
        "finetune",
        "tok/s",
    ]
    assert [r["objective"] for r in rows[:2]] == ["masked", "masked (no pretraining)"]
    assert "`cloze/exact_match_k1`" in files["report.md"].read_text(encoding="utf-8")  # the legend
    csv = pd.read_csv(files["report.csv"])
    assert {"job", "params", "wall_time_s", "cloze/token_accuracy_k4", "eval/probe_s", "gen/self_ppl"} <= set(
        csv
    )
    chosen = write_report(sweep, tmp_path / "chosen", metrics=["val/loss"])
    assert "cloze/token_accuracy_k4" in pd.read_csv(chosen["report.csv"])  # whatever --metrics shows
    rows = markdown_rows(chosen["report.md"].read_text(encoding="utf-8"))
    assert "val/loss" in rows[0] and "probe/accuracy" not in rows[0]


# -- 2. bold only where the difference is real ---------------------------------------------------
def test_no_bold_in_a_column_where_every_value_is_equal(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "sweep")
    for job in sweep.iterdir():  # nobody fills a single blank: all 0.0
        metrics = json.loads((job / "metrics.json").read_text(encoding="utf-8"))
        metrics["cloze/exact_match_k4"] = 0.0
        (job / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    rows = markdown_rows(to_markdown(build_table(collect(sweep))))
    assert not [r["cloze/exact_match_k4"] for r in rows if r["cloze/exact_match_k4"].startswith("**")]
    assert [r["objective"] for r in rows if r["val/loss"].startswith("**")] == ["prefix"]  # a real best


def test_no_bold_where_every_row_ties_with_the_best(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for number, (objective, seed, loss) in enumerate(
        [("masked", 1, 6.0), ("masked", 2, 6.4), ("causal", 1, 6.1), ("causal", 2, 6.5)]
    ):
        metrics = {
            "status": "ok",
            "objective": objective,
            "val/loss": loss,
            "probe/accuracy": 0.5 + number / 10,
        }
        config = {"objective": {"name": objective}, "seed": seed}
        write_job(sweep, number, [f"objective={objective}", f"seed={seed}"], config, metrics)
    rows = markdown_rows(to_markdown(build_table(collect(sweep))))
    assert not any(r["val/loss"].startswith("**") for r in rows)  # 6.2 ± 0.28 vs 6.3 ± 0.28: no winner


# -- 3. plots only for what was swept ------------------------------------------------------------
def test_no_mask_probability_plot_at_one_mask_probability(tmp_path: Path) -> None:
    files = write_report(make_sweep(tmp_path / "sweep"), tmp_path / "out")
    assert "metrics_vs_mask_probability.png" not in files
    assert not (tmp_path / "out" / "metrics_vs_mask_probability.png").exists()
    assert "generation_by_decoding.png" not in files  # one decoding: a single group of bars
    assert "val_loss_vs_tokens.png" in files
    text = files["report.md"].read_text(encoding="utf-8")
    assert "Not drawn: the mask probability was not swept" in text


def test_mask_probability_plot_when_two_probabilities_were_swept(tmp_path: Path) -> None:
    files = write_report(make_sweep(tmp_path / "sweep", masks=(0.15, 0.3)), tmp_path / "out")
    assert files["metrics_vs_mask_probability.png"].read_bytes().startswith(b"\x89PNG")


def test_generation_plot_when_two_decodings_were_swept(tmp_path: Path) -> None:
    files = write_report(make_sweep(tmp_path / "sweep", decodings=("greedy", "top_k")), tmp_path / "out")
    assert files["generation_by_decoding.png"].read_bytes().startswith(b"\x89PNG")


def test_one_colour_per_run_when_an_objective_has_several() -> None:
    from pretrainlab.compare import run_colours

    single = run_colours([("masked", "masked"), ("causal", "causal")])
    assert single == {("masked", "masked"): "#1f77b4", ("causal", "causal"): "#d62728"}  # the objective's
    several = run_colours(
        [("masked", "seed=1"), ("masked", "seed=2"), ("causal", "seed=1"), ("causal", "seed=2")]
    )
    assert len(set(several.values())) == 4

"""``pretrainlab-compare`` on sweep folders written by hand (the run/sweep folder contract).

No training here: every file a sweep holds is written by ``write_job``/``write_plan``, so each
test states exactly what the report is given. The report with plots is drawn once per module.
"""

from __future__ import annotations

import json
import math
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from pretrainlab.compare import (
    build_table,
    collect,
    direction,
    display_names,
    group_by_seed,
    main,
    ranges_overlap,
    to_markdown,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASE = ["model=tiny", "decoding=greedy", "trainer.max_steps=20"]
LONG_ERROR = (
    "RuntimeError: CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.15 GiB total capacity; "
    "70.00 GiB already allocated)\n  File train.py, line 3"
)


# -- writing the contract by hand -----------------------------------------------------------
def write_job(
    sweep: Path,
    number: int,
    overrides: list[str],
    config: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    curve: list[tuple[int, int, float]] | None = None,
) -> Path:
    """One job folder: .hydra/overrides.yaml + config.yaml, and metrics.json/curve.csv if given."""
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides), encoding="utf-8")
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    if curve is not None:
        lines = ["step,tokens_seen,val_loss", *(f"{s},{t},{v}" for s, t, v in curve)]
        (job / "curve.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return job


def config_of(objective: str, mask: float | None, seed: int = 1, decoding: str = "greedy") -> dict[str, Any]:
    return {
        "objective": {"name": objective, "mask_probability": mask},
        "model": {"name": "tiny", "n_layers": 2, "hidden_size": 64},
        "decoding": {"name": decoding},
        "data": {"block_size": 128},
        "seed": seed,
    }


def ok_metrics(objective: str, loss: float, distinct: float | None, repetition: float, **extra: Any) -> dict:
    """A finished job's metrics.json; throughput and time grow with the loss (any numbers do)."""
    metrics = {
        "status": "ok",
        "objective": objective,
        "val/loss": loss,
        "val/ppl": math.exp(loss),
        "val/loss_initial": 8.5,
        "train/loss": loss + 0.1,
        "train/tokens_per_s": 200 * loss,
        "tokens_seen": 40960,
        "steps": 20,
        "params": 1119845,
        "wall_time_s": 5 * loss,
        "decoding": "greedy",
        "best_checkpoint": "checkpoints/best.ckpt",
        "data_cache_hit": True,
    }
    if distinct is not None:
        metrics.update({"gen/distinct_1": distinct, "gen/repetition_4": repetition, "gen/mean_length": 40.2})
    return {**metrics, **extra}


def write_plan(sweep: Path, jobs: list[dict[str, Any]]) -> None:
    (sweep / "sweep.json").write_text(json.dumps({"jobs": jobs}), encoding="utf-8")
    (sweep / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n", encoding="utf-8")


# Job folder -> (objective, mask_probability override, effective mask_probability, metrics or None).
# seq2seq/prefix x {0.15, 0.3} finished, causal (no masking) finished, masked failed and missing.
MAIN_JOBS: dict[str, tuple[str, float, float | None, dict[str, Any] | None]] = {
    "0": ("seq2seq", 0.15, 0.15, ok_metrics("seq2seq", 6.5, 0.30, 0.20, **{"cloze/exact_match_k1": 0.20})),
    "1": ("seq2seq", 0.3, 0.3, ok_metrics("seq2seq", 6.8, 0.35, 0.25, **{"cloze/exact_match_k1": 0.25})),
    "2": ("prefix", 0.15, 0.15, ok_metrics("prefix", 6.1234, 0.40, 0.05, **{"cloze/exact_match_k1": None})),
    "3": ("prefix", 0.3, 0.3, ok_metrics("prefix", 6.4, 0.50, 0.10, **{"cloze/exact_match_k1": None})),
    "4": ("causal", 0.15, None, ok_metrics("causal", 6.3, 0.45, 0.15)),
    "5": ("masked", 0.15, 0.15, {"status": "failed", "objective": "masked", "error": LONG_ERROR, "steps": 3}),
    "6": ("masked", 0.3, 0.3, None),
}


def overrides_of(objective: str, mask: float, seed: int = 1) -> list[str]:
    return [f"objective={objective}", *BASE, f"objective.mask_probability={mask}", f"seed={seed}"]


def make_main_sweep(sweep: Path) -> Path:
    """5 finished jobs, 1 failed, 1 without metrics.json, and causal@0.3 skipped as a duplicate of 4."""
    plan = []
    for name, (objective, mask, effective, metrics) in MAIN_JOBS.items():
        loss = metrics.get("val/loss", 7.0) if metrics else 7.0
        curve = [(0, 0, 8.5), (10, 20480, loss + 0.5), (20, 40960, loss)] if metrics else None
        write_job(
            sweep, int(name), overrides_of(objective, mask), config_of(objective, effective), metrics, curve
        )
        plan.append({"overrides": overrides_of(objective, mask), "status": "launched", "dir": name})
    plan.insert(
        5,
        {
            "overrides": overrides_of("causal", 0.3),
            "status": "skipped",
            "dir": None,
            "duplicate_of": "4",
            "reason": "objective.mask_probability does not apply to objective=causal",
        },
    )
    write_plan(sweep, plan)
    return sweep


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The main sweep's report with every column (``--metrics all``), written once through the
    command (plots included); the default compact view: tests/test_compare_compact.py."""
    sweep = make_main_sweep(tmp_path_factory.mktemp("sweep"))
    out = tmp_path_factory.mktemp("report")
    stdout = StringIO()
    with redirect_stdout(stdout):
        status = main([str(sweep), "--out", str(out), "--metrics", "all"])
    return {"sweep": sweep, "out": out, "status": status, "stdout": stdout.getvalue()}


def markdown_rows(text: str) -> list[dict[str, str]]:
    """The report.md table as one dict per row (header -> cell text, bold kept)."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    split = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    return [dict(zip(split[0], row, strict=True)) for row in split[1:]]


def row_of(rows: list[dict[str, str]], job: str) -> dict[str, str]:
    return next(r for r in rows if r["job"] == job)


# -- reading and the table ------------------------------------------------------------------
def test_collect_reads_every_job_and_skipped_combination(tmp_path: Path) -> None:
    rows = collect(make_main_sweep(tmp_path))
    assert [(r["dir"], r["status"]) for r in rows] == [
        ("0", "ok"), ("1", "ok"), ("2", "ok"), ("3", "ok"), ("4", "ok"),
        (None, "skipped"), ("5", "failed"), ("6", "missing"),
    ]  # fmt: skip
    first = rows[0]
    assert first["overrides"]["objective.mask_probability"] == 0.15
    assert first["curve"] == [(0, 0, 8.5), (10, 20480, 7.0), (20, 40960, 6.5)]
    assert rows[4]["config"]["objective.mask_probability"] is None
    assert rows[5]["duplicate_of"] == "4"
    assert rows[6]["error"].startswith("RuntimeError: CUDA out of memory") and len(rows[6]["error"]) <= 80
    assert rows[7]["metrics"] == {} and rows[7]["curve"] == []


def test_table_has_one_row_per_job_with_status_and_swept_columns(tmp_path: Path) -> None:
    df = build_table(collect(make_main_sweep(tmp_path)))
    assert list(df["status"]) == ["ok"] * 5 + ["skipped", "failed", "missing"]
    # model, decoding, max_steps and seed are the same in every job: not columns.
    assert df.attrs["swept"] == ["objective", "mask_probability"]
    assert list(df.columns[:4]) == ["job", "objective", "mask_probability", "status"]
    assert list(df.columns[4:7]) == ["params", "tokens_seen", "wall_time_s"]
    metrics = df.attrs["metrics"]
    assert metrics[:3] == ["val/loss", "val/loss_initial", "val/ppl"]
    assert metrics[3:6] == ["gen/distinct_1", "gen/mean_length", "gen/repetition_4"]
    assert {"cloze/exact_match_k1", "steps", "train/loss", "train/tokens_per_s"} <= set(metrics[6:])
    assert not {"best_checkpoint", "data_cache_hit", "decoding"} & set(df.columns)  # not numbers
    assert df.loc[5, "note"].startswith("duplicate of job 4: objective.mask_probability does not apply")
    failed = df.loc[6]
    assert failed["error"].startswith("RuntimeError: CUDA out of memory") and len(failed["error"]) <= 80
    assert pd.isna(failed["steps"]) and pd.isna(failed["val/loss"])  # metrics blank


def test_metrics_option_keeps_the_named_metrics(tmp_path: Path) -> None:
    df = build_table(collect(make_main_sweep(tmp_path)), metrics=["val/loss", "gen/*"])
    assert df.attrs["metrics"] == ["val/loss", "gen/distinct_1", "gen/mean_length", "gen/repetition_4"]


def test_display_names_strip_prefixes_only_when_unambiguous() -> None:
    names = display_names(["objective", "objective.mask_probability", "objective.name", "model.name"])
    assert names == {
        "objective": "objective",
        "objective.mask_probability": "mask_probability",
        "objective.name": "objective.name",
        "model.name": "model.name",
    }
    assert display_names(["model.n_layers"], taken=["n_layers"]) == {"model.n_layers": "model.n_layers"}


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("val/loss", "min"), ("val/ppl", "min"), ("continuation/bpc", "min"), ("gen/repetition_4", "min"),
        ("wall_time_s", "min"), ("gen/distinct_1", "max"), ("probe/accuracy", "max"),
        ("cloze/exact_match_k1", "max"), ("train/tokens_per_s", "max"), ("params", None),
        ("tokens_seen", None), ("steps", None), ("gen/mean_length", None),
    ],
)  # fmt: skip
def test_direction(key: str, expected: str | None) -> None:
    assert direction(key) == expected


# -- the written report ---------------------------------------------------------------------
def test_command_writes_report_and_prints_paths(report: dict[str, Any]) -> None:
    assert report["status"] == 0
    out: Path = report["out"]
    for name in ("report.md", "report.csv"):
        assert f"wrote {out / name}" in report["stdout"]
    assert "prefix" in report["stdout"]  # the table was printed
    text = (out / "report.md").read_text(encoding="utf-8")
    assert text.startswith(f"# Sweep report: {report['sweep'].name}")
    assert f"`pretrainlab-compare {report['sweep']} --out {out} --metrics all`" in text
    assert "ranges do not overlap" in text  # the seed / significance rule is explained
    assert not (report["sweep"] / "report.md").exists()  # --out respected


def test_best_values_marked_by_direction(report: dict[str, Any]) -> None:
    rows = markdown_rows((report["out"] / "report.md").read_text(encoding="utf-8"))
    assert len(rows) == 8
    marked = {col: [r["job"] for r in rows if r[col].startswith("**")] for col in rows[0]}
    assert row_of(rows, "2")["val/loss"] == "**6.1234**"  # lower loss is better
    assert marked["val/loss"] == ["2"]
    assert marked["gen/distinct_1"] == ["3"]  # higher distinct is better
    assert marked["gen/repetition_4"] == ["2"]  # lower repetition is better
    assert marked["cloze/exact_match_k1"] == ["1"]
    assert marked["params"] == marked["steps"] == marked["gen/mean_length"] == []  # neutral
    assert row_of(rows, "0")["params"] == "1.12M"
    assert row_of(rows, "0")["train/tokens_per_s"] == "1300.0"  # 1 decimal
    assert row_of(rows, "0")["val/ppl"] == "665.14"


def test_failed_missing_and_skipped_rows(report: dict[str, Any]) -> None:
    rows = markdown_rows((report["out"] / "report.md").read_text(encoding="utf-8"))
    failed = row_of(rows, "5")
    assert failed["status"] == "failed"
    assert failed["error"].startswith("RuntimeError: CUDA out of memory") and failed["error"].endswith("…")
    assert failed["val/loss"] == failed["steps"] == failed["params"] == ""
    assert row_of(rows, "6")["status"] == "missing"
    skipped = next(r for r in rows if r["status"] == "skipped")
    assert skipped["objective"] == "causal" and skipped["mask_probability"] == "0.3"
    assert skipped["note"].startswith("duplicate of job 4")


def test_null_metric_shows_n_a_never_zero(report: dict[str, Any]) -> None:
    rows = markdown_rows((report["out"] / "report.md").read_text(encoding="utf-8"))
    assert row_of(rows, "2")["cloze/exact_match_k1"] == "n/a"
    assert row_of(rows, "3")["cloze/exact_match_k1"] == "n/a"
    assert row_of(rows, "4")["cloze/exact_match_k1"] == ""  # causal never measured it
    csv = pd.read_csv(report["out"] / "report.csv")
    assert csv["cloze/exact_match_k1"].isna().tolist() == [False, False, True, True, True, True, True, True]


def test_csv_holds_raw_numbers(report: dict[str, Any]) -> None:
    csv = pd.read_csv(report["out"] / "report.csv")
    assert len(csv) == 8
    assert csv["val/loss"].iloc[:5].tolist() == [6.5, 6.8, 6.1234, 6.4, 6.3]
    assert csv["params"].iloc[0] == 1119845
    assert csv["gen/distinct_1"].iloc[3] == 0.5
    assert csv["status"].tolist()[5:] == ["skipped", "failed", "missing"]
    assert not csv.astype(str).apply(lambda col: col.str.contains(r"\*\*")).any().any()


def test_plots_are_png_files(report: dict[str, Any]) -> None:
    text = (report["out"] / "report.md").read_text(encoding="utf-8")
    for name in ("val_loss_vs_tokens.png", "metrics_vs_mask_probability.png"):
        data = (report["out"] / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
        assert f"]({name})" in text
        assert f"wrote {report['out'] / name}" in report["stdout"]
    # Every job decoded greedily: no bar chart of a single decoding strategy.
    assert not (report["out"] / "generation_by_decoding.png").exists()
    assert "Not drawn: the decoding strategy was not swept" in text


def test_plots_without_data_are_skipped(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for number, mask in enumerate((0.15, 0.3)):
        metrics = ok_metrics("masked", 6.0 + mask, None, 0.0)  # no gen/* metrics, no curve.csv
        write_job(sweep, number, overrides_of("masked", mask), config_of("masked", mask), metrics)
    files = write_report(sweep, tmp_path / "out")
    assert set(files) == {"report.md", "report.csv", "metrics_vs_mask_probability.png"}
    assert not (tmp_path / "out" / "generation_by_decoding.png").exists()
    assert not (tmp_path / "out" / "val_loss_vs_tokens.png").exists()
    assert "Not drawn: the decoding strategy was not swept" in files["report.md"].read_text(encoding="utf-8")


# -- seeds ------------------------------------------------------------------------------------
def make_seed_sweep(sweep: Path) -> Path:
    """causal and prefix, 3 seeds each (no sweep.json: a plain Hydra multirun)."""
    values = {"causal": ([6.0, 6.2, 6.4], [0.1, 0.2, 0.3]), "prefix": ([6.3, 6.5, 6.7], [0.5, 0.6, 0.7])}
    number = 0
    for objective, (losses, distincts) in values.items():
        for seed, loss, distinct in zip((1, 2, 3), losses, distincts, strict=True):
            overrides = [f"objective={objective}", f"seed={seed}"]
            metrics = ok_metrics(objective, loss, distinct, 0.1)
            write_job(sweep, number, overrides, config_of(objective, None, seed), metrics)
            number += 1
    return sweep


def test_group_by_seed_means_and_sample_std(tmp_path: Path) -> None:
    groups = group_by_seed(collect(make_seed_sweep(tmp_path)))
    assert [(g["overrides"], g["n"], g["seeds"], g["dirs"]) for g in groups] == [
        ({"objective": "causal"}, 3, [1, 2, 3], ["0", "1", "2"]),
        ({"objective": "prefix"}, 3, [1, 2, 3], ["3", "4", "5"]),
    ]
    causal, prefix = groups
    assert causal["metrics"]["val/loss"] == pytest.approx(6.2)
    assert causal["std"]["val/loss"] == pytest.approx(0.2)  # sqrt((0.04 + 0 + 0.04) / 2)
    assert prefix["metrics"]["gen/distinct_1"] == pytest.approx(0.6)
    assert prefix["std"]["gen/distinct_1"] == pytest.approx(0.1)
    assert causal["std"]["params"] == 0.0


def test_seed_table_and_ties(tmp_path: Path) -> None:
    df = build_table(collect(make_seed_sweep(tmp_path)))
    assert len(df) == 2 and df["seeds"].tolist() == [3, 3]
    assert df.attrs["swept"] == ["objective"] and "seed" not in df
    assert df["val/loss"].tolist() == pytest.approx([6.2, 6.5])
    assert df["val/loss_std"].tolist() == pytest.approx([0.2, 0.2])
    rows = markdown_rows(to_markdown(df))
    # [6.0, 6.4] overlaps [6.3, 6.7]: a tie, and no other row: no row is clearly best, none marked.
    assert [r["val/loss"] for r in rows] == ["6.2000 ± 0.2000", "6.5000 ± 0.2000"]
    # [0.1, 0.3] vs [0.5, 0.7]: prefix is clearly better, only it is marked.
    assert [r["gen/distinct_1"] for r in rows] == ["0.2000 ± 0.1000", "**0.6000 ± 0.1000**"]


def test_failed_seed_keeps_its_own_row(tmp_path: Path) -> None:
    sweep = make_seed_sweep(tmp_path)
    failed = {"status": "failed", "objective": "prefix", "error": "ValueError: boom"}
    write_job(sweep, 6, ["objective=prefix", "seed=4"], config_of("prefix", None, 4), failed)
    df = build_table(collect(sweep))
    assert df["status"].tolist() == ["ok", "ok", "failed"]
    assert df["seeds"].tolist() == [3, 3, 1]
    assert df.loc[2, "error"] == "ValueError: boom"


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ((0.0, 1.0), (1.5, 1.0), True),  # [-1, 1] and [0.5, 2.5]
        ((0.0, 0.1), (1.0, 0.1), False),
        ((0.0, 0.5), (1.0, 0.5), True),  # touching ranges count
        ((1.0, 0.0), (1.0, 0.0), True),  # equal single values tie
        ((1.0, 0.0), (1.1, 0.0), False),
        ((1.0, None), (1.05, 0.1), True),  # no std (one run) = a point
        ((5.0, 0.1), (0.0, 10.0), True),  # one range inside the other
    ],
)
def test_ranges_overlap(a: tuple[float, float | None], b: tuple[float, float | None], overlap: bool) -> None:
    assert ranges_overlap(*a, *b) is overlap
    assert ranges_overlap(*b, *a) is overlap  # symmetric


# -- not a sweep ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["empty", "absent", "run"])
def test_not_a_sweep_is_one_error_line(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "folder"
    if kind == "empty":
        folder.mkdir()
    elif kind == "run":
        write_job(tmp_path, 0, ["seed=1"], config_of("masked", 0.15), ok_metrics("masked", 6.0, None, 0.0))
        folder = tmp_path / "0"
    stderr, stdout = StringIO(), StringIO()
    with redirect_stderr(stderr), redirect_stdout(stdout):
        status = main([str(folder)])
    assert status != 0
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert str(folder) in lines[0]
    if folder.exists():
        assert not list(folder.glob("report.*"))  # nothing written


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "pretrainlab-compare" in capsys.readouterr().out


# -- what the sweeper launched, and reruns ------------------------------------------------------
CLEANED = ["objective=causal", *BASE]  # causal's launch: no mask probability, which it ignores


def make_causal_sweep(sweep: Path, causal_ran_with_mask: bool) -> Path:
    """masked x {0.15, 0.3} and causal x {0.15, 0.3} as the sweeper plans them: causal@0.3 is a
    skipped duplicate of job 2, whose ``launch`` drops the mask probability causal ignores.

    ``causal_ran_with_mask``: job 2 ran with ``objective.mask_probability=0.15`` anyway (what the
    sweeper did before it launched the cleaned overrides), so its folder says 0.15.
    """
    plan: list[dict[str, Any]] = []
    for number, mask in enumerate((0.15, 0.3)):
        overrides = overrides_of("masked", mask)
        metrics = ok_metrics("masked", 6.0 + mask, None, 0.0)
        write_job(sweep, number, overrides, config_of("masked", mask), metrics)
        plan.append({"overrides": overrides, "launch": overrides, "status": "launched", "dir": str(number)})
    ran = overrides_of("causal", 0.15) if causal_ran_with_mask else CLEANED
    effective = 0.15 if causal_ran_with_mask else None
    write_job(sweep, 2, ran, config_of("causal", effective), ok_metrics("causal", 6.3, None, 0.0))
    plan.append(
        {"overrides": overrides_of("causal", 0.15), "launch": CLEANED, "status": "launched", "dir": "2"}
    )
    plan.append(
        {
            "overrides": overrides_of("causal", 0.3),
            "launch": CLEANED,
            "status": "skipped",
            "dir": None,
            "duplicate_of": "2",
            "reason": "objective.mask_probability does not apply to this objective",
        }
    )
    write_plan(sweep, plan)
    return sweep


def test_a_skipped_combination_is_the_job_that_ran_without_the_ignored_setting(tmp_path: Path) -> None:
    rows = collect(make_causal_sweep(tmp_path, causal_ran_with_mask=False))
    assert [(r["dir"], r["status"]) for r in rows] == [("0", "ok"), ("1", "ok"), ("2", "ok")]
    causal = rows[2]
    assert "objective.mask_probability" not in causal["overrides"]
    assert [c["objective.mask_probability"] for c in causal["covers"]] == [0.3]
    df = build_table(rows)
    assert df["objective"].tolist() == ["masked", "masked", "causal"]
    assert df["mask_probability"].tolist()[:2] == [0.15, 0.3] and pd.isna(df["mask_probability"].iloc[2])


def test_a_skipped_combination_keeps_its_row_when_its_job_ran_with_other_values(tmp_path: Path) -> None:
    rows = collect(make_causal_sweep(tmp_path, causal_ran_with_mask=True))
    statuses = [(r["dir"], r["status"]) for r in rows]
    assert statuses == [("0", "ok"), ("1", "ok"), ("2", "ok"), (None, "skipped")]
    assert rows[2]["overrides"]["objective.mask_probability"] == 0.15 and rows[2]["covers"] == []


@pytest.mark.parametrize("in_sweep", [True, False])
def test_a_rerun_in_a_sweep_folder_is_not_one_of_its_jobs(tmp_path: Path, in_sweep: bool) -> None:
    from pretrainlab.reproduce import RERUN_MARKER

    sweep = make_causal_sweep(tmp_path / "sweep", causal_ran_with_mask=False)
    if not in_sweep:  # a folder of runs compared by hand: every run in it counts
        (sweep / "sweep.json").unlink()
        (sweep / "multirun.yaml").unlink()
    for name in ("2-again", "7"):  # wherever --out put it, named like a job or not
        folder = sweep / name
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(CLEANED), encoding="utf-8")
        (folder / "metrics.json").write_text(
            json.dumps(ok_metrics("causal", 6.3, None, 0.0)), encoding="utf-8"
        )
        (folder / RERUN_MARKER).write_text(json.dumps({"run_dir": str(sweep / "2")}), encoding="utf-8")
    rows = collect(sweep)
    assert [r["dir"] for r in rows] == (["0", "1", "2"] if in_sweep else ["0", "1", "2", "7", "2-again"])


def test_a_resumed_job_is_the_same_setting_not_a_resume_column(tmp_path: Path) -> None:
    """`resume=RUN` lands in a resumed job's overrides.yaml; it is not something the sweep varied."""
    from pretrainlab.compare.collect import collect

    mask = ["objective=masked", "objective.mask_probability"]
    write_job(
        tmp_path,
        0,
        [f"{mask[0]}", f"{mask[1]}=0.15"],
        config_of("masked", 0.15),
        ok_metrics("masked", 5.0, None, 0.1),
    )
    write_job(
        tmp_path,
        1,
        [f"{mask[0]}", f"{mask[1]}=0.4", f"resume={tmp_path / '1'}"],
        config_of("masked", 0.4),
        ok_metrics("masked", 4.0, None, 0.1),
    )
    rows = collect(tmp_path)
    assert [row["overrides"] for row in rows] == [
        {"objective": "masked", "objective.mask_probability": 0.15},
        {"objective": "masked", "objective.mask_probability": 0.4},
    ]


def test_the_report_header_counts_evaluations_apart_from_jobs() -> None:
    """A decoding sweep that trained 2 models and evaluated them under 10 other decodings."""
    from pretrainlab.compare.report import _row_kinds

    jobs = [{"dir": str(i)} for i in range(2)]
    evaluations = [{"dir": f"{i % 2}/eval/decoding=d{i}"} for i in range(10)]
    assert _row_kinds(jobs + evaluations) == (
        "2 jobs and combinations and 10 evaluations of their models with other decodings"
    )
    assert _row_kinds(jobs) == "2 jobs and combinations"

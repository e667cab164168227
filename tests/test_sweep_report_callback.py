"""The end of a sweep (report, failed jobs, exit status) belongs to a Hydra callback, not a sweeper.

Hydra's own basic sweeper re-raises a failed job's error after its batch; with the callback the
sweep goes on, writes its report and ends with one ``error:`` line and exit status 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf

from conftest import cli_args, run_cli
from pretrainlab.sweep_report import SweepReport, failed_jobs

EVALUATION_OFF = (
    "evaluation.generation=false",
    "evaluation.cloze=false",
    "evaluation.continuation=false",
    "evaluation.probe=false",
)


def write_job(sweep: Path, name: str, metrics: dict | None) -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- seed={name}\n", encoding="utf-8")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")


def hydra_config(sweep: Path, mode: RunMode = RunMode.MULTIRUN):
    return OmegaConf.create({"hydra": {"mode": mode, "sweep": {"dir": str(sweep)}, "job": {"num": 0}}})


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Job 0 finished, job 1 failed, job 2 died before writing metrics.json."""
    folder = tmp_path / "sweep"
    write_job(folder, "0", {"status": "ok", "objective": "causal", "val/loss": 7.0, "steps": 2})
    write_job(
        folder, "1", {"status": "failed", "objective": "causal", "error": "ConfigError: lr=-1: bad\nmore"}
    )
    write_job(folder, "2", None)
    return folder


def test_failed_jobs_are_read_from_the_job_folders(sweep: Path) -> None:
    failed, jobs = failed_jobs(sweep)
    assert jobs == 3
    assert failed[0] == "1 (ConfigError: lr=-1: bad)"
    assert failed[1].startswith("2 (no metrics.json")


def test_the_end_of_a_sweep_reports_and_exits_1_naming_the_failed_jobs(
    sweep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as end:
        SweepReport().on_multirun_end(hydra_config(sweep))
    assert end.value.code == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith("error: 2 of 3 jobs failed: 1 (ConfigError")
    )
    assert "| failed |" in (sweep / "report.md").read_text(encoding="utf-8")


def test_report_false_writes_no_report_and_a_clean_sweep_ends_quietly(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    write_job(sweep, "0", {"status": "ok", "objective": "causal", "val/loss": 7.0, "steps": 2})
    SweepReport(report=False).on_multirun_end(hydra_config(sweep))  # no SystemExit
    assert not (sweep / "report.md").exists()


def test_a_failed_job_is_handed_back_as_finished_with_nan_in_a_sweep_only(tmp_path: Path) -> None:
    def failed() -> JobReturn:
        result = JobReturn(status=JobStatus.FAILED)
        result.return_value = ValueError("boom")
        return result

    in_sweep, single_run = failed(), failed()
    SweepReport().on_job_end(hydra_config(tmp_path), in_sweep)
    assert in_sweep.status == JobStatus.COMPLETED and in_sweep.return_value != in_sweep.return_value  # NaN
    SweepReport().on_job_end(hydra_config(tmp_path, RunMode.RUN), single_run)
    assert single_run.status == JobStatus.FAILED  # a plain run still fails with its own error


@pytest.mark.slow
def test_hydras_basic_sweeper_goes_on_after_a_failure_reports_and_exits_1(tiny_corpus, cache_dir, tmp_path):
    """One job at a time (max_batch_size=1), the failing one first: the basic sweeper alone would
    stop there (no job 1, no report, a traceback)."""
    sweep = tmp_path / "sweep"
    result = run_cli(
        [
            "pretrainlab-train",
            "-m",
            *cli_args(tiny_corpus),
            "hydra/sweeper=basic",
            "hydra.sweeper.max_batch_size=1",
            "objective=causal",
            "trainer.max_steps=1",
            *EVALUATION_OFF,
            "optimizer.optimizer.lr=-1,0.001",  # job 0 is refused (lr must be positive)
            f"hydra.sweep.dir={sweep}",
        ],
        cache_dir,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 2 jobs failed: 0 (ConfigError: optimizer.optimizer.lr=-1"), last
    assert "Traceback" not in result.stderr
    statuses = [json.loads((sweep / job / "metrics.json").read_text())["status"] for job in ("0", "1")]
    assert statuses == ["failed", "ok"]
    report = (sweep / "report.md").read_text(encoding="utf-8")
    assert report.count("| failed |") == 1 and report.count("| ok |") == 1

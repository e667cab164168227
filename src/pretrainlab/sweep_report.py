"""The end of every sweep, whatever the sweeper: the comparison report and the failed jobs.

A Hydra callback (``hydra.callbacks.sweep_report`` in ``conf/hydra/default.yaml``), so the basic
sweeper, pretrainlab's and the Optuna one all end the same way:

- ``on_job_end`` (in the job's own process, whichever launcher): a job that raised has already
  recorded its error in its run folder (``metrics.json`` with ``status: failed``, ``error.log``),
  so it is handed back to the sweeper as finished with the value NaN. Hydra's basic sweeper would
  otherwise re-raise the first failed job's error after its batch, which ends the sweep before the
  later batches and before ``on_multirun_end``; an optimiser (Optuna) reads NaN as a failed trial.
- ``on_multirun_end``: ``pretrainlab-compare`` writes the report into the sweep folder
  (``report=false``: none), then, if any job failed, one ``error: N of M jobs failed: ...`` line
  and exit status 1. Which jobs failed is read from the job folders (``metrics.json``'s status),
  not from the sweeper: jobs run by a parallel or SLURM launcher live in other processes.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def failed_jobs(sweep_dir: str | Path) -> tuple[list[str], int]:
    """(``"<job folder> (<first line of its error>)"`` for every job that did not finish ok, number
    of jobs) of a sweep folder, as ``pretrainlab-compare`` reads them: a job folder without
    metrics.json (it died before writing one) counts as failed; a combination the pretrainlab
    sweeper skipped as a duplicate is not a job, nor is a later evaluation of a job
    (``pretrainlab-eval``)."""
    from pretrainlab.compare.collect import CompareError, collect

    try:
        rows = [row for row in collect(sweep_dir) if row["dir"] is not None and row.get("eval_of") is None]
    except CompareError:  # no job folder at all: nothing ran, nothing failed
        return [], 0
    failed = [f"{row['dir']} ({row['error'] or row['status']})" for row in rows if row["status"] != "ok"]
    return failed, len(rows)


def write_report(sweep_dir: Path) -> None:
    """``pretrainlab-compare SWEEP_DIR``, in-process; a failure to write it is logged, never raised:
    the jobs' results are on disk either way."""
    try:
        from pretrainlab.compare import main as compare

        compare([str(sweep_dir)])
    except Exception:  # noqa: BLE001 - the jobs' results are on disk either way
        log.exception("could not write the sweep report; run pretrainlab-compare %s", sweep_dir)


def _in_multirun(config: DictConfig) -> bool:
    return OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN


class SweepReport(Callback):
    """Report and failure summary at the end of a multirun; failed jobs do not stop the sweep."""

    def __init__(self, report: bool = True) -> None:
        self.report = report

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """In a sweep, hand a failed job back as finished with value NaN, so the sweeper goes on."""
        if job_return.status != JobStatus.FAILED or not _in_multirun(config):
            return
        error = job_return._return_value
        first = (str(error).splitlines() or [""])[0]
        log.error(
            "job %s failed (%s: %s); the sweep goes on", config.hydra.job.num, type(error).__name__, first
        )
        job_return.status = JobStatus.COMPLETED
        job_return.return_value = float("nan")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the report, then name the failed jobs and exit with status 1 if any failed."""
        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
        if self.report:
            write_report(sweep_dir)
        failed, jobs = failed_jobs(sweep_dir)
        if failed:
            print(f"error: {len(failed)} of {jobs} jobs failed: {'; '.join(failed)}", file=sys.stderr)
            sys.exit(1)

"""Hyperparameter search with Optuna: ``hparams_search=causal_optuna`` (the pretrainlab_optuna sweeper)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from conftest import cli_args, run_cli
from hydra_plugins.pretrainlab_sweeper.optuna_sweeper import OptunaSweeper, distribution
from pretrainlab import config_dir

EVALUATION_OFF = (
    "evaluation.generation=false",
    "evaluation.cloze=false",
    "evaluation.continuation=false",
    "evaluation.probe=false",
)


def test_the_search_config_composes_as_a_multirun_of_the_causal_objective() -> None:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=["hparams_search=causal_optuna"], return_hydra_config=True
        )
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.pretrainlab_sweeper.optuna_sweeper.OptunaSweeper"
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert cfg.objective.name == "causal" and cfg.optimized_metric == "val/loss"
    assert cfg.hydra.sweeper.direction == "minimize"
    assert set(cfg.hydra.sweeper.params) == {"optimizer.optimizer.lr", "optimizer.warmup_ratio"}
    assert "sweep_report" in cfg.hydra.callbacks  # the report comes with any sweeper


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("interval(0.0, 0.2)", FloatDistribution(0.0, 0.2)),
        ("tag(log, interval(1e-4, 1e-2))", FloatDistribution(1e-4, 1e-2, log=True)),
        ("int(interval(1, 8))", IntDistribution(1, 8)),
        ("range(16, 64, 16)", IntDistribution(16, 48, step=16)),  # Hydra's range: stop excluded
        ("choice(adamw, sgd)", CategoricalDistribution(["adamw", "sgd"])),
        ("0.5", None),  # a fixed value, passed to every trial
    ],
)
def test_sweep_expressions_become_optuna_distributions(expression: str, expected) -> None:
    (override,) = OverridesParser.create().parse_overrides([f"key={expression}"])
    assert distribution(override) == expected


class ScriptedLauncher:
    """Hands back, job by job, a failed job, a NaN (a failed job as the report callback returns it)
    and then the trial's own x as its value; records what it was asked to launch."""

    def __init__(self) -> None:
        self.launched: list[list[str]] = []

    def launch(self, batch, initial_job_idx):
        results = []
        for number, overrides in enumerate(batch, start=initial_job_idx):
            self.launched.append(list(overrides))
            result = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
            if number == 0:
                result.status, result.return_value = JobStatus.FAILED, RuntimeError("diverged")
            else:
                x = float(next(o for o in overrides if o.startswith("x=")).split("=")[1])
                result.return_value = math.nan if number == 1 else x
            results.append(result)
        return results


def test_failed_trials_are_told_as_failed_and_the_search_goes_on(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"  # kept on disk: current optuna, SQLAlchemy 2
    sweeper = OptunaSweeper(
        sampler=optuna.samplers.RandomSampler(seed=0),
        storage=storage,
        study_name="s",
        n_trials=5,
        n_jobs=2,
        params={"x": "interval(0.0, 1.0)"},
    )
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweeper.launcher = launcher = ScriptedLauncher()
    sweeper.sweep(["seed=3"])
    assert len(launcher.launched) == 5 and all("seed=3" in job for job in launcher.launched)
    values = [float(job[0].split("=")[1]) for job in launcher.launched[2:]]
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["best_value"] == min(values) == results["best_params"]["x"]
    states = [trial.state.name for trial in optuna.load_study(study_name="s", storage=storage).trials]
    assert states == ["FAIL", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]


@pytest.mark.slow
def test_a_three_trial_search_runs_three_jobs_and_reports_the_best(tiny_corpus, cache_dir, tmp_path):
    sweep = tmp_path / "search"
    result = run_cli(
        [
            "pretrainlab-train",  # no -m: the search config makes it a multirun
            "hparams_search=causal_optuna",
            "hydra.sweeper.n_trials=3",
            *cli_args(tiny_corpus),
            "trainer.max_steps=1",
            *EVALUATION_OFF,
            f"hydra.sweep.dir={sweep}",
        ],
        cache_dir,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert [j.name for j in jobs] == ["0", "1", "2"]
    loss, lr = {}, {}
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["status"] == "ok" and metrics["objective"] == "causal"
        loss[job.name] = metrics["val/loss"]
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        lr[job.name] = float(
            next(o for o in overrides if o.startswith("optimizer.optimizer.lr=")).split("=")[1]
        )
        assert 1e-4 <= lr[job.name] <= 1e-2
    assert len(set(lr.values())) == 3  # three different trials
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = min(loss, key=loss.__getitem__)
    assert results["best_value"] == loss[best]
    assert results["best_params"]["optimizer.optimizer.lr"] == lr[best]
    report = (sweep / "report.md").read_text(encoding="utf-8")
    assert report.count("| ok |") == 3

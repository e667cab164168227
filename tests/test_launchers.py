"""Hydra launchers other than the basic one: parallel local jobs and SLURM through submitit."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from conftest import cli_args, run_cli
from pretrainlab import config_dir

EVALUATION_OFF = (
    "evaluation.generation=false",
    "evaluation.cloze=false",
    "evaluation.continuation=false",
    "evaluation.probe=false",
)


@pytest.mark.parametrize(
    ("launcher", "target"),
    [
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
        ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
    ],
)
def test_launchers_compose_with_our_sweeper(launcher, target):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == target
    assert cfg.hydra.sweeper._target_.startswith("hydra_plugins.pretrainlab_sweeper")


@pytest.mark.slow
def test_a_sweep_through_submitit_runs_each_job_in_its_own_process(tiny_corpus, cache_dir, tmp_path):
    """submitit_local runs jobs the way submitit_slurm does (pickled, in new processes), minus SLURM."""
    sweep = tmp_path / "sweep"
    result = run_cli(
        [
            "pretrainlab-train",
            "-m",
            *cli_args(tiny_corpus),
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10",
            *EVALUATION_OFF,  # what is checked is where the jobs ran, not what they evaluated
            "objective=causal,masked",
            f"hydra.sweep.dir={sweep}",
        ],
        cache_dir,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    objectives = sorted(
        json.loads((sweep / str(i) / "metrics.json").read_text())["objective"] for i in (0, 1)
    )
    assert objectives == ["causal", "masked"]
    assert all(json.loads((sweep / str(i) / "metrics.json").read_text())["status"] == "ok" for i in (0, 1))
    assert (sweep / "report.md").is_file()
    assert list((sweep / ".submitit").iterdir())  # the jobs really went through submitit

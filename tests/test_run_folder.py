"""One folder per run: two runs that would share a folder never do.

The default run folder is named after the second a run starts, and the check that a folder is
free used to be separate from taking it: two runs started in the same second both passed and
wrote into one folder.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from conftest import cli_args
from pretrainlab import config_dir
from pretrainlab.hydra_callbacks import RunDirGuard, claim_run_dir


def _claim(folder: str, queue: multiprocessing.Queue) -> None:
    claimed = claim_run_dir(Path(folder), alternatives=True)
    queue.put(str(claimed))


def test_processes_racing_for_one_folder_each_get_their_own(tmp_path: Path) -> None:
    folder = tmp_path / "outputs" / "12-00-00"
    queue: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
    workers = [
        multiprocessing.get_context("fork").Process(target=_claim, args=(str(folder), queue))
        for _ in range(6)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    claimed = sorted(queue.get(timeout=5) for _ in workers)
    assert claimed == sorted([str(folder)] + [f"{folder}-{n}" for n in range(1, 6)])


def _hydra_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def test_the_default_folder_of_a_run_is_never_shared(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _hydra_cfg()
    RunDirGuard().on_run_start(cfg)
    first = Path(cfg.hydra.run.dir)
    assert (first / ".hydra").is_dir()
    again = _hydra_cfg()
    again.hydra.run.dir = str(first)  # as if started in the same second
    RunDirGuard().on_run_start(again)
    assert Path(again.hydra.run.dir) == first.with_name(first.name + "-1")


def test_a_folder_the_user_named_is_refused_when_taken(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "runs" / "a"
    RunDirGuard().on_run_start(_hydra_cfg(f"hydra.run.dir={folder}"))
    assert (folder / ".hydra").is_dir()
    with pytest.raises(SystemExit) as exit_info:
        RunDirGuard().on_run_start(_hydra_cfg(f"hydra.run.dir={folder}"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: hydra.run.dir={folder}: holds an earlier run; choose a new folder"
    )


@pytest.mark.slow
def test_two_runs_started_together_keep_apart(tiny_corpus: Path, cache_dir: Path, tmp_path: Path) -> None:
    """Two commands started at once in one folder: each run's config, metrics and model stay
    together, in a folder of its own."""
    exe = [sys.executable, "-c", "from pretrainlab.train import cli; cli()"]
    env = {
        **os.environ,
        "PRETRAINLAB_CACHE": str(cache_dir),
        "WANDB_MODE": "offline",
        "PYTHONWARNINGS": "ignore",
    }
    evaluation_off = (f"evaluation.{part}=false" for part in ("probe", "cloze", "continuation", "generation"))
    args = [*cli_args(tiny_corpus), "trainer.max_steps=1", *evaluation_off]
    procs = [
        subprocess.Popen(
            [*exe, *args, f"objective={o}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for o in ("masked", "causal")
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    runs = sorted(p.parent for p in tmp_path.glob("outputs/*/*/metrics.json"))
    assert len(runs) == 2
    objectives = set()
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        saved = (run / ".hydra" / "config.yaml").read_text()
        assert f"name: {metrics['objective']}" in saved
        objectives.add(metrics["objective"])
    assert objectives == {"masked", "causal"}

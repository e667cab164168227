"""The optional, git-ignored ``local`` group: conf/local/default.yaml applies to every run when it
exists, and nothing changes when it does not. Each test works on a copy of conf/ (the real folder
is never written)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from pretrainlab import config_dir

REPO = Path(__file__).resolve().parents[1]
LOCAL = """# @package _global_
paths:
  cache_dir: /scratch/pretrainlab-cache
trainer:
  max_steps: 77
"""


@pytest.fixture
def conf_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "conf"
    shutil.copytree(config_dir(), copy)
    for own in (copy / "local").glob("*.yaml"):  # a developer's own local file is not the test's
        own.unlink()
    return copy


def compose_in(conf: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_without_a_local_file_nothing_changes(conf_copy):
    cfg = compose_in(conf_copy)
    assert cfg.trainer.max_steps == 300


def test_a_local_file_is_applied(conf_copy):
    (conf_copy / "local" / "default.yaml").write_text(LOCAL, encoding="utf-8")
    cfg = compose_in(conf_copy)
    assert cfg.paths.cache_dir == "/scratch/pretrainlab-cache"
    assert cfg.trainer.max_steps == 77


def test_the_command_line_and_debug_presets_still_win_over_it(conf_copy):
    (conf_copy / "local" / "default.yaml").write_text(LOCAL, encoding="utf-8")
    assert compose_in(conf_copy, "trainer.max_steps=5").trainer.max_steps == 5
    assert compose_in(conf_copy, "debug=fast").trainer.max_steps == 4


def test_it_wins_over_an_experiment(conf_copy):
    """Machine settings (devices, paths) hold whatever the experiment: it comes after it."""
    (conf_copy / "local" / "default.yaml").write_text(LOCAL, encoding="utf-8")
    assert compose_in(conf_copy, "experiment=compare_objectives").trainer.max_steps == 77


@pytest.mark.parametrize("experiment", [None, "compare_objectives", "compare_objectives_gpu"])
def test_the_committed_example_works_once_copied(conf_copy, experiment):
    shutil.copy(conf_copy / "local" / "example.yaml.sample", conf_copy / "local" / "default.yaml")
    cfg = compose_in(conf_copy, *([f"experiment={experiment}"] if experiment else []))
    assert cfg.trainer.accelerator == "gpu"
    assert cfg.paths.cache_dir.endswith("/pretrainlab-cache") and cfg.paths.cache_dir.startswith("/scratch/")


def test_local_files_are_ignored_by_git_and_the_example_is_not():
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO, check=False).returncode == 0

    assert ignored("conf/local/default.yaml")
    assert not ignored("conf/local/example.yaml.sample")

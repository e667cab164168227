"""Resume and reproduce a run saved by an older version of the config: a key added since (at the
value its absence meant) or removed since (``task_name``) is not a differing setting; a real
change still is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pretrainlab import config_dir
from pretrainlab.config import BEFORE_KEY_EXISTED, fill_schema_defaults
from pretrainlab.hydra_callbacks import RunDirGuard
from pretrainlab.objectives.seq2seq import LEGACY_NOISE_LAYOUT
from pretrainlab.validation import validate


def saved_run(tmp_path: Path, edit, overrides: list[str] | None = None) -> Path:
    """A run folder whose saved config is today's plain config, changed by ``edit``."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        saved: dict[str, Any] = OmegaConf.to_container(compose(config_name="train"), resolve=False)
    edit(saved)
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(saved), encoding="utf-8")
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides or []), encoding="utf-8")
    return run


def check_resume(run: Path, *overrides: str) -> None:
    """The run folder guard's resume check, inside a Hydra app as in a real run."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        config = compose("train", overrides=[*overrides, f"resume={run}"], return_hydra_config=True)
        RunDirGuard._check_resume(config)


def drop(*keys: str):
    def edit(cfg: dict) -> None:
        for key in keys:
            *parents, leaf = key.split(".")
            node = cfg
            for p in parents:
                node = node[p]
            del node[leaf]

    return edit


def test_a_run_saved_before_the_scheduler_existed_resumes(tmp_path):
    check_resume(saved_run(tmp_path, drop("optimizer.scheduler", "optimizer.decay_ratio")))


def test_a_run_saved_with_the_removed_task_name_resumes(tmp_path):
    check_resume(saved_run(tmp_path, lambda cfg: cfg.update(task_name="train")))


def test_a_run_saved_before_an_untyped_key_existed_resumes(tmp_path):
    """`tags` has no schema: its default is what conf/train.yaml gives it."""
    check_resume(saved_run(tmp_path, drop("tags")))


@pytest.mark.parametrize(
    ("edit", "overrides", "key"),
    [
        (drop("optimizer.scheduler"), ["optimizer.scheduler=linear"], "optimizer.scheduler"),
        (drop("tags"), ["tags=[zh]"], "tags"),
        (lambda cfg: cfg["optimizer"].update(scheduler="linear"), [], "optimizer.scheduler"),
    ],
    ids=["added key, not at its default", "untyped key, not at its default", "changed value"],
)
def test_a_real_difference_is_still_refused(tmp_path, capsys, edit, overrides, key):
    run = saved_run(tmp_path, edit)
    with pytest.raises(SystemExit) as exit_info:
        check_resume(run, *overrides)
    assert exit_info.value.code == 2
    assert f"error: resume={run}: setting {key}" in capsys.readouterr().err


def test_a_key_removed_from_a_schema_is_not_a_difference(tmp_path):
    check_resume(saved_run(tmp_path, lambda cfg: cfg["optimizer"].update(retired_knob=3)))


def test_a_node_only_the_saved_config_has_is_still_refused(tmp_path, capsys):
    """A callback (or logger, or any node) the run had acts on the run: its absence is a change."""
    callback = {"_target_": "pretrainlab.callbacks.TokenThroughput"}
    run = saved_run(tmp_path, lambda cfg: cfg["callbacks"].update(extra=callback))
    with pytest.raises(SystemExit):
        check_resume(run)
    assert "setting callbacks.extra differs" in capsys.readouterr().err


def test_a_key_the_run_added_itself_is_still_refused(tmp_path, capsys):
    """`+seed_note=x` on the original command line, missing from the resuming one."""
    run = saved_run(tmp_path, lambda cfg: cfg.update(seed_note="x"), overrides=["+seed_note=x"])
    with pytest.raises(SystemExit):
        check_resume(run)
    assert "setting seed_note differs" in capsys.readouterr().err


def test_reproduce_fills_in_what_an_old_config_lacks(tmp_path):
    """pretrainlab-reproduce composes the saved config as it is; the job adds the missing keys
    at what their absence meant, so the rerun runs, and as the run did."""
    lacking = ("optimizer.scheduler", "optimizer.decay_ratio", "trainer.validate_at_start")
    run = saved_run(tmp_path, drop(*lacking))
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    OmegaConf.set_struct(cfg, True)  # as Hydra hands it to the job
    cfg.paths.output_dir = str(tmp_path / "out")
    cfg.paths.cache_dir = str(tmp_path / "cache")
    assert sorted(fill_schema_defaults(cfg)) == sorted(lacking)
    assert (cfg.optimizer.scheduler, cfg.optimizer.decay_ratio) == ("cosine", 0.1)
    assert cfg.trainer.validate_at_start is True  # runs saved before the key validated at the start
    validate(cfg, with_libraries=False)
    assert fill_schema_defaults(cfg) == []  # a complete config is left alone


def test_what_an_absent_key_meant_matches_the_code_reading_it():
    assert BEFORE_KEY_EXISTED["objective.noise_layout"] == LEGACY_NOISE_LAYOUT

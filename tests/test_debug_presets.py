"""The debug presets (conf/debug/): each composes, and what it switches on reaches the pl.Trainer.

The runs are test-sized (conftest's tiny model and corpus); a callback added to the run records
what the trainer was given and which batches it trained on.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import pytest
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from conftest import run_train
from pretrainlab import config_dir


class RecordTrainer(pl.Callback):
    """Keeps the trainer's debugging settings and a fingerprint of every training batch."""

    seen: ClassVar[dict[str, Any]] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        RecordTrainer.seen.update(
            overfit_batches=trainer.overfit_batches,
            limit_train_batches=trainer.limit_train_batches,
            limit_val_batches=trainer.limit_val_batches,
            max_steps=trainer.max_steps,
            profiler=type(trainer.profiler).__name__,
            batches=[],
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        digest = hashlib.sha1(batch["input_ids"].numpy().tobytes()).hexdigest()
        RecordTrainer.seen["batches"].append(digest)


def preset(name: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=[f"debug={name}", *overrides])


def test_every_preset_on_disk_is_tested():
    presets = sorted(p.stem for p in (config_dir() / "debug").glob("*.yaml"))
    assert presets == ["fast", "limit", "overfit", "profiler"]


def test_overfit_repeats_a_few_batches_with_evaluation_off():
    cfg = preset("overfit")
    assert cfg.trainer.overfit_batches == 2
    assert not any(cfg.evaluation[k] for k in ("generation", "cloze", "continuation", "probe"))
    assert list(cfg.logger) == ["csv"]


def test_limit_cuts_every_stage_short():
    cfg, full = preset("limit"), preset("fast", "~debug")
    assert cfg.trainer.max_steps < full.trainer.max_steps
    assert cfg.trainer.limit_val_batches < full.trainer.limit_val_batches
    for key in ("cloze_per_k", "continuation_items", "probe_per_class", "num_prompts"):
        assert cfg.evaluation[key] < full.evaluation[key], key


def test_profiler_is_an_object_writing_into_the_run_folder():
    cfg = preset("profiler")
    assert cfg.trainer.profiler._target_ == "pytorch_lightning.profilers.SimpleProfiler"
    assert OmegaConf.to_container(cfg.trainer.profiler)["dirpath"] == "${paths.output_dir}"


def test_the_presets_change_nothing_without_debug():
    """The new trainer keys default to what Lightning does without them."""
    cfg = preset("fast", "~debug")
    assert cfg.trainer.overfit_batches == 0.0 and cfg.trainer.profiler is None
    assert cfg.get("debug") is None


def _run(compose_cfg, *overrides: str, **kwargs: Any) -> tuple[DictConfig, dict[str, Any]]:
    cfg = compose_cfg(*overrides, **kwargs)
    with open_dict(cfg):
        cfg.callbacks.record = {"_target_": f"{__name__}.RecordTrainer"}
    RecordTrainer.seen.clear()
    run_train(cfg)
    return cfg, dict(RecordTrainer.seen)


@pytest.mark.parametrize("overfit", [True, False])
def test_overfit_trains_on_the_same_batches_over_and_over(compose_cfg, overfit):
    debug = ("debug=overfit", "trainer.overfit_batches=2") if overfit else ()
    _, seen = _run(
        compose_cfg, *debug, "trainer.max_steps=6", "trainer.val_check_interval=3", "evaluation.probe=false"
    )
    batches = seen["batches"]
    assert len(batches) == 6
    if overfit:
        assert seen["overfit_batches"] == 2
        assert batches == batches[:2] * 3  # the same two batches, in the same order
    else:
        assert len(set(batches)) == 6  # a plain run sees new data every step


def test_limit_reaches_the_trainer(compose_cfg):
    expected = preset("limit").trainer
    # The test defaults set these keys too: given the preset's values, the preset's run.
    own = [f"trainer.{k}={expected[k]}" for k in ("max_steps", "val_check_interval", "limit_val_batches")]
    _, seen = _run(compose_cfg, "debug=limit", *own, "evaluation.probe=false")
    assert (seen["max_steps"], seen["limit_val_batches"]) == (expected.max_steps, expected.limit_val_batches)
    assert len(seen["batches"]) == expected.max_steps


def test_profiler_writes_its_report_into_the_run_folder(compose_cfg, tmp_path):
    out = tmp_path / "profiled"
    _, seen = _run(compose_cfg, "debug=profiler", "trainer.max_steps=3", output_dir=out)
    assert seen["profiler"] == "SimpleProfiler"
    report = (out / "fit-profiler.txt").read_text()
    assert "run_training_batch" in report and "Mean duration" in report

"""The no-pretraining baseline (``baseline=true``): what a study's baseline rows are made of.

A baseline job trains nothing: it is the backbone as initialised from ``seed``, validated and
evaluated exactly like a trained run, so its numbers are where that objective's pretraining
started from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import make_cfg, run_train, trained_run_overrides
from hydra_plugins.pretrainlab_sweeper.pretrainlab_sweeper import ignored_settings, plan_jobs
from pretrainlab import config_dir
from pretrainlab.config import ConfigError, register_schemas
from pretrainlab.evaluation.items import read_items
from pretrainlab.validation import validate

# Cheap evaluation: cloze and continuation only (the probe and fine-tuning have their own tests).
QUICK_EVALUATION = (
    "evaluation.probe=false",
    "evaluation.generation=false",
    "evaluation.cloze_per_k=8",
    "evaluation.continuation_items=8",
)


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, cache_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("baseline") / "run"
    overrides = trained_run_overrides("causal", *QUICK_EVALUATION, "baseline=true")
    run_train(make_cfg(tiny_corpus, cache_dir, out, *overrides))
    return out


def test_a_baseline_takes_no_training_step(baseline_run: Path) -> None:
    metrics = json.loads((baseline_run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["status"] == "ok" and metrics["baseline"] is True
    assert metrics["steps"] == 0 and metrics["tokens_seen"] == 0 and metrics["train/flops"] == 0
    assert metrics["train/loss"] is None and metrics["train/tokens_per_s"] is None
    assert metrics["val/loss"] == metrics["val/loss_initial"]
    assert not list(baseline_run.glob("checkpoints/*.ckpt"))
    # Evaluated like any run: per-item scores for the study's paired tests, an exported model.
    items = read_items(baseline_run)
    assert {"cloze/exact_match_k1", "continuation/bpc"} <= set(items)
    assert items["continuation/bpc"].value() == pytest.approx(metrics["continuation/bpc"])
    assert (baseline_run / "hf" / "config.json").is_file()


def test_the_baseline_is_where_the_trained_run_started(baseline_run: Path, trained_run) -> None:
    """Same seed, same shape: the baseline's validation loss is the trained run's step-0 loss."""
    trained_dir = trained_run("causal", *QUICK_EVALUATION)
    trained = json.loads((trained_dir / "metrics.json").read_text(encoding="utf-8"))
    baseline = json.loads((baseline_run / "metrics.json").read_text(encoding="utf-8"))
    assert trained["steps"] > 0 and trained["baseline"] is False
    assert baseline["val/loss"] == pytest.approx(trained["val/loss_initial"], abs=1e-6)
    assert trained["val/loss"] < baseline["val/loss"]


def _compose(*overrides: str):
    register_schemas()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", list(overrides))


def test_a_sweep_runs_one_baseline_per_objective_whatever_the_training_settings() -> None:
    jobs = [
        [f"objective={objective}", f"objective.mask_probability={mask}", f"baseline={baseline}"]
        for objective in ("masked", "seq2seq")
        for mask in (0.15, 0.3)
        for baseline in ("false", "true")
    ]
    plan = plan_jobs(jobs, [ignored_settings(_compose(*job)) for job in jobs])
    ran = [entry["launch"] for entry in plan if entry["status"] == "launched"]
    assert ran == [
        ["objective=masked", "objective.mask_probability=0.15", "baseline=false"],
        ["objective=masked", "baseline=true"],
        ["objective=masked", "objective.mask_probability=0.3", "baseline=false"],
        ["objective=seq2seq", "objective.mask_probability=0.15", "baseline=false"],
        ["objective=seq2seq", "baseline=true"],
        ["objective=seq2seq", "objective.mask_probability=0.3", "baseline=false"],
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("baseline=maybe",), "baseline=maybe: must be true or false"),
        (("baseline=true", "resume=/tmp/run"), "baseline=true: a baseline trains nothing"),
        (("baseline=true", "model.pretrained=/tmp/hf"), "baseline=true: the baseline is a randomly"),
        (("evaluation.finetune.enabled=true", "evaluation.finetune.steps=0"), "evaluation.finetune.steps=0"),
    ],
)
def test_bad_baseline_and_finetune_settings_are_one_line(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        validate(_compose(*overrides))


def test_a_labelled_file_that_cannot_serve_is_refused_before_training(
    tmp_path: Path, tiny_corpus: Path, cache_dir: Path
) -> None:
    one_label = tmp_path / "reviews.jsonl"
    one_label.write_text("".join(json.dumps({"text": f"好 {i}", "label": "pos"}) + "\n" for i in range(20)))
    out = tmp_path / "run"
    cfg = make_cfg(
        tiny_corpus, cache_dir, out, "evaluation.finetune.enabled=true", f"data.probe.path={one_label}"
    )
    with pytest.raises(
        ConfigError, match="^data.probe.label_column=label: needs at least two different labels"
    ):
        run_train(cfg)
    assert not (out / "checkpoints").exists() and not (out / "metrics.json").exists()

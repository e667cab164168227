"""The end-of-run evaluation lands in metrics.json under stable names, for every objective."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from conftest import COMMAND_RUN_OVERRIDES, run_cli_together, run_train
from pretrainlab.config import ConfigError
from pretrainlab.validation import validate

KS = (1, 2, 4)


@pytest.mark.parametrize("objective", ["masked", "causal", "seq2seq", "prefix"])
def test_metrics_json_carries_every_evaluation(trained_run, objective):
    metrics = json.loads((trained_run(objective) / "metrics.json").read_text())
    for k in KS:
        for name in (f"cloze/exact_match_k{k}", f"cloze/token_accuracy_k{k}"):
            assert name in metrics
            assert metrics[name] is None or 0.0 <= metrics[name] <= 1.0
    assert metrics["cloze/token_accuracy_k1"] is not None
    assert "continuation/bpc" in metrics
    if objective == "masked":
        assert metrics["continuation/bpc"] is None  # not applicable, not zero
    else:
        assert metrics["continuation/bpc"] > 0 and math.isfinite(metrics["continuation/bpc"])
    assert 0.0 <= metrics["probe/accuracy"] <= 1.0
    assert metrics["params"] >= metrics["params_non_embedding"] > 0
    assert metrics["train/flops"] > 0 and metrics["tokens_seen"] > 0
    if objective != "seq2seq":
        assert metrics["train/flops"] == pytest.approx(
            6 * metrics["params_non_embedding"] * metrics["tokens_seen"]
        )


def test_evaluation_items_do_not_depend_on_the_training_seed(trained_run):
    """Same held-out prompts for runs with different seeds: only the model differs."""
    a = trained_run("causal")
    b = trained_run("causal", "seed=7")
    prompts = [
        [json.loads(line)["prompt"] for line in (r / "samples.jsonl").read_text().splitlines()]
        for r in (a, b)
    ]
    assert prompts[0] == prompts[1]


@pytest.mark.slow
def test_eval_command_recomputes_the_same_numbers_and_merges_them(command_run, cache_dir, tmp_path):
    # Trained through the command (which saves .hydra/config.yaml) with objective=prefix, every
    # evaluation part on: the session's run, copied, as an evaluation merges into its metrics.json.
    assert "objective=prefix" in COMMAND_RUN_OVERRIDES
    run = command_run.copy_to(tmp_path / "run")
    other = command_run.copy_to(tmp_path / "other")
    before = json.loads((run / "metrics.json").read_text())
    # Three independent commands (each on its own copy, or refused before reading one) at once:
    # the same evaluation again; changed evaluation settings (generation off too: it is most of
    # an evaluation's time); a setting that is not the evaluation's.
    result, changed, bad = run_cli_together(
        ["pretrainlab-eval", str(run)],
        [
            "pretrainlab-eval",
            str(other),
            "evaluation.probe=false",
            "evaluation.cloze_ks=[1]",
            "evaluation.generation=false",
        ],
        ["pretrainlab-eval", str(other), "trainer.max_steps=3"],
        cache_dir=cache_dir,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    after = json.loads((run / "metrics.json").read_text())
    evaluated = [k for k in before if k.startswith(("cloze/", "continuation/", "probe/", "gen/"))]
    assert evaluated and all(after[k] == before[k] for k in evaluated)  # deterministic
    assert after["val/loss"] == before["val/loss"]  # training metrics are kept
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert bad.returncode != 0 and "trainer.max_steps" in bad.stderr
    shutil.rmtree(run)


def test_probe_uses_a_labelled_file_from_data_probe(compose_cfg, tmp_path):
    """data.probe.path replaces the built-in reviews: a file whose label is written in the text
    itself is separable, so the probe does far better than chance on it."""
    rows = ["text,label"]
    for i in range(120):
        label = i % 2
        rows.append(f"{'好好好好' if label else '差差差差'}{i},{label}")
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = compose_cfg(
        f"data.probe.path={labelled}", "evaluation.cloze=false", "evaluation.continuation=false"
    )
    metrics = run_train(cfg)
    assert metrics["probe/accuracy"] >= 0.9
    missing = compose_cfg(f"data.probe.path={tmp_path / 'none.csv'}")
    with pytest.raises(ConfigError, match="^data.probe.path="):
        validate(missing)


@pytest.mark.parametrize("untrained", ["objective.mode=blank", "objective.gmask_probability=0"])
def test_continuing_through_an_untrained_gmask_is_not_reported(
    compose_cfg, run_training, tmp_path, untrained
):
    """Continuation and generation of the prefix objective go through [gMASK]: a run that never
    trained it reports neither (with the reason), instead of numbers that would read as findings."""
    out = tmp_path / "run"
    metrics = run_training(
        compose_cfg("objective=prefix", untrained, "evaluation.probe=false", output_dir=out)
    )
    assert metrics["continuation/bpc"] is None
    assert "never trains" in metrics["not_evaluated"]["continuation"]
    assert "never trains" in metrics["not_evaluated"]["generation"]
    assert not any(k.startswith("gen/") for k in metrics)
    assert not (out / "samples.jsonl").exists()
    assert metrics["cloze/token_accuracy_k1"] is not None  # blanks are what it trained


def test_a_generation_longer_than_the_trained_gmask_spans_is_warned_about(compose_cfg, caplog):
    cfg = compose_cfg("objective=prefix", "decoding.max_new_tokens=40")  # data.block_size=32
    with caplog.at_level("WARNING", logger="pretrainlab.validation"):
        validate(cfg)
    assert "decoding.max_new_tokens=40" in caplog.text and "block position" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="pretrainlab.validation"):
        validate(compose_cfg("objective=prefix", "decoding.max_new_tokens=20"))
    assert caplog.text == ""

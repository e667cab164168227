"""End to end: ``pretrainlab.train.train`` in-process, the exported folder, and the CLI."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer, pipeline

from conftest import COMMAND_RUN_OVERRIDES, CommandRun, cli_args, run_cli

ComposeCfg = Callable[..., DictConfig]
TrainedRun = Callable[..., Path]
AUTO = {"masked": AutoModelForMaskedLM, "causal": AutoModelForCausalLM}
STEPS, BATCH, BLOCK = 2, 4, 32  # the test defaults (conftest.TEST_DEFAULTS)


def metrics_of(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("objective", ["masked", "causal"])
def test_two_step_run_writes_metrics_checkpoints_and_export(objective: str, trained_run: TrainedRun) -> None:
    run = trained_run(objective)
    metrics = metrics_of(run)
    for key in ("val/loss", "val/loss_initial", "train/tokens_per_s", "tokens_seen", "params"):
        assert key in metrics, key
    assert metrics["objective"] == objective
    assert metrics["steps"] == STEPS
    assert math.isfinite(metrics["val/loss"]) and math.isfinite(metrics["val/loss_initial"])
    assert metrics["train/tokens_per_s"] > 0
    # Packed blocks: every position is a real token.
    assert metrics["tokens_seen"] == STEPS * BATCH * BLOCK

    model = AUTO[objective].from_pretrained(str(run / "hf"))
    assert metrics["params"] == sum(p.numel() for p in model.parameters())
    assert (run / "hf" / "config.json").is_file()
    assert (run / "hf" / "tokenizer_config.json").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    best = Path(metrics["best_checkpoint"])
    assert best.is_file() and best.parent == run / "checkpoints"


def test_exported_folder_needs_no_pretrainlab_code(trained_run: TrainedRun) -> None:
    for objective in ("masked", "causal"):
        hf = trained_run(objective) / "hf"
        for name in ("config.json", "tokenizer_config.json"):
            text = (hf / name).read_text(encoding="utf-8")
            assert "auto_map" not in text and "pretrainlab" not in text, name


@pytest.mark.parametrize("objective", ["masked", "causal"])
def test_deterministic_runs_with_the_same_seed_agree(
    objective: str, trained_run: TrainedRun, compose_cfg: ComposeCfg, run_training
) -> None:
    first = metrics_of(trained_run(objective))
    second = run_training(compose_cfg(*trained_run.overrides(objective)))
    assert second["val/loss_initial"] == first["val/loss_initial"]
    assert second["val/loss"] == first["val/loss"]
    # Same settings as the first run: the data came from the cache, untokenized.
    assert second["data_cache_hit"] is True


@pytest.mark.parametrize("objective", ["masked", "causal"])
def test_pretrained_folder_is_loaded_and_continued(
    objective: str, trained_run: TrainedRun, compose_cfg: ComposeCfg, run_training
) -> None:
    run = trained_run(objective)
    hf = run / "hf"
    before = {p: p.stat().st_mtime_ns for p in hf.iterdir()}
    trained = metrics_of(run)
    assert trained["val/loss"] < trained["val/loss_initial"]  # the first run did learn something

    continued = run_training(
        compose_cfg(
            *trained_run.overrides(objective),
            f"model.pretrained={hf}",
            "tokenizer=pretrained",
            f"tokenizer.pretrained={hf}",
        )
    )
    # Starts where the first run ended (same weights, same validation masks), not at random init.
    assert continued["val/loss_initial"] < trained["val/loss_initial"]
    assert continued["val/loss_initial"] == pytest.approx(trained["val/loss"], rel=1e-4)
    assert continued["params"] == trained["params"]
    # The pretrained folder is read, never written.
    assert {p: p.stat().st_mtime_ns for p in hf.iterdir()} == before


def test_fill_mask_pipeline_on_the_exported_folder(trained_run: TrainedRun) -> None:
    fill = pipeline("fill-mask", model=str(trained_run("masked") / "hf"), device="cpu")
    out = fill("西安交通[MASK][MASK]博物馆", top_k=3)
    assert len(out) == 2  # one list of candidates per mask
    for candidates in out:
        assert len(candidates) == 3
        for c in candidates:
            assert set(c) >= {"score", "token", "token_str", "sequence"}
            assert 0.0 <= c["score"] <= 1.0
        scores = [c["score"] for c in candidates]
        assert scores == sorted(scores, reverse=True)


def test_text_generation_pipeline_on_the_exported_folder(
    trained_run: TrainedRun, tiny_docs: list[str]
) -> None:
    hf = trained_run("causal") / "hf"
    tok = AutoTokenizer.from_pretrained(str(hf))
    prompt = tiny_docs[1][:6]
    ids = tok(prompt)["input_ids"]
    assert ids[0] != tok.cls_token_id and tok.cls_token_id not in ids and tok.sep_token_id not in ids
    generate = pipeline("text-generation", model=str(hf), device="cpu")
    torch.manual_seed(0)
    out = generate(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    text = out[0]["generated_text"]
    assert text.startswith(prompt)
    assert len(text) > len(prompt)
    assert "[CLS]" not in text


def test_metrics_json_has_ordinary_file_permissions(trained_run: TrainedRun, tmp_path: Path) -> None:
    run = trained_run("masked")
    reference = tmp_path / "plain.txt"
    reference.write_text("x")
    assert (run / "metrics.json").stat().st_mode & 0o777 == reference.stat().st_mode & 0o777


# -- the command line -------------------------------------------------------------------------


def cli(run_dir: Path, tiny_corpus: Path, cache_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_cli(
        ["pretrainlab-train", *cli_args(tiny_corpus), f"hydra.run.dir={run_dir}", *overrides], cache_dir
    )


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_cli_runs_once_and_refuses_to_overwrite(
    command_run: CommandRun, tiny_corpus: Path, cache_dir: Path, tmp_path: Path
) -> None:
    # The first run is the session's `command_run` (the command, test-sized): a copy of its folder
    # is the folder the second run is pointed at.
    first = command_run.result
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = command_run.copy_to(tmp_path / "run")
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "hf" / "config.json").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["steps"] == 2
    before = snapshot(run_dir)

    second = cli(run_dir, tiny_corpus, cache_dir, *COMMAND_RUN_OVERRIDES)  # the first run's command
    assert second.returncode != 0
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, second.stderr
    assert lines[0].startswith("error:") and "hydra.run.dir" in lines[0]
    assert snapshot(run_dir) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("objective.mask_probability=1.5", "objective.mask_probability"),
        ("data.path=/nonexistent.txt", "data.path"),
    ],
)
def test_cli_bad_input_is_one_line_naming_the_key(
    override: str, key: str, tiny_corpus: Path, cache_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    result = cli(run_dir, tiny_corpus, cache_dir, override)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and key in last, result.stderr
    # Rejected before training: nothing was trained or exported.
    assert not (run_dir / "checkpoints").exists()
    assert not (run_dir / "hf").exists()


@pytest.mark.parametrize(
    "pretrained",
    [
        False,
        True,
    ],
    ids=["random-init", "pretrained"],
)
def test_model_trains_in_train_mode(
    pretrained: bool,
    trained_run: TrainedRun,
    compose_cfg: ComposeCfg,
    run_training,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pretrainlab.objectives.base import PretrainingObjective

    hf = trained_run("masked") / "hf"
    extra = (f"model.pretrained={hf}", "tokenizer=pretrained", f"tokenizer.pretrained={hf}")
    modes: list[bool] = []
    original = PretrainingObjective.training_step

    def spy(self, batch, batch_idx):
        modes.append(all(m.training for m in self.model.modules()))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(PretrainingObjective, "training_step", spy)
    run_training(compose_cfg("objective=masked", *(extra if pretrained else ())))
    assert modes == [True] * STEPS


def test_the_step_zero_validation_is_opt_in(compose_cfg, run_training, trained_run):
    """Off by default (training starts at once); on, it is the curve's first point."""
    metrics = run_training(compose_cfg("objective=causal"))
    assert metrics["val/loss_initial"] is None and metrics["val/loss"] is not None
    run = trained_run("causal")  # trainer.validate_at_start=true
    curve = (run / "curve.csv").read_text(encoding="utf-8").splitlines()
    assert curve[1].split(",")[0] == "0"
    assert metrics_of(run)["val/loss_initial"] == pytest.approx(float(curve[1].split(",")[2]))


def test_every_experiment_validates_at_the_start(compose_cfg):
    """The studies compare curves from step 0 (and report val/loss_initial)."""
    from pretrainlab import config_dir

    for experiment in sorted((config_dir() / "experiment").glob("*.yaml")):
        assert compose_cfg(f"experiment={experiment.stem}").trainer.validate_at_start is True, experiment.stem


def test_step_metrics_are_logged_only_on_steps_the_loggers_write(compose_cfg, run_training, tmp_path):
    """train/lr and the throughput are logged on the steps Lightning writes train/loss (every
    log_every_n_steps), with the values of those steps."""
    out = tmp_path / "run"
    overrides = (
        "logger=csv",
        "trainer.max_steps=6",
        "trainer.log_every_n_steps=2",
        "trainer.val_check_interval=3",
    )
    run_training(compose_cfg("objective=causal", *overrides, output_dir=out))
    (metrics_csv,) = out.rglob("metrics.csv")
    rows = [row for row in csv.DictReader(metrics_csv.open()) if row["train/loss"]]
    assert [int(row["step"]) for row in rows] == [1, 3, 5]  # 0-based: optimizer steps 2, 4, 6
    assert all(row["train/lr"] and row["tokens_seen"] and row["train/tokens_per_s"] for row in rows)
    # The rate of the step the row belongs to, not one left over from an earlier step: cosine
    # decay over 6 steps from lr 1e-3, no warm-up step (int(0.05 * 6) = 0).
    for row in rows:
        expected = 1e-3 * 0.5 * (1 + math.cos(math.pi * int(row["step"]) / 6))
        assert float(row["train/lr"]) == pytest.approx(expected, rel=1e-5)

"""Sweeps (skipping meaningless combinations, surviving failures), W&B identity, resume, reproduce."""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import cli_args, run_cli, run_cli_together, wandb_records
from hydra_plugins.pretrainlab_sweeper.pretrainlab_sweeper import plan_jobs
from pretrainlab.reproduce import compare_metrics

TESTS = Path(__file__).parent
CAUSAL_IGNORES = ("objective.mask_probability",)
MASKED_IGNORES = ("decoding",)
# End-of-run evaluation parts a test does not read: each costs seconds per run.
NOT_GENERATION = ("evaluation.cloze=false", "evaluation.continuation=false", "evaluation.probe=false")


def test_plan_skips_combinations_that_differ_only_in_ignored_settings():
    jobs = [
        ["objective=causal", "objective.mask_probability=0.15", "decoding=greedy"],
        ["objective=causal", "objective.mask_probability=0.3", "decoding=greedy"],
        ["objective=causal", "objective.mask_probability=0.15", "decoding=top_p"],
        ["objective=masked", "objective.mask_probability=0.15", "decoding=greedy"],
        ["objective=masked", "objective.mask_probability=0.15", "decoding=top_p"],
        ["objective=masked", "objective.mask_probability=0.3", "decoding.temperature=0.5"],
    ]
    plan = plan_jobs(jobs, [CAUSAL_IGNORES] * 3 + [MASKED_IGNORES] * 3)
    assert [p["status"] for p in plan] == [
        "launched",
        "skipped",
        "launched",
        "launched",
        "skipped",
        "launched",
    ]
    assert plan[1]["duplicate_of"] == 0 and "objective.mask_probability" in plan[1]["reason"]
    assert plan[4]["duplicate_of"] == 3 and "decoding" in plan[4]["reason"]
    # Launched jobs carry no setting their objective ignores: their config says "not applicable".
    assert plan[0]["launch"] == ["objective=causal", "decoding=greedy"]
    assert plan[5]["launch"] == ["objective=masked", "objective.mask_probability=0.3"]


@pytest.mark.slow
def test_sweep_runs_each_meaningful_combination_once_and_survives_a_failure(tiny_corpus, cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    # prefix + beam search is refused (GLM decoding has no beam search): those jobs fail, the
    # others go on. The plan, the job folders and the report are checked, no evaluation numbers:
    # generation alone stays on (the folded causal job evaluates a second decoding).
    result = run_cli(
        [
            "pretrainlab-train",
            "-m",
            *cli_args(tiny_corpus),
            *NOT_GENERATION,
            "objective=causal,prefix",
            "objective.mask_probability=0.15,0.3",
            "decoding=greedy,beam",
            f"hydra.sweep.dir={sweep}",
        ],
        cache_dir,
        timeout=600,
    )
    assert result.returncode != 0
    plan = json.loads((sweep / "sweep.json").read_text())["jobs"]
    launched = [p for p in plan if p["status"] == "launched"]
    skipped = [p for p in plan if p["status"] == "skipped"]
    evaluated = [p for p in plan if p["status"] == "evaluated"]
    # causal: one model (mask_probability ignored), evaluated with both decodings; prefix: 2 x 2,
    # its beam jobs unfolded (a decoding it cannot use fails as a job of its own).
    assert len(plan) == 8 and len(launched) == 5 and len(skipped) == 2 and len(evaluated) == 1
    assert {"objective=causal", "decoding=beam"} <= set(evaluated[0]["launch"])
    statuses = {}
    for entry in launched:
        job = sweep / entry["dir"]
        metrics = json.loads((job / "metrics.json").read_text())
        # What the job ran with, as it saved it (not the plan).
        ran = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert ran == entry["launch"]
        overrides = " ".join(ran)
        statuses[overrides] = metrics["status"]
        if "objective=causal" in overrides:
            assert "objective.mask_probability" not in overrides
            assert (
                yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["objective"]["mask_probability"]
                is None
            )
    failed = [o for o, s in statuses.items() if s == "failed"]
    assert len(failed) == 2 and all("objective=prefix" in o and "decoding=beam" in o for o in failed)
    assert sum(s == "ok" for s in statuses.values()) == 3
    assert "2 of 5 jobs failed" in result.stderr.strip().splitlines()[-1]
    report = (sweep / "report.md").read_text()
    # The skipped causal combinations are the causal jobs that ran: one row each, no row of their own.
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    table = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))[2:]  # the main table
    assert len(table) == 6 and sum("| causal |" in line for line in table) == 2
    assert report.count("| failed |") == 2
    assert (sweep / "report.csv").exists() and (sweep / "val_loss_vs_tokens.png").exists()


def _wandb_records(run_dir: Path) -> list:
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    return wandb_records(log)


@pytest.mark.slow
def test_wandb_offline_runs_carry_group_job_type_name_and_samples_table(tiny_corpus, cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        [
            "pretrainlab-train",
            "-m",
            *[a for a in cli_args(tiny_corpus) if a != "logger=none"],
            "logger=wandb",
            *NOT_GENERATION,  # generation fills the samples table; the other parts go unread
            "decoding.max_new_tokens=16",
            "objective=causal",
            f"hydra.sweep.dir={sweep}",
        ],
        cache_dir,
        env={"WANDB_DIR": str(tmp_path / "wandb-home")},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run = next(r.run for r in _wandb_records(sweep / "0") if r.WhichOneof("record_type") == "run")
    assert run.run_group == "/".join(sweep.parts[-3:])  # outside the launch folder: its last 3 parts
    assert run.job_type == "causal"
    assert "objective=causal" in run.display_name
    tables = list((sweep / "0").glob("wandb/offline-run-*/files/media/table/samples_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["decoding", "prompt", "continuation", "tokens"] and table["data"]


def test_compare_metrics_ignores_timings_and_flags_any_model_difference():
    old = {"val/loss": 1.5, "steps": 4, "wall_time_s": 3.0, "train/tokens_per_s": 10.0, "objective": "masked"}
    assert compare_metrics(old, {**old, "wall_time_s": 9.0, "train/tokens_per_s": 99.0}) == []
    assert compare_metrics(old, {**old, "val/loss": 1.5000001}) == ["val/loss: 1.5 -> 1.5000001"]
    assert compare_metrics(old, {**old, "val/loss": 1.5000001}, rtol=1e-6) == []
    assert compare_metrics(old, {**old, "objective": "causal"})


def test_a_rerun_records_the_original_overrides_and_goes_where_compare_does_not_look(tmp_path, monkeypatch):
    """Fast: the training command is captured, not run. The overrides are handed to the rerun's
    Hydra callback to record, never put on its command line (the saved config holds their effect)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pretrainlab import config_dir, reproduce
    from pretrainlab.compare import collect

    sweep = tmp_path / "sweep"
    run = sweep / "2"
    (run / ".hydra").mkdir(parents=True)
    original = ["objective=causal", "~callbacks.progress_bar=null", "+callbacks.x._target_=a.B", "seed=3"]
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*original, "resume=/old/run"]))
    (run / ".hydra" / "config.yaml").write_text("seed: 3\nresume: /old/run\n")
    (run / "metrics.json").write_text('{"status": "ok"}')
    (sweep / "sweep.json").write_text(json.dumps({"jobs": [{"overrides": original, "dir": "2"}]}))
    seen: dict = {}

    def fake_run(command, *args, **kwargs):
        seen["command"] = list(command)
        path = next(
            c.split("=", 1)[1] for c in command if c.startswith("+hydra.callbacks.record_overrides.path=")
        )
        seen["recorded"] = yaml.safe_load(Path(path).read_text())
        out = Path(next(c.split("=", 1)[1] for c in command if c.startswith("hydra.run.dir=")))
        (out / ".hydra").mkdir()  # what the rerun writes
        (out / "metrics.json").write_text('{"status": "ok"}')
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(reproduce.subprocess, "run", fake_run)
    reproduce.main([str(run)])
    assert seen["recorded"] == original  # a resume= of the original is not the rerun's
    assert not set(original) & set(seen["command"])  # recorded, not applied
    (rerun,) = (sweep / "reproduced").iterdir()
    assert rerun.name.startswith("2-") and json.loads((rerun / reproduce.RERUN_MARKER).read_text())["run_dir"]
    assert [r["dir"] for r in collect(sweep)] == ["2"]  # the rerun is no job of the sweep

    # The callback replaces Hydra's record of the task overrides, and nothing else.
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["seed=3"], return_hydra_config=True)

    def task() -> dict:
        return {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "hydra"}

    before = task()
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(original))
    reproduce.RecordOverrides(str(tmp_path / "o.yaml")).on_run_start(config=cfg)
    assert list(cfg.hydra.overrides.task) == original
    assert task() == before


@pytest.mark.slow
def test_reproduce_check_passes_on_a_run_and_fails_on_tampered_metrics(command_run, cache_dir, tmp_path):
    # A run the command trained (every evaluation part on, so the check compares those numbers
    # too): the session's, in two copies, one with a tampered metrics.json. The two checks are
    # independent (own folders, the data cache already written), so they run at the same time.
    run = command_run.copy_to(tmp_path / "run")
    forged = command_run.copy_to(tmp_path / "forged")
    metrics = json.loads((forged / "metrics.json").read_text())
    metrics["val/loss"] += 1e-3
    (forged / "metrics.json").write_text(json.dumps(metrics))
    again, tampered = run_cli_together(
        ["pretrainlab-reproduce", str(run), "--check", "--out", str(tmp_path / "again")],
        ["pretrainlab-reproduce", str(forged), "--check", "--out", str(tmp_path / "third")],
        cache_dir=cache_dir,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "check passed" in again.stdout
    assert tampered.returncode == 1
    assert "val/loss" in tampered.stderr


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_metrics_of_an_uninterrupted_one(tiny_corpus, cache_dir, tmp_path):
    args = [
        *cli_args(tiny_corpus),
        "objective=causal",
        "model.dropout=0.1",  # the global RNG (dropout) must be restored too
        "trainer.max_steps=8",
        "trainer.val_check_interval=2",
        "decoding.max_new_tokens=16",  # samples.jsonl still compared; the default 48 cost seconds a run
        "+callbacks.killer._target_=kill_at_step.KillAtStep",
    ]
    env = {"PYTHONPATH": str(TESTS)}
    full, cut = tmp_path / "full", tmp_path / "cut"
    killed = run_cli(
        ["pretrainlab-train", *args, f"hydra.run.dir={cut}"], cache_dir, {**env, "KILL_AT_STEP": "5"}
    )
    assert killed.returncode == -signal.SIGKILL
    assert not (cut / "metrics.json").exists() and (cut / "checkpoints" / "last.ckpt").exists()

    killed_copy = tmp_path / "cut-copy"
    shutil.copytree(cut, killed_copy)
    # The uninterrupted run, the resumption and a resumption with a changed setting (of a copy of
    # the killed run: the resumption rewrites its folder) are independent (own folders; the killed
    # run wrote the data cache they read): they run at the same time.
    uninterrupted, resumed, changed = run_cli_together(
        ["pretrainlab-train", *args, f"hydra.run.dir={full}"],
        ["pretrainlab-train", *args, f"resume={cut}"],
        ["pretrainlab-train", *args, "trainer.max_steps=9", f"resume={killed_copy}"],
        cache_dir=cache_dir,
        env=env,
    )
    assert changed.returncode != 0 and "trainer.max_steps" in changed.stderr.strip().splitlines()[-1]
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((cut / "metrics.json").read_text())
    assert compare_metrics(a, {**b, "best_checkpoint": a["best_checkpoint"]}) == []
    assert (full / "curve.csv").read_text() == (cut / "curve.csv").read_text()
    assert (full / "samples.jsonl").read_text() == (cut / "samples.jsonl").read_text() or a[
        "decoding"
    ] is None


def test_resume_of_a_folder_that_is_not_a_run_is_refused(tiny_corpus, cache_dir, tmp_path):
    result = run_cli(["pretrainlab-train", *cli_args(tiny_corpus), f"resume={tmp_path}"], cache_dir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: resume={tmp_path}")

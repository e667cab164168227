"""Faults during training: a NaN loss, a kill while a checkpoint or the export is written."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import torch

from conftest import cli_args, run_cli
from pretrainlab.checkpoint_io import AtomicCheckpointIO
from pretrainlab.objectives.base import PretrainingObjective
from pretrainlab.train import cli
from pretrainlab.utils import write_dir_atomic

TESTS = Path(__file__).parent


def _load(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def _all_finite(state_dict: dict) -> bool:
    return all(torch.isfinite(t).all() for t in state_dict.values() if t.is_floating_point())


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    tiny_corpus, cache_dir, tmp_path, monkeypatch, capsys
):
    real_step = PretrainingObjective.training_step

    def poisoned(self, batch, batch_idx):
        loss = real_step(self, batch, batch_idx)
        return loss * float("nan") if self.global_step >= 3 else loss

    monkeypatch.setattr(PretrainingObjective, "training_step", poisoned)
    run = tmp_path / "run"
    args = [*cli_args(tiny_corpus), "trainer.max_steps=6", "trainer.val_check_interval=2"]
    monkeypatch.setattr(sys, "argv", ["pretrainlab-train", *args, f"hydra.run.dir={run}"])

    with pytest.raises(SystemExit) as exit_info:
        cli()

    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: train/loss became nan at step 3: training stopped")
    assert str(run / "checkpoints" / "last.ckpt") in lines[0]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"].startswith("NonFiniteLossError: train/loss")
    last = _load(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 2  # saved at the validation of step 2, not after the NaN
    assert _all_finite(last["state_dict"])
    assert not (run / "hf").exists()  # a failed run exports nothing


def test_atomic_checkpoint_keeps_the_old_file_when_a_save_fails(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    written_to: list[Path] = []

    def failing_save(obj, f, *args, **kwargs):
        written_to.append(Path(f.name))
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)

    assert _load(path)["step"] == 1
    assert written_to[0].parent == path.parent  # same file system: the rename is atomic
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary left


def test_temporaries_of_killed_saves_are_cleaned_up(tmp_path):
    import os

    path = tmp_path / "last.ckpt"
    dead = tmp_path / ".last.ckpt.999999999.tmp"  # no such process
    alive = tmp_path / f".last.ckpt.{os.getppid()}.tmp"  # a save in progress elsewhere
    for leftover in (dead, alive):
        leftover.write_bytes(b"half")
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    assert not dead.exists() and alive.exists()
    stale_export = tmp_path / ".hf-abc123"
    stale_export.mkdir()
    write_dir_atomic(tmp_path / "hf", lambda d: (d / "w").write_text("v"), replace=True)
    assert not stale_export.exists()


def test_write_dir_atomic_replaces_only_a_complete_folder(tmp_path):
    target = tmp_path / "hf"
    write_dir_atomic(target, lambda d: (d / "weights").write_text("v1"), replace=True)

    def broken(d: Path) -> None:
        (d / "weights").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_dir_atomic(target, broken, replace=True)
    assert (target / "weights").read_text() == "v1"
    write_dir_atomic(target, lambda d: (d / "weights").write_text("v2"), replace=True)
    assert (target / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # nothing left aside
    # A cache (replace=False) keeps a folder another job wrote meanwhile.
    write_dir_atomic(target, lambda d: (d / "weights").write_text("v3"))
    assert (target / "weights").read_text() == "v2"


def _killer_args(corpus: Path) -> list[str]:
    return [
        *cli_args(corpus),
        "trainer.max_steps=6",
        "trainer.val_check_interval=2",
        # No end-of-run evaluation: the checks read checkpoints, the export and metrics["steps"].
        *(f"evaluation.{part}=false" for part in ("cloze", "continuation", "probe", "generation")),
        "+callbacks.killer._target_=kill_during_save.KillDuringSave",
    ]


@pytest.mark.slow
def test_a_kill_while_saving_a_checkpoint_leaves_the_previous_one(tiny_corpus, cache_dir, tmp_path):
    env = {"PYTHONPATH": str(TESTS)}
    run = tmp_path / "run"
    args = [*_killer_args(tiny_corpus), f"hydra.run.dir={run}"]
    killed = run_cli(["pretrainlab-train", *args], cache_dir, {**env, "KILL_DURING_SAVE": "last:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    last = _load(run / "checkpoints" / "last.ckpt")  # complete: it loads
    assert last["global_step"] == 2  # the save at step 4 was cut; step 2's is intact
    assert _all_finite(last["state_dict"])
    assert list((run / "checkpoints").glob(".last.ckpt.*.tmp"))  # the cut save's temporary
    resumed = run_cli(["pretrainlab-train", *_killer_args(tiny_corpus), f"resume={run}"], cache_dir, env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 6
    assert not list((run / "checkpoints").glob(".*.tmp"))  # cleaned up when the run resumed


@pytest.mark.slow
def test_a_kill_during_the_export_leaves_no_half_written_model(tiny_corpus, cache_dir, tmp_path):
    run = tmp_path / "run"
    args = [*_killer_args(tiny_corpus), "objective=causal", f"hydra.run.dir={run}"]
    env = {"PYTHONPATH": str(TESTS), "KILL_DURING_SAVE": "export"}
    killed = run_cli(["pretrainlab-train", *args], cache_dir, env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    assert not (run / "hf").exists()  # the cut export never took the final name
    assert not (run / "metrics.json").exists()
    assert _load(run / "checkpoints" / "last.ckpt")["global_step"] == 6

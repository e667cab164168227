"""Replacing an export is atomic: a kill at any moment leaves a complete ``hf/`` (old or new).

The child process below replaces ``hf/`` and SIGKILLs itself just before its k-th file-system
change (rename, exchange, removal), for every k: a real kill, so no ``finally`` runs. Also: a
stale temporary checkpoint of a killed save is gone once a run starts again.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pretrainlab import utils
from pretrainlab.utils import write_dir_atomic

# Two exports of a model: every file differs, and the new one has a file the old one lacks.
OLD = {
    "config.json": json.dumps({"model_type": "gpt2", "n_layer": 1}),
    "model.safetensors": "old weights " * 200,
    "tokenizer.json": '{"version": "old"}',
}
NEW = {
    "config.json": json.dumps({"model_type": "gpt2", "n_layer": 2}),
    "model.safetensors": "new weights " * 300,
    "tokenizer.json": '{"version": "new"}',
    "generation_config.json": "{}",
}

# The child: replace `hf` with NEW, dying (SIGKILL) just before the k-th change after the files
# were written; k=0 never dies and prints how many changes there were.
CHILD = r"""
import json, os, signal, sys
from pathlib import Path
from pretrainlab import utils
from pretrainlab.utils import write_dir_atomic

target, kill_at = Path(sys.argv[1]), int(sys.argv[2])
files = json.loads(sys.argv[3])
# A call into libc through ctypes raises no audit event: the exchange announces itself.
if hasattr(utils, "_exchange"):
    real_exchange = utils._exchange
    def exchange(a, b):
        sys.audit("pretrainlab.exchange", a, b)
        return real_exchange(a, b)
    utils._exchange = exchange
CHANGES = {"os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "pretrainlab.exchange"}
state = {"armed": False, "count": 0}

def hook(event, args):
    if state["armed"] and event in CHANGES:
        state["count"] += 1
        if state["count"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

def write(folder):
    for name, text in files.items():
        (folder / name).write_text(text)
    state["armed"] = True

sys.addaudithook(hook)
write_dir_atomic(target, write, replace=True)
print(state["count"])
"""


def _write(files: dict[str, str]):
    def write(folder: Path) -> None:
        for name, text in files.items():
            (folder / name).write_text(text)

    return write


def _contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir()}


def _replace_in_child(target: Path, kill_at: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(target), str(kill_at), json.dumps(NEW)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_kill_at_any_step_of_a_replacement_leaves_a_complete_export(tmp_path):
    from transformers import AutoConfig

    run = tmp_path / "run"
    target = run / "hf"
    write_dir_atomic(target, _write(OLD), replace=True)
    dry = _replace_in_child(target, 0)
    assert dry.returncode == 0, dry.stderr
    changes = int(dry.stdout.strip())
    assert changes >= 2  # at least: put the new folder in place, remove the old one
    assert _contents(target) == NEW

    seen = set()
    for kill_at in range(1, changes + 1):
        shutil.rmtree(run)
        write_dir_atomic(target, _write(OLD), replace=True)
        killed = _replace_in_child(target, kill_at)
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr)
        assert target.is_dir(), f"no hf/ after a kill before change {kill_at} of {changes}"
        found = _contents(target)
        assert found in (OLD, NEW), f"hf/ is a mix after a kill before change {kill_at}: {sorted(found)}"
        assert AutoConfig.from_pretrained(target).n_layer == (1 if found == OLD else 2)
        seen.add("old" if found == OLD else "new")
        # The next export replaces it and clears whatever the killed one left aside.
        write_dir_atomic(target, _write(NEW), replace=True)
        assert _contents(target) == NEW and [p.name for p in run.iterdir()] == ["hf"]
    assert seen == {"old", "new"} or changes == 1


def _unsupported(code: int):
    """A stand-in for libc's renameat2 that fails with ``code`` (as on a file system without
    RENAME_EXCHANGE, or a kernel without the call)."""

    def renameat2(*args: object) -> int:
        ctypes.set_errno(code)
        return -1

    return renameat2


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP])
def test_without_an_atomic_exchange_the_two_renames_still_replace(tmp_path, monkeypatch, code):
    monkeypatch.setattr(utils, "_libc_renameat2", lambda: _unsupported(code))
    target = tmp_path / "hf"
    write_dir_atomic(target, _write(OLD), replace=True)
    write_dir_atomic(target, _write(NEW), replace=True)
    assert _contents(target) == NEW and [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_an_exchange_that_fails_otherwise_keeps_the_old_export(tmp_path, monkeypatch):
    monkeypatch.setattr(utils, "_libc_renameat2", lambda: _unsupported(errno.EACCES))
    target = tmp_path / "hf"
    write_dir_atomic(target, _write(OLD), replace=True)
    with pytest.raises(PermissionError):
        write_dir_atomic(target, _write(NEW), replace=True)
    assert _contents(target) == OLD and [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_the_exchange_is_used_where_the_system_has_it(tmp_path):
    """On Linux with glibc >= 2.28 and ext4/tmpfs/xfs/btrfs the swap is one system call."""
    if utils._libc_renameat2() is None:
        pytest.skip("no renameat2 here: the two-rename fallback is used")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "y").write_text("b")
    if not utils._exchange(a, b):
        pytest.skip("this file system has no RENAME_EXCHANGE")
    assert os.listdir(a) == ["y"] and os.listdir(b) == ["x"]


def test_a_stale_temporary_checkpoint_is_gone_once_a_run_resumes(
    trained_run, compose_cfg, run_training, tmp_path, monkeypatch
):
    """A save killed mid-write leaves ``.<name>.<pid>.tmp``; the resumed run removes it before it
    trains (not only at its next save of the same file, which may never come)."""
    from pretrainlab.objectives.base import PretrainingObjective

    run = tmp_path / "run"
    shutil.copytree(trained_run("causal"), run)
    checkpoints = run / "checkpoints"
    stale = [checkpoints / ".last.ckpt.999999999.tmp", checkpoints / ".best-1.ckpt.999999998.tmp"]
    for leftover in stale:
        leftover.write_bytes(b"half a checkpoint")
    live = checkpoints / f".last.ckpt.{os.getppid()}.tmp"  # a save in progress elsewhere: kept
    live.write_bytes(b"being written")
    left_at_first_step: list[list[str]] = []
    real_step = PretrainingObjective.training_step

    def step(self, batch, batch_idx):
        if not left_at_first_step:
            left_at_first_step.append(sorted(p.name for p in checkpoints.glob(".*.tmp")))
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(PretrainingObjective, "training_step", step)
    overrides = [o for o in trained_run.overrides("causal") if not o.startswith("trainer.max_steps")]
    cfg = compose_cfg(*overrides, "trainer.max_steps=3", f"resume={run}", output_dir=run)
    run_training(cfg)

    assert left_at_first_step == [[live.name]]
    assert not any(p.exists() for p in stale) and live.exists()

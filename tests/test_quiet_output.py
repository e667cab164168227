"""A run's output is readable: what pretrainlab has to say, not the config tree or the libraries'
tips, deprecation notices and W&B's end-of-run tables (issue 14).

One command-line run (the suite is slow already), with W&B offline as a user runs it by default,
and checks of the pieces it is made of.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from conftest import cli_args

# What the libraries underneath print by default, and must not reach a run's output.
NOISE = ("Tip:", "litlogger", "weights_only", "LeafSpec", "Run summary", "Run history", "wandb sync")


def user_environment(cache_dir: Path) -> dict[str, str]:
    """The test environment without what hides the noise (WANDB_SILENT, PYTHONWARNINGS=ignore)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("WANDB_SILENT", "PYTHONWARNINGS", "HYDRA_FULL_ERROR")
    }
    env.update(PRETRAINLAB_CACHE=str(cache_dir), WANDB_MODE="offline", PRETRAINLAB_PRINT_CONFIG="")
    return env


@pytest.mark.slow
def test_a_run_prints_no_config_tree_no_tips_and_no_wandb_summary(tiny_corpus, cache_dir, tmp_path):
    run = tmp_path / "run"
    args = [a for a in cli_args(tiny_corpus) if a not in ("logger=none", "~callbacks.progress_bar")]
    exe = shutil.which("pretrainlab-train")
    head = [exe] if exe else [sys.executable, "-m", "pretrainlab.train"]
    result = subprocess.run(
        [
            *head,
            *args,
            "logger=wandb",
            "callbacks.progress_bar._target_=pretrainlab.callbacks.StepProgressBar",
            f"hydra.run.dir={run}",
        ],
        capture_output=True,
        text=True,
        env=user_environment(cache_dir),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    for noise in NOISE:
        assert noise not in output, f"{noise!r} in the output:\n{output}"
    # The config tree: kept in the run folder, named in one line, not printed.
    tree = (run / "config_tree.log").read_text(encoding="utf-8")
    assert "objective" in tree and "_target_" in tree
    assert "_target_" not in result.stdout and "── objective" not in result.stdout
    assert f"config: {run / 'config_tree.log'}" in result.stdout
    # The progress bar counts steps of the budget, not epochs of an unbounded run.
    assert "Epoch" not in output and "/-2" not in output
    assert any(line.startswith("step") and "2/2" in line for line in result.stdout.splitlines())
    # What pretrainlab itself says is still there: the summary line ends the output.
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2
    assert list((run / "wandb").glob("offline-run-*"))  # W&B still logged the run


def test_only_the_known_third_party_messages_are_dropped(caplog):
    from pretrainlab.utils import quiet_third_party

    quiet_third_party()
    quiet_third_party()  # twice: still one filter per logger
    lightning = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    assert len(lightning.filters) == len({type(f) for f in lightning.filters})
    with caplog.at_level(logging.INFO):
        lightning.info("💡 Tip: For seamless cloud logging, try installing litlogger")
        lightning.info("GPU available: False, used: False")
        logging.getLogger("pytorch_lightning.trainer.connectors.checkpoint_connector").info(
            "`weights_only` was not set, defaulting to `False`."
        )
        logging.getLogger("pretrainlab.train").warning("💡 Tip: ours, so it stays")
    assert [r.getMessage() for r in caplog.records] == [
        "GPU available: False, used: False",
        "💡 Tip: ours, so it stays",
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()  # after simplefilter: its filters come first
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("objective.mask_probability=0.9: a warning of our own", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["objective.mask_probability=0.9: a warning of our own"]


def test_the_config_tree_is_printed_only_when_asked(compose_cfg, tmp_path, capsys, monkeypatch):
    from pretrainlab.utils import PRINT_CONFIG_VARIABLE, print_config_tree

    cfg = compose_cfg()
    monkeypatch.delenv(PRINT_CONFIG_VARIABLE, raising=False)
    print_config_tree(cfg, tmp_path / "quiet.log")
    assert capsys.readouterr().out == ""
    assert "objective" in (tmp_path / "quiet.log").read_text(encoding="utf-8")
    monkeypatch.setenv(PRINT_CONFIG_VARIABLE, "1")
    print_config_tree(cfg, tmp_path / "loud.log")
    assert "objective" in capsys.readouterr().out


def test_step_progress_bar_counts_optimizer_steps_across_epochs(tmp_path):
    """Three batches an epoch, seven steps: one bar, "step", 7 of 7 (Lightning's read "Epoch 2/-2")."""
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from pretrainlab.callbacks import StepProgressBar

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return ((batch[0] - self.w) ** 2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    bar = StepProgressBar()
    seen: list[tuple[str, float | None, float]] = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            task = bar.progress.tasks[bar.train_progress_bar_id]
            seen.append((task.description, task.total, task.completed))

    trainer = pl.Trainer(
        max_steps=7,
        max_epochs=-1,
        callbacks=[bar, Watch()],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(Tiny(), DataLoader(TensorDataset(torch.ones(3, 1)), batch_size=1))
    assert trainer.current_epoch >= 2  # the run crossed epoch boundaries
    assert all(description.strip() == "step" and total == 7 for description, total, _ in seen)
    assert [completed for *_, completed in seen] == [1, 2, 3, 4, 5, 6, 7]  # never restarted

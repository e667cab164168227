"""Several processes per run (``trainer=ddp``, ``trainer=fsdp``) inside Hydra jobs.

Lightning starts the extra ranks of DDP/FSDP by running the command again (its
``_SubprocessScriptLauncher``). Under Hydra it re-runs ``sys.argv``, which is right for a single
run but wrong for a multirun: every extra rank would start the whole sweep again. The strategies
here re-run *the job* instead - ``python -m pretrainlab.train`` with the job's own overrides, in
the job's folder, writing no Hydra files there - so a sweep of DDP jobs works like any other.

Only rank 0 writes the run folder (config tree, checkpoints, export, metrics, W&B run); the
other ranks train and exit. Between two jobs of one process the launch variables Lightning
leaves in ``os.environ`` are restored and the process group is destroyed, so the next job
starts its own ranks.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import torch
from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy
from pytorch_lightning.strategies.launchers import subprocess_script
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch import nn

# What Lightning's launcher sets in the parent process before starting the other ranks.
LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def is_rank_zero() -> bool:
    """Whether this process writes the run folder (the only process, or global rank 0)."""
    return rank_zero_only.rank == 0


def job_command(local_rank: int) -> tuple[list[str], str]:
    """The command that starts another rank of the current Hydra job, and where to run it.

    Same signature as Lightning's ``_hydra_subprocess_cmd``, which it replaces.
    """
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    command = [
        sys.executable,
        "-m",
        "pretrainlab.train",
        *hc.overrides.task,
        f'hydra.run.dir="{hc.runtime.output_dir}"',
        "hydra.output_subdir=null",  # .hydra/ is rank 0's
        f"hydra.job.name={hc.job.name}_rank{local_rank}",
        "hydra/job_logging=stdout",  # no log file of its own in the run folder
    ]
    return command, hc.runtime.cwd


class _JobLauncher(subprocess_script._SubprocessScriptLauncher):
    """Lightning's launcher, with the extra ranks started by :func:`job_command`."""

    def _call_children_scripts(self) -> None:
        # Lightning builds the command in a module-level function; swap it for this call only.
        with mock.patch.object(subprocess_script, "_hydra_subprocess_cmd", job_command):
            super()._call_children_scripts()


def _use_job_launcher(strategy: Any) -> None:
    if type(strategy._launcher) is subprocess_script._SubprocessScriptLauncher:
        strategy._launcher = _JobLauncher(
            strategy.cluster_environment, strategy.num_processes, strategy.num_nodes
        )


class JobDDPStrategy(DDPStrategy):
    """``DDPStrategy`` whose extra ranks re-run the Hydra job (see the module docstring)."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        _use_job_launcher(self)


class JobFSDPStrategy(FSDPStrategy):
    """``FSDPStrategy`` that shards by transformer block and re-runs the Hydra job for its ranks.

    Without an explicit ``auto_wrap_policy`` each block class the backbone declares unsplittable
    (transformers' ``_no_split_modules``: ``LlamaDecoderLayer``, ``BertLayer``, ``T5Block``, ...)
    becomes its own FSDP unit, as accelerate does for Hugging Face models.
    """

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        _use_job_launcher(self)

    def setup(self, trainer: Any) -> None:
        if self.kwargs.get("auto_wrap_policy") is None:
            from torch.distributed.fsdp.wrap import ModuleWrapPolicy

            self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(
                transformer_block_classes(self.lightning_module)
            )
        super().setup(trainer)


def transformer_block_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The classes of ``model``'s transformer blocks, from the ``_no_split_modules`` of every
    transformers model inside it (a wrapper such as the GLM model declares none itself)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not classes:
        raise ValueError(f"no transformer block found in {type(model).__name__} to shard by")
    return classes


@contextmanager
def launch_scope() -> Iterator[None]:
    """Run one job's training; afterwards undo what launching its ranks left in this process."""
    saved = {name: os.environ.get(name) for name in LAUNCH_VARIABLES}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

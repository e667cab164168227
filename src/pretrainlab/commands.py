"""``pretrainlab-train``'s entry point: compose, validate, and only then import the trainer.

Importing the training code (``pretrainlab.train``: torch, Lightning, transformers) takes
seconds. ``--help`` and a setting that composition or :func:`pretrainlab.validation.validate`
rejects need none of it, so this module imports only Hydra, OmegaConf, ``pretrainlab.config`` and
``pretrainlab.validation``, and a job imports the trainer once its config is valid.
``pretrainlab.train.main`` and ``pretrainlab.train.cli`` are these functions, and
``python -m pretrainlab.train`` (how DDP ranks and ``pretrainlab-reproduce`` start a job) runs
:func:`cli` too.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pretrainlab import config_dir
from pretrainlab.cli_errors import compose_config
from pretrainlab.config import ConfigError, fill_schema_defaults
from pretrainlab.failures import Interrupted, TrainingFailure
from pretrainlab.utils import finish_wandb, write_json_atomic
from pretrainlab.validation import validate

log = logging.getLogger(__name__)


def _config_store_copy(store: ConfigStore, memo: dict[int, Any]) -> ConfigStore:
    """The config store, not a copy: it is a process-wide singleton, and what it hands out is a
    copy already (``ConfigStore.load`` deep-copies the node it returns).

    Hydra deep-copies its config repository, and with it the whole store, each time it lists the
    options of a group: about 120 times for ``--help`` (every group, twice) and as many for a tab
    completion, which took ~70% of ``pretrainlab-train --help`` (2.3 s -> 0.9 s here)."""
    return store


ConfigStore.__deepcopy__ = _config_store_copy  # type: ignore[attr-defined]
# The variables Lightning reads a process's rank from (the first one set), for a failure found
# before Lightning is imported.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def _is_rank_zero() -> bool:
    """Whether this process writes the run folder. Once the trainer is imported, Lightning knows;
    before that, only an outside launcher (torchrun, SLURM) can have started other processes,
    and its variables say which one this is, as Lightning would read them."""
    if "pytorch_lightning" in sys.modules:
        from pretrainlab.distributed import is_rank_zero

        return is_rank_zero()
    rank = next((os.environ[k] for k in RANK_VARIABLES if k in os.environ), "0")
    return rank.strip() in ("", "0")


def record_failure(cfg: DictConfig, err: BaseException) -> None:
    """Leave the error in the run folder, so a sweep's report shows the job as failed."""
    if not _is_rank_zero():
        return
    try:
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "error.log").write_text("".join(traceback.format_exception(err)), encoding="utf-8")
        first_line = (str(err).splitlines() or [""])[0]
        record = {
            "status": "interrupted" if isinstance(err, Interrupted) else "failed",
            "objective": cfg.objective.name,
            "error": f"{type(err).__name__}: {first_line}",
        }
        write_json_atomic(out / "metrics.json", record)
        _summarise_in_wandb(record)
    except Exception:  # noqa: BLE001 - recording must never hide the original error
        log.exception("could not record the failure in the run folder")


def _summarise_in_wandb(record: dict[str, Any]) -> None:
    """A failed run's W&B summary says so (``status``, ``error``), as a finished run's holds its
    metrics.json: a dashboard filtering on status sees it. Only where a W&B run was started."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.run.summary.update(record)


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Validate ``cfg``, then import the trainer and train: a bad setting costs no import.

    A saved config that predates some keys (``pretrainlab-reproduce`` of an older run) gets them
    at what their absence meant, so it runs as it did; a composed config has them all."""
    added = fill_schema_defaults(cfg)
    if added:
        log.info("the config predates %s: filled in as the run had them", ", ".join(added))
    validate(cfg)
    from pretrainlab import train as training

    return training.train(cfg, validated=True)


def _job(cfg: DictConfig) -> float:
    """Run one job. Bad input exits (status 2) with one line naming the key or file and no
    traceback, a failure the user can act on (NaN loss) with one line and status 1; in a sweep
    a failing job records its error and raises, so the sweep goes on to the others. SIGTERM or
    Ctrl-C stops a sweep too, after the job in progress saved its state."""
    try:
        metrics = run_job(cfg)
    except Exception as err:
        record_failure(cfg, err)
        if isinstance(err, Interrupted):
            print(f"error: {err}", file=sys.stderr)
            sys.exit(err.exit_status)
        if isinstance(err, ConfigError | TrainingFailure) and not _in_multirun():
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2 if isinstance(err, ConfigError) else 1)
        raise
    finally:
        finish_wandb()
    summary = {k: metrics.get(k) for k in ("val/loss", "val/loss_initial", "train/tokens_per_s", "steps")}
    print(json.dumps(summary))
    return optimized_value(cfg, metrics)


def optimized_value(cfg: DictConfig, metrics: dict[str, Any]) -> float:
    """What a sweeper optimises: ``optimized_metric`` (set by hparams_search configs; val/loss when
    unset), so a search across objectives can use a metric they share (probe/accuracy). A metric
    the run did not measure is NaN, which the Optuna sweeper counts as a failed trial."""
    name = cfg.get("optimized_metric") or "val/loss"
    value = metrics.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        log.warning("optimized_metric=%s: the run measured no such metric (metrics.json)", name)
        return float("nan")
    return float(value)


# Hydra names the job after the module of its task function: "train" (the run folder's train.log,
# the `--help` header, the DDP ranks' job names), as when this function lived in pretrainlab.train.
_job.__module__ = "pretrainlab.train"
main = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")(_job)


def settings_problem(overrides: list[str]) -> str | None:
    """What composing the config, or checking its settings, rejects (one line); None if nothing.

    Run before Hydra starts the run, so a bad setting costs neither the imports of a run (its
    folder guard imports Lightning) nor a run folder. A problem this check cannot describe
    (an interpolation that needs Hydra's run, say) is left to the job, which validates again.
    """
    cfg, problem = compose_config(overrides)
    if cfg is None:
        return problem
    try:
        validate(cfg, with_libraries=False)
    except ConfigError as err:
        return str(err)
    except Exception:  # noqa: BLE001 - not a verdict on the settings: the job will see it
        return None
    return None


def cli() -> None:
    """``pretrainlab-train``: a plain run's config is composed and checked first, so a bad group
    option, a misspelt key, a wrong type or a value that cannot work is one ``error:`` line;
    flags (-m, --help, ...) go to Hydra."""
    overrides = sys.argv[1:]
    if not any(arg.startswith("-") for arg in overrides):
        problem = settings_problem(overrides)
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
    main()


if __name__ == "__main__":
    cli()

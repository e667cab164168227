"""``pretrainlab-train``: the Hydra entry point. Validate -> data -> objective -> fit -> evaluate -> export.

Returns the final validation loss, so a Hydra sweeper can optimise it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from pretrainlab import config_dir
from pretrainlab.build import build_datamodule, build_objective
from pretrainlab.callbacks import Interrupted, TokenThroughput, TrainingFailure, ValidationCurve
from pretrainlab.checkpoint_io import AtomicCheckpointIO, remove_stale_checkpoint_temporaries
from pretrainlab.cli_errors import composition_problem
from pretrainlab.config import ConfigError, validate
from pretrainlab.data.datamodule import PretrainDataModule
from pretrainlab.distributed import is_rank_zero, launch_scope
from pretrainlab.evaluate import downstream_task, evaluate_module
from pretrainlab.evaluation.bookkeeping import bookkeeping_metrics, seq2seq_token_counts
from pretrainlab.loggers import wandb_run_id
from pretrainlab.network import apply_offline
from pretrainlab.objectives.base import PretrainingObjective
from pretrainlab.utils import print_config_tree, write_json_atomic

log = logging.getLogger(__name__)
# The tokenizer runs before DataLoader workers fork; its thread pool must not be inherited.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def trainer_settings(cfg: DictConfig, tokens_per_step: float) -> dict[str, Any]:
    """Trainer keyword arguments; a token budget (``trainer.max_tokens``) decides max_steps."""
    settings = OmegaConf.to_container(cfg.trainer, resolve=True)
    if isinstance(settings["strategy"], dict):  # a strategy object, e.g. trainer=ddp's
        settings["strategy"] = instantiate(cfg.trainer.strategy)
    for ours in ("compile", "validate_at_start", "checkpoint_every_n_steps"):  # pretrainlab's own
        settings.pop(ours, None)
    max_tokens = settings.pop("max_tokens")
    if max_tokens is not None:
        settings["max_steps"] = max(1, math.ceil(max_tokens / tokens_per_step))
    # Lightning counts batches between validations; the setting counts optimizer steps, so a
    # validation (and its checkpoint) never falls inside a gradient accumulation.
    settings["val_check_interval"] = settings["val_check_interval"] * settings["accumulate_grad_batches"]
    # Validation counts optimizer steps across epochs, however short an epoch is.
    settings.update(max_epochs=-1, check_val_every_n_epoch=None, num_sanity_val_steps=0)
    # Our sampler shards every batch across ranks itself (data/sampling.py).
    settings["use_distributed_sampler"] = False
    # no_grad instead of inference_mode: the validation MeanMetric's state, first created inside
    # `validate` before fit, must stay updatable by the validations during fit.
    settings["inference_mode"] = False
    return settings


def build_loggers(cfg: DictConfig) -> list[Any]:
    """The configured loggers; a W&B run is named after the job and grouped by its sweep."""
    loggers = []
    for name, logger_cfg in cfg.logger.items():
        if name == "wandb":
            identity = {k: v for k, v in wandb_identity(cfg).items() if logger_cfg.get(k) is None}
            if logger_cfg.get("id") is None and is_rank_zero():
                # One W&B run per run folder: a resumed run continues it.
                identity.update(id=wandb_run_id(cfg.paths.output_dir), resume="allow")
            loggers.append(start_wandb(logger_cfg, identity))
        else:
            loggers.append(instantiate(logger_cfg))
    return loggers


def start_wandb(logger_cfg: DictConfig, identity: dict[str, Any]) -> Any:
    """A W&B logger that cannot kill the run: online mode that fails to start falls back to offline.

    The run is started here, not at the first metric, so that a missing login or network shows
    up before training, as a warning, and the job (and the sweep around it) goes on with an
    offline run that ``wandb sync`` can upload later.
    """
    from pretrainlab.network import quiet_wandb

    quiet_wandb(logger_cfg.get("mode"))  # before W&B starts: its telemetry ignores an offline mode
    logger = instantiate(logger_cfg, **identity)
    if logger_cfg.get("mode") in ("offline", "disabled"):
        return logger
    try:
        logger.experiment  # noqa: B018 - starts the W&B run (rank 0 only)
    except Exception as err:  # noqa: BLE001 - W&B raises many kinds (CommError, UsageError, timeouts)
        first_line = (str(err).strip().splitlines() or [""])[0]
        log.warning(
            "W&B could not start online (%s: %s); logging offline instead (upload later with wandb sync)",
            type(err).__name__,
            first_line,
        )
        _finish_wandb()
        logger = instantiate(logger_cfg, **{**identity, "mode": "offline"})
    return logger


def wandb_identity(cfg: DictConfig) -> dict[str, Any]:
    """group = the sweep (its experiment, else its folder), name = the job's overrides.

    W&B dashboards then group the jobs of one sweep and tell them apart by what was swept.
    """
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    overrides = ",".join(o for o in hc.overrides.task if not o.startswith(("hydra.", "experiment=")))
    experiment = hc.runtime.choices.get("experiment")
    multirun = hc.mode == RunMode.MULTIRUN
    group = experiment or (Path(hc.sweep.dir).as_posix() if multirun else None)
    return {"group": group, "name": overrides or cfg.objective.name}


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """``resume=RUN_DIR``: its last.ckpt (the run folder guard already checked it exists)."""
    if cfg.get("resume") is None:
        return None
    ckpt = Path(cfg.resume) / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise ConfigError(f"resume={cfg.resume}: no checkpoints/last.ckpt to resume from")
    return str(ckpt)


def _checkpoint_step(ckpt: str) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


def _world(cfg: DictConfig) -> int:
    devices = cfg.trainer.devices
    return devices if isinstance(devices, int) and devices > 0 else 1


def _check_batch_fits(cfg: DictConfig, datamodule: PretrainDataModule) -> None:
    """One batch (per process, times the processes) must fit in the training blocks."""
    blocks = len(datamodule.splits["train"])
    needed = cfg.data.batch_size * _world(cfg)
    if blocks < needed:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size}: one batch needs {needed} training blocks, the corpus "
            f"gives {blocks} blocks of {datamodule.packed_length} tokens "
            "(lower data.batch_size or data.block_size)"
        )


def _float(value: torch.Tensor | float | None) -> float | None:
    return None if value is None else float(value)


def train(cfg: DictConfig) -> dict[str, Any]:
    """One run: every failure of user input is raised as ConfigError before training starts."""
    started = time.perf_counter()
    validate(cfg)
    apply_offline(cfg.get("offline", True))  # configs saved before the key existed: offline
    out = Path(cfg.paths.output_dir)
    if is_rank_zero():
        print_config_tree(cfg, out / "config_tree.log")
    pl.seed_everything(cfg.seed, workers=True)
    objective_cls: type[PretrainingObjective] = get_class(cfg.objective._target_)

    task = downstream_task(cfg) if is_rank_zero() else None  # a bad labelled file: before training
    datamodule = build_datamodule(cfg, objective_cls)
    datamodule.setup()
    _check_batch_fits(cfg, datamodule)
    module = build_objective(cfg, datamodule)
    if cfg.trainer.get("compile", False):
        module.compile_backbone()

    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    loggers = build_loggers(cfg)
    # A token budget counts corpus tokens: T5 packs longer raw blocks, so it takes fewer steps.
    tokens_per_step = (
        cfg.data.batch_size
        * datamodule.tokens_per_example()
        * cfg.trainer.accumulate_grad_batches
        * _world(cfg)
    )
    with launch_scope():  # DDP/FSDP ranks live as long as this block
        settings = trainer_settings(cfg, tokens_per_step)
        trainer = pl.Trainer(
            **settings,
            callbacks=callbacks,
            logger=loggers or False,
            default_root_dir=str(out),
            plugins=[AtomicCheckpointIO()],
        )
        if trainer.is_global_zero:  # what killed saves left, gone before anything trains or resumes
            remove_stale_checkpoint_temporaries(trainer)
        for logger in loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

        if cfg.get("baseline", False):
            # No pretraining: the backbone as initialised from `seed`, validated and evaluated
            # like any run, so a study can see what pretraining added.
            final = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
            last_train_loss, best = None, ""
        else:
            last_train_loss, best, final = _fit(cfg, trainer, module, datamodule, settings["max_steps"])

    throughput = next(c for c in callbacks if isinstance(c, TokenThroughput))
    curve = next(c for c in callbacks if isinstance(c, ValidationCurve))
    tokens = throughput.tokens
    metrics: dict[str, Any] = {
        "status": "ok",
        "objective": objective_cls.name,
        "val/loss": final["val/loss"],
        "val/ppl": final["val/ppl"],
        "val/loss_initial": curve.initial_loss,
        "baseline": bool(cfg.get("baseline", False)),
        "train/loss": last_train_loss,
        "train/tokens_per_s": None if cfg.get("baseline", False) else throughput.tokens_per_second,
        "steps": trainer.global_step,
        **bookkeeping(cfg, module, tokens),
    }
    if trainer.is_global_zero:
        metrics.update(evaluate_module(cfg, module, datamodule, out, loggers, task))
        module.export(out / "hf")
        metrics.update(
            wall_time_s=time.perf_counter() - started,
            best_checkpoint=best,
            data_cache_hit=datamodule.cache_hit,
        )
        write_json_atomic(out / "metrics.json", metrics)
    return metrics


def _fit(
    cfg: DictConfig,
    trainer: pl.Trainer,
    module: PretrainingObjective,
    datamodule: PretrainDataModule,
    max_steps: int,
) -> tuple[float | None, str, dict[str, float]]:
    """Train (or resume) to the budget: the last training loss, the best checkpoint's path and
    the final validation metrics (the final weights are the result: every objective is judged
    after the same token budget; the best checkpoint by validation loss stays in checkpoints/)."""
    resume_from = resume_checkpoint(cfg)
    batches_per_step = cfg.trainer.accumulate_grad_batches
    datamodule.plan_stream(
        cfg.seed,
        total_batches=max_steps * batches_per_step,
        start_batch=_checkpoint_step(resume_from) * batches_per_step if resume_from else 0,
    )
    # A resumed run has its initial validation in its restored curve. (Configs saved before
    # the key existed were validated at the start.)
    if resume_from is None and cfg.trainer.get("validate_at_start", True):
        trainer.validate(module, datamodule=datamodule, verbose=False)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    last_train_loss = _float(trainer.callback_metrics.get("train/loss"))  # validate() resets these
    best = next(
        (c.best_model_path for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), ""
    )
    final = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    return last_train_loss, best, final


def bookkeeping(cfg: DictConfig, module: PretrainingObjective, tokens: int) -> dict[str, Any]:
    """Parameters, corpus tokens seen and estimated training FLOPs (T5: encoder and decoder apart)."""
    encoder = decoder = None
    if module.name == "seq2seq":
        encoder, decoder = seq2seq_token_counts(
            tokens, cfg.data.block_size, cfg.objective.mask_probability, cfg.objective.mean_noise_span_length
        )
    return bookkeeping_metrics(
        module.model, module.name, tokens, encoder_tokens=encoder, decoder_tokens=decoder
    )


def _record_failure(cfg: DictConfig, err: BaseException) -> None:
    """Leave the error in the run folder, so a sweep's report shows the job as failed."""
    if not is_rank_zero():
        return
    try:
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "error.log").write_text("".join(traceback.format_exception(err)), encoding="utf-8")
        first_line = (str(err).splitlines() or [""])[0]
        write_json_atomic(
            out / "metrics.json",
            {
                "status": "interrupted" if isinstance(err, Interrupted) else "failed",
                "objective": cfg.objective.name,
                "error": f"{type(err).__name__}: {first_line}",
            },
        )
    except Exception:  # noqa: BLE001 - recording must never hide the original error
        log.exception("could not record the failure in the run folder")


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float:
    """Run one job. Bad input exits (status 2) with one line naming the key or file and no
    traceback, a failure the user can act on (NaN loss) with one line and status 1; in a sweep
    a failing job records its error and raises, so the sweep goes on to the others. SIGTERM or
    Ctrl-C stops a sweep too, after the job in progress saved its state."""
    try:
        metrics = train(cfg)
    except Exception as err:
        _record_failure(cfg, err)
        if isinstance(err, Interrupted):
            print(f"error: {err}", file=sys.stderr)
            sys.exit(err.exit_status)
        if isinstance(err, ConfigError | TrainingFailure) and not _in_multirun():
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2 if isinstance(err, ConfigError) else 1)
        raise
    finally:
        _finish_wandb()
    summary = {k: metrics.get(k) for k in ("val/loss", "val/loss_initial", "train/tokens_per_s", "steps")}
    print(json.dumps(summary))
    return float(metrics["val/loss"])


def _finish_wandb() -> None:
    """Close the W&B run so the next job of a multirun starts its own."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def cli() -> None:
    """``pretrainlab-train``: a plain run's config is composed first, so a bad group option,
    a misspelt key or a wrong type is one ``error:`` line; flags (-m, --help, ...) go to Hydra."""
    overrides = sys.argv[1:]
    if overrides and not any(arg.startswith("-") for arg in overrides):
        problem = composition_problem(overrides)
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
    main()


if __name__ == "__main__":
    cli()

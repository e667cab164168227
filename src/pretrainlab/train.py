"""One training run: validate -> data -> objective -> fit -> evaluate -> export.

``pretrainlab-train``'s entry point is :mod:`pretrainlab.commands`, which validates the config
before importing this module (torch, Lightning and transformers take seconds to import);
``main`` and ``cli`` are importable from here too, and ``python -m pretrainlab.train`` runs it.
The job returns its `optimized_metric` (default val/loss), so a Hydra sweeper can optimise it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import ModelCheckpoint

from pretrainlab.build import build_datamodule, build_objective
from pretrainlab.callbacks import TokenThroughput, ValidationCurve
from pretrainlab.checkpoint_io import AtomicCheckpointIO, remove_stale_checkpoint_temporaries
from pretrainlab.cli_errors import composition_problem  # noqa: F401 - importable from here, as before
from pretrainlab.config import ConfigError
from pretrainlab.data.datamodule import PretrainDataModule
from pretrainlab.distributed import is_rank_zero, launch_scope
from pretrainlab.evaluate import (
    decoding_jobs,
    downstream_task,
    evaluate_module,
    evaluate_trained_decodings,
)
from pretrainlab.evaluation.bookkeeping import bookkeeping_metrics, seq2seq_token_counts
from pretrainlab.network import apply_offline
from pretrainlab.objectives.base import PretrainingObjective
from pretrainlab.utils import finish_wandb, print_config_tree, quiet_third_party, write_json_atomic
from pretrainlab.validation import accumulation, processes, validate
from pretrainlab.wandb_logging import build_wandb_logger, log_run_end

log = logging.getLogger(__name__)
# The tokenizer runs before DataLoader workers fork; its thread pool must not be inherited.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def trainer_settings(cfg: DictConfig, tokens_per_step: float) -> dict[str, Any]:
    """Trainer keyword arguments; a token budget (``trainer.max_tokens``) decides max_steps."""
    settings = OmegaConf.to_container(cfg.trainer, resolve=True)
    for key in ("strategy", "profiler"):  # objects, e.g. trainer=ddp's strategy, debug=profiler's profiler
        if isinstance(settings.get(key), dict):
            settings[key] = instantiate(cfg.trainer[key])
    for ours in ("compile", "validate_at_start", "checkpoint_every_n_steps", "global_batch_size"):  # ours
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
    """The configured loggers; W&B's (identity, x-axis, run id) is :mod:`pretrainlab.wandb_logging`'s."""
    return [
        build_wandb_logger(cfg, logger_cfg) if name == "wandb" else instantiate(logger_cfg)
        for name, logger_cfg in cfg.logger.items()
    ]


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
    return processes(cfg)


def _check_batch_fits(cfg: DictConfig, datamodule: PretrainDataModule) -> None:
    """One batch (per process, times the processes) must fit in the training blocks (a streamed
    corpus's are cut while training: a shard that gets none is an error then)."""
    if datamodule.streaming:
        return
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


def train(cfg: DictConfig, *, validated: bool = False) -> dict[str, Any]:
    """One run: every failure of user input is raised as ConfigError before training starts.

    ``validated``: the caller (the entry point) has already run ``config.validate`` on ``cfg``.
    """
    started = time.perf_counter()
    if not validated:
        validate(cfg)
    apply_offline(cfg.get("offline", True))  # configs saved before the key existed: offline
    with open_dict(cfg):  # trainer.global_batch_size decides the accumulation (saved as given)
        cfg.trainer.accumulate_grad_batches = accumulation(cfg)
    quiet_third_party()
    out = Path(cfg.paths.output_dir)
    if is_rank_zero():
        print_config_tree(cfg, out / "config_tree.log")
        log.info("config: %s", out / "config_tree.log")
    pl.seed_everything(cfg.seed, workers=True)
    objective_cls: type[PretrainingObjective] = get_class(cfg.objective._target_)

    task = downstream_task(cfg) if is_rank_zero() else None  # a bad labelled file: before training
    try:  # evaluation.decodings: an unknown option, or a model that cannot generate
        decoding_jobs(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    datamodule = build_datamodule(cfg, objective_cls)
    datamodule.setup()
    _check_batch_fits(cfg, datamodule)
    module = build_objective(cfg, datamodule)
    if cfg.trainer.get("compile", False):
        module.compile_backbone(cfg.paths.cache_dir)

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
        evaluate_trained_decodings(cfg, module, datamodule, out, metrics)
        metrics.update(
            wall_time_s=time.perf_counter() - started,
            best_checkpoint=best,
            data_cache_hit=datamodule.cache_hit,
        )
        write_json_atomic(out / "metrics.json", metrics)
        log_run_end(loggers, metrics, out / "hf")  # W&B: the summary, the hf/ artifact
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


# Kept importable from here: the entry point and its helpers moved to pretrainlab.commands.
_finish_wandb = finish_wandb
_FROM_COMMANDS = {
    "main": "main",
    "cli": "cli",
    "_record_failure": "record_failure",
    "_in_multirun": "_in_multirun",
}


def __getattr__(name: str) -> Any:
    """``pretrainlab.train.main``/``cli`` (and the old private helpers): the entry point's, looked up
    when asked for, since :mod:`pretrainlab.commands` imports this module, not the other way round."""
    if name in _FROM_COMMANDS:
        from pretrainlab import commands

        return getattr(commands, _FROM_COMMANDS[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    from pretrainlab.commands import cli

    cli()

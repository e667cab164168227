"""``pretrainlab-train``: the Hydra entry point. Build -> fit -> validate best -> export.

Returns the final validation loss, so a Hydra sweeper can optimise it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from pretrainlab import config_dir
from pretrainlab.callbacks import TokenThroughput
from pretrainlab.config import ConfigError, validate
from pretrainlab.data.datamodule import PretrainDataModule
from pretrainlab.objectives.base import PerBatchSeeded, PretrainingObjective, count_parameters
from pretrainlab.utils import print_config_tree, write_json_atomic

log = logging.getLogger(__name__)
# The tokenizer runs before DataLoader workers fork; its thread pool must not be inherited.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_datamodule(cfg: DictConfig, objective_cls: type[PretrainingObjective]) -> PretrainDataModule:
    """The shared pipeline, asked for the raw block length the objective needs."""
    return PretrainDataModule(
        cfg.data,
        cfg.tokenizer,
        objective_cls.name,
        cfg.paths.cache_dir,
        packed_length=objective_cls.packed_length(cfg.data.block_size, cfg.objective),
    )


def build_objective(cfg: DictConfig, datamodule: PretrainDataModule) -> PretrainingObjective:
    """Backbone from the size config (or pretrained), wrapped in the objective's LightningModule."""
    objective_cls: type[PretrainingObjective] = get_class(cfg.objective._target_)
    model = objective_cls.build_backbone(cfg.model, datamodule.tokenizer, cfg.data.block_size)
    module: PretrainingObjective = instantiate(
        cfg.objective,
        model=model,
        tokenizer=datamodule.tokenizer,
        optimizer=instantiate(cfg.optimizer.optimizer),
        warmup_ratio=cfg.optimizer.warmup_ratio,
        _recursive_=False,
    )
    datamodule.collate_fn = module.build_collator()
    datamodule.val_collate_fn = PerBatchSeeded(module.build_collator(), cfg.seed)
    return module


def trainer_settings(cfg: DictConfig, tokens_per_step: int) -> dict[str, Any]:
    """Trainer keyword arguments; a token budget (``trainer.max_tokens``) decides max_steps."""
    settings = OmegaConf.to_container(cfg.trainer, resolve=True)
    max_tokens = settings.pop("max_tokens")
    if max_tokens is not None:
        settings["max_steps"] = max(1, math.ceil(max_tokens / tokens_per_step))
    # Validation counts optimizer steps across epochs, however short an epoch is.
    settings.update(max_epochs=-1, check_val_every_n_epoch=None, num_sanity_val_steps=0)
    # no_grad instead of inference_mode: the validation MeanMetric's state, first created inside
    # `validate` before fit, must stay updatable by the validations during fit.
    settings["inference_mode"] = False
    return settings


def train(cfg: DictConfig) -> dict[str, Any]:
    """One run: every failure of user input is raised as ConfigError before training starts."""
    started = time.perf_counter()
    validate(cfg)
    out = Path(cfg.paths.output_dir)
    print_config_tree(cfg, out / "config_tree.log")
    pl.seed_everything(cfg.seed, workers=True)
    objective_cls: type[PretrainingObjective] = get_class(cfg.objective._target_)

    datamodule = build_datamodule(cfg, objective_cls)
    datamodule.setup()
    module = build_objective(cfg, datamodule)

    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    loggers = [instantiate(c) for c in cfg.logger.values()]
    tokens_per_step = (
        cfg.data.batch_size * cfg.data.block_size * cfg.trainer.accumulate_grad_batches * _world(cfg)
    )
    trainer = pl.Trainer(
        **trainer_settings(cfg, tokens_per_step),
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=str(out),
    )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(resolved)

    initial = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    trainer.fit(module, datamodule=datamodule)
    last_train_loss = _float(trainer.callback_metrics.get("train/loss"))  # validate() resets these
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    final = trainer.validate(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)[0]

    if trainer.is_global_zero:
        module.export(out / "hf")
    throughput = next(c for c in callbacks if isinstance(c, TokenThroughput))
    metrics = {
        "objective": objective_cls.name,
        "val/loss": final["val/loss"],
        "val/ppl": final["val/ppl"],
        "val/loss_initial": initial["val/loss"],
        "train/loss": last_train_loss,
        "train/tokens_per_s": throughput.tokens_per_second,
        "tokens_seen": throughput.tokens,
        "steps": trainer.global_step,
        "params": count_parameters(module.model),
        "wall_time_s": time.perf_counter() - started,
        "best_checkpoint": best,
        "data_cache_hit": datamodule.cache_hit,
    }
    if trainer.is_global_zero:
        write_json_atomic(out / "metrics.json", metrics)
    return metrics


def _world(cfg: DictConfig) -> int:
    devices = cfg.trainer.devices
    return devices if isinstance(devices, int) and devices > 0 else 1


def _float(value: torch.Tensor | float | None) -> float | None:
    return None if value is None else float(value)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float:
    """Run one job; bad input exits with one line naming the key or file, no traceback."""
    try:
        metrics = train(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        _finish_wandb()
    log.info(
        "val/loss %.4f (from %.4f) in %.0f s",
        metrics["val/loss"],
        metrics["val/loss_initial"],
        metrics["wall_time_s"],
    )
    print(
        json.dumps({k: metrics[k] for k in ("val/loss", "val/loss_initial", "train/tokens_per_s", "steps")})
    )
    return float(metrics["val/loss"])


def _finish_wandb() -> None:
    """Close the W&B run so the next job of a multirun starts its own."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


if __name__ == "__main__":
    main()

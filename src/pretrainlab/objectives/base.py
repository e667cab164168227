"""What every objective shares: optimisation, logging, validation, export.

A subclass owns only what makes its objective different: the backbone it builds, its
collator, and how many tokens a batch trains on. Inheritance stops at one level.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision, Precision
from torchmetrics import MeanMetric
from transformers import (
    AutoModel,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_scheduler,
)

from pretrainlab.callbacks import logging_step
from pretrainlab.config import ConfigError
from pretrainlab.data.sampling import CORPUS_TOKENS
from pretrainlab.models.backbones import backbone_config, check_family, max_positions_of
from pretrainlab.network import offline_hint
from pretrainlab.utils import write_dir_atomic

log = logging.getLogger(__name__)
Batch = dict[str, torch.Tensor]
Collator = Callable[[list[dict[str, Any]]], Batch]
IGNORE = -100


class PretrainingObjective(pl.LightningModule):
    """Base LightningModule: AdamW (``_partial_`` from Hydra) with warm-up and a schedule from
    transformers' ``get_scheduler`` (cosine decay unless ``optimizer.scheduler`` says otherwise)."""

    name: ClassVar[str]
    # transformers Auto class that loads this objective's pretrained backbones.
    auto_class: ClassVar[type] = AutoModel
    # Whether the objective writes text left to right (continuations, generation metrics).
    generative: ClassVar[bool] = True
    # Whether objective.mask_probability means anything to it.
    corrupts: ClassVar[bool] = True

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        warmup_ratio: float = 0.05,
        scheduler: str = "cosine",
        decay_ratio: float = 0.1,
        **settings: Any,
    ) -> None:
        """``optimizer`` may be None when the module only serves inference. ``decay_ratio`` is
        the share of training that ``scheduler="warmup_stable_decay"`` spends decaying."""
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.optimizer_factory = optimizer
        self.warmup_ratio = warmup_ratio
        self.scheduler_name = scheduler
        self.decay_ratio = decay_ratio
        self.settings = settings
        # In the checkpoint only: the loggers get the resolved Hydra config once (train.py), and
        # these would repeat its objective.* and optimizer.* keys at the top level.
        self.save_hyperparameters(ignore=["model", "tokenizer", "optimizer"], logger=False)
        self.val_loss = MeanMetric()

    # -- what subclasses provide --------------------------------------------------------
    @classmethod
    def build_backbone(
        cls, size: Any, tokenizer: PreTrainedTokenizerBase, block_size: int
    ) -> PreTrainedModel:
        """Random init from the shared size, or ``size.pretrained`` for continued pretraining."""
        if size.pretrained:
            try:
                model = cls.auto_class.from_pretrained(size.pretrained)
            except (OSError, ValueError) as err:
                raise ConfigError(
                    f"model.pretrained={size.pretrained}: could not be loaded ({type(err).__name__})"
                    + offline_hint(size.pretrained)
                ) from err
            limit = max_positions_of(model.config)
            if limit is not None and block_size > limit:
                raise ConfigError(
                    f"data.block_size={block_size}: larger than the pretrained model's "
                    f"maximum positions ({limit})"
                )
            if model.get_input_embeddings().num_embeddings < len(tokenizer):
                model.resize_token_embeddings(len(tokenizer))
            return model.train()  # from_pretrained returns eval mode: dropout would stay off
        family = check_family(cls.name, size.family)
        return cls.model_from_config(backbone_config(family, size, tokenizer))

    @classmethod
    def model_from_config(cls, config: PretrainedConfig) -> PreTrainedModel:
        """Random init; a generating model stops at the document separator and pads with [PAD]."""
        model = cls.auto_class.from_config(config)
        if model.can_generate():
            for key in ("eos_token_id", "pad_token_id", "bos_token_id", "decoder_start_token_id"):
                if getattr(config, key, None) is not None:
                    setattr(model.generation_config, key, getattr(config, key))
        return model

    @classmethod
    def ignored_settings(cls) -> tuple[str, ...]:
        """Config keys (and key prefixes) this objective does not use: a sweep that varies only
        these would train the same model again, so the sweeper skips such combinations."""
        return (() if cls.corrupts else ("objective.mask_probability",)) + (
            () if cls.generative else ("decoding",)
        )

    @classmethod
    def packed_length(cls, block_size: int, settings: Any) -> int:
        """Raw tokens per packed block; objectives that shrink their input ask for more."""
        return block_size

    def build_collator(self) -> Collator:
        """The objective's collator; its randomness comes from the global torch RNG."""
        raise NotImplementedError

    def count_tokens(self, batch: Batch) -> int:
        """Corpus tokens a batch was made from: what tokens/s and tokens_seen count.

        The same text counts the same for every objective (T5's sentinels and GLM's [sop]/[eop]
        are not corpus text). Batches from ``SeededCollator`` carry the count; for others the
        non-padding inputs stand in.
        """
        if CORPUS_TOKENS in batch:
            return int(batch[CORPUS_TOKENS])
        if "attention_mask" in batch and batch["attention_mask"].dim() == 2:
            return int(batch["attention_mask"].sum())
        return int((batch["input_ids"] != self.tokenizer.pad_token_id).sum())

    def count_targets(self, batch: Batch) -> int:
        """Positions that carry loss, to weight the validation mean per token, not per batch."""
        return int((batch["labels"] != IGNORE).sum())

    # -- inference (generative objectives) ------------------------------------------------
    def continuation_problem(self) -> str | None:
        """Why continuing text would go through a layout training never showed the model
        (then bits per character and generation metrics are not reported); None if trained."""
        return None

    def continue_ids(
        self, prefix: list[int], config: GenerationConfig, num_return_sequences: int = 1
    ) -> list[list[int]]:
        """Continuations of ``prefix`` (token ids, no specials), each without the prefix."""
        raise NotImplementedError(f"objective={self.name}: cannot continue text")

    def fill_spans(self, ids: list[int], config: GenerationConfig) -> tuple[list[list[int]], list[int]]:
        """Fill each [MASK] of ``ids`` with a span of any length: (spans, completed ids)."""
        raise NotImplementedError(f"objective={self.name}: cannot fill spans of unknown length")

    def continuation_nll(self, prefix: list[int], continuation: list[int]) -> torch.Tensor:
        """Per-token negative log-likelihood (nats) of ``continuation`` after ``prefix``.

        The one number every generative objective can give for the same text: used for
        self-perplexity of samples and bits per character of true continuations.
        """
        raise NotImplementedError(f"objective={self.name}: cannot score continuations")

    # -- training -----------------------------------------------------------------------
    def forward(self, batch: Batch) -> Any:
        # Keys starting with "_" are bookkeeping (e.g. the corpus token count), not model inputs.
        return self.model(**{k: v for k, v in batch.items() if not k.startswith("_")})

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self(batch).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        # Logged here rather than by LearningRateMonitor, which refuses to run without a logger;
        # global_step is not yet advanced to the step this batch makes.
        if logging_step(self.trainer, self.global_step + 1):
            self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.val_loss.update(self(batch).loss, weight=max(self.count_targets(batch), 1))

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/ppl", torch.exp(loss.clamp(max=50)), sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the global RNG (dropout is its only consumer during training, see data/sampling.py),
        so a resumed run draws the same dropout masks as an uninterrupted one."""
        checkpoint["pretrainlab_rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # As plain values and tensors: checkpoints are loaded with weights_only=True.
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("pretrainlab_rng")
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
        random.setstate(state["python"])

    def compile_backbone(self, cache_dir: str | Path | None = None) -> None:
        """``torch.compile`` the transformer body's repeated block in place, for training only
        (``pretrainlab.compile``: why so); inductor's cache under ``cache_dir`` when given.

        In place, so parameter names, checkpoints and the export are unchanged. Only the body:
        heads and losses run eagerly, where the sparse MLM head's changing number of rows would
        otherwise recompile.
        """
        from pretrainlab.compile import compile_for_training

        compile_for_training(self.model.base_model, cache_dir)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip also with the fused AdamW that ``configure_optimizers`` picks on CUDA.

        Lightning's mixed-precision plugin refuses to clip for any optimizer that unscales
        gradients inside its own step (the fused ones), because under fp16 a loss scaler's
        gradients are still scaled at clipping time. bf16 autocast has no scaler: the gradients
        are the true ones, so they are clipped as in full precision (what ``trainer=gpu`` needs).
        """
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None:
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, gradient_clip_algorithm or "norm")
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW without weight decay on biases and norms, stepped per optimizer step.

        On CUDA the fused kernel is used unless ``optimizer.optimizer.fused`` says otherwise
        (or fp16 autocast's loss scaler is on).
        """
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim < 2]
        extra = {}
        keywords = getattr(self.optimizer_factory, "keywords", {})
        # Not under fp16's loss scaler: Lightning cannot clip the gradients of a fused optimizer
        # there (see configure_gradient_clipping).
        scaler = getattr(getattr(self.trainer, "precision_plugin", None), "scaler", None)
        if self.device.type == "cuda" and keywords.get("fused") is None and scaler is None:
            extra["fused"] = True
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = self.optimizer_factory(groups, **extra)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = get_scheduler(
            self.scheduler_name,
            optimizer,
            num_warmup_steps=int(self.warmup_ratio * total),
            num_training_steps=total,
            scheduler_specific_kwargs=(
                {"num_decay_steps": max(int(self.decay_ratio * total), 1)}
                if self.scheduler_name == "warmup_stable_decay"
                else None
            ),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- export -------------------------------------------------------------------------
    def export(self, folder: str | Path) -> None:
        """``save_pretrained`` of model and tokenizer: loadable by plain transformers pipelines.

        Written atomically (``utils.write_dir_atomic``): a kill during the export leaves no
        half-written folder that would later load (or fail to) as if it were the model.
        """
        self.tokenizer.model_max_length = (
            max_positions_of(self.model.config) or self.tokenizer.model_max_length
        )

        def write(tmp: Path) -> None:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)

        write_dir_atomic(Path(folder), write, replace=True)


def _numpy_state_to_plain(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (str(name), torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(cached))

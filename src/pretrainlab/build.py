"""Build what a run needs from its config: the shared data pipeline and the objective module.

Used by training (``train.py``) and by re-evaluating a finished run (``evaluate.py``), which
must both build the data exactly as the run did.
"""

from __future__ import annotations

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from pretrainlab.data.datamodule import PretrainDataModule
from pretrainlab.data.sampling import SeededCollator
from pretrainlab.data.words import segmenter_for
from pretrainlab.objectives.base import PretrainingObjective


def build_datamodule(cfg: DictConfig, objective_cls: type[PretrainingObjective]) -> PretrainDataModule:
    """The shared pipeline, asked for the raw block length the objective needs."""
    return PretrainDataModule(
        cfg.data,
        cfg.tokenizer,
        objective_cls.name,
        cfg.paths.cache_dir,
        packed_length=objective_cls.packed_length(cfg.data.block_size, cfg.objective),
        word_segmenter=segmenter_for(cfg.objective),
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
        scheduler=cfg.optimizer.scheduler,
        decay_ratio=cfg.optimizer.decay_ratio,
        _recursive_=False,
    )
    datamodule.collate_fn = SeededCollator(module.build_collator(), cfg.seed)
    return module

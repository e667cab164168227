"""The config tree (conf/), its typed schemas and the checks that run before training."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerFast

from pretrainlab import config_dir
from pretrainlab.build import build_datamodule, build_objective
from pretrainlab.config import ConfigError
from pretrainlab.models.backbones import FAMILIES, backbone_config
from pretrainlab.train import trainer_settings
from pretrainlab.validation import validate

ComposeCfg = Callable[..., DictConfig]
CONF = config_dir()
GROUP_OPTIONS = sorted(
    (group.name, option.stem) for group in CONF.iterdir() if group.is_dir() for option in group.glob("*.yaml")
)
PRIMARY_CONFIGS = sorted(p.stem for p in CONF.glob("*.yaml"))


def compose_raw(*overrides: str, config_name: str = "train") -> DictConfig:
    """Compose without the test defaults (hydra node included)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)


def targets(node: Any, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    """Every sub-node carrying a `_target_`, with its dotted path."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
            return
        for key in node:
            yield from targets(node[key], f"{path}.{key}" if path else str(key))


def test_config_tree_is_discovered() -> None:
    groups = {g for g, _ in GROUP_OPTIONS}
    assert {
        "objective",
        "model",
        "data",
        "tokenizer",
        "optimizer",
        "trainer",
        "logger",
        "callbacks",
    } <= groups
    assert "train" in PRIMARY_CONFIGS


@pytest.mark.parametrize("config_name", PRIMARY_CONFIGS)
def test_every_primary_config_composes(config_name: str) -> None:
    assert isinstance(compose_raw(config_name=config_name), DictConfig)


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_composes_and_instantiates(
    group: str,
    option: str,
    compose_cfg: ComposeCfg,
    tmp_path: Path,
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    cfg = compose_cfg(f"{group}={option}", output_dir=tmp_path / "out")
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)

    if group == "hydra":
        hydra_cfg = compose_raw(f"hydra={option}", "paths.output_dir=/unused").hydra
        for _, node in targets(hydra_cfg.callbacks):
            instantiate(node)
        return
    if group == "objective":
        objective_cls = get_class(cfg.objective._target_)
        assert objective_cls.name == cfg.objective.name == option
        dm = build_datamodule(cfg, objective_cls)
        dm.setup()
        module = build_objective(cfg, dm)
        assert isinstance(module, pl.LightningModule)
        batch = dm.val_dataloader().collate_fn([dm.splits["validation"][i] for i in range(2)])
        assert torch.isfinite(module(batch).loss)
        return
    if group == "optimizer":
        optimizer = instantiate(cfg.optimizer.optimizer)([torch.nn.Parameter(torch.zeros(2))])
        assert isinstance(optimizer, torch.optim.Optimizer)
        return
    if group == "trainer":
        settings = trainer_settings(cfg, tokens_per_step=128)
        unknown = set(settings) - set(inspect.signature(pl.Trainer).parameters)
        assert not unknown, f"trainer.{sorted(unknown)} are not pl.Trainer arguments"
        if cfg.trainer.accelerator == "cpu":
            pl.Trainer(**settings, logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
        return
    if group == "model":
        # The option's own shape (not the test's tiny one) must suit every family.
        shape = compose_raw(f"model={option}", "paths.output_dir=/unused").model
        for family in sorted({f for fams in FAMILIES.values() for f in fams}):
            backbone_config(family, shape, tiny_tokenizer)
        return
    if group == "data" and option == "hub":
        cfg.data.name = str(tmp_path)
    if group == "tokenizer" and option == "pretrained":
        tiny_tokenizer.save_pretrained(str(tmp_path / "tok"))
        cfg.tokenizer.pretrained = str(tmp_path / "tok")
    if group in ("data", "tokenizer", "debug", "paths"):
        validate(cfg)
    for path, node in targets(cfg.get(group)):
        obj = instantiate(node)
        assert obj is not None, path
        save_dir = getattr(obj, "save_dir", None) or getattr(obj, "dirpath", None)
        if save_dir is not None:
            assert Path(save_dir).is_relative_to(tmp_path), f"{path} writes outside the run folder"
    if group == "logger" and option == "wandb":
        assert cfg.logger.wandb.mode == "offline"


def test_cache_dir_follows_the_environment_variable(cache_dir: Path) -> None:
    cfg = compose_raw("paths.output_dir=/unused")
    assert cfg.paths.cache_dir == os.environ["PRETRAINLAB_CACHE"] == str(cache_dir)


@pytest.mark.parametrize(
    "override",
    [
        "objective.mask_probablity=0.2",
        "model.hiden_size=64",
        "data.blocksize=64",
        "trainer.max_step=3",
        "tokenizer.vocab=300",
    ],
)
def test_misspelt_key_fails_at_composition(override: str, compose_cfg: ComposeCfg) -> None:
    with pytest.raises(ConfigCompositionException, match=override.split("=")[0].replace(".", r"\.")):
        compose_cfg(override)


@pytest.mark.parametrize(
    "override",
    [
        "data.block_size=abc",
        "objective.mask_probability=lots",
        "data.packing=maybe",
        "trainer.max_steps=1.5",
        "model.n_layers=two",
    ],
)
def test_wrong_type_fails_at_composition(override: str, compose_cfg: ComposeCfg) -> None:
    with pytest.raises(ConfigCompositionException):
        compose_cfg(override)


def test_test_configs_are_valid(compose_cfg: ComposeCfg) -> None:
    for objective in ("masked", "causal"):
        validate(compose_cfg(f"objective={objective}"))
    validate(compose_cfg("objective=causal", "model.family=bloom"))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["objective.mask_probability=0"], "objective.mask_probability"),
        (["objective.mask_probability=1.2"], "objective.mask_probability"),
        (["objective.mask_probability=1"], "objective.mask_probability"),
        (["objective.mask_probability=null"], "objective.mask_probability"),
        (["objective.mask_replace_prob=1.5"], "objective.mask_replace_prob"),
        (["objective.random_replace_prob=-0.1"], "objective.random_replace_prob"),
        (
            ["objective.mask_replace_prob=0.9", "objective.random_replace_prob=0.2"],
            "objective.mask_replace_prob",
        ),
        (["data.block_size=1024"], "data.block_size"),
        (["model.max_position_embeddings=16"], "data.block_size"),
        (["data.block_size=0"], "data.block_size"),
        (["data.batch_size=0"], "data.batch_size"),
        (["data.val_fraction=0.9"], "data.val_fraction"),
        (["data.val_fraction=0"], "data.val_fraction"),
        (["data.max_documents=1"], "data.max_documents"),
        (["data.path=/nonexistent/corpus.txt"], "data.path"),
        (["data.source=web"], "data.source"),
        (["model.family=gpt2"], "model.family"),
        (["objective=causal", "model.family=bert"], "model.family"),
        (["objective=causal", "model.family=mamba"], "model.family"),
        (["optimizer.optimizer.lr=0"], "optimizer.optimizer.lr"),
        (["optimizer.optimizer.lr=-0.001"], "optimizer.optimizer.lr"),
        (["trainer.max_steps=0"], "trainer.max_steps"),
        (["tokenizer.vocab_size=50"], "tokenizer.vocab_size"),
        (["model.pretrained=/nonexistent/model"], "model.pretrained"),
        (["tokenizer=pretrained", "tokenizer.pretrained=/nonexistent/tok"], "tokenizer.pretrained"),
        (["model.pretrained=./no-such-folder"], "model.pretrained"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_validate_names_the_key_at_fault(overrides: list[str], key: str, compose_cfg: ComposeCfg) -> None:
    cfg = compose_cfg(*overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert message.startswith(key), message
    assert "\n" not in message


def test_validate_causal_needs_no_mask_probability(compose_cfg: ComposeCfg) -> None:
    cfg = compose_cfg("objective=causal")
    assert cfg.objective.mask_probability is None
    validate(cfg)


def test_pretrained_hub_id_is_not_checked_locally(compose_cfg: ComposeCfg) -> None:
    validate(compose_cfg("model.pretrained=someone/some-model", "data.block_size=1024"))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["data=files"], "data.path"),
        (["data=hub"], "data.name"),
        (["tokenizer=pretrained"], "tokenizer.pretrained"),
    ],
    ids=["data.path", "data.name", "tokenizer.pretrained"],
)
def test_required_value_left_unset_is_a_config_error(overrides: list[str], key: str, cache_dir: Path) -> None:
    # `???` in a group file merged over a schema default of None stays None: validate() must
    # still name the key the user forgot.
    cfg = compose_raw(*overrides, "paths.output_dir=/unused")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(key)

"""The trainer presets: what each turns on, and a clean refusal where the hardware is missing."""

from __future__ import annotations

import pytest
import torch

from pretrainlab.config import ConfigError, validate
from pretrainlab.train import trainer_settings


def test_cpu_fast_is_bf16_autocast_and_compile(compose_cfg):
    cfg = compose_cfg("trainer=cpu_fast")
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.compile is True
    settings = trainer_settings(cfg, tokens_per_step=1.0)
    # pretrainlab's own keys never reach pl.Trainer
    assert "compile" not in settings and "validate_at_start" not in settings
    assert settings["accelerator"] == "cpu"
    validate(cfg)


def test_gpu_preset(compose_cfg):
    cfg = compose_cfg("trainer=gpu")
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.compile is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_preset_without_a_gpu_stops_before_training(compose_cfg):
    with pytest.raises(
        ConfigError, match=r"^trainer.devices=1: only 0 GPUs are visible \(trainer.accelerator=gpu\)"
    ):
        validate(compose_cfg("trainer=gpu"))


def test_fused_adamw_only_on_cuda(compose_cfg):
    """configure_optimizers asks for the fused kernel on CUDA only (CPU AdamW has none)."""
    from hydra.utils import get_class

    from pretrainlab.train import build_datamodule, build_objective

    cfg = compose_cfg("objective=causal")
    datamodule = build_datamodule(cfg, get_class(cfg.objective._target_))
    datamodule.setup()
    module = build_objective(cfg, datamodule)

    class FakeTrainer:
        estimated_stepping_batches = 10

    module._trainer = FakeTrainer()  # only estimated_stepping_batches is read
    optimizer = module.configure_optimizers()["optimizer"]
    assert not optimizer.defaults.get("fused")

"""The trainer presets: what each turns on, and a clean refusal where the hardware is missing."""

from __future__ import annotations

from typing import ClassVar

import pytest
import pytorch_lightning as pl
import torch

from pretrainlab.config import ConfigError
from pretrainlab.train import trainer_settings
from pretrainlab.validation import validate


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


@pytest.mark.parametrize(
    ("device", "scaler", "fused"),
    [("cpu", None, False), ("cuda", None, True), ("cuda", "fp16 loss scaler", False)],
)
def test_fused_adamw_on_cuda_unless_a_loss_scaler_is_on(compose_cfg, monkeypatch, device, scaler, fused):
    """configure_optimizers asks for the fused kernel on CUDA, but not under fp16's loss scaler,
    where Lightning cannot clip a fused optimizer's gradients."""
    from types import SimpleNamespace

    from hydra.utils import get_class

    from pretrainlab.train import build_datamodule, build_objective

    cfg = compose_cfg("objective=causal")
    datamodule = build_datamodule(cfg, get_class(cfg.objective._target_))
    datamodule.setup()
    module = build_objective(cfg, datamodule)
    # The device configure_optimizers reads (the weights stay on the CPU).
    monkeypatch.setattr(type(module), "device", property(lambda self: torch.device(device)))
    plugin = SimpleNamespace(scaler=scaler)
    module._trainer = SimpleNamespace(estimated_stepping_batches=10, precision_plugin=plugin)
    optimizer = module.configure_optimizers()["optimizer"]
    assert bool(optimizer.defaults.get("fused")) is fused


class GradNormAtStep(pl.Callback):
    """Records the gradient norm the optimizer steps with (after clipping)."""

    norms: ClassVar[list[float]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def record(optimizer: torch.optim.Optimizer, *args: object) -> None:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            self.norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))))

        trainer.optimizers[0].register_step_post_hook(record)


def test_fused_adamw_is_clipped_under_bf16_autocast(compose_cfg, run_training):
    """The GPU preset's combination (bf16-mixed, fused AdamW, clipping), run on CPU: Lightning's
    mixed-precision plugin refuses to clip for fused optimizers; without a loss scaler the
    gradients are true ones, and pretrainlab clips them itself."""
    GradNormAtStep.norms.clear()
    cfg = compose_cfg(
        "objective=causal",
        "trainer.precision=bf16-mixed",
        "+optimizer.optimizer.fused=true",
        "trainer.gradient_clip_val=0.01",
        "trainer.max_steps=2",
        f"+callbacks.grad_norm._target_={__name__}.GradNormAtStep",
    )
    metrics = run_training(cfg)
    assert metrics["status"] == "ok" and metrics["steps"] == 2
    assert len(GradNormAtStep.norms) == 2
    assert all(norm <= 0.01 * (1 + 1e-4) for norm in GradNormAtStep.norms), GradNormAtStep.norms


@pytest.mark.parametrize(("native", "warned"), [(False, True), (True, False)])
def test_cpu_fast_warns_on_a_cpu_without_bf16_instructions(compose_cfg, monkeypatch, caplog, native, warned):
    """Without avx512_bf16/amx_bf16, bf16 steps measured 2.8x slower than fp32: say so before training."""
    import pretrainlab.validation as validation

    monkeypatch.setattr(validation, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level("WARNING", logger="pretrainlab.validation"):
        validate(compose_cfg("trainer=cpu_fast"))
        validate(compose_cfg("trainer=cpu"))  # fp32: never warned
    lines = [r.getMessage() for r in caplog.records if "bf16 instructions" in r.getMessage()]
    assert len(lines) == (1 if warned else 0)
    assert not lines or lines[0].startswith("trainer.precision=bf16-mixed:")

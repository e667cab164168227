"""The learning-rate schedule is a config choice (transformers' get_scheduler), checked by shape."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch

from pretrainlab.objectives.causal import CausalLM

STEPS, LR = 100, 1e-3


def _lrs(scheduler: str, warmup_ratio: float = 0.1, decay_ratio: float = 0.2) -> list[float]:
    module = CausalLM(
        model=torch.nn.Linear(4, 4),
        tokenizer=None,
        optimizer=functools.partial(torch.optim.AdamW, lr=LR),
        warmup_ratio=warmup_ratio,
        scheduler=scheduler,
        decay_ratio=decay_ratio,
    )
    module._trainer = SimpleNamespace(estimated_stepping_batches=STEPS, precision_plugin=None)
    schedule = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(STEPS):
        lrs.append(schedule.get_last_lr()[0])
        schedule.optimizer.step()
        schedule.step()
    return lrs


def test_every_schedule_warms_up_linearly_to_the_peak() -> None:
    for name in ("cosine", "linear", "constant_with_warmup", "warmup_stable_decay"):
        lrs = _lrs(name)
        assert lrs[0] == 0.0 and lrs[5] == pytest.approx(LR / 2) and lrs[10] == pytest.approx(LR), name


def test_each_schedule_has_its_shape_after_warm_up() -> None:
    cosine, linear = _lrs("cosine"), _lrs("linear")
    # Halfway through the decay both are at half the peak; cosine decays slower early on.
    assert cosine[55] == pytest.approx(LR / 2) and linear[55] == pytest.approx(LR / 2)
    assert cosine[20] > linear[20] and cosine[99] < 1e-3 * LR and linear[99] == pytest.approx(LR / 90)
    assert _lrs("constant_with_warmup")[10:] == pytest.approx([LR] * 90)
    wsd = _lrs("warmup_stable_decay", decay_ratio=0.2)
    assert wsd[10:80] == pytest.approx([LR] * 70)  # stable until the last 20% of steps
    assert wsd[90] < LR and wsd[99] < wsd[90]


def test_cosine_is_the_default_and_the_same_numbers_as_before() -> None:
    """Runs saved before the choice existed trained with get_cosine_schedule_with_warmup."""
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW(torch.nn.Linear(4, 4).parameters(), lr=LR)
    reference = get_cosine_schedule_with_warmup(optimizer, 10, STEPS)
    expected = []
    for _ in range(STEPS):
        expected.append(reference.get_last_lr()[0])
        optimizer.step()
        reference.step()
    assert _lrs("cosine") == expected

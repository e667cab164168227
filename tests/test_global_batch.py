"""trainer.global_batch_size: the examples per optimizer step stay fixed while data.batch_size
(the micro-batch each process computes at once) changes; the accumulation follows."""

from __future__ import annotations

import pytest

from pretrainlab.config import ConfigError
from pretrainlab.train import trainer_settings
from pretrainlab.validation import accumulation, validate


@pytest.mark.parametrize(
    ("overrides", "steps"),
    [
        (("data.batch_size=4", "trainer.global_batch_size=16"), 4),
        (("data.batch_size=8", "trainer.global_batch_size=16"), 2),
        (("data.batch_size=4", "trainer=ddp", "trainer.global_batch_size=16"), 2),  # 2 processes
        (("data.batch_size=4", "trainer.accumulate_grad_batches=3"), 3),  # unset: as given
    ],
)
def test_the_global_batch_sets_the_accumulation(compose_cfg, overrides, steps) -> None:
    cfg = compose_cfg(*overrides)
    validate(cfg, with_libraries=False)
    assert accumulation(cfg) == steps


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("data.batch_size=4", "trainer.global_batch_size=10"),
            r"^trainer\.global_batch_size=10: must be a positive multiple of data\.batch_size x processes "
            r"\(4 x 1 = 4\)",
        ),
        (("data.batch_size=4", "trainer=ddp", "trainer.global_batch_size=12"), r"\(4 x 2 = 8\)"),
        (("trainer.global_batch_size=0",), r"^trainer\.global_batch_size=0: must be a positive multiple"),
        (
            ("trainer.devices=auto", "trainer.global_batch_size=16"),
            r"needs trainer\.devices as a number of processes \(got auto\)",
        ),
        (("trainer.devices=-1", "trainer.global_batch_size=16"), r"\(got -1\)"),
        (
            ("data.batch_size=4", "trainer.global_batch_size=16", "trainer.accumulate_grad_batches=2"),
            r"^trainer\.accumulate_grad_batches=2: trainer\.global_batch_size=16 sets it \(4\); set only one",
        ),
    ],
)
def test_a_global_batch_that_cannot_be_met_is_refused_before_training(
    compose_cfg, overrides, message
) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(*overrides), with_libraries=False)


def test_a_run_with_a_global_batch_accumulates_and_counts_its_tokens(
    compose_cfg, run_training, tmp_path
) -> None:
    """What the run did, not the plan: 2 optimizer steps of 16 blocks = 8 batches of 4."""
    cfg = compose_cfg(
        "objective=causal",
        "data.batch_size=4",
        "trainer.global_batch_size=16",
        "trainer.max_steps=2",
        *(f"evaluation.{part}=false" for part in ("probe", "cloze", "continuation", "generation")),
        "+callbacks.recorder._target_=batch_probe.RecordBatches",
        f"+callbacks.recorder.path={tmp_path}/b.jsonl",
        output_dir=tmp_path / "run",
    )
    assert trainer_settings(cfg, 1.0)["accumulate_grad_batches"] == 1  # as composed: resolved by train()
    metrics = run_training(cfg)
    batches = [line for line in (tmp_path / "b.jsonl").read_text().splitlines() if '"step"' in line]
    assert metrics["steps"] == 2 and len(batches) == 8
    assert metrics["tokens_seen"] == 2 * 16 * 32

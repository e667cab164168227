"""``trainer=cpu_fast`` compiles its training step once: not again per layer, per step, for
validation or for the end-of-run evaluation (each of which used to cost a cold compilation of
tens of seconds, or a recompilation per decoded length in generation).

Dynamo's graphs and guards do not depend on the backend, so most tests compile with
``aot_eager`` (no C++ to build: seconds); one slow test builds the real inductor kernels.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch._dynamo.utils import counters

import pretrainlab.compile as compile_module
from pretrainlab.compile import compile_counts, compile_for_training, repeated_blocks, use_inductor_cache

COUNTS: dict[str, dict[str, int]] = {}


class CountAfterFirstStep(pl.Callback):
    """Dynamo's counts once the first optimizer step (forward, backward, update) is done."""

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == 1 and "first_step" not in COUNTS:
            COUNTS["first_step"] = compile_counts()


@pytest.fixture
def fresh_dynamo(monkeypatch, tmp_path):
    """An empty dynamo state and counters, the aot_eager backend, and an inductor cache in tmp."""
    monkeypatch.setattr(compile_module, "BACKEND", "aot_eager")
    monkeypatch.setenv(compile_module.CACHE_ENV, str(tmp_path / "inductor"))
    torch._dynamo.reset()
    counters.clear()
    COUNTS.clear()
    yield
    torch._dynamo.reset()


def _tiny_llama(layers: int = 3) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return LlamaModel(config)


def test_the_layers_share_one_graph_and_evaluation_runs_eagerly(fresh_dynamo):
    """Three layers, three training steps, evaluation-mode and no-grad calls of other lengths:
    one graph, compiled once; the eager calls give the uncompiled model's numbers."""
    body = _tiny_llama(3)
    units = compile_for_training(body)
    assert units == list(body.layers)
    ids = torch.randint(0, 50, (2, 12))
    body.train()
    for _ in range(3):
        body(input_ids=ids).last_hidden_state.sum().backward()
    trained = compile_counts()
    assert trained == {"frames": 1, "graphs": 1}
    body.eval()
    with torch.no_grad():
        compiled_out = body(input_ids=ids[:1, :7]).last_hidden_state
    body.train()
    with torch.no_grad():
        body(input_ids=ids[:, :5])
    assert compile_counts() == trained
    body._compiled_call_impl = None  # fully uncompiled, for the reference
    body.eval()
    with torch.no_grad():
        assert torch.equal(compiled_out, body(input_ids=ids[:1, :7]).last_hidden_state)


def test_training_calls_build_no_kv_cache(fresh_dynamo):
    """A cache nothing reads, whose per-layer state split the block graph into one per layer."""
    body = _tiny_llama(2)
    compile_for_training(body)
    ids = torch.randint(0, 50, (2, 8))
    body.train()
    assert body(input_ids=ids).cache is None
    body.eval()
    with torch.no_grad():
        assert body(input_ids=ids).cache is not None  # generation keeps its cache


def test_repeated_blocks_are_the_outermost_lists_of_one_class():
    from transformers import BertConfig, BertModel, T5Config, T5Model

    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2))
    assert repeated_blocks(bert) == list(bert.encoder.layer)
    t5 = T5Model(T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2))
    assert repeated_blocks(t5) == [*t5.encoder.block, *t5.decoder.block]


def test_the_inductor_cache_goes_under_the_pretrainlab_cache_unless_the_user_set_one(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_module.CACHE_ENV, raising=False)
    monkeypatch.setattr(compile_module, "_ours", None)
    assert use_inductor_cache(tmp_path / "a") == (tmp_path / "a" / "inductor").resolve()
    assert os.environ[compile_module.CACHE_ENV] == str((tmp_path / "a" / "inductor").resolve())
    # A second run in the same process may move it; a user's setting stays.
    assert use_inductor_cache(tmp_path / "b") == (tmp_path / "b" / "inductor").resolve()
    monkeypatch.setenv(compile_module.CACHE_ENV, str(tmp_path / "mine"))
    assert use_inductor_cache(tmp_path / "c") == tmp_path / "mine"
    assert os.environ[compile_module.CACHE_ENV] == str(tmp_path / "mine")


def _cpu_fast_run(compose_cfg, run_training, *overrides: str) -> dict:
    cfg = compose_cfg(
        "objective=causal",
        "trainer=cpu_fast",
        "model.n_layers=2",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.validate_at_start=true",
        f"+callbacks.count._target_={__name__}.CountAfterFirstStep",
        *overrides,
    )
    return run_training(cfg)


def test_a_cpu_fast_run_compiles_its_training_step_once(fresh_dynamo, compose_cfg, run_training):
    """Four steps, three validations (at the start, after steps 2 and 4) and the end-of-run
    evaluation (cloze, continuation and generation, probe): one graph, compiled during the first
    step, and nothing compiled after it."""
    metrics = _cpu_fast_run(compose_cfg, run_training)
    assert metrics["steps"] == 4
    assert COUNTS["first_step"] == {"frames": 1, "graphs": 1}
    assert compile_counts() == COUNTS["first_step"]


@pytest.mark.slow
def test_inductor_compiles_the_cpu_fast_step_once_and_caches_it(
    compose_cfg, run_training, tmp_path, monkeypatch
):
    """The real backend (C++ kernels) with the inductor cache under paths.cache_dir: one graph,
    and the kernels land in ``<paths.cache_dir>/inductor``."""
    monkeypatch.delenv(compile_module.CACHE_ENV, raising=False)
    monkeypatch.setattr(compile_module, "_ours", None)
    torch._dynamo.reset()
    counters.clear()
    COUNTS.clear()
    cache = tmp_path / "cache"
    try:
        _cpu_fast_run(compose_cfg, run_training, f"paths.cache_dir={cache}", "trainer.max_steps=2")
    finally:
        torch._dynamo.reset()
    assert COUNTS["first_step"] == {"frames": 1, "graphs": 1}
    assert compile_counts() == COUNTS["first_step"]
    folder = Path(cache / "inductor")
    assert any(folder.rglob("*.so")) and (folder / compile_module.RECORD).is_file()

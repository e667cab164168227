"""The throughput benchmark's own arithmetic and like-for-like checks (no timings asserted)."""

from __future__ import annotations

import pytest
import torch
from benchmarks.throughput import Clock, ComparisonError, Setting, check_like_for_like, flops_per_token

SETTING = Setting("causal", "small", 4, 2, steps=3)


def _clock(ends: list[float], batches: list[torch.Tensor], pad: int = 0) -> Clock:
    clock = Clock(ends=ends)
    for ids in batches:
        clock.count({"input_ids": ids, "labels": ids.masked_fill(ids == pad, -100)}, pad)
    return clock


def test_rates_count_steps_after_the_warm_up_and_only_real_tokens():
    padded = torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]])  # 3 real tokens of 8
    clock = _clock([10.0, 11.0, 13.0], [padded, padded, padded])
    summary = clock.summary(warmup=1)
    assert summary["steps"] == 3
    assert summary["s_per_step"] == pytest.approx(1.5)  # steps 2 and 3: 3 s
    assert summary["useful_tokens_per_s"] == pytest.approx(6 / 3)
    assert summary["padding_fraction"] == pytest.approx(5 / 8)
    with pytest.raises(ComparisonError, match="warm-up"):
        clock.summary(warmup=3)


def _variant(steps: int, start: float, first_ids: int, useful: int = 8) -> dict:
    return {"steps": steps, "start_weights": start, "first_ids": first_ids, "first_batches": [useful] * 3}


def test_the_comparison_refuses_unequal_work():
    good = {"A": _variant(3, 1.0, 9), "B": _variant(3, 1.0, 7), "C": _variant(3, 1.0, 7)}
    runs = {name: [v] for name, v in good.items()}
    check_like_for_like(SETTING, good, runs)  # A's data differs by design (unpacked documents)
    with pytest.raises(ComparisonError, match="unequal step counts"):
        check_like_for_like(SETTING, good, {**runs, "C": [_variant(2, 1.0, 7)]})
    with pytest.raises(ComparisonError, match="different weights"):
        check_like_for_like(SETTING, {**good, "B": _variant(3, 2.0, 7)}, runs)
    with pytest.raises(ComparisonError, match="different batches"):
        check_like_for_like(SETTING, {**good, "C": _variant(3, 1.0, 8)}, runs)
    with pytest.raises(ComparisonError, match="not full"):
        check_like_for_like(SETTING, {**good, "B": _variant(3, 1.0, 7, 5), "C": _variant(3, 1.0, 7, 5)}, runs)


def test_model_flops_count_matrices_attention_and_only_the_needed_head_positions():
    """6 per matrix weight, 12 x layers x width x block for attention, the vocabulary projection
    only where the objective predicts; embedding lookups are free."""
    from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

    d, ff, layers, vocab, block = 16, 32, 2, 100, 8
    attention = 12 * layers * d * block
    shape = {"vocab_size": vocab, "hidden_size": d, "intermediate_size": ff, "num_hidden_layers": layers}
    llama = LlamaForCausalLM(LlamaConfig(**shape, num_attention_heads=2, num_key_value_heads=2))
    body = layers * (4 * d * d + 3 * d * ff)  # q, k, v, o; gate, up, down
    causal = Setting("causal", "tiny", block, 2, steps=1)
    assert flops_per_token(llama, causal, 1.0) == 6 * body + attention + 6 * vocab * d

    bert = BertForMaskedLM(BertConfig(**shape, num_attention_heads=2))
    body = layers * (4 * d * d + 2 * d * ff)
    head = d * d + vocab * d  # the head's transform, then the (tied) decoder
    masked = Setting("masked", "tiny", block, 2, steps=1)
    assert flops_per_token(bert, masked, 0.15) == pytest.approx(6 * body + attention + 6 * head * 0.15)


def test_break_even_counts_the_steps_until_the_faster_run_has_caught_up():
    """50 s later at 2.0 instead of 3.0 s/step: level after 51 steps; a slower step never is."""
    from benchmarks.throughput import break_even

    assert break_even(50.0, 3.0, 2.0) == pytest.approx(51.0)
    assert break_even(-1.0, 3.0, 2.0) == 1.0
    assert break_even(50.0, 2.0, 2.0) is None


def test_the_startup_table_reports_cold_warm_compile_and_break_even_per_variant():
    from benchmarks.throughput import startup_rows, startup_table

    def stamp(first: float, train_to_first: float) -> dict:
        return {"first_step_s": first, "train_start_to_first_step_s": train_to_first}

    costs = {
        "objective": "causal",
        "C": stamp(10.0, 3.0),
        "C_fast_cold": stamp(60.0, 52.0),
        "C_fast_warm": stamp(15.0, 7.0),
    }
    rate = {"s_per_step": 2.0, "useful_tokens_per_s": 3000.0}
    fast = {"s_per_step": 1.0, "useful_tokens_per_s": 6000.0}
    results = [
        {
            "setting": {"objective": "causal", "size": "small", "block": 384},
            "variants": {"C": rate, "C_fast": fast},
        }
    ]
    rows = startup_rows(costs, results, ("small", 384))
    c_fast = rows["variants"]["C_fast"]
    assert c_fast["compile_cold_s"] == pytest.approx(52.0 - 1.0 - (3.0 - 2.0))
    assert c_fast["compile_warm_s"] == pytest.approx(7.0 - 1.0 - 1.0)
    assert c_fast["break_even_steps_cold"] == pytest.approx(1 + 50.0 / 1.0)
    assert c_fast["break_even_steps_warm"] == pytest.approx(1 + 5.0 / 1.0)
    table = startup_table([rows])
    assert "| causal | C_fast | 60.0 | 15.0 | 50.0 / 5.0 | 1.000 | 6,000 | 51 / 6 |" in table


def test_the_chunked_loss_benchmark_measures_the_same_loss_dense_and_in_chunks():
    from benchmarks.chunked_loss import _measure

    dense, chunked = (_measure(tokens=64, hidden=8, vocab=50, chunk=chunk) for chunk in (None, 16))
    assert dense["variant"] == "dense" and chunked["variant"] == "chunk 16"
    assert chunked["loss"] == pytest.approx(dense["loss"], rel=1e-5)
    assert dense["step_s"] > 0 and dense["peak_above_inputs_mib"] >= 0

"""Generation metrics and the objectives' continuation / scoring methods that feed them."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import GenerationConfig

from pretrainlab.evaluation.generation import distinct_n, repetition_rate, self_perplexity
from pretrainlab.infer import load_run


def test_distinct_n_counts_unique_ngrams_over_all_samples():
    samples = [[1, 2, 3, 1], [1, 2]]
    assert distinct_n(samples, 1) == pytest.approx(3 / 6)
    assert distinct_n(samples, 2) == pytest.approx(3 / 4)  # (1,2) (2,3) (3,1) (1,2)
    assert distinct_n([[1]], 2) is None


def test_repetition_rate_counts_repeats_within_a_sample():
    assert repetition_rate([[1, 2, 3, 4, 5]], 4) == 0.0
    assert repetition_rate([[7] * 10], 4) == pytest.approx(6 / 7)  # 7 four-grams, all the same
    assert repetition_rate([[1, 2, 3, 4, 1, 2, 3, 4]], 4) == pytest.approx(1 / 5)
    assert repetition_rate([[1, 2]], 4) is None


class _FixedScorer:
    def continuation_nll(self, prefix, continuation):
        return torch.full((len(continuation),), math.log(4.0))


def test_self_perplexity_is_exp_of_mean_token_nll():
    assert self_perplexity(_FixedScorer(), [[1], [2]], [[5, 6], [7]]) == pytest.approx(4.0)
    assert self_perplexity(_FixedScorer(), [[1]], [[]]) is None


# The token that ends a continuation, as each objective writes it.
# seq2seq: eos or any sentinel ends the span behind <extra_id_0>.
END_TOKENS = {
    "causal": ["</s>"],
    "seq2seq": ["</s>"] + [f"<extra_id_{i}>" for i in range(100)],
    "prefix": ["[eop]"],
}


@pytest.mark.parametrize("objective", ["causal", "seq2seq", "prefix"])
def test_greedy_continuation_is_the_lowest_nll_token(trained_run, objective):
    """continue_ids and continuation_nll agree: greedy picks the token the model scores best.

    An empty continuation means the end marker won; scoring it as a one-token continuation
    gives its NLL at the same position.
    """
    module = load_run(trained_run(objective)).module
    tok = module.tokenizer
    prefix = tok("今天的天气", add_special_tokens=False)["input_ids"]
    greedy = GenerationConfig(
        do_sample=False, max_new_tokens=1, eos_token_id=tok.eos_token_id, pad_token_id=0
    )
    out = module.continue_ids(prefix, greedy)[0]
    assert len(out) <= 1
    candidates = out or tok.convert_tokens_to_ids(END_TOKENS[objective])
    best = min(float(module.continuation_nll(prefix, [t])[0]) for t in candidates)
    for other in range(10, len(tok), 97):
        assert best <= float(module.continuation_nll(prefix, [other])[0]) + 1e-5


@pytest.mark.parametrize("objective", ["causal", "seq2seq", "prefix"])
def test_continuation_nll_scores_each_token_given_the_previous_ones(trained_run, objective):
    module = load_run(trained_run(objective)).module
    prefix = module.tokenizer("人民", add_special_tokens=False)["input_ids"]
    cont = module.tokenizer("日报社", add_special_tokens=False)["input_ids"]
    full = module.continuation_nll(prefix, cont)
    assert full.shape == (len(cont),) and bool((full > 0).all())
    # The first token's score does not depend on what follows it (left to right).
    assert float(module.continuation_nll(prefix, cont[:1])[0]) == pytest.approx(float(full[0]), abs=1e-4)


def test_runs_record_generation_metrics_and_samples(trained_run):
    prompts = {}
    for objective in ("causal", "seq2seq", "prefix", "masked"):
        run = trained_run(objective)
        metrics = json.loads((run / "metrics.json").read_text())
        if objective == "masked":
            assert metrics["decoding"] is None and "gen/distinct_1" not in metrics
            assert not (run / "samples.jsonl").exists()
            continue
        assert metrics["decoding"] == "greedy"
        for key in (
            "gen/distinct_1",
            "gen/distinct_2",
            "gen/repetition_4",
            "gen/mean_length",
            "gen/self_ppl",
        ):
            assert key in metrics
        samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
        assert 0 < len(samples) <= 16  # evaluation.num_prompts, fewer if validation is short
        assert metrics["gen/mean_length"] == pytest.approx(sum(s["tokens"] for s in samples) / len(samples))
        prompts[objective] = [s["prompt"] for s in samples]
    # Every objective continues the same held-out prefixes.
    assert prompts["causal"] == prompts["seq2seq"] == prompts["prefix"]

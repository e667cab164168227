"""What a decoding strategy produces, measured the same way for every generative objective.

Held-out prefixes are continued with the run's decoding strategy (or, with ``pretrainlab-eval
RUN decoding=...``, any other one, on the same trained model); the samples are scored
for diversity (distinct-n), degeneration (repeated 4-grams), length, and the model's own
perplexity of what it wrote.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig

from pretrainlab.objectives.base import PretrainingObjective


def ngrams(ids: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """All n-grams of one sample, in order."""
    return [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]


def distinct_n(samples: Sequence[Sequence[int]], n: int) -> float | None:
    """Unique n-grams over all n-grams of all samples (Li et al. 2016); None if there are none."""
    grams = [g for s in samples for g in ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else None


def repetition_rate(samples: Sequence[Sequence[int]], n: int = 4) -> float | None:
    """Share of n-grams that repeat an n-gram seen earlier in the same sample."""
    repeats = total = 0
    for sample in samples:
        grams = ngrams(sample, n)
        repeats += len(grams) - len(set(grams))
        total += len(grams)
    return repeats / total if total else None


def self_perplexity(
    module: PretrainingObjective, prompts: Sequence[list[int]], samples: Sequence[list[int]]
) -> float | None:
    """exp(mean NLL) of the samples under the model that wrote them: low means confident text."""
    nll = tokens = 0.0
    for prompt, sample in zip(prompts, samples, strict=True):
        if sample:
            scores = module.continuation_nll(prompt, sample)
            nll += float(scores.sum())
            tokens += scores.numel()
    return math.exp(min(nll / tokens, 50.0)) if tokens else None


def evaluate_generation(
    module: PretrainingObjective,
    prompts: Sequence[list[int]],
    config: GenerationConfig,
    decoding: str,
    seed: int | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Continue every prompt once; return flat ``gen/*`` metrics and the samples as records.

    With ``seed``, sampling draws from a generator seeded with it (the caller's random state is
    left as it was): the samples of a sampling decoding then depend on the model, the prompts
    and the seed alone, not on what ran before, so ``pretrainlab-eval RUN decoding=top_p`` repeats
    exactly what a training run with ``decoding=top_p`` wrote, and repeats itself.
    """
    if seed is None:
        samples = [module.continue_ids(list(p), config)[0] for p in prompts]
    else:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            torch.manual_seed(seed)
            samples = [module.continue_ids(list(p), config)[0] for p in prompts]
    metrics = {
        "decoding": decoding,
        "gen/distinct_1": distinct_n(samples, 1),
        "gen/distinct_2": distinct_n(samples, 2),
        "gen/repetition_4": repetition_rate(samples, 4),
        "gen/mean_length": sum(map(len, samples)) / len(samples) if samples else None,
        "gen/self_ppl": self_perplexity(module, prompts, samples),
    }
    tok = module.tokenizer
    records = [
        {
            "decoding": decoding,
            "prompt": tok.decode(p, skip_special_tokens=True),
            "continuation": tok.decode(s, skip_special_tokens=True),
            "tokens": len(s),
        }
        for p, s in zip(prompts, samples, strict=True)
    ]
    return metrics, records

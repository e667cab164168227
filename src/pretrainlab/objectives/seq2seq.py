"""T5-style span corruption on an encoder-decoder.

Packed blocks are longer than ``data.block_size`` by exactly what corruption removes
(``compute_input_and_target_lengths``), so encoder inputs fill the block with no padding.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers import AutoModelForSeq2SeqLM, GenerationConfig

from pretrainlab.data.tokenizer import NUM_SENTINELS
from pretrainlab.generation.decode import generate_with
from pretrainlab.objectives.base import Collator, PretrainingObjective
from pretrainlab.objectives.span_corruption import (
    SpanCorruptionCollator,
    compute_input_and_target_lengths,
    fill_sentinels,
    sentinel_ids,
    split_target_by_sentinel,
)


def stop_ids(eos_token_id: int | list[int] | None, sentinel: int) -> list[int]:
    """``eos_token_id`` (an id, a list or None) as a list with ``sentinel`` added.

    Why: ``generate`` (greedy, sampling, beam search, our contrastive search) ends a sequence at
    any id of an ``eos_token_id`` list, and beam search finalises a hypothesis at any of them, so
    this is how a continuation stops at the sentinel that closes its span.
    """
    if eos_token_id is None:
        ids = []
    else:
        ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return ids if sentinel in ids else [*ids, sentinel]


# The layout of a config without objective.noise_layout: one saved before the option existed
# (pretrainlab-reproduce reruns it without the schema), when every mask was drawn uniformly.
# New configs get the schema's default, "reference".
LEGACY_NOISE_LAYOUT = "uniform"


class Seq2SeqLM(PretrainingObjective):
    """T5 encoder-decoder trained to write the dropped spans after their sentinels."""

    name: ClassVar[str] = "seq2seq"
    auto_class: ClassVar[type] = AutoModelForSeq2SeqLM

    @classmethod
    def packed_length(cls, block_size: int, settings: Any) -> int:
        """Raw tokens per block that corrupt to exactly ``block_size`` encoder tokens.

        Why the layout matters: it sets how many spans fit between the non-noise tokens (the two
        layouts agree below ``mask_probability`` 0.5).
        """
        tokens_length, _ = compute_input_and_target_lengths(
            block_size,
            settings.mask_probability,
            settings.mean_noise_span_length,
            max_noise_spans=NUM_SENTINELS,
            noise_layout=getattr(settings, "noise_layout", LEGACY_NOISE_LAYOUT),
        )
        return tokens_length

    def build_collator(self) -> Collator:
        """T5 span corruption with the run's noise density, span length and noise layout."""
        return SpanCorruptionCollator(
            self.tokenizer,
            noise_density=self.settings["mask_probability"],
            mean_noise_span_length=self.settings["mean_noise_span_length"],
            num_sentinels=NUM_SENTINELS,
            noise_layout=self.settings.get("noise_layout", LEGACY_NOISE_LAYOUT),
        )

    @torch.no_grad()
    def continue_ids(
        self, prefix: list[int], config: GenerationConfig, num_return_sequences: int = 1
    ) -> list[list[int]]:
        """T5's way to continue text: the span behind one sentinel placed after the prefix.

        The decoder is started with that sentinel, so every new token belongs to the span. The
        span ends where the model writes ``<extra_id_1>`` (or eos), so decoding stops there too:
        going on to ``max_new_tokens`` would only write spans that are thrown away, cost beam
        search several times the time, and let beam search rank hypotheses on that text.
        """
        tok = self.tokenizer
        sentinels = sentinel_ids(tok, NUM_SENTINELS)
        ids = torch.tensor([[*prefix, sentinels[0], tok.eos_token_id]], device=self.device)
        start = torch.tensor([[self.model.config.decoder_start_token_id, sentinels[0]]], device=self.device)
        config = copy.deepcopy(config)
        config.num_return_sequences = num_return_sequences
        config.eos_token_id = stop_ids(config.eos_token_id, sentinels[1])
        out = generate_with(self.model, ids, torch.ones_like(ids), config, decoder_input_ids=start)
        return [split_target_by_sentinel(row, sentinels, tok.eos_token_id).get(0, []) for row in out.tolist()]

    @torch.no_grad()
    def fill_spans(self, ids: list[int], config: GenerationConfig) -> tuple[list[list[int]], list[int]]:
        """Each [MASK] becomes the next sentinel; the decoder writes every span after its sentinel."""
        tok = self.tokenizer
        sentinels = sentinel_ids(tok, NUM_SENTINELS)
        count = iter(range(NUM_SENTINELS))
        inputs = [sentinels[next(count)] if t == tok.mask_token_id else t for t in ids]
        used = ids.count(tok.mask_token_id)
        batch = torch.tensor([[*inputs, tok.eos_token_id]], device=self.device)
        out = generate_with(self.model, batch, torch.ones_like(batch), config)[0].tolist()
        spans = split_target_by_sentinel(out, sentinels, tok.eos_token_id)
        found = [spans.get(i, []) for i in range(used)]
        return found, fill_sentinels(inputs, spans, sentinels, tok.eos_token_id, tok.pad_token_id)

    @torch.no_grad()
    def continuation_nll(self, prefix: list[int], continuation: list[int]) -> torch.Tensor:
        tok = self.tokenizer
        sentinel = sentinel_ids(tok, 1)[0]
        inputs = torch.tensor([[*prefix, sentinel, tok.eos_token_id]], device=self.device)
        labels = torch.tensor([[sentinel, *continuation]], device=self.device)
        logits = self.model(input_ids=inputs, labels=labels).logits[0].float()  # (T_dec, V)
        return F.cross_entropy(logits, labels[0], reduction="none")[1:]  # skip the sentinel itself

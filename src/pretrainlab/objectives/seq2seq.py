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


class Seq2SeqLM(PretrainingObjective):
    """T5 encoder-decoder trained to write the dropped spans after their sentinels."""

    name: ClassVar[str] = "seq2seq"
    auto_class: ClassVar[type] = AutoModelForSeq2SeqLM

    @classmethod
    def packed_length(cls, block_size: int, settings: Any) -> int:
        tokens_length, _ = compute_input_and_target_lengths(
            block_size,
            settings.mask_probability,
            settings.mean_noise_span_length,
            max_noise_spans=NUM_SENTINELS,
        )
        return tokens_length

    def build_collator(self) -> Collator:
        return SpanCorruptionCollator(
            self.tokenizer,
            noise_density=self.settings["mask_probability"],
            mean_noise_span_length=self.settings["mean_noise_span_length"],
            num_sentinels=NUM_SENTINELS,
        )

    @torch.no_grad()
    def continue_ids(
        self, prefix: list[int], config: GenerationConfig, num_return_sequences: int = 1
    ) -> list[list[int]]:
        """T5's way to continue text: the span behind one sentinel placed after the prefix.

        The decoder is started with that sentinel, so every new token belongs to the span.
        """
        tok = self.tokenizer
        sentinels = sentinel_ids(tok, NUM_SENTINELS)
        ids = torch.tensor([[*prefix, sentinels[0], tok.eos_token_id]], device=self.device)
        start = torch.tensor([[self.model.config.decoder_start_token_id, sentinels[0]]], device=self.device)
        config = copy.deepcopy(config)
        config.num_return_sequences = num_return_sequences
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

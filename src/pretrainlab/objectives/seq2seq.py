"""T5-style span corruption on an encoder-decoder.

Packed blocks are longer than ``data.block_size`` by exactly what corruption removes
(``compute_input_and_target_lengths``), so encoder inputs fill the block with no padding.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import AutoModelForSeq2SeqLM, PretrainedConfig, PreTrainedModel

from pretrainlab.data.tokenizer import NUM_SENTINELS
from pretrainlab.objectives.base import IGNORE, Batch, Collator, PretrainingObjective
from pretrainlab.objectives.span_corruption import SpanCorruptionCollator, compute_input_and_target_lengths


class Seq2SeqLM(PretrainingObjective):
    """T5 encoder-decoder trained to write the dropped spans after their sentinels."""

    name: ClassVar[str] = "seq2seq"
    auto_class: ClassVar[type] = AutoModelForSeq2SeqLM

    @classmethod
    def model_from_config(cls, config: PretrainedConfig) -> PreTrainedModel:
        model = AutoModelForSeq2SeqLM.from_config(config)
        model.generation_config.decoder_start_token_id = config.decoder_start_token_id
        model.generation_config.eos_token_id = config.eos_token_id
        model.generation_config.pad_token_id = config.pad_token_id
        return model

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

    def count_tokens(self, batch: Batch) -> int:
        # Encoder inputs plus decoder targets: both are computed on.
        return int(batch["attention_mask"].sum()) + int((batch["labels"] != IGNORE).sum())

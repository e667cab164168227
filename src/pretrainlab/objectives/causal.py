"""GPT-style next-token language modelling.

Labels are the inputs themselves (the model shifts them), padding excluded: exactly
transformers' ``DataCollatorForLanguageModeling(mlm=False)``. Documents inside a packed block
are separated by eos, so the model learns where one ends and the next begins.
"""

from __future__ import annotations

from typing import ClassVar

from transformers import (
    AutoModelForCausalLM,
    DataCollatorForLanguageModeling,
    PretrainedConfig,
    PreTrainedModel,
)

from pretrainlab.objectives.base import IGNORE, Batch, Collator, PretrainingObjective


class CausalLM(PretrainingObjective):
    """Decoder (Llama, GPT-2 or Bloom family) trained on next-token prediction."""

    name: ClassVar[str] = "causal"
    auto_class: ClassVar[type] = AutoModelForCausalLM

    @classmethod
    def model_from_config(cls, config: PretrainedConfig) -> PreTrainedModel:
        model = AutoModelForCausalLM.from_config(config)
        # Generation stops at the document separator and pads with the tokenizer's pad.
        model.generation_config.eos_token_id = config.eos_token_id
        model.generation_config.pad_token_id = config.pad_token_id
        model.generation_config.bos_token_id = config.bos_token_id
        return model

    def build_collator(self) -> Collator:
        return DataCollatorForLanguageModeling(self.tokenizer, mlm=False)

    def count_targets(self, batch: Batch) -> int:
        # The model shifts labels: the first position of each row predicts nothing.
        return int((batch["labels"][:, 1:] != IGNORE).sum())

"""GLM-style autoregressive blank infilling (one span at the end = a prefix LM).

The backbone is a decoder driven with a custom 4D mask and 2D positions by
:class:`pretrainlab.models.glm.GLMForBlankInfilling`; the corruption is
:class:`pretrainlab.objectives.blank_infilling.BlankInfillingCollator`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from pretrainlab.models.glm import MODEL_TYPE, build_glm
from pretrainlab.objectives.base import Collator, PretrainingObjective
from pretrainlab.objectives.blank_infilling import BlankInfillingCollator


class PrefixLM(PretrainingObjective):
    """Part A read bidirectionally, part B (the blanks) written causally."""

    name: ClassVar[str] = "prefix"
    auto_class: ClassVar[type] = AutoModel

    @classmethod
    def model_from_config(cls, config: PretrainedConfig) -> PreTrainedModel:
        # Block positions count inside one span, and a span is shorter than its block.
        return build_glm(config, max_block_positions=config.max_position_embeddings + 1)

    @classmethod
    def build_backbone(cls, size: Any, tokenizer: Any, block_size: int) -> PreTrainedModel:
        """A saved GLM loads as is; a plain causal checkpoint becomes the backbone of a new one.

        The second case is continued pretraining of e.g. a Llama checkpoint with blank
        infilling: only the block-position embedding starts from scratch.
        """
        if size.pretrained and AutoConfig.from_pretrained(size.pretrained).model_type != MODEL_TYPE:
            backbone = AutoModelForCausalLM.from_pretrained(size.pretrained)
            if backbone.get_input_embeddings().num_embeddings < len(tokenizer):
                backbone.resize_token_embeddings(len(tokenizer))
            model = cls.model_from_config(backbone.config)
            model.backbone = backbone
            return model
        return super().build_backbone(size, tokenizer, block_size)

    def build_collator(self) -> Collator:
        s = self.settings
        return BlankInfillingCollator(
            self.tokenizer,
            mask_probability=s["mask_probability"],
            span_poisson_lambda=s["span_poisson_lambda"],
            mode=s["mode"],
            gmask_probability=s["gmask_probability"],
            pad_to_multiple_of=8,
        )

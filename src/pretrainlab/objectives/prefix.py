"""GLM-style autoregressive blank infilling (one span at the end = a prefix LM).

The backbone is a decoder driven with a custom 4D mask and 2D positions by
:class:`pretrainlab.models.glm.GLMForBlankInfilling`; the corruption is
:class:`pretrainlab.objectives.blank_infilling.BlankInfillingCollator`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedModel,
)

from pretrainlab.models.glm import MODEL_TYPE, build_glm, continue_prefix, fill_blanks
from pretrainlab.objectives.base import Collator, PretrainingObjective
from pretrainlab.objectives.blank_infilling import (
    GMASK_TOKEN,
    BlankInfillingCollator,
    GLMSample,
    reconstruct_from_parts,
    trains_gmask,
)


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
            return model.train()
        return super().build_backbone(size, tokenizer, block_size)

    def continuation_problem(self) -> str | None:
        """Continuation and generation go through [gMASK] (GLM's prefix LM): a token that
        ``mode=blank``, or ``mode=mixed`` with ``gmask_probability=0``, never trains."""
        s = self.settings
        if not trains_gmask(s["mode"], s["gmask_probability"]):
            return (
                "the prefix objective continues text through [gMASK], which "
                f"objective.mode={s['mode']} with gmask_probability={s['gmask_probability']} never trains"
            )
        return None

    @torch.no_grad()
    def continue_ids(
        self, prefix: list[int], config: GenerationConfig, num_return_sequences: int = 1
    ) -> list[list[int]]:
        """GLM's prefix LM: part A = prefix + [gMASK], one piece decoded from [sop]."""
        return [
            continue_prefix(self.model, self.tokenizer, prefix, generation_config=config)
            for _ in range(num_return_sequences)
        ]

    @torch.no_grad()
    def fill_spans(self, ids: list[int], config: GenerationConfig) -> tuple[list[list[int]], list[int]]:
        """GLM fills the blanks left to right, each seeing the ones filled before it."""
        positions = [i for i, t in enumerate(ids) if t == self.tokenizer.mask_token_id]
        spans = fill_blanks(self.model, self.tokenizer, ids, generation_config=config)
        return spans, reconstruct_from_parts(ids, spans, positions)

    @torch.no_grad()
    def continuation_nll(self, prefix: list[int], continuation: list[int]) -> torch.Tensor:
        collator = BlankInfillingCollator(self.tokenizer)  # only its layout is used, not its sampling
        gmask = self.tokenizer.convert_tokens_to_ids(GMASK_TOKEN)
        sample = GLMSample(
            part_a=[*prefix, gmask],
            spans=[continuation],
            mask_positions=[len(prefix)],
            order=[0],
            is_gmask=True,
            sop_id=collator.sop_id,
            eop_id=collator.eop_id,
        )
        batch = {k: v.to(self.device) for k, v in collator.collate_samples([sample]).items()}
        logits = self.model(**batch).logits[0].float()  # (T, V)
        start = len(prefix) + 1  # the [sop] position predicts the first continuation token
        targets = batch["labels"][0, start : start + len(continuation)]
        return F.cross_entropy(logits[start : start + len(continuation)], targets, reduction="none")

    def build_collator(self) -> Collator:
        s = self.settings
        return BlankInfillingCollator(
            self.tokenizer,
            mask_probability=s["mask_probability"],
            span_poisson_lambda=s["span_poisson_lambda"],
            mode=s["mode"],
            gmask_probability=s["gmask_probability"],
            # .get: a run saved before these keys existed gets GLM's defaults.
            gmask_min_ratio=s.get("gmask_min_ratio", 0.5),
            spans_cross_documents=s.get("spans_cross_documents", False),
            pad_to_multiple_of=8,
        )

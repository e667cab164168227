"""GLM-style blank-infilling model on top of a Hugging Face decoder, plus decoding: pretrainlab's entry point.

The architecture and its decoding loop live in ``pretrainlab.models.glm_hub`` (``configuration_glm``,
``modeling_glm``): standalone Hub-style modules that ``save_pretrained`` copies next to the weights,
so a prefix run's ``hf/`` loads with ``trust_remote_code=True`` without pretrainlab. This module
re-exports them under their historical names, adds what needs pretrainlab (``build_glm``,
``fill_blanks_to_ids``) and registers the classes with ``AutoConfig`` / ``AutoModel`` (local code
then wins over the saved copy). ``import pretrainlab`` registers them too, lazily (see
``models/registration.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from transformers import AutoConfig, AutoModel, GenerationConfig, PreTrainedConfig

from pretrainlab.models.glm_hub.configuration_glm import MODEL_TYPE, GLMConfig
from pretrainlab.models.glm_hub.modeling_glm import (
    GLMForBlankInfilling,
    aligned_lm_loss,
    build_logits_processors,
    continue_prefix,
    fill_blanks,
    special_token_id,
    visibility_to_additive_mask,
)
from pretrainlab.objectives.blank_infilling import GMASK_TOKEN, MASK_TOKEN, reconstruct_from_parts

__all__ = [
    "MODEL_TYPE",
    "GLMConfig",
    "GLMForBlankInfilling",
    "aligned_lm_loss",
    "build_glm",
    "build_logits_processors",
    "continue_prefix",
    "fill_blanks",
    "fill_blanks_to_ids",
    "visibility_to_additive_mask",
]


def build_glm(backbone_config: PreTrainedConfig, max_block_positions: int) -> GLMForBlankInfilling:
    """Build a freshly initialised GLM wrapper around ``backbone_config``.

    Block positions run up to (longest span + 1), and a span is always shorter
    than its sequence, so ``max_block_positions = block_size + 1`` is always
    safe; smaller values save parameters but must still cover the longest span.
    """
    config = GLMConfig(backbone=copy.deepcopy(backbone_config), max_block_positions=max_block_positions)
    return GLMForBlankInfilling(config)


def fill_blanks_to_ids(
    model: GLMForBlankInfilling,
    tokenizer: Any,
    input_ids: Sequence[int],
    max_new_tokens: int | None = None,
    generation_config: GenerationConfig | None = None,
    **kwargs: Any,
) -> list[int]:
    """Return part A with every blank replaced by its generated span.

    Convenience for callers that want the completed text, not the pieces.
    """
    part_a = [int(t) for t in input_ids]
    spans = fill_blanks(model, tokenizer, part_a, max_new_tokens, generation_config, **kwargs)
    blank_ids = {special_token_id(tokenizer, MASK_TOKEN), special_token_id(tokenizer, GMASK_TOKEN)}
    positions = [i for i, t in enumerate(part_a) if t in blank_ids]
    return reconstruct_from_parts(part_a, spans, positions)


# Local classes for the model type: AutoConfig/AutoModel.from_pretrained(hf/) use them, not the
# copy saved beside the weights, and never need trust_remote_code inside pretrainlab.
AutoConfig.register(MODEL_TYPE, GLMConfig, exist_ok=True)
AutoModel.register(GLMConfig, GLMForBlankInfilling, exist_ok=True)

"""One door to text generation for every objective and entry point.

Decoding strategies are ``transformers.GenerationConfig`` settings (``conf/decoding``);
contrastive search, which transformers 5 moved to hub code, runs from our own
implementation instead of fetching remote code.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from pretrainlab.generation.contrastive import generate_with as _route
from pretrainlab.generation.contrastive import validate_strict


def generation_config(decoding: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """A GenerationConfig from a ``conf/decoding`` entry; ``name`` is ours, the rest transformers'."""
    settings = {k: v for k, v in decoding.items() if k != "name"}
    config = GenerationConfig(
        **settings, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    validate_strict(config)
    return config


def generate_with(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig,
    **model_kwargs: Any,
) -> torch.Tensor:
    """``model.generate`` with the strategy in ``config``, contrastive search included."""
    return _route(model, input_ids, attention_mask, config, **model_kwargs)


def strip_after_eos(ids: list[int], eos_id: int | None) -> list[int]:
    """Generated ids up to (not including) the first eos; padding after it goes too."""
    return ids[: ids.index(eos_id)] if eos_id is not None and eos_id in ids else ids

"""Configuration of pretrainlab's GLM (blank infilling on a decoder backbone), Hub-style.

Standalone on purpose: this file is copied next to an exported model's weights and loaded
with ``AutoConfig.from_pretrained(folder, trust_remote_code=True)`` where pretrainlab is not
installed, so it imports only transformers. Needs transformers >= 5.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

MODEL_TYPE = "pretrainlab_glm"


class GLMConfig(PreTrainedConfig):
    """Config of a GLM wrapper: a nested backbone config + block-position size.

    ``backbone`` is a real sub-config (resolved through ``AutoConfig`` from its
    ``model_type``, Llama when absent), so it serialises as a nested dict,
    round-trips through save/from_pretrained and inherits ``attn_implementation``.
    """

    model_type = MODEL_TYPE
    sub_configs_defaults = {
        "backbone": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    backbone: dict | PreTrainedConfig | None = None
    max_block_positions: int = 1024

    def __post_init__(self, **kwargs: Any) -> None:
        # The base __post_init__ pushes our attn_implementation down to the sub-config,
        # which would reset one chosen on the backbone config: inherit it instead.
        if isinstance(self.backbone, PreTrainedConfig) and "attn_implementation" not in kwargs:
            kwargs["attn_implementation"] = self.backbone._attn_implementation
        super().__post_init__(**kwargs)
        if self.max_block_positions < 2:
            raise ValueError(f"max_block_positions must be >= 2, got {self.max_block_positions}")


# save_pretrained copies this file beside config.json and writes auto_map["AutoConfig"].
GLMConfig.register_for_auto_class()

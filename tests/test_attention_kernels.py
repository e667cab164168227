"""Which attention implementation each backbone trains with: PyTorch's scaled-dot-product
attention (flash or memory-efficient kernels on a GPU, chosen by PyTorch) wherever transformers
has it, the GLM's 4D blank-infilling mask included; Bloom alone runs eager attention
(transformers has no SDPA path for its ALiBi attention)."""

from __future__ import annotations

import pytest
from hydra.utils import get_class

from pretrainlab.build import build_datamodule
from pretrainlab.models.backbones import FAMILIES

CASES = [(objective, family) for objective, families in FAMILIES.items() for family in families]


@pytest.fixture(scope="module")
def tokenizer(compose_cfg_module):
    cfg = compose_cfg_module("objective=causal")
    datamodule = build_datamodule(cfg, get_class(cfg.objective._target_))
    datamodule.setup()
    return datamodule.tokenizer


@pytest.fixture(scope="module")
def compose_cfg_module(tiny_corpus, cache_dir, tmp_path_factory):
    from conftest import make_cfg

    out = tmp_path_factory.mktemp("attention")
    return lambda *overrides: make_cfg(tiny_corpus, cache_dir, out, *overrides)


@pytest.mark.parametrize(("objective", "family"), CASES, ids=[f"{o}-{f}" for o, f in CASES])
def test_every_backbone_but_bloom_trains_with_sdpa(compose_cfg_module, tokenizer, objective, family) -> None:
    width = ["model.intermediate_size=128"] if family == "bloom" else []  # Bloom's is 4 x hidden
    cfg = compose_cfg_module(f"objective={objective}", f"model.family={family}", *width)
    model = get_class(cfg.objective._target_).build_backbone(cfg.model, tokenizer, cfg.data.block_size)
    body = getattr(model, "backbone", model)  # the GLM wraps its Llama body
    assert body.config._attn_implementation == ("eager" if family == "bloom" else "sdpa")

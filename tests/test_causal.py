"""Next-token LM (pretrainlab.objectives.causal) and the shared backbone shapes (models.backbones)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerFast,
)

from pretrainlab.config import ConfigError
from pretrainlab.models.backbones import FAMILIES, backbone_config, check_family, max_positions_of
from pretrainlab.objectives.causal import CausalLM
from pretrainlab.train import build_datamodule, build_objective

IGNORE = -100
CAUSAL_FAMILIES = ["llama", "gpt2", "bloom"]
SIZE = {
    "n_layers": 2,
    "hidden_size": 32,
    "n_heads": 4,
    "intermediate_size": 48,
    "max_position_embeddings": 64,
    "dropout": 0.0,
}


def size_for(family: str) -> DictConfig:
    """SIZE, except that Bloom's feed-forward width can only be 4 x hidden."""
    ffn = 4 * SIZE["hidden_size"] if family == "bloom" else SIZE["intermediate_size"]
    return OmegaConf.create({**SIZE, "intermediate_size": ffn})


@pytest.fixture
def causal_setup(compose_cfg: Callable[..., DictConfig]):
    def _build(*overrides: str):
        cfg = compose_cfg("objective=causal", *overrides)
        dm = build_datamodule(cfg, CausalLM)
        dm.setup()
        return cfg, dm, build_objective(cfg, dm)

    return _build


def as_examples(rows) -> list[dict[str, list[int]]]:
    return [{"input_ids": list(row)} for row in rows]


def test_labels_are_the_inputs_for_packed_blocks(causal_setup) -> None:
    _, dm, module = causal_setup()
    assert module.model.config.model_type == "llama"  # the causal default family
    blocks = dm.splits["train"]["input_ids"][:8]
    batch = dm.collate_fn(as_examples(blocks))
    assert torch.equal(batch["input_ids"], torch.tensor(blocks))
    assert torch.equal(batch["labels"], batch["input_ids"])
    # Documents are separated by eos, and eos is a target: the model learns where one ends.
    eos = dm.tokenizer.eos_token_id
    assert (batch["labels"] == eos).any()
    assert module.count_targets(batch) == 8 * 31  # the first position predicts nothing
    assert module.count_tokens(batch) == 8 * 32
    # Validation batches are the same (nothing random to seed).
    val = dm.val_dataloader().collate_fn(as_examples(blocks))
    assert torch.equal(val["labels"], batch["labels"])


def test_labels_ignore_padding_for_unpacked_documents(causal_setup) -> None:
    _, dm, module = causal_setup("data.packing=false")
    docs = sorted(dm.splits["train"]["input_ids"], key=len)[:6]
    batch = dm.collate_fn(as_examples(docs))
    real = batch["attention_mask"].bool()
    assert torch.equal(real.sum(1), torch.tensor([len(d) for d in docs]))
    assert torch.equal(batch["labels"][real], batch["input_ids"][real])
    assert (batch["labels"][~real] == IGNORE).all()
    assert module.count_tokens(batch) == sum(len(d) for d in docs)


def causal_model(family: str, tok: PreTrainedTokenizerFast):
    torch.manual_seed(0)
    return CausalLM.model_from_config(backbone_config(family, size_for(family), tok)).eval()


def padded_batch(tok: PreTrainedTokenizerFast, texts: list[str]) -> dict[str, torch.Tensor]:
    from transformers import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(tok, mlm=False)
    return collator(as_examples(tok(t)["input_ids"] + [tok.eos_token_id] for t in texts))


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_loss_is_hand_shifted_cross_entropy(
    family: str, tiny_tokenizer: PreTrainedTokenizerFast, tiny_docs: list[str]
) -> None:
    tok = tiny_tokenizer
    model = causal_model(family, tok)
    batch = padded_batch(tok, [d[:40] for d in tiny_docs[:4]] + [tiny_docs[5][:10]])
    assert (batch["labels"] == IGNORE).any()  # some padding to ignore
    with torch.no_grad():
        out = model(**batch)
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    targets = batch["labels"][:, 1:].reshape(-1)
    expected = F.cross_entropy(logits, targets, ignore_index=IGNORE)
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_generation_config_matches_tokenizer(family: str, tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    model = causal_model(family, tiny_tokenizer)
    for config in (model.config, model.generation_config):
        assert config.eos_token_id == tiny_tokenizer.eos_token_id
        assert config.pad_token_id == tiny_tokenizer.pad_token_id
    assert model.generation_config.pad_token_id != model.generation_config.eos_token_id


def test_exported_generation_config_matches_tokenizer(trained_run: Callable[..., Path]) -> None:
    hf = trained_run("causal") / "hf"
    tok = AutoTokenizer.from_pretrained(str(hf))
    gen = GenerationConfig.from_pretrained(str(hf))
    assert gen.eos_token_id == tok.eos_token_id
    assert gen.pad_token_id == tok.pad_token_id


# -- backbones: one shared shape for every family ---------------------------------------------

ALL_FAMILIES = sorted({f for families in FAMILIES.values() for f in families})
AUTO = {"bert": AutoModelForMaskedLM, "t5": AutoModelForSeq2SeqLM}
# The first layer's FFN input projection: (parameter name, dimension holding the FFN width).
FFN_WEIGHT = {
    "bert": ("bert.encoder.layer.0.intermediate.dense.weight", 0),
    "llama": ("model.layers.0.mlp.up_proj.weight", 0),
    "gpt2": ("transformer.h.0.mlp.c_fc.weight", 1),
    "bloom": ("transformer.h.0.mlp.dense_h_to_4h.weight", 0),
    "t5": ("encoder.block.0.layer.1.DenseReluDense.wi_0.weight", 0),
}
# ALiBi (bloom) and relative buckets (t5) have no position table.
HAS_POSITIONS = {"bert", "llama", "gpt2"}


def build(family: str, tok: PreTrainedTokenizerFast):
    config = backbone_config(family, size_for(family), tok)
    return config, AUTO.get(family, AutoModelForCausalLM).from_config(config)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_backbone_has_the_shared_shape(family: str, tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    config, model = build(family, tiny_tokenizer)
    assert config.num_hidden_layers == SIZE["n_layers"]
    assert config.hidden_size == SIZE["hidden_size"]
    assert config.num_attention_heads == SIZE["n_heads"]
    assert config.vocab_size == len(tiny_tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tiny_tokenizer)
    assert model.get_input_embeddings().embedding_dim == SIZE["hidden_size"]
    if family in HAS_POSITIONS:
        assert max_positions_of(config) == SIZE["max_position_embeddings"]
        assert max_positions_of(backbone_config(family, size_for(family), tiny_tokenizer, 48)) == 48
    else:
        assert max_positions_of(config) is None
    if family == "t5":
        assert config.num_decoder_layers == SIZE["n_layers"]
    assert config.pad_token_id == tiny_tokenizer.pad_token_id


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_backbone_ffn_width_is_intermediate_size(
    family: str, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    _, model = build(family, tiny_tokenizer)
    name, dim = FFN_WEIGHT[family]
    assert dict(model.named_parameters())[name].shape[dim] == size_for(family).intermediate_size


def test_bloom_rejects_an_ffn_width_it_cannot_have(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    # BloomMLP is always 4 x hidden: another width must be an error, not silently ignored.
    with pytest.raises(ConfigError, match=r"^model\.intermediate_size=48\b"):
        backbone_config("bloom", OmegaConf.create(SIZE), tiny_tokenizer)


def test_check_family_defaults_and_rejections() -> None:
    assert check_family("masked", None) == "bert"
    assert check_family("causal", None) == "llama"
    for family in CAUSAL_FAMILIES:
        assert check_family("causal", family) == family
    with pytest.raises(ConfigError, match=r"^model\.family=gpt2\b"):
        check_family("masked", "gpt2")
    with pytest.raises(ConfigError, match=r"^model\.family=bert\b"):
        check_family("causal", "bert")
    with pytest.raises(ConfigError, match=r"^model\.family=transformer-xl\b"):
        check_family("causal", "transformer-xl")
    with pytest.raises(ConfigError, match=r"^objective\.name=nope\b"):
        check_family("nope", None)


def test_backbone_config_rejections(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(ConfigError, match=r"^model\.family=nope\b"):
        backbone_config("nope", OmegaConf.create(SIZE), tiny_tokenizer)
    with pytest.raises(ConfigError, match=r"^model\.hidden_size=30\b"):
        backbone_config("llama", OmegaConf.create({**SIZE, "hidden_size": 30}), tiny_tokenizer)

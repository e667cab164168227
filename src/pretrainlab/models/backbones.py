"""One shared size (layers, hidden, heads, ffn) mapped onto each family's transformers config.

Every objective is compared at the same shape, so the shape lives once in ``conf/model`` and
this module translates it into the keyword names each config class happens to use.
"""

from __future__ import annotations

from typing import Any

from transformers import (
    BertConfig,
    BloomConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    T5Config,
)

from pretrainlab.config import ConfigError

# Which families each objective can drive; the first is its default.
FAMILIES: dict[str, tuple[str, ...]] = {
    "masked": ("bert",),
    "causal": ("llama", "gpt2", "bloom"),
    "seq2seq": ("t5",),
    # Needs a custom 4D float attention mask and explicit position ids (see models/glm.py).
    "prefix": ("llama",),
}


def check_family(objective: str, family: str | None) -> str:
    """Resolve ``model.family`` for an objective, or fail naming the key and the valid choices."""
    if objective not in FAMILIES:
        raise ConfigError(f"objective.name={objective}: must be one of {', '.join(FAMILIES)}")
    choices = FAMILIES[objective]
    if family is None:
        return choices[0]
    if family not in choices:
        raise ConfigError(
            f"model.family={family}: not usable with objective={objective} (choose {', '.join(choices)})"
        )
    return family


def special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    """Token ids the configs need, so generation and padding agree with the tokenizer."""
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        # GPT-2 convention: documents are separated by eos, so eos also starts one.
        "bos_token_id": tokenizer.eos_token_id,
    }


def backbone_config(
    family: str, size: Any, tokenizer: PreTrainedTokenizerBase, max_positions: int | None = None
) -> PretrainedConfig:
    """Build the family's config from the shared size; random-init models come from this."""
    vocab = len(tokenizer)
    ids = special_ids(tokenizer)
    positions = max_positions or size.max_position_embeddings
    if size.hidden_size % size.n_heads:
        raise ConfigError(
            f"model.hidden_size={size.hidden_size}: must be divisible by model.n_heads={size.n_heads}"
        )
    if family == "bert":
        return BertConfig(
            vocab_size=vocab,
            hidden_size=size.hidden_size,
            num_hidden_layers=size.n_layers,
            num_attention_heads=size.n_heads,
            intermediate_size=size.intermediate_size,
            max_position_embeddings=positions,
            hidden_dropout_prob=size.dropout,
            attention_probs_dropout_prob=size.dropout,
            type_vocab_size=2,
            pad_token_id=ids["pad_token_id"],
        )
    if family == "llama":
        return LlamaConfig(
            vocab_size=vocab,
            hidden_size=size.hidden_size,
            num_hidden_layers=size.n_layers,
            num_attention_heads=size.n_heads,
            num_key_value_heads=size.n_heads,
            intermediate_size=size.intermediate_size,
            max_position_embeddings=positions,
            attention_dropout=size.dropout,
            tie_word_embeddings=True,
            **ids,
        )
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab,
            n_embd=size.hidden_size,
            n_layer=size.n_layers,
            n_head=size.n_heads,
            n_inner=size.intermediate_size,
            n_positions=positions,
            resid_pdrop=size.dropout,
            embd_pdrop=size.dropout,
            attn_pdrop=size.dropout,
            **ids,
        )
    if family == "bloom":
        if size.intermediate_size != 4 * size.hidden_size:
            raise ConfigError(
                f"model.intermediate_size={size.intermediate_size}: Bloom's feed-forward width is "
                f"always 4 x model.hidden_size ({4 * size.hidden_size})"
            )
        # ALiBi positions: no position table, so no maximum to configure.
        return BloomConfig(
            vocab_size=vocab,
            hidden_size=size.hidden_size,
            n_layer=size.n_layers,
            n_head=size.n_heads,
            hidden_dropout=size.dropout,
            attention_dropout=size.dropout,
            **ids,
        )
    if family == "t5":
        return T5Config(
            vocab_size=vocab,
            d_model=size.hidden_size,
            d_kv=size.hidden_size // size.n_heads,
            d_ff=size.intermediate_size,
            num_layers=size.n_layers,
            num_decoder_layers=size.n_layers,
            num_heads=size.n_heads,
            dropout_rate=size.dropout,
            feed_forward_proj="gated-gelu",
            # Tied (as in the original T5): the decoder output is then scaled by d_model**-0.5;
            # untied, T5's init gives initial logits so large that the first loss is ~10x ln(V).
            tie_word_embeddings=True,
            decoder_start_token_id=ids["pad_token_id"],
            pad_token_id=ids["pad_token_id"],
            eos_token_id=ids["eos_token_id"],
        )
    raise ConfigError(f"model.family={family}: unknown family")


def max_positions_of(config: PretrainedConfig) -> int | None:
    """The longest sequence a (pretrained) backbone accepts; None where positions are unbounded."""
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None

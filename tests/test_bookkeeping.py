"""Parameter counts and the 6·N·D training-FLOPs estimate, hand-computed for tiny models."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import special_word_tokenizer
from pretrainlab.evaluation.bookkeeping import (
    bookkeeping_metrics,
    encoder_decoder_parameters,
    non_embedding_parameters,
    seq2seq_token_counts,
    training_flops,
)
from pretrainlab.models.backbones import backbone_config
from pretrainlab.objectives.causal import CausalLM
from pretrainlab.objectives.masked import MaskedLM
from pretrainlab.objectives.prefix import PrefixLM
from pretrainlab.objectives.seq2seq import Seq2SeqLM
from pretrainlab.objectives.span_corruption import compute_input_and_target_lengths

TOK = special_word_tokenizer(50)
D, L, FF = 32, 2, 64  # hidden size, layers, feed-forward width
SIZE = SimpleNamespace(
    hidden_size=D, n_layers=L, n_heads=4, intermediate_size=FF, max_position_embeddings=64, dropout=0.0
)
TOKENS = 1_000_000


def build(cls, family):
    return cls.model_from_config(backbone_config(family, SIZE, TOK))


def test_llama_is_6_n_tokens_with_n_the_non_embedding_parameters():
    # Per layer: q, k, v, o (d x d), gate/up/down (d x ff), two RMSNorms; then the final norm.
    n = L * (4 * D * D + 3 * D * FF + 2 * D) + D
    model = build(CausalLM, "llama")
    assert non_embedding_parameters(model) == n
    assert count_parameters(model) == n + len(TOK) * D  # + the (tied) token embedding
    assert training_flops(model, TOKENS, "causal") == 6.0 * n * TOKENS


def test_an_untied_output_projection_is_excluded_too():
    tied = build(CausalLM, "llama")
    config = tied.config.to_dict() | {"tie_word_embeddings": False}
    untied = LlamaForCausalLM(LlamaConfig(**config))
    assert count_parameters(untied) == count_parameters(tied) + len(TOK) * D
    assert non_embedding_parameters(untied) == non_embedding_parameters(tied)


def test_prefix_glm_counts_its_backbone_without_the_block_position_embedding():
    glm = build(PrefixLM, "llama")
    assert non_embedding_parameters(glm) == non_embedding_parameters(build(CausalLM, "llama"))
    assert training_flops(glm, TOKENS, "prefix") == training_flops(build(CausalLM, "llama"), TOKENS, "causal")


def test_bert_is_6_n_tokens_without_word_position_type_embeddings_and_output_bias():
    layer = 4 * (D * D + D) + 2 * D + (D * FF + FF) + (FF * D + D) + 2 * D  # attention, LN, FFN, LN
    embedding_norm = 2 * D
    mlm_transform = D * D + D + 2 * D  # dense + LayerNorm before the (tied) vocabulary projection
    n = L * layer + embedding_norm + mlm_transform
    model = build(MaskedLM, "bert")
    assert non_embedding_parameters(model) == n
    vocab, positions = len(TOK), SIZE.max_position_embeddings
    assert count_parameters(model) == n + vocab * D + positions * D + 2 * D + vocab  # + output bias
    assert training_flops(model, TOKENS, "masked") == 6.0 * n * TOKENS


def test_t5_charges_encoder_and_decoder_parameters_to_their_own_tokens():
    inner = D  # heads x d_kv
    ffn = 3 * D * FF  # gated-GELU: wi_0, wi_1, wo
    n_enc = L * (4 * D * inner + ffn + 2 * D) + D
    n_dec = L * (4 * D * inner + 4 * D * inner + ffn + 3 * D) + D  # self- and cross-attention
    n_xkv = L * 2 * D * inner  # cross-attention keys and values read the encoder output
    model = build(Seq2SeqLM, "t5")
    assert encoder_decoder_parameters(model) == (n_enc, n_dec, n_xkv)
    assert non_embedding_parameters(model) == n_enc + n_dec
    enc_tokens, dec_tokens = 800_000, 300_000
    expected = 6.0 * ((n_enc + n_xkv) * enc_tokens + (n_dec - n_xkv) * dec_tokens)
    flops = training_flops(model, TOKENS, "seq2seq", encoder_tokens=enc_tokens, decoder_tokens=dec_tokens)
    assert flops == expected
    # With as many decoder as encoder tokens it is the plain 6·N·D.
    same = training_flops(model, TOKENS, "seq2seq", encoder_tokens=TOKENS, decoder_tokens=TOKENS)
    assert same == 6.0 * (n_enc + n_dec) * TOKENS
    with pytest.raises(ValueError, match="encoder_tokens and decoder_tokens"):
        training_flops(model, TOKENS, "seq2seq")


def test_seq2seq_token_counts_follow_the_packed_block_lengths():
    raw, targets = compute_input_and_target_lengths(32, 0.15, 3.0, max_noise_spans=100)
    blocks = 1000
    assert seq2seq_token_counts(blocks * raw, 32, 0.15, 3.0) == (blocks * 32, blocks * targets)


def test_bookkeeping_metrics():
    model = build(Seq2SeqLM, "t5")
    enc, dec = seq2seq_token_counts(64_000, 32, 0.15, 3.0)
    metrics = bookkeeping_metrics(model, "seq2seq", 64_000, 12.5, encoder_tokens=enc, decoder_tokens=dec)
    assert metrics == {
        "params": count_parameters(model),
        "params_non_embedding": non_embedding_parameters(model),
        "tokens_seen": 64_000,
        "train/flops": training_flops(model, 64_000, "seq2seq", encoder_tokens=enc, decoder_tokens=dec),
        "wall_time_s": 12.5,
    }
    assert all(type(v) in (int, float) for v in metrics.values())
    assert "wall_time_s" not in bookkeeping_metrics(build(CausalLM, "llama"), "causal", 10)


def count_parameters(model) -> int:
    """All parameters, tied ones once (what nn.Module.parameters() yields)."""
    return sum(p.numel() for p in model.parameters())

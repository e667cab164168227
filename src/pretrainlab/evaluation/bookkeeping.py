"""What a run cost: parameters, tokens, estimated training FLOPs, wall time.

FLOPs follow the 6·N·D rule (Kaplan et al. 2020: ~2 FLOPs per parameter per token forward,
~4 backward), with N the **non-embedding** parameters, as Kaplan et al. count them:

* excluded ("embedding parameters"): the weights of every ``nn.Embedding`` (token, position,
  token type, GLM's block position, T5's relative-attention bias) and the output projection
  onto the vocabulary with its bias (``get_output_embeddings()``), tied or not;
* included: everything else (attention, feed-forward, norms, BERT's MLM transform).

Lookups cost no FLOPs; the vocabulary projection does (2·d·V per token forward), and this
estimate leaves it out, as Kaplan et al. do: at small sizes with a large vocabulary the true
cost is higher. Tied weights count once. Attention-score FLOPs (∝ context length) are left out.

Encoder-decoder (seq2seq): encoder parameters process the encoder tokens, decoder parameters
the decoder tokens, except the key/value projections of cross-attention, which process the
encoder output, i.e. once per encoder token in every decoder layer::

    FLOPs = 6 · [(N_enc + N_xkv) · T_enc + (N_dec − N_xkv) · T_dec]

(N_enc, N_dec: non-embedding parameters of the encoder and decoder stacks; N_xkv: the
cross-attention key and value weights; any other non-embedding parameter is charged to the
decoder tokens).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pretrainlab.data.tokenizer import NUM_SENTINELS
from pretrainlab.objectives.span_corruption import compute_input_and_target_lengths

# Cross-attention modules of encoder-decoder families (T5 / BART-like) and their K, V children.
_CROSS_ATTENTION = ("EncDecAttention", "encoder_attn")
_KEY_VALUE = ("k", "v", "k_proj", "v_proj")


def _unique(params: Any) -> dict[int, nn.Parameter]:
    return {id(p): p for p in params}


def embedding_parameters(model: nn.Module) -> dict[int, nn.Parameter]:
    """Every ``nn.Embedding`` weight plus the output (vocabulary) projection, by identity."""
    found = _unique(p for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, nn.Module):
        found.update(_unique(head.parameters()))
    return found


def _count(params: dict[int, nn.Parameter]) -> int:
    return sum(p.numel() for p in params.values())


def non_embedding_parameters(model: nn.Module) -> int:
    """N of the 6·N·D rule: unique parameters minus ``embedding_parameters``."""
    embedding = embedding_parameters(model)
    return _count({k: p for k, p in _unique(model.parameters()).items() if k not in embedding})


def encoder_decoder_parameters(model: nn.Module) -> tuple[int, int, int]:
    """``(N_enc, N_dec, N_xkv)`` non-embedding parameters of an encoder-decoder model.

    N_dec includes cross-attention (N_xkv of it: its key/value weights) and any non-embedding
    parameter outside both stacks.
    """
    if not (hasattr(model, "get_encoder") and hasattr(model, "get_decoder")):
        raise ValueError(f"{type(model).__name__}: not an encoder-decoder model")
    embedding = embedding_parameters(model)
    body = {k: p for k, p in _unique(model.parameters()).items() if k not in embedding}
    encoder = {k: p for k, p in _unique(model.get_encoder().parameters()).items() if k in body}
    decoder = {k: p for k, p in body.items() if k not in encoder}
    cross_kv: dict[int, nn.Parameter] = {}
    for name, module in model.get_decoder().named_modules():
        if name.split(".")[-1] in _CROSS_ATTENTION:
            for child in _KEY_VALUE:
                if isinstance(getattr(module, child, None), nn.Module):
                    cross_kv.update(_unique(getattr(module, child).parameters()))
    cross_kv = {k: p for k, p in cross_kv.items() if k in decoder}
    return _count(encoder), _count(decoder), _count(cross_kv)


def training_flops(
    model: nn.Module,
    tokens_seen: int | float,
    objective: str,
    *,
    encoder_tokens: int | float | None = None,
    decoder_tokens: int | float | None = None,
) -> float:
    """Estimated training FLOPs (forward + backward), see the module docstring.

    Decoder-only and encoder-only objectives (causal, prefix, masked): ``6 · N · tokens_seen``.
    seq2seq: ``6 · [(N_enc + N_xkv) · encoder_tokens + (N_dec − N_xkv) · decoder_tokens]``;
    both counts are required (``seq2seq_token_counts`` derives them from ``tokens_seen``).

    ``tokens_seen`` is what the caller counts: for pretrainlab runs the corpus tokens, so the
    prefix objective's extra [MASK]/[sop] piece markers (two per span, ~10% at the defaults)
    and padding are not included.
    """
    if objective != "seq2seq":
        return 6.0 * non_embedding_parameters(model) * float(tokens_seen)
    if encoder_tokens is None or decoder_tokens is None:
        raise ValueError("objective=seq2seq: training_flops needs encoder_tokens and decoder_tokens")
    n_enc, n_dec, n_xkv = encoder_decoder_parameters(model)
    return 6.0 * ((n_enc + n_xkv) * float(encoder_tokens) + (n_dec - n_xkv) * float(decoder_tokens))


def seq2seq_token_counts(
    tokens_seen: int,
    block_size: int,
    noise_density: float,
    mean_noise_span_length: float,
    num_sentinels: int = NUM_SENTINELS,
) -> tuple[int, int]:
    """``(encoder_tokens, decoder_tokens)`` of a packed seq2seq run that saw ``tokens_seen``
    corpus tokens: every raw block of ``tokens_length`` tokens becomes ``block_size`` encoder
    tokens and ``targets_length`` decoder tokens (``compute_input_and_target_lengths``)."""
    raw, targets = compute_input_and_target_lengths(
        block_size, noise_density, mean_noise_span_length, max_noise_spans=num_sentinels
    )
    blocks = tokens_seen / raw
    return round(blocks * block_size), round(blocks * targets)


def bookkeeping_metrics(
    model: nn.Module,
    objective: str,
    tokens_seen: int,
    wall_time_s: float | None = None,
    *,
    encoder_tokens: int | None = None,
    decoder_tokens: int | None = None,
) -> dict[str, Any]:
    """``params`` (all, tied once), ``params_non_embedding`` (the N of the FLOPs estimate),
    ``tokens_seen``, ``train/flops`` and, when given, ``wall_time_s``."""
    metrics: dict[str, Any] = {
        "params": sum(p.numel() for p in _unique(model.parameters()).values()),
        "params_non_embedding": non_embedding_parameters(model),
        "tokens_seen": int(tokens_seen),
        "train/flops": training_flops(
            model, tokens_seen, objective, encoder_tokens=encoder_tokens, decoder_tokens=decoder_tokens
        ),
    }
    if wall_time_s is not None:
        metrics["wall_time_s"] = float(wall_time_s)
    return metrics

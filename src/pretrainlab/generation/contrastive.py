"""Contrastive search (Su et al. 2022, "A Contrastive Framework for Neural Text Generation").

transformers 5 moved contrastive search out of its core into a Hub repository: a plain
``model.generate(..., penalty_alpha=0.6, top_k=4)`` now wants to download and run
``transformers-community/contrastive-search`` (``trust_remote_code=True``), which fails offline and
is remote code we do not run. ``generate`` still accepts a *local* callable as
``custom_generate``; this module is that callable, plus ``generate_with``, the one entry point
the rest of the project uses for any decoding strategy.

How ``generate`` invokes a callable ``custom_generate`` (transformers 5, ``GenerationMixin.generate``):
it prepares everything as for its built-in modes (generation config merged with kwargs, special
tokens, the encoder run and decoder start ids for encoder-decoder models, input expansion for
``num_return_sequences``, ``max_length``, logits processors, stopping criteria), then calls
``custom_generate(model, input_ids, logits_processor=..., stopping_criteria=...,
generation_config=..., **model_kwargs)`` and returns whatever it returns. ``model_kwargs`` holds
``attention_mask`` (``None`` when it is all ones), ``position_ids``, ``use_cache``, a cache,
``logits_to_keep`` and, for encoder-decoder models, ``encoder_outputs``. Parameters of the
callable that ``_sample`` does not have are popped from ``generate``'s kwargs *before* that and
passed on separately, so a callable that names ``attention_mask`` gets it twice (``TypeError``)
whenever the caller gives a mask: ``contrastive_generate`` therefore takes it through ``**kwargs``.

The implementation favours clarity over speed: no KV cache, every step reruns the model on the
full sequence once per candidate. Fine for the small models this project trains.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from transformers.modeling_outputs import BaseModelOutput

# One definition for both decoders (``generate``'s path here and the GLM loop), kept in the GLM's
# standalone Hub module because that file may import nothing of pretrainlab.
from pretrainlab.models.glm_hub.modeling_glm import degeneration_penalty, is_contrastive

__all__ = [
    "contrastive_generate",
    "degeneration_penalty",
    "generate_with",
    "is_contrastive",
    "validate_strict",
]


def validate_strict(generation_config: GenerationConfig) -> None:
    """``generation_config.validate(strict=True)``, except that contrastive search may set ``top_k``.

    transformers 5's strict validation rejects ``top_k`` without ``do_sample`` as a sampling-only
    flag, but contrastive search needs it (its number of candidates). Every other check, including
    the one for real sampling flags such as ``temperature``, still raises.
    """
    user_set = set(generation_config.to_dict())  # what validate() assumes when given nothing
    if is_contrastive(generation_config):
        user_set.discard("top_k")  # with do_sample user-set and top_k not, validate stays quiet
        user_set.add("do_sample")
    generation_config.validate(strict=True, user_set_attributes=user_set)


def generate_with(
    model: Any,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None,
    generation_config: GenerationConfig,
    **model_kwargs: Any,
) -> torch.LongTensor:
    """Decode with any ``conf/decoding`` strategy without touching the network.

    Contrastive settings (see ``is_contrastive``) go through ``model.generate`` with our local
    ``contrastive_generate`` as ``custom_generate``; everything else is a plain ``model.generate``.
    Returns ``generate``'s tensor: (B, T_in + T_new) for decoder-only models, the decoder
    sequence for encoder-decoder ones. ``model_kwargs`` (e.g. ``decoder_input_ids``) go to
    ``generate`` as they are.
    """
    if is_contrastive(generation_config):
        return model.generate(
            input_ids,
            attention_mask=attention_mask,
            generation_config=generation_config,
            custom_generate=contrastive_generate,
            **model_kwargs,
        )
    return model.generate(
        input_ids, attention_mask=attention_mask, generation_config=generation_config, **model_kwargs
    )


def contrastive_generate(
    model: Any,
    input_ids: torch.LongTensor,
    generation_config: GenerationConfig | None = None,
    **kwargs: Any,
) -> torch.LongTensor:
    """Contrastive search, called directly or as ``generate(..., custom_generate=contrastive_generate)``.

    Each step takes the ``top_k`` most probable next tokens v and picks the argmax over them of
    ``(1 - alpha) * p(v | x<t) - alpha * max_j cos(h_v, h_j)``: model confidence minus a
    degeneration penalty, the highest cosine similarity between v's last-layer hidden state and
    those of every earlier (non-padding) token. ``alpha = penalty_alpha``; alpha=0 is greedy.

    Called directly (``contrastive_generate(model, ids, attention_mask=mask,
    generation_config=cfg)``; pass ``attention_mask`` by keyword), it hands itself to
    ``model.generate`` so that inputs, special tokens, lengths, logits processors (e.g.
    ``repetition_penalty``) and stopping criteria are prepared exactly as for any other strategy.
    ``generate`` then calls it back with ``logits_processor`` and ``stopping_criteria``, which is
    how the two cases are told apart. Decoder-only models take left-padded batches with their
    ``attention_mask``; encoder-decoder models (T5) run the encoder once and search on the decoder.
    Returns a LongTensor like ``generate``: prompt followed by the new tokens, finished rows padded
    with ``pad_token_id``.
    """
    if isinstance(generation_config, torch.Tensor):
        raise TypeError("contrastive_generate: pass attention_mask by keyword (attention_mask=...)")
    logits_processor = kwargs.pop("logits_processor", None)
    stopping_criteria = kwargs.pop("stopping_criteria", None)
    if logits_processor is None or stopping_criteria is None:
        return model.generate(
            input_ids,
            generation_config=generation_config,
            custom_generate=contrastive_generate,
            logits_processor=logits_processor,
            stopping_criteria=stopping_criteria,
            **kwargs,
        )
    return _contrastive_search(
        model, input_ids, generation_config, logits_processor, stopping_criteria, **kwargs
    )


def _contrastive_search(
    model: Any,
    input_ids: torch.LongTensor,
    config: GenerationConfig,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    attention_mask: torch.Tensor | None = None,
    encoder_outputs: Any = None,
    **_ignored: Any,  # position_ids, cache, use_cache, logits_to_keep: rebuilt or unused here
) -> torch.LongTensor:
    """The search loop, on ``generate``'s prepared inputs (see ``contrastive_generate``)."""
    alpha = float(config.penalty_alpha or 0.0)
    k = int(config.top_k or 1)
    eos = config.eos_token_id
    eos_ids = torch.tensor([] if eos is None else [eos] if isinstance(eos, int) else list(eos))
    eos_ids = eos_ids.long().to(input_ids.device)
    pad_id = config.pad_token_id
    if pad_id is None:  # only reachable without eos too, when no row can finish early
        pad_id = int(eos_ids[0]) if len(eos_ids) else 0

    batch = input_ids.shape[0]
    seq = input_ids  # (B, T)
    if model.config.is_encoder_decoder:
        # `attention_mask` is the encoder's; the decoder sequence never has padding.
        if encoder_outputs is None:
            raise ValueError(
                "contrastive search on an encoder-decoder model needs generate's encoder_outputs"
            )
        enc_hidden = encoder_outputs[0]  # (B, S, H_enc)
        enc_mask = attention_mask if attention_mask is not None else enc_hidden.new_ones(enc_hidden.shape[:2])
        encoder = _Encoder(enc_hidden, enc_mask)
        mask = torch.ones_like(seq)  # (B, T)
    else:
        encoder = None
        mask = attention_mask if attention_mask is not None else torch.ones_like(seq)  # (B, T)

    logits, hidden = _forward(model, seq, mask, encoder)  # (B, V), (B, T, H)
    unfinished = torch.ones(batch, dtype=torch.bool, device=seq.device)  # (B,)
    rows = torch.arange(batch, device=seq.device)  # (B,)
    while seq.shape[1] < config.max_length and unfinished.any():
        scores = logits_processor(seq, logits)  # (B, V)
        probs = scores.float().softmax(dim=-1)  # (B, V)
        top_probs, top_ids = probs.topk(k, dim=-1)  # (B, k), (B, k)

        # Run the model on every candidate continuation at once: B*k sequences of length T+1.
        cand_seq = torch.cat([seq.repeat_interleave(k, dim=0), top_ids.reshape(-1, 1)], dim=1)  # (B*k, T+1)
        cand_mask = F.pad(mask.repeat_interleave(k, dim=0), (0, 1), value=1)  # (B*k, T+1)
        cand_enc = encoder.repeat(k) if encoder is not None else None
        cand_logits, cand_hidden = _forward(model, cand_seq, cand_mask, cand_enc)  # (B*k, V), (B*k, T+1, H)
        cand_hidden = cand_hidden.view(batch, k, *cand_hidden.shape[1:])  # (B, k, T+1, H)

        # Degeneration penalty: max cosine similarity to every earlier real token.
        penalty = degeneration_penalty(cand_hidden[:, :, -1], hidden, mask)  # (B, k)
        contrastive_score = (1.0 - alpha) * top_probs - alpha * penalty  # (B, k)
        best = contrastive_score.argmax(dim=-1)  # (B,)

        next_tokens = top_ids[rows, best]  # (B,)
        next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad_id))  # (B,)
        seq = torch.cat([seq, next_tokens[:, None]], dim=1)  # (B, T+1)
        mask = F.pad(mask, (0, 1), value=1)  # (B, T+1)
        # The chosen candidate's forward pass is the next step's context: no extra model call.
        logits = cand_logits.view(batch, k, -1)[rows, best]  # (B, V)
        hidden = cand_hidden[rows, best]  # (B, T+1, H)

        unfinished &= ~torch.isin(next_tokens, eos_ids)
        unfinished &= ~stopping_criteria(seq, scores)
    return seq


class _Encoder(NamedTuple):
    """An encoder-decoder model's encoder output, computed once by ``generate``, and its mask."""

    hidden: torch.Tensor  # (B, S, H_enc)
    mask: torch.Tensor  # (B, S)

    def repeat(self, k: int) -> _Encoder:
        """The same for B*k candidate rows: each batch row repeated k times in place."""
        return _Encoder(self.hidden.repeat_interleave(k, dim=0), self.mask.repeat_interleave(k, dim=0))


def _forward(
    model: Any, seq: torch.Tensor, mask: torch.Tensor, encoder: _Encoder | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token logits (N, V) and last-layer hidden states (N, T, H) for full sequences (N, T)."""
    if encoder is not None:
        out = model(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoder.hidden),
            attention_mask=encoder.mask,
            decoder_input_ids=seq,
            output_hidden_states=True,
            use_cache=False,
        )
        return out.logits[:, -1], out.decoder_hidden_states[-1]
    inputs: dict[str, Any] = {"input_ids": seq, "attention_mask": mask}
    accepted = inspect.signature(model.forward).parameters
    if "position_ids" in accepted:  # Llama, GPT-2; Bloom has none (ALiBi reads the mask)
        # As generate does for left padding: count real tokens only (padding gets 1, it is masked).
        inputs["position_ids"] = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    if "logits_to_keep" in accepted:
        inputs["logits_to_keep"] = 1  # only the last position's logits are used
    out = model(**inputs, output_hidden_states=True, use_cache=False)
    return out.logits[:, -1], out.hidden_states[-1]

"""What a text "means" to each objective's backbone: the states the probe and fine-tuning read.

One definition for both, so a probe number and a fine-tuning number describe the same
features: the mean of the backbone's final hidden states over the text's tokens (padding
excluded) — the BERT encoder (masked), the decoder stack without its LM head (causal), the T5
encoder (seq2seq) and the GLM stack reading the text bidirectionally as its part A (prefix).
Texts are tokenized without special tokens, so every objective reads the same token ids.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

OBJECTIVES = ("masked", "causal", "seq2seq", "prefix")
# Texts are tokenized once to at least this many tokens and cut per caller (the probe reads
# data.block_size tokens, fine-tuning its max_length): one tokenization serves both.
ENCODE_LENGTH = 512
# Tokenized text sets kept per process (a sweep's jobs in one worker share the task).
_ENCODED_ENTRIES = 4
_encoded: OrderedDict[tuple[str, int, str], list[list[int]]] = OrderedDict()


def final_states(model: Any, name: str, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) final hidden states of a right-padded batch; ``mask`` (B, T) marks real tokens.

    Takes the backbone and the objective's name rather than the module, so it also runs on a
    copy of the backbone (fine-tuning trains a copy, never the run's own model). Gradients flow:
    callers that only read features wrap it in ``torch.no_grad``.
    """
    if name == "seq2seq":
        return model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    if name == "prefix":
        # GLM part A: every text token sees every other (padding hidden), block position 0.
        batch, width = ids.shape
        visible = mask[:, None, :].expand(batch, width, width).bool()  # (B, T, T)
        out = model(
            input_ids=ids,
            attention_mask=visible,
            position_ids=torch.arange(width, device=ids.device).expand(batch, width),
            block_position_ids=torch.zeros_like(ids),
            output_hidden_states=True,
            logits_to_keep=1,
        )
        return out.hidden_states[-1]  # after the backbone's final norm
    if name in ("masked", "causal"):
        # The encoder (BERT) or decoder stack (Llama, GPT-2, Bloom) without its LM head.
        return model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    raise ValueError(f"objective={name}: no feature extractor")


def mean_states(model: Any, name: str, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, H) float32: each text's mean final state over its real tokens, so a text's vector
    does not depend on how much padding its batch added."""
    states = final_states(model, name, ids, mask).float()  # (B, T, H)
    weights = mask.unsqueeze(-1).float()  # (B, T, 1)
    return (states * weights).sum(1) / weights.sum(1)


def _tokenizer_key(tokenizer: Any) -> str | None:
    """What a fast tokenizer does, as a hash (its whole pipeline and vocabulary, and the side
    it truncates), or None for one without a serialisable backend (never cached)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    # Truncation and padding are call settings the backend keeps from its last call: not what
    # it does to a text.
    pipeline = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
    side = getattr(tokenizer, "truncation_side", "right")
    state = json.dumps([type(tokenizer).__name__, side, pipeline], sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(state.encode("utf-8")).hexdigest()


def _texts_key(texts: Sequence[str]) -> str:
    digest = hashlib.sha1()
    for text in texts:
        digest.update(len(text).to_bytes(8, "little"))
        digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _tokenized(tokenizer: Any, texts: Sequence[str], length: int) -> list[list[int]]:
    """Token ids of each text, at most ``length``, no special tokens; remembered per tokenizer,
    texts and length (the probe's and fine-tuning's texts are tokenized once per process)."""
    key = _tokenizer_key(tokenizer)
    if key is None:
        return tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=length)[
            "input_ids"
        ]
    entry = (key, length, _texts_key(texts))
    if entry not in _encoded:
        encoded = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=length)
        _encoded[entry] = [list(ids) for ids in encoded["input_ids"]]
        while len(_encoded) > _ENCODED_ENTRIES:
            _encoded.popitem(last=False)
    _encoded.move_to_end(entry)
    return _encoded[entry]


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, at most ``max_length``, no special tokens; an empty text is one
    [unk], so it still gets a vector (a mean over zero tokens is undefined).

    The texts are tokenized once per process to ``max(max_length, ENCODE_LENGTH)`` tokens and
    cut here (on the side the tokenizer truncates), which is what the tokenizer gives for
    ``max_length`` itself: the probe and fine-tuning read the same texts, and a sweep's jobs
    in one process the same task, so none tokenizes them again. The lists returned are new.
    """
    if max_length < 1:
        raise ValueError(f"max_length={max_length}: must be >= 1")
    encoded = _tokenized(tokenizer, texts, max(max_length, ENCODE_LENGTH))
    left = getattr(tokenizer, "truncation_side", "right") == "left"
    cut = [list(ids[-max_length:]) if left else list(ids[:max_length]) for ids in encoded]
    return [ids or [tokenizer.unk_token_id] for ids in cut]


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)``, both (B, T) long, right-padded to the batch's longest sequence (dynamic
    padding: a batch of short texts costs what short texts cost)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)

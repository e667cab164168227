"""BERT-style masked language modelling.

The masking itself is transformers' ``DataCollatorForLanguageModeling`` (80/10/10 split,
special tokens never chosen); this module adds whole-word masking on packed blocks, which
that collator only supports through a tokenizer's offset mapping, and a sparse prediction
head for training: the vocabulary projection runs only at the ~15% of positions that carry a
label (as cramming and MosaicBERT do), with the same loss as the dense head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling, PreTrainedTokenizerBase
from transformers.modeling_outputs import MaskedLMOutput

from pretrainlab.objectives.base import IGNORE, Batch, Collator, PretrainingObjective

CONTINUATION = "##"


@dataclass
class MaskedLMCollator:
    """``DataCollatorForLanguageModeling`` fed what packed blocks lack.

    It precomputes the special-token table once (instead of per row), and for whole-word
    masking builds synthetic offsets from the WordPiece ``##`` marks: a ``##`` piece touches
    the previous token, every other token starts a new word.
    """

    tokenizer: PreTrainedTokenizerBase
    mask_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    whole_word_mask: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        self.inner = DataCollatorForLanguageModeling(
            self.tokenizer,
            mlm=True,
            mlm_probability=self.mask_probability,
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
            whole_word_mask=self.whole_word_mask,
            seed=self.seed,
        )
        # With whole-word masking transformers resets the split to 100% [MASK] (its __post_init__
        # warns that random replacement is "not supported"), yet its masking code applies the
        # split to whole-word selections all the same. Restore the configured 80/10/10.
        self.inner.mask_replace_prob = float(self.mask_replace_prob)
        self.inner.random_replace_prob = float(self.random_replace_prob)
        vocab = len(self.tokenizer)
        self.special = torch.zeros(vocab, dtype=torch.bool)
        self.special[self.tokenizer.all_special_ids] = True
        tokens = self.tokenizer.convert_ids_to_tokens(list(range(vocab)))
        self.continues = torch.tensor([t.startswith(CONTINUATION) for t in tokens], dtype=torch.bool)

    def __call__(self, examples: list[dict[str, Any]]) -> Batch:
        batch = self.tokenizer.pad([{"input_ids": e["input_ids"]} for e in examples], return_tensors="pt")
        ids = batch["input_ids"].clone()  # (B, T)
        offsets = None
        if self.whole_word_mask:
            # Each token spans one character; a ## piece starts where the previous token ended,
            # any other token one character later, which is how the inner collator finds words.
            starts = torch.cumsum(2 - self.continues[ids].long(), dim=1)  # (B, T)
            offsets = torch.stack([starts, starts + 1], dim=-1)  # (B, T, 2)
        if self.seed is not None and self.inner.generator is None:
            self.inner.create_rng("pt")
        inputs, labels = self.inner.torch_mask_tokens(
            ids, special_tokens_mask=self.special[ids], offset_mapping=offsets
        )
        return {"input_ids": inputs, "attention_mask": batch["attention_mask"], "labels": labels}


class MaskedLM(PretrainingObjective):
    """BERT-family encoder trained to recover ``mask_probability`` of the tokens."""

    name: ClassVar[str] = "masked"
    auto_class: ClassVar[type] = AutoModelForMaskedLM
    generative: ClassVar[bool] = False

    def build_collator(self) -> Collator:
        s = self.settings
        return MaskedLMCollator(
            self.tokenizer,
            mask_probability=s["mask_probability"],
            mask_replace_prob=s.get("mask_replace_prob", 0.8),
            random_replace_prob=s.get("random_replace_prob", 0.1),
            whole_word_mask=s.get("whole_word_mask", False),
        )

    def forward(self, batch: Batch) -> Any:
        """With labels and ``sparse_head`` on: the encoder on every position, the prediction head
        only on the labelled ones. Loss = the dense head's (mean cross-entropy over labelled
        positions); ``logits`` are those rows only, (N, V). Models without a known head
        attribute (``cls``: BERT, ``lm_head``: RoBERTa-likes) take the dense path."""
        labels = batch.get("labels")
        head = getattr(self.model, "cls", None) or getattr(self.model, "lm_head", None)
        if labels is None or head is None or not self.settings.get("sparse_head", True):
            return super().forward(batch)
        chosen = labels != IGNORE  # (B, T)
        if not bool(chosen.any()):
            return super().forward(batch)
        inputs = {k: v for k, v in batch.items() if k != "labels" and not k.startswith("_")}
        hidden = self.model.base_model(**inputs).last_hidden_state  # (B, T, H)
        logits = head(hidden[chosen])  # (N, V)
        loss = F.cross_entropy(logits.float(), labels[chosen])
        return MaskedLMOutput(loss=loss, logits=logits)

"""BERT-style masked language modelling.

The token masking is transformers' ``DataCollatorForLanguageModeling`` (80/10/10 split,
special tokens never chosen); this module adds whole-word masking on packed blocks (Chinese
words from a segmenter, ``##`` pieces elsewhere), done the same way, and a sparse prediction
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

from pretrainlab.data.packing import WORD_START
from pretrainlab.data.words import continuation_table
from pretrainlab.objectives.base import IGNORE, Batch, Collator, PretrainingObjective


@dataclass
class MaskedLMCollator:
    """``DataCollatorForLanguageModeling`` fed what packed blocks lack, plus whole-word masking.

    It precomputes the special-token table once (instead of per row). Whole-word masking is
    done here, not by transformers: its version needs offsets, forces 100% [MASK], and splits a
    word at any special token (an [UNK] for a rare character inside a Chinese word is common).
    Words come from the examples' ``word_start`` flags (segmented Chinese words and ``##``
    pieces: see ``pretrainlab.data.words``) or, for examples without them, from the ``##``
    marks alone. Each word is chosen with probability ``mask_probability``, so that share of the
    maskable tokens is chosen in expectation (Chinese-BERT-wwm's 15% of tokens); the chosen
    tokens are then split 80/10/10 token by token, exactly as transformers does.
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
            seed=self.seed,
        )
        vocab = len(self.tokenizer)
        self.special = torch.zeros(vocab, dtype=torch.bool)
        self.special[self.tokenizer.all_special_ids] = True
        self.continues = torch.from_numpy(continuation_table(self.tokenizer))  # (V,) ## pieces

    def __call__(self, examples: list[dict[str, Any]]) -> Batch:
        batch = self.tokenizer.pad([{"input_ids": e["input_ids"]} for e in examples], return_tensors="pt")
        ids = batch["input_ids"].clone()  # (B, T)
        if self.seed is not None and self.inner.generator is None:
            self.inner.create_rng("pt")
        if self.whole_word_mask:
            starts = self.word_starts(examples, ids, batch["attention_mask"])
            inputs, labels = self.mask_words(ids, starts)
        else:
            inputs, labels = self.inner.torch_mask_tokens(ids, special_tokens_mask=self.special[ids])
        return {"input_ids": inputs, "attention_mask": batch["attention_mask"], "labels": labels}

    def word_starts(
        self, examples: list[dict[str, Any]], ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, T) bool, True where a token starts a word: the examples' ``word_start`` column
        placed under the padding (either side), or else "not a ``##`` piece"."""
        if WORD_START not in examples[0]:
            return ~self.continues[ids]
        flags = [torch.as_tensor(e[WORD_START], dtype=torch.bool) for e in examples]
        real = attention_mask.bool()
        if [len(f) for f in flags] != real.sum(1).tolist():
            raise ValueError(f"every example needs one {WORD_START} flag per input id")
        starts = torch.ones_like(real)
        starts[real] = torch.cat(flags)
        return starts

    def mask_words(self, ids: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Choose whole words with probability ``mask_probability`` (special tokens inside a word
        stay as they are, the rest of the word is chosen), then replace 80/10/10."""
        g = self.inner.generator
        words = torch.cumsum(starts.long(), dim=1)  # (B, T): the word number within its row
        draws = torch.full((ids.shape[0], ids.shape[1] + 1), self.mask_probability)
        chosen = torch.bernoulli(draws, generator=g).bool().gather(1, words) & ~self.special[ids]
        labels = torch.where(chosen, ids, IGNORE)
        inputs = ids.clone()
        replaced = torch.bernoulli(torch.full(ids.shape, self.mask_replace_prob), generator=g).bool() & chosen
        inputs[replaced] = self.tokenizer.mask_token_id
        if self.mask_replace_prob < 1 and self.random_replace_prob > 0:
            share = self.random_replace_prob / (1 - self.mask_replace_prob)  # of those not [MASK]ed
            randomised = (
                torch.bernoulli(torch.full(ids.shape, share), generator=g).bool() & chosen & ~replaced
            )
            random_ids = torch.randint(len(self.tokenizer), ids.shape, generator=g)
            inputs[randomised] = random_ids[randomised]
        return inputs, labels


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

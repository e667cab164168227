"""GPT-style next-token language modelling.

Labels are the inputs themselves (the model shifts them), padding excluded: exactly
transformers' ``DataCollatorForLanguageModeling(mlm=False)``. Documents inside a packed block
are separated by eos, so the model learns where one ends and the next begins.

``objective.loss_chunk_tokens=N`` computes the output layer and its loss N tokens at a time
(``models/chunked_loss.py``): the same loss, without the (tokens x vocabulary) logits.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    DataCollatorForLanguageModeling,
    GenerationConfig,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from pretrainlab.config import ConfigError
from pretrainlab.generation.decode import generate_with, strip_after_eos
from pretrainlab.models.chunked_loss import chunked_linear_cross_entropy
from pretrainlab.objectives.base import IGNORE, Batch, Collator, PretrainingObjective


class CausalLM(PretrainingObjective):
    """Decoder (Llama, GPT-2 or Bloom family) trained on next-token prediction."""

    name: ClassVar[str] = "causal"
    corrupts: ClassVar[bool] = False
    auto_class: ClassVar[type] = AutoModelForCausalLM

    def build_collator(self) -> Collator:
        return DataCollatorForLanguageModeling(self.tokenizer, mlm=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        chunk = self.settings.get("loss_chunk_tokens")
        if not chunk:
            return
        config = getattr(self.model, "config", None)
        scaled = [k for k in ("final_logit_softcapping", "logit_scale") if getattr(config, k, None)]
        head = getattr(self.model, "get_output_embeddings", lambda: None)()
        if not isinstance(head, torch.nn.Linear) or scaled:
            raise ConfigError(  # before training: the loss would skip what the model does to its logits
                f"objective.loss_chunk_tokens={chunk}: {type(self.model).__name__} does not end in a plain "
                "linear output layer" + (f" ({', '.join(scaled)})" if scaled else "") + "; set it to null"
            )

    def forward(self, batch: Batch) -> Any:
        """With labels and ``loss_chunk_tokens`` set: the body on every position, then the output
        layer and next-token loss a chunk at a time (no logits are returned); else the model's own."""
        chunk = self.settings.get("loss_chunk_tokens")
        labels = batch.get("labels")
        if not chunk or labels is None:
            return super().forward(batch)
        head = self.model.get_output_embeddings()
        inputs = {k: v for k, v in batch.items() if k != "labels" and not k.startswith("_")}
        hidden = self.model.base_model(**inputs).last_hidden_state  # (B, T, H)
        # Position t predicts token t + 1, as the model's own loss shifts them.
        loss = chunked_linear_cross_entropy(
            hidden[:, :-1].reshape(-1, hidden.shape[-1]),
            head.weight,
            head.bias,
            labels[:, 1:].reshape(-1),
            chunk,
        )
        return CausalLMOutputWithPast(loss=loss)

    def _with_start(self, prefix: list[int]) -> list[int]:
        # In packed training text every document follows an eos: start prompts the same way.
        return [self.tokenizer.eos_token_id, *prefix]

    @torch.no_grad()
    def continue_ids(
        self, prefix: list[int], config: GenerationConfig, num_return_sequences: int = 1
    ) -> list[list[int]]:
        ids = torch.tensor([self._with_start(prefix)], device=self.device)
        config = copy.deepcopy(config)
        config.num_return_sequences = num_return_sequences
        out = generate_with(self.model, ids, torch.ones_like(ids), config)  # (n, T_in + T_new)
        return [strip_after_eos(row[ids.shape[1] :], self.tokenizer.eos_token_id) for row in out.tolist()]

    @torch.no_grad()
    def continuation_nll(self, prefix: list[int], continuation: list[int]) -> torch.Tensor:
        ids = torch.tensor([self._with_start(prefix) + continuation], device=self.device)
        logits = self.model(input_ids=ids).logits[0, :-1].float()  # (T-1, V): predicts ids[1:]
        nll = F.cross_entropy(logits, ids[0, 1:], reduction="none")
        return nll[-len(continuation) :] if continuation else nll[:0]

    def count_targets(self, batch: Batch) -> int:
        # The model shifts labels: the first position of each row predicts nothing.
        return int((batch["labels"][:, 1:] != IGNORE).sum())

"""Downstream fine-tuning: every weight of the backbone trained on a labelled task, one recipe
for every objective.

The probe (``probe.py``) asks what frozen features already hold; the objective papers (BERT,
T5, GLM) instead fine-tune, which is what this measures. The recipe is the same for masked,
causal, seq2seq and prefix runs, so a difference between them is the pretraining's:

* **Backbone**: a ``copy.deepcopy`` of the run's model (the run's own model is never touched:
  it is exported after evaluation), cast to fp32, on the run's device; all its weights train.
* **Features**: the mean of the backbone's final hidden states over the text's tokens (padding
  excluded), read exactly as the probe reads them (``features.final_states``): the BERT
  encoder (masked), the decoder stack (causal), the T5 encoder (seq2seq), the GLM stack reading
  the text bidirectionally as part A (prefix). Texts are cut to ``max_length`` tokens, without
  special tokens (an empty text is one [unk]); batches are padded to their longest text.
* **Head**: dropout (``dropout``, 0.1) + ``Linear(hidden, n_classes)``. Labels (strings or
  ints) are the sorted distinct training labels; a test label unseen in training is always
  wrong.
* **Optimisation**: AdamW (``lr``, ``weight_decay``; no decay on biases and norms), linear
  warm-up over ``warmup_ratio`` of the ``steps`` then linear decay to 0, gradient norm clipped
  at 1.0, ``steps`` batches of ``batch_size`` texts drawn by a numpy generator seeded with the
  fine-tuning seed (each epoch reshuffled). The model is in train mode while training (dropout
  on), eval mode for testing.
* **Seeds**: the head's init, the dropout masks and the batch order all come from the
  fine-tuning seed (the torch RNG under ``torch.random.fork_rng``, so the run's global RNG is
  left as it was), so two objectives of the same hidden size get the same head init and the
  same batches for a given seed: the comparison is paired. It is repeated for each seed of
  ``seeds``.
* **Metrics** on the test split: ``finetune/accuracy`` (mean over seeds) and
  ``finetune/accuracy_std`` (sample standard deviation over seeds, ddof=1; 0.0 for one seed);
  with more than 2 classes also ``finetune/macro_f1`` and ``finetune/macro_f1_std``
  (scikit-learn's ``f1_score(average="macro")``, over the labels found in the test split or
  the predictions). Per-item scores: each test item's share of seeds that got it right, so
  their mean is ``finetune/accuracy``.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pretrainlab.config import FinetuneConfig
from pretrainlab.evaluation.features import encode_texts, mean_states, pad_batch
from pretrainlab.evaluation.items import ItemScores, item_id, mean_over_items
from pretrainlab.evaluation.probe import Split

log = logging.getLogger(__name__)
CLIP_NORM = 1.0


# The recipe's knobs are the config's (``evaluation.finetune.*``); ``enabled`` is not read here.
FinetuneSettings = FinetuneConfig


class _Classifier(nn.Module):
    """Backbone + mean pooling + dropout + linear head: one module, so train/eval mode and
    ``parameters()`` cover both."""

    def __init__(self, backbone: nn.Module, name: str, hidden: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        # Created before the backbone is attached: nothing but the seed decides its init.
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_classes)
        self.backbone = backbone
        self.name = name

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, n_classes) logits."""
        return self.head(self.dropout(mean_states(self.backbone, self.name, ids, mask)))


def copy_backbone(model: nn.Module) -> nn.Module:
    """A trainable, eager copy of the run's model, sharing no tensor with it.

    ``compile_backbone`` compiles in place (``nn.Module.compile``): it sets
    ``_compiled_call_impl`` on ``model.base_model``, a function bound to the *original*
    sub-module. ``nn.Module.__getstate__`` (which ``deepcopy`` goes through) drops that
    attribute, so the copy runs eagerly and never calls into the original; it is cleared again
    here in case a torch version keeps it. A model wrapped whole by ``torch.compile`` (an
    ``OptimizedModule``) is copied through its uncompiled original, ``_orig_mod``. Eager costs
    nothing here: in fp32 on CPU compiling gained ~1x, and it would take 35-45 s to compile.
    """
    original = getattr(model, "_orig_mod", model)
    backbone = copy.deepcopy(original)
    for sub in backbone.modules():
        if getattr(sub, "_compiled_call_impl", None) is not None:
            sub._compiled_call_impl = None
    return backbone.float().requires_grad_(True)


def _hidden_size(model: nn.Module) -> int:
    """Width of the final states: the token embeddings' (BERT, Llama, T5, GLM share it)."""
    return int(model.get_input_embeddings().embedding_dim)


def _batches(n: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """``steps`` batches of training indices: epochs of a seeded permutation, back to back."""
    rng = np.random.default_rng([seed, n])
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            order += rng.permutation(n).tolist()
        yield order[:batch_size]
        order = order[batch_size:]


def _optimizer(model: nn.Module, settings: FinetuneSettings, steps: int) -> tuple[Any, Any]:
    """AdamW (no weight decay on biases and norms) and its linear warm-up/decay schedule."""
    from transformers import get_linear_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": settings.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=settings.lr)
    schedule = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * steps), steps)
    return optimizer, schedule


def finetune_predictions(
    module: Any,
    train_ids: Sequence[Sequence[int]],
    train_targets: Sequence[int],
    test_ids: Sequence[Sequence[int]],
    n_classes: int,
    settings: FinetuneSettings,
    seed: int,
) -> list[int]:
    """Fine-tune a copy of ``module.model`` with one seed; the predicted class of each test text.

    Inputs are token ids (``features.encode_texts``) and class indices. All randomness (head
    init, dropout, batch order) comes from ``seed``; the global torch RNG is restored after.
    """
    device = next(module.model.parameters()).device
    pad = module.tokenizer.pad_token_id
    targets = torch.tensor(list(train_targets), dtype=torch.long)
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        backbone = copy_backbone(module.model)
        model = _Classifier(backbone, module.name, _hidden_size(backbone), n_classes, settings.dropout)
        model.to(device).train()
        optimizer, schedule = _optimizer(model, settings, settings.steps)
        for batch in _batches(len(train_ids), settings.batch_size, settings.steps, seed):
            ids, mask = pad_batch([train_ids[i] for i in batch], pad, device)
            loss = nn.functional.cross_entropy(model(ids, mask), targets[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
            optimizer.step()
            schedule.step()
        model.eval()
        predictions = [0] * len(test_ids)
        order = sorted(range(len(test_ids)), key=lambda i: len(test_ids[i]))  # little padding
        with torch.no_grad():
            for start in range(0, len(order), settings.batch_size):
                chunk = order[start : start + settings.batch_size]
                ids, mask = pad_batch([test_ids[i] for i in chunk], pad, device)
                for i, label in zip(chunk, model(ids, mask).argmax(-1).tolist(), strict=True):
                    predictions[i] = int(label)
    return predictions


def _classes(train_labels: Sequence[Any]) -> list[Any]:
    """The sorted distinct training labels (by their text if they do not sort together)."""
    distinct = set(train_labels)
    try:
        return sorted(distinct)
    except TypeError:
        return sorted(distinct, key=lambda v: (type(v).__name__, str(v)))


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof=1); 0.0 for a single value."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def evaluate_finetune(
    module: Any, split: Split, settings: FinetuneSettings
) -> tuple[dict[str, float], list[ItemScores]]:
    """Fine-tune a copy of the run's backbone on ``split`` (``probe.labelled_task``) once per
    seed of ``settings.seeds``; test accuracy (and macro-F1 with more than 2 classes), mean and
    sample std over seeds, and per-item scores whose mean is ``finetune/accuracy``."""
    from sklearn.metrics import f1_score

    train_texts, train_labels, test_texts, test_labels = split
    if not settings.seeds:
        raise ValueError("evaluation.finetune.seeds: needs at least one seed")
    if not train_texts or not test_texts:
        raise ValueError(f"fine-tuning needs training and test texts ({len(train_texts)}, {len(test_texts)})")
    classes = _classes(train_labels)
    index = {label: i for i, label in enumerate(classes)}
    unseen = {label for label in test_labels if label not in index}
    # Each unseen test label its own class index, which no prediction ever takes.
    for label in _classes(list(unseen)):
        index[label] = len(index)
    train_targets = [index[label] for label in train_labels]
    test_targets = [index[label] for label in test_labels]
    tok = module.tokenizer
    train_ids = encode_texts(tok, train_texts, settings.max_length)
    test_ids = encode_texts(tok, test_texts, settings.max_length)

    accuracies: list[float] = []
    f1s: list[float] = []
    per_seed: list[list[float]] = []
    for seed in settings.seeds:
        log.info(
            "fine-tuning (%s): seed %d, %d steps of %d texts on %d training texts, %d classes",
            module.name,
            seed,
            settings.steps,
            settings.batch_size,
            len(train_texts),
            len(classes),
        )
        start = time.perf_counter()
        predicted = finetune_predictions(
            module, train_ids, train_targets, test_ids, len(classes), settings, seed
        )
        correct = [1.0 if p == t else 0.0 for p, t in zip(predicted, test_targets, strict=True)]
        per_seed.append(correct)
        accuracies.append(sum(correct) / len(correct))
        if len(classes) > 2:
            f1s.append(float(f1_score(test_targets, predicted, average="macro", zero_division=0.0)))
        log.info(
            "fine-tuning (%s): seed %d, %.4f accuracy on %d test texts in %.1f s",
            module.name,
            seed,
            accuracies[-1],
            len(test_texts),
            time.perf_counter() - start,
        )
    metrics = {
        "finetune/accuracy": float(np.mean(accuracies)),
        "finetune/accuracy_std": _std(accuracies),
    }
    if f1s:
        metrics["finetune/macro_f1"] = float(np.mean(f1s))
        metrics["finetune/macro_f1_std"] = _std(f1s)
    ids = [item_id(text, label) for text, label in zip(test_texts, test_labels, strict=True)]
    return metrics, [mean_over_items("finetune/accuracy", ids, per_seed)]

"""Per-item scores of the end-of-run evaluation, kept in the run folder as ``eval_items.jsonl``.

A study's question is whether one objective beats another by more than the evaluation's own
noise. Every objective is scored on the same held-out items (``evaluation.seed``), so the
difference can be tested *paired*, item by item (``pretrainlab-compare``'s bootstrap) — but
only if each run keeps its per-item scores, not just their mean. An item's id is a hash of
its content, so two runs pair exactly the items they both scored (runs with different
tokenizers or task files pair none, instead of pairing the wrong ones).

One JSON line per metric: ``{"metric": ..., "ids": [...], "scores": [...], "weights": [...]}``.
The metric's value is ``sum(scores) / sum(weights)`` (weights absent = 1 per item), which is
exactly the number in ``metrics.json``: a mean for accuracies, a ratio for bits per character
(bits per item over characters per item).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrainlab.utils import write_text_atomic

ITEMS_FILE = "eval_items.jsonl"


@dataclass
class ItemScores:
    """One metric's per-item numerators (and denominators, for a ratio metric)."""

    metric: str
    ids: list[str]
    scores: list[float]
    weights: list[float] | None = None

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.scores) or (
            self.weights is not None and len(self.weights) != len(self.ids)
        ):
            raise ValueError(f"{self.metric}: ids, scores and weights differ in length")

    def value(self) -> float | None:
        """The metric as ``metrics.json`` holds it; None without items (or weight)."""
        total = sum(self.weights) if self.weights is not None else len(self.scores)
        return sum(self.scores) / total if total else None


def item_id(*parts: Any) -> str:
    """A short, stable id of an item's content (token ids, text, label...)."""
    text = json.dumps(parts, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def write_items(path: Path, items: Iterable[ItemScores]) -> None:
    """One line per metric, written atomically (a reader never sees half a file)."""
    lines = []
    for entry in items:
        record: dict[str, Any] = {"metric": entry.metric, "ids": entry.ids, "scores": entry.scores}
        if entry.weights is not None:
            record["weights"] = entry.weights
        lines.append(json.dumps(record, ensure_ascii=False))
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def read_items(path: Path) -> dict[str, ItemScores]:
    """``{metric: ItemScores}`` of a run folder's file (or of the file itself); {} if absent."""
    file = path / ITEMS_FILE if path.is_dir() else path
    if not file.is_file():
        return {}
    out: dict[str, ItemScores] = {}
    for line in file.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            out[record["metric"]] = ItemScores(
                record["metric"], list(record["ids"]), list(record["scores"]), record.get("weights")
            )
    return out


def mean_over_items(metric: str, ids: Sequence[str], per_seed: Sequence[Sequence[float]]) -> ItemScores:
    """Per-item mean over repeats (e.g. fine-tuning seeds): the mean of the per-repeat
    accuracies equals the mean of these per-item means, so the file and metrics.json agree."""
    repeats = len(per_seed)
    scores = [sum(column) / repeats for column in zip(*per_seed, strict=True)] if repeats else []
    return ItemScores(metric, list(ids), scores)

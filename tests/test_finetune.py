"""Downstream fine-tuning: every objective learns a separable labelled task through the same
recipe, deterministically, on a copy (the run's model and global RNG are untouched), with
per-item scores that agree with the metrics; and the labelled task's one-line config errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pretrainlab.config import ConfigError, ProbeDataConfig
from pretrainlab.evaluation.finetune import FinetuneSettings, copy_backbone, evaluate_finetune
from pretrainlab.evaluation.items import item_id
from pretrainlab.evaluation.probe import labelled_task, load_sentiment
from pretrainlab.infer import load_run

OBJECTIVES = ["masked", "causal", "seq2seq", "prefix"]
# Frequent People's Daily characters: single tokens of the fixture tokenizer (checked below).
MARKERS = "国人年"
FILLERS = "的一是在不了有和这中大为上个"
# Test-sized recipe: the fixture runs are 1 layer, hidden 32, trained for 2 steps (about 0.5 s a seed).
FAST = FinetuneSettings(seeds=[0], steps=60, batch_size=16, lr=1e-2, warmup_ratio=0.1, max_length=16)


def marker_task(labels: list, n_train: int = 240, n_test: int = 36, seed: int = 0, fillers: int = 4) -> tuple:
    """Texts of ``fillers`` random filler characters with one class marker inserted at a random
    place: class i holds MARKERS[i]. Separable by one token, which every objective's features
    can see (240 training texts: with fewer, a 1-layer causal stack memorises the fillers)."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[list[str], list]:
        texts, ys = [], []
        for i in range(n):
            k = i % len(labels)
            chars = list(rng.choice(list(FILLERS), size=fillers))
            chars.insert(int(rng.integers(0, fillers + 1)), MARKERS[k])
            texts.append("".join(chars))
            ys.append(labels[k])
        return texts, ys

    train_x, train_y = make(n_train)
    test_x, test_y = make(n_test)
    return train_x, train_y, test_x, test_y


def check_single_tokens(tokenizer) -> None:
    for char in MARKERS + FILLERS:
        ids = tokenizer(char, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tokenizer.unk_token_id, char


def params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


# -- 1. every objective learns, deterministically ---------------------------------------------


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_finetuning_learns_a_separable_task_deterministically(trained_run, objective):
    module = load_run(trained_run(objective)).module
    check_single_tokens(module.tokenizer)
    # One case with three string labels (and macro-F1), the others binary int labels.
    labels = ["北", "南", "西"] if objective == "prefix" else [0, 1]
    split = marker_task(labels)
    metrics, items = evaluate_finetune(module, split, FAST)
    assert metrics["finetune/accuracy"] >= 0.9, metrics
    assert ("finetune/macro_f1" in metrics) == (len(labels) > 2)
    if len(labels) > 2:
        assert metrics["finetune/macro_f1"] >= 0.9
    again, again_items = evaluate_finetune(module, split, FAST)
    assert again == metrics and again_items == items  # same seed: same numbers, item for item


# -- 2. a copy is trained: the run's model and RNG are as they were ----------------------------


def test_the_runs_model_and_global_rng_are_untouched(trained_run):
    module = load_run(trained_run("masked")).module
    module.eval()
    before = params(module)
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    np_before = np.random.get_state()[1].copy()
    metrics, _ = evaluate_finetune(module, marker_task([0, 1]), FAST)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert np.array_equal(np.random.get_state()[1], np_before)
    after = params(module)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in module.model.parameters())  # no gradient reached it
    assert not module.training  # its mode is its own
    # The trained copy did change (so the equality above is not vacuous): the same recipe
    # with steps=0 leaves the head at its init, near chance.
    untrained, _ = evaluate_finetune(module, marker_task([0, 1]), FinetuneSettings(seeds=[0], steps=0))
    assert untrained["finetune/accuracy"] < metrics["finetune/accuracy"]


def test_a_compiled_backbone_is_copied_eager_and_gives_the_same_numbers(trained_run):
    """compile_backbone compiles in place; the copy must neither recompile (35 s+) nor call
    into the original's compiled forward (which would train the run's own weights)."""
    split = marker_task([0, 1])
    eager = load_run(trained_run("causal")).module
    expected = evaluate_finetune(eager, split, FAST)
    compiled = load_run(trained_run("causal")).module
    compiled.compile_backbone()
    assert compiled.model.base_model._compiled_call_impl is not None
    copy = copy_backbone(compiled.model)
    assert all(getattr(sub, "_compiled_call_impl", None) is None for sub in copy.modules())
    assert not any(a is b for a, b in zip(copy.parameters(), compiled.model.parameters(), strict=True))
    assert evaluate_finetune(compiled, split, FAST) == expected
    assert compiled.model.base_model._compiled_call_impl is not None  # the run keeps its compile


# -- 3. per-item scores, seeds, classes -------------------------------------------------------


def test_item_scores_agree_with_the_metrics_and_pair_across_objectives(trained_run):
    train_x, train_y, test_x, test_y = marker_task(["a", "b", "c"])
    # A test label never seen in training always counts as wrong.
    split = (train_x, train_y, [*test_x, "的一是国"], [*test_y, "unseen"])
    settings = FinetuneSettings(seeds=[0, 1], steps=20, batch_size=16, lr=3e-3, max_length=16)
    masked = load_run(trained_run("masked")).module
    metrics, [items] = evaluate_finetune(masked, split, settings)
    assert items.metric == "finetune/accuracy"
    assert items.ids == [item_id(t, y) for t, y in zip(split[2], split[3], strict=True)]
    assert items.value() == pytest.approx(metrics["finetune/accuracy"], abs=1e-12)
    assert items.scores[-1] == 0.0
    assert all(s in (0.0, 0.5, 1.0) for s in items.scores)  # per-item mean over 2 seeds
    assert {"finetune/macro_f1", "finetune/macro_f1_std"} <= set(metrics)
    # Mean and sample std (ddof=1) of the per-seed results.
    single = [
        evaluate_finetune(masked, split, FinetuneSettings(**{**vars(settings), "seeds": [s]}))[0]
        for s in (0, 1)
    ]
    for key in ("finetune/accuracy", "finetune/macro_f1"):
        per_seed = [m[key] for m in single]
        assert metrics[key] == pytest.approx(np.mean(per_seed))
        assert metrics[key + "_std"] == pytest.approx(np.std(per_seed, ddof=1))
        assert all(m[key + "_std"] == 0.0 for m in single)
    # Another objective scores the same items under the same ids: a paired comparison.
    causal = load_run(trained_run("causal")).module
    _, [other] = evaluate_finetune(causal, split, settings)
    assert other.ids == items.ids
    binary, _ = evaluate_finetune(masked, marker_task([0, 1]), FAST)
    assert set(binary) == {"finetune/accuracy", "finetune/accuracy_std"}


# -- 4. the labelled task: a bad file fails in one line, naming the key ------------------------


def test_labelled_task_reads_a_file_or_the_builtin_reviews(tmp_path):
    rows = [{"text": f"文本{i}", "label": "good" if i % 2 else "bad"} for i in range(20)]
    file = tmp_path / "task.csv"
    pd.DataFrame(rows).to_csv(file, index=False)
    cfg = ProbeDataConfig(path=str(file), test_fraction=0.25)
    train_x, train_y, test_x, test_y = labelled_task(cfg, 0, tmp_path / "hf", 1000, 500)
    assert len(test_x) == 5 and len(train_x) == 15 and set(train_y) == {"good", "bad"}
    assert not set(train_x) & set(test_x)
    builtin = labelled_task(ProbeDataConfig(), 0, None, per_class=30, test_per_class=10)
    assert builtin == load_sentiment(30, 0, 10)


@pytest.mark.parametrize(
    ("rows", "overrides", "message"),
    [
        (  # the label column is not in the file
            [{"text": f"t{i}", "y": i % 2} for i in range(20)],
            {},
            r"^data\.probe\.label_column=label: no such column",
        ),
        (  # every row has one label
            [{"text": f"t{i}", "label": 1} for i in range(20)],
            {},
            r"^data\.probe\.label_column=label: needs at least two different labels",
        ),
        (  # 1 test text for 2 labels: the stratified test split cannot hold each label
            [{"text": f"t{i}", "label": i % 2} for i in range(20)],
            {"test_fraction": 0.01},
            r"^data\.probe\.test_fraction=0\.01: leaves 1 test text\(s\) for 2 labels among 20 texts.*raise",
        ),
        (  # 1 training text for 2 labels
            [{"text": f"t{i}", "label": i % 2} for i in range(20)],
            {"test_fraction": 0.95},
            r"^data\.probe\.test_fraction=0\.95: leaves 1 training text\(s\) for 2 labels.*lower it",
        ),
        (  # enough training texts, but the rare label all goes to test
            [{"text": f"t{i}", "label": int(i >= 10)} for i in range(12)],
            {"test_fraction": 0.8},
            r"^data\.probe\.test_fraction=0\.8: leaves no training text of label\(s\) 1 among 12 texts",
        ),
    ],
)
def test_a_bad_labelled_file_is_one_line_naming_the_key(tmp_path, rows, overrides, message):
    file = tmp_path / "task.jsonl"
    pd.DataFrame(rows).to_json(file, orient="records", lines=True, force_ascii=False)
    with pytest.raises(ConfigError, match=message) as err:
        labelled_task(ProbeDataConfig(path=str(file), **overrides), 0, tmp_path / "hf", 1000, 500)
    assert "\n" not in str(err.value)


def test_too_many_builtin_reviews_names_the_evaluation_keys():
    with pytest.raises(ConfigError, match=r"^evaluation\.probe_per_class=1000000, evaluation\.probe_test"):
        labelled_task(ProbeDataConfig(), 0, None, per_class=10**6, test_per_class=500)

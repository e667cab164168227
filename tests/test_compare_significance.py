"""Paired significance and no-pretraining baselines in ``pretrainlab-compare`` (issue 12).

The bootstrap is checked on synthetic per-item scores whose truth is planted; the report on
sweep folders written by hand (metrics.json, .hydra/, eval_items.jsonl), like test_compare.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from pretrainlab.compare import build_table, collect, direction, to_markdown, write_report
from pretrainlab.evaluation.items import ItemScores, item_id, write_items

IDS = [item_id("item", i) for i in range(400)]
ACCURACY = "cloze/exact_match_k1"


def bootstrap(a: list[ItemScores], b: list[ItemScores], **options: Any) -> Any:
    """``statistics.paired_bootstrap`` (imported here: the module is new)."""
    from pretrainlab.compare.statistics import paired_bootstrap

    return paired_bootstrap(a, b, **options)


def bernoulli(p: float, rng: np.random.Generator, n: int = 300, metric: str = ACCURACY) -> ItemScores:
    """One run's 0/1 item scores, each item right with probability ``p``."""
    return ItemScores(metric, IDS[:n], [float(x) for x in rng.random(n) < p])


def bpc_run(mean: float, chars: np.ndarray, rng: np.random.Generator) -> ItemScores:
    """Bits per item over characters per item: the metric is sum(bits) / sum(characters)."""
    bits = chars * rng.normal(mean, 0.4, len(chars))
    return ItemScores("continuation/bpc", IDS[: len(chars)], bits.tolist(), chars.astype(float).tolist())


# -- 1. the bootstrap finds a planted difference and none where there is none -------------------
def test_items_only_planted_difference_is_significant() -> None:
    for data_seed in range(10):
        rng = np.random.default_rng(data_seed)
        result = bootstrap([bernoulli(0.7, rng)], [bernoulli(0.5, rng)])
        assert result.resampled == "items" and (result.seeds_a, result.seeds_b) == (1, 1)
        assert result.n_items == 300
        assert result.significant and 0 < result.low < result.diff < result.high
        assert result.low < 0.2 < result.high  # the planted difference is inside


def test_items_only_no_difference_is_rarely_significant() -> None:
    significant = 0
    for data_seed in range(40):
        rng = np.random.default_rng(100 + data_seed)
        result = bootstrap([bernoulli(0.6, rng)], [bernoulli(0.6, rng)])
        assert result.low <= result.diff <= result.high
        significant += result.significant
        assert result.significant == (result.low > 0 or result.high < 0)
    assert significant <= 5  # a 95% interval: about 2 of 40 by chance


def seed_runs(centre: float, spread: float, rng: np.random.Generator) -> list[ItemScores]:
    """3 training seeds: each run's accuracy is ``centre`` moved by training-seed noise."""
    return [bernoulli(centre + shift, rng) for shift in (-spread, 0.0, spread)]


def test_items_and_seeds_mode() -> None:
    rng = np.random.default_rng(7)
    planted = bootstrap(seed_runs(0.7, 0.02, rng), seed_runs(0.5, 0.02, rng))
    assert planted.resampled == "items+seeds" and (planted.seeds_a, planted.seeds_b) == (3, 3)
    assert planted.significant and planted.low > 0
    null = bootstrap(seed_runs(0.6, 0.02, rng), seed_runs(0.6, 0.02, rng))
    assert null.resampled == "items+seeds" and not null.significant and null.low < 0 < null.high


def test_resampling_seeds_widens_the_interval_by_the_seed_noise() -> None:
    rng = np.random.default_rng(3)
    a, b = seed_runs(0.6, 0.12, rng), seed_runs(0.6, 0.0, rng)  # a's training seeds disagree a lot
    with_seeds = bootstrap(a, b)
    items_only = bootstrap(a, b, min_seed_runs=99)
    assert (with_seeds.resampled, items_only.resampled) == ("items+seeds", "items")
    assert with_seeds.diff == pytest.approx(items_only.diff)
    assert with_seeds.high - with_seeds.low > 1.5 * (items_only.high - items_only.low)


def test_two_seed_runs_resample_items_only() -> None:
    rng = np.random.default_rng(5)
    result = bootstrap(seed_runs(0.6, 0.02, rng)[:2], seed_runs(0.5, 0.02, rng))
    assert result.resampled == "items" and (result.seeds_a, result.seeds_b) == (2, 3)


def test_ratio_metric_uses_weights() -> None:
    rng = np.random.default_rng(11)
    chars = rng.integers(5, 120, 300)
    a, b = bpc_run(2.0, chars, rng), bpc_run(2.3, chars, rng)
    result = bootstrap([a], [b])
    assert result.diff == pytest.approx(a.value() - b.value())  # sum(bits) / sum(chars), not a mean of ratios
    mean_of_ratios = np.mean(np.array(a.scores) / chars) - np.mean(np.array(b.scores) / chars)
    assert result.diff != pytest.approx(mean_of_ratios, abs=1e-6)
    assert result.significant and result.high < 0 and result.low < -0.3 < result.high


def test_deterministic_given_a_seed() -> None:
    rng = np.random.default_rng(2)
    a, b = seed_runs(0.6, 0.03, rng), seed_runs(0.55, 0.03, rng)
    first, again, other = bootstrap(a, b, seed=4), bootstrap(a, b, seed=4), bootstrap(a, b, seed=5)
    assert (first.low, first.high) == (again.low, again.high)
    assert (first.low, first.high) != (other.low, other.high) and first.diff == other.diff


# -- 2. pairing is by item id ---------------------------------------------------------------
def test_disjoint_or_too_few_common_items_give_no_test() -> None:
    rng = np.random.default_rng(0)
    a = bernoulli(0.7, rng)
    disjoint = ItemScores(ACCURACY, IDS[300:400], [1.0] * 100)
    assert bootstrap([a], [disjoint]) is None
    nine = ItemScores(ACCURACY, IDS[291:300] + IDS[300:391], [0.0] * 100)
    assert bootstrap([a], [nine]) is None
    ten = ItemScores(ACCURACY, IDS[290:300] + IDS[300:390], [0.0] * 100)
    assert bootstrap([a], [ten]).n_items == 10
    # Every run of both groups must hold the item: one seed without them leaves no test.
    assert bootstrap([a, bernoulli(0.7, rng)], [bernoulli(0.5, rng), disjoint]) is None


def test_only_common_items_are_compared() -> None:
    rng = np.random.default_rng(1)
    a = bernoulli(0.7, rng)
    scores_b = [float(x) for x in rng.random(300) < 0.5]
    b = ItemScores(ACCURACY, IDS[100:400], scores_b)  # items 100..299 in common
    result = bootstrap([a], [b])
    assert result.n_items == 200
    expected = np.mean(a.scores[100:300]) - np.mean(scores_b[:200])
    assert result.diff == pytest.approx(expected)


def test_shuffled_item_order_gives_the_same_result() -> None:
    rng = np.random.default_rng(9)
    a, b = seed_runs(0.65, 0.02, rng), seed_runs(0.6, 0.02, rng)
    order = rng.permutation(300)
    shuffled = [ItemScores(r.metric, [r.ids[i] for i in order], [r.scores[i] for i in order]) for r in a]
    first, second = bootstrap(a, b), bootstrap(shuffled, b)
    assert (first.diff, first.low, first.high) == pytest.approx((second.diff, second.low, second.high))
    assert first.significant == second.significant


# -- sweeps written by hand ---------------------------------------------------------------------
def write_job(
    sweep: Path,
    number: int,
    overrides: list[str],
    config: dict[str, Any],
    metrics: dict[str, Any],
    items: list[ItemScores],
    curve: list[tuple[int, int, float]],
) -> None:
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides), encoding="utf-8")
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    metrics = {**metrics, **{i.metric: i.value() for i in items}}
    (job / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    write_items(job / "eval_items.jsonl", items)
    lines = ["step,tokens_seen,val_loss", *(f"{s},{t},{v}" for s, t, v in curve)]
    (job / "curve.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def job_metrics(objective: str, loss: float, baseline: bool, **extra: Any) -> dict[str, Any]:
    metrics = {
        "status": "ok",
        "objective": objective,
        "val/loss": loss,
        "tokens_seen": 0 if baseline else 40960,
        "steps": 0 if baseline else 20,
        "params": 1119845,
        "wall_time_s": 1.0 if baseline else 30.0,
        **extra,
    }
    return {**metrics, "baseline": True} if baseline else metrics


SKILL = {("masked", False): 0.6, ("causal", False): 0.45, ("masked", True): 0.1, ("causal", True): 0.12}
REPETITION_TIME = {"masked": (0.5, 30.0), "causal": (0.6, 40.0)}
BPC = {("masked", False): 3.0, ("causal", False): 3.2, ("masked", True): 8.0, ("causal", True): 8.1}


def make_baseline_sweep(sweep: Path) -> Path:
    """masked, causal x {baseline, pretrained} x 3 seeds; the baselines were launched first."""
    rng = np.random.default_rng(0)
    chars = rng.integers(5, 120, 150)
    number = 0
    for baseline in (True, False):
        for objective in ("masked", "causal"):
            for seed in (1, 2, 3):
                skill = SKILL[objective, baseline] + 0.01 * (seed - 2)
                items = [
                    bernoulli(skill, rng, n=200),
                    bernoulli(skill + 0.1, rng, n=250, metric="probe/accuracy"),
                    bpc_run(BPC[objective, baseline], chars, rng),
                ]
                loss = 8.5 if baseline else 6.0 + 0.1 * seed
                # A random model barely repeats itself, and is fast: the lowest repetition and
                # wall time, never marked best.
                repetition, wall_time = (0.01, 1.0) if baseline else REPETITION_TIME[objective]
                metrics = job_metrics(
                    objective, loss, baseline, **{"gen/repetition_4": repetition, "wall_time_s": wall_time}
                )
                overrides = [f"objective={objective}", f"baseline={str(baseline).lower()}", f"seed={seed}"]
                config = {"objective": {"name": objective}, "seed": seed, "baseline": baseline}
                curve = [(0, 0, 8.5)] if baseline else [(0, 0, 8.5), (10, 20480, 7.0), (20, 40960, loss)]
                write_job(sweep, number, overrides, config, metrics, items, curve)
                number += 1
    return sweep


def markdown_rows(text: str) -> list[dict[str, str]]:
    """The first markdown table of ``text`` as one dict per row (bold kept)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("|"):
            if not set(line) <= set("|-: "):  # not the header's rule
                lines.append(line)
        elif lines:
            break
    split = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    return [dict(zip(split[0], row, strict=True)) for row in split[1:]]


@pytest.fixture(scope="module")
def baseline_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    sweep = make_baseline_sweep(tmp_path_factory.mktemp("baseline") / "sweep")
    files = write_report(sweep, metrics=["all"])
    return {"sweep": sweep, "files": files, "text": files["report.md"].read_text(encoding="utf-8")}


# -- 3. baseline rows, significance.csv and the Significance section ------------------------------
def test_baseline_rows_sit_under_their_objective_and_are_never_bold(baseline_report: dict[str, Any]) -> None:
    rows = markdown_rows(baseline_report["text"])
    assert [r["objective"] for r in rows] == [
        "masked",
        "masked (no pretraining)",
        "causal",
        "causal (no pretraining)",
    ]
    assert "baseline" not in rows[0]  # folded into the objective cell
    for row in rows[1::2]:
        assert not any(cell.startswith("**") for cell in row.values()), row
    # A column the baseline would win (repetition, wall time) goes to the best pretrained row.
    assert rows[0]["gen/repetition_4"].startswith("**") and rows[0]["wall_time_s"].startswith("**")
    assert rows[0][ACCURACY].startswith("**") and not rows[2][ACCURACY].startswith("**")


def test_significance_csv_has_every_pair(baseline_report: dict[str, Any]) -> None:
    files = baseline_report["files"]
    assert files["significance.csv"] == baseline_report["sweep"] / "significance.csv"
    table = pd.read_csv(files["significance.csv"])
    assert list(table.columns) == [
        "metric", "a", "b", "diff", "low", "high", "n_items",
        "seeds_a", "seeds_b", "resampled", "significant",
    ]  # fmt: skip
    assert sorted(table["metric"].unique()) == sorted([ACCURACY, "continuation/bpc", "probe/accuracy"])
    assert (table.groupby("metric").size() == 6).all()  # 4 row groups: every pair once
    assert set(table["resampled"]) == {"items+seeds"} and set(table["seeds_a"]) == {3}
    pair = table[
        (table["metric"] == ACCURACY) & (table["a"] == "masked") & (table["b"] == "masked (no pretraining)")
    ]
    assert len(pair) == 1
    (row,) = pair.itertuples()
    assert row.significant and 0 < row.low < row.diff < row.high and row.n_items == 200
    assert row.diff == pytest.approx(0.5, abs=0.1)
    bpc = table[(table["metric"] == "continuation/bpc") & (table["a"] == "causal")]
    assert (bpc["high"] < 0).all()  # causal's 3.2 bits beat its baseline's 8.1


def test_report_has_a_significance_section(baseline_report: dict[str, Any]) -> None:
    text = baseline_report["text"]
    assert "significance.csv" in text
    section = text.split("## Significance", 1)[1].split("\n## ", 1)[0]
    assert "bootstrap" in section and "≥ 3" in section
    for metric in (ACCURACY, "probe/accuracy", "continuation/bpc"):
        assert f"### {metric}" in section
    tables = section.split("### ")[1:]
    accuracy = next(t for t in tables if t.startswith(ACCURACY))
    rows = {r["comparison"]: r for r in markdown_rows(accuracy)}
    assert rows["causal − masked (best)"]["result"] == "**significant**"  # vs the best
    for objective in ("masked", "causal"):
        row = rows[f"{objective} − {objective} (no pretraining)"]
        assert row["result"] == "**significant**"
        assert row["difference"].startswith("+")  # pretraining helps: a positive difference
        assert row["items"] == "200" and row["seeds"] == "3 / 3"


def test_plots_handle_baselines_with_one_validation_point(baseline_report: dict[str, Any]) -> None:
    data = baseline_report["files"]["val_loss_vs_tokens.png"].read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000


# -- 4. bold follows the paired test --------------------------------------------------------------
def exact_runs(metric: str, correct: int, rng: np.random.Generator, n: int = 200) -> list[ItemScores]:
    """3 seeds scoring ``correct``/n, +1 and -1 item: a tiny seed spread (std 1/n)."""
    base = np.zeros(n)
    base[rng.choice(n, correct, replace=False)] = 1.0
    runs = [base.copy(), base.copy(), base.copy()]
    runs[1][np.flatnonzero(base == 0)[0]] = 1.0
    runs[2][np.flatnonzero(base == 1)[0]] = 0.0
    return [ItemScores(metric, IDS[:n], r.tolist()) for r in runs]


LOSS = {"masked": 6.0, "causal": 6.5, "prefix": 7.0}


def make_close_sweep(sweep: Path) -> Path:
    """masked 0.62 vs causal 0.60 exact match (apart by seed range, tied by the test), prefix 0.30;
    probe accuracy masked 0.85, far above causal 0.55 and prefix 0.50."""
    rng = np.random.default_rng(0)
    plan = {"masked": (124, 170), "causal": (120, 110), "prefix": (60, 100)}
    number = 0
    for objective, (exact, probe) in plan.items():
        runs = zip(exact_runs(ACCURACY, exact, rng), exact_runs("probe/accuracy", probe, rng), strict=True)
        for seed, items in enumerate(runs, start=1):
            metrics = job_metrics(objective, LOSS[objective] + 0.01 * seed, False)
            config = {"objective": {"name": objective}, "seed": seed}
            write_job(
                sweep, number, [f"objective={objective}", f"seed={seed}"], config, metrics, list(items), []
            )
            number += 1
    return sweep


def test_bold_follows_the_paired_test(tmp_path: Path) -> None:
    df = build_table(collect(make_close_sweep(tmp_path / "sweep")))
    assert df[ACCURACY].tolist() == pytest.approx([0.62, 0.60, 0.30])
    assert df[f"{ACCURACY}_std"].tolist() == pytest.approx([0.005] * 3)  # seed ranges apart
    rows = markdown_rows(to_markdown(df))
    bold = {column: [r["objective"] for r in rows if r[column].startswith("**")] for column in rows[0]}
    assert bold[ACCURACY] == ["masked", "causal"]  # 0.02 apart on 200 items: a tie
    assert bold["probe/accuracy"] == ["masked"]  # planted large difference
    assert bold["val/loss"] == ["masked"]  # no items: the seed-range rule


def test_runs_without_item_scores_keep_the_seed_range_rule(tmp_path: Path) -> None:
    sweep = make_close_sweep(tmp_path / "sweep")
    for number in (3, 4, 5):  # causal's runs were written before eval_items.jsonl existed
        (sweep / str(number) / "eval_items.jsonl").unlink()
    files = write_report(sweep)
    rows = markdown_rows(files["report.md"].read_text(encoding="utf-8"))
    assert [r["objective"] for r in rows if r["cloze@1"].startswith("**")] == ["masked"]  # ranges apart
    pairs = pd.read_csv(files["significance.csv"])
    assert set(zip(pairs["a"], pairs["b"], strict=True)) == {("masked", "prefix")}


def test_notes_say_which_rule_marks_which_column(tmp_path: Path) -> None:
    sweep = make_close_sweep(tmp_path / "sweep")
    text = write_report(sweep)["report.md"].read_text(encoding="utf-8")
    assert "ranges do not overlap" in text
    note = next(p for p in text.split("\n\n") if "paired bootstrap" in p and "**bold**" in p.lower())
    assert f"`{ACCURACY}`" in note and "`probe/accuracy`" in note and "`val/loss`" not in note


# -- new metric keys ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("finetune/accuracy", "max"), ("finetune/macro_f1", "max"), ("finetune/accuracy_std", None),
        ("finetune/macro_f1_std", None), ("eval/cloze_s", None), ("eval/generation_s", None),
    ],
)  # fmt: skip
def test_direction_of_new_keys(key: str, expected: str | None) -> None:
    assert direction(key) == expected


def test_a_metric_named_std_is_a_column_not_a_seed_spread(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for number, (objective, seed, accuracy, spread) in enumerate(
        [
            ("masked", 1, 0.70, 0.03),
            ("masked", 2, 0.72, 0.05),
            ("causal", 1, 0.50, 0.01),
            ("causal", 2, 0.52, 0.01),
        ]
    ):
        extra = {"finetune/accuracy": accuracy, "finetune/accuracy_std": spread, "eval/cloze_s": 3.0 + number}
        metrics = job_metrics(objective, 6.0, False, **extra)
        config = {"objective": {"name": objective}, "seed": seed}
        write_job(sweep, number, [f"objective={objective}", f"seed={seed}"], config, metrics, [], [])
    rows = markdown_rows(to_markdown(build_table(collect(sweep))))
    masked = rows[0]
    assert masked["finetune/accuracy"] == "**0.7100 ± 0.0141**"
    assert masked["finetune/accuracy_std"] == "0.0400"  # the within-run spread, averaged; never bold
    assert not any(r["eval/cloze_s"].startswith("**") for r in rows)


def test_python_dash_m_runs_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pretrainlab.compare", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "pretrainlab-compare" in result.stdout


def test_rows_of_one_model_under_two_decodings_are_tested_only_on_what_decoding_changes() -> None:
    """Job 0 and its eval/ folder hold one model: its cloze scores are the same numbers, so
    comparing them is no test; its generation metric differs with the decoding, and is tested.
    Another job's model is tested against both on everything."""
    from pretrainlab.compare.ranking import pair_tests

    cloze, distinct = "cloze/exact_match_k1", "gen/distinct_2"

    def group(folder: str, seed: int) -> dict:
        model_seed = 1 if folder.startswith("0") else 2  # the cloze scores belong to the model
        items = {
            cloze: bernoulli(0.4, np.random.default_rng(model_seed), metric=cloze),
            distinct: bernoulli(0.5, np.random.default_rng(seed), metric=distinct),
        }
        return {"status": "ok", "members": [{"dir": folder, "items": items}]}

    groups = [group("0", 3), group("0/eval/decoding=top_p", 4), group("1", 5)]
    tested = {
        (r["metric"], r["a_row"], r["b_row"]) for r in pair_tests(groups, [cloze, distinct], ["a", "b", "c"])
    }
    assert tested == {(cloze, 0, 2), (cloze, 1, 2), (distinct, 0, 1), (distinct, 0, 2), (distinct, 1, 2)}

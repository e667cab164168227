"""A training sweep over ``decoding`` trains each model once (issue 14).

Decoding does not change training, so our sweeper folds the combinations that differ only in
``decoding=<option>`` into one job launched with ``evaluation.decodings=[...]``; that job writes
``eval/decoding=<option>/`` for the other options at its end, and ``pretrainlab-compare`` shows
one row per option as before. The sweep test reads what the command left on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import cli_args, make_cfg, run_cli, run_train
from hydra_plugins.pretrainlab_sweeper.pretrainlab_sweeper import fold_decodings, plan_jobs
from pretrainlab.compare import collect
from pretrainlab.compare.collect import decoding_of, objective_of
from pretrainlab.config import ConfigError
from test_decoding_sweep import GEN_KEYS

ONLY_GENERATION = (
    "evaluation.cloze=false",
    "evaluation.continuation=false",
    "evaluation.probe=false",
    "evaluation.num_prompts=4",
)


def _plan(jobs: list[list[str]], ignored: list[tuple[str, ...]]) -> list[dict[str, Any]]:
    return fold_decodings(plan_jobs(jobs, ignored))


def test_combinations_differing_only_in_decoding_become_one_job() -> None:
    jobs = [[f"objective={o}", f"decoding={d}"] for o in ("causal", "masked") for d in ("greedy", "top_p")]
    plan = _plan(jobs, [(), (), ("decoding",), ("decoding",)])
    assert [e["status"] for e in plan] == ["launched", "evaluated", "launched", "skipped"]
    assert plan[0]["launch"] == ["objective=causal", "decoding=greedy", "evaluation.decodings=[greedy,top_p]"]
    assert plan[1]["evaluated_in"] == 0 and plan[1]["evaluation"] == "decoding=top_p"
    assert plan[2]["launch"] == ["objective=masked"]  # masked ignores decoding: one job, nothing folded


def test_decoding_fields_and_other_settings_keep_their_own_jobs() -> None:
    # Another setting differs: two models. A decoding field shapes the run's own decoding: not folded.
    jobs = [
        ["objective=causal", "seed=1", "decoding=greedy"],
        ["objective=causal", "seed=2", "decoding=greedy"],
        ["objective=prefix", "decoding=top_p", "decoding.top_p=0.8"],
        ["objective=prefix", "decoding=top_k", "decoding.top_p=0.8"],
    ]
    plan = _plan(jobs, [(), (), (), ()])
    assert [e["status"] for e in plan] == ["launched"] * 4
    assert all(not any(o.startswith("evaluation.decodings") for o in e["launch"]) for e in plan)


@pytest.mark.slow
def test_a_decoding_sweep_trains_each_model_once_and_reports_every_decoding(
    tiny_corpus: Path, cache_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "sweep"
    result = run_cli(
        [
            "pretrainlab-train",
            "-m",
            *cli_args(tiny_corpus),
            "trainer.max_steps=2",
            *ONLY_GENERATION,
            "objective=causal",
            "decoding=greedy,top_p,sampling",
            f"hydra.sweep.dir={folder}",
        ],
        cache_dir,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.name for p in folder.iterdir() if (p / ".hydra").is_dir())
    assert jobs == ["0"]  # one model, not three
    causal = folder / "0"
    assert yaml.safe_load((causal / ".hydra" / "config.yaml").read_text())["objective"]["name"] == "causal"
    assert sorted(p.name for p in (causal / "eval").iterdir()) == ["decoding=sampling", "decoding=top_p"]
    own = json.loads((causal / "metrics.json").read_text())
    assert own["decoding"] == "greedy" and own["eval/decodings_s"] > 0
    folded = {}
    for name in ("sampling", "top_p"):
        folded[name] = json.loads((causal / "eval" / f"decoding={name}" / "metrics.json").read_text())
        assert folded[name]["status"] == "ok" and folded[name]["decoding"] == name
        assert all(folded[name][k] is not None for k in GEN_KEYS)

    rows = [r for r in collect(folder) if r["status"] != "skipped"]
    assert sorted((objective_of(r), decoding_of(r)) for r in rows) == [
        ("causal", "greedy"),
        ("causal", "sampling"),
        ("causal", "top_p"),
    ]
    assert all(r["status"] == "ok" for r in rows)
    assert not any("evaluation.decodings" in r["overrides"] for r in rows)  # not a swept setting

    # The folded evaluation is the one `pretrainlab-eval RUN decoding=top_p` writes (seeded sampling).
    again = run_cli(["pretrainlab-eval", str(causal), "decoding=top_p"], cache_dir)
    assert again.returncode == 0, again.stderr[-2000:]
    rewritten = json.loads((causal / "eval" / "decoding=top_p" / "metrics.json").read_text())
    assert {k: rewritten[k] for k in GEN_KEYS} == {k: folded["top_p"][k] for k in GEN_KEYS}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("objective=causal", "evaluation.decodings=[top_p,nucleus]"), "nucleus"),
        (("objective=masked", "evaluation.decodings=[greedy,top_p]"), "does not generate"),
    ],
)
def test_a_decoding_that_cannot_be_evaluated_is_refused_before_training(
    tiny_corpus: Path, cache_dir: Path, tmp_path: Path, overrides: tuple[str, ...], message: str
) -> None:
    cfg = make_cfg(tiny_corpus, cache_dir, tmp_path / "run", *overrides)
    with pytest.raises(ConfigError, match=message):
        run_train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained

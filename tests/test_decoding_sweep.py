"""Decoding sweeps without retraining: ``pretrainlab-eval RUN -m decoding=a,b`` evaluates the trained
model once per decoding into ``RUN/eval/<overrides>/``, never touching the run's own record, and
``pretrainlab-compare`` reads those folders as one more row per decoding.

One tiny causal run is trained in-process for the module (generation is the only evaluation on:
the others do not depend on the decoding), in a folder laid out like a sweep's job ``0``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import make_cfg, run_train
from pretrainlab.compare import collect
from pretrainlab.compare.collect import decoding_of, objective_of
from pretrainlab.evaluate import main as eval_main

GEN_KEYS = ("gen/distinct_1", "gen/distinct_2", "gen/repetition_4", "gen/mean_length", "gen/self_ppl")
QUICK = (
    "objective=causal",
    "trainer.deterministic=true",
    "evaluation.cloze=false",
    "evaluation.continuation=false",
    "evaluation.probe=false",
)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, cache_dir: Path) -> Path:
    """A sweep folder holding one finished causal job, ``0``, with the .hydra/ a command leaves."""
    folder = tmp_path_factory.mktemp("decoding-sweep")
    run = folder / "0"
    cfg = make_cfg(tiny_corpus, cache_dir, run, *QUICK)
    run_train(cfg)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["objective=causal"]), encoding="utf-8")
    return folder


def _fingerprint(run: Path) -> dict[str, str]:
    """sha256 of every file of the run's own record (everything but eval/)."""
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.relative_to(run).parts[0] != "eval"
    }


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def swept(sweep: Path) -> dict:
    """``pretrainlab-eval 0 -m decoding=greedy,top_p`` run once, in-process, counting model loads."""
    import pretrainlab.infer as infer

    run = sweep / "0"
    before = _fingerprint(run)
    loads: list[Path] = []
    real = infer.load_run
    mp = pytest.MonkeyPatch()

    def counting(run_dir, settings=None):
        loads.append(Path(run_dir))
        return real(run_dir, settings)

    mp.setattr(infer, "load_run", counting)
    try:
        eval_main([str(run), "-m", "decoding=greedy,top_p"])
    finally:
        mp.undo()
    return {"run": run, "before": before, "loads": loads}


def test_each_decoding_gets_its_own_folder_and_the_run_record_is_untouched(swept):
    run = swept["run"]
    folders = sorted(p.name for p in (run / "eval").iterdir())
    assert folders == ["decoding=greedy", "decoding=top_p"]
    assert _fingerprint(run) == swept["before"]  # metrics.json, samples.jsonl, .hydra/, hf/: same bytes
    assert swept["loads"] == [run]  # the model loaded once for both decodings
    for name, decoding in (("decoding=greedy", "greedy"), ("decoding=top_p", "top_p")):
        folder = run / "eval" / name
        metrics = _metrics(folder)
        assert metrics["decoding"] == decoding and metrics["status"] == "ok"
        assert metrics["decoding_settings"]["name"] == decoding
        assert metrics["overrides"] == [f"decoding={decoding}"]
        assert all(metrics[k] is not None for k in GEN_KEYS)
        # Only the stage the decoding affects ran: no cloze, probe or continuation numbers here.
        assert not any(k.startswith(("cloze/", "probe/", "continuation/", "finetune/")) for k in metrics)
        assert [k for k in metrics if k.startswith("eval/")] == ["eval/generation_s"]
        samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
        assert samples and {s["decoding"] for s in samples} == {decoding}
        saved = OmegaConf.load(folder / "config.yaml")
        assert saved.decoding.name == decoding and saved.objective.name == "causal"
    top_p = _metrics(run / "eval" / "decoding=top_p")["decoding_settings"]
    assert top_p["do_sample"] is True and top_p["top_p"] == 0.9  # conf/decoding/top_p.yaml


def test_greedy_evaluation_repeats_the_training_runs_own_numbers(swept):
    run = swept["run"]
    own = _metrics(run)
    again = _metrics(run / "eval" / "decoding=greedy")
    assert own["decoding"] == "greedy"
    assert {k: again[k] for k in GEN_KEYS} == {k: own[k] for k in GEN_KEYS}
    assert (run / "eval" / "decoding=greedy" / "samples.jsonl").read_bytes() == (
        run / "samples.jsonl"
    ).read_bytes()


def test_sampling_decodings_are_seeded_so_a_repeat_gives_the_same_samples(swept, tmp_path):
    """evaluate_decodings (what a training sweep calls at the end of a job) writes the same folder
    the command does, and a sampling decoding draws the same samples every time."""
    from pretrainlab.evaluate import evaluate_decodings

    run = swept["run"]
    first = (run / "eval" / "decoding=top_p" / "samples.jsonl").read_bytes()
    written = evaluate_decodings(run, ["top_p"])
    assert written == [run / "eval" / "decoding=top_p"]
    assert (written[0] / "samples.jsonl").read_bytes() == first


def test_a_single_decoding_override_and_field_overrides_name_the_folder(swept):
    run = swept["run"]
    eval_main([str(run), "decoding=top_p", "decoding.top_p=0.5"])
    folder = run / "eval" / "decoding.top_p=0.5,decoding=top_p"  # Hydra's override_dirname
    metrics = _metrics(folder)
    assert metrics["decoding"] == "top_p" and metrics["decoding_settings"]["top_p"] == 0.5
    assert _fingerprint(run) == swept["before"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["decoding=greedy,top_p"], "add -m"),
        (["-m", "evaluation.num_prompts=2,4"], "every job of -m needs a decoding"),
        (["decoding=top_p", "evaluation.cloze_per_k=8"], "evaluation.cloze_per_k"),
        (["decoding=nucleus"], "decoding=nucleus: no such option"),
        (["decoding=top_p", "decoding.top_p=1.5"], "decoding.top_p=1.5: must be in (0, 1]"),
        (["decoding.tmperature=0.5"], "decoding.tmperature: no such setting"),
    ],
)
def test_bad_decoding_requests_are_one_line_and_write_nothing(swept, argv, message):
    run = swept["run"]
    existing = sorted(p.name for p in (run / "eval").iterdir())
    with pytest.raises(SystemExit) as exit_info:
        eval_main([str(run), *argv])
    assert str(exit_info.value.code).startswith("error: ") and message in str(exit_info.value.code)
    assert sorted(p.name for p in (run / "eval").iterdir()) == existing
    assert _fingerprint(run) == swept["before"]


def test_compare_reads_each_evaluation_as_a_row_of_its_decoding(swept, sweep):
    rows = collect(sweep)
    job = rows[0]
    extra = [r for r in rows[1:] if r.get("eval_of") == "0"]
    by_decoding = {decoding_of(r): r for r in extra}
    assert {"greedy", "top_p"} <= set(by_decoding)
    assert len(rows) == 1 + len(list((sweep / "0" / "eval").iterdir()))
    for decoding, row in by_decoding.items():
        folder = sweep / "0" / "eval" / row["evaluation"]
        assert row["status"] == "ok" and objective_of(row) == "causal"
        assert row["overrides"]["objective"] == "causal" and row["overrides"]["decoding"] == decoding
        assert row["config"]["decoding.name"] == decoding
        generated = _metrics(folder)
        assert {k: row["metrics"][k] for k in GEN_KEYS} == {k: generated[k] for k in GEN_KEYS}
        # The decoding-independent numbers are the run's.
        assert row["metrics"]["val/loss"] == job["metrics"]["val/loss"]
        assert row["metrics"]["params"] == job["metrics"]["params"]
        assert row["curve"] == []  # the validation curve is the job's row's, drawn once
    assert decoding_of(job) == "greedy" and job.get("eval_of") is None


def test_a_masked_run_is_refused_before_anything_loads(tmp_path, compose_cfg):
    """Masked models do not generate: a decoding has nothing to evaluate, said at once (the run
    folder here has no model at all, so loading one would fail differently)."""
    run = tmp_path / "masked"
    (run / ".hydra").mkdir(parents=True)
    cfg = compose_cfg("objective=masked", output_dir=run)
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
    (run / "metrics.json").write_text('{"status": "ok", "objective": "masked"}', encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        eval_main([str(run), "-m", "decoding=greedy,top_p"])
    assert str(exit_info.value.code) == (
        "error: objective=masked: does not generate text, so a decoding has nothing to evaluate"
    )
    assert not (run / "eval").exists()

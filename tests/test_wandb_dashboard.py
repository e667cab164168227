"""W&B runs that compare objectives, read back from the offline run files a real sweep wrote.

One tiny two-objective sweep (masked and seq2seq at the same token budget, so at different step
counts) is launched once through the command line; the tests parse each job's
``wandb/offline-run-*/run-<id>.wandb`` (the protobuf records ``wandb sync`` uploads), not mocks:
the tokens_seen axis on every train and validation row, metrics.json in the run summary, tags,
entity, group and names, the config's top-level keys and the hf/ model artifact.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import cli_args, run_cli, wandb_records

# A sweep folder below the launch directory, in the default layout multirun/<date>/<time>.
SWEEP = Path("multirun", "2026-11-28", "12-00-00")
# Corpus tokens: masked takes 8 steps of 4 x 32; seq2seq 6, its raw blocks longer by what
# corruption at mask_probability 0.4 removes.
BUDGET = 1024
EVALUATION_OFF = (
    "evaluation.generation=false",
    "evaluation.cloze=false",
    "evaluation.continuation=false",
    "evaluation.probe=false",
)


# -- reading an offline run ---------------------------------------------------------------------


def _key(item: Any) -> str:
    """An item's name: the Python client writes ``key``, wandb-core ``nested_key`` parts."""
    return item.key or "/".join(item.nested_key)


class OfflineRun:
    """What one offline run file says: the run record, history rows, summary, config, metric
    definitions (in order) and artifacts."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.run: Any = None
        self.rows: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.config: dict[str, Any] = {}
        self.metrics: list[Any] = []
        self.artifacts: list[Any] = []
        for record in wandb_records(log):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                self.run = record.run
                self._apply(self.config, record.run.config)
            elif kind == "config":
                self._apply(self.config, record.config)
            elif kind == "history":
                self.rows.append({_key(i): json.loads(i.value_json) for i in record.history.item})
            elif kind == "summary":
                self._apply(self.summary, record.summary)
            elif kind == "metric":
                self.metrics.append(record.metric)
            elif kind == "artifact":
                self.artifacts.append(record.artifact)

    @staticmethod
    def _apply(into: dict[str, Any], change: Any) -> None:
        for item in change.update:
            into[_key(item)] = json.loads(item.value_json)
        for item in change.remove:
            into.pop(_key(item), None)

    def step_metric_of(self, key: str) -> set[str]:
        """Every x-axis the run's definitions give ``key``: its own definition if it has one,
        else every glob that matches it (wandb-core takes any of them: it iterates a map)."""
        exact: dict[str, Any] = {}
        globs: dict[str, Any] = {}
        for metric in self.metrics:
            table, name = (exact, metric.name) if metric.name else (globs, metric.glob_name)
            if not name:
                continue
            if metric._control.overwrite or name not in table:
                table[name] = metric
            else:
                merged = type(metric)()
                merged.CopyFrom(table[name])
                merged.MergeFrom(metric)
                table[name] = merged
        if key in exact:
            return {exact[key].step_metric}
        return {m.step_metric for g, m in globs.items() if key.startswith(g.removesuffix("*"))}


# -- the sweep ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def launch_dir(tiny_corpus: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``-m objective=masked,seq2seq`` at one token budget, W&B offline, with tags, an entity and
    ``log_model=true``, launched from a folder of its own (the sweep folder is relative to it)."""
    home = tmp_path_factory.mktemp("dashboard")
    args = [
        "pretrainlab-train",
        "-m",
        *[a for a in cli_args(tiny_corpus) if a != "logger=none"],
        "logger=wandb",
        "logger.wandb.entity=pretrainlab-tests",
        "logger.wandb.tags=[dash]",
        "logger.wandb.log_model=true",
        "tags=[zh,smoke]",
        f"trainer.max_tokens={BUDGET}",
        "objective.mask_probability=0.4",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=2",
        "trainer.validate_at_start=true",
        *EVALUATION_OFF,
        "objective=masked,seq2seq",
        f"hydra.sweep.dir={SWEEP.as_posix()}",
    ]
    # W&B's own folders (artifact staging, caches) inside the test's folder, not the home folder.
    wandb_home = home / "wandb-home"
    env = {f"WANDB_{name}_DIR": str(wandb_home / name.lower()) for name in ("DATA", "CACHE", "CONFIG")}
    env["WANDB_DIR"] = str(wandb_home)
    with contextlib.chdir(home):
        result = run_cli(args, cache_dir, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return home


def jobs(launch_dir: Path) -> Iterator[tuple[Path, OfflineRun]]:
    """Each job folder with its offline run."""
    folders = sorted(p for p in (launch_dir / SWEEP).iterdir() if (p / ".hydra").is_dir())
    assert len(folders) == 2
    for job in folders:
        (log,) = job.glob("wandb/offline-run-*/run-*.wandb")
        yield job, OfflineRun(log)


def metrics_of(job: Path) -> dict[str, Any]:
    return json.loads((job / "metrics.json").read_text(encoding="utf-8"))


def curve_of(job: Path) -> dict[int, int]:
    with open(job / "curve.csv", newline="") as f:
        return {int(r["step"]): int(r["tokens_seen"]) for r in csv.DictReader(f)}


# -- 1. tokens_seen is the x-axis of every train and validation row ------------------------------


@pytest.mark.slow  # one sweep through the command line, ~40 s
def test_every_train_and_validation_row_carries_tokens_seen_and_flops(launch_dir: Path) -> None:
    steps = set()
    for job, run in jobs(launch_dir):
        metrics, curve = metrics_of(job), curve_of(job)
        steps.add(metrics["steps"])
        val_rows = [r for r in run.rows if "val/loss" in r]
        train_rows = [r for r in run.rows if "train/loss" in r]
        assert len(val_rows) >= 3 and len(train_rows) >= 2, (len(val_rows), len(train_rows))
        for row in run.rows:
            if any(k.startswith(("val/", "train/")) for k in row):
                assert "tokens_seen" in row and "train/flops" in row, row
        # Each validation at the run's own count of tokens then (curve.csv; the validation after
        # fit repeats the last one when it fell on the last step), from 0 to the end.
        tokens = [r["tokens_seen"] for r in val_rows]
        assert tokens == sorted(tokens) and sorted(set(tokens)) == sorted(curve.values())
        assert tokens[0] == 0 and tokens[-1] == metrics["tokens_seen"]
        # FLOPs on a row are the estimate metrics.json gives for that many tokens.
        last = max((r for r in run.rows if "train/flops" in r), key=lambda r: r["tokens_seen"])
        assert last["tokens_seen"] == metrics["tokens_seen"]
        assert last["train/flops"] == pytest.approx(metrics["train/flops"], rel=1e-9)
        for key in ("val/loss", "val/ppl", "train/loss", "train/lr", "train/flops", "train/custom"):
            assert run.step_metric_of(key) == {"tokens_seen"}, (key, run.step_metric_of(key))
    assert len(steps) == 2  # equal tokens, different steps: the axis that compares them is tokens


# -- 2. metrics.json in the summary --------------------------------------------------------------


@pytest.mark.slow  # one sweep through the command line, ~40 s
def test_every_metrics_json_key_is_in_the_run_summary(launch_dir: Path) -> None:
    for job, run in jobs(launch_dir):
        metrics = metrics_of(job)
        assert {"params", "params_non_embedding", "train/flops", "wall_time_s", "status"} <= set(metrics)
        missing = set(metrics) - set(run.summary)
        assert not missing, missing
        for key, value in metrics.items():
            if isinstance(value, dict | list):  # JSON-encoded: W&B's summary would split a dict
                assert json.loads(run.summary[key]) == value, key
            elif isinstance(value, float):
                assert run.summary[key] == pytest.approx(value, rel=1e-12), key
            else:
                assert run.summary[key] == value, key


# -- 3. identity: tags, entity, group, names -----------------------------------------------------


@pytest.mark.slow  # one sweep through the command line, ~40 s
def test_runs_carry_tags_entity_the_sweep_folder_as_group_and_only_what_varies_as_name(
    launch_dir: Path,
) -> None:
    names = {}
    for job, run in jobs(launch_dir):
        objective = metrics_of(job)["objective"]
        names[objective] = run.run.display_name
        assert list(run.run.tags) == ["zh", "smoke", "dash"]
        assert run.run.entity == "pretrainlab-tests"
        assert run.run.run_group == SWEEP.as_posix()  # relative to where the sweep was launched
        assert run.run.job_type == objective
    assert names == {"masked": "objective=masked", "seq2seq": "objective=seq2seq"}


# -- 4. the config, once -------------------------------------------------------------------------


@pytest.mark.slow  # one sweep through the command line, ~40 s
def test_the_config_is_the_resolved_hydra_config_with_no_repeated_top_level_keys(launch_dir: Path) -> None:
    for job, run in jobs(launch_dir):
        saved = yaml.safe_load((job / ".hydra" / "config.yaml").read_text(encoding="utf-8"))
        assert set(run.config) - {"_wandb"} == set(saved)
        assert not {"name", "mask_probability", "warmup_ratio", "lr"} & set(run.config)
        assert run.config["objective"]["name"] == saved["objective"]["name"]


# -- 5. log_model: the hf/ folder, not checkpoints -----------------------------------------------


@pytest.mark.slow  # one sweep through the command line, ~40 s
def test_log_model_uploads_the_hf_folder_as_one_model_artifact_and_no_checkpoint(launch_dir: Path) -> None:
    for job, run in jobs(launch_dir):
        hf = sorted(p.relative_to(job / "hf").as_posix() for p in (job / "hf").rglob("*") if p.is_file())
        assert "config.json" in hf
        assert [a.type for a in run.artifacts] == ["model"]
        (artifact,) = run.artifacts
        assert sorted(c.path for c in artifact.manifest.contents) == hf
        assert not any(c.path.endswith(".ckpt") for c in artifact.manifest.contents)


# -- fast: the rules behind group and names ------------------------------------------------------


def test_group_is_the_sweep_folder_relative_to_the_launch_folder(tmp_path: Path) -> None:
    from pretrainlab.wandb_logging import sweep_group

    assert sweep_group("multirun/2026-11-28/12-00-00", str(tmp_path)) == "multirun/2026-11-28/12-00-00"
    inside = tmp_path / "multirun" / "a" / "b"
    assert sweep_group(str(inside), str(tmp_path)) == "multirun/a/b"
    # Outside the launch folder: its last three parts, never an absolute path.
    assert sweep_group("/scratch/alice/sweeps/lr", str(tmp_path)) == "alice/sweeps/lr"


def test_names_leave_out_what_every_job_of_the_sweep_shares(tmp_path: Path) -> None:
    from pretrainlab.wandb_logging import sweep_shared_overrides, without_shared

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    multirun = {
        "hydra": {
            "overrides": {
                "task": [
                    "objective=masked,causal",
                    "trainer.max_steps=5",
                    "~callbacks.progress_bar",
                    "evaluation.cloze=false",
                    "optimizer.optimizer.lr=interval(1e-4,1e-2)",
                ]
            },
            # An Optuna search's fixed parameter is shared too; its searched ones are not.
            "sweeper": {"params": {"optimizer.warmup_ratio": "0.1", "seed": "1,2"}},
        }
    }
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    shared = sweep_shared_overrides(sweep)
    # As the sweeper hands them to a job: value strings re-rendered by Hydra.
    job = [
        "objective=masked",
        "trainer.max_steps=5",
        "~callbacks.progress_bar=null",
        "evaluation.cloze=False",
        "optimizer.optimizer.lr=0.003",
        "optimizer.warmup_ratio=0.1",
        "seed=2",
    ]
    assert without_shared(job, shared) == ["objective=masked", "optimizer.optimizer.lr=0.003", "seed=2"]
    assert sweep_shared_overrides(tmp_path / "no-sweep") == set()  # no multirun.yaml: nothing shared


def test_log_model_is_off_by_default_and_entity_is_a_setting(compose_cfg) -> None:
    cfg = compose_cfg("logger=wandb", "logger.wandb.entity=someone")
    assert cfg.logger.wandb.log_model is False and cfg.logger.wandb.entity == "someone"


# -- 6. a failed run says so in its summary --------------------------------------------------------


def test_a_failed_run_says_so_in_its_wandb_summary(tiny_corpus, cache_dir, tmp_path, monkeypatch) -> None:
    """A NaN loss at step 2 ends the run: its W&B summary has ``status: failed`` and the error,
    as its metrics.json does (a dashboard filtering finished runs by status must not miss it)."""
    import sys

    from pretrainlab.commands import cli
    from pretrainlab.objectives.base import PretrainingObjective

    real_step = PretrainingObjective.training_step

    def poisoned(self, batch, batch_idx):
        loss = real_step(self, batch, batch_idx)
        return loss * float("nan") if self.global_step >= 2 else loss

    monkeypatch.setattr(PretrainingObjective, "training_step", poisoned)
    for name in ("DATA", "CACHE", "CONFIG"):
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(tmp_path / "wandb-home" / name.lower()))
    run_dir = tmp_path / "run"
    args = [*cli_args(tiny_corpus), "logger=wandb", "trainer.max_steps=4", f"hydra.run.dir={run_dir}"]
    monkeypatch.setattr(sys, "argv", ["pretrainlab-train", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli()
    assert exit_info.value.code == 1
    metrics = metrics_of(run_dir)
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    summary = OfflineRun(log).summary
    assert metrics["status"] == "failed" and summary["status"] == "failed"
    assert summary["error"] == metrics["error"] and summary["error"].startswith("NonFiniteLossError")

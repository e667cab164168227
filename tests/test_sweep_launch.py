"""What a sweep really launches, and a rerun inside a sweep folder, read back from the folders.

One tiny sweep (masked, causal x two mask probabilities, one step, evaluation off) is run once
through the command line; every test reads its job folders (``.hydra/config.yaml`` and
``.hydra/overrides.yaml``: what each job ran with) and its report, not the sweeper's plan.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import cli_args, run_cli
from pretrainlab.compare import _series, build_table, collect, display_cells

pytestmark = pytest.mark.slow

MASKS = (0.15, 0.3)
EVALUATION_OFF = (
    "evaluation.generation=false",
    "evaluation.cloze=false",
    "evaluation.continuation=false",
    "evaluation.probe=false",
)


@pytest.fixture(scope="module")
def sweep(tiny_corpus: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``-m objective=masked,causal objective.mask_probability=0.15,0.3``: 4 combinations, 3 jobs."""
    folder = tmp_path_factory.mktemp("launch") / "sweep"
    result = run_cli(
        [
            "pretrainlab-train",
            "-m",
            *cli_args(tiny_corpus),
            "trainer.max_steps=1",
            *EVALUATION_OFF,
            "objective=masked,causal",
            f"objective.mask_probability={','.join(map(str, MASKS))}",
            f"hydra.sweep.dir={folder}",
        ],
        cache_dir,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def saved(job: Path, name: str) -> Any:
    return yaml.safe_load((job / ".hydra" / name).read_text(encoding="utf-8"))


def job_folders(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())


def test_the_causal_job_is_launched_without_the_mask_probability_it_ignores(sweep: Path) -> None:
    jobs = job_folders(sweep)
    assert [j.name for j in jobs] == ["0", "1", "2"]  # 4 combinations, causal trained once
    ran = {j.name: (saved(j, "config.yaml")["objective"], saved(j, "overrides.yaml")) for j in jobs}
    objectives = {name: objective["name"] for name, (objective, _) in ran.items()}
    assert sorted(objectives.values()) == ["causal", "masked", "masked"]
    for name, (objective, overrides) in ran.items():
        hydra_task = saved(sweep / name, "hydra.yaml")["hydra"]["overrides"]["task"]
        assert hydra_task == overrides  # what W&B names the run after (wandb_logging.wandb_identity)
        if objective["name"] == "causal":
            assert not any(o.startswith("objective.mask_probability=") for o in overrides), overrides
            assert objective["mask_probability"] is None  # the schema's "not applicable"
        else:
            mask = next(
                float(o.split("=")[1]) for o in overrides if o.startswith("objective.mask_probability=")
            )
            assert objective["mask_probability"] == mask
    masked = sorted(o["mask_probability"] for o, _ in ran.values() if o["name"] == "masked")
    assert masked == list(MASKS)
    plan = json.loads((sweep / "sweep.json").read_text(encoding="utf-8"))["jobs"]
    for entry in plan:  # the plan's "launch" is what the job folder says it ran with
        if entry["dir"] is not None:
            assert saved(sweep / entry["dir"], "overrides.yaml") == entry["launch"]


def test_the_report_lists_causal_once_without_a_mask_probability(sweep: Path) -> None:
    rows = collect(sweep)
    causal = [
        r for r in rows if r["config"].get("objective.name", r["overrides"].get("objective")) == "causal"
    ]
    assert [(r["dir"], r["status"]) for r in causal] == [("2", "ok")]
    assert "objective.mask_probability" not in causal[0]["overrides"]
    # The mask-probability plot reads the effective value: causal is its "no masking" line.
    series = _series([r for r in rows if r["status"] == "ok"], "val/loss", [], {})
    assert set(series[("causal", "causal")]) == {None}
    assert set(series[("masked", "masked")]) == set(MASKS)
    headers, cells, _ = display_cells(build_table(rows))
    column = headers.index("mask_probability")
    shown = {line[headers.index("objective")] + " " + line[column] for line in cells}
    assert {s for s in shown if s.startswith("causal")} <= {"causal default", "causal —", "causal none"}
    assert len([s for s in shown if s.startswith("causal")]) == 1
    # The report the sweep wrote: one causal row, and the plot that has a no-masking line.
    report = (sweep / "report.md").read_text(encoding="utf-8")
    table = [line for line in report.splitlines() if line.startswith("| ")][1:]  # below the header
    assert len(table) == 3 and sum("| causal |" in line for line in table) == 1
    assert (sweep / "metrics_vs_mask_probability.png").is_file()


def test_a_rerun_inside_a_sweep_is_not_a_job_and_keeps_the_overrides(
    sweep: Path, cache_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    before = [(r["dir"], r["status"]) for r in collect(copy)]
    original = copy / "2"
    result = run_cli(["pretrainlab-reproduce", str(original), "--check"], cache_dir, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "check passed" in result.stdout  # passing the overrides through changed nothing trained
    rerun = Path(result.stdout.split("reproduced into ", 1)[1].splitlines()[0].strip())
    assert rerun.is_dir() and copy.resolve() in rerun.resolve().parents  # it went inside the sweep
    assert [(r["dir"], r["status"]) for r in collect(copy)] == before  # ... and is not a job of it
    assert saved(rerun, "overrides.yaml") == saved(original, "overrides.yaml")
    assert saved(rerun, "config.yaml") == {**saved(original, "config.yaml"), "resume": None}

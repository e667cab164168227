"""The commands answer at once when there is nothing to train: ``--help`` and a setting that
composition or ``config.validate`` rejects import neither torch, Lightning nor transformers (the
seconds a command used to take before saying anything).

Each case runs the real entry point in a fresh interpreter and reads its ``sys.modules``; timings
are left to the machine (see the module docstring of ``pretrainlab.commands``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "pytorch_lightning", "transformers")

# Runs `entry(argv)` as a console script would, then records its exit status and which heavy
# modules it imported.
PROBE = """
import json, sys
entry, argv, record, heavy = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4:]
module, name = entry.split(":")
sys.argv = ["command", *argv]
code = 0
try:
    getattr(__import__(module, fromlist=[name]), name)()
except SystemExit as exit:
    code = exit.code
with open(record, "w") as f:
    json.dump({"code": code, "heavy": [m for m in heavy if m in sys.modules]}, f)
"""


def run_entry(entry: str, argv: list[str], tmp_path: Path) -> tuple[dict, subprocess.CompletedProcess]:
    record = tmp_path / "record.json"
    result = subprocess.run(
        [sys.executable, "-c", PROBE, entry, json.dumps(argv), str(record), *HEAVY],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert record.is_file(), result.stderr
    return json.loads(record.read_text()), result


def test_train_help_imports_nothing_heavy(tmp_path):
    seen, result = run_entry("pretrainlab.commands:cli", ["--help"], tmp_path)
    assert seen == {"code": 0, "heavy": []}
    # The project's own help header (conf/hydra/default.yaml: hydra.help), not Hydra's.
    assert result.stdout.startswith("pretrainlab-train: ")
    assert "objective: causal" in result.stdout  # the config groups are listed


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["objective.mask_probability=1.5"], "error: objective.mask_probability=1.5: must be a number"),
        (["objective.mask_probabilty=0.2"], "error: objective.mask_probabilty: no such setting"),
        (["data=files", "data.path=no-such-corpus.txt"], "error: data.path=no-such-corpus.txt: no such file"),
    ],
    ids=["validate", "misspelt key", "missing data file"],
)
def test_train_rejects_bad_settings_before_importing_the_trainer(overrides, message, tmp_path):
    run_dir = tmp_path / "run"
    seen, result = run_entry("pretrainlab.commands:cli", [*overrides, f"hydra.run.dir={run_dir}"], tmp_path)
    assert seen == {"code": 2, "heavy": []}
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith(message)
    assert not run_dir.exists()  # rejected before Hydra made a run folder for it


def test_the_old_entry_names_still_lead_to_the_command():
    import pretrainlab.commands
    import pretrainlab.train

    assert pretrainlab.train.cli is pretrainlab.commands.cli
    assert pretrainlab.train.main is pretrainlab.commands.main


@pytest.fixture
def finished_masked_run(tmp_path: Path) -> Path:
    """What fill/generate read before loading a model: a run folder of the masked objective."""
    run = tmp_path / "masked-run"
    (run / "hf").mkdir(parents=True)
    (run / "hf" / "config.json").write_text("{}")
    (run / "metrics.json").write_text(json.dumps({"objective": "masked"}))
    return run


@pytest.mark.parametrize(
    ("entry", "args", "message"),
    [
        ("pretrainlab.infer:fill_main", ["[MASK]", "decoding=foo"], "error: decoding=foo: no such option"),
        ("pretrainlab.infer:generate_main", ["prompt"], "error: objective=masked: cannot continue text"),
        ("pretrainlab.infer:fill_main", ["   "], "error: text: empty"),
    ],
    ids=["bad decoding", "wrong command", "empty text"],
)
def test_fill_and_generate_refuse_before_importing_a_model(
    entry, args, message, finished_masked_run, tmp_path
):
    seen, result = run_entry(entry, [str(finished_masked_run), *args], tmp_path)
    assert seen == {"code": 2, "heavy": []}
    assert result.stderr.startswith(message)


def test_reproduce_refuses_a_non_run_before_importing_the_trainer(tmp_path):
    seen, result = run_entry("pretrainlab.reproduce:main", [str(tmp_path)], tmp_path)
    assert seen["heavy"] == [] and seen["code"] != 0
    assert "not a run folder" in result.stderr + str(seen["code"])


def test_generative_table_matches_the_objective_classes():
    from hydra.utils import get_class

    from pretrainlab.infer import GENERATIVE, OBJECTIVES

    assert GENERATIVE == {name for name, path in OBJECTIVES.items() if get_class(path).generative}

"""What a newcomer finds: ``pretrainlab-train --help`` and tab completion list the real config
groups and options (not the typed schemas behind them), and a schema given as an option is one
error line naming the key.

Help and completion run the real entry point in a fresh interpreter (Hydra's help and completion
read the config store of the process, which other tests may have added to).
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore

from pretrainlab import config_dir
from pretrainlab.cli_errors import composition_problem

# The groups a user picks options from, with every option (as in conf/).
GROUPS = ("objective", "model", "data", "tokenizer", "optimizer", "trainer", "evaluation", "debug", "logger")
ENTRY = "from pretrainlab.commands import cli; cli()"


def run_entry(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def options_on_disk(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def help_text() -> str:
    result = run_entry(["--help"])
    assert result.returncode == 0, result.stderr
    return result.stdout


def listed_options(help_text: str) -> dict[str, list[str]]:
    """The help's ``group: a, b, c`` lines."""
    return {g: v.split(", ") for g, v in re.findall(r"^(\w+): (.+)$", help_text, re.M)}


def test_help_lists_each_group_with_exactly_its_options(help_text):
    listed = listed_options(help_text)
    for group in GROUPS:
        assert listed.get(group) == options_on_disk(group), group
    assert not any("schema" in group for group in listed)  # no schema group either


def test_help_has_no_stock_hydra_text(help_text):
    assert "Powered by Hydra" not in help_text
    assert "is powered by Hydra" not in help_text


def test_help_shows_no_schema_at_all(help_text):
    assert "_schema" not in help_text


def test_help_says_what_the_command_does_and_where_results_go(help_text):
    assert help_text.startswith("pretrainlab-train: ")
    for example in (
        "pretrainlab-train objective=causal",
        "pretrainlab-train -m experiment=compare_objectives",
        "pretrainlab-eval RUN_DIR -m decoding=greedy,top_p",
    ):
        assert example in help_text
    assert "outputs/<date>/<time>/" in help_text and "multirun/" in help_text


@pytest.mark.parametrize("group", ["objective", "model", "data", "trainer", "tokenizer", "optimizer"])
def test_completion_offers_no_schema(group):
    result = run_entry(["-sc", "query=bash"], env={"COMP_LINE": f"pretrainlab-train {group}="})
    assert result.returncode == 0, result.stderr
    offered = sorted(word.split("=", 1)[1] for word in result.stdout.split())
    assert offered == options_on_disk(group)
    assert not any(o.endswith("_schema") for o in offered)


def test_completion_of_a_group_name_offers_no_schema_group():
    result = run_entry(["-sc", "query=bash"], env={"COMP_LINE": "pretrainlab-train "})
    assert result.returncode == 0, result.stderr
    assert "schema" not in result.stdout


@pytest.mark.parametrize(
    ("override", "choices"),
    [
        ("objective=masked_schema", "causal, masked, prefix, seq2seq"),
        ("objective=objective_masked_schema", "causal, masked, prefix, seq2seq"),
        ("model=model_schema", "base, small, tiny"),
        ("data=data_schema", "files, hub, sample_zh"),
        ("trainer=trainer_schema", "cpu, cpu_fast, ddp, fsdp, gpu"),
        ("evaluation=evaluation_schema", "default"),
    ],
)
def test_a_schema_given_as_an_option_is_refused_in_one_line(override, choices):
    assert composition_problem([override]) == f"{override}: no such option (choose {choices})"


def test_the_entry_point_does_not_copy_the_config_store():
    """Hydra copies its repository (config store included) for every group it lists: about 120
    copies for --help. The entry point makes the store (a singleton whose loads already copy
    what they return) copy as itself, which cut --help from ~2.3 s to ~0.9 s here."""
    import pretrainlab.commands  # noqa: F401 - what the console script imports

    store = ConfigStore.instance()
    assert copy.deepcopy(store) is store


def test_config_dir_has_no_schema_files():
    """The schemas are Python (pretrainlab.config), stored outside every group folder."""
    assert not list(Path(config_dir()).rglob("*_schema*"))

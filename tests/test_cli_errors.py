"""Composition errors on the command line are one line naming the key, exit status 2."""

from __future__ import annotations

import pytest

from conftest import run_cli
from pretrainlab.train import composition_problem


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("objective=foo", "objective=foo: no such option (choose causal, masked, prefix, seq2seq)"),
        ("model=huge", "model=huge: no such option (choose base, small, tiny)"),
        ("objective.mask_probablity=0.2", "objective.mask_probablity: no such setting"),
        (
            "data.block_size=abc",
            "data.block_size: Value 'abc' of type 'str' could not be converted to Integer",
        ),
        ("data.packing=maybe", "data.packing: Value 'maybe' is not a valid bool"),
    ],
)
def test_composition_problems_are_described_in_one_line(override, expected):
    problem = composition_problem([override])
    assert problem is not None and problem.startswith(expected)
    assert "\n" not in problem


def test_valid_overrides_compose():
    assert composition_problem(["objective=causal", "model=small", "hydra.run.dir=/tmp/x", "seed=3"]) is None


@pytest.mark.slow
def test_the_command_prints_one_line_and_exits_2(cache_dir):
    result = run_cli(["pretrainlab-train", "objective=foo"], cache_dir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: objective=foo: no such option (choose causal, masked, prefix, seq2seq)"
    ]

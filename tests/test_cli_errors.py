"""Composition errors on the command line are one line naming the key, exit status 2."""

from __future__ import annotations

import pytest

from conftest import run_cli
from pretrainlab.cli_errors import composition_problem


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


def test_the_inference_config_is_described_the_same_way():
    """pretrainlab-fill/-generate compose `generate` (the decoding group): same one-line messages."""
    problem = composition_problem(["decoding=foo"], config_name="generate")
    assert (
        problem
        == "decoding=foo: no such option (choose beam, contrastive, greedy, min_p, sampling, top_k, top_p)"
    )
    assert composition_problem(["decoding=beam", "decoding.num_beams=3"], config_name="generate") is None


def test_train_uses_the_shared_description():
    import pretrainlab.train

    assert pretrainlab.train.composition_problem is composition_problem


@pytest.mark.slow
def test_the_command_prints_one_line_and_exits_2(cache_dir):
    result = run_cli(["pretrainlab-train", "objective=foo"], cache_dir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: objective=foo: no such option (choose causal, masked, prefix, seq2seq)"
    ]

"""pretrainlab-fill / pretrainlab-generate on trained runs of every objective."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from pretrainlab import config_dir
from pretrainlab.infer import InferenceError, decoding_config, fill, fill_main, generate, load_run

TEXT = "西安交通[MASK][MASK]博物馆是一座位于西安交通大学的博物馆"


@pytest.fixture(scope="module")
def runs(trained_run):
    return {name: load_run(trained_run(name)) for name in ("masked", "causal", "seq2seq", "prefix")}


def test_masked_fill_matches_the_fill_mask_pipeline_structure(runs):
    answers = fill(runs["masked"], TEXT, top_k=3)
    assert len(answers) == 2  # one list per [MASK]
    tok = runs["masked"].tokenizer
    for answer in answers:
        assert len(answer) == 3
        assert [c["score"] for c in answer] == sorted((c["score"] for c in answer), reverse=True)
        for candidate in answer:
            assert set(candidate) == {"score", "token", "token_str", "sequence"}
            assert tok.convert_ids_to_tokens(candidate["token"]) == candidate["token_str"] or candidate[
                "token_str"
            ] == tok.decode([candidate["token"]])
            assert candidate["sequence"].count("[MASK]") == 1  # the other mask is still open


def test_single_mask_also_gives_one_list_per_mask(runs):
    answers = fill(runs["masked"], "西安[MASK]通", top_k=2)
    assert len(answers) == 1 and len(answers[0]) == 2


@pytest.mark.parametrize("objective", ["seq2seq", "prefix"])
def test_span_objectives_fill_one_span_per_run_of_masks(runs, objective):
    answers = fill(
        runs[objective], TEXT + "，建于[MASK]年", decoding=decoding_config(["decoding.max_new_tokens=4"])
    )
    assert [a["blank"] for a in answers] == [0, 1]
    for answer in answers:
        assert len(answer["tokens"]) <= 4
        assert "[MASK]" not in answer["sequence"] and "<extra_id" not in answer["sequence"]
    assert answers[0]["sequence"].startswith("西安交通")


def test_seq2seq_accepts_sentinels_directly(runs):
    answers = fill(runs["seq2seq"], "西安交通<extra_id_0>博物馆", decoding=decoding_config([]))
    assert len(answers) == 1 and answers[0]["sequence"].startswith("西安交通")


@pytest.mark.parametrize("objective", ["causal", "seq2seq", "prefix"])
def test_generation_continues_the_prompt_reproducibly(runs, objective):
    prompt = "下面是一则新闻。"
    greedy = decoding_config(["decoding.max_new_tokens=6"])
    first = generate(runs[objective], prompt, greedy)
    assert len(first) == 1 and first[0].startswith(prompt)
    assert generate(runs[objective], prompt, greedy) == first  # greedy is deterministic
    sampled = decoding_config(["decoding=top_p", "decoding.max_new_tokens=6"])
    assert all(
        t.startswith(prompt) for t in generate(runs[objective], prompt, sampled, num_return_sequences=2)
    )


def test_beam_search_returns_several_sequences_for_causal(runs):
    beam = decoding_config(["decoding=beam", "decoding.max_new_tokens=5", "decoding.num_beams=3"])
    texts = generate(runs["causal"], "中国", beam, num_return_sequences=3)
    assert len(texts) == 3


def test_objectives_refuse_what_they_cannot_do(runs, tmp_path):
    with pytest.raises(InferenceError, match="objective=masked"):
        generate(runs["masked"], "中国", decoding_config([]))
    with pytest.raises(InferenceError, match="objective=causal"):
        fill(runs["causal"], TEXT)
    with pytest.raises(InferenceError, match="no \\[MASK\\]"):
        fill(runs["masked"], "没有空白")
    with pytest.raises(InferenceError, match="not a finished pretrainlab run"):
        load_run(tmp_path)


def test_unknown_decoding_option_is_refused():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException):
        decoding_config(["decoding=telepathy"])


def test_fill_cli_json_equals_the_library_answer(runs, trained_run, capsys):
    fill_main([str(trained_run("masked")), TEXT, "--top-k", "2", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(fill(runs["masked"], TEXT, top_k=2), ensure_ascii=False))


def test_fill_cli_reports_bad_input_in_one_line(trained_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fill_main([str(trained_run("causal")), TEXT])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: objective=causal")


@pytest.mark.slow
def test_generate_command_runs_as_installed(trained_run):
    exe = shutil.which("pretrainlab-generate")
    cmd = (
        [exe]
        if exe
        else [sys.executable, "-c", "from pretrainlab.infer import generate_main; generate_main()"]
    )
    out = subprocess.run(
        [*cmd, str(trained_run("causal")), "中国", "decoding.max_new_tokens=3", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["decoding"]["name"] == "greedy" and result["generated"][0].startswith("中国")


DECODINGS = sorted(p.stem for p in (config_dir() / "decoding").glob("*.yaml"))


@pytest.mark.parametrize("name", DECODINGS)
@pytest.mark.parametrize("objective", ["causal", "seq2seq", "prefix"])
def test_every_decoding_strategy_produces_a_continuation(runs, objective, name):
    if objective == "prefix" and name == "beam":
        pytest.skip("the GLM decoder has no beam search (refused before training, see test_seq2seq_prefix)")
    torch.manual_seed(0)  # sampling strategies draw from the global RNG
    overrides = [f"decoding={name}", "decoding.max_new_tokens=4"]
    if objective == "causal":  # generate() honours a minimum: the output cannot be empty
        overrides.append("+decoding.min_new_tokens=2")
    decoding = decoding_config(overrides)
    texts = generate(runs[objective], "中国", decoding, num_return_sequences=2 if name == "beam" else 1)
    assert texts and all(t.startswith("中国") for t in texts)
    if objective == "causal":
        assert all(len(t) > len("中国") for t in texts)

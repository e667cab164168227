"""pretrainlab-fill / pretrainlab-generate on trained runs of every objective."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from pretrainlab import config_dir
from pretrainlab.infer import (
    InferenceError,
    decoding_config,
    fill,
    fill_main,
    generate,
    generate_main,
    load_run,
)

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


def test_unknown_decoding_option_is_refused_in_one_line():
    with pytest.raises(InferenceError) as info:
        decoding_config(["decoding=telepathy"])
    assert str(info.value) == (
        "decoding=telepathy: no such option (choose beam, contrastive, greedy, min_p, sampling, top_k, top_p)"
    )
    with pytest.raises(InferenceError, match=r"^decoding.temprature: no such setting"):
        decoding_config(["decoding.temprature=0.7"])


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


# -- bad input on the command line: one `error:` line, exit status 2, nothing loaded in vain -------------


def cli_error(main, argv: list[str], capfd) -> str:
    """The one line a refused command prints (after "error: "); fails on a traceback or more lines."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capfd.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0].removeprefix("error: ")


@pytest.fixture
def no_model_load(monkeypatch):
    """Refusals that need only the run's metrics.json or the command line must come before the model
    loads (seconds to a minute for a real model)."""

    def refuse(run_dir):
        raise AssertionError(f"the model of {run_dir} was loaded")

    monkeypatch.setattr("pretrainlab.infer.load_run", refuse)


def n_tokens(run, text: str) -> int:
    return len(run.tokenizer(text, verbose=False)["input_ids"])


def test_masked_fill_refuses_a_text_beyond_the_positions_and_fills_one_at_the_limit(runs, trained_run, capfd):
    run = runs["masked"]
    limit = run.model.config.max_position_embeddings
    text = "中" * (limit - n_tokens(run, "[MASK]")) + "[MASK]"
    assert n_tokens(run, text) == limit
    assert len(fill(run, text, top_k=1)) == 1  # exactly the model's positions: filled
    longer = "中" + text
    message = cli_error(fill_main, [str(trained_run("masked")), longer], capfd)
    assert message == f"text: {limit + 1} tokens, more than the model's {limit} positions (shorten the text)"


def test_seq2seq_fill_refuses_more_blanks_than_sentinels(runs, trained_run, capfd):
    few = decoding_config(["decoding.max_new_tokens=2"])
    assert len(fill(runs["seq2seq"], "西[MASK]" * 100, decoding=few)) == 100  # one per sentinel
    message = cli_error(
        fill_main, [str(trained_run("seq2seq")), "西[MASK]" * 120, "decoding.max_new_tokens=2"], capfd
    )
    assert message == "text: 120 blanks, more than the model's 100 sentinels (<extra_id_0> .. <extra_id_99>)"


@pytest.fixture(scope="module")
def gpt2_run(trained_run):
    return trained_run("causal", "model.family=gpt2")


def test_gpt2_generation_beyond_the_learned_positions_is_refused(gpt2_run, capfd):
    run = load_run(gpt2_run)
    limit = run.model.config.n_positions
    # The prompt follows one start token (eos), as documents do in packed training text.
    prompt = "中" * (limit - 1 - 4)
    assert n_tokens(run, prompt) == limit - 5
    assert generate(run, prompt, decoding_config(["decoding.max_new_tokens=4"]))  # exactly the limit
    with pytest.raises(InferenceError):
        generate(run, prompt, decoding_config(["decoding.max_new_tokens=5"]))
    message = cli_error(generate_main, [str(gpt2_run), "中" * 600], capfd)
    assert message == (
        f"prompt: 600 tokens + decoding.max_new_tokens=48 need 649 positions, more than the model's {limit} "
        "(shorten the prompt or lower decoding.max_new_tokens)"
    )


def test_rotary_models_continue_a_prompt_longer_than_their_nominal_positions(runs):
    """Llama's rotary positions have no table to run off: transformers only warns, so no refusal."""
    long_prompt = "中" * 600
    assert n_tokens(runs["causal"], long_prompt) > runs["causal"].model.config.max_position_embeddings
    texts = generate(runs["causal"], long_prompt, decoding_config(["decoding.max_new_tokens=2"]))
    assert texts[0].startswith(long_prompt)


@pytest.mark.parametrize("prompt", ["", "  \n"], ids=["empty", "blank"])
def test_an_empty_prompt_is_refused(trained_run, capfd, no_model_load, prompt):
    assert cli_error(generate_main, [str(trained_run("causal")), prompt], capfd) == "prompt: empty"
    assert cli_error(fill_main, [str(trained_run("seq2seq")), prompt], capfd) == "text: empty"


@pytest.mark.parametrize("main", [fill_main, generate_main], ids=["fill", "generate"])
def test_a_bad_decoding_override_is_one_line_before_the_model_loads(trained_run, capfd, no_model_load, main):
    message = cli_error(main, [str(trained_run("seq2seq")), "西安[MASK]", "decoding=foo"], capfd)
    assert (
        message
        == "decoding=foo: no such option (choose beam, contrastive, greedy, min_p, sampling, top_k, top_p)"
    )
    message = cli_error(main, [str(trained_run("seq2seq")), "西安[MASK]", "decoding.temprature=0.7"], capfd)
    assert message.startswith("decoding.temprature: no such setting")


def test_a_command_the_objective_cannot_serve_is_refused_before_the_model_loads(
    trained_run, capfd, no_model_load
):
    message = cli_error(generate_main, [str(trained_run("masked")), "中国"], capfd)
    assert message == "objective=masked: cannot continue text; use pretrainlab-fill"
    message = cli_error(fill_main, [str(trained_run("causal")), TEXT], capfd)
    assert message == "objective=causal: has no blanks to fill; use pretrainlab-generate"


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path, capfd):
    assert cli_error(generate_main, [str(tmp_path), "中国"], capfd).startswith(f"{tmp_path}: not a finished")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "metrics.json").write_text("{not json", encoding="utf-8")
    message = cli_error(generate_main, [str(tmp_path), "中国"], capfd)
    assert message.startswith(f"{tmp_path / 'metrics.json'}: not valid JSON")


@pytest.mark.parametrize("value", ["0", "-3", "abc", "2.5"])
def test_max_new_tokens_must_be_a_positive_whole_number(value):
    with pytest.raises(InferenceError) as info:
        decoding_config([f"decoding.max_new_tokens={value}"])
    assert str(info.value) == f"decoding.max_new_tokens={value}: must be a positive whole number"

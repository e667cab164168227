"""Bad input is caught before training: exit status 2, one ``error:`` line naming the key or file.

One table, run through the real entry point (``pretrainlab.train.cli``, in this process), so
composition errors, schema checks, data and tokenizer checks and the run-folder guard are all
exercised the way a user meets them. The README's troubleshooting table lists the same cases; a
test below keeps the two in step. Every case also checks that nothing the user had changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import cli_args, corpus_lines, word_level_tokenizer
from pretrainlab.train import cli

README = Path(__file__).resolve().parents[1] / "README.md"
# datasets' progress bars (reading the corpus) also go to stderr; they are not messages.
PROGRESS_BAR = re.compile(r"examples/s\]|it/s\]")


@dataclass(frozen=True)
class Case:
    """One bad input: the overrides that give it and the start of the message it must produce."""

    id: str
    overrides: tuple[str, ...]
    message: str  # a regular expression matched at the start of the line after "error: "


F = "{files}"  # replaced by the folder of prepared inputs
CASES = [
    Case(
        "unknown group option", ("objective=foo",), r"objective=foo: no such option \(choose causal, masked"
    ),
    Case("unknown size", ("model=huge",), r"model=huge: no such option \(choose base, small, tiny\)"),
    Case(
        "schema given as an option",
        ("objective=masked_schema",),
        r"objective=masked_schema: no such option \(choose causal, masked, prefix, seq2seq\)$",
    ),
    Case(
        "negative overfit batches",
        ("trainer.overfit_batches=-1",),
        r"trainer.overfit_batches=-1: must be a number of batches, a share of them, or 0 \(off\)$",
    ),
    Case("misspelt key", ("objective.mask_probablity=0.2",), r"objective.mask_probablity: no such setting"),
    Case("wrong type", ("data.block_size=abc",), r"data.block_size: Value 'abc' of type 'str' could not be"),
    Case(
        "mask probability outside (0, 1)",
        ("objective.mask_probability=1.5",),
        r"objective.mask_probability=1.5: must be a number strictly between 0 and 1",
    ),
    Case(
        "mean noise span length below 1",
        ("objective=seq2seq", "objective.mean_noise_span_length=0.5"),
        r"objective.mean_noise_span_length=0.5: must be at least 1",
    ),
    Case(
        "unknown noise layout",
        ("objective=seq2seq", "objective.noise_layout=foo"),
        r"objective.noise_layout=foo: must be one of reference, uniform$",
    ),
    Case(
        "gMASK minimum ratio outside [0, 1]",
        ("objective=prefix", "objective.gmask_min_ratio=1.5"),
        r"objective.gmask_min_ratio=1.5: must be between 0 and 1",
    ),
    Case("block size zero", ("data.block_size=0",), r"data.block_size=0: must be positive"),
    Case(
        "block size beyond the model's positions",
        ("data.block_size=100000",),
        r"data.block_size=100000: larger than the model's maximum positions",
    ),
    Case("batch size zero", ("data.batch_size=0",), r"data.batch_size=0: must be positive"),
    Case(
        "no tokenizing processes",
        ("data.num_proc=0",),
        r"data.num_proc=0: must be at least 1 \(or null: the usable cores\)$",
    ),
    Case(
        "tokenizer sample of no documents",
        ("tokenizer.max_training_documents=0",),
        r"tokenizer.max_training_documents=0: must be at least 1 \(or null: all\)$",
    ),
    Case(
        "learning rate zero",
        ("optimizer.optimizer.lr=0",),
        r"optimizer.optimizer.lr=0(\.0)?: must be positive",
    ),
    Case(
        "validation fraction too big",
        ("data.val_fraction=0.7",),
        r"data.val_fraction=0.7: must be in \(0, 0.5\]",
    ),
    Case("no steps", ("trainer.max_steps=0",), r"trainer.max_steps=0: must be positive"),
    Case(
        "negative token budget",
        ("trainer.max_tokens=-5",),
        r"trainer.max_tokens=-5: must be positive \(or null\)",
    ),
    Case("no layers", ("model.n_layers=0",), r"model.n_layers=0: must be at least 1"),
    Case(
        "width not a multiple of the heads",
        ("model.hidden_size=130", "model.n_heads=4"),
        r"model.hidden_size=130: must be a multiple of model.n_heads=4",
    ),
    Case(
        "unknown learning-rate schedule",
        ("optimizer.scheduler=step",),
        r"optimizer.scheduler=step: must be one of cosine, linear, constant_with_warmup, warmup_stable_decay",
    ),
    Case(
        "validation switched off",
        ("trainer.limit_val_batches=0",),
        r"trainer.limit_val_batches=0: must be positive",
    ),
    Case(
        "data file missing",
        (f"data.path={F}/missing.txt",),
        r"data.path=\S+missing.txt: no such file or directory",
    ),
    Case(
        "data file empty",
        (f"data.path={F}/empty.txt",),
        r"data.path=\S+empty.txt: the corpus is empty",
    ),
    Case("data folder without documents", (f"data.path={F}/blank",), r"data.path=\S+blank: folder holds no"),
    Case(
        "data file not UTF-8",
        (f"data.path={F}/gbk.txt",),
        r"data.path=\S+gbk.txt: \d+ of \d+ lines are not UTF-8, more than data.max_bad_line_fraction=0.01",
    ),
    Case(
        "text column missing",
        (f"data.path={F}/content.jsonl",),
        r"data.text_column=text: no such column in data.path=\S+content.jsonl \(columns: content\)",
    ),
    Case(
        "text column not text",
        (f"data.path={F}/numbers.jsonl",),
        r"data.text_column=text: column in data.path=\S+numbers.jsonl does not hold text",
    ),
    Case(
        "validation split empty",
        (f"data.path={F}/few.txt", "data.block_size=128"),
        r"data.path=\S+few.txt: the validation split tokenizes to \d+ tokens, fewer than one block",
    ),
    Case("pretrained tokenizer not given", ("tokenizer=pretrained",), r"tokenizer.pretrained: required with"),
    Case(
        "pretrained tokenizer folder missing",
        ("tokenizer=pretrained", f"tokenizer.pretrained={F}/missing"),
        r"tokenizer.pretrained=\S+missing: no such folder",
    ),
    Case(
        "folder without a tokenizer",
        ("tokenizer=pretrained", f"tokenizer.pretrained={F}/blank"),
        r"tokenizer.pretrained=\S+blank: no tokenizer found there",
    ),
    Case(
        "tokenizer lacks a token the objective needs",
        ("objective=masked", "tokenizer=pretrained", f"tokenizer.pretrained={F}/no_mask_tokenizer"),
        r"tokenizer.pretrained=\S+no_mask_tokenizer: has no mask_token \(needed by objective=masked\)",
    ),
    Case(
        "pretrained model folder missing",
        (f"model.pretrained={F}/missing",),
        r"model.pretrained=\S+missing: no such folder",
    ),
    Case(
        "hub data set that cannot be loaded",
        ("data=hub", f"data.name={F}/missing_dataset"),
        r"data.name=\S+missing_dataset: could not be loaded",
    ),
    Case(
        "hub name with downloads off",
        ("data=hub", "data.name=someone/no-such-corpus"),
        r"data.name=someone/no-such-corpus: could not be loaded \(\w+\); downloads are off \(offline=true\): "
        r"add offline=false",
    ),
    Case("offline not a boolean", ("offline=maybe",), r"offline=maybe: must be true or false"),
    Case(
        "architecture that cannot serve the objective",
        ("objective=causal", "model.family=t5"),
        r"model.family=t5: not usable with objective=causal \(choose llama, gpt2, bloom\)",
    ),
    Case(
        "decoding value out of range",
        ("decoding=top_p", "decoding.top_p=1.5"),
        r"decoding.top_p=1.5: must be in",
    ),
    Case(
        "decoding settings that contradict each other",
        ("objective=causal", "decoding=beam", "decoding.num_beams=1"),
        r"decoding=beam: ",
    ),
    Case(
        "decoding the objective does not have",
        ("objective=prefix", "decoding=beam"),
        r"decoding.num_beams=4: the prefix \(GLM\) decoder has no beam search",
    ),
    Case(
        "more devices than the machine has",
        ("trainer.devices=4096",),
        r"trainer.devices=4096: only \d+ CPU cores",
    ),
    Case(
        "sharding strategy the device cannot run",
        ("trainer=fsdp", "trainer.accelerator=cpu"),
        r"trainer.strategy: FSDP needs GPUs \(torch's FSDP has no CPU support\); on CPU use trainer=ddp",
    ),
    Case(
        "resume folder that is not a run",
        (f"resume={F}/not_a_run",),
        r"resume=\S+not_a_run: not a run folder with .hydra/config.yaml and checkpoints/last.ckpt",
    ),
    Case(
        "run folder that would be overwritten",
        (f"hydra.run.dir={F}/earlier_run",),
        r"hydra.run.dir=\S+earlier_run: holds an earlier run; choose a new folder",
    ),
    Case(
        "vocabulary too small", ("tokenizer.vocab_size=10",), r"tokenizer.vocab_size=10: must be at least 100"
    ),
    Case(
        "bad-line share outside [0, 1)",
        ("data.max_bad_line_fraction=1.5",),
        r"data.max_bad_line_fraction=1.5: must be in \[0, 1\)",
    ),
    Case(
        "data path not a regular file",
        (f"data.path={F}/pipe.txt",),
        r"data.path=\S+pipe.txt: not a regular file or folder$",
    ),
    Case(
        "malformed JSON line",
        (f"data.path={F}/broken.jsonl",),
        r"data.path=\S+broken.jsonl: line 17 is not valid JSON \(Expecting property name",
    ),
    Case(
        "seed outside what torch accepts",
        ("seed=-1",),
        r"seed=-1: must be an integer from 0 to 4294967295",
    ),
    Case(
        "mask share too small to leave a masked token in a batch",
        ("objective=masked", "objective.mask_probability=0.001"),
        r"objective.mask_probability=0.001: a batch of data.batch_size=4 x data.block_size=32 tokens "
        r"would have no masked token 88.0% of the time",
    ),
    Case(
        "block of one token",
        ("objective=seq2seq", "data.block_size=1"),
        r"data.block_size=1: must be at least 2 \(a block needs a token to read and one to predict\)",
    ),
    Case(
        "batch larger than the training blocks",
        ("data.batch_size=5000",),
        r"data.batch_size=5000: one batch needs 5000 training blocks, "
        r"the corpus gives \d+ blocks of 32 tokens",
    ),
    Case(
        "run folder that cannot be created",
        (f"hydra.run.dir={F}/a_file/run",),
        r"hydra.run.dir=\S+a_file/run: cannot be created \(Not a directory\)",
    ),
    Case(
        "cache folder that cannot be written",
        (f"paths.cache_dir={F}/a_file/cache",),
        r"paths.cache_dir=\S+a_file/cache: not writable \(Not a directory\); set PRETRAINLAB_CACHE",
    ),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bad inputs the table refers to as {files}/..."""
    root = tmp_path_factory.mktemp("bad-inputs")
    lines = corpus_lines()[:60]
    (root / "empty.txt").write_text("", encoding="utf-8")
    (root / "blank").mkdir()
    (root / "gbk.txt").write_bytes("\n".join(lines).encode("gb18030"))
    (root / "content.jsonl").write_text(
        "".join(json.dumps({"content": line}, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8"
    )
    (root / "numbers.jsonl").write_text("".join(f'{{"text": {i}}}\n' for i in range(20)), encoding="utf-8")
    # 21 short documents: 2 go to validation (val_fraction 0.05), too few tokens for one block.
    (root / "few.txt").write_text("".join(line[:20] + "\n" for line in lines[:21]), encoding="utf-8")
    tokens = ["[UNK]", "[PAD]", "</s>", *{ch for line in lines for ch in line}]
    word_level_tokenizer(tokens, pad_token="[PAD]", eos_token="</s>").save_pretrained(
        str(root / "no_mask_tokenizer")
    )
    os.mkfifo(root / "pipe.txt")  # reading it would wait for a writer forever
    broken = [json.dumps({"text": line}, ensure_ascii=False) for line in lines[:20]]
    broken[16] = '{"text": "trailing comma",}'
    (root / "broken.jsonl").write_text("\n".join(broken) + "\n", encoding="utf-8")
    (root / "a_file").write_text("a file where a folder would have to be\n", encoding="utf-8")
    (root / "not_a_run").mkdir()
    (root / "not_a_run" / "notes.txt").write_text("my notes\n", encoding="utf-8")
    earlier = root / "earlier_run"
    (earlier / ".hydra").mkdir(parents=True)
    (earlier / ".hydra" / "config.yaml").write_text("seed: 1\n", encoding="utf-8")
    (earlier / "metrics.json").write_text('{"status": "ok"}\n', encoding="utf-8")
    return root


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` and a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_naming_the_key(
    case, files, tiny_corpus, cache_dir, tmp_path, monkeypatch, capsys
):
    overrides = [o.replace(F, str(files)) for o in case.overrides]
    args = cli_args(tiny_corpus)
    if not any(o.startswith(("hydra.run.dir=", "resume=")) for o in overrides):
        args.append(f"hydra.run.dir={tmp_path / 'run'}")
    args += [f"paths.cache_dir={cache_dir}", *overrides]
    before = snapshot(files)
    monkeypatch.setattr(sys, "argv", ["pretrainlab-train", *args])

    with pytest.raises(SystemExit) as exit_info:
        cli()

    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
    assert len(lines) == 1, err
    assert re.match("error: " + case.message, lines[0]), lines[0]
    assert snapshot(files) == before  # nothing the user had was changed
    assert not (tmp_path / "run" / "checkpoints").exists()  # no training started


def test_enough_cases():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


def test_readme_troubleshooting_lists_every_case():
    section = README.read_text(encoding="utf-8").split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    missing = [c.id for c in CASES if f"| {c.id} |" not in section]
    assert not missing, f"README troubleshooting table lacks: {missing}"

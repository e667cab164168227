"""Shared fixtures: a tiny corpus, an isolated cache, test-sized configs and session-trained runs.

Nothing here writes outside pytest's temporary folders: the pretrainlab cache, the `datasets`
cache and W&B are all pointed at temporary directories before anything is imported.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

# Before `datasets`, `transformers` or `wandb` are imported by any test module: they read
# these at import time. No test needs the network; `datasets` keeps its cache in a temp dir.
_HF_TMP = tempfile.mkdtemp(prefix="pretrainlab-tests-hf-")
atexit.register(shutil.rmtree, _HF_TMP, ignore_errors=True)
os.environ["HF_DATASETS_CACHE"] = os.path.join(_HF_TMP, "datasets")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["WANDB_DIR"] = os.path.join(_HF_TMP, "wandb")
os.environ["PRETRAINLAB_CACHE"] = os.path.join(_HF_TMP, "pretrainlab-cache")

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from pretrainlab import config_dir  # noqa: E402

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

N_DOCS = 300

# Test-sized settings; any of them can be overridden by a later `key=value`.
TEST_DEFAULTS = (
    "logger=none",
    "data=files",
    "model=tiny",
    "model.n_layers=1",
    "model.hidden_size=32",
    "model.n_heads=2",
    "model.intermediate_size=64",
    "data.block_size=32",
    "data.batch_size=4",
    "trainer.max_steps=2",
    "trainer.val_check_interval=1",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "tokenizer.vocab_size=300",
    "~callbacks.progress_bar",
    # End-of-run evaluation, test-sized: every part runs, on few items.
    "evaluation.cloze_per_k=4",
    "evaluation.continuation_items=8",
    "evaluation.prompt_tokens=4",
    "evaluation.continuation_tokens=8",
    "evaluation.num_prompts=4",
    "evaluation.probe_per_class=40",
    "evaluation.probe_test_per_class=20",
)


def word_level_tokenizer(tokens: list[str], **roles: str | list[str]) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over `tokens` (ids in that order), split on whitespace.

    Unknown words map to "[UNK]"; `roles` (pad_token, eos_token, mask_token, cls_token, sep_token,
    additional_special_tokens, ...) are passed to PreTrainedTokenizerFast as they are.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({tok: i for i, tok in enumerate(tokens)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, **{"unk_token": "[UNK]", **roles})


def corpus_lines() -> list[str]:
    """The first documents of the built-in corpus, duplicates dropped (order kept)."""
    from pretrainlab.data.corpus import load_sample_zh

    docs = load_sample_zh()["text"]
    seen: dict[str, None] = {}
    for doc in docs:
        seen.setdefault(doc, None)
        if len(seen) == N_DOCS:
            break
    return list(seen)


@pytest.fixture(scope="session")
def tiny_docs() -> list[str]:
    """The documents of `tiny_corpus`, in file order."""
    return corpus_lines()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_docs: list[str]):
    """A tokenizer trained (like the pipeline does) on the tiny corpus: Chinese only, ~2k tokens."""
    from pretrainlab.data.tokenizer import train_tokenizer

    return train_tokenizer(tiny_docs, vocab_size=300, min_frequency=2, model_max_length=512)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory, tiny_docs: list[str]) -> Path:
    """~300 distinct Chinese (+ full-width digits/ASCII) documents, one per line."""
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text("\n".join(tiny_docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """A session cache folder, also exported as PRETRAINLAB_CACHE (restored afterwards)."""
    path = tmp_path_factory.mktemp("pretrainlab-cache")
    previous = os.environ.get("PRETRAINLAB_CACHE")
    os.environ["PRETRAINLAB_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("PRETRAINLAB_CACHE", None)
    else:
        os.environ["PRETRAINLAB_CACHE"] = previous


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def make_cfg(corpus: Path, cache: Path, output_dir: Path, *overrides: str) -> DictConfig:
    """Compose `train` with the test defaults; later overrides win, including group choices."""
    given = {_key(o) for o in overrides}
    settings = (
        *TEST_DEFAULTS,
        f"data.path={corpus}",
        f"paths.output_dir={output_dir}",
        f"paths.cache_dir={cache}",
    )
    base = [o for o in settings if _key(o) not in given]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*base, *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    # The task function of a real run never sees the `hydra` node (and train() would try to
    # resolve its sweep folder, which needs a job number).
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture
def compose_cfg(tiny_corpus: Path, cache_dir: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """``compose_cfg(*overrides, output_dir=None)``: a test-sized config writing under tmp_path."""
    count = iter(range(1_000_000))

    def _compose(*overrides: str, output_dir: str | Path | None = None) -> DictConfig:
        out = Path(output_dir) if output_dir is not None else tmp_path / f"run{next(count)}"
        return make_cfg(tiny_corpus, cache_dir, out, *overrides)

    return _compose


@pytest.fixture(scope="session")
def run_training() -> Callable[[DictConfig], dict]:
    """``run_training(cfg)``: pretrainlab.train.train, restoring torch's determinism switch."""
    return run_train


def run_train(cfg: DictConfig) -> dict:
    """``pretrainlab.train.train`` that leaves torch's global determinism switch as it found it."""
    from pretrainlab.train import train

    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return train(cfg)
    finally:
        torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="session")
def trained_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, cache_dir: Path
) -> Callable[..., Path]:
    """``trained_run(objective, *overrides)``: train once per session, return the run folder.

    The run is deterministic (``trainer.deterministic=true``, seed 42), so a test can repeat
    it with the same config and expect the same numbers.
    """
    runs: dict[tuple[str, ...], Path] = {}

    def _run(objective: str, *overrides: str) -> Path:
        key = (objective, *overrides)
        if key not in runs:
            out = tmp_path_factory.mktemp(f"trained-{objective}") / "run"
            run_train(make_cfg(tiny_corpus, cache_dir, out, *trained_run_overrides(objective, *overrides)))
            runs[key] = out
        return runs[key]

    _run.overrides = trained_run_overrides  # type: ignore[attr-defined]
    return _run


def trained_run_overrides(objective: str, *overrides: str) -> tuple[str, ...]:
    """The overrides `trained_run` uses, so a test can repeat exactly the same run."""
    # validate_at_start: the tests compare val/loss_initial across runs.
    return (
        f"objective={objective}",
        "trainer.deterministic=true",
        "trainer.validate_at_start=true",
        *overrides,
    )


def special_word_tokenizer(n_words: int) -> PreTrainedTokenizerFast:
    """Every pretrainlab special token, then the words w0 .. w{n_words - 1}, wrapped exactly
    as the trained tokenizer is (``pretrainlab.data.tokenizer.wrap``: same roles)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from pretrainlab.data.tokenizer import SPECIAL_TOKENS, UNK, wrap

    tokens = SPECIAL_TOKENS + [f"w{i}" for i in range(n_words)]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return wrap(backend, model_max_length=512)


# -- the command line ---------------------------------------------------------------------------


def cli_args(corpus: Path) -> list[str]:
    """Test-sized overrides for ``pretrainlab-train`` run as a command: `TEST_DEFAULTS` on `corpus`.

    Command-line runs keep the trainer's own logging interval and read fewer documents.
    """
    defaults = [o for o in TEST_DEFAULTS if _key(o) != "trainer.log_every_n_steps"]
    return [*defaults, f"data.path={corpus}", "data.max_documents=200"]


def run_cli(
    command: list[str], cache_dir: Path, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run an installed console script (or its module when not on PATH) in a test environment."""
    modules = {
        "pretrainlab-train": "pretrainlab.train",
        "pretrainlab-reproduce": "pretrainlab.reproduce",
        "pretrainlab-compare": "pretrainlab.compare",
        "pretrainlab-eval": "pretrainlab.evaluate",
    }
    exe = shutil.which(command[0])
    head = [exe] if exe else [sys.executable, "-m", modules[command[0]]]
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update(PRETRAINLAB_CACHE=str(cache_dir), WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    full_env.update(env or {})
    return subprocess.run(
        [*head, *command[1:]], capture_output=True, text=True, env=full_env, timeout=timeout
    )


def run_cli_together(
    *commands: list[str], cache_dir: Path, env: dict[str, str] | None = None, timeout: int = 300
) -> list[subprocess.CompletedProcess]:
    """``run_cli`` of independent commands (no one reads what another writes) at the same time,
    their results in order. Most of a test-sized command's time is one core importing torch,
    Lightning and transformers: the CI machine's second core takes the next command meanwhile."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda command: run_cli(command, cache_dir, env, timeout), commands))


class CommandRun(NamedTuple):
    """A run trained through ``pretrainlab-train``: its folder and the finished process."""

    folder: Path
    result: subprocess.CompletedProcess

    def copy_to(self, path: Path) -> Path:
        """A copy of the run folder at `path`, for a test that changes what it holds."""
        shutil.copytree(self.folder, path, symlinks=True)
        return path


# prefix: every part of the end-of-run evaluation applies; generation shorter than the default 48
# tokens (most of the evaluation's time), and than the [gMASK] spans the run trains.
COMMAND_RUN_OVERRIDES = ("objective=prefix", "decoding.max_new_tokens=16")


@pytest.fixture(scope="session")
def command_run(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, cache_dir: Path) -> CommandRun:
    """One test-sized ``pretrainlab-train`` run (``cli_args`` + ``COMMAND_RUN_OVERRIDES``), trained
    once per session for the tests that need a folder the command itself wrote (``.hydra/``,
    metrics.json with every evaluation); each of them paid a training subprocess of its own
    before. Read-only: a test that changes it works on a copy (``copy_to``).
    """
    folder = tmp_path_factory.mktemp("command-run") / "run"
    result = run_cli(
        ["pretrainlab-train", *cli_args(tiny_corpus), *COMMAND_RUN_OVERRIDES, f"hydra.run.dir={folder}"],
        cache_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return CommandRun(folder, result)


def wandb_records(log: Path) -> list[Any]:
    """The protobuf ``Record``s of an offline ``run-<id>.wandb`` file (wandb 0.31 writes it from
    its Go core and ships no Python reader), so tests read what a run wrote, not a mock.

    A LevelDB-style log: a 7-byte ``:W&B`` header, then 32 KiB blocks of chunks, each with a
    7-byte header: crc32 (4), length (2, little-endian), type (1 full, 2 first, 3 middle, 4 last).
    """
    from wandb.proto import wandb_internal_pb2

    data = log.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the tail of a block too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records

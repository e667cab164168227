"""A damaged cache entry is found, rebuilt with one warning line and never trusted as it is
(pretrainlab.data.manifest, PretrainDataModule's cache)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from omegaconf import DictConfig

import pretrainlab.data.manifest as manifest
from conftest import make_cfg
from pretrainlab.data.datamodule import PretrainDataModule
from pretrainlab.reproduce import compare_metrics

ARROW = "data-00000-of-00001.arrow"
BLOCKS = "packed-32"
SEGMENTER = "rjieba"


def words_layout() -> str:
    from pretrainlab.data import words

    return f"words-{SEGMENTER}-{words.segmenter_version(SEGMENTER)}"


def config(corpus: Path, *overrides: str) -> DictConfig:
    return make_cfg(corpus, Path("unused-cache"), Path("unused-out"), *overrides)


def load(cfg: DictConfig, cache: Path, whole_word: bool = False) -> PretrainDataModule:
    dm = PretrainDataModule(
        cfg.data, cfg.tokenizer, "masked", cache, word_segmenter=SEGMENTER if whole_word else None
    )
    dm.setup()
    return dm


def content(dm: PretrainDataModule) -> dict[str, Any]:
    """Everything a run reads from the cache: the tokenizer, the blocks, the held-out documents."""
    return {
        "vocab": dm.tokenizer.get_vocab(),
        **{name: split.to_dict() for name, split in dm.splits.items()},
        "heldout": dm.heldout_documents(8, 4),
    }


def cache_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("cache:")]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path) -> dict[str, Any]:
    """One intact cache (plain and whole-word blocks) and what loading it gives."""
    pytest.importorskip(SEGMENTER)
    cache = tmp_path_factory.mktemp("pristine") / "cache"
    cfg = config(tiny_corpus)
    plain, whole = load(cfg, cache), load(cfg, cache, whole_word=True)
    return {
        "cache": cache,
        "entry": plain.tokenizer_dir.relative_to(cache),
        "plain": content(plain),
        "whole": content(whole),
    }


@pytest.fixture
def cache(pristine: dict[str, Any], tmp_path: Path) -> Path:
    """A copy of the pristine cache for this test to damage."""
    copy = tmp_path / "cache"
    shutil.copytree(pristine["cache"], copy)
    return copy


def entry(cache: Path, pristine: dict[str, Any], name: str) -> Path:
    return cache / pristine["entry"] / name


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def rewrite_blocks_same_size(split_dir: Path, share: float = 1 / 3) -> int:
    """Reverse the ids inside the first ``share`` of the blocks, in the arrow file's bytes:
    every id stays in range and the file keeps its size. Returns how many blocks changed."""
    path = split_dir / ARROW
    with pa.memory_map(str(path)) as source:
        ids = pa.ipc.open_stream(source).read_all().column("input_ids").chunk(0)
        width, n = len(ids[0]), int(len(ids) * share)
        original = ids.values.to_numpy()[: n * width].copy().reshape(n, width)
    changed = original[:, ::-1].copy()
    data = bytearray(path.read_bytes())
    start = bytes(data).find(original.tobytes())
    assert start > 0
    data[start : start + changed.nbytes] = changed.tobytes()
    path.write_bytes(bytes(data))
    return int((changed != original).any(axis=1).sum())


def delete_split(path: Path) -> None:
    shutil.rmtree(path)


# (what is damaged, relative to the tokenizer's cache folder; how; whole-word blocks; which entry)
DAMAGE = {
    "truncated blocks arrow": (f"{BLOCKS}/train/{ARROW}", truncate, False, BLOCKS),
    "truncated docs arrow": (f"docs/validation/{ARROW}", truncate, False, "docs"),
    "deleted blocks split": (f"{BLOCKS}/validation", delete_split, False, BLOCKS),
    "deleted docs split": ("docs/train", delete_split, False, "docs"),
    "truncated tokenizer.json": ("docs/tokenizer/tokenizer.json", truncate, False, "docs"),
    "truncated words arrow": ("{words}/train/" + ARROW, truncate, True, "{words}"),
    "deleted words split": ("{words}/validation", delete_split, True, "{words}"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_entry_is_rebuilt_with_one_warning_line(
    damage: str, pristine: dict[str, Any], cache: Path, tiny_corpus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    where, hurt, whole_word, name = (
        s.format(words=words_layout()) if isinstance(s, str) else s for s in DAMAGE[damage]
    )
    hurt(entry(cache, pristine, where))
    if whole_word:  # blocks not built yet (e.g. another block size): the word starts are read
        shutil.rmtree(entry(cache, pristine, f"{BLOCKS}-{words_layout()}"))
    caplog.set_level(logging.WARNING)

    dm = load(config(tiny_corpus), cache, whole_word)
    assert content(dm) == pristine["whole" if whole_word else "plain"]
    assert not dm.cache_hit
    (line,) = cache_warnings(caplog)
    file = where.split("/", 1)[1]
    assert line.startswith(f"cache: {entry(cache, pristine, name)} is damaged (")
    assert line.endswith("); rebuilding") and "\n" not in line
    assert file in line  # names what is missing or of the wrong size

    caplog.clear()
    again = load(config(tiny_corpus), cache, whole_word)
    assert again.cache_hit and not cache_warnings(caplog)  # rebuilt once, complete with its manifest
    assert content(again) == content(dm)


def test_a_same_size_rewrite_of_the_blocks_is_found_by_hashes(
    pristine: dict[str, Any],
    cache: Path,
    tiny_corpus: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    changed = rewrite_blocks_same_size(entry(cache, pristine, f"{BLOCKS}/train"))
    assert changed > 50
    caplog.set_level(logging.WARNING)
    # As for an entry too large to hash on every load: the size check alone cannot see it.
    monkeypatch.setattr(manifest, "HASH_ON_LOAD_BYTES", 0)
    blind = load(config(tiny_corpus), cache)
    assert blind.splits["train"]["input_ids"] != pristine["plain"]["train"]["input_ids"]
    assert not cache_warnings(caplog)

    verified = load(config(tiny_corpus, "data.verify_cache=true"), cache)
    assert content(verified) == pristine["plain"]
    (line,) = cache_warnings(caplog)
    assert f"{BLOCKS} is damaged (train/{ARROW}: content differs (sha256)); rebuilding" in line


def test_small_entries_are_hashed_on_every_load(
    pristine: dict[str, Any], cache: Path, tiny_corpus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rewrite_blocks_same_size(entry(cache, pristine, f"{BLOCKS}/validation"))
    caplog.set_level(logging.WARNING)
    dm = load(config(tiny_corpus), cache)  # data.verify_cache=false: hashed anyway, being small
    assert content(dm) == pristine["plain"]
    assert len(cache_warnings(caplog)) == 1


def test_a_load_error_the_size_check_misses_is_verified_and_rebuilt(
    pristine: dict[str, Any],
    cache: Path,
    tiny_corpus: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(manifest, "HASH_ON_LOAD_BYTES", 0)  # sizes only on load
    for relative in ("docs/tokenizer/tokenizer.json", f"{BLOCKS}/train/{ARROW}"):
        path = entry(cache, pristine, relative)
        data = bytearray(path.read_bytes())
        data[:8] = b"x" * 8  # same size: not JSON, not an arrow stream
        path.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING)
    dm = load(config(tiny_corpus), cache)
    assert content(dm) == pristine["plain"]
    lines = cache_warnings(caplog)
    assert len(lines) == 2
    assert "docs is damaged (tokenizer/tokenizer.json: content differs (sha256)); rebuilding" in lines[0]
    assert f"{BLOCKS} is damaged (train/{ARROW}: content differs (sha256)); rebuilding" in lines[1]


def test_an_entry_without_a_manifest_is_rebuilt_once(
    pristine: dict[str, Any], cache: Path, tiny_corpus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("docs", BLOCKS):  # as an older pretrainlab left them
        (entry(cache, pristine, name) / manifest.MANIFEST).unlink()
    caplog.set_level(logging.WARNING)
    dm = load(config(tiny_corpus), cache)
    assert content(dm) == pristine["plain"]
    lines = cache_warnings(caplog)
    assert len(lines) == 2 and all("no manifest.json: written by an older pretrainlab" in x for x in lines)
    caplog.clear()
    assert load(config(tiny_corpus), cache).cache_hit and not cache_warnings(caplog)


def test_blocks_built_from_other_documents_are_rebuilt(
    pristine: dict[str, Any], cache: Path, tiny_corpus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = entry(cache, pristine, BLOCKS) / manifest.MANIFEST
    data = json.loads(path.read_text())
    data["sources"]["docs"] = "0" * 64  # as if the documents were rebuilt with other ids since
    path.write_text(json.dumps(data))
    caplog.set_level(logging.WARNING)
    assert content(load(config(tiny_corpus), cache)) == pristine["plain"]
    (line,) = cache_warnings(caplog)
    assert "built from another docs" in line


def test_every_entry_is_complete_with_a_manifest_of_its_files(pristine: dict[str, Any]) -> None:
    folder = pristine["cache"] / pristine["entry"]
    entries = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert {p.name for p in entries} == {"docs", BLOCKS, words_layout(), f"{BLOCKS}-{words_layout()}"}
    for path in entries:
        listed = json.loads((path / manifest.MANIFEST).read_text())["files"]
        files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
        assert set(listed) == files - {manifest.MANIFEST}
        assert manifest.check_manifest(path, hashes=True) is None


def test_a_rebuild_leaves_a_process_reading_the_old_entry_intact(
    pristine: dict[str, Any], cache: Path, tiny_corpus: Path
) -> None:
    reader = load(config(tiny_corpus), cache)  # memory-maps the blocks, as a running job does
    shutil.rmtree(entry(cache, pristine, f"{BLOCKS}/validation"))
    rebuilt = load(config(tiny_corpus), cache)
    assert not rebuilt.cache_hit
    assert reader.splits["train"].to_dict() == pristine["plain"]["train"]  # its files outlive the rename
    assert not list(entry(cache, pristine, "").glob(".*-damaged-*"))  # the old entry is gone


def _load_in_child(corpus: str, cache: str, queue: Any) -> None:
    try:
        dm = load(config(Path(corpus)), Path(cache))
        queue.put(([str(p) for p in dm.built], dm.splits["validation"]["input_ids"]))
    except BaseException as err:  # report, do not hang the parent
        queue.put(repr(err))


def test_concurrent_jobs_rebuild_a_damaged_entry_once(
    pristine: dict[str, Any], cache: Path, tiny_corpus: Path
) -> None:
    truncate(entry(cache, pristine, f"{BLOCKS}/train/{ARROW}"))
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    jobs = [
        context.Process(target=_load_in_child, args=(str(tiny_corpus), str(cache), queue)) for _ in range(3)
    ]
    for job in jobs:
        job.start()
    results = [queue.get(timeout=300) for _ in jobs]
    for job in jobs:
        job.join(timeout=60)
    assert all(isinstance(r, tuple) for r in results), results
    assert sorted(len(built) for built, _ in results) == [0, 0, 1]  # one rebuilt it, the others waited
    assert all(ids == pristine["plain"]["validation"]["input_ids"] for _, ids in results)


def test_a_run_on_a_damaged_cache_trains_like_one_on_an_intact_cache(
    pristine: dict[str, Any],
    cache: Path,
    compose_cfg: Callable[..., DictConfig],
    run_training: Callable[[DictConfig], dict],
    caplog: pytest.LogCaptureFixture,
) -> None:
    overrides = ("trainer.deterministic=true", f"paths.cache_dir={cache}", "evaluation.probe=false")
    intact = run_training(compose_cfg(*overrides))
    # Only the held-out documents: the worst case, which used to fail after all the training.
    truncate(entry(cache, pristine, f"docs/validation/{ARROW}"))
    caplog.set_level(logging.WARNING)
    damaged = run_training(compose_cfg(*overrides))
    assert damaged["status"] == "ok"
    assert damaged["val/loss"] == intact["val/loss"]
    assert compare_metrics(intact, damaged) == []  # the evaluation on held-out documents too
    (line,) = cache_warnings(caplog)
    assert f"docs is damaged (validation/{ARROW}: size" in line

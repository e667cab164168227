"""data.streaming=true: blocks cut while training, as packing cuts them, sharded without
overlap, in a seeded order, resumed at the exact block (the 2-process run is in
test_distributed.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import datasets
import pytest
import torch
from hydra.utils import get_class
from omegaconf import DictConfig

from pretrainlab.build import build_datamodule
from pretrainlab.config import ConfigError
from pretrainlab.data import packing
from pretrainlab.data.corpus import TEXT
from pretrainlab.data.datamodule import PretrainDataModule
from pretrainlab.data.streaming import POSITION, StreamingBlocks, start_position
from pretrainlab.validation import validate

HEAD = 20
STREAM = ("data.streaming=true", f"data.validation_documents={HEAD}")
BLOCK = 32


def _datamodule(compose_cfg: Callable[..., DictConfig], *overrides: str) -> PretrainDataModule:
    cfg = compose_cfg("objective=causal", *STREAM, *overrides)
    datamodule = build_datamodule(cfg, get_class(cfg.objective._target_))
    datamodule.setup()
    return datamodule


def _documents(corpus: Path) -> list[str]:
    return [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]


def _packed(datamodule: PretrainDataModule, texts: list[str]) -> list[list[int]]:
    """The blocks the cached pipeline cuts from these documents, in order."""
    docs = packing.tokenize(datasets.Dataset.from_dict({TEXT: texts}), datamodule.tokenizer)
    return list(packing.pack(docs, BLOCK)[packing.IDS])


def _stream(datamodule: PretrainDataModule, window: int, world: int = 1, workers: int = 0) -> StreamingBlocks:
    return StreamingBlocks(
        datamodule.training_stream,
        datamodule.tokenizer,
        BLOCK,
        batch_size=4,
        seed=7,
        window=window,
        total_batches=10,
        world_size=world,
        workers=workers,
    )


def _take(blocks, count: int) -> list[list[int]]:
    return [next(blocks)[0] for _ in range(count)]


def test_the_stream_is_cut_into_the_blocks_packing_cuts_in_corpus_order(compose_cfg, tiny_corpus) -> None:
    """Validation: the stream's first documents, packed and cached. Training: every block
    packing cuts from the rest, in their order with a window of 1, then again (next epoch);
    a window of 3 visits each group of 3 consecutive blocks in its own seeded order."""
    datamodule = _datamodule(compose_cfg, "data.shuffle_window=1")
    documents = _documents(tiny_corpus)
    assert datamodule.splits.keys() == {"validation"}
    assert list(datamodule.splits["validation"][packing.IDS]) == _packed(datamodule, documents[:HEAD])

    expected = _packed(datamodule, documents[HEAD:])
    assert len(expected) > 12
    in_order = _stream(datamodule, window=1).blocks(0, start_position())
    assert _take(in_order, len(expected) + 2) == expected + expected[:2]

    shuffled = _take(_stream(datamodule, window=3).blocks(0, start_position()), len(expected) // 3 * 3)
    groups = [(shuffled[i : i + 3], expected[i : i + 3]) for i in range(0, len(shuffled), 3)]
    assert all(sorted(got) == sorted(want) for got, want in groups)
    assert shuffled != expected[: len(shuffled)]
    again = _take(_stream(datamodule, window=3).blocks(0, start_position()), len(shuffled))
    assert again == shuffled  # seeded: the same order every time


def test_processes_and_workers_cut_disjoint_shards_of_the_documents(compose_cfg, tiny_corpus) -> None:
    """2 processes x 2 workers: shard g holds documents g, g + 4, ... of the training stream,
    so together the shards cover every document once."""
    datamodule = _datamodule(compose_cfg, "data.shuffle_window=1")
    documents = _documents(tiny_corpus)[HEAD:]
    stream = _stream(datamodule, window=1, world=2, workers=2)
    seen: list[tuple[int, ...]] = []
    for shard in range(4):
        expected = _packed(datamodule, documents[shard::4])
        assert _take(stream.blocks(shard, start_position()), len(expected)) == expected
        seen += [tuple(b) for b in expected]
    assert len(set(seen)) == len(seen)
    assert {stream.shard_of(b) for b in range(6)} == {0, 1}  # rank 0's batches: its two workers'
    rank1 = StreamingBlocks(
        datamodule.training_stream, datamodule.tokenizer, BLOCK, 4, 7, 1, 10, rank=1, world_size=2, workers=2
    )
    assert [rank1.shard_of(b) for b in range(4)] == [2, 3, 2, 3]


def test_a_position_resumes_the_shard_exactly_again_and_again(compose_cfg, tiny_corpus) -> None:
    """Blocks from a saved position are the ones that followed it, also from a position saved
    by a resumed stream (a run resumed several times), across chunk, window and epoch ends."""
    from pretrainlab.data import streaming

    datamodule = _datamodule(compose_cfg)
    epoch = len(_packed(datamodule, _documents(tiny_corpus)[HEAD:][1::2]))  # shard 1 of 2
    stream = _stream(datamodule, window=5, world=2)
    chunk_documents, streaming.CHUNK_DOCUMENTS = streaming.CHUNK_DOCUMENTS, 2  # many chunks
    try:
        whole = _take(stream.blocks(1, start_position()), epoch + 20)
        position, done = start_position(), 0
        for stop in (7, 23, 24, 31, epoch - 2, epoch + 9, epoch + 11, epoch + 20):
            resumed = stream.blocks(1, position)
            for _ in range(stop - done):
                block, position = next(resumed)
                assert block == whole[done], (stop, done)
                done += 1
        assert position["epoch"] == 1
    finally:
        streaming.CHUNK_DOCUMENTS = chunk_documents


def _trained(path: Path) -> list[tuple[int, str]]:
    """(step, batch hash) of every batch whose step counts: a session's batches from the step
    the next session resumed at on were trained again there."""
    sessions: list[tuple[int, list[tuple[int, str]]]] = []
    for record in map(json.loads, path.read_text().splitlines()):
        if "start" in record:
            sessions.append((record["start"], []))
        else:
            sessions[-1][1].append((record["step"], record["batch"]))
    kept: list[tuple[int, str]] = []
    for (_, batches), (resumed_at, _) in zip(sessions, sessions[1:] + [(10**9, [])], strict=True):
        kept += [b for b in batches if b[0] < resumed_at]
    return kept


def test_a_stopped_streaming_run_resumes_at_the_block_it_stopped_at(
    compose_cfg, run_training, tmp_path
) -> None:
    """Masked (its masks are seeded by batch number), 2 workers, a window of 3 blocks, stopped
    after step 4 with its last save at step 3 (mid-window, the other worker's turn next): the
    resumed run trains on the batches and masks the uninterrupted one does, and ends with its
    validation loss. A resume with another worker count is refused in one line."""
    from batch_probe import Stopped

    common = (
        "objective=masked",
        *STREAM,
        "data.shuffle_window=3",
        "data.num_workers=2",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "trainer.checkpoint_every_n_steps=1",
        *(f"evaluation.{part}=false" for part in ("probe", "cloze", "continuation", "generation")),
    )

    def run(out: Path, *extra: str) -> dict | None:
        recorder = (
            "+callbacks.recorder._target_=batch_probe.RecordBatches",
            f"+callbacks.recorder.path={out}/b.jsonl",
        )
        try:
            return run_training(compose_cfg(*common, *recorder, *extra, output_dir=out))
        except Stopped:
            return None

    full = run(tmp_path / "full")
    cut = tmp_path / "cut"
    assert run(cut, "+callbacks.stopper._target_=batch_probe.StopAtStep", "+callbacks.stopper.step=4") is None
    state = torch.load(cut / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    saved = state["PretrainDataModule"]
    assert state["global_step"] == 3 and (saved["stream_processes"], saved["stream_workers"]) == (1, 2)
    assert {shard: p["taken"] for shard, p in saved["stream_positions"].items()} == {0: 2, 1: 1}

    with pytest.raises(
        ConfigError, match=r"^resume: the stream was cut by 1 processes x 2 workers, this run uses 1 x 3"
    ):
        run(cut, f"resume={cut}", "data.num_workers=3")
    resumed = run(cut, f"resume={cut}")
    assert resumed is not None and full is not None
    assert _trained(cut / "b.jsonl") == _trained(tmp_path / "full" / "b.jsonl")
    assert resumed["val/loss"] == pytest.approx(full["val/loss"], rel=1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("data.packing=false",), r"^data\.packing=false: streaming cuts packed blocks only"),
        (
            ("objective=masked", "objective.whole_word_mask=true"),
            r"^objective\.whole_word_mask=true: not available",
        ),
        (("data.validation_documents=0",), r"^data\.validation_documents=0: must be at least 1"),
        (("data.shuffle_window=0",), r"^data\.shuffle_window=0: must be at least 1"),
    ],
)
def test_settings_streaming_cannot_honour_are_refused_before_training(
    compose_cfg, overrides, message
) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg("data.streaming=true", *overrides), with_libraries=False)


def test_a_stream_no_longer_than_its_validation_head_is_refused(compose_cfg) -> None:
    cfg = compose_cfg("objective=causal", "data.streaming=true", "data.validation_documents=100000")
    datamodule = build_datamodule(cfg, get_class(cfg.objective._target_))
    with pytest.raises(
        ConfigError, match=r"the stream holds \d+ documents, no more than data\.validation_documents"
    ):
        datamodule.setup()


def test_files_and_a_local_hub_folder_stream_their_documents(tmp_path, compose_cfg) -> None:
    """What stream_corpus reads: a .txt file's non-empty lines, its lines that are not UTF-8
    dropped (the cached path drops them too); a folder given to data=hub, through
    datasets.load_dataset(streaming=True), with its text column; max_documents the first."""
    from pretrainlab.data.corpus import stream_corpus

    text = tmp_path / "corpus.txt"
    text.write_bytes("一\n\n二\n".encode() + b"\xff\xfe bad\n" + "三\n".encode())
    cfg = compose_cfg("data.streaming=true", f"data.path={text}")
    assert [d[TEXT] for d in stream_corpus(cfg.data, tmp_path / "hf")] == ["一", "二", "三"]

    folder = tmp_path / "hub"
    folder.mkdir()
    rows = [{"body": f"文档{i}" + ("\ufffd" if i == 1 else ""), "id": i} for i in range(5)]
    (folder / "part.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    hub = compose_cfg("data=hub", f"data.name={folder}", "data.text_column=body", "data.max_documents=3")
    # A replacement character a JSON document holds is text like any other: kept.
    assert [d[TEXT] for d in stream_corpus(hub.data, tmp_path / "hf")] == ["文档0", "文档1\ufffd", "文档2"]
    wrong = compose_cfg("data=hub", f"data.name={folder}", "data.text_column=text")
    with pytest.raises(ConfigError, match=r"^data\.text_column=text: no such column .*\(columns: body, id\)"):
        stream_corpus(wrong.data, tmp_path / "hf")


def test_each_process_restores_and_saves_only_its_own_shards(compose_cfg) -> None:
    """A checkpoint holds every process's shards; each process takes back its own, so what it
    saves next is what it trained, never the others' positions as they were when it resumed
    (rank 0 writes the merge of what every process sends)."""
    from types import SimpleNamespace

    datamodule = _datamodule(compose_cfg, "data.num_workers=2")
    datamodule.trainer = SimpleNamespace(global_rank=1, world_size=2)
    saved = {shard: {**start_position(), "taken": shard} for shard in range(4)}
    datamodule.load_state_dict({"stream_processes": 2, "stream_workers": 2, "stream_positions": saved})
    assert datamodule.positions == {2: saved[2], 3: saved[3]}
    datamodule.on_after_batch_transfer({"input_ids": 0, POSITION: (3, {**start_position(), "taken": 9})}, 0)
    state = datamodule.state_dict()
    assert state["stream_positions"] == {2: saved[2], 3: {**start_position(), "taken": 9}}
    with pytest.raises(ConfigError, match=r"cut by 4 processes x 1 workers, this run uses 2 x 2"):
        datamodule.load_state_dict({"stream_processes": 4, "stream_workers": 1, "stream_positions": saved})


def test_a_loaded_tokenizer_streams_without_a_sample(compose_cfg, tmp_path) -> None:
    """tokenizer=pretrained: the stream's head is the validation split alone; training reads on."""
    trained = _datamodule(compose_cfg)
    trained.tokenizer.save_pretrained(tmp_path / "tok")
    datamodule = _datamodule(compose_cfg, "tokenizer=pretrained", f"tokenizer.pretrained={tmp_path / 'tok'}")
    assert len(datamodule.splits["validation"]) > 0
    assert _take(_stream(datamodule, window=1).blocks(0, start_position()), 3)

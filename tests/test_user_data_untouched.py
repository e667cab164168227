"""A user's data folder is only ever read: training on it twice leaves every byte in place.

The classic pretraining tutorial keeps its corpus as a ``Dataset.save_to_disk`` folder with a
``completion`` column; `datasets` writes ``cache-*.arrow`` files next to a loaded data set's own
files whenever it is filtered or mapped, which used to change the corpus fingerprint between
two reads of one run (and wrote into the user's folder).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import datasets
import pytest
from omegaconf import DictConfig

from conftest import corpus_lines


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path) and the hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _rows() -> list[dict[str, object]]:
    # An empty text among them, so the loader's filter has something to drop.
    texts = [*corpus_lines()[:120], ""]
    return [{"prompt": f"#{i}", "completion": t, "n": i} for i, t in enumerate(texts)]


@pytest.fixture
def save_to_disk_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "tutorial_corpus"
    datasets.Dataset.from_list(_rows()).save_to_disk(str(folder))
    return folder


@pytest.fixture
def hub_like_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "hub_like"
    folder.mkdir()
    lines = [json.dumps(r, ensure_ascii=False) for r in _rows()]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("source", ["files", "hub"])
def test_training_twice_on_a_users_folder_leaves_it_unchanged(
    source: str,
    save_to_disk_folder: Path,
    hub_like_folder: Path,
    compose_cfg: Callable[..., DictConfig],
    run_training: Callable[[DictConfig], dict],
) -> None:
    folder = save_to_disk_folder if source == "files" else hub_like_folder
    where = f"data.path={folder}" if source == "files" else f"data.name={folder}"
    before = snapshot(folder)
    overrides = (
        "objective=causal",
        f"data={source}",
        where,
        "data.text_column=completion",
        "data.val_fraction=0.25",
        "data.block_size=16",
        "trainer.max_steps=1",
        "evaluation.cloze=false",
        "evaluation.continuation=false",
        "evaluation.probe=false",
        "evaluation.generation=false",
    )
    first = run_training(compose_cfg(*overrides))
    assert first["status"] == "ok"
    assert first["data_cache_hit"] is False
    assert snapshot(folder) == before
    second = run_training(compose_cfg(*overrides))
    assert second["data_cache_hit"] is True
    assert second["val/loss"] == pytest.approx(first["val/loss"], rel=1e-5)
    assert snapshot(folder) == before


def test_caches_that_datasets_wrote_into_a_folder_do_not_change_its_fingerprint(
    save_to_disk_folder: Path,
) -> None:
    """A user's own `datasets` code may leave ``cache-*.arrow`` files in the folder; they are
    not the corpus, so they must not send a run to another cache entry."""
    from omegaconf import OmegaConf

    from pretrainlab.data.corpus import corpus_fingerprint

    data = OmegaConf.create({"source": "files", "path": str(save_to_disk_folder)})
    before = corpus_fingerprint(data)
    loaded = datasets.load_from_disk(str(save_to_disk_folder))
    loaded.filter(lambda row: row["n"] % 2 == 0)  # writes cache-<fingerprint>.arrow beside the data
    assert any(p.name.startswith("cache-") for p in save_to_disk_folder.iterdir())
    assert corpus_fingerprint(data) == before
    (save_to_disk_folder / "data-00000-of-00001.arrow").write_bytes(b"changed")
    assert corpus_fingerprint(data) != before

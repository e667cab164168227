"""Data preparation against its floor: corpus -> tokenizer -> tokenized documents -> packed blocks.

    python -m benchmarks.prep                      # 20 MB and 200 MB corpora
    python -m benchmarks.prep --sizes 20 --out benchmarks/results/prep-2core-cpu.json

For each size a JSON-lines corpus of that many MB is made from the built-in corpus (its
paragraphs repeated in order, UTF-8, one ``{"text": ...}`` a line: no download), then, each in a
new process, one after the other:

* **preparation**: ``PretrainDataModule.prepare_data()`` with ``data=files`` and the default
  settings (``objective=causal``, a trained tokenizer, blocks of 128) into an empty cache, as a
  run with a cold cache does it (``TOKENIZERS_PARALLELISM=false``, as ``pretrainlab-train``
  sets it). Its seconds exclude imports; its peak RSS is the process's (``ru_maxrss``, memory-
  mapped pages included), and the tokenizing workers' largest is reported beside it.
* **floor**: the same corpus encoded with the tokenizer the preparation trained, in one
  process and one thread: read the lines, ``json.loads``, ``tokenizer(batch)`` per 1000 documents,
  nothing else. What preparation costs on top of that is its overhead; ratio = preparation / floor.

The last printed line is one JSON object (the rows, the cores, the load averages seen).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BATCH = 1000
TARGET_RATIO_2_CORES, TARGET_RATIO_4_CORES = 1.5, 1.0


def make_corpus(path: Path, megabytes: float) -> int:
    """Write at least ``megabytes`` MB (10^6 bytes) of the built-in corpus's paragraphs, repeated
    in order, as JSON lines; returns the number of documents written."""
    from pretrainlab.data.corpus import load_sample_zh

    lines = [json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in load_sample_zh()["text"]]
    target, written, count = megabytes * 1e6, 0, 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        while written < target:
            line = lines[count % len(lines)]
            f.write(line)
            written += len(line.encode("utf-8"))
            count += 1
    return count


def _child(args: list[str]) -> dict[str, Any]:
    """Run one measurement in a new Python process; its last stdout line is its JSON result."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.prep", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],  # the repository: `benchmarks` importable
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmarks.prep {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cpu_s() -> float:
    """CPU seconds of this process and its waited-for children (the tokenizing workers)."""
    return sum(
        u.ru_utime + u.ru_stime
        for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )


def _peak_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


class RssSampler:
    """Peaks of this process's anonymous and file-backed resident memory (``/proc/self/status``
    every 20 ms): the peak RSS counts the pages of memory-mapped Arrow files read, which the
    kernel can drop at any time, beside the memory the preparation really holds."""

    FIELDS = ("RssAnon", "RssFile")

    def __init__(self) -> None:
        self.peaks = dict.fromkeys(self.FIELDS, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with open("/proc/self/status", encoding="ascii") as f:
                    for line in f:
                        key, _, value = line.partition(":")
                        if key in self.peaks:
                            self.peaks[key] = max(self.peaks[key], int(value.split()[0]))
            except OSError:  # not Linux: no breakdown
                return
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure_prep(corpus: Path, cache: Path, extra: list[str]) -> dict[str, Any]:
    """Cold preparation in this process (called in the child)."""
    from hydra import compose, initialize_config_dir

    import pretrainlab.train  # noqa: F401 - sets TOKENIZERS_PARALLELISM as a run does
    from pretrainlab import config_dir
    from pretrainlab.data import packing
    from pretrainlab.data.datamodule import PretrainDataModule

    overrides = ["data=files", f"data.path={corpus}", "objective=causal", *extra]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    shutil.rmtree(cache, ignore_errors=True)
    dm = PretrainDataModule(cfg.data, cfg.tokenizer, "causal", cache)
    before = _peak_mib(resource.RUSAGE_SELF)
    with RssSampler() as rss:
        started, cpu = time.perf_counter(), _cpu_s()
        dm.prepare_data()
        seconds, cpu = time.perf_counter() - started, _cpu_s() - cpu
    import datasets

    docs = datasets.load_from_disk(str(dm.tokenizer_dir / "docs"))
    return {
        "prep_s": seconds,
        # CPU seconds per second: how many cores the preparation actually got (a shared machine
        # may give its processes less than the cores they could use).
        "prep_cores_used": cpu / seconds,
        "documents": sum(len(docs[name]) for name in docs),
        "tokens": sum(packing.count_tokens(docs[name]) for name in docs),
        "train_documents": len(docs["train"]),
        "num_proc": dm.num_proc(len(docs["train"])),
        "peak_rss_mib": _peak_mib(resource.RUSAGE_SELF),
        "peak_rss_workers_mib": _peak_mib(resource.RUSAGE_CHILDREN),
        "rss_before_mib": before,  # after the imports: torch, Lightning, transformers, datasets
        "peak_rss_anon_mib": rss.peaks["RssAnon"] / 1024,
        "peak_rss_file_mib": rss.peaks["RssFile"] / 1024,
        "tokenizer": str(dm.tokenizer_dir / "docs" / "tokenizer"),
    }


def measure_floor(corpus: Path, tokenizer_dir: str) -> dict[str, Any]:
    """Read and encode every document in one process and one thread (called in the child)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokens = documents = 0
    started, cpu = time.perf_counter(), _cpu_s()
    with corpus.open(encoding="utf-8") as f:
        batch: list[str] = []
        for line in f:
            batch.append(json.loads(line)["text"])
            if len(batch) == BATCH:
                tokens += sum(map(len, tok(batch, add_special_tokens=False)["input_ids"]))
                documents += len(batch)
                batch = []
        if batch:
            tokens += sum(map(len, tok(batch, add_special_tokens=False)["input_ids"]))
            documents += len(batch)
    seconds = time.perf_counter() - started
    return {
        "floor_s": seconds,
        "floor_cores_used": (_cpu_s() - cpu) / seconds,
        "floor_tokens": tokens,
        "floor_documents": documents,
    }


def run_size(megabytes: float, work: Path, extra: list[str]) -> dict[str, Any]:
    """One row: make (or reuse) the corpus, prepare it cold, measure the floor."""
    corpus = work / f"corpus-{megabytes:g}MB.jsonl"
    documents = make_corpus(corpus, megabytes)
    load_before = os.getloadavg()[0]
    prep = _child(
        ["--child", "prep", "--corpus", str(corpus), "--cache", str(work / "cache"), *_extra(extra)]
    )
    floor = _child(["--child", "floor", "--corpus", str(corpus), "--tokenizer", prep.pop("tokenizer")])
    shutil.rmtree(work / "cache", ignore_errors=True)
    size_mb = corpus.stat().st_size / 1e6
    row = {
        "size_mb": round(size_mb, 2),
        "documents": documents,
        **prep,
        **floor,
        "ratio": prep["prep_s"] / floor["floor_s"],
        "prep_s_per_mb": prep["prep_s"] / size_mb,
        "load_avg_1min": [load_before, os.getloadavg()[0]],
    }
    if prep["documents"] != documents or prep["tokens"] != floor["floor_tokens"] + documents:
        raise RuntimeError(f"preparation and floor saw different work: {row}")  # + one eos a document
    return row


def _extra(extra: list[str]) -> list[str]:
    return [f"--set={o}" for o in extra]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the options, run every size, print the table and the JSON line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="20,200", help="corpus sizes in MB, comma-separated")
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for corpora and caches (default: temp)"
    )
    parser.add_argument("--set", action="append", default=[], help="a config override for the preparation")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON result to this file")
    parser.add_argument("--child", choices=["prep", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "prep":
        result = measure_prep(args.corpus, args.cache, args.set)
        print(json.dumps(result))
        return result
    if args.child == "floor":
        result = measure_floor(args.corpus, args.tokenizer)
        print(json.dumps(result))
        return result

    from pretrainlab.data.packing import usable_cores

    work = args.work or Path(tempfile.mkdtemp(prefix="pretrainlab-prep-"))
    cores = usable_cores()
    print(f"data preparation vs one-process floor: {cores} usable cores, load {os.getloadavg()}", flush=True)
    header = (
        "size MB | documents | tokens | procs | prep s (cores used) | floor s | ratio | s/MB | "
        "peak RSS MiB (anon / file) | workers MiB"
    )
    print(header + "\n" + "-" * len(header), flush=True)
    rows = []
    for size in (float(s) for s in args.sizes.split(",")):
        row = run_size(size, work, args.set)
        rows.append(row)
        print(
            f"{row['size_mb']:7.1f} | {row['documents']:9,d} | {row['tokens']:11,d} | {row['num_proc']:5d} | "
            f"{row['prep_s']:6.1f} ({row['prep_cores_used']:.2f}) | "
            f"{row['floor_s']:7.1f} | {row['ratio']:5.2f} | "
            f"{row['prep_s_per_mb']:5.2f} | "
            f"{row['peak_rss_mib']:6,.0f} "
            f"({row['peak_rss_anon_mib']:,.0f} / {row['peak_rss_file_mib']:,.0f}) | "
            f"{row['peak_rss_workers_mib']:11,.0f}",
            flush=True,
        )
    target = TARGET_RATIO_4_CORES if cores >= 4 else TARGET_RATIO_2_CORES
    result: dict[str, Any] = {
        "benchmark": "prep",
        "cores": cores,
        "target_ratio": target,
        "overrides": args.set,
        "sizes": rows,
    }
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        result["rss_growth"] = large["peak_rss_mib"] / small["peak_rss_mib"]
        result["s_per_mb_growth"] = large["prep_s_per_mb"] / small["prep_s_per_mb"]
        print(
            f"largest/smallest: {large['size_mb'] / small['size_mb']:.1f}x the corpus, "
            f"{result['rss_growth']:.2f}x the peak RSS (target < 2), "
            f"{result['s_per_mb_growth']:.2f}x the seconds per MB (target ~1); ratio target <= {target}"
        )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

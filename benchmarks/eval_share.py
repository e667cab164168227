"""The end-of-run evaluation's share of a run's wall time, per objective and per stage.

    python -m benchmarks.eval_share                      # masked, causal, seq2seq, prefix in turn
    python -m benchmarks.eval_share causal --threads 2   # one objective
    python -m benchmarks.eval_share prefix --set evaluation.finetune.enabled=true   # with fine-tuning

Each objective is one plain training run, as a user starts it (``pretrainlab-train
objective=<o> model=tiny trainer.max_steps=200 logger=csv``, the other settings at their
defaults), in its own process with ``OMP_NUM_THREADS`` threads, one after another. Every ratio
is measured inside one run: the seconds of each evaluation stage (``metrics.json``'s
``eval/<stage>_s``, timed by the evaluation itself), their sum, the training seconds
(``tokens_seen / train/tokens_per_s``: optimizer steps only) and the process's wall time from
start to exit. The evaluation's share is its sum over the process's wall time; the target is at
most 25% at ``model=tiny`` on 2 cores.

On a machine shared with other jobs the seconds move with the load (a busy core stretches
training and evaluation alike, so the share moves less than the seconds): compare shares of one
invocation, and run it again before reading a difference. The data cache is used as the run
finds it (``data_cache_hit`` says whether it was warm: a cold one adds tokenizer training and
tokenization to the wall time, not to the evaluation). The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

OBJECTIVES = ("masked", "causal", "seq2seq", "prefix")
STAGES = ("cloze", "continuation", "probe", "finetune", "generation")
TARGET_SHARE = 0.25


def train_command() -> list[str]:
    """``pretrainlab-train`` as installed, or the module it runs."""
    exe = shutil.which("pretrainlab-train")
    return [exe] if exe else [sys.executable, "-m", "pretrainlab.train"]


def measure(objective: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One run of ``objective``: its stage seconds, training seconds and wall time."""
    run_dir = folder / objective
    overrides = [
        f"objective={objective}",
        f"model={args.model}",
        f"trainer.max_steps={args.steps}",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
        *args.set,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    started = time.perf_counter()
    done = subprocess.run([*train_command(), *overrides], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    (folder / f"{objective}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"objective={objective}: the run failed ({done.returncode}): " + " | ".join(tail))
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    stages = {s: metrics[f"eval/{s}_s"] for s in STAGES if f"eval/{s}_s" in metrics}
    evaluation = sum(stages.values())
    rate = metrics.get("train/tokens_per_s")
    train = metrics["tokens_seen"] / rate if rate else None
    return {
        "objective": objective,
        "overrides": [o for o in overrides if not o.startswith("hydra.run.dir=")],
        "stages_s": stages,
        "eval_s": evaluation,
        "train_s": train,
        "run_s": metrics.get("wall_time_s"),  # inside the process, from config to metrics.json
        "wall_s": wall,  # the whole process, imports and exit included
        "eval_share": evaluation / wall,
        "eval_over_train": evaluation / train if train else None,
        "data_cache_hit": metrics.get("data_cache_hit"),
        "status": metrics.get("status"),
    }


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per objective, seconds per stage, the evaluation's share of the wall time."""
    head = ["objective", "train s", *(f"{s} s" for s in STAGES), "eval s", "wall s", "eval share", "cache"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for r in results:
        cells = [
            r["objective"],
            _seconds(r["train_s"]),
            *(_seconds(r["stages_s"].get(s)) for s in STAGES),
            _seconds(r["eval_s"]),
            _seconds(r["wall_s"]),
            f"{100 * r['eval_share']:.1f}%",
            "warm" if r["data_cache_hit"] else "cold",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run each objective in turn, print the table, and end with one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "objectives", nargs="*", help=f"any of {', '.join(OBJECTIVES)} (default: all, in turn)"
    )
    parser.add_argument("--steps", type=int, default=200, help="trainer.max_steps (default 200)")
    parser.add_argument("--model", default="tiny", help="model size (default tiny)")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each run (default 2)")
    parser.add_argument(
        "--set", action="append", default=[], help="another override, e.g. seed=7 (repeatable)"
    )
    parser.add_argument("--keep", type=Path, help="write the run folders here (default: a temporary folder)")
    args = parser.parse_args(argv)
    objectives = args.objectives or list(OBJECTIVES)
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        parser.error(f"{unknown[0]}: not an objective (choose from {', '.join(OBJECTIVES)})")
    results = []
    with tempfile.TemporaryDirectory(prefix="eval-share-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for objective in objectives:
            print(f"# objective={objective}", file=sys.stderr, flush=True)
            results.append(measure(objective, args, folder))
            r = results[-1]
            print(
                f"# {objective}: evaluation {r['eval_s']:.1f} s of {r['wall_s']:.1f} s "
                f"({100 * r['eval_share']:.1f}%)",
                file=sys.stderr,
                flush=True,
            )
    print(table(results))
    summary = {
        "eval_share": {r["objective"]: r["eval_share"] for r in results},
        "within_target": {r["objective"]: r["eval_share"] <= TARGET_SHARE for r in results},
        "target_share": TARGET_SHARE,
        "results": results,
        "settings": {"steps": args.steps, "model": args.model, "threads": args.threads, "set": args.set},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

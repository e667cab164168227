"""The output layer's memory: dense logits against ``objective.loss_chunk_tokens`` chunks.

    python -m benchmarks.chunked_loss                        # 4096 tokens, hidden 512, vocabulary 32000
    python -m benchmarks.chunked_loss --tokens 8192 --chunks 512,2048 --out benchmarks/results/x.json

One training step of the output layer alone (linear + cross-entropy, forward and backward, fp32)
on random hidden states, as a causal model's last layer runs it: tokens x hidden states into a
vocabulary. Each variant runs in a new process, one after the other, so its peak resident memory
(``ru_maxrss``) is its own; the figure is the peak above what the process held once its inputs
were made and a step on 8 tokens had warmed the libraries up (the memory the step itself
needed). Seconds are the median of 3 steps. The dense
variant is transformers' way (``F.linear`` then ``F.cross_entropy`` over all logits); the
chunked ones are ``models/chunked_loss.py``. Losses must agree (the run stops otherwise).

The last printed line is one JSON object (the rows, the machine's cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _measure(tokens: int, hidden: int, vocab: int, chunk: int | None) -> dict[str, Any]:
    """One variant in this process: the peak memory above its inputs, the seconds per step."""
    import torch
    import torch.nn.functional as F

    from pretrainlab.models.chunked_loss import chunked_linear_cross_entropy

    torch.manual_seed(0)
    states = torch.randn(tokens, hidden, requires_grad=True)
    weight = (torch.randn(vocab, hidden) * hidden**-0.5).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,))
    labels[::7] = -100  # some positions carry no loss, as padding does
    # Warm-up on 8 tokens: the libraries' lazily made buffers and threads are not the step's.
    F.cross_entropy(F.linear(states[:8], weight), labels[:8]).backward()
    chunked_linear_cross_entropy(states[:8], weight, None, labels[:8], 4).backward()
    base = _resident_mib()
    seconds, loss = [], None
    for _ in range(3):
        states.grad = weight.grad = None
        start = time.perf_counter()
        if chunk is None:
            loss = F.cross_entropy(F.linear(states, weight), labels, ignore_index=-100)
        else:
            loss = chunked_linear_cross_entropy(states, weight, None, labels, chunk)
        loss.backward()
        seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "variant": "dense" if chunk is None else f"chunk {chunk}",
        "chunk": chunk,
        "loss": float(loss),
        "step_s": statistics.median(seconds),
        "peak_above_inputs_mib": round(peak - base, 1),
    }


def main(argv: list[str] | None = None) -> None:
    """Run every variant in its own process and print the table, then one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--chunks", default="256,1024")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one variant
    args = parser.parse_args(argv)
    if args.one is not None:
        chunk = None if args.one == "dense" else int(args.one)
        print(json.dumps(_measure(args.tokens, args.hidden, args.vocab, chunk)))
        return
    shape = ["--tokens", str(args.tokens), "--hidden", str(args.hidden), "--vocab", str(args.vocab)]
    rows = []
    for variant in ["dense", *args.chunks.split(",")]:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.chunked_loss", *shape, "--one", variant],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        row = rows[-1]
        memory, seconds = row["peak_above_inputs_mib"], row["step_s"]
        print(f"{row['variant']:>11}: {memory:8.1f} MiB above inputs, {seconds:.2f} s/step")
    dense = rows[0]
    for row in rows:
        if abs(row["loss"] - dense["loss"]) > 1e-4 * abs(dense["loss"]):
            raise SystemExit(f"{row['variant']}: loss {row['loss']} differs from the dense {dense['loss']}")
        row["memory_vs_dense"] = round(row["peak_above_inputs_mib"] / dense["peak_above_inputs_mib"], 3)
        row["time_vs_dense"] = round(row["step_s"] / dense["step_s"], 3)
    logits_mib = args.tokens * args.vocab * 4 / 2**20
    print(f"(one fp32 copy of the dense logits: {logits_mib:.0f} MiB)")
    result = {
        "tokens": args.tokens,
        "hidden": args.hidden,
        "vocab": args.vocab,
        "logits_mib": round(logits_mib, 1),
        "cores": len(os.sched_getaffinity(0)),
        "rows": rows,
    }
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

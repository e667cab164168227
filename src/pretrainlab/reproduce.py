"""``pretrainlab-reproduce RUN_DIR [--check]``: rerun a job from the config it saved.

The rerun reads ``RUN_DIR/.hydra/config.yaml`` — the resolved job config, seed included —
not today's ``conf/``, so a later change to a default cannot change what is reproduced.
With ``--check`` the new ``metrics.json`` is compared with the old one.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

# Measurements of the machine, not of the model: they differ between any two runs.
UNREPRODUCIBLE = ("wall_time_s", "train/tokens_per_s", "best_checkpoint", "data_cache_hit")


def compare_metrics(old: dict[str, Any], new: dict[str, Any], rtol: float = 0.0) -> list[str]:
    """One line per metric that differs by more than ``rtol`` (relative); empty when they agree."""
    problems = []
    for key in sorted(set(old) | set(new)):
        if key in UNREPRODUCIBLE:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
            if not math.isclose(a, b, rel_tol=rtol, abs_tol=0.0):
                problems.append(f"{key}: {a!r} -> {b!r}")
        elif a != b:
            problems.append(f"{key}: {a!r} -> {b!r}")
    return problems


def rerun(run_dir: Path, out: Path) -> int:
    """Run ``pretrainlab.train`` on the saved config into ``out``; returns its exit status."""
    command = [
        sys.executable,
        "-m",
        "pretrainlab.train",
        "--config-path",
        str((run_dir / ".hydra").resolve()),
        "--config-name",
        "config",
        f"hydra.run.dir={out}",
    ]
    return subprocess.run(command, check=False).returncode


def main(argv: list[str] | None = None) -> None:
    """Rerun a finished job from its saved config into a new folder, optionally checking metrics."""
    parser = argparse.ArgumentParser(prog="pretrainlab-reproduce", description=main.__doc__)
    parser.add_argument("run_dir", type=Path, help="a run folder (holds .hydra/config.yaml)")
    parser.add_argument("--out", type=Path, help="where the rerun goes (default: RUN_DIR-reproduced-<time>)")
    parser.add_argument("--check", action="store_true", help="compare metrics.json; exit 1 on any difference")
    parser.add_argument(
        "--rtol",
        type=float,
        default=0.0,
        help="relative tolerance for --check (default 0: CPU runs repeat exactly)",
    )
    args = parser.parse_args(argv)

    saved = args.run_dir / ".hydra" / "config.yaml"
    if not saved.exists():
        sys.exit(f"error: {args.run_dir}: not a run folder (no .hydra/config.yaml)")
    old_metrics = args.run_dir / "metrics.json"
    if args.check and not old_metrics.exists():
        sys.exit(f"error: {old_metrics}: missing, nothing to check against")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or args.run_dir.with_name(f"{args.run_dir.name}-reproduced-{stamp}")
    if out.exists():
        sys.exit(f"error: --out={out}: already exists; choose a new folder")

    status = rerun(args.run_dir, out)
    if status != 0:
        sys.exit(f"error: the rerun into {out} failed (exit status {status})")
    print(f"reproduced into {out}")
    if not args.check:
        return
    problems = compare_metrics(
        json.loads(old_metrics.read_text(encoding="utf-8")),
        json.loads((out / "metrics.json").read_text(encoding="utf-8")),
        args.rtol,
    )
    if problems:
        print(f"error: {len(problems)} metrics differ (rtol={args.rtol}):", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        sys.exit(1)
    print(f"check passed: every metric equal within rtol={args.rtol} (timings excluded)")


if __name__ == "__main__":
    main()

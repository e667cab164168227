"""``pretrainlab-reproduce RUN_DIR [--check]``: rerun a job from the config it saved.

The rerun reads ``RUN_DIR/.hydra/config.yaml`` — the resolved job config, seed included —
not today's ``conf/``, so a later change to a default cannot change what is reproduced.
With ``--check`` the new ``metrics.json`` is compared with the old one.

Run folders get shared, and Hydra calls whatever a config's ``_target_`` names: the saved config
is checked against an allow-list (``trusted_targets``) before anything runs, and the training
process reads the checked bytes from a private folder, not the run folder's ``.hydra/`` (where
other YAML files could be picked up).

The rerun's ``.hydra/overrides.yaml`` (and so its W&B name) records the original's overrides,
though they are not applied again: the saved config already holds their effect, and applied to
it they would fail (``objective=causal`` names a group the saved config has no defaults for) or
change it. By default the rerun goes to ``reproduced/`` beside the run folder, where
``pretrainlab-compare`` does not look for jobs, and it holds ``RERUN_MARKER`` (where it came
from), so that compare does not count it as a job of a sweep wherever ``--out`` puts it.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, read_write

from pretrainlab.trusted_targets import UntrustedConfigError, require_trusted_file

# Measurements of the machine, not of the model: they differ between any two runs.
UNREPRODUCIBLE = ("wall_time_s", "train/tokens_per_s", "best_checkpoint", "data_cache_hit")
# Written into a rerun's folder before it starts: where it was reproduced from. pretrainlab-compare
# does not count a folder holding it as a job of a sweep.
RERUN_MARKER = "reproduced_from.json"


def is_timing(key: str) -> bool:
    """Seconds of an evaluation stage (``eval/<stage>_s``): a measurement of the machine."""
    return key.startswith("eval/") and key.endswith("_s")


def compare_metrics(old: dict[str, Any], new: dict[str, Any], rtol: float = 0.0) -> list[str]:
    """One line per metric that differs by more than ``rtol`` (relative); empty when they agree."""
    problems = []
    for key in sorted(set(old) | set(new)):
        if key in UNREPRODUCIBLE or is_timing(key):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
            if not math.isclose(a, b, rel_tol=rtol, abs_tol=0.0):
                problems.append(f"{key}: {a!r} -> {b!r}")
        elif a != b:
            problems.append(f"{key}: {a!r} -> {b!r}")
    return problems


def default_out(run_dir: Path, stamp: str) -> Path:
    """``reproduced/<run>-<stamp>`` beside the run folder.

    Not beside the run itself: in a sweep folder a sibling holding ``.hydra/`` is read by
    ``pretrainlab-compare`` as one more job, whose row would repeat (or, with the same overrides,
    be averaged into) the job it reproduces. compare does not look inside ``reproduced/``.
    """
    run_dir = run_dir.resolve()  # `pretrainlab-reproduce .` has no name to go by
    return run_dir.parent / "reproduced" / f"{run_dir.name}-{stamp}"


def original_overrides(run_dir: Path) -> list[str]:
    """The run's task overrides (``.hydra/overrides.yaml``), for the rerun's records; [] if none.

    A ``resume=...`` entry is left out: the rerun starts afresh (``resume=null``), and an
    overrides.yaml that said otherwise would resume when someone repeats it.
    """
    try:
        items = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []
    if not isinstance(items, list):
        return []
    return [str(o) for o in items if isinstance(o, str | int | float) and not str(o).startswith("resume=")]


class RecordOverrides(Callback):
    """Hydra callback of the rerun: its recorded task overrides become the original run's.

    ``on_run_start`` runs before Hydra writes ``.hydra/overrides.yaml`` and before the task reads
    ``HydraConfig`` (the W&B run name), and only replaces the record: what the job composes was
    settled when the saved config was loaded, so nothing trained changes.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Swap ``hydra.overrides.task`` for the list in ``path`` (written by :func:`rerun`)."""
        overrides = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        with read_write(config.hydra.overrides):
            config.hydra.overrides.task = [str(o) for o in overrides]


def rerun(run_dir: Path, out: Path, config_text: str | None = None) -> int:
    """Run ``pretrainlab-train`` on the saved config into ``out``; returns its exit status.

    ``config_text`` is the config as checked (default: read and checked here); it is the only
    file in the config folder the training process gets, so nothing else of the run folder
    reaches Hydra. The original's overrides (``original_overrides``) are recorded, not applied.
    """
    if config_text is None:
        config_text = require_trusted_file(run_dir / ".hydra" / "config.yaml")
    with tempfile.TemporaryDirectory(prefix="pretrainlab-reproduce-") as private:
        config_path = Path(private) / "config"
        config_path.mkdir()
        (config_path / "config.yaml").write_text(config_text, encoding="utf-8")
        overrides_file = Path(private) / "overrides.yaml"
        overrides_file.write_text(yaml.safe_dump(original_overrides(run_dir)), encoding="utf-8")
        command = [
            sys.executable,
            "-m",
            "pretrainlab.commands",  # pretrainlab-train's entry point
            "--config-path",
            str(config_path),
            "--config-name",
            "config",
            f"hydra.run.dir={out}",
            "+hydra.callbacks.record_overrides._target_=pretrainlab.reproduce.RecordOverrides",
            f"+hydra.callbacks.record_overrides.path={overrides_file}",
            # A run that was itself resumed saved `resume: <its folder>`: the rerun starts afresh.
            "resume=null",
        ]
        return subprocess.run(command, check=False).returncode


def mark_rerun(out: Path, run_dir: Path) -> None:
    """Create ``out`` holding ``RERUN_MARKER`` (the run it reproduces), before the rerun starts,
    so that a rerun still running, or killed, is not taken for a job of a sweep either."""
    out.mkdir(parents=True)
    marker = {"run_dir": str(run_dir.resolve()), "started": datetime.now().isoformat(timespec="seconds")}
    (out / RERUN_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Rerun a finished job from its saved config into a new folder, optionally checking metrics."""
    parser = argparse.ArgumentParser(prog="pretrainlab-reproduce", description=main.__doc__)
    parser.add_argument("run_dir", type=Path, help="a run folder (holds .hydra/config.yaml)")
    parser.add_argument(
        "--out",
        type=Path,
        help="where the rerun goes (default: reproduced/<RUN_DIR name>-<time> beside RUN_DIR)",
    )
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
    try:  # before anything is imported or run: the folder may come from anyone
        config_text = require_trusted_file(saved)
    except UntrustedConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or default_out(args.run_dir, stamp)
    if out.exists():
        sys.exit(f"error: --out={out}: already exists; choose a new folder")
    try:
        mark_rerun(out, args.run_dir)
    except OSError as err:
        sys.exit(f"error: --out={out}: cannot be created ({err.strerror or type(err).__name__})")

    status = rerun(args.run_dir, out, config_text)
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

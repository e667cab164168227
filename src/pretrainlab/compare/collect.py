"""Reading a sweep folder: its jobs, the combinations our sweeper skipped, and what each job wrote.

The lowest layer of ``pretrainlab-compare``: everything above works on the rows built here, so
the run/sweep folder contract (metrics.json, .hydra/, curve.csv, eval_items.jsonl, sweep.json)
is read in this one place.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from pretrainlab.evaluation.items import ItemScores, read_items
from pretrainlab.reproduce import RERUN_MARKER

Row = dict[str, Any]

# Config keys the report reads; the run's effective values, whatever the overrides said.
CONFIG_KEYS = (
    "objective.name",
    "objective.mask_probability",
    "model.name",
    "model.n_layers",
    "model.hidden_size",
    "decoding.name",
    "seed",
    "data.block_size",
    "baseline",
)
ERROR_WIDTH = 80
# Bookkeeping keys of metrics.json shown for every job, before the metrics.
FIXED = ("params", "tokens_seen", "wall_time_s")

# Marks "key not there", where None would mean a null value.
ABSENT = object()
# A run's evaluations with other decodings (``pretrainlab-eval RUN decoding=...``), one folder each.
EVAL_DIR = "eval"
# metrics.json keys that depend on the decoding, besides gen/*.
DECODING_METRICS = ("decoding", "decoding_settings", "eval/generation_s")


class CompareError(ValueError):
    """Input that cannot give a report; the command prints it as one ``error:`` line."""


def collect(sweep_dir: str | Path) -> list[Row]:
    """One row per job folder and per skipped combination, in launch order.

    Each row: ``dir`` (job folder name, None when skipped), ``status`` (ok, failed, missing,
    skipped), ``overrides`` (key -> value), ``metrics`` (metrics.json as written), ``curve``
    ((step, tokens, loss) tuples), ``error`` (first line, or None), ``config`` (the
    ``CONFIG_KEYS`` found in .hydra/config.yaml), ``items`` (metric -> per-item scores from
    eval_items.jsonl; {} for runs written before it existed), ``duplicate_of`` and ``reason``
    (skipped rows), ``covers`` (the overrides of the skipped combinations a job's row stands for),
    ``eval_of`` and ``evaluation`` (see below; None for a job's own row).

    Each finished job's ``eval/<overrides>/`` folder (``pretrainlab-eval RUN decoding=...``: the
    same model, evaluated with another decoding) is one more row right after the job's: its
    ``dir`` is ``<job>/eval/<folder>``, ``eval_of`` the job, ``evaluation`` the folder name, its
    overrides the job's with the decoding ones replaced by the folder's (``decoding`` is then
    the folder's strategy), its metrics the job's decoding-independent ones (validation,
    cloze, probe, ...) with the folder's generation metrics and ``decoding``, the job's
    per-item scores, and no curve (the job's row draws it).

    A combination our sweeper ``evaluated`` on another job's model (it differs only in
    ``decoding``: one model, trained once) is that job's ``eval/decoding=<option>`` row; a row
    of its own, ``missing``, only when that folder was not written.

    A skipped combination whose job ran with exactly the combination's cleaned overrides (its
    ``launch`` in sweep.json: without the settings its objective ignores) is that job: it is
    folded into the job's row (``covers``) instead of being listed again. It keeps a row of its
    own when the job ran with other values (a sweep from before the sweeper launched cleaned
    overrides) or left no overrides.yaml.
    """
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise CompareError(f"{sweep}: no such folder")
    plan = _read_plan(sweep)
    job_dirs = _job_dirs(sweep)
    if plan is None and not job_dirs:
        what = "a single run folder" if (sweep / ".hydra").is_dir() else "not a sweep folder"
        raise CompareError(f"{sweep}: {what} (no job folders and no sweep.json)")
    rows: list[Row] = []
    listed: dict[str, Row] = {}
    for entry in plan or []:
        if entry.get("status") == "evaluated":
            # Trained once: its row is the eval/ folder of the job that trained the model.
            job = listed.get(str(entry.get("evaluated_in")))
            name = f"{job['dir']}/{EVAL_DIR}/{entry.get('evaluation')}" if job is not None else None
            if not any(row["dir"] == name for row in rows):
                rows.append(_not_evaluated_row(entry, name))
            continue
        if entry.get("dir") is None:
            covering = listed.get(str(entry.get("duplicate_of")))
            if covering is not None and entry.get("evaluation"):  # a duplicate of an eval/ row
                name = f"{covering['dir']}/{EVAL_DIR}/{entry['evaluation']}"
                covering = next((row for row in rows if row["dir"] == name), None)
            launch = entry.get("launch")
            if (
                covering is not None
                and isinstance(launch, list)
                and parse_overrides(launch) == covering["overrides"]
            ):
                covering["covers"].append(parse_overrides(entry.get("overrides") or []))
            else:
                rows.append(_skipped_row(entry))
            continue
        name = str(entry["dir"])
        listed[name] = _job_row(sweep / name, parse_overrides(entry.get("overrides") or []))
        rows.append(listed[name])
        rows.extend(_eval_rows(listed[name], sweep / name))
    for path in job_dirs:
        if path.name not in listed:
            rows.append(_job_row(path, {}))
            rows.extend(_eval_rows(rows[-1], path))
    return rows


def _read_plan(sweep: Path) -> list[dict[str, Any]] | None:
    """sweep.json's job list, or None when the sweep was not run by our sweeper."""
    file = sweep / "sweep.json"
    if not file.is_file():
        return None
    try:
        jobs = json.loads(file.read_text(encoding="utf-8")).get("jobs")
    except (OSError, ValueError, AttributeError) as err:
        raise CompareError(f"{file}: not a readable sweep.json ({err})") from err
    if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
        raise CompareError(f"{file}: 'jobs' must be a list of objects")
    return jobs


def _job_dirs(sweep: Path) -> list[Path]:
    """Hydra names job folders by number; any folder holding .hydra/ is a job too.

    Except, in a sweep folder, a ``pretrainlab-reproduce`` rerun (it holds ``RERUN_MARKER``): it
    repeats one of the jobs, and counted as a job it would be merged with it like another seed.
    """
    in_sweep = (sweep / "sweep.json").is_file() or (sweep / "multirun.yaml").is_file()
    found = [
        p
        for p in sweep.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and (p.name.isdigit() or (p / ".hydra").is_dir())
        and not (in_sweep and (p / RERUN_MARKER).is_file())
    ]
    return sorted(found, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))


def _skipped_row(entry: dict[str, Any]) -> Row:
    """A combination the sweeper did not train because an earlier job covers it."""
    return {
        "dir": None,
        "status": str(entry.get("status") or "skipped"),
        "overrides": parse_overrides(entry.get("overrides") or []),
        "metrics": {},
        "curve": [],
        "error": None,
        "config": {},
        "items": {},
        "duplicate_of": None if entry.get("duplicate_of") is None else str(entry["duplicate_of"]),
        "reason": entry.get("reason"),
        "covers": [],
        "eval_of": None,
        "evaluation": None,
    }


def _not_evaluated_row(entry: dict[str, Any], folder: str | None) -> Row:
    """A combination to be evaluated on another job's model whose ``eval/`` folder is not there
    (that job failed, or still runs)."""
    row = _skipped_row(entry)
    where = folder or f"job {entry.get('evaluated_in')}"
    row.update(status="missing", error=f"{where}: not written (its job failed or is still running)")
    return row


def _job_row(path: Path, planned: dict[str, Any]) -> Row:
    """What one job folder says; the overrides it ran with win over the ones planned."""
    metrics, status, error = _read_metrics(path)
    overrides = _read_overrides(path)
    return {
        "dir": path.name,
        "status": status,
        "overrides": planned if overrides is None else overrides,
        "metrics": metrics,
        "curve": _read_curve(path / "curve.csv"),
        "error": error,
        "config": _read_config(path),
        "items": _read_items(path) if status == "ok" else {},
        "duplicate_of": None,
        "reason": None,
        "covers": [],
        "eval_of": None,
        "evaluation": None,
    }


def _eval_rows(job: Row, path: Path) -> list[Row]:
    """A row per evaluation folder of a finished job (``EVAL_DIR/*/metrics.json``), by name."""
    folder = path / EVAL_DIR
    if job["status"] != "ok" or not folder.is_dir():
        return []
    found = sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / "metrics.json").exists()
    )
    return [_eval_row(job, p) for p in found]


def is_decoding_key(key: str) -> bool:
    """An override of the decoding (the group or one of its fields)."""
    return key == "decoding" or key.startswith("decoding.")


def decoding_dependent(key: str) -> bool:
    """A metrics.json key measured with the run's decoding, which an evaluation folder replaces."""
    return key.startswith("gen/") or key in DECODING_METRICS


def trained_model(row_dir: str) -> str:
    """The job folder whose model a row's numbers come from: an ``eval/`` row's is its job's."""
    return row_dir.split(f"/{EVAL_DIR}/", 1)[0]


def _eval_row(job: Row, folder: Path) -> Row:
    """The job's model under the decoding of one evaluation folder (see ``collect``)."""
    evaluated, status, error = _read_metrics(folder)
    listed = evaluated.get("overrides")
    own = parse_overrides(listed if isinstance(listed, list) else folder.name.split(","))
    overrides = {k: v for k, v in job["overrides"].items() if not is_decoding_key(k)}
    metrics = {k: v for k, v in job["metrics"].items() if not decoding_dependent(k)}
    config = {**job["config"], **_read_config_file(folder / "config.yaml")}
    if evaluated.get("decoding") is not None:
        config["decoding.name"] = evaluated["decoding"]
    return {
        "dir": f"{job['dir']}/{EVAL_DIR}/{folder.name}",
        "status": status,
        "overrides": {**overrides, **own},
        "metrics": {**metrics, **evaluated} if status == "ok" else evaluated,
        "curve": [],
        "error": error,
        "config": config,
        "items": job["items"] if status == "ok" else {},
        "duplicate_of": None,
        "reason": None,
        "covers": [],
        "eval_of": job["dir"],
        "evaluation": folder.name,
    }


def _read_metrics(path: Path) -> tuple[dict[str, Any], str, str | None]:
    """(metrics, status, error); no metrics.json means the job died early or still runs."""
    if not path.is_dir():
        return {}, "missing", f"job folder {path.name} not found"
    file = path / "metrics.json"
    if not file.is_file():
        return {}, "missing", "no metrics.json (the job failed early or is still running)"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return {}, "failed", first_line(f"metrics.json unreadable: {err}")
    if not isinstance(data, dict):
        return {}, "failed", "metrics.json is not a JSON object"
    # Runs written before metrics carried a status are ok unless they name an error.
    status = str(data.get("status") or ("failed" if data.get("error") else "ok"))
    error = None if status == "ok" else first_line(data.get("error")) or f"{status} (no error message)"
    return data, status, error


def _read_items(path: Path) -> dict[str, ItemScores]:
    """The job's per-item scores; a damaged file only costs the paired test, not the report."""
    try:
        return read_items(path)
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _read_overrides(path: Path) -> dict[str, Any] | None:
    """The settings a job ran with. ``resume=`` is left out: a resumed job is the same job (its
    result equals the uninterrupted one's), and where it continued from is not a setting. So is
    ``evaluation.decodings``: each decoding it asked for is a row of its own (its ``eval/`` folder)."""
    file = path / ".hydra" / "overrides.yaml"
    try:
        items = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(items, list):
        return None
    overrides = parse_overrides(items)
    overrides.pop("resume", None)
    overrides.pop("evaluation.decodings", None)
    return overrides


def _read_config(path: Path) -> dict[str, Any]:
    """The effective values of ``CONFIG_KEYS`` (plain YAML: interpolations are not resolved)."""
    return _read_config_file(path / ".hydra" / "config.yaml")


def _read_config_file(file: Path) -> dict[str, Any]:
    """``CONFIG_KEYS`` found in one saved config; {} when it is missing or unreadable."""
    try:
        config = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    found: dict[str, Any] = {}
    for key in CONFIG_KEYS:
        node: Any = config
        for part in key.split("."):
            node = node.get(part, ABSENT) if isinstance(node, dict) else ABSENT
        if node is not ABSENT:
            found[key] = node
    return found


def _read_curve(file: Path) -> list[tuple[int, int | None, float]]:
    """Validation points; unreadable rows are dropped rather than failing the report."""
    if not file.is_file():
        return []
    points: list[tuple[int, int | None, float]] = []
    with open(file, newline="", encoding="utf-8") as f:
        for record in csv.DictReader(f):
            try:
                tokens = record.get("tokens_seen")
                points.append(
                    (
                        int(float(record["step"])),
                        int(float(tokens)) if tokens else None,
                        float(record["val_loss"]),
                    )
                )
            except (KeyError, TypeError, ValueError):
                continue
    return points


def parse_overrides(items: Iterable[Any]) -> dict[str, Any]:
    """``["a.b=0.15", "+c=x"]`` -> ``{"a.b": 0.15, "c": "x"}``; deletions (``~key``) are dropped."""
    parsed: dict[str, Any] = {}
    for item in items:
        text = str(item)
        if "=" not in text:
            continue
        key, value = text.split("=", 1)
        parsed[key.lstrip("+~")] = _scalar(value)
    return parsed


def _scalar(text: str) -> Any:
    """Numbers and booleans typed (so columns sort and plot); ``null`` stays the word."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def first_line(text: Any, width: int = ERROR_WIDTH) -> str | None:
    """The first non-empty line, cut to ``width`` characters: a table cell, not a traceback."""
    if text is None:
        return None
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    if not line:
        return None
    return line if len(line) <= width else line[: width - 1] + "…"


def is_number(value: Any) -> bool:
    """A JSON number that is a measurement (booleans such as data_cache_hit are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# -- what a row is ----------------------------------------------------------------------------
def is_baseline(row: Row) -> bool:
    """A job that trained nothing (``baseline=true``): a random backbone, evaluated as is.

    Its metrics.json says so; the config and the overrides say so for a job that died before.
    """
    for source in (row["metrics"], row["config"], row["overrides"]):
        value = source.get("baseline")
        if value is not None:
            return value is True
    return False


def _named(row: Row, metric: str, config_key: str, default: str) -> str:
    """A name from whichever of the job's files gives it: metrics, saved config, overrides."""
    return str(
        row["metrics"].get(metric) or row["config"].get(config_key) or row["overrides"].get(metric) or default
    )


def objective_of(row: Row) -> str:
    """The job's objective name, from whichever of its files names it ("?" if none does)."""
    return _named(row, "objective", "objective.name", "?")


def decoding_of(row: Row) -> str:
    """The decoding strategy the job's generation metrics were measured with."""
    return _named(row, "decoding", "decoding.name", "default")


def mask_probability_of(row: Row) -> float | None:
    """The job's effective mask probability: config.yaml's (null where it does not apply)."""
    if "objective.mask_probability" in row["config"]:
        value = row["config"]["objective.mask_probability"]
    else:
        value = next((v for k, v in row["overrides"].items() if k.endswith("mask_probability")), None)
    return float(value) if is_number(value) else None

"""The cross-objective evaluation, at the end of every run and as ``pretrainlab-eval RUN_DIR``.

Each objective's own loss cannot be compared with another's; these can: cloze (each objective
fills a blank its own way), bits per character of true continuations, a frozen-feature probe,
generation metrics, and bookkeeping (parameters, tokens, FLOPs). Held-out items come from the
validation split and ``evaluation.seed``, so they are the same for every objective and seed.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pretrainlab.data.datamodule import PretrainDataModule
from pretrainlab.evaluation.cloze import evaluate_cloze_items, make_cloze_items
from pretrainlab.evaluation.continuation import continuation_item_scores, make_continuation_items
from pretrainlab.evaluation.finetune import FinetuneSettings, evaluate_finetune
from pretrainlab.evaluation.generation import evaluate_generation
from pretrainlab.evaluation.items import ITEMS_FILE, ItemScores, read_items, write_items
from pretrainlab.evaluation.probe import Split, evaluate_probe, labelled_task
from pretrainlab.generation.decode import generation_config
from pretrainlab.network import apply_offline
from pretrainlab.objectives.base import PretrainingObjective
from pretrainlab.utils import write_json_atomic, write_jsonl

# Cloze items need a document of at least k + 2 tokens; these many are considered.
_CLOZE_DOCUMENTS = 512

log = logging.getLogger(__name__)


@contextmanager
def _stage(metrics: dict[str, Any], name: str, what: str) -> Iterator[None]:
    """Time one evaluation stage into ``eval/<name>_s`` with a start and an end line: in a
    sweep of short jobs the evaluation is much of the time, and it should not look like a hang."""
    log.info("evaluation: %s ...", what)
    started = time.perf_counter()
    yield
    seconds = time.perf_counter() - started
    metrics[f"eval/{name}_s"] = seconds
    log.info("evaluation: %s done in %.1f s", name, seconds)


def downstream_task(cfg: DictConfig) -> Split | None:
    """The labelled task of the probe and of fine-tuning (a user's ``data.probe.path`` or the
    built-in reviews), or None when neither runs. Called before training, so a bad labelled
    file is one line before any step instead of a traceback after the whole run."""
    ev = cfg.evaluation
    finetune = ev.get("finetune")
    if not ev.probe and not (finetune is not None and finetune.enabled):
        return None
    return labelled_task(
        cfg.data.probe,
        ev.seed,
        Path(cfg.paths.cache_dir) / "hf",
        per_class=ev.probe_per_class,
        test_per_class=ev.probe_test_per_class,
    )


def evaluate_module(
    cfg: DictConfig,
    module: PretrainingObjective,
    datamodule: PretrainDataModule,
    out: Path,
    loggers: list[Any] | None = None,
    task: Split | None = None,
) -> dict[str, Any]:
    """Every evaluation the config turns on; metrics go to the loggers, samples to samples.jsonl,
    per-item scores to eval_items.jsonl (for the paired tests of ``pretrainlab-compare``).

    ``task`` is ``downstream_task(cfg)``, if the caller already loaded it."""
    ev = cfg.evaluation
    module.eval()
    metrics: dict[str, Any] = {}
    items: list[ItemScores] = []
    if ev.cloze:
        ks = tuple(ev.cloze_ks)
        docs = datamodule.heldout_documents(_CLOZE_DOCUMENTS, min(ks) + 2)
        cloze = make_cloze_items(docs, ks, per_k=ev.cloze_per_k, seed=ev.seed)
        with _stage(metrics, "cloze", f"cloze, {len(cloze)} items"):
            scored = evaluate_cloze_items(module, cloze, ks=ks)
        items += scored
        metrics.update({s.metric: s.value() for s in scored})
    untrained = generation_problem(cfg, module)
    if untrained is not None:
        # A number measured through a layout the model never saw would read as a finding.
        metrics["not_evaluated"] = {"continuation": untrained, "generation": untrained}
    if ev.continuation and untrained is None and module.generative:
        docs = datamodule.heldout_documents(ev.continuation_items, ev.prompt_tokens + 1)
        continuation = make_continuation_items(docs, ev.prompt_tokens, ev.continuation_tokens)
        with _stage(metrics, "continuation", f"continuation, {len(continuation)} items"):
            scored_bpc = continuation_item_scores(module, continuation)
        metrics["continuation/bpc"] = None if scored_bpc is None else scored_bpc.value()
        if scored_bpc is not None:
            items.append(scored_bpc)
    elif ev.continuation:
        metrics["continuation/bpc"] = None
    finetune = ev.get("finetune")
    if task is None and (ev.probe or (finetune is not None and finetune.enabled)):
        task = downstream_task(cfg)
    if ev.probe:
        assert task is not None
        with _stage(metrics, "probe", f"probe, {len(task[0])} + {len(task[2])} texts"):
            probed, scored = evaluate_probe(module, seed=ev.seed, data=task, max_length=cfg.data.block_size)
        metrics.update(probed)
        items += scored
    if finetune is not None and finetune.enabled:
        assert task is not None
        settings = FinetuneSettings(**OmegaConf.to_container(finetune, resolve=True))
        what = f"fine-tuning, {len(settings.seeds)} seeds x {settings.steps} steps"
        with _stage(metrics, "finetune", what):
            tuned, scored = evaluate_finetune(module, task, settings)
        metrics.update(tuned)
        items += scored
    metrics["decoding"] = None
    if ev.generation and module.generative and untrained is None:
        samples = _generation_stage(cfg, module, datamodule, metrics)
        write_jsonl(out / "samples.jsonl", samples)
        for logger in loggers or []:
            if hasattr(logger, "log_table") and samples:
                rows = [list(s.values()) for s in samples]
                logger.log_table(key="samples", columns=list(samples[0]), data=rows)
    _merge_items(out, items)
    numeric = {k: v for k, v in metrics.items() if isinstance(v, float | int) and not isinstance(v, bool)}
    for logger in loggers or []:
        logger.log_metrics(numeric, step=module.global_step)
    return metrics


def generation_problem(cfg: DictConfig, module: PretrainingObjective) -> str | None:
    """Why continuation and generation are not evaluated for this run (an untrained [gMASK]
    layout), else None. A baseline is untrained everywhere: its [gMASK] rows are as (un)trained
    as the rest, so it is evaluated."""
    return None if cfg.get("baseline", False) else module.continuation_problem()


def _generation_stage(
    cfg: DictConfig, module: PretrainingObjective, datamodule: PretrainDataModule, metrics: dict[str, Any]
) -> list[dict[str, Any]]:
    """Continue the held-out prompts with ``cfg.decoding`` into ``metrics``; the samples.

    One function for the end of a run and for ``RUN/eval/<decoding>/``, so the same decoding
    gives the same numbers in both. Sampling is seeded with ``evaluation.seed``.
    """
    ev = cfg.evaluation
    docs = datamodule.heldout_documents(ev.num_prompts, ev.prompt_tokens + 1)
    prompts = [doc[: ev.prompt_tokens] for doc in docs]
    decoding = OmegaConf.to_container(cfg.decoding, resolve=True)
    config = generation_config(decoding, module.tokenizer)
    with _stage(metrics, "generation", f"generation ({decoding['name']}), {len(prompts)} prompts"):
        generated, samples = evaluate_generation(module, prompts, config, decoding["name"], seed=ev.seed)
    metrics.update(generated)
    return samples


def _merge_items(out: Path, items: list[ItemScores]) -> None:
    """Replace the metrics evaluated now in the run's eval_items.jsonl, keep the others (a
    re-evaluation of one stage must not drop the rest)."""
    if not items:
        return
    kept = read_items(out)
    kept.update({entry.metric: entry for entry in items})
    write_items(out / ITEMS_FILE, kept.values())


def _saved_config(run_dir: Path) -> DictConfig:
    """The run's saved config, checked before anything it names is imported."""
    from pretrainlab.trusted_targets import require_trusted

    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.exists():
        raise ValueError(f"{run_dir}: not a run folder (no .hydra/config.yaml)")
    cfg = OmegaConf.load(saved)
    require_trusted(cfg, saved)  # before get_class below imports what a shared folder names
    OmegaConf.update(cfg, "paths.output_dir", str(run_dir))  # the saved value interpolates hydra:
    return cfg


def _load(run_dir: Path, cfg: DictConfig) -> tuple[PretrainingObjective, PretrainDataModule]:
    """The run's exported model in its objective's module, and its data (for the held-out items)."""
    from hydra.utils import get_class

    from pretrainlab.build import build_datamodule
    from pretrainlab.infer import load_run

    apply_offline(cfg.get("offline", True))  # as the run itself did (its data may be a hub name)
    settings = {
        k: v for k, v in OmegaConf.to_container(cfg.objective, resolve=True).items() if k != "_target_"
    }
    run = load_run(run_dir, settings)  # the objective's settings: what its evaluation depends on
    objective_cls: type[PretrainingObjective] = get_class(cfg.objective._target_)
    datamodule = build_datamodule(cfg, objective_cls)
    datamodule.setup()
    return run.module, datamodule


def evaluate_run(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Re-evaluate a finished run's exported model with its saved config (plus overrides of
    ``evaluation.*``), and merge the results into its metrics.json.

    Overrides of the decoding do not belong in the training record: with one, only generation
    is evaluated, into ``RUN/eval/<overrides>/`` (see ``evaluate_overrides``), and those metrics
    are returned."""
    if any(is_decoding_override(o) for o in overrides):
        (folder,) = evaluate_overrides(run_dir, [overrides])
        return json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    cfg = _saved_config(run_dir)
    cfg.merge_with_dotlist(overrides)
    module, datamodule = _load(run_dir, cfg)
    metrics = evaluate_module(cfg, module, datamodule, run_dir)
    old = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    write_json_atomic(run_dir / "metrics.json", {**old, **metrics})
    return metrics


# -- decodings evaluated after training, each into its own folder -----------------------------
# Where evaluations with another decoding go, one folder per set of overrides.
EVAL_DIR = "eval"
# The evaluation settings generation reads: the only ones a decoding evaluation can change.
GENERATION_SETTINGS = ("evaluation.num_prompts", "evaluation.prompt_tokens", "evaluation.seed")


def is_decoding_override(override: str) -> bool:
    """``decoding=top_p`` (the group) or ``decoding.<field>=...``: what only generation reads."""
    key = override.split("=", 1)[0]
    return key == "decoding" or key.startswith("decoding.")


def eval_folder_name(overrides: list[str]) -> str:
    """Hydra's ``override_dirname`` of the overrides (sorted, joined by commas): the same name
    a sweep job with these overrides gets, so the folder says what was changed."""
    return ",".join(sorted(overrides)).replace("/", "_")


def evaluate_decodings(run_dir: Path, decodings: list[str], overrides: list[str] | None = None) -> list[Path]:
    """Evaluate a finished run's model once per decoding (``conf/decoding`` names such as
    ``top_p``), each into ``RUN/eval/decoding=<name>/``; the folders, in order.

    What ``pretrainlab-eval RUN -m decoding=...`` does, so a model is trained once and judged
    under every strategy. ``overrides`` (``decoding.*`` fields, ``evaluation.num_prompts`` ...)
    apply to every decoding. The run's own metrics.json, samples.jsonl and .hydra/ are never
    written. Raises ValueError when the run cannot generate (a masked run, an untrained
    [gMASK]) or a decoding is not valid for it.
    """
    return evaluate_overrides(Path(run_dir), [[f"decoding={d}", *(overrides or [])] for d in decodings])


def decoding_jobs(cfg: DictConfig) -> list[tuple[list[str], DictConfig]]:
    """The evaluations ``evaluation.decodings`` asks of a training job (its own decoding left
    out: the run's metrics.json has it), each with its composed config, checked now, before
    anything trains: an unknown option or one the objective cannot use is one line instead of
    a failure after training."""
    from hydra.utils import get_class

    names = [str(n) for n in cfg.evaluation.get("decodings") or []]
    jobs = [[f"decoding={n}"] for n in dict.fromkeys(names) if n != cfg.decoding.get("name")]
    if not jobs:
        return []
    if not get_class(cfg.objective._target_).generative:
        raise ValueError(
            f"evaluation.decodings={names}: objective={cfg.objective.name} does not generate text"
        )
    return [(job, _decoding_job_config(cfg, job)) for job in jobs]


def evaluate_trained_decodings(
    cfg: DictConfig,
    module: PretrainingObjective,
    datamodule: PretrainDataModule,
    out: Path,
    metrics: dict[str, Any],
) -> list[Path]:
    """``evaluation.decodings`` at the end of a training job, with the model still in memory:
    how a training sweep over ``decoding`` trains each model once (our sweeper folds the
    combinations that differ only in ``decoding`` into one job that sets the key).

    The time goes to ``metrics["eval/decodings_s"]``. A decoding that fails here leaves a
    failed ``eval/`` folder (its error in its metrics.json) and the others go on: the training
    record is written either way."""
    jobs = decoding_jobs(cfg)
    problem = generation_problem(cfg, module)
    if jobs and problem is not None:
        log.warning("evaluation.decodings: not evaluated (%s)", problem)
        return []
    if not jobs:
        return []
    names = ", ".join(str(job_cfg.decoding.name) for _, job_cfg in jobs)
    with _stage(metrics, "decodings", f"generation with {len(jobs)} more decodings ({names})"):
        return _evaluate_jobs(out, jobs, module, datamodule, keep_going=True)


def evaluate_overrides(run_dir: Path, jobs: list[list[str]]) -> list[Path]:
    """One evaluation per override list, each with a decoding override, into its own folder
    ``RUN/eval/<override dirname>/`` (metrics.json, samples.jsonl, config.yaml).

    Only generation runs: cloze, continuation, probe and fine-tuning do not depend on the
    decoding and stay in the run's own metrics.json. Every job's config is checked before the
    model loads, and the model loads once for all of them.
    """
    from hydra.utils import get_class

    run_dir = Path(run_dir)
    saved = _saved_config(run_dir)
    configs = [(job, _decoding_job_config(saved, job)) for job in jobs]
    objective_cls: type[PretrainingObjective] = get_class(saved.objective._target_)
    if not objective_cls.generative:
        raise ValueError(
            f"objective={objective_cls.name}: does not generate text, so a decoding has nothing to evaluate"
        )
    module, datamodule = _load(run_dir, saved)
    problem = generation_problem(saved, module)
    if problem is not None:
        raise ValueError(f"generation is not evaluated for this run: {problem}")
    return _evaluate_jobs(run_dir, configs, module, datamodule)


def _evaluate_jobs(
    run_dir: Path,
    jobs: list[tuple[list[str], DictConfig]],
    module: PretrainingObjective,
    datamodule: PretrainDataModule,
    keep_going: bool = False,
) -> list[Path]:
    """Generate with each job's decoding (its overrides and the config ``_decoding_job_config``
    composed from them) into its ``eval/`` folder (see ``evaluate_overrides``); ``keep_going``:
    a job that raises gets a failed folder (status, error) and the next one runs."""
    module.eval()
    folders = []
    for job, cfg in jobs:
        metrics: dict[str, Any] = {
            "status": "ok",
            "objective": module.name,
            "overrides": list(job),
            "decoding_settings": OmegaConf.to_container(cfg.decoding, resolve=True),
        }
        folder = run_dir / EVAL_DIR / eval_folder_name(job)
        try:
            samples = _generation_stage(cfg, module, datamodule, metrics)
        except Exception as err:
            if not keep_going:
                raise
            log.error("evaluation: %s failed: %s: %s", folder.name, type(err).__name__, err)
            metrics.update(status="failed", error=f"{type(err).__name__}: {err}")
            samples = []
        folders.append(_write_eval_folder(folder, cfg, metrics, samples))
    return folders


def _decoding_job_config(saved: DictConfig, job: list[str]) -> DictConfig:
    """The run's config with one job's decoding (a ``conf/decoding`` option and/or fields) and
    generation settings; anything that would fail later is a ValueError now."""
    from pretrainlab.validation import check_decoding

    if not any(is_decoding_override(o) for o in job):
        raise ValueError(f"{' '.join(job) or '(no overrides)'}: no decoding override")
    others = [o for o in job if not is_decoding_override(o)]
    for override in others:
        key = override.split("=", 1)[0]
        if key not in GENERATION_SETTINGS:
            raise ValueError(
                f"{key}: does not affect generation, the only stage a decoding override evaluates "
                f"(here: {', '.join(GENERATION_SETTINGS)}); evaluate it without a decoding override"
            )
    groups = [o.split("=", 1)[1] for o in job if o.split("=", 1)[0] == "decoding"]
    fields = [o for o in job if o.startswith("decoding.")]
    name = groups[-1] if groups else saved.decoding.get("name")
    composed = _compose_decoding([f"decoding={name}", *fields])
    cfg = copy.deepcopy(saved)
    if groups:
        cfg.decoding = OmegaConf.create(composed)
    else:  # fields change the run's own decoding (as it was saved), typed as Hydra types them
        for field in fields:
            key = field.split("=", 1)[0].split(".", 1)[1]
            cfg.decoding[key] = composed[key]
    cfg.merge_with_dotlist(others)
    if not cfg.evaluation.generation:
        raise ValueError("evaluation.generation=false: the run's config turns generation off")
    check_decoding(cfg)
    return cfg


def _compose_decoding(overrides: list[str]) -> dict[str, Any]:
    """``conf/decoding`` composed with the overrides (an unknown option or field, a wrong type:
    one line). Works inside a running Hydra job too (a training sweep calling
    ``evaluate_decodings``), whose Hydra instance is set aside and put back."""
    from hydra.core.global_hydra import GlobalHydra

    from pretrainlab.infer import decoding_config

    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        return decoding_config(overrides)
    finally:
        GlobalHydra.instance().clear()
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


def _write_eval_folder(
    folder: Path, cfg: DictConfig, metrics: dict[str, Any], samples: list[dict[str, Any]]
) -> Path:
    """Write the folder complete under a temporary name, then put it in place: an interrupted
    evaluation leaves the previous folder (or none), never a half-written one."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    write_json_atomic(temporary / "metrics.json", metrics)
    write_jsonl(temporary / "samples.jsonl", samples)
    (temporary / "config.yaml").write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
    old = None
    if folder.exists():
        old = folder.parent / f".{folder.name}-old-{os.getpid()}"
        folder.rename(old)
    temporary.rename(folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def _jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override lists to evaluate: one, or with ``-m`` one per combination of Hydra's sweep
    syntax (``decoding=greedy,top_p``, ``range(...)``, ``choice(...)``)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        sweeps = [o for o in parsed if o.is_sweep_override()]
        if not multirun:
            if sweeps:
                raise ValueError(f"{sweeps[0].input_line}: several values; add -m to evaluate each one")
            return [list(overrides)]
        (jobs,) = BasicSweeper.split_arguments(parsed, None)
    except HydraException as err:
        raise ValueError((str(err).strip().splitlines() or [type(err).__name__])[0]) from err
    if not all(any(is_decoding_override(o) for o in job) for job in jobs):
        raise ValueError(
            "every job of -m needs a decoding override (-m evaluates decodings, each into RUN/eval/); "
            "evaluate other settings without -m"
        )
    return jobs


def main(argv: list[str] | None = None) -> None:
    """Evaluate a finished run again: ``evaluation.*`` overrides (e.g. after adding an
    evaluation) update its metrics.json; a decoding (``decoding=top_p``, ``-m
    decoding=greedy,top_p``, ``decoding.temperature=0.7``) is evaluated into RUN/eval/<overrides>/
    and leaves the training record alone."""
    parser = argparse.ArgumentParser(prog="pretrainlab-eval", description=main.__doc__)
    parser.add_argument("run_dir", type=Path, help="a finished run folder")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="evaluation settings, e.g. evaluation.cloze_per_k=128 evaluation.probe=false, or a decoding: "
        "decoding=top_p decoding.top_p=0.8",
    )
    parser.add_argument(
        "-m", "--multirun", action="store_true", help="one evaluation per value: -m decoding=greedy,top_p"
    )
    args = parser.parse_intermixed_args(argv)
    bad = [o for o in args.overrides if not o.startswith("evaluation.") and not is_decoding_override(o)]
    if bad:
        sys.exit(f"error: {bad[0]}: only evaluation.*, decoding and decoding.* settings can change here")
    try:
        jobs = _jobs(args.overrides, args.multirun)
        if any(is_decoding_override(o) for o in jobs[0]):
            folders = evaluate_overrides(args.run_dir, jobs)
            result: Any = {
                str(f): json.loads((f / "metrics.json").read_text(encoding="utf-8")) for f in folders
            }
        else:
            result = evaluate_run(args.run_dir, jobs[0])
    except ValueError as err:
        sys.exit(f"error: {err}")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

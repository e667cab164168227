"""The cross-objective evaluation, at the end of every run and as ``pretrainlab-eval RUN_DIR``.

Each objective's own loss cannot be compared with another's; these can: cloze (each objective
fills a blank its own way), bits per character of true continuations, a frozen-feature probe,
generation metrics, and bookkeeping (parameters, tokens, FLOPs). Held-out items come from the
validation split and ``evaluation.seed``, so they are the same for every objective and seed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
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
    # A baseline is untrained everywhere: its [gMASK] rows are as (un)trained as the rest.
    untrained = None if cfg.get("baseline", False) else module.continuation_problem()
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
        docs = datamodule.heldout_documents(ev.num_prompts, ev.prompt_tokens + 1)
        prompts = [doc[: ev.prompt_tokens] for doc in docs]
        decoding = OmegaConf.to_container(cfg.decoding, resolve=True)
        config = generation_config(decoding, module.tokenizer)
        with _stage(metrics, "generation", f"generation, {len(prompts)} prompts"):
            generated, samples = evaluate_generation(module, prompts, config, decoding["name"])
        metrics.update(generated)
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


def _merge_items(out: Path, items: list[ItemScores]) -> None:
    """Replace the metrics evaluated now in the run's eval_items.jsonl, keep the others (a
    re-evaluation of one stage must not drop the rest)."""
    if not items:
        return
    kept = read_items(out)
    kept.update({entry.metric: entry for entry in items})
    write_items(out / ITEMS_FILE, kept.values())


def evaluate_run(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Re-evaluate a finished run's exported model with its saved config (plus overrides of
    ``evaluation.*``), and merge the results into its metrics.json."""
    from hydra.utils import get_class

    from pretrainlab.build import build_datamodule
    from pretrainlab.infer import load_run
    from pretrainlab.trusted_targets import require_trusted

    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.exists():
        raise ValueError(f"{run_dir}: not a run folder (no .hydra/config.yaml)")
    cfg = OmegaConf.load(saved)
    require_trusted(cfg, saved)  # before get_class below imports what a shared folder names
    cfg.merge_with_dotlist(overrides)
    OmegaConf.update(cfg, "paths.output_dir", str(run_dir))  # the saved value interpolates hydra:
    apply_offline(cfg.get("offline", True))  # as the run itself did (its data may be a hub name)
    settings = {
        k: v for k, v in OmegaConf.to_container(cfg.objective, resolve=True).items() if k != "_target_"
    }
    run = load_run(run_dir, settings)  # the objective's settings: what its evaluation depends on
    objective_cls: type[PretrainingObjective] = get_class(cfg.objective._target_)
    datamodule = build_datamodule(cfg, objective_cls)
    datamodule.setup()
    metrics = evaluate_module(cfg, run.module, datamodule, run_dir)
    old = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    write_json_atomic(run_dir / "metrics.json", {**old, **metrics})
    return metrics


def main(argv: list[str] | None = None) -> None:
    """Evaluate a finished run again (e.g. after adding an evaluation), updating metrics.json."""
    parser = argparse.ArgumentParser(prog="pretrainlab-eval", description=main.__doc__)
    parser.add_argument("run_dir", type=Path, help="a finished run folder")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="evaluation settings, e.g. evaluation.cloze_per_k=128 evaluation.probe=false",
    )
    args = parser.parse_args(argv)
    bad = [o for o in args.overrides if not o.startswith("evaluation.") and not o.startswith("decoding.")]
    if bad:
        sys.exit(f"error: {bad[0]}: only evaluation.* and decoding.* settings can change here")
    try:
        metrics = evaluate_run(args.run_dir, args.overrides)
    except ValueError as err:
        sys.exit(f"error: {err}")
    print(json.dumps(metrics, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

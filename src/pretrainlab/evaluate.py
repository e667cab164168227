"""The cross-objective evaluation, at the end of every run and as ``pretrainlab-eval RUN_DIR``.

Each objective's own loss cannot be compared with another's; these can: cloze (each objective
fills a blank its own way), bits per character of true continuations, a frozen-feature probe,
generation metrics, and bookkeeping (parameters, tokens, FLOPs). Held-out items come from the
validation split and ``evaluation.seed``, so they are the same for every objective and seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pretrainlab.data.datamodule import PretrainDataModule
from pretrainlab.evaluation.cloze import evaluate_cloze, make_cloze_items
from pretrainlab.evaluation.continuation import evaluate_continuation, make_continuation_items
from pretrainlab.evaluation.generation import evaluate_generation
from pretrainlab.evaluation.probe import evaluate_probe, load_labelled_files, split_labelled
from pretrainlab.generation.decode import generation_config
from pretrainlab.network import apply_offline
from pretrainlab.objectives.base import PretrainingObjective
from pretrainlab.utils import write_json_atomic, write_jsonl

# Cloze items need a document of at least k + 2 tokens; these many are considered.
_CLOZE_DOCUMENTS = 512


def evaluate_module(
    cfg: DictConfig,
    module: PretrainingObjective,
    datamodule: PretrainDataModule,
    out: Path,
    loggers: list[Any] | None = None,
) -> dict[str, Any]:
    """Every evaluation the config turns on; metrics go to the loggers, samples to samples.jsonl."""
    ev = cfg.evaluation
    module.eval()
    metrics: dict[str, Any] = {}
    if ev.cloze:
        ks = tuple(ev.cloze_ks)
        docs = datamodule.heldout_documents(_CLOZE_DOCUMENTS, min(ks) + 2)
        items = make_cloze_items(docs, ks, per_k=ev.cloze_per_k, seed=ev.seed)
        metrics.update(evaluate_cloze(module, items, ks=ks))
    untrained = module.continuation_problem()
    if untrained is not None:
        # A number measured through a layout the model never saw would read as a finding.
        metrics["not_evaluated"] = {"continuation": untrained, "generation": untrained}
    if ev.continuation and untrained is None:
        docs = datamodule.heldout_documents(ev.continuation_items, ev.prompt_tokens + 1)
        items = make_continuation_items(docs, ev.prompt_tokens, ev.continuation_tokens)
        metrics.update(evaluate_continuation(module, items))
    elif ev.continuation:
        metrics["continuation/bpc"] = None
    if ev.probe:
        metrics.update(
            evaluate_probe(
                module,
                ev.probe_per_class,
                ev.seed,
                test_per_class=ev.probe_test_per_class,
                data=_probe_data(cfg),
                max_length=cfg.data.block_size,
            )
        )
    metrics["decoding"] = None
    if ev.generation and module.generative and untrained is None:
        docs = datamodule.heldout_documents(ev.num_prompts, ev.prompt_tokens + 1)
        prompts = [doc[: ev.prompt_tokens] for doc in docs]
        decoding = OmegaConf.to_container(cfg.decoding, resolve=True)
        config = generation_config(decoding, module.tokenizer)
        generated, samples = evaluate_generation(module, prompts, config, decoding["name"])
        metrics.update(generated)
        write_jsonl(out / "samples.jsonl", samples)
        for logger in loggers or []:
            if hasattr(logger, "log_table") and samples:
                rows = [list(s.values()) for s in samples]
                logger.log_table(key="samples", columns=list(samples[0]), data=rows)
    numeric = {k: v for k, v in metrics.items() if isinstance(v, float | int) and not isinstance(v, bool)}
    for logger in loggers or []:
        logger.log_metrics(numeric, step=module.global_step)
    return metrics


def _probe_data(cfg: DictConfig) -> tuple | None:
    """A user's labelled file (``data.probe.path``) split for the probe; None = built-in reviews."""
    probe = cfg.data.probe
    if not probe.path:
        return None
    texts, labels = load_labelled_files(
        probe.path,
        probe.text_column,
        probe.label_column,
        "data.probe",
        cache_dir=Path(cfg.paths.cache_dir) / "hf",
    )
    return split_labelled(texts, labels, probe.test_fraction, seed=cfg.evaluation.seed)


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

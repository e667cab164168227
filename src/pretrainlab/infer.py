"""``pretrainlab-fill`` and ``pretrainlab-generate``: use a trained run's exported model.

Each objective answers in its own natural way: the masked model predicts every [MASK]
token (transformers' fill-mask pipeline), seq2seq writes the span behind each sentinel,
prefix (GLM) fills each blank autoregressively. Decoding settings come from the same
``conf/decoding`` group as training-time evaluation, with the same override syntax.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase, pipeline

from pretrainlab import config_dir
from pretrainlab.data.tokenizer import MASK
from pretrainlab.generation.decode import generation_config
from pretrainlab.objectives.base import PretrainingObjective

OBJECTIVES = {
    "masked": "pretrainlab.objectives.masked.MaskedLM",
    "causal": "pretrainlab.objectives.causal.CausalLM",
    "seq2seq": "pretrainlab.objectives.seq2seq.Seq2SeqLM",
    "prefix": "pretrainlab.objectives.prefix.PrefixLM",
}
_MASK_RUN = re.compile(rf"(?:{re.escape(MASK)})+")
_SENTINEL = re.compile(r"<extra_id_\d+>")


class InferenceError(ValueError):
    """Unusable run folder or request; printed as one line."""


@dataclass
class LoadedRun:
    objective: str
    module: PretrainingObjective
    folder: Path

    @property
    def model(self) -> PreTrainedModel:
        return self.module.model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.module.tokenizer


def load_run(run_dir: str | Path) -> LoadedRun:
    """The run's exported model (``hf/``) in its objective's module (named in ``metrics.json``)."""
    from transformers import AutoTokenizer

    import pretrainlab.models.glm  # noqa: F401  (registers the GLM classes with Auto*)

    run = Path(run_dir)
    metrics = run / "metrics.json"
    if not (run / "hf" / "config.json").exists() or not metrics.exists():
        raise InferenceError(f"{run}: not a finished pretrainlab run (needs hf/ and metrics.json)")
    objective = json.loads(metrics.read_text(encoding="utf-8"))["objective"]
    objective_cls: type[PretrainingObjective] = get_class(OBJECTIVES[objective])
    model = objective_cls.auto_class.from_pretrained(run / "hf").eval()
    module = objective_cls(model=model, tokenizer=AutoTokenizer.from_pretrained(run / "hf"))
    return LoadedRun(objective, module, run)


def decoding_config(overrides: list[str]) -> dict[str, Any]:
    """Compose ``conf/generate.yaml`` (the decoding group) with Hydra-style overrides."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="generate", overrides=overrides)
    return OmegaConf.to_container(cfg.decoding, resolve=True)


# -- fill ---------------------------------------------------------------------------------
def fill(run: LoadedRun, text: str, top_k: int = 5, decoding: dict[str, Any] | None = None) -> list[Any]:
    """Predictions for each blank of ``text``.

    masked: one entry per [MASK], each the top-k list the fill-mask pipeline returns
    (score, token, token_str, sequence). seq2seq / prefix: a run of [MASK]s (or a sentinel)
    is one span of unknown length; one entry per span with the predicted tokens and text.
    """
    if run.objective == "masked":
        if MASK not in text:
            raise InferenceError(f"text: contains no {MASK} to fill")
        fill_mask = pipeline("fill-mask", model=run.model, tokenizer=run.tokenizer, top_k=top_k)
        result = fill_mask(text)
        # One [MASK] gives a flat list; make every answer one list per mask.
        return [result] if result and isinstance(result[0], dict) else result
    if run.objective == "causal":
        raise InferenceError("objective=causal: has no blanks to fill; use pretrainlab-generate")
    tok = run.tokenizer
    # A run of [MASK]s (or a sentinel) is one blank of unknown length: one [MASK] each.
    text = _MASK_RUN.sub(MASK, _SENTINEL.sub(MASK, text))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if tok.mask_token_id not in ids:
        raise InferenceError(f"text: contains no {MASK} or <extra_id_N> to fill")
    config = generation_config(decoding or decoding_config([]), tok)
    spans, filled = run.module.fill_spans(ids, config)
    return [_span_entry(tok, i, span, filled) for i, span in enumerate(spans)]


def _span_entry(
    tok: PreTrainedTokenizerBase, index: int, span: list[int], filled: list[int]
) -> dict[str, Any]:
    return {
        "blank": index,
        "tokens": tok.convert_ids_to_tokens(span),
        "token_str": tok.decode(span, skip_special_tokens=True),
        "sequence": tok.decode(filled, skip_special_tokens=True),
    }


# -- generate -----------------------------------------------------------------------------
def generate(
    run: LoadedRun, prompt: str, decoding: dict[str, Any], num_return_sequences: int = 1
) -> list[str]:
    """Continue ``prompt`` the objective's way: causal after it, seq2seq behind a sentinel
    placed after it (T5), prefix in a [gMASK] piece after it (GLM's prefix LM)."""
    if not run.module.generative:
        raise InferenceError(f"objective={run.objective}: cannot continue text; use pretrainlab-fill")
    tok = run.tokenizer
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    outs = run.module.continue_ids(ids, generation_config(decoding, tok), num_return_sequences)
    return [prompt + tok.decode(out, skip_special_tokens=True) for out in outs]


# -- command line -------------------------------------------------------------------------
def _parser(prog: str, what: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=what)
    parser.add_argument("run_dir", help="a finished run folder (holds hf/ and .hydra/)")
    parser.add_argument("text", help="the input text")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="decoding settings as Hydra overrides, e.g. decoding=top_p decoding.temperature=0.7",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling decoders (default 0)")
    return parser


def _run_cli(main: Any, args: argparse.Namespace) -> None:
    """Seed, load the run, call ``main(run)``; bad input becomes one ``error:`` line, exit 2.

    Offline throughout: everything comes from the run folder.
    """
    from transformers.utils import logging as hf_logging

    from pretrainlab.network import apply_offline

    apply_offline(True)
    hf_logging.disable_progress_bar()
    try:
        torch.manual_seed(args.seed)
        main(load_run(args.run_dir))
    except (InferenceError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def fill_main(argv: list[str] | None = None) -> None:
    """Fill the [MASK] blanks of a text with a trained run's model."""
    parser = _parser("pretrainlab-fill", fill_main.__doc__)
    parser.add_argument("--top-k", type=int, default=5, help="candidates per [MASK] (masked objective)")
    args = parser.parse_args(argv)

    def main(run: LoadedRun) -> None:
        answers = fill(run, args.text, args.top_k, decoding_config(args.overrides))
        if args.json:
            print(json.dumps(answers, ensure_ascii=False, indent=2))
            return
        for i, answer in enumerate(answers):
            if isinstance(answer, list):
                print(f"[MASK] {i}:")
                for c in answer:
                    print(f"  {c['score']:.4f}  {c['token_str']}  {c['sequence']}")
            else:
                print(f"blank {i}: {answer['token_str']}")
                print(f"  {answer['sequence']}")

    _run_cli(main, args)


def generate_main(argv: list[str] | None = None) -> None:
    """Continue a prefix with a trained run's model, using a decoding strategy from conf/decoding."""
    parser = _parser("pretrainlab-generate", generate_main.__doc__)
    parser.add_argument("--num-return-sequences", type=int, default=1, help="continuations to return")
    args = parser.parse_args(argv)

    def main(run: LoadedRun) -> None:
        decoding = decoding_config(args.overrides)
        texts = generate(run, args.text, decoding, args.num_return_sequences)
        if args.json:
            print(json.dumps({"decoding": decoding, "generated": texts}, ensure_ascii=False, indent=2))
        else:
            for text in texts:
                print(text)

    _run_cli(main, args)

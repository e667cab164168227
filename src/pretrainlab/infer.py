"""``pretrainlab-fill`` and ``pretrainlab-generate``: use a trained run's exported model.

Each objective answers in its own natural way: the masked model predicts every [MASK]
token (transformers' fill-mask pipeline), seq2seq writes the span behind each sentinel,
prefix (GLM) fills each blank autoregressively. Decoding settings come from the same
``conf/decoding`` group as training-time evaluation, with the same override syntax.

torch and transformers are imported when the model loads, after everything that needs no model
(the run folder, the command, the text, the decoding overrides) has been checked: a mistake
there is one line at once, not after seconds of imports.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

from pretrainlab import config_dir
from pretrainlab.cli_errors import COMPOSITION_ERRORS, describe_composition_error

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

    from pretrainlab.objectives.base import PretrainingObjective

OBJECTIVES = {
    "masked": "pretrainlab.objectives.masked.MaskedLM",
    "causal": "pretrainlab.objectives.causal.CausalLM",
    "seq2seq": "pretrainlab.objectives.seq2seq.Seq2SeqLM",
    "prefix": "pretrainlab.objectives.prefix.PrefixLM",
}
# The objectives whose class is `generative` (continues text), known without importing them
# (torch): a command they cannot serve is refused at once. tests/test_cli_startup.py checks it.
GENERATIVE = frozenset({"causal", "seq2seq", "prefix"})
_SENTINEL = re.compile(r"<extra_id_\d+>")
# Model types whose positions are a learned table: a longer sequence indexes past its end.
# Rotary (llama, the GLM backbone), ALiBi (bloom) and T5's relative buckets have no such end:
# transformers only warns beyond their nominal maximum.
LEARNED_POSITIONS = frozenset({"bert", "gpt2"})
Command = Literal["fill", "generate"]
# What each command calls its text argument (and its error messages).
TEXT_NAME: dict[Command, str] = {"fill": "text", "generate": "prompt"}


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


def run_objective(run_dir: str | Path) -> str:
    """The objective a finished run trained, from its ``metrics.json``.

    Known without loading any weights, so a command the objective cannot serve is refused at
    once rather than after the model has loaded (up to a minute for a large one).
    """
    run = Path(run_dir)
    metrics = run / "metrics.json"
    if not (run / "hf" / "config.json").exists() or not metrics.is_file():
        raise InferenceError(f"{run}: not a finished pretrainlab run (needs hf/ and metrics.json)")
    try:
        objective = json.loads(metrics.read_text(encoding="utf-8")).get("objective")
    except (ValueError, AttributeError) as err:  # not JSON, or JSON that is not an object
        raise InferenceError(f"{metrics}: not valid JSON of a pretrainlab run ({err})") from err
    if objective not in OBJECTIVES:
        raise InferenceError(f"{metrics}: objective={objective} is none of {', '.join(OBJECTIVES)}")
    return objective


def check_command(objective: str, command: Command) -> None:
    """Refuse what the objective cannot do: the masked model does not continue text, the causal
    one has no blanks to fill."""
    if command == "generate" and objective not in GENERATIVE:
        raise InferenceError(f"objective={objective}: cannot continue text; use pretrainlab-fill")
    if command == "fill" and objective == "causal":
        raise InferenceError("objective=causal: has no blanks to fill; use pretrainlab-generate")


def check_text(text: str, command: Command) -> None:
    """An empty text has nothing to fill or continue: say so instead of printing an empty line."""
    if not text.strip():
        raise InferenceError(f"{TEXT_NAME[command]}: empty")


def learned_position_limit(model: PreTrainedModel) -> int | None:
    """How many positions the model has, where they are a learned table (BERT, GPT-2): a longer
    input fails deep inside the model. None for models that run past their nominal maximum."""
    from pretrainlab.models.backbones import max_positions_of

    if model.config.model_type not in LEARNED_POSITIONS:
        return None
    return max_positions_of(model.config)


def generation_config(decoding: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """transformers' ``GenerationConfig`` for ``decoding`` (see ``generation.decode``), imported
    only when a model is there to decode with."""
    from pretrainlab.generation.decode import generation_config as build

    return build(decoding, tokenizer)


def load_run(run_dir: str | Path, settings: dict[str, Any] | None = None) -> LoadedRun:
    """The run's exported model (``hf/``) in its objective's module (named in ``metrics.json``);
    ``settings``: the run's ``objective`` config, where what the module does depends on it."""
    from transformers import AutoTokenizer

    import pretrainlab.models.glm  # noqa: F401  (registers the GLM classes with Auto*)

    run = Path(run_dir)
    objective = run_objective(run)
    objective_cls: type[PretrainingObjective] = get_class(OBJECTIVES[objective])
    model = objective_cls.auto_class.from_pretrained(run / "hf").eval()
    module = objective_cls(
        model=model, tokenizer=AutoTokenizer.from_pretrained(run / "hf"), **(settings or {})
    )
    return LoadedRun(objective, module, run)


def decoding_config(overrides: list[str]) -> dict[str, Any]:
    """Compose ``conf/generate.yaml`` (the decoding group) with Hydra-style overrides.

    A bad override is an InferenceError in the one line ``pretrainlab-train`` gives for it.
    """
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name="generate", overrides=overrides)
    except COMPOSITION_ERRORS as err:
        raise InferenceError(describe_composition_error(err)) from err
    decoding = OmegaConf.to_container(cfg.decoding, resolve=True)
    max_new = decoding.get("max_new_tokens")
    if max_new is not None and (isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1):
        raise InferenceError(f"decoding.max_new_tokens={max_new}: must be a positive whole number")
    return decoding


# -- fill ---------------------------------------------------------------------------------
def fill(run: LoadedRun, text: str, top_k: int = 5, decoding: dict[str, Any] | None = None) -> list[Any]:
    """Predictions for each blank of ``text``.

    masked: one entry per [MASK], each the top-k list the fill-mask pipeline returns
    (score, token, token_str, sequence). seq2seq / prefix: a run of [MASK]s (or a sentinel)
    is one span of unknown length; one entry per span with the predicted tokens and text.
    """
    from transformers import pipeline

    from pretrainlab.data.tokenizer import MASK, NUM_SENTINELS

    check_command(run.objective, "fill")
    check_text(text, "fill")
    if run.objective == "masked":
        if MASK not in text:
            raise InferenceError(f"text: contains no {MASK} to fill")
        limit = learned_position_limit(run.model)
        n_tokens = len(run.tokenizer(text, verbose=False)["input_ids"])  # as the pipeline tokenizes it
        if limit is not None and n_tokens > limit:
            raise InferenceError(
                f"text: {n_tokens} tokens, more than the model's {limit} positions (shorten the text)"
            )
        fill_mask = pipeline("fill-mask", model=run.model, tokenizer=run.tokenizer, top_k=top_k)
        result = fill_mask(text)
        # One [MASK] gives a flat list; make every answer one list per mask.
        return [result] if result and isinstance(result[0], dict) else result
    tok = run.tokenizer
    # A run of [MASK]s (or a sentinel) is one blank of unknown length: one [MASK] each.
    text = re.sub(rf"(?:{re.escape(MASK)})+", MASK, _SENTINEL.sub(MASK, text))
    ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
    blanks = ids.count(tok.mask_token_id)
    if not blanks:
        raise InferenceError(f"text: contains no {MASK} or <extra_id_N> to fill")
    if run.objective == "seq2seq" and blanks > NUM_SENTINELS:  # T5 marks each blank with its own sentinel
        raise InferenceError(
            f"text: {blanks} blanks, more than the model's {NUM_SENTINELS} sentinels "
            f"(<extra_id_0> .. <extra_id_{NUM_SENTINELS - 1}>)"
        )
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
    check_command(run.objective, "generate")
    check_text(prompt, "generate")
    tok = run.tokenizer
    ids = tok(prompt, add_special_tokens=False, verbose=False)["input_ids"]
    _check_positions(run, ids, decoding)
    outs = run.module.continue_ids(ids, generation_config(decoding, tok), num_return_sequences)
    return [prompt + tok.decode(out, skip_special_tokens=True) for out in outs]


def _check_positions(run: LoadedRun, ids: list[int], decoding: dict[str, Any]) -> None:
    """A causal model with a learned position table (GPT-2) must hold the prompt, its start token
    and every new token; beyond that it fails with an IndexError deep in the model."""
    limit = learned_position_limit(run.model)
    if limit is None or run.objective != "causal":
        return
    max_new = decoding.get("max_new_tokens") or 0
    needed = len(run.module._with_start(ids)) + max_new
    if needed > limit:
        raise InferenceError(
            f"prompt: {len(ids)} tokens + decoding.max_new_tokens={max_new} need {needed} positions, "
            f"more than the model's {limit} (shorten the prompt or lower decoding.max_new_tokens)"
        )


# -- command line -------------------------------------------------------------------------
def _parser(prog: str, what: str, command: Command) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=what)
    parser.add_argument("run_dir", help="a finished run folder (holds hf/ and .hydra/)")
    parser.add_argument("text", metavar=TEXT_NAME[command], help="the input text")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="decoding settings as Hydra overrides, e.g. decoding=top_p decoding.temperature=0.7",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling decoders (default 0)")
    return parser


def _run_cli(
    command: Command, args: argparse.Namespace, main: Callable[[LoadedRun, dict[str, Any]], None]
) -> None:
    """Check what needs no model, seed, load the run, call ``main(run, decoding)``; bad input
    becomes one ``error:`` line, exit 2.

    The objective (from metrics.json), the text and the decoding overrides are checked before
    the model loads (and before torch and transformers are imported), so a mistake costs no load
    time. Offline throughout: everything comes from the run folder.
    """
    try:
        check_command(run_objective(args.run_dir), command)
        check_text(args.text, command)
        decoding = decoding_config(args.overrides)
        _prepare_offline()
        import torch

        torch.manual_seed(args.seed)
        main(load_run(args.run_dir), decoding)
    except (InferenceError, ValueError) as err:
        # A ValueError from transformers (e.g. contradicting decoding settings) may span lines.
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(f"error: {first_line}", file=sys.stderr)
        sys.exit(2)


def _prepare_offline() -> None:
    """No Hub access and no download progress bars: the model and tokenizer are in the run folder."""
    from transformers.utils import logging as hf_logging

    from pretrainlab.network import apply_offline

    apply_offline(True)
    hf_logging.disable_progress_bar()


def fill_main(argv: list[str] | None = None) -> None:
    """Fill the [MASK] blanks of a text with a trained run's model."""
    parser = _parser("pretrainlab-fill", fill_main.__doc__, "fill")
    parser.add_argument("--top-k", type=int, default=5, help="candidates per [MASK] (masked objective)")
    args = parser.parse_args(argv)

    def main(run: LoadedRun, decoding: dict[str, Any]) -> None:
        answers = fill(run, args.text, args.top_k, decoding)
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

    _run_cli("fill", args, main)


def generate_main(argv: list[str] | None = None) -> None:
    """Continue a prefix with a trained run's model, using a decoding strategy from conf/decoding."""
    parser = _parser("pretrainlab-generate", generate_main.__doc__, "generate")
    parser.add_argument("--num-return-sequences", type=int, default=1, help="continuations to return")
    args = parser.parse_args(argv)

    def main(run: LoadedRun, decoding: dict[str, Any]) -> None:
        texts = generate(run, args.text, decoding, args.num_return_sequences)
        if args.json:
            print(json.dumps({"decoding": decoding, "generated": texts}, ensure_ascii=False, indent=2))
        else:
            for text in texts:
                print(text)

    _run_cli("generate", args, main)

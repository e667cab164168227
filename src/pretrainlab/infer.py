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
from omegaconf import OmegaConf
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, pipeline

from pretrainlab import config_dir
from pretrainlab.data.tokenizer import MASK
from pretrainlab.objectives.span_corruption import fill_sentinels, sentinel_ids, split_target_by_sentinel

OBJECTIVE_MODELS = {
    "masked": "AutoModelForMaskedLM",
    "causal": "AutoModelForCausalLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "prefix": "AutoModel",
}
_MASK_RUN = re.compile(rf"(?:{re.escape(MASK)})+")
_SENTINEL = re.compile(r"<extra_id_\d+>")


class InferenceError(ValueError):
    """Unusable run folder or request; printed as one line."""


@dataclass
class LoadedRun:
    objective: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    folder: Path


def load_run(run_dir: str | Path) -> LoadedRun:
    """The run's exported model (``hf/``) and which objective trained it (``metrics.json``)."""
    import transformers

    import pretrainlab.models.glm  # noqa: F401  (registers the GLM classes with Auto*)

    run = Path(run_dir)
    metrics = run / "metrics.json"
    if not (run / "hf" / "config.json").exists() or not metrics.exists():
        raise InferenceError(f"{run}: not a finished pretrainlab run (needs hf/ and metrics.json)")
    objective = json.loads(metrics.read_text(encoding="utf-8"))["objective"]
    auto = getattr(transformers, OBJECTIVE_MODELS[objective])
    model = auto.from_pretrained(run / "hf").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(run / "hf")
    return LoadedRun(objective, model, tokenizer, run)


def decoding_config(overrides: list[str]) -> dict[str, Any]:
    """Compose ``conf/generate.yaml`` (the decoding group) with Hydra-style overrides."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="generate", overrides=overrides)
    return OmegaConf.to_container(cfg.decoding, resolve=True)


def generation_config(decoding: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """A GenerationConfig from a decoding entry; ``name`` is ours, the rest is transformers'."""
    settings = {k: v for k, v in decoding.items() if k != "name"}
    config = GenerationConfig(
        **settings, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    config.validate(strict=True)
    return config


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
    config = generation_config(decoding or decoding_config([]), run.tokenizer)
    if run.objective == "seq2seq":
        return _fill_seq2seq(run, text, config)
    return _fill_prefix(run, text, config)


def _fill_seq2seq(run: LoadedRun, text: str, config: GenerationConfig) -> list[dict[str, Any]]:
    tok = run.tokenizer
    counter = iter(range(10_000))
    text = _MASK_RUN.sub(lambda _: f"<extra_id_{next(counter)}>", text)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    sentinels = sentinel_ids(tok, 100)
    used = [s for s in sentinels if s in ids]
    if not used:
        raise InferenceError(f"text: contains no {MASK} or <extra_id_N> to fill")
    inputs = torch.tensor([ids + [tok.eos_token_id]])
    with torch.no_grad():
        out = run.model.generate(inputs, attention_mask=torch.ones_like(inputs), generation_config=config)
    spans = split_target_by_sentinel(out[0].tolist(), sentinels, tok.eos_token_id)
    filled = fill_sentinels(ids, spans, sentinels, tok.eos_token_id, tok.pad_token_id, keep_unfilled=True)
    return [
        _span_entry(tok, i, spans.get(sentinels.index(s), []), filled, tok.convert_ids_to_tokens(s))
        for i, s in enumerate(used)
    ]


def _fill_prefix(run: LoadedRun, text: str, config: GenerationConfig) -> list[dict[str, Any]]:
    from pretrainlab.models.glm import fill_blanks
    from pretrainlab.objectives.blank_infilling import reconstruct_from_parts

    tok = run.tokenizer
    text = _MASK_RUN.sub(MASK, _SENTINEL.sub(MASK, text))  # GLM: one [MASK] per blank, any length
    ids = tok(text, add_special_tokens=False)["input_ids"]
    positions = [i for i, t in enumerate(ids) if t == tok.mask_token_id]
    if not positions:
        raise InferenceError(f"text: contains no {MASK} to fill")
    spans = fill_blanks(run.model, tok, ids, generation_config=config)
    filled = reconstruct_from_parts(ids, spans, positions)
    return [_span_entry(tok, i, span, filled, MASK) for i, span in enumerate(spans)]


def _span_entry(
    tok: PreTrainedTokenizerBase, index: int, span: list[int], filled: list[int], blank: str
) -> dict[str, Any]:
    return {
        "blank": index,
        "marker": blank,
        "tokens": tok.convert_ids_to_tokens(span),
        "token_str": tok.decode(span, skip_special_tokens=True),
        "sequence": tok.decode(filled, skip_special_tokens=True),
    }


# -- generate -----------------------------------------------------------------------------
def generate(
    run: LoadedRun, prompt: str, decoding: dict[str, Any], num_return_sequences: int = 1
) -> list[str]:
    """Continue ``prompt``: causal decodes after it, seq2seq fills one sentinel placed after it
    (T5's way to continue text), prefix decodes a [gMASK] piece after it (GLM's prefix LM)."""
    tok = run.tokenizer
    config = generation_config(decoding, tok)
    config.num_return_sequences = num_return_sequences
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    if run.objective == "masked":
        raise InferenceError("objective=masked: cannot continue text; use pretrainlab-fill")
    if run.objective == "prefix":
        from pretrainlab.models.glm import continue_prefix

        return [
            prompt + tok.decode(continue_prefix(run.model, tok, ids, generation_config=config))
            for _ in range(num_return_sequences)
        ]
    if run.objective == "seq2seq":
        sentinel = sentinel_ids(tok, 1)[0]
        inputs = torch.tensor([ids + [sentinel, tok.eos_token_id]])
    else:
        inputs = torch.tensor([ids or [tok.eos_token_id]])
    with torch.no_grad():
        out = run.model.generate(inputs, attention_mask=torch.ones_like(inputs), generation_config=config)
    texts = []
    for row in out.tolist():
        if run.objective == "seq2seq":
            span = split_target_by_sentinel(row, sentinel_ids(tok, 100), tok.eos_token_id).get(0, [])
            texts.append(prompt + tok.decode(span, skip_special_tokens=True))
        else:
            texts.append(prompt + tok.decode(row[len(ids) :], skip_special_tokens=True))
    return texts


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


def _run_cli(main: Any) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        main()
    except (InferenceError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def fill_main(argv: list[str] | None = None) -> None:
    """Fill the [MASK] blanks of a text with a trained run's model."""
    parser = _parser("pretrainlab-fill", fill_main.__doc__)
    parser.add_argument("--top-k", type=int, default=5, help="candidates per [MASK] (masked objective)")
    args = parser.parse_args(argv)

    def main() -> None:
        torch.manual_seed(args.seed)
        run = load_run(args.run_dir)
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
                print(f"{answer['marker']} {i}: {answer['token_str']}")
                print(f"  {answer['sequence']}")

    _run_cli(main)


def generate_main(argv: list[str] | None = None) -> None:
    """Continue a prefix with a trained run's model, using a decoding strategy from conf/decoding."""
    parser = _parser("pretrainlab-generate", generate_main.__doc__)
    parser.add_argument("--num-return-sequences", type=int, default=1, help="continuations to return")
    args = parser.parse_args(argv)

    def main() -> None:
        torch.manual_seed(args.seed)
        run = load_run(args.run_dir)
        decoding = decoding_config(args.overrides)
        texts = generate(run, args.text, decoding, args.num_return_sequences)
        if args.json:
            print(json.dumps({"decoding": decoding, "generated": texts}, ensure_ascii=False, indent=2))
        else:
            for text in texts:
                print(text)

    _run_cli(main)

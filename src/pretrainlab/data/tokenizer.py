"""One tokenizer per corpus, carrying every special token the four objectives need.

Trained locally (CJK characters as single tokens, WordPiece for everything else) or loaded
from a folder / hub id. It has no post-processor: packed blocks carry no [CLS]/[SEP], and the
``text-generation`` pipeline must not wrap prompts in them either.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Sized
from typing import Any

from datasets.utils import tqdm as hf_tqdm
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from pretrainlab.config import ConfigError
from pretrainlab.network import offline_hint

log = logging.getLogger(__name__)

PAD, UNK, CLS, SEP, MASK, EOS = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "</s>"
SOP, EOP, GMASK = "[sop]", "[eop]", "[gMASK]"
NUM_SENTINELS = 100
SENTINELS = [f"<extra_id_{i}>" for i in range(NUM_SENTINELS)]
# Tokens beyond the five BERT ones: T5's sentinels, then GLM's piece markers.
EXTRA_SPECIAL = [*SENTINELS, SOP, EOP, GMASK]
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK, EOS, *EXTRA_SPECIAL]

# Tokens each objective cannot work without (checked when a pretrained tokenizer is loaded).
REQUIRED_TOKENS: dict[str, tuple[str, ...]] = {
    "masked": ("mask_token", "pad_token"),
    "causal": ("eos_token", "pad_token"),
    "seq2seq": ("eos_token", "pad_token"),
    "prefix": ("mask_token", "pad_token", "eos_token"),
}

# CJK ideographs, compatibility ideographs and CJK punctuation / full-width forms: one token each.
CJK = r"[\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]"
CONTINUATION = "##"
_SPACE = "▁"  # how Metaspace marks a space inside a token


def _pipeline(model: models.Model) -> Tokenizer:
    tok = Tokenizer(model)
    tok.normalizer = normalizers.NFC()
    # Metaspace keeps spaces as "▁" so decoding restores the text exactly (no spaces between
    # Chinese characters, unlike BERT's WordPiece decoder); CJK characters stand alone.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="never", split=True),
            pre_tokenizers.Split(Regex(CJK), behavior="isolated"),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=False),
        ]
    )
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace(CONTINUATION, ""),
            decoders.Fuse(),
            decoders.Metaspace(replacement=_SPACE, prepend_scheme="never"),
        ]
    )
    return tok


def wrap(tok: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """Give a `tokenizers` object the special-token roles transformers pipelines rely on."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
        eos_token=EOS,
        additional_special_tokens=EXTRA_SPECIAL,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, min_frequency: int, model_max_length: int
) -> PreTrainedTokenizerFast:
    """Train on the train split only, so validation text never shapes the vocabulary.

    ``texts`` is read once, in batches, as the trainer asks for them (a ``DatasetTexts`` streams a
    split from disk): the corpus is never held as one list of Python strings. The trainer's own
    bar is off (it runs in Rust, beside every other switch); a ``datasets`` progress bar counts
    the texts read, and goes with the others when ``datasets.disable_progress_bars()`` (or
    ``HF_DATASETS_DISABLE_PROGRESS_BARS=1``) silences them. A start line and an end line (texts,
    vocabulary size, seconds) say where the start of a run with a cold cache goes, instead of a
    silence that looks like a hang.
    """
    size = f"{len(texts)} texts" if isinstance(texts, Sized) else "the texts"
    log.info(
        "tokenizer: training WordPiece on %s (vocab_size=%d, min_frequency=%d) ...",
        size,
        vocab_size,
        min_frequency,
    )
    started = time.perf_counter()
    counted = _Counted(texts)
    tok = _pipeline(models.WordPiece(unk_token=UNK, continuing_subword_prefix=CONTINUATION))
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        # The default (1000) turns most of a Chinese corpus's ~4.7k characters into [UNK].
        limit_alphabet=100_000,
        continuing_subword_prefix=CONTINUATION,
        show_progress=False,
    )
    total = len(texts) if isinstance(texts, Sized) else None
    with hf_tqdm(total=total, desc="train tokenizer", unit=" examples") as bar:
        batches = (
            texts.batches(texts.batch_size, counted) if isinstance(texts, DatasetTexts) else _batches(counted)
        )
        tok.train_from_iterator(_progress(batches, bar), trainer=trainer)
    wrapped = wrap(_with_ascii_pieces(tok), model_max_length)
    log.info(
        "tokenizer: trained on %d texts in %.1f s: a vocabulary of %d tokens (vocab_size=%d asked)",
        counted.count,
        time.perf_counter() - started,
        len(wrapped),
        vocab_size,
    )
    if len(wrapped) < vocab_size:
        log.warning(
            "tokenizer.vocab_size=%d not reached: the corpus yields %d tokens at min_frequency=%d",
            vocab_size,
            len(wrapped),
            min_frequency,
        )
    return wrapped


def _with_ascii_pieces(tok: Tokenizer) -> Tokenizer:
    """Add every printable ASCII character (and the space mark) as a word start and a continuation.

    WordPiece turns a whole word into [UNK] when one piece is missing, so a Chinese corpus
    with no Latin text would make every English word [UNK]; with these pieces any ASCII word
    at least spells out. New ids go after the trained ones, which keep their ids.
    """
    state = json.loads(tok.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    for char in [_SPACE, *(chr(c) for c in range(33, 127))]:
        for piece in (char, CONTINUATION + char):
            vocab.setdefault(piece, len(vocab))
    return Tokenizer.from_str(json.dumps(state))


class _Counted:
    """An iterable of texts that counts what was read from it (a generator has no length)."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts = texts
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            self.count += 1
            yield text


class DatasetTexts:
    """The texts of one column of a ``datasets.Dataset``, streamed from disk in batches: what the
    tokenizer trains on (``Sized``, so its log line and progress bar know the total).

    ``limit`` keeps the first documents only (``tokenizer.max_training_documents``); on a split
    made by ``train_test_split`` (shuffled) those are a uniform random sample of the corpus.
    """

    def __init__(self, ds: Any, column: str, limit: int | None = None, batch_size: int = 1000) -> None:
        self.ds, self.column, self.limit, self.batch_size = ds, column, limit, batch_size

    def __len__(self) -> int:
        return len(self.ds) if self.limit is None else min(len(self.ds), self.limit)

    def __iter__(self) -> Iterator[str]:
        for batch in self.batches(self.batch_size):
            yield from batch

    def batches(self, size: int, counted: _Counted | None = None) -> Iterator[list[str]]:
        """The texts as lists of ``size`` (the last one shorter), as read from disk; ``counted``
        (the log line's counter) is advanced by each batch's length."""
        left = len(self)
        for batch in self.ds.select_columns([self.column]).iter(batch_size=min(size, left or 1)):
            texts = batch[self.column][:left]
            if counted is not None:
                counted.count += len(texts)
            yield texts
            left -= len(texts)
            if left <= 0:
                return


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _progress(batches: Iterator[list[str]], bar: Any) -> Iterator[list[str]]:
    """Advance ``bar`` by each batch's texts once the trainer has taken it."""
    for batch in batches:
        yield batch
        bar.update(len(batch))


def load_pretrained_tokenizer(name: str, objective: str) -> PreTrainedTokenizerBase:
    """Load a folder or hub id, add the special tokens it lacks, and check the objective's needs.

    A tokenizer without [MASK] cannot serve the masked objective: that is an error, not a
    silently added token with an untrained embedding.
    """
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"tokenizer.pretrained={name}: no tokenizer found there ({err.__class__.__name__})"
            + offline_hint(name)
        ) from err
    for role in REQUIRED_TOKENS[objective]:
        if role == "pad_token" and getattr(tok, role) is None and tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        if getattr(tok, role) is None:
            raise ConfigError(f"tokenizer.pretrained={name}: has no {role} (needed by objective={objective})")
    missing = [t for t in EXTRA_SPECIAL if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tok


def build_tokenizer(
    cfg: Any, objective: str, texts: Iterable[str], model_max_length: int
) -> PreTrainedTokenizerBase:
    """Pick training or loading from the ``tokenizer`` config.

    ``texts`` (the train split's) are read only to train; ``tokenizer.max_training_documents``
    is applied by whoever makes them (``DatasetTexts(..., limit=...)``), so that the log line and
    the progress bar count what is actually read.
    """
    if cfg.pretrained:
        return load_pretrained_tokenizer(cfg.pretrained, objective)
    return train_tokenizer(texts, cfg.vocab_size, cfg.min_frequency, model_max_length)

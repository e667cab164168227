"""Typed schemas for the config groups: what a config file may hold, and of which type.

Each group option in ``conf/`` starts with a defaults entry such as ``- /objective_masked_schema@_here_``,
which types the node with one of the dataclasses below: a misspelt key or a value of the wrong
type then fails when Hydra composes the config, not halfway through a run. The schemas are stored
at the root of Hydra's config store, outside every group, so ``--help`` and tab completion list
only the real options (``objective=masked_schema`` is "no such option"). Checks that need more
than one value live in :mod:`pretrainlab.validation`.

Nothing here imports another pretrainlab module: every other layer may import this one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict


class ConfigError(ValueError):
    """Bad user input, reported as one line naming the offending key or file."""


@dataclass
class ObjectiveConfig:
    """What every objective shares; ``mask_probability`` is the corruption share."""

    _target_: str = MISSING
    name: str = MISSING
    # One key for the masked, seq2seq and prefix objectives (MLM probability, T5 noise
    # density, GLM mask ratio), so one sweep crosses all three; null where nothing is masked.
    mask_probability: float | None = None


@dataclass
class MaskedObjectiveConfig(ObjectiveConfig):
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    whole_word_mask: bool = False
    # Groups CJK characters into words for whole_word_mask (rjieba or jieba); unused without it.
    word_segmenter: str = "rjieba"
    # Vocabulary projection only at labelled positions while training (same loss, less work).
    sparse_head: bool = True


@dataclass
class CausalObjectiveConfig(ObjectiveConfig):
    # Output layer + loss this many tokens at a time (models/chunked_loss.py); null: dense logits.
    loss_chunk_tokens: int | None = None


@dataclass
class Seq2SeqObjectiveConfig(ObjectiveConfig):
    mean_noise_span_length: float = 3.0
    # "reference": T5's masks (a non-noise run first, noise last), comparable with published T5
    # numbers; "uniform": spans may start anywhere (no positional bias on short documents).
    noise_layout: str = "reference"


@dataclass
class PrefixObjectiveConfig(ObjectiveConfig):
    span_poisson_lambda: float = 3.0
    mode: str = "mixed"
    gmask_probability: float = 0.5
    # Shortest generated share of a gMASK block: its length ~ U[ratio * L, L - 1] (GLM's gpt_min_ratio).
    gmask_min_ratio: float = 0.5
    # Blank spans may hold the eos between two packed documents (GLM keeps them inside one).
    spans_cross_documents: bool = False


@dataclass
class ModelConfig:
    """Shape numbers shared by every family, or a pretrained checkpoint to continue."""

    name: str = MISSING
    family: str | None = None
    pretrained: str | None = None
    n_layers: int = 2
    hidden_size: int = 128
    n_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    dropout: float = 0.0


@dataclass
class ProbeDataConfig:
    """A labelled file for the downstream probe instead of the built-in sentiment reviews."""

    path: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    test_fraction: float = 0.2


# The default of data.max_bad_line_fraction (also for configs saved before the key existed).
BAD_LINE_FRACTION = 0.01


@dataclass
class DataConfig:
    source: str = "sample_zh"
    path: str | None = None
    name: str | None = None
    subset: str | None = None
    split: str = "train"
    text_column: str = "text"
    block_size: int = 128
    packing: bool = True
    val_fraction: float = 0.05
    # Fixed apart from `seed`, so runs with different training seeds validate on the same text.
    split_seed: int = 0
    batch_size: int = 16
    num_workers: int = 0
    max_documents: int | None = None
    # Processes that tokenize the corpus; null: the usable cores (at most one per 10k documents).
    num_proc: int | None = None
    # Share of .txt lines that may be skipped for not being UTF-8 before that is an error.
    max_bad_line_fraction: float = BAD_LINE_FRACTION
    # Hash every file of a cache entry on load, however large (entries up to 128 MiB always
    # are; larger ones otherwise get their file sizes checked only).
    verify_cache: bool = False
    # Read, tokenize and pack the training documents while training (data/streaming.py): for
    # corpora that do not fit. The first `validation_documents` documents are the validation
    # split; `shuffle_window` blocks at a time are shuffled (1: the corpus order).
    streaming: bool = False
    validation_documents: int = 1000
    shuffle_window: int = 1000
    probe: ProbeDataConfig = field(default_factory=ProbeDataConfig)


@dataclass
class TokenizerConfig:
    pretrained: str | None = None
    # Set by tokenizer=pretrained, so a forgotten tokenizer.pretrained is an error, not a
    # silently trained tokenizer.
    required: bool = False
    vocab_size: int = 8000
    min_frequency: int = 2
    # Train on the first N documents of the (shuffled) train split only; null: all of them.
    max_training_documents: int | None = None


@dataclass
class OptimizerConfig:
    optimizer: Any = MISSING
    warmup_ratio: float = 0.05
    scheduler: str = "cosine"
    decay_ratio: float = 0.1


@dataclass
class FinetuneConfig:
    """Downstream fine-tuning, one recipe for every objective (evaluation/finetune.py).

    The defaults were measured on the built-in sentiment task (2000 training reviews, 1000
    test) at ``model=tiny`` on a shared 2-core CPU: 5-6 s a seed (8.5-10 s with
    ``max_length=128``; 200 steps of 32 took 70-80 s). A randomly initialised backbone reaches
    0.71-0.73 accuracy, far from what the task allows, so pretraining has room to show; lr 1e-3
    beat 3e-4 by 2-3 points for random and trained backbones alike. Larger models usually want
    a smaller ``lr`` (BERT-base: 2e-5 to 5e-5).
    """

    # Off in a plain run (it costs more than its training at the defaults); on in the studies.
    enabled: bool = False
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    dropout: float = 0.1
    max_length: int = 64


@dataclass
class EvaluationConfig:
    """End-of-run evaluation on held-out validation documents (the same for every objective)."""

    # Fixed apart from `seed`: every run of a study is evaluated on the same items.
    seed: int = 0
    generation: bool = True
    num_prompts: int = 16
    prompt_tokens: int = 16
    cloze: bool = True
    cloze_ks: list[int] = field(default_factory=lambda: [1, 2, 4])
    cloze_per_k: int = 64
    continuation: bool = True
    continuation_items: int = 64
    continuation_tokens: int = 32
    probe: bool = True
    probe_per_class: int = 1000
    probe_test_per_class: int = 500
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # More conf/decoding options to evaluate the trained model with, each into
    # RUN/eval/decoding=<name>/ (a training sweep over `decoding` sets it: one model per setting).
    decodings: list[str] = field(default_factory=list)


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: Any = "auto"
    precision: str = "32-true"
    max_steps: int = 300
    max_tokens: int | None = None
    # Optimizer steps between validations (each also saves checkpoints/last.ckpt).
    val_check_interval: int = 50
    # Also save last.ckpt every this many optimizer steps (null: only at validations and signals).
    checkpoint_every_n_steps: int | None = None
    limit_val_batches: Any = 20
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = 1.0
    accumulate_grad_batches: int = 1
    # Examples per optimizer step across all processes; when set, accumulate_grad_batches follows
    # from it (global / (data.batch_size x processes)), so data.batch_size, the micro-batch, can
    # grow with the memory at hand without changing the optimisation. null: batch x processes x
    # accumulate_grad_batches.
    global_batch_size: int | None = None
    deterministic: bool = False
    # torch.compile the backbone's transformer body (not a Lightning setting: applied by train()).
    compile: bool = False
    # Validate once before the first step: the curve's step-0 point and val/loss_initial. Off by
    # default (as in Lightning and transformers' Trainer): at model=small it costs more than the
    # whole start-up; the experiments, which compare curves from step 0, turn it on.
    validate_at_start: bool = False
    # Lightning's debugging switches (conf/debug/). overfit_batches: train on the same first N
    # batches (a fraction: that share of the run's batches) over and over, and validate on N.
    # (No limit_train_batches: the training data is one stream as long as the run, so
    # max_steps is the limit, and a smaller limit would only repeat the stream's first batches.)
    overfit_batches: Any = 0.0
    # null, "simple", "advanced", or a profiler object (debug=profiler writes its report into
    # the run folder).
    profiler: Any = None


# Where each schema is stored: at the config store's root (a config, not a group option), named
# <group>_schema or <group>_<option>_schema. The group files name them as `/<name>@_here_`.
SCHEMAS: dict[str, type] = {
    "objective_masked_schema": MaskedObjectiveConfig,
    "objective_causal_schema": CausalObjectiveConfig,
    "objective_seq2seq_schema": Seq2SeqObjectiveConfig,
    "objective_prefix_schema": PrefixObjectiveConfig,
    "model_schema": ModelConfig,
    "data_schema": DataConfig,
    "tokenizer_schema": TokenizerConfig,
    "optimizer_schema": OptimizerConfig,
    "trainer_schema": TrainerConfig,
    "evaluation_schema": EvaluationConfig,
}


def register_schemas() -> None:
    """Store the schemas where the group files' ``/<name>@_here_`` entries find them, and
    nowhere a user picks options from (called on import; idempotent)."""
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=name, node=node)


register_schemas()

# What schema_default answers for a key no schema types.
NO_DEFAULT: Any = object()


def _schema_of(cfg: DictConfig, group: str) -> type | None:
    """The dataclass that types ``cfg.<group>`` (the objective's by its name), or None."""
    if group == "objective":
        name = OmegaConf.select(cfg, "objective.name", default=None)
        return SCHEMAS.get(f"objective_{name}_schema")
    return SCHEMAS.get(f"{group}_schema")


# What a config saved before these keys existed did (the code's fallback for the absent key), where
# that is not the schema default: their default changed when they were introduced.
BEFORE_KEY_EXISTED: dict[str, Any] = {
    "trainer.validate_at_start": True,  # train._fit
    "objective.noise_layout": "uniform",  # objectives.seq2seq.LEGACY_NOISE_LAYOUT
}


def saved_default(cfg: DictConfig, key: str) -> Any:
    """What the dotted ``key`` meant in a saved config that lacks it: :data:`BEFORE_KEY_EXISTED`,
    else the schema's default; NO_DEFAULT when no schema types the key."""
    if key in BEFORE_KEY_EXISTED:
        return BEFORE_KEY_EXISTED[key]
    return schema_default(cfg, key)


def schema_default(cfg: DictConfig, key: str) -> Any:
    """The default the schema gives the dotted ``key`` (plain values: lists, dicts), or NO_DEFAULT.

    A key a schema gained after a run was saved has the value its default gives; comparing with
    it tells whether the run would do anything different (the resume check), and filling it in
    lets the saved config run again (pretrainlab-reproduce).
    """
    group, _, path = key.partition(".")
    schema = _schema_of(cfg, group)
    if schema is None or not path:
        return NO_DEFAULT
    defaults = OmegaConf.structured(schema)
    value = OmegaConf.select(defaults, path, default=NO_DEFAULT)
    if value is NO_DEFAULT or OmegaConf.is_missing(defaults, path):
        return NO_DEFAULT
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def schema_knows(cfg: DictConfig, key: str) -> bool | None:
    """Whether the schema typing the dotted ``key``'s parent has that key; None when no schema
    types the parent (``callbacks.*``, ``logger.*`` and the top level are untyped)."""
    group, _, path = key.partition(".")
    schema = _schema_of(cfg, group)
    if schema is None or not path:
        return None
    parent, _, leaf = path.rpartition(".")
    node = OmegaConf.structured(schema)
    if parent:
        node = OmegaConf.select(node, parent, default=None)
        if not isinstance(node, DictConfig) or OmegaConf.get_type(node) in (None, dict):
            return None
    return leaf in node


def fill_schema_defaults(cfg: DictConfig) -> list[str]:
    """Add the keys a saved config lacks (it predates them) with what their absence meant
    (:func:`saved_default`): a run saved before ``optimizer.scheduler`` existed reruns with the
    schedule it had. Returns the keys added; a composed config has them all (nothing changes)."""
    added: list[str] = []
    for group in ("objective", "model", "data", "tokenizer", "optimizer", "trainer", "evaluation"):
        node, schema = cfg.get(group), _schema_of(cfg, group)
        if isinstance(node, DictConfig) and schema is not None:
            _fill(node, OmegaConf.structured(schema), group, added)
    return added


def _fill(node: DictConfig, defaults: DictConfig, where: str, added: list[str]) -> None:
    for name in defaults:
        if OmegaConf.is_missing(defaults, name):  # required (`???`): nothing to fill in
            continue
        if name not in node:
            key = f"{where}.{name}"
            value = BEFORE_KEY_EXISTED.get(key, defaults[name])
            with open_dict(node):
                node[name] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            added.append(key)
        elif isinstance(node[name], DictConfig) and isinstance(defaults[name], DictConfig):
            _fill(node[name], defaults[name], f"{where}.{name}", added)

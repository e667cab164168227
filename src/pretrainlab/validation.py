"""The checks that run before any training: settings that cannot work, as one line each.

A typed schema (:mod:`pretrainlab.config`) catches a misspelt key or a value of the wrong type
when Hydra composes the config; :func:`validate` catches what needs more than one value (a
block longer than the model's positions, a data file that does not exist), before anything is
built. Each failure is a :class:`~pretrainlab.config.ConfigError` naming the key at fault.

Layering: this module imports :mod:`pretrainlab.config` (and, inside the checks that need them,
the model, data and generation modules); none of those imports it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from pretrainlab.config import BAD_LINE_FRACTION, NO_DEFAULT, ConfigError, saved_default, schema_knows

log = logging.getLogger(__name__)

DATA_SOURCES = ("sample_zh", "files", "hub")
PREFIX_MODES = ("blank", "gmask", "mixed")
# transformers' get_scheduler names that need only a warm-up and the number of steps.
SCHEDULERS = ("cosine", "linear", "constant_with_warmup", "warmup_stable_decay")


def _check_fraction(value: float | None, key: str) -> None:
    if value is None or not (0.0 < value < 1.0):
        raise ConfigError(f"{key}={value}: must be a number strictly between 0 and 1")


def _check_baseline(cfg: DictConfig) -> None:
    """``baseline=true`` evaluates the untrained backbone: nothing to resume, nothing to train."""
    baseline = cfg.get("baseline", False)
    if not isinstance(baseline, bool):
        raise ConfigError(f"baseline={baseline}: must be true or false")
    if baseline and cfg.get("resume") is not None:
        raise ConfigError(f"baseline=true: a baseline trains nothing, so it cannot resume={cfg.resume}")
    if baseline and cfg.model.pretrained is not None:
        raise ConfigError(
            f"baseline=true: the baseline is a randomly initialised backbone; drop model.pretrained="
            f"{cfg.model.pretrained} (evaluate a checkpoint with pretrainlab-eval instead)"
        )


def processes(cfg: DictConfig) -> int:
    """The processes a run trains in (``trainer.devices`` when it is a count; else one)."""
    devices = cfg.trainer.devices
    return devices if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0 else 1


def accumulation(cfg: DictConfig) -> int:
    """Micro-batches per optimizer step: from ``trainer.global_batch_size`` when it is set (it
    must be a multiple of data.batch_size x processes), else ``trainer.accumulate_grad_batches``.
    Raises ConfigError, naming the keys, when the two disagree or the global batch does not divide.
    """
    trainer = cfg.trainer
    wanted = trainer.get("global_batch_size")  # configs saved before the key existed: unset
    if wanted is None:
        return trainer.accumulate_grad_batches
    devices = trainer.devices
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ConfigError(
            f"trainer.global_batch_size={wanted}: needs trainer.devices as a number of processes "
            f"(got {devices}), to know the accumulation"
        )
    micro = cfg.data.batch_size * processes(cfg)
    if isinstance(wanted, bool) or wanted < 1 or wanted % micro:
        raise ConfigError(
            f"trainer.global_batch_size={wanted}: must be a positive multiple of data.batch_size x processes "
            f"({cfg.data.batch_size} x {processes(cfg)} = {micro})"
        )
    steps = wanted // micro
    if trainer.accumulate_grad_batches not in (1, steps):
        raise ConfigError(
            f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}: trainer.global_batch_size="
            f"{wanted} sets it ({steps}); set only one of them"
        )
    return steps


def _check_streaming(cfg: DictConfig) -> None:
    """``data.streaming``: packed blocks only, and none of what needs the corpus up front."""
    data = cfg.data
    if not data.get("streaming", False):  # configs saved before the key existed: off
        return
    if not data.packing:
        raise ConfigError("data.packing=false: streaming cuts packed blocks only (set data.packing=true)")
    if cfg.objective.get("whole_word_mask", False):
        raise ConfigError(
            "objective.whole_word_mask=true: not available with data.streaming=true (word starts are "
            "computed over the cached corpus)"
        )
    if data.validation_documents < 1:
        raise ConfigError(f"data.validation_documents={data.validation_documents}: must be at least 1")
    if data.shuffle_window < 1:
        window = data.shuffle_window
        raise ConfigError(f"data.shuffle_window={window}: must be at least 1 (1: the corpus order)")


def _check_finetune(cfg: DictConfig) -> None:
    """Fine-tuning settings that cannot train (configs saved before the key existed have none)."""
    finetune = cfg.evaluation.get("finetune")
    if finetune is None or not finetune.enabled:
        return
    if not finetune.seeds:
        raise ConfigError("evaluation.finetune.seeds=[]: needs at least one fine-tuning seed")
    for key in ("steps", "batch_size", "lr", "max_length"):
        if finetune[key] <= 0:
            raise ConfigError(f"evaluation.finetune.{key}={finetune[key]}: must be positive")
    if not 0.0 <= finetune.warmup_ratio < 1.0:
        raise ConfigError(f"evaluation.finetune.warmup_ratio={finetune.warmup_ratio}: must be in [0, 1)")
    if not 0.0 <= finetune.dropout < 1.0:
        raise ConfigError(f"evaluation.finetune.dropout={finetune.dropout}: must be in [0, 1)")


def validate(cfg: DictConfig, *, with_libraries: bool = True) -> None:
    """Reject settings that cannot work, before any data is read or model built.

    Each failure is a :class:`ConfigError` whose message starts with the key or file at fault;
    the entry point prints it as one line and exits non-zero. The checks that need torch or
    transformers come last, so a setting rejected before them costs no import of those;
    ``with_libraries=False`` skips them (the entry point's check before it imports anything).
    """
    obj, data, model = cfg.objective, cfg.data, cfg.model
    seed = cfg.get("seed", 0)
    if not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed}: must be an integer from 0 to 4294967295")
    _check_cache_dir(cfg.paths.cache_dir)
    if not isinstance(cfg.get("offline", True), bool):
        raise ConfigError(f"offline={cfg.offline}: must be true or false")
    _check_baseline(cfg)
    chunk = obj.get("loss_chunk_tokens")  # causal only
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ConfigError(
            f"objective.loss_chunk_tokens={chunk}: must be a number of tokens, at least 1 (or null)"
        )
    if obj.name in ("masked", "seq2seq", "prefix"):
        _check_fraction(obj.mask_probability, "objective.mask_probability")
    if obj.name == "masked":
        for key in ("mask_replace_prob", "random_replace_prob"):
            if not 0.0 <= obj[key] <= 1.0:
                raise ConfigError(f"objective.{key}={obj[key]}: must be between 0 and 1")
        if obj.mask_replace_prob + obj.random_replace_prob > 1.0:
            raise ConfigError(
                "objective.mask_replace_prob + objective.random_replace_prob: must not exceed 1"
            )
    if obj.name == "seq2seq" and obj.mean_noise_span_length < 1:
        raise ConfigError(
            f"objective.mean_noise_span_length={obj.mean_noise_span_length}: must be at least 1"
        )
    if obj.name == "prefix":
        if obj.mode not in PREFIX_MODES:
            raise ConfigError(f"objective.mode={obj.mode}: must be one of {', '.join(PREFIX_MODES)}")
        if obj.span_poisson_lambda <= 0:
            raise ConfigError(f"objective.span_poisson_lambda={obj.span_poisson_lambda}: must be positive")
        if not 0.0 <= obj.gmask_probability <= 1.0:
            raise ConfigError(f"objective.gmask_probability={obj.gmask_probability}: must be between 0 and 1")
        # .get: configs saved before these keys existed still validate.
        gmask_min_ratio = obj.get("gmask_min_ratio", 0.5)
        if not 0.0 <= gmask_min_ratio <= 1.0:
            raise ConfigError(f"objective.gmask_min_ratio={gmask_min_ratio}: must be between 0 and 1")
        cross = obj.get("spans_cross_documents", False)
        if not isinstance(cross, bool):
            raise ConfigError(f"objective.spans_cross_documents={cross}: must be true or false")
    if data.source not in DATA_SOURCES:
        raise ConfigError(f"data.source={data.source}: must be one of {', '.join(DATA_SOURCES)}")
    # `???` in a group file cannot mark these required: merged over a schema default of None,
    # OmegaConf keeps the None. So they are checked here.
    if data.source == "files" and not data.path:
        raise ConfigError("data.path: required with data=files (a file or folder of documents)")
    if data.source == "hub" and not data.name:
        raise ConfigError("data.name: required with data=hub (a data set name or local folder)")
    if cfg.tokenizer.get("required") and not cfg.tokenizer.pretrained:
        raise ConfigError("tokenizer.pretrained: required with tokenizer=pretrained (a folder or hub id)")
    if data.source == "files" and not Path(data.path).expanduser().exists():
        raise ConfigError(f"data.path={data.path}: no such file or directory")
    if data.block_size <= 0:
        raise ConfigError(f"data.block_size={data.block_size}: must be positive")
    if data.block_size < 2:
        raise ConfigError(
            f"data.block_size={data.block_size}: must be at least 2 (a block needs a token to read "
            "and one to predict)"
        )
    if obj.name == "masked" and data.batch_size > 0:
        _check_masked_share(obj.mask_probability, data.block_size, data.batch_size)
    if model.pretrained is None and data.block_size > model.max_position_embeddings:
        raise ConfigError(
            f"data.block_size={data.block_size}: larger than the model's maximum positions "
            f"(model.max_position_embeddings={model.max_position_embeddings})"
        )
    if data.batch_size <= 0:
        raise ConfigError(f"data.batch_size={data.batch_size}: must be positive")
    if not 0.0 < data.val_fraction <= 0.5:
        raise ConfigError(f"data.val_fraction={data.val_fraction}: must be in (0, 0.5]")
    if data.probe.path is not None and not Path(data.probe.path).expanduser().is_file():
        raise ConfigError(f"data.probe.path={data.probe.path}: no such file")
    _check_finetune(cfg)
    bad_line_fraction = data.get("max_bad_line_fraction", BAD_LINE_FRACTION)
    if not 0.0 <= bad_line_fraction < 1.0:
        raise ConfigError(f"data.max_bad_line_fraction={bad_line_fraction}: must be in [0, 1)")
    if data.max_documents is not None and data.max_documents <= 1:
        raise ConfigError(f"data.max_documents={data.max_documents}: must be at least 2")
    num_proc = data.get("num_proc")
    if num_proc is not None and num_proc < 1:
        raise ConfigError(f"data.num_proc={num_proc}: must be at least 1 (or null: the usable cores)")
    _check_streaming(cfg)
    accumulation(cfg)
    cap = cfg.tokenizer.get("max_training_documents")
    if cap is not None and cap < 1:
        raise ConfigError(f"tokenizer.max_training_documents={cap}: must be at least 1 (or null: all)")
    _check_model_shape(model)
    _check_schedule(cfg.optimizer)
    if cfg.trainer.max_steps <= 0 and cfg.trainer.max_tokens is None:
        raise ConfigError(f"trainer.max_steps={cfg.trainer.max_steps}: must be positive")
    if cfg.trainer.max_tokens is not None and cfg.trainer.max_tokens <= 0:
        raise ConfigError(f"trainer.max_tokens={cfg.trainer.max_tokens}: must be positive (or null)")
    overfit = cfg.trainer.get("overfit_batches", 0.0)  # configs saved before the key existed: off
    if isinstance(overfit, bool) or not isinstance(overfit, int | float) or overfit < 0:
        raise ConfigError(
            f"trainer.overfit_batches={overfit}: must be a number of batches, a share of them, or 0 (off)"
        )
    every = cfg.trainer.get("checkpoint_every_n_steps")
    if every is not None and every <= 0:
        raise ConfigError(f"trainer.checkpoint_every_n_steps={every}: must be positive (or null)")
    limit_val = cfg.trainer.limit_val_batches
    if isinstance(limit_val, int | float) and limit_val <= 0:
        # Lightning's way to switch validation off; here every run is judged by its final
        # validation loss, so that would fail only after training.
        raise ConfigError(
            f"trainer.limit_val_batches={limit_val}: must be positive (a run's result is its "
            "final validation loss)"
        )
    _check_strategy(cfg.trainer)
    _check_devices(cfg.trainer)
    if cfg.tokenizer.pretrained is None and cfg.tokenizer.vocab_size < 100:
        raise ConfigError(f"tokenizer.vocab_size={cfg.tokenizer.vocab_size}: must be at least 100")
    if model.pretrained is not None:
        _check_pretrained_path(model.pretrained, "model.pretrained")
    if cfg.tokenizer.pretrained is not None:
        _check_pretrained_path(cfg.tokenizer.pretrained, "tokenizer.pretrained")
    if with_libraries:
        _check_with_libraries(cfg)


def _check_with_libraries(cfg: DictConfig) -> None:
    """The checks that import torch or transformers (seconds): run after every other check."""
    from pretrainlab.models.backbones import check_family

    obj = cfg.objective
    if obj.name == "masked":
        from pretrainlab.data.words import DEFAULT_SEGMENTER, SEGMENTERS, is_installed

        segmenter = obj.get("word_segmenter") or DEFAULT_SEGMENTER
        if segmenter not in SEGMENTERS:
            raise ConfigError(f"objective.word_segmenter={segmenter}: must be one of {', '.join(SEGMENTERS)}")
        if obj.whole_word_mask and not is_installed(segmenter):
            raise ConfigError(
                f"objective.word_segmenter={segmenter}: not installed, and objective.whole_word_mask "
                f"needs it (pip install {SEGMENTERS[segmenter]})"
            )
    # A config saved before noise_layout existed (pretrainlab-reproduce) has none: nothing to check.
    if obj.name == "seq2seq" and obj.get("noise_layout") is not None:
        from pretrainlab.objectives.span_corruption import NOISE_LAYOUTS

        if obj.noise_layout not in NOISE_LAYOUTS:
            raise ConfigError(
                f"objective.noise_layout={obj.noise_layout}: must be one of {', '.join(NOISE_LAYOUTS)}"
            )
    check_family(obj.name, cfg.model.family)
    check_decoding(cfg)
    _warn_untrained_block_positions(cfg)
    _warn_slow_cpu_bf16(cfg)


def _check_model_shape(model: DictConfig) -> None:
    """Shapes transformers would only reject (or silently accept) after the data is prepared."""
    if model.pretrained is not None:  # the checkpoint's own config decides its shape
        return
    for key in ("n_layers", "hidden_size", "n_heads", "intermediate_size"):
        if model[key] < 1:
            raise ConfigError(f"model.{key}={model[key]}: must be at least 1")
    if model.hidden_size % model.n_heads:
        raise ConfigError(
            f"model.hidden_size={model.hidden_size}: must be a multiple of model.n_heads={model.n_heads}"
        )


def _check_schedule(optimizer: DictConfig) -> None:
    if optimizer.optimizer.lr <= 0:
        raise ConfigError(f"optimizer.optimizer.lr={optimizer.optimizer.lr}: must be positive")
    if optimizer.scheduler not in SCHEDULERS:
        choices = ", ".join(SCHEDULERS)
        raise ConfigError(f"optimizer.scheduler={optimizer.scheduler}: must be one of {choices}")
    if not 0.0 <= optimizer.warmup_ratio < 1.0:
        raise ConfigError(f"optimizer.warmup_ratio={optimizer.warmup_ratio}: must be in [0, 1)")
    if optimizer.scheduler == "warmup_stable_decay" and not (
        0.0 < optimizer.decay_ratio <= 1.0 - optimizer.warmup_ratio
    ):
        raise ConfigError(
            f"optimizer.decay_ratio={optimizer.decay_ratio}: must be in (0, 1 - optimizer.warmup_ratio]"
        )


# A batch without a masked token has no loss: refused when more than this share of batches would.
EMPTY_BATCH_SHARE = 1e-3


def _check_masked_share(probability: float, block_size: int, batch_size: int) -> None:
    """Each token is masked with ``probability``, so a batch of n tokens has none with chance
    (1 - p)^n. Such a batch has no loss to learn from (its mean over no token is NaN)."""
    tokens = block_size * batch_size
    empty = (1.0 - probability) ** tokens
    if empty > EMPTY_BATCH_SHARE:
        raise ConfigError(
            f"objective.mask_probability={probability}: a batch of data.batch_size={batch_size} x "
            f"data.block_size={block_size} tokens would have no masked token {empty:.1%} of the time "
            f"({probability * tokens:.1f} on average), and then no loss; raise it or the batch"
        )


def _check_cache_dir(value: str) -> None:
    """The cache is written before anything else: a folder that cannot be written fails here."""
    import tempfile

    folder = Path(str(value)).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ConfigError(
            f"paths.cache_dir={value}: not writable ({err.strerror or type(err).__name__}); set "
            "PRETRAINLAB_CACHE to a writable folder"
        ) from err


def available_devices(accelerator: str) -> tuple[int, str]:
    """How many devices of this kind the machine has, and what to call them in a message."""
    if accelerator not in ("gpu", "cuda", "auto", "mps"):  # CPU processes: no torch import needed
        return os.cpu_count() or 1, "CPU cores are available"
    import torch

    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.device_count(), "GPUs are visible"
    if accelerator == "mps":
        return int(torch.backends.mps.is_available()), "MPS devices are available"
    return os.cpu_count() or 1, "CPU cores are available"


def _check_strategy(trainer: DictConfig) -> None:
    """FSDP cannot run on CPU (torch refuses it when wrapping the model): say so up front."""
    strategy = trainer.strategy
    name = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy)
    if "fsdp" in name.lower() and trainer.accelerator == "cpu":
        raise ConfigError(
            "trainer.strategy: FSDP needs GPUs (torch's FSDP has no CPU support); on CPU use trainer=ddp"
        )


def _check_devices(trainer: DictConfig) -> None:
    """``trainer.devices`` as a count (an int, or -1 for all): no more than the machine has.

    On CPU a device is a process, so more processes than cores would only thrash. Lists of
    device indices and "auto" are left to Lightning.
    """
    devices = trainer.devices
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if not isinstance(devices, int) or devices == -1:
        return
    if devices < 1:
        raise ConfigError(f"trainer.devices={devices}: must be at least 1 (or -1 for all)")
    available, what = available_devices(str(trainer.accelerator))
    if devices > available:
        raise ConfigError(
            f"trainer.devices={devices}: only {available} {what} (trainer.accelerator={trainer.accelerator})"
        )


def check_decoding(cfg: DictConfig) -> None:
    """The decoding strategy is used only after training: check it before training starts."""
    from transformers import GenerationConfig

    from pretrainlab.generation.contrastive import validate_strict

    decoding = OmegaConf.to_container(cfg.decoding, resolve=True)
    settings = {k: v for k, v in decoding.items() if k != "name"}
    # Ranges transformers checks only when decoding starts (in its logits warpers).
    ranges = {
        "temperature": (lambda v: v > 0, "must be positive"),
        "top_p": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
        "min_p": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
        "top_k": (lambda v: v >= 0, "must be at least 0"),
        "num_beams": (lambda v: v >= 1, "must be at least 1"),
        "max_new_tokens": (lambda v: v >= 1, "must be at least 1"),
        "penalty_alpha": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    }
    for key, (ok, rule) in ranges.items():
        if settings.get(key) is not None and not ok(settings[key]):
            raise ConfigError(f"decoding.{key}={settings[key]}: {rule}")
    try:
        validate_strict(GenerationConfig(**settings))
    except ValueError as err:
        # transformers lists each problem on a line starting with "- `key`: ..."; keep the first.
        lines = [line.lstrip("- ") for line in str(err).splitlines() if line.startswith("- ")]
        reason = lines[0] if lines else str(err).strip().splitlines()[0]
        raise ConfigError(f"decoding={decoding.get('name')}: {reason}") from err
    if cfg.objective.name == "prefix" and (settings.get("num_beams") or 1) > 1:
        raise ConfigError(
            f"decoding.num_beams={settings['num_beams']}: the prefix (GLM) decoder has no beam search; "
            "use greedy, sampling, top_k, top_p, min_p or contrastive"
        )


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX in the CPU's flags (Linux): without them torch runs bf16 matmuls by
    converting to fp32 and back, slower than fp32 itself (2.8x per step measured on such a Xeon)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True  # not Linux: cannot tell, so say nothing
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _warn_slow_cpu_bf16(cfg: DictConfig) -> None:
    """``trainer=cpu_fast`` (bf16 autocast) on a CPU without bf16 instructions trains slower
    than ``trainer=cpu``: one line before training, instead of a run that is slower than promised."""
    trainer = cfg.trainer
    if (
        trainer.accelerator == "cpu"
        and str(trainer.precision).startswith("bf16")
        and not cpu_has_native_bf16()
    ):
        log.warning(
            "trainer.precision=%s: this CPU has no bf16 instructions (avx512_bf16/amx_bf16), so bf16 "
            "steps are slower than fp32 here; trainer=cpu is faster on this machine",
            trainer.precision,
        )


def _warn_untrained_block_positions(cfg: DictConfig) -> None:
    """The GLM decoder gives its n-th generated token block position n + 1; training reaches
    block positions up to the longest [gMASK] span + 1, at most ``data.block_size``. Rows past
    that were never trained: the generation still runs, but say so before training."""
    from pretrainlab.objectives.blank_infilling import trains_gmask

    obj = cfg.objective
    if obj.name != "prefix" or not trains_gmask(obj.mode, obj.gmask_probability):
        return  # no [gMASK] trained: continuation is not evaluated at all (PrefixLM.continuation_problem)
    longest = cfg.data.block_size  # a [gMASK] span has at most block_size - 1 tokens, + [sop]
    reads = (cfg.decoding.get("max_new_tokens") or 0) + 1
    if reads > longest:
        log.warning(
            "decoding.max_new_tokens=%s: the prefix model's generations read block positions up to %d, "
            "training reaches at most %d (data.block_size); tokens past that use untrained embeddings",
            cfg.decoding.max_new_tokens,
            reads,
            longest,
        )


def _check_pretrained_path(value: str, key: str) -> None:
    """A value that looks like a local path must exist; anything else is taken as a hub id."""
    looks_local = value.startswith((".", "/", "~")) or Path(value).expanduser().exists()
    if looks_local and not Path(value).expanduser().is_dir():
        raise ConfigError(f"{key}={value}: no such folder")


# -- resuming a run saved by an older version -----------------------------------------------------


def one_sided_setting_is_harmless(
    config: DictConfig, run_dir: Path, key: str, in_saved: bool, value: Any
) -> bool:
    """Whether a setting that only one of the saved run's config and the resuming one has
    (``value``: its value there) leaves the run as it was, so ``resume=RUN_DIR`` need not refuse it.

    A key only the saved config has is harmless when it was removed since: a key its schema no
    longer has, or a top-level value (``task_name``) that is not a node (a callback, a logger),
    and in both cases not one the run's own overrides added (``+x=...``, which the resuming
    command then lacks). A key only the resuming config has was added since
    (``optimizer.scheduler``): harmless at the value its absence meant (:func:`setting_default`).
    """
    if in_saved:
        if _named_by(_saved_overrides(run_dir), key):
            return False
        if "." not in key:
            return not isinstance(value, dict | list)
        return schema_knows(config, key) is False
    default = setting_default(config, key)
    return default is not NO_DEFAULT and value == default


def setting_default(config: DictConfig, key: str) -> Any:
    """What a config that lacks the dotted ``key`` runs with: for a typed key, what its absence
    meant (:func:`pretrainlab.config.saved_default`); otherwise the value the config files give
    it for the same group choices, without command-line overrides (``tags: []``). NO_DEFAULT when
    neither is known. The second needs a running Hydra app (the resume check runs in one)."""
    value = saved_default(config, key)
    if value is not NO_DEFAULT:
        return value
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    hydra_node = config.get("hydra")
    if hydra_node is None or not GlobalHydra.instance().is_initialized():
        return NO_DEFAULT
    choices = {g: o for g, o in hydra_node.runtime.choices.items() if "/" not in g and g not in SELF_CHOSEN}
    overrides = [f"{g}={o}" for g, o in choices.items() if o is not None]
    try:
        files = compose(config_name=hydra_node.job.config_name, overrides=overrides)
    except Exception:  # noqa: BLE001 - no default known: the check stays strict
        return NO_DEFAULT
    value = OmegaConf.select(files, key, default=NO_DEFAULT)
    return OmegaConf.to_container(value, resolve=False) if OmegaConf.is_config(value) else value


# Groups not to name again: Hydra's own, and the optional `local` (applied when its file exists).
SELF_CHOSEN = ("hydra", "local")


def _saved_overrides(run_dir: Path) -> list[str]:
    try:
        items = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []
    return [str(o) for o in items] if isinstance(items, list) else []


def _named_by(overrides: list[str], key: str) -> bool:
    """Whether an override sets ``key``, a key inside it, or a node holding it."""
    for override in overrides:
        named = override.split("=", 1)[0].lstrip("+~")
        if named == key or key.startswith(f"{named}.") or named.startswith(f"{key}."):
            return True
    return False

"""W&B runs that compare objectives: one x-axis, the run's record in its summary, a sweep's identity.

What a W&B project of pretrainlab runs needs for "val/loss vs tokens_seen, grouped by objective":

- **the axis**: ``tokens_seen`` (corpus tokens) is on every train and validation row (logged by
  :class:`pretrainlab.callbacks.TokenThroughput`) and is declared the x-axis of every metric. Steps
  are not comparable: at one token budget seq2seq takes fewer steps (it packs longer raw blocks).
- **the summary**: every key of ``metrics.json`` (:func:`log_run_end`), so the runs table and
  parallel-coordinates panels show what the run folder says.
- **identity**: group = the sweep (its experiment, else its folder relative to where it was
  launched), name = what varies between the sweep's jobs, tags = ``tags`` + ``logger.wandb.tags``,
  job_type = the objective; one run per run folder (a resumed run continues it).
- **the model**: ``logger.wandb.log_model=true`` uploads the exported ``hf/`` folder as a ``model``
  artifact at the end of the run; never Lightning's checkpoints.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger as LightningWandbLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment

from pretrainlab.distributed import is_rank_zero
from pretrainlab.loggers import wandb_run_id
from pretrainlab.utils import finish_wandb

log = logging.getLogger(__name__)

# The x-axis every metric is drawn against; TokenThroughput logs it on every train and validation row.
TOKEN_AXIS = "tokens_seen"
# Parts of a sweep folder kept as its group when it lies outside the launch folder: the depth of
# the default multirun/<date>/<time>.
GROUP_PARTS = 3


def define_token_axis(run: Any) -> None:
    """Declare ``tokens_seen`` the x-axis of ``train/*``, ``val/*`` and every other metric.

    Why ``*`` too: Lightning declares ``*`` -> ``trainer/global_step``, and wandb-core gives a key
    that several globs match the axis of *any* of them (it iterates a map), so ``val/loss`` would
    land on steps in some runs and on tokens in others. With every glob saying ``tokens_seen``
    the axis is the same in every run; ``trainer/global_step`` stays on every row for a step axis.
    ``step_sync`` fills in the latest ``tokens_seen`` on a row that lacks it (the end-of-run
    evaluation's row).
    """
    run.define_metric(TOKEN_AXIS)
    run.define_metric("*", step_metric=TOKEN_AXIS, step_sync=True, overwrite=True)
    for glob in ("train/*", "val/*"):
        run.define_metric(glob, step_metric=TOKEN_AXIS, step_sync=True)


class WandbLogger(LightningWandbLogger):
    """Lightning's W&B logger with ``tokens_seen`` as the x-axis and ``log_model`` kept for hf/.

    ``log_model`` is pretrainlab's setting, never handed to Lightning, whose ``log_model`` uploads
    ``.ckpt`` files (optimizer state included) at the end of fit; :func:`log_run_end` uploads the
    exported ``hf/`` folder instead, once the run has written it.
    """

    def __init__(self, *args: Any, log_model: bool | str = False, **kwargs: Any) -> None:
        super().__init__(*args, log_model=False, **kwargs)
        # "all" (Lightning's every-checkpoint choice) means the same here: the final model.
        self.upload_model = bool(log_model)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The W&B run, its axes declared as it starts (before any row is logged)."""
        starting = self._experiment is None
        run = super().experiment
        if starting and run is not None and hasattr(run, "define_metric"):
            define_token_axis(run)
        return run


def build_wandb_logger(cfg: DictConfig, logger_cfg: DictConfig) -> Any:
    """The job's W&B logger: identity from the sweep (settings given in the config win), tags
    merged, and one run id per run folder so that ``resume=RUN_DIR`` continues the same run."""
    identity: dict[str, Any] = {k: v for k, v in wandb_identity(cfg).items() if logger_cfg.get(k) is None}
    identity["tags"] = wandb_tags(cfg, logger_cfg)
    if logger_cfg.get("id") is None and is_rank_zero():
        # One W&B run per run folder: a resumed run continues it.
        identity.update(id=wandb_run_id(cfg.paths.output_dir), resume="allow")
    return start_wandb(logger_cfg, identity)


def wandb_tags(cfg: DictConfig, logger_cfg: DictConfig) -> list[str]:
    """The run's top-level ``tags`` then ``logger.wandb.tags``, each once: labels set for every
    logger reach W&B without being repeated in the logger's own list."""
    tags = [*(cfg.get("tags") or []), *(logger_cfg.get("tags") or [])]
    return list(dict.fromkeys(str(t) for t in tags))


def start_wandb(logger_cfg: DictConfig, identity: dict[str, Any]) -> Any:
    """A W&B logger that cannot kill the run: online mode that fails to start falls back to offline.

    The run is started here, not at the first metric, so that a missing login or network shows
    up before training, as a warning, and the job (and the sweep around it) goes on with an
    offline run that ``wandb sync`` can upload later.
    """
    from pretrainlab.network import quiet_wandb

    quiet_wandb(logger_cfg.get("mode"))  # before W&B starts: its telemetry ignores an offline mode
    # Offline, W&B's ~35-line history/summary block at the end of the run (and its sync hints)
    # repeat what metrics.json and the run folder hold: quiet, unless the config sets `settings`
    # (`+logger.wandb.settings.quiet=false` brings the block back).
    quiet = {} if logger_cfg.get("settings") is not None else {"settings": {"quiet": True}}
    if logger_cfg.get("mode") in ("offline", "disabled"):
        return _instantiate_wandb(logger_cfg, **identity, **quiet)
    logger = _instantiate_wandb(logger_cfg, **identity)
    try:
        logger.experiment  # noqa: B018 - starts the W&B run (rank 0 only)
    except Exception as err:  # noqa: BLE001 - W&B raises many kinds (CommError, UsageError, timeouts)
        first_line = (str(err).strip().splitlines() or [""])[0]
        log.warning(
            "W&B could not start online (%s: %s); logging offline instead (upload later with wandb sync)",
            type(err).__name__,
            first_line,
        )
        finish_wandb()
        logger = _instantiate_wandb(logger_cfg, **{**identity, "mode": "offline", **quiet})
    return logger


def _instantiate_wandb(logger_cfg: DictConfig, **kwargs: Any) -> Any:
    """The configured W&B logger, without the setting that only makes W&B complain.

    Lightning 2.6 always hands ``anonymous`` (None unless set) to ``wandb.init``, which W&B 0.31
    answers on every start with "The anonymous setting has no effect and will be removed".
    Values reach W&B as plain dicts and lists (it ignores a DictConfig of ``settings``).
    A config naming Lightning's own class (saved before pretrainlab had one) gets
    ``log_model=False`` too: Lightning would upload checkpoints.
    """
    target = _target_class(logger_cfg)
    if issubclass(target, LightningWandbLogger) and not issubclass(target, WandbLogger):
        kwargs["log_model"] = False
    logger = instantiate(logger_cfg, _convert_="all", **kwargs)
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)
    return logger


def _target_class(logger_cfg: DictConfig) -> type:
    from hydra.utils import get_class

    try:
        return get_class(str(logger_cfg.get("_target_")))
    except Exception:  # noqa: BLE001 - an unloadable target fails in instantiate, with Hydra's message
        return object


# -- identity ------------------------------------------------------------------------------------


def wandb_identity(cfg: DictConfig) -> dict[str, Any]:
    """group = the sweep (its experiment, else its folder), name = what sets the job apart.

    W&B dashboards then group the jobs of one sweep and tell them apart by what was swept: a
    job's overrides that every job of its sweep shares (the command line's plain settings, an
    Optuna search's fixed parameters) are left out of its name. A single run is named by all
    its overrides; a run with none, by its objective.
    """
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    # evaluation.decodings: what our sweeper adds to a job that trains once for several decodings
    # (each is evaluated into the run's eval/ folder, not a run of its own): not what sets it apart.
    unnamed = ("hydra.", "experiment=", "evaluation.decodings=")
    overrides = [o for o in hc.overrides.task if not o.startswith(unnamed)]
    experiment = hc.runtime.choices.get("experiment")
    group = None
    if hc.mode == RunMode.MULTIRUN:
        group = experiment or sweep_group(str(hc.sweep.dir), str(hc.runtime.cwd))
        sweep = Path(str(hc.runtime.cwd), str(hc.sweep.dir))  # an absolute sweep.dir stays itself
        # A one-job sweep shares everything: named like a single run.
        overrides = without_shared(overrides, sweep_shared_overrides(sweep)) or overrides
    return {"group": group, "name": ",".join(overrides) or cfg.objective.name}


def sweep_group(sweep_dir: str, launch_dir: str) -> str:
    """A sweep folder as a W&B group: relative to the folder it was launched from when inside
    it (``multirun/2026-11-28/12-00-00``), else its last ``GROUP_PARTS`` parts.

    Never an absolute path: the same sweep reads the same wherever the project lives, and a
    group stays within W&B's length limit.
    """
    launch = Path(launch_dir).resolve()
    folder = (launch / sweep_dir).resolve()  # an absolute sweep_dir replaces `launch`
    if folder.is_relative_to(launch):
        return folder.relative_to(launch).as_posix()
    return "/".join(folder.parts[-GROUP_PARTS:])


def sweep_shared_overrides(sweep_dir: Path) -> set[tuple[str, str]]:
    """What every job of the sweep in ``sweep_dir`` is launched with, as (key, value) pairs.

    Read from the ``multirun.yaml`` that Hydra's sweepers (basic, pretrainlab's, its Optuna
    search) write into the sweep folder before launching: the command line's overrides
    (``hydra.overrides.task``) and the sweeper's ``params`` that are plain values, not sweeps.
    Empty when the file is missing (a sweeper that writes none): names keep every override.
    """
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return set()
    try:
        sweep = OmegaConf.load(path)
        task = list(OmegaConf.select(sweep, "hydra.overrides.task", default=None) or [])
        params = OmegaConf.select(sweep, "hydra.sweeper.params", default=None) or {}
        candidates = task + [f"{k}={v}" for k, v in params.items()]
    except Exception as err:  # noqa: BLE001 - a damaged file must not stop the job: names keep all
        log.warning("%s: not readable (%s); W&B names keep every override", path, type(err).__name__)
        return set()
    shared = set()
    for text in candidates:
        parsed = _parse(text)
        if parsed is not None and not parsed.is_sweep_override():
            shared.add(_canonical(parsed))
    return shared


def without_shared(overrides: list[str], shared: set[tuple[str, str]]) -> list[str]:
    """``overrides`` less those in ``shared``, compared as Hydra reads them (``a=false`` equals
    the ``a=False`` a sweeper hands its job; ``~a`` equals ``~a=null``)."""
    kept = []
    for text in overrides:
        parsed = _parse(text)
        if parsed is None or parsed.is_sweep_override() or _canonical(parsed) not in shared:
            kept.append(text)
    return kept


def _parse(text: str) -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        (override,) = OverridesParser.create().parse_overrides([text])
    except Exception:  # noqa: BLE001 - Hydra raises several kinds; an unparsable one is kept as it is
        return None
    return override


def _canonical(override: Any) -> tuple[str, str]:
    return override.get_key_element(), override.get_value_element_as_str()


# -- the end of the run --------------------------------------------------------------------------


def summary_values(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json`` as W&B summary values: numbers, strings, booleans and None as they are;
    dicts and lists JSON-encoded into one string (W&B would split a dict into nested keys, and
    ``not_evaluated`` is one reason, not several metrics); anything else as its ``str``."""
    values: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict | list | tuple):
            values[key] = json.dumps(value, sort_keys=True, default=str)
        elif value is None or isinstance(value, bool | int | float | str):
            values[key] = value
        else:
            values[key] = str(value)
    return values


def log_run_end(loggers: list[Any], metrics: dict[str, Any], hf_dir: Path) -> None:
    """What a W&B run gets once ``metrics.json`` is written: every key of it in the summary and,
    with ``logger.wandb.log_model=true``, the ``hf/`` folder as a ``model`` artifact.

    Call it on rank 0 only, after the export: the artifact holds the final weights the run
    folder holds (offline, it is recorded in the run file and uploaded by ``wandb sync``).
    """
    for logger in loggers:
        if not isinstance(logger, LightningWandbLogger):
            continue
        run = logger.experiment
        run.summary.update(summary_values(metrics))
        if getattr(logger, "upload_model", False) and Path(hf_dir).is_dir():
            _log_hf_artifact(run, Path(hf_dir), metrics)


def _log_hf_artifact(run: Any, hf_dir: Path, metrics: dict[str, Any]) -> None:
    """``model-<run id>`` (type ``model``, alias ``latest``): every file of ``hf/``, with what it was
    trained on in its metadata. A resumed run that finishes again logs a new version."""
    import wandb

    keys = ("objective", "tokens_seen", "steps", "val/loss", "params", "baseline")
    metadata = {k: metrics[k] for k in keys if isinstance(metrics.get(k), bool | int | float | str)}
    artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=metadata)
    artifact.add_dir(str(hf_dir))
    run.log_artifact(artifact, aliases=["latest"])

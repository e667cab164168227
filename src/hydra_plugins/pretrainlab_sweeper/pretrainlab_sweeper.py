"""A cartesian-product sweeper that knows which settings an objective ignores.

It is Hydra's basic sweeper with two changes:
- a combination that differs from an earlier one only in settings its objective does not
  use (``mask_probability`` for causal, ``decoding`` for masked; every ``objective.*``, optimizer
  and budget setting for a ``baseline=true`` job, which trains nothing) is not run again; it is
  recorded in ``sweep.json`` as a skipped duplicate of the job that covers it, and every job
  is launched without such settings (its ``launch`` in sweep.json), so its saved config,
  ``overrides.yaml`` and W&B name show them as not applicable;
- a failing job does not stop the sweep: its error is in its run folder and the other jobs run.

The comparison report and the line naming the failed jobs (exit status 1) are written at the end
of every sweep, whatever the sweeper, by the ``pretrainlab.sweep_report.SweepReport`` callback.
"""

# No `from __future__ import annotations`: Hydra loads plugin modules outside sys.modules,
# where dataclasses cannot resolve string annotations.
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


@dataclass
class PretrainlabSweeperConf:
    _target_: str = "hydra_plugins.pretrainlab_sweeper.pretrainlab_sweeper.PretrainlabSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="pretrainlab", node=PretrainlabSweeperConf, provider="pretrainlab"
)


# Settings that only shape training, ignored by a baseline=true job (with every objective.* key).
BASELINE_IGNORES = ("optimizer", "trainer.max_steps", "trainer.max_tokens", "trainer.val_check_interval")


def ignored_settings(cfg: Any) -> tuple[str, ...]:
    """The setting keys (or key prefixes) a composed job config does not use."""
    from hydra.utils import get_class

    ignored = get_class(cfg.objective._target_).ignored_settings()
    if cfg.get("baseline", False):
        # A baseline trains nothing: how the objective corrupts text, the optimizer and the
        # budget cannot change it, so one baseline per remaining combination is enough.
        settings = tuple(f"objective.{key}" for key in cfg.objective if key not in ("name", "_target_"))
        ignored += settings + BASELINE_IGNORES
    return ignored


def override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``: the key an override sets, whatever its prefix, to compare keys."""
    return override.split("=", 1)[0].lstrip("+~")


def plan_jobs(jobs: list[list[str]], ignored_by: list[tuple[str, ...]]) -> list[dict[str, Any]]:
    """Which combinations to launch and which are duplicates of a launched one.

    ``ignored_by[i]`` lists the setting keys (or key prefixes) job i's objective ignores. They
    are dropped from what the job is launched with (so its config says "not applicable"), and
    a combination whose remaining overrides equal an earlier one's is not launched again.
    """
    first_with: dict[tuple[str, ...], int] = {}
    plan: list[dict[str, Any]] = []
    for overrides, ignored in zip(jobs, ignored_by, strict=True):
        kept = [o for o in overrides if not _ignored(override_key(o), ignored)]
        dropped = [override_key(o) for o in overrides if o not in kept]
        entry: dict[str, Any] = {
            "overrides": list(overrides),
            "launch": kept,
            "status": "launched",
            "dir": None,
        }
        signature = tuple(sorted(kept))
        if signature in first_with:
            entry.update(
                status="skipped",
                duplicate_of=first_with[signature],
                reason=f"{', '.join(dropped)} does not apply to this objective",
            )
        else:
            first_with[signature] = len(plan)
        plan.append(entry)
    return plan


def _ignored(key: str, ignored: tuple[str, ...]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in ignored)


class PretrainlabSweeper(BasicSweeper):
    """Basic sweeper + skipping of meaningless combinations + surviving failed jobs."""

    def _ignored_keys(self, overrides: list[str]) -> tuple[str, ...]:
        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        return ignored_settings(cfg)

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        params = self._parse_config()
        params.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        combinations = [
            job for batch in self.split_arguments(parser.parse_overrides(params), None) for job in batch
        ]
        plan = plan_jobs(combinations, [self._ignored_keys(job) for job in combinations])
        launched = [entry for entry in plan if entry["status"] == "launched"]
        for number, entry in enumerate(launched):
            entry["dir"] = str(number)
        for entry in plan:
            if entry["status"] == "skipped":
                entry["duplicate_of"] = plan[entry["duplicate_of"]]["dir"]

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        (sweep_dir / "sweep.json").write_text(json.dumps({"jobs": plan}, indent=2), encoding="utf-8")
        skipped = len(plan) - len(launched)
        if skipped:
            log.info("%d of %d combinations skipped as duplicates (see sweep.json)", skipped, len(plan))

        returns: list[list[JobReturn]] = []
        # Each job is launched with its cleaned overrides: the settings its objective ignores are
        # left out, so its saved config, overrides.yaml and W&B name say "not applicable".
        batches = list(self.split_overrides_to_chunks([e["launch"] for e in launched], self.max_batch_size))
        start = 0
        for batch in batches:
            self.validate_batch_is_legal(batch)
            # Unlike the basic sweeper, no result is read here: a failed job's error does not
            # end the sweep (its run folder holds it; the report callback names it at the end).
            returns.append(list(self.launcher.launch(batch, initial_job_idx=start)))
            start += len(batch)
        return returns

"""A Hydra sweeper that runs an Optuna study: ``hydra/sweeper=pretrainlab_optuna``.

It reads the config of Hydra's own Optuna sweeper (``hydra.sweeper.{storage, study_name, n_jobs,
direction, n_trials, sampler, params}``; ``params`` in Hydra's sweep syntax: ``interval(a, b)``,
``int(interval(a, b))``, ``tag(log, interval(a, b))``, ``choice(...)``, ``range(...)``, or a fixed
value) and writes the same ``optimization_results.yaml`` into the sweep folder, on current Optuna
(>= 3, ask-and-tell).

Why not ``hydra-optuna-sweeper`` (1.2.0, the last release): it pins ``optuna<3`` (2.10.1, 2021).
Checked here (Python 3.11, numpy 2.4): it installs and an in-memory study runs, but
- its SQLite storage, the way to keep a study or share it between workers, fails with the
  SQLAlchemy 2 that pip installs beside it (``AssertionError`` in optuna's
  ``get_current_version``) unless the environment is pinned to ``sqlalchemy<2, alembic<1.14``;
- it re-raises the first failed trial's error, which ends the whole search: a learning-rate
  search meets diverging (NaN-loss) trials as a matter of course. Here a failed trial is told to
  Optuna as failed (so is a NaN value, which is how ``pretrainlab.sweep_report`` hands a failed
  job back) and the search goes on; the report callback names the failed jobs at the end.

Grid search is the basic (or pretrainlab) sweeper's job: ``GridSampler`` is not special-cased.
"""

# No `from __future__ import annotations`: Hydra loads plugin modules outside sys.modules,
# where dataclasses cannot resolve string annotations.
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.pretrainlab_sweeper.optuna_sweeper.OptunaSweeper"
    # An Optuna sampler, instantiated by Hydra ({_target_: optuna.samplers.TPESampler, seed: 1});
    # null: Optuna's default (TPE).
    sampler: Any = None
    # minimize | maximize, or a list of them for a task that returns several values.
    direction: Any = "minimize"
    # An Optuna storage URL (sqlite:///study.db) to keep the study; null: in memory.
    storage: Any = None
    # A study of this name in `storage` is continued: n_trials more trials.
    study_name: str | None = None
    n_trials: int = 20
    # Trials asked for (and launched) together: the launcher's parallelism.
    n_jobs: int = 1
    # Parameter -> Hydra sweep expression (the search space) or a fixed value.
    params: dict[str, str] | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="pretrainlab_optuna", node=OptunaSweeperConf, provider="pretrainlab"
)


def distribution(override: Override) -> Any:
    """The Optuna distribution of one sweep override, or None for a fixed value.

    As Hydra's Optuna sweeper: ``interval(a, b)`` is a float distribution, ``int(interval(a, b))``
    an int one, ``tag(log, ...)`` makes either log-scaled, ``choice`` is categorical; ``range``
    keeps Hydra's meaning (``stop`` excluded), where Hydra's Optuna sweeper included it.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return None
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator()))
    if override.is_range_sweep():
        values = list(override.sweep_iterator())
        if not values:
            raise ValueError(f"{override.input_line}: an empty range")
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            return IntDistribution(values[0], values[-1], step=value.step)
        return FloatDistribution(values[0], values[-1], step=value.step)
    if override.is_interval_sweep():
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(value.start, value.end, log=log_scale)
    raise ValueError(f"{override.input_line}: not a sweep the Optuna sweeper understands")


def search_space(overrides: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(parameter -> distribution, parameter -> fixed value) of ``key=value`` overrides."""
    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        found = distribution(override)
        if found is None:
            fixed[override.get_key_element()] = override.get_value_element_as_str()
        else:
            space[override.get_key_element()] = found
    return space, fixed


def trial_values(result: JobReturn, n_objectives: int) -> list[float] | None:
    """The job's value(s), or None when the trial failed: its job raised, or returned something
    that is not ``n_objectives`` finite numbers (a NaN is a failed job handed back as finished)."""
    if result.status != JobStatus.COMPLETED:
        return None
    value = result.return_value
    try:
        values = [float(v) for v in value] if n_objectives > 1 else [float(value)]
    except (TypeError, ValueError):
        log.warning("job returned %r, not %d number(s): its trial counts as failed", value, n_objectives)
        return None
    if len(values) != n_objectives or not all(math.isfinite(v) for v in values):
        return None
    return values


class OptunaSweeper(Sweeper):
    """Ask Optuna for ``n_jobs`` trials, launch them as jobs, tell it their values; repeat."""

    def __init__(
        self,
        sampler: Any = None,
        direction: Any = "minimize",
        storage: Any = None,
        study_name: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        params: Any = None,
    ) -> None:
        self.sampler = sampler
        self.directions = [direction] if isinstance(direction, str) else [str(d) for d in direction]
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = max(1, n_jobs)
        self.params = {} if params is None else dict(params)
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Hydra's hook: keep the config and make the launcher that runs the trials."""
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        """Run ``n_trials`` trials; write the best one to ``optimization_results.yaml``.

        Command-line overrides join ``params``: a sweep expression becomes a searched parameter,
        a plain value is passed to every trial. A failed trial is told to Optuna as failed and
        the search goes on.
        """
        import optuna

        assert self.config is not None and self.launcher is not None
        space, fixed = search_space([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            sampler=self.sampler,
            directions=self.directions,
            load_if_exists=True,
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info(
            "Optuna study %s: %s over %s", study.study_name, self.directions, ", ".join(space) or "nothing"
        )

        returns: list[Sequence[JobReturn]] = []
        launched = 0
        while launched < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - launched))]
            batch = [
                [f"{name}={value}" for name, value in trial.params.items()]
                + [f"{name}={value}" for name, value in fixed.items()]
                for trial in trials
            ]
            results = self.launcher.launch(batch, initial_job_idx=launched)
            for trial, result in zip(trials, results, strict=True):
                values = trial_values(result, len(self.directions))
                if values is None:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, values)
            launched += len(batch)
            returns.append(results)
        self._save_results(study, sweep_dir)
        return returns

    def _save_results(self, study: Any, sweep_dir: Path) -> None:
        """``optimization_results.yaml`` as Hydra's Optuna sweeper writes it (best params and value,
        or the Pareto front of a multi-objective study); nothing when no trial succeeded."""
        import optuna

        if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
            log.warning("no trial of study %s succeeded: no optimization_results.yaml", study.study_name)
            return
        if len(self.directions) == 1:
            best = study.best_trial
            results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
            log.info("Best parameters: %s, value %s", best.params, best.value)
        else:
            front = [{"params": t.params, "values": t.values} for t in study.best_trials]
            results = {"name": "optuna", "solutions": front}
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")

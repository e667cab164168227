"""A cartesian-product sweeper that knows which settings an objective ignores.

It is Hydra's basic sweeper with three changes:
- a combination that differs from an earlier one only in settings its objective does not
  use (``mask_probability`` for causal, ``decoding`` for masked; every ``objective.*``, optimizer
  and budget setting for a ``baseline=true`` job, which trains nothing) is not run again; it is
  recorded in ``sweep.json`` as a skipped duplicate of the job that covers it, and every job
  is launched without such settings (its ``launch`` in sweep.json), so its saved config,
  ``overrides.yaml`` and W&B name show them as not applicable;
- combinations that differ only in ``decoding=<option>`` train one model, which is evaluated
  with each option at its end (``fold_decodings``; ``hydra.sweeper.train_once_per_decoding=false``
  trains one per option);
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
    # Jobs that differ only in `decoding=<option>` train one model, evaluated with each decoding
    # (evaluation.decodings); false trains one model per decoding, as the basic sweeper does.
    train_once_per_decoding: bool = True


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


def fold_decodings(plan: list[dict[str, Any]], decodable: list[bool] | None = None) -> list[dict[str, Any]]:
    """Launched combinations that differ only in their ``decoding=<option>`` become one job.

    Decoding does not change training, so the first job of such a group is launched with
    ``evaluation.decodings=[...]`` (every option of the group: it trains once and writes
    ``eval/decoding=<option>/`` for the others at its end) and the others are marked
    ``evaluated``, with ``evaluated_in`` (the job's plan index) and ``evaluation`` (its folder).
    Combinations that also set ``decoding.<field>`` are left alone: those fields shape the
    run's own decoding, and an evaluation folder composes each option afresh. So are those
    whose ``decodable[i]`` is False (a decoding the objective cannot use, e.g. prefix + beam):
    they fail on their own, as jobs, instead of failing the training of the valid ones.
    """
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, entry in enumerate(plan):
        launch = entry["launch"]
        keys = [override_key(o) for o in launch]
        if (
            entry["status"] != "launched"
            or "decoding" not in keys
            or any(k.startswith("decoding.") for k in keys)
            or (decodable is not None and not decodable[index])
        ):
            continue
        if "evaluation.decodings" in keys:
            continue  # the user chose the evaluations: theirs to keep
        signature = tuple(sorted(o for o in launch if override_key(o) != "decoding"))
        groups.setdefault(signature, []).append(index)
    for members in groups.values():
        if len(members) < 2:
            continue
        names = [_decoding_option(plan[i]["launch"]) for i in members]
        first = plan[members[0]]
        first["launch"] = [*first["launch"], f"evaluation.decodings=[{','.join(names)}]"]
        for index, name in zip(members[1:], names[1:], strict=True):
            plan[index].update(
                status="evaluated",
                evaluated_in=members[0],
                evaluation=f"decoding={name}",
                reason="decoding does not change training: evaluated on the model of the job in evaluated_in",
            )
    return plan


def _decoding_option(launch: list[str]) -> str:
    return next(o.split("=", 1)[1] for o in launch if override_key(o) == "decoding")


def _ignored(key: str, ignored: tuple[str, ...]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in ignored)


class PretrainlabSweeper(BasicSweeper):
    """Basic sweeper + skipping of meaningless combinations + one training per decoding sweep +
    surviving failed jobs."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        train_once_per_decoding: bool = True,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.train_once_per_decoding = train_once_per_decoding

    def _inspect(self, overrides: list[str]) -> tuple[tuple[str, ...], bool]:
        """(the settings the combination's objective ignores, whether its decoding is usable)."""
        from pretrainlab.validation import check_decoding

        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        try:
            check_decoding(cfg)
        except ValueError:  # ConfigError included
            return ignored_settings(cfg), False
        return ignored_settings(cfg), True

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        params = self._parse_config()
        params.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        combinations = [
            job for batch in self.split_arguments(parser.parse_overrides(params), None) for job in batch
        ]
        inspected = [self._inspect(job) for job in combinations]
        plan = plan_jobs(combinations, [ignored for ignored, _ in inspected])
        if self.train_once_per_decoding:
            plan = fold_decodings(plan, [usable for _, usable in inspected])
        launched = [entry for entry in plan if entry["status"] == "launched"]
        for number, entry in enumerate(launched):
            entry["dir"] = str(number)
        for entry in plan:
            if entry["status"] == "skipped":
                covering = plan[entry["duplicate_of"]]
                if covering["status"] == "evaluated":  # a duplicate of a folded combination
                    entry["evaluation"] = covering["evaluation"]
                    covering = plan[covering["evaluated_in"]]
                entry["duplicate_of"] = covering["dir"]
        for entry in plan:
            if entry["status"] == "evaluated":
                entry["evaluated_in"] = plan[entry["evaluated_in"]]["dir"]
        evaluated = sum(entry["status"] == "evaluated" for entry in plan)
        if evaluated:
            log.info(
                "%d of %d combinations differ from a launched job only in decoding: evaluated on its model",
                evaluated,
                len(plan),
            )

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        (sweep_dir / "sweep.json").write_text(json.dumps({"jobs": plan}, indent=2), encoding="utf-8")
        skipped = sum(entry["status"] == "skipped" for entry in plan)
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

"""Hydra composition errors as one line, key first: shared by every command that composes a config.

Kept apart from ``train.py`` so that ``pretrainlab-fill``/``pretrainlab-generate`` can say the
same thing about ``decoding=foo`` as ``pretrainlab-train`` does, without importing the trainer.
"""

from __future__ import annotations

import re

from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from pretrainlab import config_dir

# What composing a config raises for a bad override (unknown option or key, wrong type).
COMPOSITION_ERRORS = (HydraException, OmegaConfBaseException)


def composition_problem(overrides: list[str], config_name: str = "train") -> str | None:
    """Compose the config as Hydra will, and describe in one line what fails, if anything."""
    return compose_config(overrides, config_name)[1]


def compose_config(overrides: list[str], config_name: str = "train") -> tuple[DictConfig | None, str | None]:
    """The config Hydra will compose from ``overrides`` (without its ``hydra`` node), or None and
    the one-line problem, so a command can check the settings before Hydra starts a run."""
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides), None
    except COMPOSITION_ERRORS as err:
        return None, describe_composition_error(err)


def describe_composition_error(err: BaseException) -> str:
    """Hydra's composition errors span several lines; say the same in one, key first."""
    text = str(err)
    missing = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        options = [
            o for o in re.findall(r"^\t(\S+)$", text, re.M) if "=" not in o and not o.endswith("_schema")
        ]
        return f"{group}={option}: no such option (choose {', '.join(options)})"
    unknown = re.search(r"Could not override '([^']+)'", text)
    if unknown:
        key = unknown.group(1)
        return f"{key}: no such setting (check the spelling; +{key}=... adds a new key)"
    cause = err.__cause__
    if cause is not None:
        key = getattr(cause, "full_key", None)
        first = str(cause).strip().splitlines()[0]
        return f"{key}: {first}" if key else first
    return text.strip().splitlines()[0]

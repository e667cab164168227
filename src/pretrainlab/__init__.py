"""pretrainlab: run and compare language-model pretraining objectives side by side."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"

# `${coalesce:a,b}`: the first non-null argument (oc.select treats null as a value). The run
# folder uses it: `resume=RUN_DIR` continues in RUN_DIR, otherwise a new timestamped folder.
OmegaConf.register_new_resolver(
    "coalesce", lambda *values: next((v for v in values if v is not None), None), replace=True
)


def config_dir() -> Path:
    """The Hydra config tree: inside the package for a wheel, the repository's conf/ otherwise."""
    packaged = Path(__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf"


# The GLM model type (objective=prefix) with transformers' AutoConfig/AutoModel, so that a prefix
# run's hf/ loads without trust_remote_code. Lazy: nothing is imported until transformers' own
# auto modules are (see models/registration.py); `import pretrainlab` stays free of torch.
from pretrainlab.models import registration as _registration  # noqa: E402

_registration.install()

# The typed schemas every config group refers to (`<group>_schema`): registered on import, so any
# composition (the app, tests, notebooks using hydra.compose) finds them.
from pretrainlab import config as _config  # noqa: E402,F401

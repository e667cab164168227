"""pretrainlab: run and compare language-model pretraining objectives side by side."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def config_dir() -> Path:
    """The Hydra config tree: inside the package for a wheel, the repository's conf/ otherwise."""
    packaged = Path(__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf"

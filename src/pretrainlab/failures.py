"""The ways a training run stops that its user can act on, as exception classes.

Kept free of torch and Lightning so that the command-line entry point (``pretrainlab.commands``)
can tell them apart without importing the trainer; ``pretrainlab.callbacks`` raises them.
"""

from __future__ import annotations


class TrainingFailure(RuntimeError):
    """A run that cannot go on, for a reason the user can act on: its message is one line."""


class NonFiniteLossError(TrainingFailure):
    """The training loss became NaN or infinite."""


class Interrupted(TrainingFailure):
    """SIGTERM or SIGINT: the run saved its state at a step boundary and stopped."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_status = 128 + signum  # what a shell reports for a process ended by the signal

"""The errors flight_parsl raises for problems a user can fix.

Each carries one message that names what is wrong; the command line prints it and
exits non-zero without a traceback.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable


class FlightParslError(Exception):
    """Base class of every user-facing flight_parsl error."""


class ConfigError(FlightParslError):
    """A configuration key, value or file is wrong."""


class DataError(FlightParslError):
    """A dataset is missing, malformed or cannot be partitioned as asked."""


class ExecutorError(FlightParslError):
    """The execution backend (Parsl, a pool) failed to start or lost a task."""


class TransferError(FlightParslError):
    """The model channel (Redis, a shared directory) failed; names the key or address."""


class TaskError(FlightParslError):
    """A task on a worker failed; the message names the worker and the round."""


class RoundError(TaskError):
    """A round ended below its policy's quorum; the message says how many clients returned."""


class Terminated(KeyboardInterrupt):
    """A termination signal (SIGTERM: walltime, ``scancel``, ``kill``) stopped the run.

    Not a :class:`FlightParslError`: it subclasses KeyboardInterrupt so that a run stops
    exactly as on Ctrl-C, through every ``finally`` and context manager on the way out
    (the DataFlowKernel, a managed redis-server, a file channel's directory). The
    message names the signal.
    """

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum
        super().__init__(f"terminated by {signal.Signals(signum).name}")


def key_error(source: str, key: str, value: object, problem: str) -> ConfigError:
    """The one format of a bad value anywhere a user writes config: ``SOURCE: key 'KEY' = VALUE: PROBLEM``
    (see :mod:`flight_parsl.config.schema`; kept here so that slot-side code can raise it without pydantic)."""
    return ConfigError(f"{source}: key {key!r} = {value!r}: {problem}")


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> ConfigError:
    """Build the error for an unknown registry name, listing the valid names."""
    choices = ", ".join(sorted(valid))
    return ConfigError(f"unknown {kind} {name!r}; valid names: {choices}")

"""Stop signals (SIGTERM, SIGINT) that arrive while a run starts or stops something.

The command line turns the first SIGTERM into :class:`~flight_parsl.core.errors.Terminated`
and the first SIGINT into ``KeyboardInterrupt``, raised in the main thread wherever it
is (:func:`flight_parsl.cli.scale.sigterm_stops_the_run`). Raised in the middle of
starting or stopping a process or a directory (``parsl.load``, a redis-server's start,
the clean-up of the DataFlowKernel), such an exception would leave that thing half made
and unrecorded, or half removed. :func:`deferred` marks those stretches: a stop signal
that arrives inside one is kept and raised when the outermost one ends, unless an
exception is already on its way out (the run is stopping anyway). Every stretch is
bounded (each step it covers has its own timeout), so the stop still comes within
seconds. A stop whose exception Python dropped (raised inside a weakref callback or a
``__del__``) is raised again by :func:`check` where the loops wait.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from types import TracebackType

from flight_parsl.core.errors import Terminated

_depth = 0  # open deferred() blocks in the main thread
_pending: int | None = None  # a stop signal that arrived inside one
_requested: int | None = None  # the stop signal the run got, until reset()


def exception_for(signum: int) -> KeyboardInterrupt:
    """The exception a stop signal raises: KeyboardInterrupt for SIGINT, Terminated otherwise."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def stop(signum: int) -> None:
    """Called by a signal handler in the main thread: raise now, or keep it for later."""
    global _pending, _requested
    _requested = signum
    if _depth:
        if _pending is None:
            _pending = signum
        return
    raise exception_for(signum)


def check() -> None:
    """Raise the stop a signal asked for, if the run is still going: its exception was lost.

    Python runs a signal handler wherever the main thread is, also inside a weakref callback,
    a ``__del__`` or a garbage-collector callback, where an exception is printed ("Exception
    ignored in ...") and dropped. The loops call this where they wait (each completion), and
    the runner once more before it records a run as completed, so a stop is never lost. Does
    nothing outside the main thread and inside :func:`deferred` (the stop is pending there).
    """
    if _requested is not None and not _depth and threading.current_thread() is threading.main_thread():
        raise exception_for(_requested)


def reset() -> None:
    """Forget a stop (the command line, when its handlers are installed and when removed)."""
    global _pending, _requested
    _pending = _requested = None


@contextmanager
def deferred() -> Iterator[None]:
    """While open (in the main thread), a stop signal waits for the block to end."""
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    except BaseException:
        _depth -= 1
        if _depth == 0:
            _pending = None  # an exception is on its way out already
        raise
    _depth -= 1
    if _depth == 0 and _pending is not None:
        signum, _pending = _pending, None
        raise exception_for(signum)


def release_logging_locks() -> int:
    """Release every logging lock this thread holds; returns how many acquisitions it released.

    Python 3.11's logging takes a handler's lock with ``acquire()`` just before its ``try``; a
    stop signal raised between the two leaves the lock held by the main thread, and every other
    thread that logs to that handler (Parsl's, whose log is at DEBUG) then waits for it forever:
    the executor's shutdown, which joins them, hangs. Called where no logging call of this thread
    is under way (a run's teardown), so any lock it holds then is such a leftover."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = {id(h): h for lg in loggers if isinstance(lg, logging.Logger) for h in lg.handlers}
    locks = [getattr(logging, "_lock", None), *(h.lock for h in handlers.values())]
    released = 0
    for lock in locks:
        owned = getattr(lock, "_is_owned", None)  # an RLock's
        while owned is not None and owned():
            lock.release()  # type: ignore[union-attr]
            released += 1
    return released


class TeardownStack(ExitStack):
    """An ExitStack whose unwinding (the clean-up of everything a run opened) is not cut short
    by a stop signal: one that arrives meanwhile is raised once every callback has run. Unwound
    after a stop signal, it first releases the logging locks that signal may have left held
    (:func:`release_logging_locks`), so that the threads the clean-up joins can log."""

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            released = release_logging_locks()
            if released:
                logging.getLogger(__name__).debug("released %d logging lock(s) a stop signal left held", released)
        with deferred():
            return bool(super().__exit__(exc_type, exc, tb))

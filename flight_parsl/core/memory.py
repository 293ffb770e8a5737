"""Memory measurements: current RSS, and a sampler for a process's peak during one run.

``ru_maxrss`` is a process-lifetime peak, which is wrong for a run that shares its
process with earlier runs (a sweep reusing one coordinator); :class:`PeakSampler`
samples the resident set size in a background thread instead.
"""

from __future__ import annotations

import os
import resource
import threading
from types import TracebackType

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except OSError:  # not Linux: fall back to the lifetime peak
        return lifetime_peak_rss_mb()


def lifetime_peak_rss_mb() -> float:
    """Peak resident set size of this process since it started, in MiB (Linux units)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class PeakSampler:
    """Samples this process's RSS every ``interval`` seconds while open; ``peak_mb`` is the max."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_mb = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flight-rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())

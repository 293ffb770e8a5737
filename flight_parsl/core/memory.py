"""Memory measurements: current RSS, the machine's used memory, and a sampler for one run.

``ru_maxrss`` is a process-lifetime peak, which is wrong for a run that shares its
process with earlier runs (a sweep reusing one coordinator); :class:`PeakSampler`
samples the resident set size in a background thread instead, from a baseline taken
after the previous run's garbage is released. Per-process figures count pages shared
between processes (the torch libraries, a mapped model) once per process; the
machine's used memory (``MemTotal - MemAvailable``) counts every page once, and the
sampler reports its rise during the run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
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


def reset_peak_rss() -> bool:
    """Restart this process's peak RSS (``VmHWM``) from its current RSS.

    Linux only (``/proc/self/clear_refs``); False where it cannot, and
    :func:`peak_rss_mb` then keeps counting from the process's start.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak RSS of this process in MiB since it started or since :func:`reset_peak_rss`.

    ``VmHWM`` of this process's own memory map; unlike ``ru_maxrss`` it does not inherit
    the parent's peak across fork and exec. The lifetime peak where /proc is missing.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return lifetime_peak_rss_mb()


def machine_used_mb() -> float | None:
    """Memory in use on this machine in MiB: ``MemTotal - MemAvailable`` from /proc/meminfo.

    Every page counts once, whichever processes share it; page cache the kernel can
    drop does not count. None where /proc/meminfo is missing (not Linux).
    """
    fields: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("MemTotal", "MemAvailable"):
                    fields[name] = int(rest.split()[0])  # kB
    except (OSError, ValueError, IndexError):
        return None
    if len(fields) < 2:
        return None
    return (fields["MemTotal"] - fields["MemAvailable"]) / 1024.0


def release_garbage() -> None:
    """Collect unreachable objects and hand freed heap memory back to the OS (glibc ``malloc_trim``).

    A run that starts after another in the same process then measures from its own
    baseline instead of the earlier run's leftovers.
    """
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


class PeakSampler:
    """Samples this process's RSS and the machine's used memory every ``interval`` s while open.

    Entering releases garbage (:func:`release_garbage`) and takes the baseline.
    ``peak_mb``: this process's peak RSS in MiB. ``peak_machine_mb``: the rise of the
    machine's used memory, peak minus the value at the start, in MiB (None off Linux);
    it counts shared pages once but also whatever else the machine runs meanwhile.
    ``samples``: how many samples were taken.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_mb = rss_mb()
        self.start_machine_mb = machine_used_mb()
        self._peak_machine_used = self.start_machine_mb
        self.samples = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flight-rss-sampler", daemon=True)

    @property
    def peak_machine_mb(self) -> float | None:
        """Peak machine used memory minus its value at the start, MiB (None off Linux)."""
        if self.start_machine_mb is None or self._peak_machine_used is None:
            return None
        return self._peak_machine_used - self.start_machine_mb

    def sample(self) -> None:
        """Take one sample now (the thread calls this every ``interval`` s)."""
        rss, used = rss_mb(), machine_used_mb()
        with self._lock:
            self.peak_mb = max(self.peak_mb, rss)
            if used is not None and self._peak_machine_used is not None:
                self._peak_machine_used = max(self._peak_machine_used, used)
            self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakSampler:
        release_garbage()
        self.peak_mb = rss_mb()
        self.start_machine_mb = self._peak_machine_used = machine_used_mb()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

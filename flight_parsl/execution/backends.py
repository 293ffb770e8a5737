"""Execution backends behind one ``concurrent.futures.Executor`` face.

``parsl`` loads a DataFlowKernel with one HighThroughputExecutor built from a site
YAML file and wraps it in :class:`parsl.concurrent.ParslPoolExecutor`; ``thread``
and ``process`` are local pools for tests and quick runs. The engine sees only the
Executor, so one loop serves the laptop and the cluster.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from flight_parsl.core.errors import ExecutorError
from flight_parsl.worker.tasks import prime_task

log = logging.getLogger(__name__)

DEFAULT_START_TIMEOUT = 300.0


@dataclass
class Backend:
    """An open executor and what the harness needs to know about it."""

    executor: Executor
    kind: str
    description: str
    start_timeout: float = DEFAULT_START_TIMEOUT
    slots: int | None = None
    started_at: float = field(default_factory=time.time)
    ready_at: float = field(default_factory=time.time)
    runs: int = 0


@contextmanager
def open_backend(
    kind: str,
    workers: int,
    run_dir: str | Path,
    parsl_config: str | None = None,
    on_started: Callable[[], None] | None = None,
) -> Iterator[Backend]:
    """Start a backend, yield it, and always shut it down.

    ``on_started`` is called once the executor is up (for Parsl: the DataFlowKernel
    is loaded), before any task runs.
    """
    started_at = time.time()
    if kind == "parsl":
        with _parsl_backend(workers, run_dir, parsl_config) as backend:
            backend.started_at = started_at
            if on_started:
                on_started()
            yield backend
        return
    if kind == "thread":
        pool: Executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flight-worker")
    elif kind == "process":
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    else:
        raise ExecutorError(f"unknown backend {kind!r}; valid: parsl, process, thread")
    try:
        if on_started:
            on_started()
        yield Backend(pool, kind, f"{kind} pool with {workers} workers", slots=workers, started_at=started_at)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


@contextmanager
def _parsl_backend(workers: int, run_dir: str | Path, parsl_config: str | None) -> Iterator[Backend]:
    import parsl
    from parsl.concurrent import ParslPoolExecutor

    from flight_parsl.execution.site import build_parsl_config, describe_site, load_site, site_start_timeout

    site = load_site(parsl_config)
    config = build_parsl_config(site, workers, run_dir)
    try:
        dfk = parsl.load(config)
    except Exception as exc:  # Parsl raises many kinds here; one message for the user
        raise ExecutorError(f"Parsl failed to start ({type(exc).__name__}: {exc}); logs: {config.run_dir}") from exc
    try:
        yield Backend(
            ParslPoolExecutor(dfk=dfk), "parsl", describe_site(site, workers), site_start_timeout(site), _slots(config)
        )
    finally:
        try:
            dfk.cleanup()
        except Exception:  # cleanup must not hide the error that got us here
            log.exception("Parsl cleanup failed")
        parsl.clear()


def _slots(config: object) -> int | None:
    """Worker processes the executor starts at load (workers per node x nodes x initial blocks)."""
    try:
        htex = config.executors[0]  # type: ignore[attr-defined]
        provider = htex.provider
        return int(htex.max_workers_per_node) * int(provider.nodes_per_block) * max(int(provider.init_blocks), 1)
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def prime(backend: Backend, workers: int = 1, modules: tuple[str, ...] = ()) -> set[tuple[str, int]]:
    """Warm up: one task per executor slot (at most ``workers``) importing ``modules``.

    One-time costs on each worker process (starting, importing torch or ProxyStore)
    then fall before ``priming_done`` instead of into the first measured round.
    Returns the (host, pid) seen; fails clearly if no worker answers in time.
    """
    count = min(workers, backend.slots) if backend.slots else workers
    futures = [backend.executor.submit(prime_task, modules, 0.2 if count > 1 else 0.0) for _ in range(count)]
    try:
        return {f.result(timeout=backend.start_timeout) for f in futures}
    except FuturesTimeout as exc:
        raise ExecutorError(
            f"no worker started within {backend.start_timeout:.0f} s ({backend.description}); "
            "check the site file's provider, worker_init and address, and the Parsl logs in the run directory"
        ) from exc
    except Exception as exc:
        detail = " ".join(str(exc).split())
        raise ExecutorError(
            f"the warm-up task failed ({type(exc).__name__}: {detail}); backend: {backend.description}"
        ) from exc

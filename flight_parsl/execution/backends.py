"""Execution backends behind one ``concurrent.futures.Executor`` face.

``parsl`` loads a DataFlowKernel with one HighThroughputExecutor built from a site
YAML file and wraps it in :class:`parsl.concurrent.ParslPoolExecutor`; ``thread``
and ``process`` are local pools for tests and quick runs. The engine sees only the
Executor, so one loop serves the laptop and the cluster.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FuturesTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flight_parsl.core.errors import ExecutorError
from flight_parsl.core import stopping
from flight_parsl.core.stopping import deferred
from flight_parsl.core.types import Workload
from flight_parsl.transfer.state import ClientState
from flight_parsl.worker import faults as slot_faults
from flight_parsl.worker.release import Released, release_task
from flight_parsl.worker.tasks import prime_task

log = logging.getLogger(__name__)

DEFAULT_START_TIMEOUT = 300.0
#: Seconds the end of a run waits for every slot to let go of the run's store.
RELEASE_TIMEOUT = 60.0


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
    dfk: Any = None  # Parsl's DataFlowKernel (Parsl backends): where its blocks' job ids are
    pending_timeout: float | None = None  # seconds a block may wait in the batch queue (None: start_timeout)
    marks: dict[str, float] = field(default_factory=dict)  # start-up marks (flight_parsl.engine.startup)


def pending_blocks(backend: Backend) -> dict[str, str]:
    """``LABEL/BLOCK -> job id`` of the blocks the batch system still holds pending (not started)."""
    if backend.dfk is None:
        return {}
    from parsl.jobs.states import JobState

    jobs = block_jobs(backend)
    return {
        f"{label}/{block}": jobs.get(f"{label}/{block}", "?")
        for label, executor in backend.dfk.executors.items()
        for block, status in dict(executor.status() if hasattr(executor, "blocks_to_job_id") else {}).items()
        if status.state == JobState.PENDING
    }


def cancel_blocks(backend: Backend, blocks: dict[str, str]) -> None:
    """Cancel the batch jobs of ``blocks`` (``LABEL/BLOCK -> job id``); best effort, never raises."""
    for label, executor in (backend.dfk.executors.items() if backend.dfk is not None else ()):
        jobs = [job for key, job in blocks.items() if key.split("/")[0] == label]
        if jobs and getattr(executor, "provider", None) is not None:
            try:
                executor.provider.cancel(jobs)
            except Exception:
                log.exception("cancelling blocks %s failed", jobs)


def block_jobs(backend: Backend) -> dict[str, str]:
    """The batch job (or local process) id of each Parsl block, ``LABEL/BLOCK -> id``; empty for a pool.

    Blocks that Parsl starts later (a second block, a replacement after a walltime) show up
    when asked again."""
    if backend.dfk is None:
        return {}
    return {
        f"{label}/{block}": str(job)
        for label, executor in backend.dfk.executors.items()
        for block, job in dict(getattr(executor, "blocks_to_job_id", {})).items()
    }


def resolve_slots(slots: int | str, clients: int) -> int:
    """Worker processes for ``clients`` clients: ``auto`` (about the cores), ``per_client``
    (one each, as Flight's weak-scaling artifact ran) or a number; never more than the clients."""
    if slots == "per_client":
        return clients
    if slots == "auto":
        return max(1, min(os.cpu_count() or 1, clients))
    return max(1, min(int(slots), clients))


@contextmanager
def open_backend(
    kind: str,
    slots: int,
    run_dir: str | Path,
    parsl_config: str | None = None,
    on_started: Callable[[], None] | None = None,
    prime: tuple[tuple[str, ...], Workload | None] | None = None,
) -> Iterator[Backend]:
    """Start a backend with ``slots`` worker processes (threads), yield it, always shut it down.

    A Parsl site that fixes its slots per node (or runs on a batch provider)
    decides its own slots. ``on_started`` is called once the executor is up (for
    Parsl: the DataFlowKernel is loaded), before any task runs. ``prime`` (the warm-up's
    modules and workload): on a Parsl site with a ``strategy``, whose blocks may start after
    the warm-up, every block's workers prime with them before the block takes tasks
    (:mod:`flight_parsl.execution.primed_pool`).
    """
    started_at = time.time()
    if kind == "parsl":
        with _parsl_backend(slots, run_dir, parsl_config, prime) as backend:
            backend.started_at = started_at
            if on_started:
                on_started()
            yield backend
        return
    if kind == "thread":
        pool: Executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="flight-worker")
    elif kind == "process":
        pool = ProcessPoolExecutor(max_workers=slots, mp_context=multiprocessing.get_context("spawn"))
    else:
        raise ExecutorError(f"unknown backend {kind!r}; valid: parsl, process, thread")
    slot_faults.arm()
    try:
        if on_started:
            on_started()
        yield Backend(pool, kind, f"{kind} pool with {slots} slots", slots=slots, started_at=started_at)
    finally:
        # Threads cannot be stopped: wait for a late task, so that nothing writes into a
        # transfer or state directory after the run removed it (an injected hang ends at once,
        # so a stop signal is not held for its hang_s). Processes end with the pool.
        if kind == "thread":
            slot_faults.release_hangs()
        pool.shutdown(wait=kind == "thread", cancel_futures=True)


@contextmanager
def _parsl_backend(
    workers: int, run_dir: str | Path, parsl_config: str | None,
    prime: tuple[tuple[str, ...], Workload | None] | None = None,
) -> Iterator[Backend]:
    from parsl.concurrent import ParslPoolExecutor

    from flight_parsl.execution.site import (
        build_parsl_config, describe_site, load_site, site_pending_timeout, site_start_timeout,
    )

    site = load_site(parsl_config)
    spec = None
    if prime is not None and site["strategy"] != "none":
        from flight_parsl.execution.primed_pool import write_spec

        spec = write_spec(Path(run_dir) / "parsl" / "prime.pkl", prime[0], prime[1], site_start_timeout(site))
    config = build_parsl_config(site, workers, run_dir, spec, prime[0] if prime is not None else ())
    # a stop signal waits for the interchange and the worker pool to be up (and owned), or gone
    with deferred():
        try:
            dfk, marks = load_dfk(config)
        except Exception as exc:  # Parsl raises many kinds here; one message for the user
            raise ExecutorError(f"Parsl failed to start ({type(exc).__name__}: {exc}); logs: {config.run_dir}") from exc
    try:
        yield Backend(
            ParslPoolExecutor(dfk=dfk), "parsl", describe_site(site, workers), site_start_timeout(site), _slots(config),
            dfk=dfk, pending_timeout=site_pending_timeout(site), marks=marks,
        )
    finally:
        with deferred():
            close_dfk(dfk)


def load_dfk(config: Any) -> tuple[Any, dict[str, float]]:
    """``parsl.load(config)``, then launch the executors' initial blocks at once; return the
    DataFlowKernel and its start-up marks (:mod:`flight_parsl.engine.startup`): ``dfk_begin``,
    ``interchange_begin``/``interchange_up`` (the executors' start, first to last),
    ``dfk_loaded``, ``block_launched`` (the first block's launch began).

    Parsl launches ``init_blocks`` at its JobStatusPoller's first tick with executors, one
    ``strategy_period`` (5 s by default) after the DataFlowKernel starts: start-up spent waiting.
    The poller's tick runs here once, right away, for every strategy (:func:`start_blocks_now`).
    Parsl's exceptions pass through."""
    import parsl

    marks: dict[str, float] = {}
    for executor in config.executors:
        _time_calls(executor, "start", marks, "interchange_begin", "interchange_up")
        if hasattr(executor, "_launch_block"):
            _time_calls(executor, "_launch_block", marks, "block_launched", None)
    marks["dfk_begin"] = time.time()
    dfk = parsl.load(config)
    marks["dfk_loaded"] = time.time()
    start_blocks_now(dfk)
    return dfk, marks


def _time_calls(obj: Any, name: str, marks: dict[str, float], first_begin: str, last_end: str | None) -> None:
    """Wrap ``obj.name`` (on the instance): the first call's begin and the last call's end go into ``marks``."""
    method = getattr(obj, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        marks.setdefault(first_begin, time.time())
        try:
            return method(*args, **kwargs)
        finally:
            if last_end is not None:
                marks[last_end] = time.time()

    setattr(obj, name, timed)


def start_blocks_now(dfk: Any) -> None:
    """Run the DataFlowKernel's JobStatusPoller tick now instead of a ``strategy_period`` later.

    That first tick is where Parsl's strategies (``none``, ``simple``, ``htex_auto_scale``)
    scale out ``init_blocks`` (once: they keep a ``first`` flag per executor), and where
    ``simple`` adds blocks for queued tasks; running it early is the same tick, earlier. The
    poller's callback is wrapped in a lock first, so this tick and the poller's own timer
    thread never run the strategy at the same time (no block is launched twice). A failing
    tick is logged, as Parsl's timer does."""
    poller = getattr(dfk, "job_status_poller", None)
    if poller is None or not callable(getattr(poller, "callback", None)):
        return
    lock = threading.Lock()
    tick = poller.callback

    def locked(*args: Any) -> None:
        with lock:
            tick(*args)

    poller.callback = locked
    poller.make_callback()


def close_dfk(dfk: Any) -> None:
    """Clean a DataFlowKernel up and forget it; a failing cleanup is logged, never raised
    (it must not hide the error that ended the run).

    Parsl's clean-up scales every block in, and first asks the interchange for its managers, to
    cancel idle blocks first, waiting for the answer without a timeout. Ctrl-C in a terminal, or a
    ``scancel``, signals the interchange together with the run (they share a process group), so it
    may be gone by then and the clean-up would wait for ever (tests/test_sigterm.py). The order does
    not matter when every block goes: the executors' query answers ``[]`` here, and the scale-in
    cancels every block through the provider without asking the interchange."""
    import parsl

    for executor in getattr(dfk, "executors", {}).values():
        if hasattr(executor, "connected_managers"):
            executor.connected_managers = list
    try:
        dfk.cleanup()
    except Exception:
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


def _barrier_dir() -> str:
    """A fresh directory in memory (or the temp dir) where one task per slot meets the others."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    return tempfile.mkdtemp(prefix="flight_parsl-prime-", dir=base)


def remove_barrier(barrier: str) -> None:
    """Remove a barrier directory so that no task still waiting on it can wait on: it is renamed
    first (atomically), so a task that marks itself or counts arrivals there from now on finds no
    directory; removing it in place could race a task adding its mark, leave the directory behind
    and hold that task for its whole wait."""
    gone = f"{barrier}.closed-{os.getpid()}"
    try:
        os.rename(barrier, gone)
    except OSError:
        gone = barrier  # already gone (or never made)
    shutil.rmtree(gone, ignore_errors=True)


class Warmup:
    """Warm up every slot: one task per slot imports ``modules`` and loads the data.

    One-time costs on each worker process (starting, importing torch or ProxyStore,
    loading the dataset and its partition, a first training step) then fall before
    ``priming_done`` instead of into the first measured round. The warm-up tasks
    meet at a barrier directory, so ``slots`` of them run at once on ``slots``
    distinct processes. Creating a Warmup submits the tasks and returns at once, so
    the coordinator can do its own start-up meanwhile; :meth:`wait` collects them,
    calling ``on_progress(ready, slots)`` as slots arrive.
    """

    def __init__(
        self,
        backend: Backend,
        slots: int,
        modules: tuple[str, ...] = (),
        workload: Workload | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.backend, self.on_progress = backend, on_progress
        self.count = backend.slots or slots
        self.started = time.monotonic()
        self._next_check = 0.0
        self.deadline = self.started + backend.start_timeout
        self.barrier = _barrier_dir()
        #: each slot's start-up (``prime_task``'s timing: Parsl slots only), once :meth:`wait` returned
        self.timings: list[dict[str, float | None]] = []
        timing = backend.kind == "parsl"  # a local pool's slots are the coordinator or its children
        try:
            self.futures = [
                backend.executor.submit(prime_task, modules, self.barrier, self.count, backend.start_timeout, workload,
                                        timing)
                for _ in range(self.count)
            ]
        except BaseException:
            self.close()
            raise

    def _ready(self) -> int:
        return len(os.listdir(self.barrier))

    def _check_pending(self) -> None:
        """Past the site's ``provider.pending_timeout_s`` with no slot ready: cancel the blocks still
        pending in the batch queue and stop with one message (not after the whole start_timeout)."""
        limit = self.backend.pending_timeout
        waited = time.monotonic() - self.started
        if self.backend.dfk is None or self._ready() or waited < min(limit or _HOPELESS_AFTER_S, _HOPELESS_AFTER_S):
            return
        if time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + 1.0
        pending = pending_blocks(self.backend)
        reasons = {block: _queue_reason(job) for block, job in pending.items()}
        hopeless = {block: job for block, job in pending.items() if reasons[block].strip(": ") in HOPELESS_REASONS}
        if not hopeless and (limit is None or waited < limit or not pending):
            return
        stuck = hopeless or pending
        jobs = ", ".join(f"block {block} (job {job}{reasons[block]})" for block, job in stuck.items())
        cancel_blocks(self.backend, stuck)
        why = ("can never start (the partition's limits or nodes cannot satisfy it)" if hopeless
               else f"still pending after {limit:g} s (provider.pending_timeout_s)")
        raise ExecutorError(f"{jobs} {why}; cancelled; backend: {self.backend.description}")

    def close(self) -> None:
        """Remove the barrier directory (also when the run stops before :meth:`wait`)."""
        remove_barrier(self.barrier)

    def wait(self) -> set[tuple[str, int]]:
        """The (host, pid) of the slots reached; fails clearly if none answers in time."""
        backend = self.backend
        try:
            ready = -1
            while not all(f.done() for f in self.futures) and time.monotonic() < self.deadline:
                stopping.check()
                if self.on_progress and self._ready() != ready:
                    ready = self._ready()
                    self.on_progress(ready, self.count)
                self._check_pending()
                wait(self.futures, timeout=0.1)
            try:
                answers = [f.result(timeout=max(0.0, self.deadline - time.monotonic())) for f in self.futures]
                seen = {(a[0], a[1]) for a in answers}
                self.timings = [a[2] for a in answers if len(a) > 2]
            except FuturesTimeout as exc:
                raise ExecutorError(
                    f"no worker started within {backend.start_timeout:.0f} s ({backend.description}); "
                    "check the site file's provider, worker_init and address, and the Parsl logs in the run directory"
                ) from exc
            except Exception as exc:
                detail = " ".join(str(exc).split())
                submit = re.search(r"Failed to start block (\S+):.*?stderr=(.*?)\)?$", detail)
                if submit:  # the batch system refused the block (no such partition, too many nodes, no Slurm)
                    raise ExecutorError(
                        f"the site's provider could not start block {submit[1]}: {submit[2].strip()}; "
                        f"backend: {backend.description}"
                    ) from exc
                raise ExecutorError(
                    f"the warm-up task failed ({type(exc).__name__}: {detail}); backend: {backend.description}"
                ) from exc
            if self.on_progress:
                self.on_progress(self._ready(), self.count)
            return seen
        finally:
            self.close()


#: Slurm reasons a pending job never leaves (a block asking more than the partition has or allows).
HOPELESS_REASONS = frozenset({
    "PartitionNodeLimit", "PartitionConfig", "PartitionTimeLimit", "BadConstraints", "InvalidAccount",
    "InvalidQOS", "QOSMaxNodePerJobLimit", "AssocMaxNodesPerJobLimit", "ReqNodeNotAvail, UnavailableNodes:",
})
#: Seconds after start-up before the warm-up first asks the batch system about pending blocks.
_HOPELESS_AFTER_S = 3.0


def _queue_reason(job: str) -> str:
    """``: REASON`` of a pending Slurm job (squeue's reason, e.g. Resources or Priority), or ''."""
    if shutil.which("squeue") is None or not job.isdigit():
        return ""
    try:
        done = subprocess.run(["squeue", "-h", "-j", job, "-o", "%r"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    reason = done.stdout.strip()
    return f": {reason}" if done.returncode == 0 and reason else ""


def release(
    backend: Backend, slots: int, store: str | None, state: ClientState | None = None, timeout: float = RELEASE_TIMEOUT
) -> list[Released]:
    """At the end of a run on an executor that outlives it: every slot lets go of the run's
    store (its cached models) and client-state connection (see :mod:`flight_parsl.worker.release`).

    One task per slot, meeting at a barrier as the warm-up does. Best effort: a slot
    that does not answer within ``timeout`` seconds is left out and a failure is
    logged, never raised (the run's results stand). Returns the slots that answered.
    """
    count = backend.slots or slots
    barrier = _barrier_dir()
    try:
        futures = [
            backend.executor.submit(release_task, store, state, barrier, count, timeout) for _ in range(count)
        ]
        done, _ = wait(futures, timeout=timeout + 5.0)
        answered = [f.result() for f in done if f.exception() is None]
        if len(answered) < count:
            log.warning("%d of %d slots let go of the run's store (%s)", len(answered), count, backend.description)
        return answered
    except Exception:  # noqa: BLE001 - releasing must not turn a finished run into a failed one
        log.exception("could not release the run's store on the slots (%s)", backend.description)
        return []
    finally:
        remove_barrier(barrier)

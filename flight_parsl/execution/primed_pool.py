"""Parsl's HTEX worker pool, with workers that wait for a task without holding the queue's lock,
and (on a site whose blocks can come later) every worker primed before the pool takes a task.

Every HTEX block's pool starts with::

    python3 -m flight_parsl.execution.primed_pool process_worker_pool.py [--prime-spec PATH] <HTEX's pool arguments>

instead of HTEX's ``process_worker_pool.py`` (the script's name stays on the command line so that
``ps``, the leftovers of a killed coordinator and ``python -m flight_parsl.cleanup`` find the pool
as before). It is Parsl's own pool: the module's own main block runs with HTEX's arguments, in
the module's namespace, with the changes below.

**Waiting without the lock.** Parsl's idle workers wait in ``multiprocessing.Queue.get(timeout=...)``
on the pool's shared task queue, and that call holds the queue's reader lock (a process-shared
semaphore) for the whole wait. A worker SIGKILLed there never releases it, so no worker of the
pool takes a task again: a round's tasks stay out until its deadline and the run stops below its
quorum. Each worker here gets the queue through :class:`LockFreeTaskQueue`: it waits on the
queue's pipe with ``poll`` (no lock), and takes the lock only to read a task that is there, for
the microseconds of one read. An idle worker SIGKILLed is then restarted by Parsl's watchdog and
its pool goes on (``tests/test_idle_kill.py``).

**Priming**, on a site with a ``strategy`` (``--prime-spec``).

The run's warm-up (:class:`~flight_parsl.execution.backends.Warmup`) primes the slots that exist
when the run starts. A block Parsl starts later (a second block when the queue grows, a
replacement after a block reached its walltime) would take tasks while its workers still import
torch and load their data, and that cost would land in the round. A site whose blocks can come
later (a ``strategy`` other than ``none``) therefore starts each block's pool with
``--prime-spec RUN_DIR/parsl/prime.pkl``, and that pool has two more changes:

- Each worker process first runs :func:`flight_parsl.worker.tasks.prime_at_start` with the run's
  prime spec (the warm-up's modules and workload, pickled by the coordinator on the shared
  filesystem), then becomes Parsl's worker.
- The pool registers with the interchange, and so receives tasks, only once every worker has
  primed (at most ``max_wait`` seconds of the spec, the site's ``start_timeout``).

A worker Parsl's watchdog restarts primes again before it takes a task. A task on a slot primed
this way reports it (``TaskResult.primed_at_start``) and is not marked ``task_cold``. The prime
spec names one workload: a backend reused by a sweep keeps priming for the run that opened it.

**Workers forked from a warm parent** (``--preload MODULES``). Parsl's pool starts each worker
with a *spawn* context: every worker is a fresh interpreter that imports Python, Parsl, numpy,
the task modules (and torch, to train) on its own, one after the other on a busy node. Here the
workers come from a ``forkserver`` context instead, whose server imports this module, Parsl's
pool, :mod:`flight_parsl.worker.tasks` and the modules ``--preload`` names (the run's warm-up
modules, torch with them when the run trains) once; each worker is a fork of it, its imported
pages shared until written. The server starts first thing in the pool's process
(:func:`start_forkserver`, before the pool imports Parsl), so its imports run while the pool
imports, starts its Manager and connects; the workers fork once it is ready (a priming pool starts
it at its first worker instead, after it has set up the environment its workers prime with). The pool's
queues, values and its multiprocessing Manager stay Parsl's spawn context (a forkserver child
receives them as a spawned one does). The server only imports: no torch operation runs there,
so no thread pool exists to be forked. A worker is a child of the forkserver (itself a child of
the pool): ``ps`` and the slot census see the forkserver as the worker's parent; the pool's
watchdog restarts a SIGKILLed worker through the same server. A worker checks its pool is alive
as before (``os.kill(manager_pid, 0)``). Training pools fork too, with as few workers as cores:
torch is imported once, by the server, not once per worker beside the coordinator's own import
(digits mlp x64 on 2 slots: about 2 s less CPU per run, see docs/running.md).
``FLIGHT_PARSL_SPAWN_WORKERS=1`` in the pool's environment (a site's ``provider.worker_init``)
gives Parsl's spawned workers back.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import shlex
import shutil
import sys
import time
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

#: The option naming the modules the workers' forkserver imports (comma separated).
PRELOAD_OPTION = "--preload"
#: What the workers' forkserver always imports: this module (Parsl's pool with it) and the task bodies.
PRELOAD = ("flight_parsl.execution.primed_pool", "flight_parsl.worker.tasks")
#: Set to 1 in a pool's environment: its workers are spawned (Parsl's own way), not forked.
SPAWN_ENV = "FLIGHT_PARSL_SPAWN_WORKERS"


def fork_workers() -> bool:
    """Whether a pool forks its workers from a warm forkserver (unless ``FLIGHT_PARSL_SPAWN_WORKERS=1``)."""
    return os.environ.get(SPAWN_ENV, "") != "1"


def preload_modules(argv: list[str]) -> list[str]:
    """What the workers' forkserver imports: :data:`PRELOAD` and the modules ``--preload`` names in ``argv``."""
    named = argv[argv.index(PRELOAD_OPTION) + 1] if PRELOAD_OPTION in argv[:-1] else ""
    return [*PRELOAD, *(m for m in named.split(",") if m and m not in PRELOAD)]


def start_forkserver(preload: list[str]) -> None:
    """Start the workers' forkserver now, importing ``preload``: its imports (torch, to train) run
    beside the pool's own start instead of after it. Stdlib only: it runs before Parsl is imported."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(preload)
    from multiprocessing import forkserver

    forkserver.ensure_running()


#: The option naming the prime spec; the rest of the command line is HTEX's pool arguments.
SPEC_OPTION = "--prime-spec"

# The pool's process: its workers' server starts first, unless the workers prime (they need the
# environment main() sets up, which a server started now would not pass on: it starts on first use then)
if __name__ == "__main__" and fork_workers() and SPEC_OPTION not in sys.argv:
    start_forkserver(preload_modules(sys.argv[1:]))

from parsl.executors.high_throughput import process_worker_pool as pool  # noqa: E402

log = logging.getLogger(__name__)

#: The first argument: the script this module stands in for (kept so that process listings find the pool).
POOL_SCRIPT = "process_worker_pool.py"
_SPEC_ENV = "FLIGHT_PARSL_PRIME_SPEC"
_READY_ENV = "FLIGHT_PARSL_PRIMED_DIR"
_MAIN_MARK = '\nif __name__ == "__main__":\n'

_worker = pool.worker  # Parsl's worker body
_communicate = pool.Manager.interchange_communicator  # registers with the interchange first thing


def write_spec(path: str | Path, modules: tuple[str, ...], workload: Any, max_wait: float) -> Path:
    """Write the prime spec the pools read: the warm-up's modules and workload, and the most
    seconds a pool waits for its workers to prime."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"modules": tuple(modules), "workload": workload, "max_wait": float(max_wait)}))
    return path


def launch_command(spec: str | Path | None, htex_launch_cmd: str, preload: tuple[str, ...] = ()) -> str:
    """HTEX's ``launch_cmd`` for this pool: HTEX's own command, this module in place of
    ``process_worker_pool.py``; with a prime spec its workers prime before the pool takes tasks;
    ``preload``: more modules the workers' forkserver imports (the run's warm-up modules)."""
    script, _, arguments = htex_launch_cmd.partition(" ")
    if not script.endswith(POOL_SCRIPT):
        raise ValueError(f"HTEX's launch command does not start {POOL_SCRIPT}: {htex_launch_cmd!r}")
    priming = "" if spec is None else f"{SPEC_OPTION} {shlex.quote(str(spec))} "
    if preload:
        priming += f"{PRELOAD_OPTION} {shlex.quote(','.join(preload))} "
    return f"python3 -m flight_parsl.execution.primed_pool {POOL_SCRIPT} {priming}{arguments}"


class ForkedWorkers:
    """Parsl's spawn context for everything the pool makes (queues, values, its Manager), but
    worker processes from a ``forkserver`` context whose server has imported ``preload``."""

    def __init__(self, spawn: Any, preload: list[str]) -> None:
        forkserver = multiprocessing.get_context("forkserver")
        forkserver.set_forkserver_preload(preload)
        self._spawn = spawn
        self.Process = forkserver.Process

    def __getattr__(self, name: str) -> Any:
        return getattr(self._spawn, name)


class LockFreeTaskQueue:
    """A worker's side of the pool's task queue (a ``multiprocessing.Queue``): :meth:`get` waits
    for a task on the queue's pipe without the queue's reader lock, and holds the lock only to
    read a task that is there. A worker SIGKILLed while it waits leaves the lock free (Parsl's
    own ``Queue.get(timeout=...)`` holds it for the whole wait). Everything else is the queue's.
    """

    def __init__(self, task_queue: Any) -> None:
        self._queue = task_queue

    @staticmethod
    def fits(task_queue: Any) -> bool:
        """Whether the queue has the parts :meth:`get` uses (CPython's ``multiprocessing.Queue``)."""
        return all(hasattr(task_queue, name) for name in ("_poll", "_rlock", "_recv_bytes", "_sem"))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """The next task; ``queue.Empty`` when none came within ``timeout`` seconds (or at once
        with ``block=False``), or another worker took the one that came."""
        q = self._queue
        wait = (None if timeout is None else max(timeout, 0.0)) if block else 0.0
        if not q._poll(wait):  # waiting here holds no lock: a SIGKILL leaves the queue usable
            raise queue.Empty
        if not q._rlock.acquire(True, wait):  # another worker reads: the task is likely its
            raise queue.Empty
        try:
            if not q._poll():
                raise queue.Empty
            data = q._recv_bytes()
            q._sem.release()
        finally:
            q._rlock.release()
        return ForkingPickler.loads(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


def _lock_free(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Parsl's worker arguments after ``worker_id``, with the task queue (the third) wrapped."""
    if len(args) > 2 and LockFreeTaskQueue.fits(args[2]):
        return (*args[:2], LockFreeTaskQueue(args[2]), *args[3:])
    logging.getLogger("flight_parsl.primed_pool").warning("task queue not wrapped: it waits with Parsl's lock")
    return args


def lock_free_worker(worker_id: int, *args: Any, **kwargs: Any) -> None:
    """A worker process: Parsl's worker, waiting for tasks without the queue's lock."""
    _worker(worker_id, *_lock_free(args), **kwargs)


def _spec() -> dict[str, Any]:
    with open(os.environ[_SPEC_ENV], "rb") as f:
        spec: dict[str, Any] = pickle.load(f)
    return spec


def primed_worker(worker_id: int, *args: Any, **kwargs: Any) -> None:
    """A worker process: prime (a failure is logged; the tasks then meet it themselves), tell the
    pool, then run Parsl's worker."""
    from flight_parsl.worker.tasks import prime_at_start

    try:
        spec = _spec()
        prime_at_start(spec["modules"], spec["workload"])
    except Exception:  # noqa: BLE001 - the worker still serves; its tasks report the problem
        logging.getLogger("flight_parsl.primed_pool").exception("priming worker %s failed", worker_id)
    try:
        Path(os.environ[_READY_ENV], str(worker_id)).touch()
    except OSError:
        pass  # a worker restarted after the pool registered: nobody waits for it any more
    _worker(worker_id, *_lock_free(args), **kwargs)


def _communicate_when_primed(self: Any, pair_setup: Any) -> None:
    """The manager's interchange thread: register (and take tasks) once every worker primed."""
    deadline = time.monotonic() + float(_spec().get("max_wait", 300.0))
    ready = Path(os.environ[_READY_ENV])
    while len(list(ready.iterdir())) < self.worker_count and time.monotonic() < deadline:
        if self._stop_event.is_set():
            return
        time.sleep(0.05)
    pool.logger.info("%d of %d workers primed; registering with the interchange",
                     len(list(ready.iterdir())), self.worker_count)
    shutil.rmtree(ready, ignore_errors=True)  # the marks have served: nothing of them outlives registering
    _communicate(self, pair_setup)


def spawn_without_main() -> None:
    """The pool's spawned children (its multiprocessing Manager; workers under
    ``FLIGHT_PARSL_SPAWN_WORKERS=1``) skip re-running this module as their ``__mp_main__``: a spawned
    child imports the parent's main module first (Parsl's pool with it, about 0.8 s of CPU), and
    nothing they unpickle names it (the workers' functions are this module's, by its own name).
    Only when this module is the process's main module (``python -m``)."""
    main = sys.modules.get("__main__")
    if main is not None and getattr(getattr(main, "__spec__", None), "name", None) == __name__:
        main.__spec__ = None  # spawn's preparation data: no init_main_from_name ...
        vars(main).pop("__file__", None)  # ... nor init_main_from_path


def main(argv: list[str] | None = None) -> None:
    """Run Parsl's worker pool main block with lock-free waits, and primed workers with a prime
    spec (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == POOL_SCRIPT:
        del argv[0]
    ready = None
    options: dict[str, str] = {}
    for option in (SPEC_OPTION, PRELOAD_OPTION):
        if option in argv:
            at = argv.index(option)
            if at + 1 >= len(argv):
                raise SystemExit(f"usage: python -m flight_parsl.execution.primed_pool {POOL_SCRIPT} "
                                 f"[{SPEC_OPTION} PATH] [{PRELOAD_OPTION} MODULES] <pool arguments>")
            options[option] = argv[at + 1]
            del argv[at:at + 2]
    if SPEC_OPTION in options:
        os.environ[_SPEC_ENV] = options[SPEC_OPTION]
    preload = [*PRELOAD, *(m for m in options.get(PRELOAD_OPTION, "").split(",") if m and m not in PRELOAD)]
    known, _ = pool.get_arg_parser().parse_known_args(argv)
    if fork_workers():
        pool.SpawnContext = ForkedWorkers(pool.SpawnContext, preload)  # the main block's workers: forked
    source = Path(pool.__file__).read_text()
    if _MAIN_MARK not in source:
        raise SystemExit(f"{pool.__file__} has no main block to run")
    body = "\n".join(line[4:] for line in source.split(_MAIN_MARK, 1)[1].splitlines())
    if _SPEC_ENV in os.environ:
        # the workers' marks live in the pool's own log directory (in the run directory), not in /tmp
        ready = Path(known.logdir, f"block-{known.block_id}", f"primed-{os.getpid()}")
        ready.mkdir(parents=True, exist_ok=True)
        os.environ[_READY_ENV] = str(ready)  # the spawned workers inherit both variables
        pool.worker = primed_worker
        pool.Manager.interchange_communicator = _communicate_when_primed  # type: ignore[method-assign]
    else:
        pool.worker = lock_free_worker
    sys.argv = [pool.__file__, *argv]
    spawn_without_main()
    try:
        exec(compile(body, pool.__file__, "exec"), vars(pool))  # noqa: S102 - Parsl's own main block
    finally:
        if ready is not None:
            shutil.rmtree(ready, ignore_errors=True)


if __name__ == "__main__":
    from flight_parsl.execution import primed_pool as _named  # workers unpickle names from the named module

    _named.main()

"""A site with a ``strategy`` starts every block's worker pool through
:mod:`flight_parsl.execution.primed_pool`: each worker primes as it starts and the pool registers
with the interchange only then. The runs with a late block (a second block, a replacement after a
walltime) are in tests/test_local_cluster.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flight_parsl.execution.primed_pool import PRELOAD, ForkedWorkers, fork_workers, launch_command
from flight_parsl.execution.site import build_parsl_config, load_site


def test_only_a_site_with_a_strategy_starts_primed_pools(tmp_path: Path) -> None:
    # every pool starts through the module (its workers wait without the task queue's lock,
    # tests/test_idle_kill.py); only a site with a strategy and a spec primes
    site = load_site(None)
    plain = "python3 -m flight_parsl.execution.primed_pool process_worker_pool.py "
    cmd = build_parsl_config(site, 2, tmp_path, tmp_path / "prime.pkl").executors[0].launch_cmd
    assert cmd.startswith(plain) and "--prime-spec" not in cmd
    site["strategy"] = "simple"
    cmd = build_parsl_config(site, 2, tmp_path).executors[0].launch_cmd
    assert cmd.startswith(plain) and "--prime-spec" not in cmd  # no spec: no priming
    cmd = build_parsl_config(site, 2, tmp_path, tmp_path / "prime.pkl").executors[0].launch_cmd
    assert cmd.startswith(f"{plain}--prime-spec {tmp_path / 'prime.pkl'} ")
    # the script's name stays on the command line (process listings and leftovers find the pool)
    assert "--block_id={{block_id}}" in cmd and cmd.count("process_worker_pool.py") == 1


def test_launch_command_refuses_a_command_it_does_not_know() -> None:
    try:
        launch_command("spec", "my_pool.sh --block_id={block_id}")
    except ValueError as exc:
        assert "does not start process_worker_pool.py" in str(exc)
    else:
        raise AssertionError("no error")


def test_the_warm_up_modules_go_to_the_workers_forkserver(tmp_path: Path) -> None:
    site = load_site(None)
    cmd = build_parsl_config(site, 2, tmp_path, None, ("flight_parsl.worker.training",)).executors[0].launch_cmd
    assert "--preload flight_parsl.worker.training " in cmd and cmd.count("process_worker_pool.py") == 1
    assert "--preload" not in build_parsl_config(site, 2, tmp_path).executors[0].launch_cmd


#: stdlib modules the suite is unlikely to have imported; the test preloads the first one it has not
UNUSED_MODULES = ("tabnanny", "pyclbr", "sched", "netrc", "colorsys")


def _report(queue: Any, module: str) -> None:
    import os
    import sys

    queue.put((module in sys.modules, "flight_parsl.worker.tasks" in sys.modules, os.getppid()))


def test_workers_fork_from_a_server_that_imported_the_modules() -> None:
    """The pool's context: spawn for its queues, a forkserver that preloaded the modules for its
    workers (each worker a fork of it, not a fresh interpreter)."""
    import multiprocessing
    import multiprocessing.forkserver
    import os
    import sys

    unused = [m for m in UNUSED_MODULES if m not in sys.modules]
    assert unused, "every candidate module is imported already"
    module = unused[0]  # this process never imported it: the child's copy is the server's
    context = ForkedWorkers(multiprocessing.get_context("spawn"), [*PRELOAD, module])
    try:
        queue = context.Queue()
        assert type(queue).__module__ == "multiprocessing.queues" and context.Process.__name__ == "ForkServerProcess"
        child = context.Process(target=_report, args=(queue, module))
        child.start()
        preloaded, tasks, parent = queue.get(timeout=120)
        child.join(30)
        assert preloaded and tasks and parent != os.getpid() and child.exitcode == 0
    finally:
        multiprocessing.forkserver._forkserver._stop()


def test_a_training_pool_forks_only_with_more_workers_than_cores() -> None:
    training = [*PRELOAD, "flight_parsl.worker.training"]
    assert fork_workers(64, training, cores=2) and fork_workers("inf", training, cores=2)
    assert fork_workers(None, training, cores=2)
    assert not fork_workers(2, training, cores=2) and not fork_workers("2", training, cores=16)
    assert fork_workers(2, PRELOAD, cores=2)  # no torch to import: forked

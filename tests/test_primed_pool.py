"""A site with a ``strategy`` starts every block's worker pool through
:mod:`flight_parsl.execution.primed_pool`: each worker primes as it starts and the pool registers
with the interchange only then. The runs with a late block (a second block, a replacement after a
walltime) are in tests/test_local_cluster.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flight_parsl.execution.primed_pool import (
    PRELOAD, SPAWN_ENV, ForkedWorkers, fork_workers, launch_command, preload_modules,
)
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


def test_pools_fork_their_workers_unless_told_to_spawn(monkeypatch: Any) -> None:
    monkeypatch.delenv(SPAWN_ENV, raising=False)
    assert fork_workers()  # training or not, with any number of workers
    monkeypatch.setenv(SPAWN_ENV, "1")
    assert not fork_workers()


def test_the_forkserver_preloads_the_modules_the_command_line_names() -> None:
    argv = ["process_worker_pool.py", "--preload", "flight_parsl.worker.training,flight_parsl.worker.tasks", "-p", "0"]
    assert preload_modules(argv) == [*PRELOAD, "flight_parsl.worker.training"]
    assert preload_modules(["process_worker_pool.py", "-p", "0"]) == list(PRELOAD)
    assert preload_modules(["--preload"]) == list(PRELOAD)  # no value: nothing more


def test_the_pool_starts_its_workers_forkserver_before_it_imports_parsl(tmp_path: Path) -> None:
    """Run as the pool's main module, the module starts the forkserver first thing: the server
    (a child of this process) runs while Parsl's pool module is still being imported."""
    import subprocess
    import sys

    probe = tmp_path / "probe.py"
    probe.write_text(
        "import builtins, multiprocessing.forkserver as fs, runpy, sys\n"
        "real = builtins.__import__\n"
        "def spy(name, *a, **k):\n"
        "    if name.startswith('parsl.executors.high_throughput') and not hasattr(spy, 'seen'):\n"
        "        spy.seen = fs._forkserver._forkserver_pid\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = spy\n"
        "sys.argv = ['primed_pool', 'process_worker_pool.py', '--preload', 'colorsys', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('flight_parsl.execution.primed_pool', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('server', spy.seen, fs._forkserver._preload_modules)\n"
        "fs._forkserver._stop()\n"
    )
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop(SPAWN_ENV, None)
    done = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=120, env=env)
    line = [x for x in done.stdout.splitlines() if x.startswith("server ")]
    assert line, done.stdout + done.stderr
    _, pid, preload = line[0].split(" ", 2)
    assert pid != "None" and "'colorsys'" in preload and "'flight_parsl.worker.tasks'" in preload
    # a priming pool's workers need the environment main() sets: its server starts at the first worker
    spec = [sys.executable, str(probe), "--prime-spec", str(tmp_path / "prime.pkl")]
    done = subprocess.run(spec, capture_output=True, text=True, timeout=120, env=env)
    assert "server None" in done.stdout, done.stdout + done.stderr
    env[SPAWN_ENV] = "1"
    done = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=120, env=env)
    assert "server None" in done.stdout, done.stdout + done.stderr


def test_the_pools_spawned_children_do_not_rerun_it_as_their_main(monkeypatch: Any) -> None:
    """Run as ``python -m``, the pool's module hides itself from spawn's preparation data (its
    Manager would re-import Parsl's pool for nothing); another main module is left alone."""
    import sys
    import types
    from importlib.machinery import ModuleSpec
    from multiprocessing import spawn

    from flight_parsl.execution import primed_pool

    other = types.ModuleType("__main__")
    other.__spec__ = ModuleSpec("some_tool", None)
    other.__file__ = "/somewhere/some_tool.py"
    monkeypatch.setitem(sys.modules, "__main__", other)
    primed_pool.spawn_without_main()
    assert other.__spec__ is not None and other.__file__ == "/somewhere/some_tool.py"
    assert spawn.get_preparation_data("x").get("init_main_from_name") == "some_tool"

    pool_main = types.ModuleType("__main__")
    pool_main.__spec__ = ModuleSpec(primed_pool.__name__, None)
    pool_main.__file__ = primed_pool.__file__
    monkeypatch.setitem(sys.modules, "__main__", pool_main)
    primed_pool.spawn_without_main()
    data = spawn.get_preparation_data("x")
    assert "init_main_from_name" not in data and "init_main_from_path" not in data

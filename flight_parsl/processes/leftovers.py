"""What a coordinator killed without unwinding (SIGKILL, a lost node) leaves, and its removal.

While a run is open, ``leftovers.json`` in its run directory lists what the run
started outside itself: the managed redis-server (pid and directory), the file
channel's directory, the HTEX interchange, worker-manager and worker pids. A run that
stops in any orderly way (completed, failed, Ctrl-C, SIGTERM) removes all of them
and then the list. A resumed run (``--resume``) finds the list of a run that did
not, stops the processes that are still the ones listed (same pid, start time and
command line), removes the directories and forgets the list.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

from flight_parsl.processes.injector import children, stat_field

FILENAME = "leftovers.json"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _started(pid: int) -> int | None:
    """A process's start time (clock ticks since boot): with the pid, names one process for good."""
    return stat_field(pid, 19)


def note(
    run_dir: str | Path, transfer: Any, backend: Any, managers: AbstractSet[int] = frozenset(),
    state: Any = None,
) -> None:
    """Write the list of what ``transfer`` and ``backend`` run outside the coordinator (and the
    directory of the per-client ``state``, when it keeps one)."""
    processes: list[dict[str, Any]] = []
    directories: list[str] = []
    if getattr(state, "root", None):
        directories.append(str(state.root))
    server = getattr(transfer, "server", None)
    if server is not None and server.pid is not None:
        processes.append({"pid": server.pid, "match": "redis-server"})
        if server.directory is not None:
            directories.append(str(server.directory))
    if getattr(transfer, "kind", None) == "file" and getattr(transfer, "where", None):
        directories.append(str(transfer.where))
    dfk = getattr(getattr(backend, "executor", None), "_dfk", None)
    for executor in getattr(dfk, "executors", {}).values():
        proc = getattr(executor, "interchange_proc", None)
        if proc is not None:
            processes.append({"pid": proc.pid, "match": "interchange"})
    processes += [{"pid": pid, "match": "process_worker_pool"} for pid in sorted(managers)]
    # the managers' children (workers, their multiprocessing server) outlive a SIGKILLed manager
    processes += [{"pid": pid, "match": "spawn_main"} for pid in sorted(children(set(managers)))]
    for proc in processes:
        proc["started"] = _started(proc["pid"])
    path = Path(run_dir) / FILENAME
    tmp = path.with_name(FILENAME + ".tmp")
    tmp.write_text(json.dumps({"processes": processes, "directories": directories}, indent=2) + "\n")
    os.replace(tmp, path)


def forget(run_dir: str | Path) -> None:
    """The run cleaned up after itself: drop the list."""
    Path(run_dir, FILENAME).unlink(missing_ok=True)


def clean(run_dir: str | Path, wait_s: float = 5.0) -> list[str]:
    """Stop and remove what a stopped run in ``run_dir`` left; returns what was removed."""
    path = Path(run_dir) / FILENAME
    if not path.is_file():
        return []
    listed = json.loads(path.read_text())
    done = []
    for proc in listed.get("processes", []):
        pid = int(proc["pid"])
        if proc["match"] in _cmdline(pid) and _started(pid) == proc.get("started"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + wait_s
            while proc["match"] in _cmdline(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            done.append(f"{proc['match']} pid {pid}")
    for directory in listed.get("directories", []):
        if Path(directory).exists():
            shutil.rmtree(directory, ignore_errors=True)
            done.append(directory)
    forget(run_dir)
    return done

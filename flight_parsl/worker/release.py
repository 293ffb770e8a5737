"""The end of a run on a slot that outlives it: the run's store and connections let go.

A slot keeps, per run, the ProxyStore store it resolved proxies through (registered
by name in the process) with its cache of resolved models, and its client-state
connection. An executor reused by later runs (a sweep) would keep every earlier
run's store, so ``transfer.cache_size`` would not bound a slot's memory, and the
``file`` channel's cached models would pin deleted /dev/shm pages. The runner
submits :func:`release_task` once per slot when a run on a reused executor ends.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from flight_parsl.core.memory import release_garbage, rss_mb
from flight_parsl.transfer.state import ClientState
from flight_parsl.worker.barrier import meet


@dataclass(frozen=True)
class Released:
    """What one slot let go of: its host and pid, whether it held the run's store, its RSS after."""

    host: str
    pid: int
    store: bool
    rss_mb: float


def release_store(name: str) -> bool:
    """Unregister and close this process's store ``name`` and drop its cache; False if it has none.

    The connector closes without clearing: the keys are shared and the coordinator
    evicts them (``file``: closing never removes the directory; ``redis``: never flushes).
    """
    from proxystore.store import get_store, unregister_store

    store = get_store(name)
    if store is None:
        return False
    unregister_store(name)
    store.cache = type(store.cache)(store.cache.maxsize)  # cached models go now, whoever holds the store
    store.close(clear=False)
    return True


def release_task(
    store: str | None,
    state: ClientState | None = None,
    barrier: str | None = None,
    expected: int = 1,
    max_wait: float = 0.0,
) -> Released:
    """Let go of the run's store ``store`` (names separated by commas: each) and client-state
    connection in this process.

    Meets the run's other release tasks at ``barrier`` first (see :func:`meet`), so
    each slot runs one. Returns what it found, and the RSS after freed memory went
    back to the OS.
    """
    meet(barrier, expected, max_wait)
    # a store per site names each site's store, comma-separated: a slot holds at most its own site's
    held = any([release_store(name) for name in store.split(",")]) if store is not None else False
    if state is not None:
        state.release()
    release_garbage()
    return Released(socket.gethostname(), os.getpid(), held, rss_mb())

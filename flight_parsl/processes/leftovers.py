"""What a coordinator killed without unwinding (SIGKILL, a lost node) leaves, and its removal.

While a run is open, ``leftovers.json`` in its run directory lists what the run
started outside itself: the coordinator, the managed redis-server (pid and directory),
the file channel's directory, the HTEX interchange, worker-manager and worker pids, and on an
external Redis (``--redis``) the run's key prefix and the ACL user it made there. The
list is written once the executor is up and again once the warm-up has found the
workers. A run that stops in any orderly way (completed, failed, Ctrl-C, SIGTERM)
removes all of them and then the list. A resumed run (``--resume``) and
``python -m flight_parsl.cleanup RUN_DIR`` (:mod:`flight_parsl.cleanup`) find the list of
a run that did not, stop the processes that are still the ones listed (same pid, start
time and command line) together with the current children of a listed worker pool (the
workers it restarted after the list was written) and every worker pool whose command
line names the run directory, remove the directories, delete the run's keys and user from an
external Redis (with the credentials of the environment, as the run had them), and forget the
list. Neither
touches a run whose coordinator is still alive (:class:`RunStillOpen`).

A several-sites run with virtual hosts also lists its virtual network
(:mod:`flight_parsl.execution.netns`): the network namespaces, the bridge and the root
side of each veth pair, and the redis-server it runs on the bridge. Clean-up kills what
still runs inside those namespaces (the sites' worker pools and workers), then deletes the
namespaces, the veths and the bridge: exactly the names listed, and only while no process
holds the coordinator's pid (the names carry it; a new process with that pid may have made
namespaces of its own).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

from flight_parsl.core.errors import FlightParslError
from flight_parsl.processes.injector import children, stat_field

FILENAME = "leftovers.json"


class RunStillOpen(FlightParslError):
    """The run's coordinator still runs: its processes are not leftovers."""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _started(pid: int) -> int | None:
    """A process's start time (clock ticks since boot): with the pid, names one process for good."""
    return stat_field(pid, 19)


def _network(sites: Any) -> dict[str, Any] | None:
    """What a several-sites run's virtual network made (None: no virtual network)."""
    net = getattr(sites, "network", None)
    if net is None:
        return None
    return {
        "namespaces": [host.netns for host in net.hosts.values()],
        "bridge": net.bridge,
        "links": [host.link for host in net.hosts.values() if host.link],
    }


def _server_directories(server: Any) -> list[str]:
    """A managed redis-server's temporary directory and its Unix socket's (a server over TLS)."""
    found = [str(server.directory)] if server.directory is not None else []
    socket_path = getattr(server, "unix_socket", None)
    if isinstance(socket_path, str):
        found.append(str(Path(socket_path).parent))
    return found


def note(
    run_dir: str | Path, transfer: Any, backend: Any, managers: AbstractSet[int] = frozenset(),
    state: Any = None, sites: Any = None,
) -> None:
    """Write the list of what ``transfer`` and ``backend`` run outside the coordinator (and the
    directory of the per-client ``state``, when it keeps one; the virtual network of ``sites``
    and the redis-server on its bridge, when a several-sites run made them)."""
    processes: list[dict[str, Any]] = []
    directories: list[str] = []
    bridge_redis = getattr(sites, "server", None)
    if bridge_redis is not None and bridge_redis.pid is not None:
        processes.append({"pid": bridge_redis.pid, "match": "redis-server"})
        directories += _server_directories(bridge_redis)
    if getattr(state, "root", None):
        directories.append(str(state.root))
    me = {"pid": os.getpid(), "started": _started(os.getpid())}
    for server in (getattr(transfer, "server", None), *getattr(transfer, "servers", ())):  # a store per site: several
        if server is not None and server.pid is not None:
            processes.append({"pid": server.pid, "match": "redis-server"})
            directories += _server_directories(server)
    if getattr(transfer, "kind", None) == "file" and getattr(transfer, "where", None):
        directories.append(str(transfer.where))
    dfk = getattr(backend, "dfk", None) or getattr(getattr(backend, "executor", None), "_dfk", None)
    for executor in getattr(dfk, "executors", {}).values():
        proc = getattr(executor, "interchange_proc", None)
        if proc is not None:
            processes.append({"pid": proc.pid, "match": "interchange"})
    # a worker's parent is its pool's forkserver (flight_parsl.execution.primed_pool): list the pool
    managers = {(stat_field(pid, 1) or pid) if _FORKSERVER in _cmdline(pid) else pid for pid in managers}
    processes += [{"pid": pid, "match": "process_worker_pool"} for pid in sorted(managers)]
    # the managers' children and theirs (the forkserver, workers, the multiprocessing Manager) outlive
    # a SIGKILLed manager
    processes += [{"pid": pid, "match": "multiprocessing"} for pid in sorted(_descendants(set(managers)))]
    for proc in processes:
        proc["started"] = _started(proc["pid"])
    path = Path(run_dir) / FILENAME
    tmp = path.with_name(FILENAME + ".tmp")
    listed: dict[str, Any] = {"coordinator": me, "processes": processes, "directories": directories}
    if getattr(transfer, "shared", False):  # names only: the passwords stay in the environment
        connector = transfer.store.connector
        listed["redis"] = {"address": transfer.where, "prefix": connector.prefix, "user": transfer.redis_user,
                           "tls": bool(connector.tls)}
    network = _network(sites)
    if network is not None:
        listed["network"] = network
    tmp.write_text(json.dumps(listed, indent=2) + "\n")
    os.replace(tmp, path)


def forget(run_dir: str | Path) -> None:
    """The run cleaned up after itself: drop the list."""
    Path(run_dir, FILENAME).unlink(missing_ok=True)


def _zombie(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return text[text.rindex(")") + 2 :].split()[0] in ("Z", "X")


#: In the command line of a worker pool's forkserver and of the workers it forks.
_FORKSERVER = "multiprocessing.forkserver"


def _descendants(pools: set[int]) -> dict[int, int]:
    """The pools' children and their children (a pool's forkserver's workers): pid -> parent."""
    kids = children(pools)
    return {**kids, **children(set(kids))} if kids else kids


def _same(proc: dict[str, Any]) -> bool:
    """Whether a listed process still runs: same pid, command line and start time."""
    pid = int(proc["pid"])
    return proc["match"] in _cmdline(pid) and _started(pid) == proc.get("started") and not _zombie(pid)


def _pools_of(run_dir: Path) -> list[int]:
    """Live HTEX worker pools whose command line names the run directory (their log directory)."""
    marker = str(run_dir.absolute())
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            line = _cmdline(int(entry))
            if "process_worker_pool" in line and marker + "/" in line:
                found.append(int(entry))
    return found


def coordinator_alive(listed: dict[str, Any]) -> int | None:
    """The pid of the listed coordinator when it still runs (and is not this process), else None."""
    me = listed.get("coordinator") or {}
    pid = me.get("pid")
    if pid is None or int(pid) == os.getpid() or _started(int(pid)) != me.get("started"):
        return None
    return int(pid)


def _listed(run_dir: Path) -> dict[str, Any] | None:
    """The list a run in ``run_dir`` keeps of what it runs outside itself (None: nothing listed).

    Raises:
        RunStillOpen: the run's coordinator still runs.
    """
    path = run_dir / FILENAME
    if not path.is_file():
        return None
    listed: dict[str, Any] = json.loads(path.read_text())
    pid = coordinator_alive(listed)
    if pid is not None:
        raise RunStillOpen(f"{run_dir}: its coordinator (pid {pid}) still runs; stop it first "
                           f"(kill -TERM {pid} stops it and cleans up)")
    return listed


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(["ip", *args], 1, "", str(exc))


def _network_left(listed: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of each listed namespace, veth and bridge that still exists; nothing while a
    process holds the coordinator's pid (the names carry it: they may be that process's own)."""
    network = listed.get("network")
    if not network or shutil.which("ip") is None:
        return []
    pid = (listed.get("coordinator") or {}).get("pid")
    if pid is not None and _started(int(pid)) is not None:
        return []
    namespaces = set(_ip("netns", "list").stdout.split())
    out = [("namespace", name) for name in network.get("namespaces", []) if name in namespaces]
    for kind, names in (("veth", network.get("links", [])), ("bridge", [network.get("bridge")])):
        out += [(kind, name) for name in names if name and _ip("link", "show", name).returncode == 0]
    return out


def left(run_dir: str | Path) -> list[str]:
    """What a stopped run in ``run_dir`` left that still exists, one line each; nothing is touched.

    Raises:
        RunStillOpen: the run's coordinator still runs.
    """
    run_dir = Path(run_dir)
    listed = _listed(run_dir)
    mirrors = run_dir / "site_state"  # client state the sites' tasks mirrored (transfer.persite.MIRROR_DIR)
    out = [str(mirrors)] if mirrors.is_dir() else []
    if listed is None:
        return out
    pools = set()
    for proc in listed.get("processes", []):
        if _same(proc):
            out.append(f"{proc['match']} pid {proc['pid']}")
            if proc["match"] == "process_worker_pool":
                pools.add(int(proc["pid"]))
    for pid in sorted(set(_pools_of(run_dir)) - pools):
        out.append(f"process_worker_pool pid {pid}")
        pools.add(pid)
    listed_pids = {int(p["pid"]) for p in listed.get("processes", [])}
    for pid in sorted(set(_descendants(pools)) - listed_pids):
        out.append(f"worker pid {pid} (a child of a worker pool)")
    out += [d for d in listed.get("directories", []) if Path(d).exists()]
    redis = listed.get("redis")
    if redis:
        user = f" and ACL user {redis['user']}" if redis.get("user") else ""
        out.append(f"Redis keys {redis['prefix']}*{user} at {redis['address']} (if still there)")
    for kind, name in _network_left(listed):
        inside = _ip("netns", "pids", name).stdout.split() if kind == "namespace" else []
        out.append(f"{kind} {name}" + (f" ({len(inside)} process(es) inside)" if inside else ""))
    return out


def _clean_redis(entry: dict[str, Any]) -> list[str]:
    """Delete a killed run's keys (and the ACL user it made) from an external Redis, logged in with the
    environment's credentials; one line for what was removed, or for what could not be and why."""
    import redis as redis_py

    from flight_parsl.core.errors import ConfigError
    from flight_parsl.transfer.redis_auth import redis_ca, redis_password, redis_username
    from flight_parsl.transfer.redis_server import RedisAddress, delete_user, redis_client

    prefix, user, where = entry["prefix"], entry.get("user"), entry["address"]
    try:
        ca = redis_ca()
        client = redis_client(RedisAddress.parse(where), 5.0, redis_password(), username=redis_username(),
                              tls=bool(entry.get("tls")) or ca is not None, ca=ca)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
            if user and user in {u if isinstance(u, str) else u.decode() for u in client.acl_users()}:
                delete_user(client, user)
        finally:
            client.close()
    except (redis_py.exceptions.RedisError, OSError, ConfigError) as exc:
        return [f"not removed: Redis keys {prefix}*" + (f" and ACL user {user}" if user else "") +
                f" at {where} ({type(exc).__name__}: {' '.join(str(exc).split())})"]
    return [f"{len(keys)} Redis key(s) {prefix}* at {where}"] + ([f"Redis ACL user {user} at {where}"] if user else [])


def clean(run_dir: str | Path, wait_s: float = 5.0) -> list[str]:
    """Stop and remove what a stopped run in ``run_dir`` left; returns what was removed.

    Raises:
        RunStillOpen: the run's coordinator still runs (nothing is touched).
    """
    run_dir = Path(run_dir)
    listed = _listed(run_dir)
    done = []
    mirrors = run_dir / "site_state"  # client state the sites' tasks mirrored (transfer.persite.MIRROR_DIR)
    if mirrors.is_dir():
        shutil.rmtree(mirrors, ignore_errors=True)
        done.append(str(mirrors))
    if listed is None:
        return done
    pools = {int(p["pid"]) for p in listed.get("processes", []) if p["match"] == "process_worker_pool" and _same(p)}
    pools |= set(_pools_of(run_dir))
    # a pool's current children first: workers it restarted after the list was written are not on it
    listed_pids = {int(p["pid"]) for p in listed.get("processes", [])}
    kids = [{"pid": c, "match": "", "started": _started(c)} for c in sorted(set(_descendants(pools)) - listed_pids)]
    more = [{"pid": p, "match": "process_worker_pool", "started": _started(p)} for p in sorted(pools - listed_pids)]
    # pools before their workers: a pool that still runs restarts a worker killed before it
    for proc in [*more, *listed.get("processes", []), *kids]:
        if not _same(proc):
            continue
        pid = int(proc["pid"])
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + wait_s
        while _same(proc) and time.monotonic() < deadline:
            time.sleep(0.05)
        done.append(f"{proc['match'] or 'worker'} pid {pid}")
    for directory in listed.get("directories", []):
        if Path(directory).exists():
            shutil.rmtree(directory, ignore_errors=True)
            done.append(directory)
    if listed.get("redis"):
        done += _clean_redis(listed["redis"])
    from flight_parsl.execution.netns import remove_namespace

    # namespaces first (what runs inside is killed; a namespace takes its veth end, and so the pair)
    for kind, name in _network_left(listed):
        if kind == "namespace":
            remove_namespace(name)
        elif _ip("link", "show", name).returncode == 0:
            _ip("link", "del", name)
        else:
            continue
        done.append(f"{kind} {name}")
    forget(run_dir)
    return done

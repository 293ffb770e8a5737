"""Run one Flower debug run in child processes and turn what they record into a results row.

This module does not import flwr: it starts the processes of
:mod:`flight_parsl.baselines.flower.app`, watches them (time limit, a system
memory guard, a client or server that dies), always stops every process it
started, and writes ``summary.json`` into the run directory.

Modes and their processes:

``grpc``
    One server process on 127.0.0.1:<free port>; once it answers, N client
    processes, all launched by this process (each in its own session, so they
    are stopped as a group). Client peak RSS comes from ``os.wait4`` on each
    client (exact ``ru_maxrss`` of the whole process life).
``simulation``
    One driver process running ``flwr.simulation.run_simulation`` (Ray
    backend, N logical CPUs, one per client: exactly N actor processes; with
    ``client_cpus`` "default", Flower's own settings: 2 of the machine's CPUs per
    client, so cpus // 2 actors serve the N clients; with a number X, X of the
    machine's CPUs per client). Actor peak RSS: each actor's own ``ru_maxrss``, asked after the last aggregate
    (falling back to what the clients reported in their fit metrics).

Timestamps (Unix seconds; columns of :mod:`flight_parsl.results.table`):

============== ========================================== ==========================================
column         grpc                                       simulation
============== ========================================== ==========================================
start          first client process launched              just before ``run_simulation``
dfk_start_done first client registered with the server    Ray up and the actor pool built
               (the server is up before any client
               starts; its time is ``server_up``)
priming_done   round 1 ``configure_fit`` entered, after   round 1 ``configure_fit`` entered, after
               all N clients registered                   every actor answered a warm-up call
end            last round's aggregate ready               last round's aggregate ready
============== ========================================== ==========================================

``round_makespan_s`` is the mean over rounds of (aggregate ready - configure_fit
entered). ``bytes_moved`` counts the serialized tensors Flower sends and
receives (``np.save`` format: the arrays' bytes plus a header of about 128 bytes
per array), N messages each way per round; ``array_bytes_moved`` in summary.json
counts the raw array bytes. ``peak_rss_mb`` is the process running the
strategy (gRPC server / simulation driver, which also built the model with torch).

Concurrency: Flower's legacy ``Server`` sends the fit instructions from a thread
pool, one task per client, with ``max_workers=None`` by default: Python then uses
min(32, cpus + 4) threads (6 on a 2-core machine), so at most that many clients
are in flight at once in either mode. ``server_threads`` (``--server-threads N``)
calls ``Server.set_max_workers`` to put all N in flight; summary.json records
``server_fit_threads``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from flight_parsl.core.errors import ConfigError

MODES = ("grpc", "simulation")
FRAMEWORKS = {"grpc": "flower-grpc", "simulation": "flower-simulation"}
TRANSFERS = {"grpc": "grpc", "simulation": "ray"}
INSTALL_HINT = 'pip install -e ".[flower]"'
RESULT_FILE = "flower_result.json"  # written by the child processes (app.RESULT_FILE)
ROUNDS_FILE = "rounds.csv"  # training runs: one row a round
ROUNDS_COLUMNS = ("round", "start", "end", "makespan_s", "eval_s", "participants", "test_loss", "test_acc",
                  "train_loss", "train_acc")
PARAMS_FILE = "final_parameters.npz"
# gRPC message limit for server and clients: twice Flower's 512 MiB default; ResNet-152's
# payload is 241 MB, so every model of the zoo fits with room to spare.
GRPC_MAX_MESSAGE_LENGTH = 1 << 30
CLIENT_EXIT_GRACE_S = 30.0
POLL_S = 0.05


class FlowerInputError(ConfigError):
    """A bad argument, or the flower extra is not installed (exit status 2)."""


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------


def check_inputs(workers: Any, model: Any, mode: Any, rounds: Any, timeout: Any) -> None:
    """Raise FlowerInputError (or ConfigError for the model) naming the first bad input."""
    if mode not in MODES:
        raise FlowerInputError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    for name, value in (("workers", workers), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FlowerInputError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise FlowerInputError(f"timeout must be a positive number of seconds, got {timeout!r}")
    from flight_parsl.models import reference_spec

    reference_spec(model)  # ConfigError: "unknown model 'x'; valid names: ..."
    if importlib.util.find_spec("flwr") is None:
        raise FlowerInputError(f"flwr is not installed: {INSTALL_HINT}")
    if mode == "simulation" and importlib.util.find_spec("ray") is None:
        raise FlowerInputError(
            f"ray is not installed (Flower's simulation engine needs flwr[simulation]): {INSTALL_HINT}"
        )


TRAIN_ONLY = ("dataset", "epochs", "batch_size", "lr")


def check_training_inputs(
    workers: int, model: str, mode: str, rounds: int, train: Any,
    dataset: Any, epochs: Any, batch_size: Any, lr: Any,
) -> dict[str, Any] | None:
    """Check ``train`` and the training flags; for ``train="local"`` return what the run
    trains (dataset, split, optimizer, ...: flight_parsl's config for the same flags), else None.

    Raises:
        FlowerInputError: a bad combination (a training flag without ``train="local"``,
            training in grpc mode); ConfigError: a value flight_parsl's config rejects
            (its message names the key), missing data, an untrainable model.
    """
    from flight_parsl.baselines.flower.workload import TRAIN_MODES, check_training, train_config

    if train not in TRAIN_MODES:
        raise FlowerInputError(f"train must be one of {', '.join(TRAIN_MODES)}, got {train!r}")
    given = [name for name, value in zip(TRAIN_ONLY, (dataset, epochs, batch_size, lr)) if value is not None]
    if train == "none":
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            verb = "applies" if len(given) == 1 else "apply"
            raise FlowerInputError(f"{flags} {verb} to --train local only (this run is --train none: no training)")
        return None
    if mode != "simulation":
        raise FlowerInputError(f"--train local runs in simulation mode only, not {mode!r}")
    return dict(check_training(train_config(workers, rounds, model, dataset, epochs, batch_size, lr)))


CLIENT_CPUS_MODES = ("matched", "default")


def parse_client_cpus(value: Any) -> str | float:
    """``client_cpus``: ``"matched"``, ``"default"`` or a positive number (a string of one is parsed).

    Raises:
        FlowerInputError: anything else.
    """
    if value in CLIENT_CPUS_MODES:
        return str(value)
    number = float("nan")
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    if not 0 < number < math.inf:
        raise FlowerInputError(f"client_cpus must be matched, default or a positive number, got {value!r}")
    return number


def default_out(mode: str, model: str, workers: int, trial: int) -> Path:
    """runs/<timestamp>-flower-<mode>-<model>-n<N>-t<trial>."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-flower-{mode}-{model}-n{workers}-t{trial}"


# ---------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    """The environment of every child: this checkout first on the path, telemetry off."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Child:
    """One process this run started, in its own session; reaped with ``os.wait4``."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = log
        self._log = log.open("wb")
        self.launched = time.time()
        self.popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self.rc: int | None = None
        self.maxrss_kb: int | None = None
        self.exited: float | None = None
        self.descendants: dict[int, Any] = {}  # pid -> psutil.Process seen under this child

    def poll(self, block: bool = False) -> int | None:
        """Return the exit status once the process has ended (reaping it), else None."""
        if self.rc is not None:
            return self.rc
        try:
            pid, status, usage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self._done(-1, None)
            return self.rc
        if pid == 0:
            return None
        self._done(os.waitstatus_to_exitcode(status), int(usage.ru_maxrss))
        return self.rc

    def _done(self, rc: int, maxrss_kb: int | None) -> None:
        self.rc = rc
        self.maxrss_kb = maxrss_kb
        self.exited = time.time()
        self.popen.returncode = rc
        self._log.close()

    def snapshot_descendants(self) -> None:
        """Remember the processes under this child (Ray's may leave its session)."""
        import psutil

        if self.rc is not None:
            return
        try:
            for proc in psutil.Process(self.pid).children(recursive=True):
                self.descendants.setdefault(proc.pid, proc)
        except psutil.Error:
            pass

    def signal(self, sig: int) -> None:
        if self.rc is None:
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:])


def stop_all(children: Sequence[Child], grace: float = 5.0) -> list[int]:
    """Stop every child and everything seen under them; return pids still alive (none, normally)."""
    import psutil

    for child in children:
        child.snapshot_descendants()
    for child in children:
        child.signal(signal.SIGTERM)
    extra = [p for c in children for p in c.descendants.values()]
    for proc in extra:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    deadline = time.time() + grace
    while time.time() < deadline and any(c.poll() is None for c in children):
        time.sleep(POLL_S)
    for child in children:
        if child.poll() is None:
            child.signal(signal.SIGKILL)
            child.poll(block=True)
    _, alive = psutil.wait_procs(extra, timeout=max(0.1, deadline - time.time()))
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=3)
    return [p.pid for p in alive]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class RunFailed(Exception):
    """The run failed; the message is the row's reason."""


class Watch:
    """The time limit and the system memory guard shared by every wait of a run."""

    def __init__(self, timeout: float, mem_limit_gb: float | None) -> None:
        self.deadline = time.time() + timeout
        self.timeout = timeout
        self.mem_limit_gb = mem_limit_gb
        self.peak_system_used_gb = 0.0
        self._next_snapshot = 0.0

    def check(self, children: Sequence[Child]) -> None:
        import psutil

        vm = psutil.virtual_memory()
        used_gb = (vm.total - vm.available) / 2**30
        self.peak_system_used_gb = max(self.peak_system_used_gb, used_gb)
        if self.mem_limit_gb is not None and used_gb > self.mem_limit_gb:
            raise RunFailed(
                f"memory guard: system memory in use {used_gb:.1f} GiB > limit {self.mem_limit_gb:g} GiB"
            )
        if time.time() > self.deadline:
            raise RunFailed(f"timeout: not finished after {self.timeout:g} s")
        now = time.time()
        if now >= self._next_snapshot:
            for child in children:
                child.snapshot_descendants()
            self._next_snapshot = now + 1.0


def _module_argv(role: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "flight_parsl.baselines.flower", role, *args]


def _run_grpc(
    out: Path, workers: int, model: str, rounds: int, timeout: float, extra: list[str],
    watch: Watch, children: list[Child], info: dict[str, Any],
) -> None:
    env = _child_env()
    logs = out / "logs"
    port = free_port()
    max_len = GRPC_MAX_MESSAGE_LENGTH
    info.update(address=f"127.0.0.1:{port}", grpc_max_message_length=max_len)
    common = ["--workers", str(workers), "--model", model, "--rounds", str(rounds), "--out", str(out),
              "--timeout", str(timeout), *extra]
    server = Child("server", _module_argv("server", *common, "--port", str(port),
                                          "--max-message-length", str(max_len)),
                   logs / "server.log", env)
    children.append(server)
    info["server_pid"] = server.pid
    while not _answers(port):
        if server.poll() is not None:
            raise RunFailed(f"the server exited with status {server.rc} before listening: {server.log_tail()}")
        watch.check(children)
        time.sleep(POLL_S)
    info["server_up"] = time.time()

    client_argv = _module_argv("client", "--address", f"127.0.0.1:{port}", "--max-message-length",
                               str(max_len), "--timeout", str(timeout))
    clients = []
    for i in range(workers):
        client = Child(f"client-{i}", client_argv, logs / f"client-{i}.log", env)
        children.append(client)
        clients.append(client)
    info["start"] = clients[0].launched
    info["client_pids"] = [c.pid for c in clients]

    while server.poll() is None:
        for client in clients:
            rc = client.poll()
            if rc is not None and rc != 0:
                raise RunFailed(
                    f"{client.name} (pid {client.pid}) exited with status {rc} before the run ended: "
                    f"{client.log_tail()}"
                )
        watch.check(children)
        time.sleep(POLL_S)
    info["server_exit_seen"] = time.time()
    if server.rc != 0:
        raise RunFailed(f"the server exited with status {server.rc}: {_child_error(out, server)}")

    # The server disconnects its clients at the end; give them a moment to exit by themselves.
    grace_end = time.time() + CLIENT_EXIT_GRACE_S
    while any(c.poll() is None for c in clients) and time.time() < grace_end:
        time.sleep(POLL_S)
    info["clients_stopped"] = [c.pid for c in clients if c.rc is None]
    if info["clients_stopped"]:
        stop_all(clients)
    info["client_exit_status"] = [c.rc for c in clients]
    kbs = [c.maxrss_kb for c in clients if c.maxrss_kb is not None]
    if len(kbs) == len(clients):
        info["peak_rss_workers_kb"] = sum(kbs)
        info["peak_rss_workers_how"] = "sum over the N client processes of ru_maxrss from os.wait4"


def _run_simulation(
    out: Path, workers: int, model: str, rounds: int, timeout: float, extra: list[str],
    watch: Watch, children: list[Child], info: dict[str, Any],
) -> None:
    env = _child_env()
    args = ["--workers", str(workers), "--model", model, "--rounds", str(rounds), "--out", str(out),
            "--timeout", str(timeout), *extra]
    driver = Child("simulation", _module_argv("simulate", *args), out / "logs" / "simulation.log", env)
    children.append(driver)
    info["server_pid"] = driver.pid
    while driver.poll() is None:
        watch.check(children)
        time.sleep(POLL_S)
    info["driver_exit_seen"] = time.time()
    if driver.rc != 0:
        raise RunFailed(f"the simulation exited with status {driver.rc}: {_child_error(out, driver)}")


def _child_error(out: Path, child: Child) -> str:
    result = _read_result(out)
    if result.get("error"):
        return str(result["error"])
    return child.log_tail() or "no error recorded"


def _read_result(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------
# Summary and row
# ---------------------------------------------------------------------------


def _summarize(
    mode: str, model: str, workers: int, rounds: int, trial: int, out: Path,
    info: dict[str, Any], result: dict[str, Any], status: str,
) -> dict[str, Any]:
    rnds = [r for r in result.get("rounds", []) if "aggregate_ready" in r]
    registered = sorted(result.get("registered", []))
    if mode == "grpc":
        start = info.get("start")
        dfk = registered[0] if registered else None
    else:
        start = result.get("start")
        dfk = result.get("engine_up")
    priming = rnds[0]["configure_start"] if rnds else None
    end = rnds[-1]["aggregate_ready"] if rnds else None
    model_info = result.get("model_info", {})
    bytes_to = sum(r.get("bytes_to_clients", 0) for r in rnds)
    bytes_from = sum(r.get("bytes_from_clients", 0) for r in rnds)
    messages = sum(r.get("clients", 0) + r.get("results", 0) for r in rnds)

    workers_kb, how = info.get("peak_rss_workers_kb"), info.get("peak_rss_workers_how")
    if workers_kb is None and result.get("actor_maxrss_kb"):
        workers_kb = sum(result["actor_maxrss_kb"].values())
        how = ("sum over the N Ray actor processes of their ru_maxrss, asked after the last aggregate "
               "(Ray's own gcs/raylet/idle worker processes not included)")
    if workers_kb is None and result.get("client_maxrss_kb"):
        workers_kb = sum(result["client_maxrss_kb"].values())
        how = "sum over distinct client pids of ru_maxrss reported in their last fit metrics"

    def diff(a: float | None, b: float | None) -> float | None:
        return a - b if a is not None and b is not None else None

    summary: dict[str, Any] = {
        "framework": FRAMEWORKS[mode],
        "model": model,
        "num_workers": workers,
        "transfer": TRANSFERS[mode],
        "trial": trial,
        "train": "none",
        "rounds": rounds,
        "status": status,
        "start": start,
        "dfk_start_done": dfk,
        "priming_done": priming,
        "end": end,
        "start2end": diff(end, start),
        "prime2end": diff(end, priming),
        "round_makespan_s": (sum(r["makespan_s"] for r in rnds) / len(rnds)) if rnds else None,
        "bytes_moved": bytes_to + bytes_from if rnds else None,
        "bytes_to_clients": bytes_to,
        "bytes_from_clients": bytes_from,
        "array_bytes_moved": model_info.get("model_bytes", 0) * messages if rnds else None,
        "peak_rss_mb": result["peak_rss_kb"] / 1024 if result.get("peak_rss_kb") else None,
        "peak_rss_workers_mb": workers_kb / 1024 if workers_kb else None,
        "peak_rss_workers_how": how,
        "peak_system_memory_used_gb": info.get("peak_system_used_gb"),
        # 1/5/15-minute load averages: other work on the machine skews the timings.
        "loadavg_before": info.get("loadavg_before"),
        "loadavg_after": info.get("loadavg_after"),
        "model_info": model_info,
        "rounds_detail": result.get("rounds", []),
        "clients_registered": registered,
        "clients_ready": result.get("clients_ready"),
        "server_pid": info.get("server_pid"),
        "server_fit_threads": result.get("server_fit_threads"),
        "flwr_version": result.get("flwr_version"),
        "run_dir": str(out),
    }
    if mode == "grpc":
        summary.update(
            server_up=info.get("server_up"),
            server_exit=result.get("server_exit"),
            address=info.get("address"),
            grpc_max_message_length=info.get("grpc_max_message_length"),
            client_pids=info.get("client_pids", []),
            client_exit_status=info.get("client_exit_status"),
            clients_stopped=info.get("clients_stopped", []),
        )
    else:
        summary.update(
            ray_version=result.get("ray_version"),
            backend_config=result.get("backend_config"),
            warm_done=result.get("warm_done"),
            engine_exit=result.get("engine_exit"),
            client_cpus=result.get("client_cpus"),
            client_resources=result.get("client_resources_resolved"),
            ray_cpus=result.get("ray_cpus"),
            num_actors=result.get("num_actors"),
            actor_pids=result.get("actor_pids", []),
            actor_probe_error=result.get("actor_probe_error"),
        )
    if result.get("final_parameters"):
        summary["final_parameters"] = result["final_parameters"]
    if info.get("left_running"):
        summary["left_running"] = info["left_running"]
    return summary


def _training_summary(summary: dict[str, Any], training: dict[str, Any], result: dict[str, Any], out: Path) -> None:
    """Add a training run's figures to ``summary`` and write ``out/rounds.csv``."""
    import csv

    summary["train"] = "local"
    summary["training"] = {k: v for k, v in training.items() if k != "shard_sizes"}
    summary["training"]["samples"] = sum(training["shard_sizes"] or [])
    summary["num_parameters"] = result.get("num_parameters")
    initial = result.get("initial_eval") or {}
    summary["initial_test_acc"] = initial.get("test_acc")
    summary["initial_test_loss"] = initial.get("test_loss")
    rows = []
    for r in summary["rounds_detail"]:
        if "aggregate_ready" not in r:
            continue
        eval_s = r["eval_done"] - r["eval_start"] if "eval_done" in r else None
        rows.append({"round": r["round"], "start": r.get("configure_start"), "end": r["aggregate_ready"],
                     "makespan_s": r.get("makespan_s"), "eval_s": eval_s, "participants": r.get("results"),
                     "test_loss": r.get("test_loss"), "test_acc": r.get("test_acc"),
                     "train_loss": r.get("train_loss"), "train_acc": r.get("train_acc")})
    last = rows[-1] if rows else {}
    summary["test_acc"] = last.get("test_acc")
    summary["test_loss"] = last.get("test_loss")
    detail = [r for r in summary["rounds_detail"] if "aggregate_ready" in r]
    if detail and "eval_done" in detail[-1] and summary.get("end") is not None:
        # The run ends when the last round's model has been evaluated (as flight_parsl's does).
        summary["end"] = detail[-1]["eval_done"]
        summary["start2end"] = summary["end"] - summary["start"] if summary.get("start") is not None else None
        if summary.get("priming_done") is not None:
            summary["prime2end"] = summary["end"] - summary["priming_done"]
    with (out / ROUNDS_FILE).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROUNDS_COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)


def _row(summary: dict[str, Any]) -> dict[str, Any]:
    from flight_parsl.results.table import COLUMNS

    def cell(value: Any) -> Any:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return value

    return {k: cell(summary.get(k)) for k in COLUMNS}


def run_flower(
    workers: int,
    model: str,
    mode: str,
    out: str | Path | None = None,
    rounds: int = 1,
    trial: int = 0,
    timeout: float = 600,
    *,
    results: str | Path | None = None,
    save_params: bool = False,
    mem_limit_gb: float | None = 18.0,
    server_threads: int | None = None,
    client_cpus: str | float | None = None,
    train: str = "none",
    dataset: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
) -> dict[str, Any]:
    """Run one Flower debug run; write ``out/summary.json``; return its results-table row.

    The row's status is ``ok`` or ``failed: <reason>`` (also on a time-out, the
    memory guard, or Ctrl-C, which is re-raised after the row is written). With
    ``results`` the row is appended to that results table. With ``save_params``
    the final aggregated parameters are written to ``out/final_parameters.npz``
    (``arr_0``, ``arr_1``, ... in state_dict order). ``server_threads`` sets the
    server's fit threads (``Server.set_max_workers``: clients in flight at once);
    None keeps Flower's default, min(32, cpus + 4). ``mem_limit_gb`` stops the run
    when the machine's memory in use exceeds it (None: no guard). ``client_cpus``
    (simulation only) sets the Ray resources: ``"matched"`` (None too: N logical
    CPUs, one actor per client), ``"default"`` (Flower's own settings: 2 CPUs per
    client on the machine's CPUs) or a number of the machine's CPUs per client
    (see :func:`flight_parsl.baselines.flower.app.simulation_backend_config`).

    ``train="local"`` (simulation only) trains for real: the workload of
    ``python -m flight_parsl.scale --workers N --model M --rounds R [--dataset D]``
    (:func:`~flight_parsl.baselines.flower.workload.train_config`: flight_parsl's data
    split, seeded initial model, SGD settings and local training loop in each client,
    Flower's FedAvg weighted by shard sizes, the global model evaluated on the test set
    after every round by Flower's centralized evaluation); ``dataset``, ``epochs``,
    ``batch_size`` and ``lr`` override flight_parsl's defaults and apply to training only.
    summary.json then holds ``training`` (what was trained), ``test_acc`` / ``test_loss``
    of the last round, and every round's figures, also in ``out/rounds.csv``.

    Raises:
        FlowerInputError, ConfigError: a bad argument (nothing is started).
    """
    check_inputs(workers, model, mode, rounds, timeout)
    training = check_training_inputs(workers, model, mode, rounds, train, dataset, epochs, batch_size, lr)
    if server_threads is not None and (isinstance(server_threads, bool) or not isinstance(server_threads, int)
                                       or server_threads < 1):
        raise FlowerInputError(f"server_threads must be a positive integer or None, got {server_threads!r}")
    extra = ["--save-params"] if save_params else []
    if server_threads is not None:
        extra += ["--server-threads", str(server_threads)]
    if client_cpus is not None:
        if mode != "simulation":
            raise FlowerInputError(f"client_cpus applies to the simulation mode only, not {mode!r}")
        extra += ["--client-cpus", str(parse_client_cpus(client_cpus))]
    if training is not None:
        extra += ["--train", "local", "--dataset", training["dataset"], "--epochs", str(training["epochs"]),
                  "--batch-size", str(training["batch_size"]), "--lr", repr(training["lr"])]
    run_dir = Path(out) if out is not None else default_out(mode, model, workers, trial)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    for stale in (RESULT_FILE, PARAMS_FILE, "summary.json", ROUNDS_FILE):
        (run_dir / stale).unlink(missing_ok=True)

    watch = Watch(float(timeout), mem_limit_gb)
    children: list[Child] = []
    info: dict[str, Any] = {"loadavg_before": os.getloadavg()}
    status = "ok"
    interrupted: BaseException | None = None
    try:
        if mode == "grpc":
            _run_grpc(run_dir, workers, model, rounds, float(timeout), extra, watch, children, info)
        else:
            _run_simulation(run_dir, workers, model, rounds, float(timeout), extra, watch, children, info)
    except RunFailed as exc:
        status = f"failed: {exc}"
    except KeyboardInterrupt as exc:
        status = "failed: interrupted"
        interrupted = exc
    except Exception as exc:  # noqa: BLE001 - reported in the row
        status = f"failed: {type(exc).__name__}: {exc}"
    finally:
        left = stop_all(children)
        if left:
            info["left_running"] = left
    info["peak_system_used_gb"] = round(watch.peak_system_used_gb, 2)
    info["loadavg_after"] = os.getloadavg()

    result = _read_result(run_dir)
    if status == "ok":
        if result.get("errors"):
            status = "failed: " + "; ".join(result["errors"])
        elif not result:
            status = f"failed: no {RESULT_FILE} written"
        elif len([r for r in result.get("rounds", []) if "aggregate_ready" in r]) != rounds:
            status = "failed: not every round finished"
    summary = _summarize(mode, model, workers, rounds, trial, run_dir, info, result, status)
    if training is not None:
        _training_summary(summary, training, result, run_dir)
    if result.get("error") and status != "ok":
        summary["error"] = result["error"]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    row = _row(summary)
    if results is not None:
        from flight_parsl.results.table import append_row

        append_row(results, row)
    if interrupted is not None:
        raise interrupted
    return row

"""The processes of a Flower run: server, client and simulation driver (imports flwr).

Only the child processes that :mod:`flight_parsl.baselines.flower.runner` starts
import this module (and Ray's actors, which unpickle its client function):

``server``
    ``flwr.server.start_server`` (Flower's legacy gRPC-bidi server, deprecated
    since 1.13 but working in 1.42) on 127.0.0.1, with :class:`TimedFedAvg` and
    :class:`TimedClientManager`. Builds the model itself, before it listens.
``client``
    ``flwr.client.start_client`` with :class:`EchoClient`; exits when the server
    disconnects it at the end of the run.
``simulate``
    ``flwr.simulation.run_simulation`` (the Simulation Runtime, Ray backend) with
    a ``ServerApp(server_fn=...)`` running the same strategy and a
    ``ClientApp(client_fn=...)`` running the same client in N virtual SuperNodes.
    With ``--train local`` the client is a :class:`TrainClient` (flight_parsl's
    local training on the SuperNode's shard) and the strategy evaluates the
    global model on the test split after every round.

Each writes ``flower_result.json`` into the run directory, also after an error:
round times, payload bytes, client reports and its own peak RSS.

The strategy is Flower's own (legacy) ``FedAvg`` with ``fraction_fit=1.0``,
``min_fit_clients = min_available_clients = N``, no federated evaluation
(``fraction_evaluate=0``) and ``accept_failures=False``; when training, Flower's
centralized evaluation (``evaluate_fn``) on the server. The subclass only records
times, byte counts and test figures; aggregation (weighted by each client's
number of examples) is Flower's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import flwr
import numpy as np
from flwr.client import Client, NumPyClient
from flwr.common import (
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import Server, ServerConfig, SimpleClientManager
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from flight_parsl.baselines.flower.runner import parse_client_cpus
from flight_parsl.baselines.flower.workload import TrainJob, describe, model_arrays, train_config

RESULT_FILE = "flower_result.json"
PARAMS_FILE = "final_parameters.npz"


def maxrss_kb() -> int:
    """This process's peak RSS so far, in KiB (Linux ``ru_maxrss``)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def payload_bytes(parameters: Parameters) -> int:
    """Bytes of a Parameters' serialized tensors (``np.save`` format: array bytes + header)."""
    return sum(len(t) for t in parameters.tensors)


# ---------------------------------------------------------------------------
# What the server side records
# ---------------------------------------------------------------------------


class RunRecord:
    """Times, bytes and client reports of one run, filled in by the server process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.lock = threading.Lock()
        self.registered: list[float] = []
        self.clients_ready: float | None = None
        self.rounds: dict[int, dict[str, Any]] = {}
        self.client_maxrss_kb: dict[int, int] = {}  # pid -> largest ru_maxrss reported in fit
        self.errors: list[str] = []
        self.final: list[np.ndarray] | None = None
        self.initial_eval: dict[str, float] | None = None  # round 0: the initial model's test figures

    def evaluated(self, server_round: int, loss: float, acc: float, start: float, done: float) -> None:
        """Record the global model's test loss and accuracy after ``server_round`` (0: initial)."""
        figures = {"test_loss": float(loss), "test_acc": float(acc), "eval_start": start, "eval_done": done}
        with self.lock:
            if server_round == 0:
                self.initial_eval = figures
            else:
                self.rounds.setdefault(server_round, {"round": server_round}).update(figures)

    def to_json(self) -> dict[str, Any]:
        with self.lock:
            return {
                "registered": list(self.registered),
                "clients_ready": self.clients_ready,
                "rounds": [self.rounds[r] for r in sorted(self.rounds)],
                "client_maxrss_kb": {str(pid): kb for pid, kb in self.client_maxrss_kb.items()},
                "errors": list(self.errors),
                "initial_eval": self.initial_eval,
            }


class TimedClientManager(SimpleClientManager):
    """SimpleClientManager that records when each client registers."""

    def __init__(self, record: RunRecord) -> None:
        super().__init__()
        self.record = record

    def register(self, client: ClientProxy) -> bool:
        ok = super().register(client)
        if ok:
            with self.record.lock:
                self.record.registered.append(time.time())
        return ok


class TimedFedAvg(FedAvg):
    """Flower's FedAvg over all N clients, recording each round's times and bytes.

    ``initialize_parameters`` first waits for the N clients (what ``configure_fit``
    of round 1 would otherwise do), so a round's start is when ``configure_fit`` is
    entered in both modes. ``configure_fit`` records that start and the payload
    sent (serialized tensors x clients); ``aggregate_fit`` records the payload
    received, the clients' reports and when the aggregate is ready. With training,
    ``evaluate_fn`` is Flower's centralized evaluation (the server evaluates the
    global model after each round, and the initial one as round 0) and
    ``on_fit_config_fn`` tells each client the round.
    """

    def __init__(
        self,
        *,
        record: RunRecord,
        workers: int,
        rounds: int,
        wait_timeout: float,
        initial_parameters: Parameters,
        keep_final: bool = False,
        on_final: Callable[[], None] | None = None,
        evaluate_fn: Callable[..., Any] | None = None,
        on_fit_config_fn: Callable[[int], dict[str, Scalar]] | None = None,
    ) -> None:
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=workers,
            min_evaluate_clients=workers,
            min_available_clients=workers,
            accept_failures=False,
            initial_parameters=initial_parameters,
            evaluate_fn=evaluate_fn,
            on_fit_config_fn=on_fit_config_fn,
        )
        self.record = record
        self.workers = workers
        self.rounds = rounds
        self.wait_timeout = wait_timeout
        self.keep_final = keep_final
        self.on_final = on_final

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        # In the simulation, start_grid's client manager learns about nodes only when
        # num_available/all/sample are called (or every 5 s); wait_for alone would sleep.
        deadline = time.time() + self.wait_timeout
        while client_manager.num_available() < self.workers:
            if time.time() > deadline:
                raise RuntimeError(
                    f"only {client_manager.num_available()} of {self.workers} clients "
                    f"connected within {self.wait_timeout:g} s"
                )
            client_manager.wait_for(self.workers, timeout=1)
        with self.record.lock:
            self.record.clients_ready = time.time()
        return super().initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        start = time.time()
        instructions = super().configure_fit(server_round, parameters, client_manager)
        with self.record.lock:
            self.record.rounds[server_round] = {
                "round": server_round,
                "configure_start": start,
                "configure_done": time.time(),
                "clients": len(instructions),
                "bytes_to_clients": payload_bytes(parameters) * len(instructions),
            }
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        start = time.time()
        received = sum(payload_bytes(res.parameters) for _, res in results)
        aggregated, metrics = super().aggregate_fit(server_round, results, failures)
        ready = time.time()
        with self.record.lock:
            rnd = self.record.rounds.setdefault(server_round, {"round": server_round})
            rnd.update(
                aggregate_start=start,
                aggregate_ready=ready,
                results=len(results),
                failures=len(failures),
                bytes_from_clients=received,
            )
            if "configure_start" in rnd:
                rnd["makespan_s"] = ready - rnd["configure_start"]
            losses = [res.metrics["train_loss"] for _, res in results if "train_loss" in res.metrics]
            accs = [res.metrics["train_acc"] for _, res in results if "train_acc" in res.metrics]
            if losses:  # training: the mean over the round's clients, as flight_parsl's rounds.csv
                rnd["train_loss"] = float(np.mean(losses))
                rnd["train_acc"] = float(np.mean(accs)) if accs else None
            for _, res in results:
                pid, kb = res.metrics.get("pid"), res.metrics.get("maxrss_kb")
                if isinstance(pid, int) and isinstance(kb, int):
                    self.record.client_maxrss_kb[pid] = max(kb, self.record.client_maxrss_kb.get(pid, 0))
            if failures or len(results) < self.workers or aggregated is None:
                first = failures[0] if failures else None
                reason = _describe_failure(first) if first is not None else "no aggregate"
                self.record.errors.append(
                    f"round {server_round}: {len(results)} of {self.workers} clients returned, "
                    f"{len(failures)} failed ({reason})"
                )
        if aggregated is not None and server_round == self.rounds and self.keep_final:
            self.record.final = parameters_to_ndarrays(aggregated)
        if server_round == self.rounds and self.on_final is not None:
            self.on_final()
        return aggregated, metrics



def _strategy(args: argparse.Namespace, record: RunRecord, initial: Any, **extra: Any) -> TimedFedAvg:
    """The timed FedAvg both modes run, configured from the command line."""
    return TimedFedAvg(
        record=record,
        workers=args.workers,
        rounds=args.rounds,
        wait_timeout=args.timeout,
        initial_parameters=initial,
        keep_final=args.save_params,
        **extra,
    )

def _describe_failure(failure: Any) -> str:
    if isinstance(failure, BaseException):
        return f"{type(failure).__name__}: {failure}"
    _, res = failure
    status = getattr(res, "status", None)
    return f"client status {getattr(status, 'code', '?')}: {getattr(status, 'message', '')}"


# ---------------------------------------------------------------------------
# The client: debug mode returns exactly what it received
# ---------------------------------------------------------------------------


class EchoClient(NumPyClient):
    """Returns the parameters it received (no training), with its pid and peak RSS."""

    def get_parameters(self, config: dict[str, Scalar]) -> list[np.ndarray]:
        return []

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        return parameters, 1, {"pid": os.getpid(), "maxrss_kb": maxrss_kb()}

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        return 0.0, 1, {}


def client_fn(context: Any) -> Client:
    """Flower ``client_fn``: an :class:`EchoClient` per message."""
    return EchoClient().to_client()


class TrainClient(NumPyClient):
    """Trains like a flight_parsl slot: :func:`flight_parsl.worker.training.train_local` on
    client ``client``'s shard (flight_parsl's data, partition, model, SGD settings and
    per-round shuffling seed), from the parameters it received; returns the new parameters
    and its shard size (FedAvg's weight)."""

    def __init__(self, job: TrainJob, client: int) -> None:
        self.job = job
        self.client = client

    def get_parameters(self, config: dict[str, Scalar]) -> list[np.ndarray]:
        return []

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        from flight_parsl.worker.training import train_local

        round_idx = int(config["server_round"]) - 1  # flight_parsl counts rounds from 0 inside
        weights = self.job.to_flat(parameters)
        out, samples, loss, acc, cpu_s = train_local(weights, self.job.workload, self.job.settings,
                                                     self.client, round_idx)
        metrics: dict[str, Scalar] = {"pid": os.getpid(), "maxrss_kb": maxrss_kb(), "client": self.client,
                                      "train_loss": float(loss), "train_acc": float(acc), "cpu_s": float(cpu_s)}
        return self.job.to_arrays(out), int(samples), metrics

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        return 0.0, 1, {}


class TrainClientFn:
    """Flower ``client_fn`` of a training run: a :class:`TrainClient` for the SuperNode's
    partition id (0 .. N-1, flight_parsl's client index). Picklable, for Ray's actors."""

    def __init__(self, job: TrainJob) -> None:
        self.job = job

    def __call__(self, context: Any) -> Client:
        return TrainClient(self.job, int(context.node_config["partition-id"])).to_client()


# ---------------------------------------------------------------------------
# Simulation engine: engine-up and warm-up hooks
# ---------------------------------------------------------------------------


def _warm_actor(actor: Any, workload: Any = None) -> int:
    """Runs inside a Ray actor: this module (hence flwr and numpy) is imported by now. With a
    training workload, also what flight_parsl's warm-up task does in a slot
    (:func:`flight_parsl.worker.training.warm_up`: torch, the data, the model, one step)."""
    if workload is not None:
        from flight_parsl.worker.training import warm_up

        warm_up(workload)
    return os.getpid()


def _actor_maxrss(actor: Any) -> tuple[int, int]:
    """Runs inside a Ray actor: (pid, peak RSS KiB) of the actor's process."""
    return os.getpid(), maxrss_kb()


class EngineProbe:
    """Observes Flower's Ray backend: when its actor pool is up and warm, and its actors' peak RSS.

    Wraps ``RayBackend.build`` (which runs ``ray.init`` and creates the actor
    pool) for the duration of :meth:`patched`: after it returns, ``engine_up``
    is recorded, then every actor runs :func:`_warm_actor` (so each actor
    process has started and imported this module, as flight_parsl's warm-up
    tasks do) and ``warm_done`` is recorded. The ServerApp waits on
    :meth:`wait_ready` before its first round, so Ray's start-up stays out of
    the measured rounds.
    """

    def __init__(self, timeout: float, workload: Any = None) -> None:
        self.timeout = timeout
        self.workload = workload  # training: each actor warms up on it
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.engine_up: float | None = None
        self.warm_done: float | None = None
        self.actors: list[Any] = []
        self.actor_pids: list[int] = []
        self.actor_maxrss_kb: dict[int, int] = {}
        self.probe_error: str | None = None
        self.ray_cpus: float | None = None  # logical CPUs Ray saw
        self.client_resources: dict[str, Any] | None = None  # what each client asked of Ray

    @contextmanager
    def patched(self) -> Iterator[None]:
        from flwr.server.superlink.fleet.vce.backend import raybackend

        original = raybackend.RayBackend.build
        probe = self

        def build(backend: Any, app_fn: Any) -> None:
            try:
                original(backend, app_fn)
                probe.engine_up = time.time()
                import ray

                probe.ray_cpus = ray.cluster_resources().get("CPU")
                probe.client_resources = dict(backend.client_resources)

                actors = list(backend.pool.pool)
                probe.actor_pids = list(
                    ray.get([a.__ray_call__.remote(_warm_actor, probe.workload) for a in actors],
                            timeout=probe.timeout)
                )
                probe.actors = actors
                probe.warm_done = time.time()
            except BaseException as exc:
                probe.error = exc
                raise
            finally:
                probe.ready.set()

        raybackend.RayBackend.build = build  # type: ignore[method-assign]
        try:
            yield
        finally:
            raybackend.RayBackend.build = original  # type: ignore[method-assign]

    def wait_ready(self) -> None:
        if not self.ready.wait(self.timeout):
            raise RuntimeError(f"the simulation engine was not up within {self.timeout:g} s")
        if self.error is not None:
            raise RuntimeError(f"the simulation engine failed to start: {self.error!r}")

    def probe_actors(self) -> None:
        """Ask every actor for its peak RSS (called after the last aggregate, before shutdown)."""
        try:
            import ray

            reports = ray.get([a.__ray_call__.remote(_actor_maxrss) for a in self.actors], timeout=60)
            self.actor_maxrss_kb = {int(pid): int(kb) for pid, kb in reports}
        except Exception as exc:  # the metrics reported in fit remain
            self.probe_error = f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", required=True)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--save-params", action="store_true")
    parser.add_argument("--server-threads", type=int, default=0)


def fit_threads(requested: int) -> int:
    """Threads the legacy Server uses to send fit instructions and wait for replies.

    ``Server.fit_clients`` runs one ThreadPoolExecutor task per client; with
    ``max_workers=None`` (Flower's default) Python gives it min(32, cpus + 4)
    threads, so at most that many clients are in flight at once.
    """
    return requested if requested > 0 else min(32, (os.cpu_count() or 1) + 4)


def make_server(record: RunRecord, strategy: TimedFedAvg, threads: int) -> Server:
    """A legacy ``flwr.server.Server`` with the timed client manager and ``threads`` fit threads."""
    server = Server(client_manager=TimedClientManager(record), strategy=strategy)
    if threads > 0:
        server.set_max_workers(threads)
    return server


def _write_result(out: Path, result: dict[str, Any], record: RunRecord | None, save_params: bool) -> None:
    if record is not None:
        result.update(record.to_json())
        if save_params and record.final is not None:
            np.savez(out / PARAMS_FILE, *record.final)
            result["final_parameters"] = str(out / PARAMS_FILE)
    result["peak_rss_kb"] = maxrss_kb()
    tmp = out / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(out / RESULT_FILE)


def _prepare(args: argparse.Namespace, result: dict[str, Any]) -> tuple[Parameters, RunRecord]:
    arrays = model_arrays(args.model)
    result["model_info"] = describe(arrays)
    initial = ndarrays_to_parameters(arrays)
    result["model_info"]["model_payload_bytes"] = payload_bytes(initial)
    del arrays
    return initial, RunRecord(args.workers)


def _prepare_training(
    args: argparse.Namespace, result: dict[str, Any]
) -> tuple[Parameters, RunRecord, TrainJob, dict[str, Any]]:
    """The training run's initial model, record, client job and strategy hooks.

    flight_parsl's own :func:`~flight_parsl.engine.context.prepare` on the config
    ``flight_parsl.scale`` builds for the same flags: the seeded initial model, the
    local settings, the workload and the test-set evaluator.
    """
    from flight_parsl.engine.context import prepare

    cfg = train_config(args.workers, args.rounds, args.model, args.dataset, args.epochs, args.batch_size, args.lr)
    exp = prepare(cfg)
    job = TrainJob(exp.workload, exp.settings, exp.initial.layout)
    arrays = job.to_arrays(exp.initial)
    result["model_info"] = describe(arrays)
    initial = ndarrays_to_parameters(arrays)
    result["model_info"]["model_payload_bytes"] = payload_bytes(initial)
    result["num_parameters"] = exp.num_parameters
    record = RunRecord(args.workers)
    evaluator = exp.evaluate
    assert evaluator is not None  # train.mode local always has one

    def evaluate_fn(server_round: int, parameters: list[np.ndarray], config: dict[str, Scalar]) -> Any:
        start = time.time()
        loss, acc = evaluator(job.to_flat(parameters))
        record.evaluated(server_round, loss, acc, start, time.time())
        return float(loss), {"accuracy": float(acc)}

    hooks = {"evaluate_fn": evaluate_fn, "on_fit_config_fn": lambda rnd: {"server_round": rnd}}
    return initial, record, job, hooks


def server_main(argv: list[str]) -> int:
    """``server``: a Flower gRPC server on 127.0.0.1:PORT for N clients."""
    parser = argparse.ArgumentParser(prog="flight_parsl.baselines.flower server")
    _common_args(parser)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-message-length", type=int, required=True)
    args = parser.parse_args(argv)
    from flwr.server import start_server

    out = Path(args.out)
    result: dict[str, Any] = {"role": "server", "pid": os.getpid(), "flwr_version": flwr.__version__}
    record: RunRecord | None = None
    rc = 0
    try:
        initial, record = _prepare(args, result)
        strategy = _strategy(args, record, initial)
        del initial
        result["server_fit_threads"] = fit_threads(args.server_threads)
        result["server_start"] = time.time()
        start_server(
            server_address=f"127.0.0.1:{args.port}",
            server=make_server(record, strategy, args.server_threads),
            config=ServerConfig(num_rounds=args.rounds, round_timeout=args.timeout),
            grpc_max_message_length=args.max_message_length,
        )
        result["server_exit"] = time.time()
    except BaseException as exc:  # noqa: BLE001 - recorded, then a non-zero exit
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
        rc = 1
    finally:
        _write_result(out, result, record, args.save_params)
    return rc


def client_main(argv: list[str]) -> int:
    """``client``: one Flower client process connecting to ADDRESS."""
    from flwr.client import start_client

    parser = argparse.ArgumentParser(prog="flight_parsl.baselines.flower client")
    parser.add_argument("--address", required=True)
    parser.add_argument("--max-message-length", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    start_client(
        server_address=args.address,
        client_fn=client_fn,
        grpc_max_message_length=args.max_message_length,
        insecure=True,
        max_wait_time=args.timeout,
    )
    return 0


def simulation_backend_config(workers: int, client_cpus: str | float = "matched") -> dict[str, Any] | None:
    """Ray settings for ``client_cpus``; None means Flower's own defaults.

    ``matched`` (the default): N logical CPUs and 1 per client, so exactly N
    actors start, one per client. Ray rounds fractional resources to 1e-4, so a
    fraction like 2/N of the two physical cores can leave the last actor without
    room (2/7 -> 0.2858 never fits 7 times in 2.0); whole logical CPUs are
    exact. Ray does not pin them to cores: the N actor processes share the
    machine's cores.

    ``default``: nothing is passed, so ``run_simulation`` applies Flower's
    defaults (flwr 1.42: Ray sees the machine's CPUs and each client asks for 2,
    hence cpus // 2 actors, one on a 2-core machine; the N clients queue on them).

    A number X: Ray sees the machine's CPUs and each client asks for X of them
    (floor(cpus / X) actors; X = 1 gives one actor per core).
    """
    if client_cpus == "matched":
        return {
            "init_args": {"num_cpus": workers, "num_gpus": 0},
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        }
    if client_cpus == "default":
        return None
    return {"client_resources": {"num_cpus": float(parse_client_cpus(client_cpus)), "num_gpus": 0.0}}


def simulate_main(argv: list[str]) -> int:
    """``simulate``: Flower's Simulation Runtime (Ray) with N virtual SuperNodes."""
    parser = argparse.ArgumentParser(prog="flight_parsl.baselines.flower simulate")
    _common_args(parser)
    parser.add_argument("--client-cpus", type=parse_client_cpus, default="matched")  # runner checked it
    parser.add_argument("--train", choices=("none", "local"), default="none")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    args = parser.parse_args(argv)
    import ray
    from flwr.clientapp import ClientApp
    from flwr.server import ServerAppComponents
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    out = Path(args.out)
    backend_config = simulation_backend_config(args.workers, args.client_cpus)
    result: dict[str, Any] = {
        "role": "simulation",
        "pid": os.getpid(),
        "flwr_version": flwr.__version__,
        "ray_version": ray.__version__,
        "client_cpus": args.client_cpus,
        # None: run_simulation applies Flower's defaults; client_resources_resolved says what they were.
        "backend_config": backend_config,
    }
    record: RunRecord | None = None
    probe = EngineProbe(args.timeout)
    client_app_fn: Callable[[Any], Client] = client_fn
    rc = 0
    try:
        hooks: dict[str, Any] = {}
        if args.train == "local":
            initial, record, job, hooks = _prepare_training(args, result)
            probe.workload = job.workload
            client_app_fn = TrainClientFn(job)
        else:
            initial, record = _prepare(args, result)
        strategy = _strategy(args, record, initial, on_final=probe.probe_actors, **hooks)
        del initial
        server = make_server(record, strategy, args.server_threads)
        result["server_fit_threads"] = fit_threads(args.server_threads)

        def server_fn(context: Any) -> ServerAppComponents:
            probe.wait_ready()
            return ServerAppComponents(
                server=server,
                config=ServerConfig(num_rounds=args.rounds, round_timeout=args.timeout),
            )

        result["start"] = time.time()
        with probe.patched():
            run_simulation(
                server_app=ServerApp(server_fn=server_fn),
                client_app=ClientApp(client_fn=client_app_fn),
                num_supernodes=args.workers,
                backend_config=backend_config,  # type: ignore[arg-type]
            )
        result["engine_exit"] = time.time()
    except BaseException as exc:  # noqa: BLE001 - recorded, then a non-zero exit
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
        rc = 1
    finally:
        result.update(
            engine_up=probe.engine_up,
            warm_done=probe.warm_done,
            actor_pids=probe.actor_pids,
            actor_maxrss_kb={str(k): v for k, v in probe.actor_maxrss_kb.items()},
            actor_probe_error=probe.probe_error,
            num_actors=len(probe.actor_pids),
            ray_cpus=probe.ray_cpus,
            client_resources_resolved=probe.client_resources,
        )
        _write_result(out, result, record, args.save_params)
    return rc

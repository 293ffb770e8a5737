"""The decentralized loop (``--mode decentralized``): clients exchange models over a peer graph.

There is no server model. Per round the K clients (one for Joint) are packed into
tasks on the slots (:class:`~flight_parsl.engine.plan.Planner`); a task, for each
of its clients, reads the model the client received last round, runs its local
step (private and shared models and their Adam states from the per-client store,
deep mutual learning, DP-SGD on the shared model), writes the state back and
publishes the shared model through the round's channel of the transfer (a store
key for ``redis`` / ``file``; inside the task result for ``parsl``). The
coordinator only routes references: client i's reference goes to the receiver the
strategy names (ProxyFL, AvgPush: :func:`~flight_parsl.topology.peers.exponential_routes`),
so each client reads one model and writes one model per round whatever K is.
FedAvg and FML, the paper's centralized baselines, have the coordinator average
the shared models and hand everyone the mean.

Each round's references live until the next round has read them. Accuracies are
measured in the tasks, on each client's own test set; rounds.csv gets their mean
over clients, tasks.csv each client's accuracy, epsilon and bytes read and written,
summary.json the final epsilon. A failed task stops the run (no retries in this
mode: a client's state may already have advanced), every finished row on disk.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, fields, replace
from functools import partial
from typing import Any

import numpy as np

from flight_parsl.core.errors import ConfigError, RoundError
from flight_parsl.core.peer import PeerParams, PeerSettings
from flight_parsl.core.types import Failure, Slot, TaskResult
from flight_parsl.core.weights import FlatWeights, Layout
from flight_parsl.engine.context import RunContext
from flight_parsl.engine.events import CompletionQueue, Pending, SlotClock
from flight_parsl.engine.plan import Planner, TaskSpec
from flight_parsl.engine.records import failure_rows, result_rows, round_row
from flight_parsl.engine.outcomes import (
    LoopResult,
    RoundStats,
    RoundSummary,
    classify,
    describe,
    lost_slot,
    mean_finite,
    release_late,
)
from flight_parsl.fl.aggregate import WeightedMean
from flight_parsl.fl.protocols import as_peer
from flight_parsl.transfer.base import Ref
from flight_parsl.worker.peer_tasks import client_metric, peer_task

#: What a task publishes through: a one-element placeholder, stored once per round.
_CHANNEL = FlatWeights(np.zeros(1, dtype=np.float32), Layout.from_shapes([("channel", (1,), "float32")]))


def client_settings(ctx: RunContext) -> dict[int, PeerSettings]:
    """Every client's local step settings: the ``peer`` section, its private model, the strategy.

    Raises:
        ConfigError: a model that cannot train, or DP on a shared model with BatchNorm
            (per-example gradients need per-example outputs).
    """
    from flight_parsl.models import build_model, check_trainable

    cfg, shared = ctx.cfg, ctx.exp.workload.model
    p = cfg.peer
    names = p.private_model_names(cfg.model.name)
    specs = [replace(shared, name=n) for n in names]
    for spec in {*specs, shared}:
        check_trainable(spec)
        model = build_model(spec)
        if spec == shared and p.dp and any("BatchNorm" in type(m).__name__ for m in model.modules()):
            raise ConfigError(
                f"config key 'model.name': DP-SGD on the shared model needs per-example gradients, and "
                f"{spec.name!r} has BatchNorm; pick one without (mlp, logreg, lenet5, smallnet) or set peer.dp=false"
            )
    params = {f.name: getattr(p, f.name) for f in fields(PeerParams)}
    base = PeerSettings(method=cfg.strategy.name, private_model=None, shared_model=shared, **params)
    strategy = as_peer(ctx.exp.strategy)
    return {
        c: strategy.configure(c, replace(base, private_model=specs[c % len(specs)])) for c in range(cfg.workers)
    }


@dataclass
class _Round(RoundStats):
    start: float = 0.0
    publish_s: float = 0.0


class PeerLoop:
    """The coordinator's state for one decentralized run."""

    def __init__(self, ctx: RunContext) -> None:
        if ctx.state is None:
            raise ValueError("decentralized mode needs the run's per-client state store")
        self.ctx = ctx
        self.strategy = as_peer(ctx.exp.strategy)
        self.k = ctx.cfg.workers
        self.settings = client_settings(ctx)
        self.planner = Planner(ctx.slots, ctx.cfg.plan.clients_per_task, ctx.exp.expected_work)
        self.inbox: dict[int, Ref] = {}
        self.clock = SlotClock()
        self.peaks: dict[Slot, float] = {}
        self.epsilon: dict[int, float] = {}
        self.bytes: list[tuple[int, int, float, float]] = []  # round, client, bytes in, bytes out
        self.summaries: list[RoundSummary] = []
        self.slowest: float | None = None

    def _submit(self, queue: CompletionQueue[TaskSpec], spec: TaskSpec, channel: Ref, r: int) -> None:
        items = [(c, self.settings[c], self.inbox.get(c)) for c in spec.clients]
        queue.submit(spec, peer_task, channel, r, items, self.ctx.exp.workload, self.ctx.state, self.ctx.faults,
                     spec.attempt)

    def _fail(
        self, r: int, item: Pending[TaskSpec], kind: str, message: str, slot: tuple[str, int | None] | None = None
    ) -> RoundError:
        spec = item.tag
        failure = Failure(r, spec.clients, kind, message, spec.attempt, "coordinator")
        self.ctx.recorder.task_rows(failure_rows(failure, "train", spec.id, item.submitted, time.time(), slot=slot))
        return RoundError(f"round {r + 1}: clients {list(spec.clients)} failed ({kind}: {message})")

    def _rows(self, res: TaskResult, item: Pending[TaskSpec], received: float, idle: float) -> list[dict[str, Any]]:
        rows = result_rows(res, item.tag.id, item.tag.attempt, item.submitted, received, 0.0, idle)
        for row, c in zip(rows, res.clients):
            row.update(
                private_test_acc=client_metric(c, "private_test_acc"),
                proxy_test_acc=client_metric(c, "proxy_test_acc"),
                epsilon=client_metric(c, "epsilon"),
                client_bytes_in=int(client_metric(c, "client_bytes_in")),
                client_bytes_out=int(client_metric(c, "client_bytes_out")),
            )
        return rows

    def _round(self, r: int) -> None:
        ctx, strategy = self.ctx, self.strategy
        stats = _Round(start=time.time())
        t0 = time.perf_counter()
        channel = ctx.transfer.publish(_CHANNEL, r)
        stats.publish_s = time.perf_counter() - t0
        clients = strategy.participants(self.k)
        ctx.progress.start_round(r, len(clients))
        queue: CompletionQueue[TaskSpec] = CompletionQueue(ctx.executor)
        for spec in self.planner.plan({"coordinator": clients}):
            self._submit(queue, spec, channel, r)
            stats.tasks += 1
        sent: dict[int, tuple[Ref, float]] = {}
        outcomes: dict[int, Any] = {}
        deadline = time.time() + ctx.policy.deadline(self.slowest, len(clients) / max(1, ctx.slots))
        while len(queue):
            item = queue.next(deadline - time.time())
            if item is None:
                late = queue.abandon()
                for pending in late:
                    pending.future.add_done_callback(partial(release_late, ctx.transfer))
                raise self._fail(r, late[0], "deadline", "the round's deadline passed")
            try:
                res: TaskResult = item.future.result()
            except Exception as exc:
                raise self._fail(r, item, classify(exc), describe(exc), lost_slot(exc, ctx.injector)) from exc
            received = time.time()
            for ref, _ in res.outputs:
                ctx.transfer.adopt(ref)
            senders = [c for c in res.clients if c.metrics.get("model_bytes_out", 0.0) > 0]
            for c, out in zip(senders, res.outputs):
                sent[c.client] = out
            for c in res.clients:
                outcomes[c.client] = c
                if "epsilon" in c.metrics:
                    self.epsilon[c.client] = c.metrics["epsilon"]
                self.bytes.append((r, c.client, c.metrics["client_bytes_in"], c.metrics["client_bytes_out"]))
            idle = self.clock.record(res.slot, res.started, res.finished)
            self.peaks[res.slot] = max(self.peaks.get(res.slot, 0.0), res.peak_rss_mb)
            stats.count_train(res)
            ctx.recorder.task_rows(self._rows(res, item, received, idle))
            ctx.progress.task_done(r, len(outcomes), len(clients))
        self.inbox = self._route(r, clients, sent, stats)
        self._close(r, clients, outcomes, stats)
        if r > 0:
            ctx.transfer.end_round(r - 1)  # everything of the round before has been read

    def _route(self, r: int, clients: list[int], sent: dict[int, tuple[Ref, float]], stats: _Round) -> dict[int, Ref]:
        """Where each client's model goes: a peer (ProxyFL, AvgPush) or, for FedAvg / FML, the mean."""
        if not sent:
            return {}
        if not self.strategy.central:
            routes = self.strategy.routes(r, self.k)
            return {routes[c]: ref for c, (ref, _) in sent.items()}
        t0 = time.perf_counter()
        mean = None
        for ref, weight in sent.values():
            weights = self.ctx.transfer.collect(ref)
            mean = mean or WeightedMean(weights)
            mean.add(weights, weight)
        assert mean is not None
        ref = self.ctx.transfer.publish(mean.result(), r)
        stats.aggregate_s = time.perf_counter() - t0
        return {c: ref for c in clients}

    def _close(self, r: int, clients: list[int], outcomes: dict[int, Any], stats: _Round) -> None:
        ctx = self.ctx
        end = time.time()
        if r == ctx.cfg.rounds - 1:
            ctx.recorder.mark("end", end)
        self.slowest = max(self.slowest or 0.0, end - stats.start)
        acc = mean_finite([client_metric(o, "private_test_acc") for o in outcomes.values()])
        loss = mean_finite([client_metric(o, "private_test_loss") for o in outcomes.values()])
        proxy = mean_finite([client_metric(o, "proxy_test_acc") for o in outcomes.values()])
        ctx.recorder.round_row(
            round_row(
                r, stats.start, end, stats, test_loss=loss, test_acc=acc, sampled=len(clients),
                participants=len(outcomes), failed=0, publish_s=stats.publish_s, retries=0, proxy_test_acc=proxy,
                epsilon=max(self.epsilon.values()) if self.epsilon else math.nan,
            )
        )
        ctx.progress.end_round(r, len(outcomes), len(clients), end - stats.start, loss, acc)
        self.summaries.append(RoundSummary(r, end - stats.start, loss, acc, len(outcomes), 0))

    def run(self) -> LoopResult:
        for r in range(self.ctx.cfg.rounds):
            self._round(r)
        summary: dict[str, Any] = {"strategy": self.strategy.name}
        if self.epsilon:
            summary.update(
                final_epsilon=max(self.epsilon.values()),
                epsilon_per_client={str(c): e for c, e in sorted(self.epsilon.items())},
                dp_delta=self.ctx.cfg.peer.delta or "1/n",
            )
        if self.bytes:
            ins = [b[2] for b in self.bytes if b[0] > 0] or [b[2] for b in self.bytes]
            outs = [b[3] for b in self.bytes]
            summary.update(client_bytes_in_mean=statistics.fmean(ins), client_bytes_out_mean=statistics.fmean(outs))
        self.ctx.recorder.update(**summary)
        # No central model: the result carries the initial shared model only to fill the type.
        return LoopResult(self.ctx.exp.initial, self.summaries, self.peaks, self.clock)


def run_decentralized(ctx: RunContext) -> LoopResult:
    """Run ``rounds`` decentralized rounds (see the module docstring).

    Raises:
        RoundError: a task failed or the round's deadline passed. Finished rows stay on disk.
    """
    return PeerLoop(ctx).run()

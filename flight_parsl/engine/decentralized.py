"""The decentralized loop (``--mode decentralized``): clients exchange models over a peer graph.

There is no server model. Per round the member clients (one for Joint) are packed
into tasks on the slots (:class:`~flight_parsl.engine.plan.Planner`); a task, for
each of its clients, reads the model the client received last round, runs its local
step (private and shared models and their Adam states from the per-client store,
deep mutual learning, DP-SGD on the shared model), writes the new state under a new
version and publishes the shared model through the round's channel of the transfer
(a store key for ``redis`` / ``file``; inside the task result for ``parsl``). The
coordinator only routes references: client i's reference goes to the receiver the
strategy names (ProxyFL, AvgPush: :func:`~flight_parsl.topology.peers.exponential_routes`,
the exponential graph over the current members), so each client reads one model and
writes one model per round whatever K is. FedAvg and FML, the paper's centralized
baselines, have the coordinator average the shared models and hand every member the mean.

Rounds follow the round policy (:mod:`flight_parsl.fl.policy`) as in sync mode: a task
that fails, whose worker process dies, or that is still out is retried after a
backoff while ``round.retries`` allows; the round closes once ``round.quorum`` of its
clients reported, at its deadline, or when every task has an outcome, and stands if
``round.min_fraction`` reported (below that the run stops with
:class:`~flight_parsl.core.errors.RoundError`). A client's new state becomes the one it
starts from only when its task's result is accepted
(:class:`~flight_parsl.transfer.state.VersionBook`): a retried or late client starts
again from its last completed round, never from half-written state. A client that
misses more than ``round.max_missed`` rounds in a row leaves the exchange graph, which
is re-formed over the remaining members, and is re-admitted like in sync mode
(:mod:`flight_parsl.fl.membership`).

Each round's references live until the next round has read them. Accuracies are
measured in the tasks, on each client's own test set; rounds.csv gets their mean
over the clients that reported, tasks.csv each client's accuracy, epsilon and bytes
read and written, summary.json the final epsilon. After every round the loop writes a
checkpoint (:mod:`flight_parsl.engine.checkpoint`) with every client's accepted state.
"""

from __future__ import annotations

import heapq
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from functools import partial
from typing import Any

import numpy as np

from flight_parsl.core.errors import ConfigError, RoundError
from flight_parsl.core.peer import PeerParams, PeerSettings
from flight_parsl.core.types import Failure, Slot, TaskResult
from flight_parsl.core.weights import FlatWeights, Layout
from flight_parsl.engine import checkpoint
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
from flight_parsl.fl.membership import Membership
from flight_parsl.fl.protocols import as_peer
from flight_parsl.transfer.base import Ref
from flight_parsl.transfer.codecs import encode, unpack
from flight_parsl.transfer.state import VersionBook
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
        self.versions = VersionBook(ctx.state)
        policy = ctx.policy
        self.membership = Membership(self.k, policy.max_missed, policy.readmit_after)
        self.inbox: dict[int, Ref] = {}
        self.clock = SlotClock()
        self.peaks: dict[Slot, float] = {}
        self.epsilon: dict[int, float] = {}
        self.bytes: list[tuple[int, int, float, float]] = []  # round, client, bytes in, bytes out
        self.summaries: list[RoundSummary] = []
        self.slowest: float | None = None
        self.first = 0
        if ctx.resume is not None:
            self._restore(ctx.resume)

    def _submit(self, queue: CompletionQueue[TaskSpec], spec: TaskSpec, channel: Ref, r: int) -> None:
        items = [(c, self.settings[c], self.inbox.get(c)) for c in spec.clients]
        view = self.versions.view(spec.clients, r, spec.attempt)
        codec = () if self.ctx.compression is None else (self.ctx.compression,)  # models as they are without
        queue.submit(spec, peer_task, channel, r, items, self.ctx.exp.workload, view, self.ctx.faults, spec.attempt,
                     *codec)

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
        ctx, strategy, policy = self.ctx, self.strategy, self.ctx.policy
        injector = ctx.injector
        stats = _Round(start=time.time())
        census = injector.census.full if injector is not None else (lambda: True)
        readmitted = self.membership.readmit(r, census)
        members = self.membership.members()
        clients = strategy.participants(members)
        if not clients:
            raise RoundError(f"round {r + 1}: no client left (all missed more than round.max_missed="
                             f"{policy.max_missed} rounds in a row and none could be re-admitted)")
        t0 = time.perf_counter()
        channel = ctx.transfer.publish(_CHANNEL, r)
        stats.publish_s = time.perf_counter() - t0
        ctx.progress.start_round(r, len(clients))
        queue: CompletionQueue[TaskSpec] = CompletionQueue(ctx.executor)
        for spec in self.planner.plan({"coordinator": clients}):
            self._submit(queue, spec, channel, r)
            stats.tasks += 1
        if injector is not None:
            injector.start_round(r)
        sent: dict[int, tuple[Ref, float]] = {}
        outcomes: dict[int, Any] = {}
        late: set[int] = set()
        kinds: list[str] = []
        delayed: list[tuple[float, int, TaskSpec]] = []  # retries waiting out their backoff
        close_at = policy.closes_at(len(clients))
        deadline_s = policy.deadline(self.slowest, len(clients) / max(1, ctx.slots))
        deadline = time.monotonic() + deadline_s
        watch = injector.census.record if injector is not None else None

        def close(kind: str, message: str) -> None:
            now = time.time()
            for pending in queue.abandon():
                pending.future.add_done_callback(partial(release_late, ctx.transfer))
                if ctx.late is not None:
                    ctx.late.append(pending.future)
                spec = pending.tag
                late.update(spec.clients)
                kinds.append(kind)
                failure = Failure(r, spec.clients, kind, message, spec.attempt, "coordinator")
                ctx.recorder.task_rows(failure_rows(failure, "train", spec.id, pending.submitted, now))
            for _, _, spec in delayed:
                kinds.append(kind)
            delayed.clear()

        handling: list[Pending[TaskSpec]] = []  # the outcome being handled: released if the run stops there
        try:
            while len(queue) or delayed:
                if len(outcomes) >= close_at:
                    close("late", f"still out when {len(outcomes)}/{len(clients)} clients had reported "
                                  f"(round.quorum={policy.quorum:g})")
                    break
                now = time.monotonic()
                wait = deadline - now
                if delayed:
                    wait = min(wait, delayed[0][0] - now)
                item = queue.next(wait) if len(queue) else None
                if item is None and not len(queue):
                    time.sleep(max(0.0, wait))
                if item is not None:
                    spec = item.tag
                    handling[:] = [item]
                    try:
                        res: TaskResult = item.future.result()
                    except Exception as exc:
                        kind = classify(exc)
                        failure = Failure(r, spec.clients, kind, describe(exc), spec.attempt, "coordinator")
                        slot = lost_slot(exc, injector)
                        ctx.recorder.task_rows(failure_rows(failure, "train", spec.id, item.submitted, time.time(),
                                                            slot=slot))
                        if spec.attempt < policy.retries:
                            stats.retries += 1
                            heapq.heappush(delayed, (time.monotonic() + policy.backoff(spec.attempt), spec.id,
                                                     self.planner.retry(spec)))
                        else:
                            kinds.append(kind)
                    else:
                        self._accept(r, item, res, sent, outcomes, stats)
                        if watch is not None:
                            watch(res.host, res.pid)
                        ctx.progress.task_done(r, len(outcomes), len(clients))
                    handling.clear()
                while delayed and delayed[0][0] <= time.monotonic():
                    _, _, retry = heapq.heappop(delayed)
                    self._submit(queue, retry, channel, r)
                    stats.tasks += 1
                if item is None and time.monotonic() >= deadline:
                    close("deadline", f"still out at the round's {deadline_s:.1f} s deadline")
                    break
        except BaseException:  # Ctrl-C, SIGTERM, a failure: what the round's tasks stored is released,
            for pending in [*queue.abandon(), *handling]:  # now or when they end, so that an
                pending.future.add_done_callback(partial(release_late, ctx.transfer))  # external Redis keeps no key
            raise
        reported = set(outcomes)
        missed = [c for c in clients if c not in reported]
        self.versions.discard(missed, r, range(policy.retries + 1))  # what their attempts wrote
        removed = self.membership.update(r, sorted(reported), missed)
        for c in removed:
            self.inbox.pop(c, None)
        ok, quorum = len(reported), policy.must_report(len(clients))
        if ok >= quorum:
            self.inbox = self._route(r, self.membership.members(), sent, stats)
        self._close(r, clients, outcomes, stats, members=len(members), late=len(late - reported),
                    removed=removed, readmitted=readmitted, deadline_s=deadline_s)
        if ok < quorum:
            raise RoundError(
                f"round {r + 1}: {ok}/{len(clients)} clients reported ({len(late - reported)} late, "
                f"{len(clients) - ok - len(late - reported)} failed), below the quorum of {quorum} "
                f"(round.min_fraction={policy.min_fraction}); failures: {', '.join(sorted(set(kinds)))}; "
                f"finished rounds are in {ctx.recorder.dir}"
            )
        if r > 0:
            ctx.transfer.end_round(r - 1)  # everything of the round before has been read
        if ctx.cfg.round.checkpoint:
            self._checkpoint(r)

    def _accept(
        self, r: int, item: Pending[TaskSpec], res: TaskResult, sent: dict[int, tuple[Ref, float]],
        outcomes: dict[int, Any], stats: _Round,
    ) -> None:
        """A task's result stands: its clients' new state becomes the state they start from."""
        ctx, spec = self.ctx, item.tag
        received = time.time()
        self.versions.accept(spec.clients, r, spec.attempt)
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

    def _route(self, r: int, members: Sequence[int], sent: dict[int, tuple[Ref, float]], stats: _Round) -> dict[int, Ref]:
        """Where each sent model goes: a peer over the members' graph (ProxyFL, AvgPush) or, for
        FedAvg / FML, the mean to every member."""
        if not sent:
            return {}
        if not self.strategy.central:
            routes = self.strategy.routes(r, members)
            return {routes[c]: ref for c, (ref, _) in sent.items() if c in routes}
        t0 = time.perf_counter()
        mean = None
        for ref, weight in sent.values():
            weights = unpack(self.ctx.transfer.collect(ref))  # an encoded shared model decoded
            mean = mean or WeightedMean(weights)
            mean.add(weights, weight)
        assert mean is not None
        result = mean.result()
        comp = self.ctx.compression
        if comp is not None and comp.deltas:  # the mean crosses too: encoded like the shared models
            result = encode(comp.codec_up(), result, comp.block)
        ref = self.ctx.transfer.publish(result, r)
        stats.aggregate_s = time.perf_counter() - t0
        return {c: ref for c in members}

    def _close(
        self, r: int, clients: list[int], outcomes: dict[int, Any], stats: _Round, *, members: int, late: int,
        removed: list[int], readmitted: list[int], deadline_s: float,
    ) -> None:
        ctx = self.ctx
        end = time.time()
        if r == ctx.cfg.rounds - 1:
            ctx.recorder.mark("end", end)
        self.slowest = max(self.slowest or 0.0, end - stats.start)
        acc = mean_finite([client_metric(o, "private_test_acc") for o in outcomes.values()])
        loss = mean_finite([client_metric(o, "private_test_loss") for o in outcomes.values()])
        proxy = mean_finite([client_metric(o, "proxy_test_acc") for o in outcomes.values()])
        injector = ctx.injector
        failed = len(clients) - len(outcomes)
        ctx.recorder.round_row(
            round_row(
                r, stats.start, end, stats, test_loss=loss, test_acc=acc, sampled=len(clients),
                participants=len(outcomes), failed=failed, publish_s=stats.publish_s, retries=stats.retries,
                proxy_test_acc=proxy, epsilon=max(self.epsilon.values()) if self.epsilon else math.nan,
                deadline_s=deadline_s, members=members, reported=len(outcomes), late=late,
                removed=" ".join(map(str, removed)), readmitted=" ".join(map(str, readmitted)),
                killed_slots=injector.killed_in(r) if injector is not None else 0,
                live_slots=injector.census.live_slots() if injector and injector.kills else "",
            )
        )
        ctx.progress.end_round(r, len(outcomes), len(clients), end - stats.start, loss, acc, stats.retries)
        self.summaries.append(RoundSummary(r, end - stats.start, loss, acc, len(outcomes), failed))

    def _checkpoint(self, r: int) -> None:
        """Write the state after round ``r``: every client's accepted state blob, the model each
        received for the next round (FedAvg / FML: the one mean), membership, epsilon, bytes."""
        models: list[FlatWeights] = []
        index: dict[int, int] = {}  # id(ref) -> its model's index
        inbox: dict[int, int] = {}
        for c, ref in sorted(self.inbox.items()):
            if id(ref) not in index:
                index[id(ref)] = len(models)
                models.append(self.ctx.transfer.collect(ref))
            inbox[c] = index[id(ref)]
        loop = {
            "states": self.versions.snapshot(),
            "models": models,
            "inbox": inbox,
            "membership": self.membership.state(),
            "epsilon": dict(self.epsilon),
            "bytes": list(self.bytes),
        }
        point = checkpoint.Checkpoint(r + 1, self.ctx.exp.initial, {}, self.slowest, self.ctx.checkpoint_hash,
                                      mode="decentralized", loop=loop)
        checkpoint.save(self.ctx.recorder.dir, point)

    def _restore(self, point: checkpoint.Checkpoint) -> None:
        loop = point.loop
        self.first, self.slowest = point.next_round, point.slowest_s
        self.versions.restore(loop["states"])
        self.membership.load(loop["membership"])
        self.epsilon = dict(loop["epsilon"])
        self.bytes = list(loop["bytes"])
        # the models received in the last finished round, published again in that round's scope
        refs = [self.ctx.transfer.publish(m, self.first - 1) for m in loop["models"]]
        self.inbox = {c: refs[i] for c, i in loop["inbox"].items()}
        self.ctx.progress.say(f"resuming at round {self.first + 1} of {self.ctx.cfg.rounds}")

    def run(self) -> LoopResult:
        if self.ctx.injector is not None:
            self.ctx.injector.start_run()
        for r in range(self.first, self.ctx.cfg.rounds):
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
        RoundError: a round ended below ``round.min_fraction``. Finished rows stay on disk.
    """
    return PeerLoop(ctx).run()

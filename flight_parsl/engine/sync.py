"""The synchronous round loop: clients sampled, packed into tasks, folded as they return.

Per round: the strategy samples clients from the population; the planner packs
each group of sampled clients (the children of one tree node; all of them on a
flat topology) into tasks, about one per slot; the global model is published once;
train tasks run their clients on the slots and, for a linear strategy, return one
folded partial each. On a tree, aggregator tasks fold their children's partials
with the strategy's aggregator once all of them have an outcome, and relay tasks
pass the model down (``broadcast="tree"``). The coordinator folds what reaches the
root as it arrives, from a completion queue (O(1) per event, O(model) memory).

Failures are outcomes: a task that raises, whose worker process dies, or that is
still out when the round closes becomes a :class:`~flight_parsl.core.types.Failure`
of its clients. Failed work is retried, after a backoff, while the policy allows;
the round closes early once ``round.quorum`` of its clients reported (work still
out is ``late``: released, or folded stale into the next round), and stands if
``round.min_fraction`` reported; the strategy sees the failures beside the folded
results. Below that the run stops with :class:`~flight_parsl.core.errors.RoundError`,
every finished row on disk. With a codec (``ctx.compression``) tasks send encoded updates
and the coordinator folds them into the global model (:class:`~flight_parsl.fl.aggregate.Offset`);
``codec_down`` encodes the broadcast. Clients that keep missing rounds leave the sample
(:mod:`flight_parsl.fl.membership`); with ``strategy.aimd`` each client's local
epochs follow AIMD (:mod:`flight_parsl.fl.aimd`). With ``train.keep_momentum`` a
client's momentum, and with ``transfer.error_feedback`` its residual, is written under a
new version per attempt and becomes the one it starts from only when the client reported
(:class:`~flight_parsl.transfer.state.VersionBook`); with a tree, aggregators keep residuals
of their own (:class:`AggregatorResiduals`). After every round the loop writes a checkpoint
(:mod:`flight_parsl.engine.checkpoint`) it can resume from.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from flight_parsl.core.errors import RoundError
from flight_parsl.core import stopping
from flight_parsl.core.stopping import deferred
from flight_parsl.core.types import Failure, LocalSettings, Slot, TaskResult
from flight_parsl.core.weights import FlatWeights
from flight_parsl.engine import checkpoint
from flight_parsl.engine.context import RunContext
from flight_parsl.engine.events import CompletionQueue, Pending, SlotClock
from flight_parsl.engine.outcomes import (
    LoopResult,
    RoundStats,
    RoundSummary,
    classify,
    describe,
    lost_slot,
    release_late,
)
from flight_parsl.engine.plan import Planner, TaskSpec
from flight_parsl.engine.records import dropped_rows, failure_rows, result_rows, round_row
from flight_parsl.fl.aggregate import Aggregator, Offset, WeightedMean
from flight_parsl.fl.aimd import AIMDEpochs
from flight_parsl.fl.membership import Membership
from flight_parsl.fl.protocols import as_sync
from flight_parsl.topology.tree import Topology, hierarchical_bytes, two_tier_bytes
from flight_parsl.transfer.base import Ref
from flight_parsl.transfer.codecs import encode, make_codec, unpack
from flight_parsl.transfer.persite import RESUME_HINT
from flight_parsl.transfer.state import AggregatorFeedback, ClientState, VersionBook, aggregator_key
from flight_parsl.worker.tasks import COORDINATOR, aggregate_task, relay_task, train_task

ROOT = COORDINATOR  # the node name train tasks report to at the root

log = logging.getLogger(__name__)

#: The end of the message of client state lost from a site's store and mirror, without checkpoints.
NO_CHECKPOINT = "the run keeps no checkpoint to resume from (round.checkpoint=false): start it again"


@dataclass
class _Part:
    """A result on its way up: a reference, its weight, and the clients folded into it."""

    ref: Ref
    weight: float
    clients: tuple[int, ...]


@dataclass
class _Job:
    """What the coordinator remembers about one submitted task."""

    kind: str  # train | aggregate | relay
    node: str  # train: the node it reports to; aggregate / relay: the aggregator itself
    attempt: int
    task: int
    clients: tuple[int, ...] = ()
    spec: TaskSpec | None = None  # train
    ref: Ref | None = None  # train, relay: the model it starts from
    parts: list[_Part] = field(default_factory=list)  # aggregate: its children's results
    site: str | None = None  # where it was sent (several sites)


class SyncRound:
    """The tasks of one round, launched as their inputs are ready, until all have an outcome."""

    def __init__(
        self,
        ctx: RunContext,
        planner: Planner,
        clock: SlotClock,
        round_idx: int,
        weights: FlatWeights,
        clients: list[int],
        tree: Topology | None,
    ) -> None:
        self.ctx, self.planner, self.clock, self.r = ctx, planner, clock, round_idx
        self.sampled, self.tree = clients, tree
        self.strategy = strategy = as_sync(ctx.exp.strategy)
        self.fold = strategy if strategy.linear and ctx.cfg.plan.preaggregate else None
        self.comp = ctx.compression
        self.root_agg: Aggregator = strategy.aggregator(weights)
        if self.comp is not None and self.comp.deltas:  # tasks send updates: fold them onto the model
            self.root_agg = Offset(self.root_agg, weights)
        self.queue: CompletionQueue[_Job] = CompletionQueue(ctx.executor)
        self.stats = RoundStats()
        self.tasks_of: dict[str, list[TaskSpec]] = {}
        for spec in planner.plan(self._groups()):
            self.tasks_of.setdefault(spec.node, []).append(spec)
        self.waiting: dict[str, int] = {}  # aggregator -> children without an outcome yet
        self.parts: dict[str, list[_Part]] = {}  # aggregator -> its children's results
        self.folded: list[int] = []
        self.failures: list[Failure] = []
        self.peaks: dict[Slot, float] = {}
        self.next_task = 0
        self.active = {n.name for n in tree.active_subtree(clients).aggregators} if tree is not None else set()
        self.close_at = ctx.policy.closes_at(len(clients))
        self.delayed: list[tuple[float, int, _Job, str]] = []  # retries waiting out their backoff
        self.late: set[int] = set()  # clients whose work was still out when the round closed
        self.late_items: list[Pending[_Job]] = []  # their tasks, kept for a stale fold (round.late=stale)
        self.epochs: dict[int, int] = {}  # AIMD budgets of this round (empty without AIMD)
        self.slow: frozenset[int] = frozenset()
        self.slow_factor = 1.0
        self.watch = None if ctx.injector is None else ctx.injector.census.record
        self.versions: VersionBook | None = None  # each client's accepted momentum and residual
        self.agg_residuals: AggregatorResiduals | None = None  # error feedback at aggregators
        self.attempt_of: dict[int, int] = {}  # client -> the attempt whose result reached the root
        self.handling: Pending[_Job] | None = None  # the outcome being handled
        # a store per site: results for the root are read as they arrive (SiteTransfer.prefetch)
        self.read_ahead = getattr(ctx.transfer, "prefetch", None)
        # plain models into a weighted mean: folded as they are read (ProxyTransfer.collect_fold)
        self.collect_fold = getattr(ctx.transfer, "collect_fold", None) if isinstance(self.root_agg, WeightedMean) else None
        self.reading = True  # False once the round closed: no read ahead of late results

    # planning --------------------------------------------------------------------

    def _groups(self) -> dict[str, list[int]]:
        """Sampled clients by the node they report to."""
        if self.tree is None:
            return {ROOT: list(self.sampled)}
        groups: dict[str, list[int]] = {}
        for client in self.sampled:
            node = self.tree.worker_node(client).name
            parent = self.tree.parent(node)
            assert parent is not None
            groups.setdefault(ROOT if parent == self.tree.root.name else parent, []).append(client)
        return groups

    def _aggregators_below(self, node: str) -> list[str]:
        """The active aggregator children of ``node`` (none on a flat topology)."""
        if self.tree is None:
            return []
        name = self.tree.root.name if node == ROOT else node
        return [c for c in self.tree.children(name) if self.tree.nodes[c].kind == "aggregator" and c in self.active]

    def _clients_below(self, node: str) -> tuple[int, ...]:
        """Sampled clients in ``node``'s subtree."""
        out = [c for spec in self.tasks_of.get(node, []) for c in spec.clients]
        for child in self._aggregators_below(node):
            out.extend(self._clients_below(child))
        return tuple(out)

    def _parent(self, node: str) -> str:
        assert self.tree is not None
        parent = self.tree.parent(node)
        assert parent is not None
        return ROOT if parent == self.tree.root.name else parent

    # launching -------------------------------------------------------------------

    def _submit(self, job: _Job) -> None:
        """Submit ``job``'s task (again, for a retry: arguments are rebuilt each time)."""
        ctx = self.ctx
        job.site = self._site(job)
        for_site = getattr(ctx.transfer, "for_site", None)  # a store per site: the site's own reference
        if for_site is not None and job.ref is not None:
            job.ref = for_site(job.ref, job.site)
        if job.kind == "train":
            assert job.spec is not None
            clients = [(c, self._settings(c)) for c in job.clients]
            state = ctx.state if self.versions is None else self.versions.view(job.clients, self.r, job.attempt)
            state = _at_site(state, job.site)
            args: tuple[Any, ...] = (
                train_task, job.ref, self.r, job.node, clients, ctx.exp.workload, self.fold, state, ctx.faults,
                job.attempt, self.comp,
            )
        elif job.kind == "relay":
            args = (relay_task, job.ref, self.r, job.node)
        else:  # a fresh list: the task pops its children to hold one model at a time
            residuals = self.agg_residuals
            feedback = None if residuals is None else residuals.feedback(job.node, self.r, job.attempt)
            feedback = _at_site(feedback, job.site)
            args = (aggregate_task, [(p.ref, p.weight) for p in job.parts], self.strategy, self.r, job.node,
                    self.comp, feedback)
        item = self.queue.submit(job, *args, site=job.site)
        self.stats.tasks += 1
        if self.read_ahead is not None and job.kind != "relay" and (
                job.node if job.kind == "train" else self._parent(job.node)) == ROOT:
            item.future.add_done_callback(self._read_ahead)

    def _read_ahead(self, future: Any) -> None:
        """A result for the root arrived (a done-callback, in the executor's thread): start
        reading its outputs now (a store per site: in their site's reader thread), so the
        partials of several sites cross their links side by side; the fold, in the order
        results arrive, stays on the coordinator's loop."""
        if not self.reading:
            return  # the round has closed: a late result is folded stale or released, not read ahead
        try:
            res = future.result()
        except Exception:  # a failed task has nothing to read; its failure is handled in the loop
            return
        assert self.read_ahead is not None
        for ref, _ in res.outputs:
            try:
                self.read_ahead(ref)
            except Exception:  # noqa: BLE001 - the loop's collect reads it again and reports the error
                log.debug("read ahead of %r failed to start", ref, exc_info=True)

    def _site(self, job: _Job) -> str | None:
        """The site a job runs at (None with one site)."""
        placement = self.ctx.placement
        if placement is None:
            return None
        return placement.train(job.clients) if job.kind == "train" else placement.node(job.node)

    def _settings(self, client: int) -> LocalSettings:
        """A client's settings this round: the strategy's, its AIMD epochs, an injected slowdown."""
        settings = self.ctx.exp.settings_for(self.r, client)
        if client in self.epochs:
            settings = replace(settings, epochs=self.epochs[client])
        if client in self.slow:
            settings = replace(settings, slowdown=max(settings.slowdown, self.slow_factor))
        return settings

    def _rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add each client's AIMD epochs to its tasks.csv rows."""
        for row in rows:
            client = row.get("client")
            if isinstance(client, int) and client in self.epochs:
                row["epochs"] = self.epochs[client]
        return rows

    def _submit_train(self, spec: TaskSpec, ref: Ref) -> None:
        self._submit(_Job("train", spec.node, spec.attempt, spec.id, spec.clients, spec=spec, ref=ref))

    def _new_task_id(self) -> int:
        self.next_task -= 1  # aggregate and relay tasks count down from -1
        return self.next_task

    def _send_down(self, node: str, ref: Ref) -> None:
        """Start ``node``'s part of the round with the model reference ``ref``."""
        for spec in self.tasks_of.get(node, []):
            self._submit_train(spec, ref)
        for child in self._aggregators_below(node):
            if self.ctx.cfg.broadcast == "tree":
                self._submit(_Job("relay", child, 0, self._new_task_id(), self._clients_below(child), ref=ref))
            else:
                self._send_down(child, ref)

    def start(self, ref: Ref) -> None:
        """Submit the round's first tasks."""
        for agg in self.active:
            self.waiting[agg] = len(self.tasks_of.get(agg, [])) + len(self._aggregators_below(agg))
            self.parts[agg] = []
        self._send_down(ROOT, ref)
        # While the tasks run, the root's accumulator takes its memory (faults its pages in), so
        # that the first result's fold does not: a fresh model-sized buffer's page faults, beside
        # a store per site's reader threads faulting theirs, cost up to 0.4 s of a gigabit round.
        reserve = getattr(self.root_agg, "reserve", None)
        if reserve is not None:
            reserve()

    # outcomes --------------------------------------------------------------------

    def run(self, deadline_s: float) -> None:
        """Handle outcomes until every task has one, the quorum reported, or ``deadline_s`` passes."""
        try:
            self._run(deadline_s)
        finally:
            self.reading = False

    def _run(self, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        while len(self.queue) or self.delayed:
            if len(self.folded) >= self.close_at:
                q = self.ctx.policy.quorum
                self._close("late", f"still out when {len(self.folded)}/{len(self.sampled)} clients had reported "
                                    f"(round.quorum={q:g})")
                return
            now = time.monotonic()
            wait = deadline - now
            if self.delayed:
                wait = min(wait, self.delayed[0][0] - now)
            if len(self.queue):
                item = self.queue.next(wait)
            else:
                stopping.check()
                time.sleep(max(0.0, wait))
                item = None
            if item is not None:
                self.handling = item  # out of the queue, not yet folded: released if the run stops here
                self._on_done(item)
                self.handling = None
            self._submit_due()
            if item is None and time.monotonic() >= deadline:
                self._close("deadline", f"still out at the round's {deadline_s:.1f} s deadline")
                return

    def _submit_due(self) -> None:
        """Resubmit the retries whose backoff has passed."""
        now = time.monotonic()
        while self.delayed and self.delayed[0][0] <= now:
            _, _, job, _ = heapq.heappop(self.delayed)
            self._resubmit(job)

    def _on_done(self, item: Pending[_Job]) -> None:
        job = item.tag
        try:
            res: TaskResult = item.future.result()
        except Exception as exc:
            self._on_failure(job, item, classify(exc), describe(exc), lost_slot(exc, self.ctx.injector))
            return
        received = time.time()
        self.peaks[res.slot] = max(self.peaks.get(res.slot, 0.0), res.peak_rss_mb)
        idle = self.clock.record(res.slot, res.started, res.finished)
        self.stats.edge_bytes += res.bytes_in  # train / relay read their parent's model; aggregate its children
        collect_s = math.nan
        if job.kind == "relay":
            self.ctx.transfer.adopt(res.outputs[0][0])
            self._send_down(job.node, res.outputs[0][0])
        else:
            if job.kind == "train":
                self.stats.count_train(res)
                parts = self._train_parts(res, job.clients)
                self.attempt_of.update((c, job.attempt) for c in job.clients)
            else:
                parts = [_Part(res.outputs[0][0], res.outputs[0][1], job.clients)]
                if self.agg_residuals is not None:  # its next round starts from the residual this attempt wrote
                    self.agg_residuals.accept(job.node, self.r, job.attempt)
            collect_s = self._pass_up(job.node if job.kind == "train" else self._parent(job.node), parts)
        rows = result_rows(res, job.task, job.attempt, item.submitted, received, collect_s, idle)
        self.ctx.recorder.task_rows(_at(job.site, self._rows(rows)))
        if self.watch is not None:
            self.watch(res.host, res.pid)
        self.ctx.progress.task_done(self.r, len(self.folded), len(self.sampled))

    def _train_parts(self, res: TaskResult, clients: tuple[int, ...]) -> list[_Part]:
        if self.fold is not None:  # one partial of all the task's clients
            return [_Part(res.outputs[0][0], res.outputs[0][1], clients)]
        return [_Part(ref, w, (c.client,)) for (ref, w), c in zip(res.outputs, res.clients)]

    def _pass_up(self, parent: str, parts: list[_Part]) -> float:
        """Hand results to ``parent``: fold them at the root, or queue them at an aggregator."""
        collect_s = 0.0
        if parent == ROOT:
            for part in parts:
                t0 = time.perf_counter()
                if self.collect_fold is not None:  # folded as it is read
                    fold_s = self.collect_fold(part.ref, self.root_agg, part.weight)
                    t1 = time.perf_counter() - fold_s
                else:
                    weights = self.ctx.transfer.collect(part.ref)
                    t1 = time.perf_counter()
                    self.root_agg.add(unpack(weights), part.weight)  # decoding counts as aggregation
                    del weights
                # folded: nothing reads it again, so its key goes now, not with the round (a
                # store holds a few results, not the round's, and a file store reuses its file)
                self.ctx.transfer.discard(part.ref)
                collect_s += t1 - t0
                self.stats.aggregate_s += time.perf_counter() - t1
                self.stats.edge_bytes += part.ref.nbytes
                self.folded.extend(part.clients)
            return collect_s
        for part in parts:
            self.ctx.transfer.adopt(part.ref)
        self.parts[parent].extend(parts)
        self._child_settled(parent)
        return math.nan

    def _child_settled(self, node: str) -> None:
        """One child of aggregator ``node`` has its outcome; aggregate once all have."""
        self.waiting[node] -= 1
        if self.waiting[node] > 0:
            return
        parts = self.parts.pop(node)
        if not parts:  # the whole subtree failed: nothing to aggregate
            if self._parent(node) != ROOT:
                self._child_settled(self._parent(node))
            return
        clients = tuple(c for p in parts for c in p.clients)
        self._submit(_Job("aggregate", node, 0, self._new_task_id(), clients, parts=parts))

    def _on_failure(
        self, job: _Job, item: Pending[_Job], kind: str, message: str, slot: tuple[str, int | None] | None = None
    ) -> None:
        failure = Failure(self.r, job.clients, kind, message, job.attempt, job.node)
        now = time.time()
        rows = failure_rows(failure, job.kind, job.task, item.submitted, now, slot=slot)
        self.ctx.recorder.task_rows(_at(job.site, self._rows(rows)))
        if job.attempt < self.ctx.policy.retries:
            self.stats.retries += 1
            delay = self.ctx.policy.backoff(job.attempt)
            if delay <= 0:
                self._resubmit(job)
            else:
                heapq.heappush(self.delayed, (time.monotonic() + delay, self._new_task_id(), job, kind))
            return
        self.failures.append(failure)
        self._settle_failed(job)

    def _resubmit(self, job: _Job) -> None:
        if job.kind == "train":
            assert job.spec is not None and job.ref is not None
            self._submit_train(self.planner.retry(job.spec), job.ref)
            return
        self._submit(_Job(job.kind, job.node, job.attempt + 1, self._new_task_id(), job.clients, ref=job.ref,
                          parts=job.parts))

    def _settle_failed(self, job: _Job) -> None:
        """Failed work that will not be retried: its subtree contributes nothing."""
        parent = job.node if job.kind == "train" else self._parent(job.node)
        if parent != ROOT:
            self._child_settled(parent)

    def _close(self, kind: str, message: str) -> None:
        """The round closes with work still out (``kind``: ``late`` at the quorum, ``deadline``):
        that work, and every result still waiting at an aggregator, becomes a failure of
        that kind and its clients are late; retries still waiting out their backoff fail."""
        self.reading = False
        now = time.time()
        stale = self.ctx.policy.late == "stale"
        for item in self.queue.abandon():
            job = item.tag
            if stale and job.kind != "relay":
                self.late_items.append(item)  # folded (or released) at the next round's close
            else:
                item.future.add_done_callback(partial(release_late, self.ctx.transfer))
            if self.ctx.late is not None:
                self.ctx.late.append(item.future)
            failure = Failure(self.r, job.clients, kind, message, job.attempt, job.node)
            self.failures.append(failure)
            self.late.update(job.clients)
            rows = failure_rows(failure, job.kind, job.task, item.submitted, now)
            self.ctx.recorder.task_rows(_at(job.site, self._rows(rows)))
        for _, _, job, failed_kind in self.delayed:
            self.failures.append(Failure(self.r, job.clients, failed_kind, f"retry not sent before the round closed: "
                                         f"{message}", job.attempt, job.node))
        self.delayed.clear()
        for node, parts in self.parts.items():
            if parts:
                clients = tuple(c for p in parts for c in p.clients)
                failure = Failure(self.r, clients, kind, f"waiting at aggregator {node}: {message}", 0, node)
                self.failures.append(failure)
                self.late.update(clients)
                site = self.ctx.placement.node(node) if self.ctx.placement is not None else None
                self.ctx.recorder.task_rows(_at(site, failure_rows(failure, "aggregate", self._new_task_id(), now, now)))
        self.parts.clear()


    def release_outstanding(self) -> None:
        """The run stops mid-round: release what every task still out (or done and not yet
        handled) stores, now or when it ends (before the channel closes: the executor's
        shutdown waits for its tasks), and what results wait at aggregators."""
        self.reading = False
        release = partial(release_late, self.ctx.transfer)
        for item in [*self.queue.abandon(), *([self.handling] if self.handling is not None else [])]:
            item.future.add_done_callback(release)
        for parts in self.parts.values():
            for part in parts:
                self.ctx.transfer.discard(part.ref)
        self.parts.clear()


def fold_stale(ctx: RunContext, items: list[Pending[_Job]], into: Any) -> list[int]:
    """Fold late results of the previous round that have arrived into ``into`` with weight x
    ``round.stale_weight``; release the others when they arrive. Returns the folded clients."""
    folded: list[int] = []
    rounds = set()
    for item in items:
        future = item.future
        if not future.done():
            future.add_done_callback(partial(release_late, ctx.transfer))
            continue
        try:
            res: TaskResult = future.result()
        except Exception:  # failed late: nothing to fold
            continue
        for ref, weight in res.outputs:
            weights = unpack(ctx.transfer.collect(ref))
            into.add(weights, weight * ctx.policy.stale_weight)
            ref_round = getattr(ref, "round", None)  # a ProxyRef's; an InlineRef has none
            if ref_round is not None:
                rounds.add(ref_round)
        folded.extend(c.client for c in res.clients or [])
        if not res.clients:  # an aggregator's partial
            folded.extend(item.tag.clients)
    for r in rounds:
        ctx.transfer.end_round(r)  # evict the stale results collected into the old round's scope
    return sorted(set(folded))


def _broadcast(ctx: RunContext, weights: FlatWeights) -> FlatWeights:
    """The round's model as published: encoded by ``transfer.codec_down``, when set."""
    comp = ctx.compression
    if comp is None or comp.down == "none":
        return weights
    return encode(make_codec(comp.down, comp.block), weights, comp.block)


def _at(site: str | None, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """tasks.csv rows with the site their task ran at."""
    if site is not None:
        for row in rows:
            row["site"] = site
    return rows


def _tree(ctx: RunContext) -> Topology | None:
    from flight_parsl.topology.tree import parse_topology

    if ctx.cfg.topology == "flat":
        return None
    topology = parse_topology(ctx.cfg.topology, ctx.cfg.workers)
    ctx.recorder.update(topology=topology.describe())
    return topology


def _modeled_bytes(tree: Topology | None, sampled: list[int], size: int) -> tuple[int, int]:
    """The cost model's two-tier and hierarchical bytes for the round's active tree."""
    if tree is None:  # a flat tree: one edge and one hop per client, both ways
        return 2 * len(sampled) * size, 2 * len(sampled) * size
    active = tree.active_subtree(sampled)
    return two_tier_bytes(active, size), hierarchical_bytes(active, size)


def _at_site(state: Any, site: str | None) -> Any:
    """What a task at ``site`` carries of the run's client state: with a store per site
    (:class:`~flight_parsl.transfer.persite.SiteState`) its own site's store, never the others'."""
    store = getattr(state, "store", state)  # a VersionedView or an AggregatorFeedback wraps the store
    for_site = getattr(store, "for_site", None)
    if for_site is None or site is None:
        return state
    return for_site(site) if store is state else replace(state, store=for_site(site))


def _restored(ctx: RunContext, site: str, keys: list[tuple[int, str | None]]) -> None:
    """Record that site ``site``'s server lost ``keys`` of the run's client state, which its mirror
    holds and its tasks put back: a ``state_restored`` row of faults.csv (and a line on the console)."""
    clients = sorted({k for k, _ in keys if k >= 0})
    residuals = sorted({-1 - k for k, _ in keys if k < 0 and k > aggregator_key(0)})
    aggregators = sum(1 for k, _ in keys if k <= aggregator_key(0))
    parts = [f"clients {' '.join(map(str, clients))}"] if clients else []
    if residuals:
        parts.append(f"residuals of clients {' '.join(map(str, residuals))}")
    if aggregators:
        parts.append(f"{aggregators} aggregator residual{'s' if aggregators > 1 else ''}")
    detail = (f"{len(keys)} accepted blobs of site {site} its server lost ({'; '.join(parts)}): read from "
              f"the site's mirror by its tasks and put back into its store")
    ctx.progress.say(f"site {site}: {detail}")
    record = getattr(ctx.injector, "record", None)
    if record is not None:
        record("state_restored", site, detail)
    else:
        log.warning("site %s: %s", site, detail)


def _versions(ctx: RunContext) -> VersionBook | None:
    """The versions of the run's client state: momentum (``train.keep_momentum``) and error-feedback
    residuals (``transfer.error_feedback``), or None when no client keeps state."""
    keep, feedback = ctx.cfg.train.keep_momentum, ctx.cfg.transfer.error_feedback
    if ctx.state is None or not (keep or feedback):
        return None
    return VersionBook(ctx.state, momentum=keep, residuals=feedback)


class AggregatorResiduals:
    """Error feedback at a tree's aggregators (``transfer.error_feedback`` with a codec): each
    aggregator's residual lives in the run's client state under its own key
    (:func:`~flight_parsl.transfer.state.aggregator_key` of its place among the tree's
    aggregators), written under its attempt's version and accepted once the aggregator's
    result is in: a retried or late aggregator starts again from the residual it had."""

    def __init__(self, store: ClientState, tree: Topology) -> None:
        self.store = store
        self.index = {node.name: i for i, node in enumerate(tree.aggregators)}
        self.accepted: dict[str, str] = {}

    def feedback(self, node: str, round_idx: int, attempt: int) -> AggregatorFeedback:
        """What aggregate task ``attempt`` of ``node`` reads and writes."""
        key = aggregator_key(self.index[node])
        return AggregatorFeedback(self.store, key, self.accepted.get(node), VersionBook.version(round_idx, attempt))

    def accept(self, node: str, round_idx: int, attempt: int) -> None:
        """``node`` starts its next round from what ``attempt`` wrote; the version it had goes."""
        new, old = VersionBook.version(round_idx, attempt), self.accepted.get(node)
        self.accepted[node] = new
        delete = getattr(self.store, "delete", None)
        if delete is None:
            return
        gone = [old] if old is not None and old != new else []
        gone += [VersionBook.version(round_idx, a) for a in range(attempt)]  # earlier attempts, never accepted
        for version in gone:
            delete(aggregator_key(self.index[node]), version)

    def accepted_keys(self) -> list[tuple[int, str]]:
        """Every aggregator's accepted (store key, version)."""
        return [(aggregator_key(self.index[node]), version) for node, version in sorted(self.accepted.items())]

    def snapshot(self) -> dict[str, tuple[str, bytes]]:
        """Every aggregator's accepted residual and its version (for a checkpoint)."""
        out = {}
        for node, version in sorted(self.accepted.items()):
            blob = self.store.get(aggregator_key(self.index[node]), version)
            if blob is not None:
                out[node] = (version, blob)
        return out

    def restore(self, saved: dict[str, tuple[str, bytes]]) -> None:
        """Write a :meth:`snapshot` into the (fresh) store and accept its versions."""
        for node, (version, blob) in saved.items():
            self.store.put(aggregator_key(self.index[node]), blob, version)
            self.accepted[node] = version


@dataclass
class _ClientBook:
    """Per-client state across rounds: membership, AIMD epochs and each client's accepted
    state: its momentum blob (``train.keep_momentum``) and its error-feedback residual
    (``transfer.error_feedback``); all in the checkpoint."""

    membership: Membership
    aimd: AIMDEpochs | None
    versions: VersionBook | None = None
    aggregators: AggregatorResiduals | None = None
    lost: set[tuple[int, str | None]] = field(default_factory=set)  # lost keys the last checkpoint found

    def from_mirrors(self, hint: str = RESUME_HINT) -> dict[str, list[tuple[int, str | None]]]:
        """With a store per site (:class:`~flight_parsl.transfer.persite.SiteState`): the accepted
        keys each site's server lost since the last checkpoint looked (a server stopped and restarted
        empty), all held by the site's mirror, whose tasks read them there and put them back. One
        pipelined lookup of key names a site; nothing without a store per site.

        Raises:
            TransferError: a lost key is in no mirror either (the message ends with ``hint``).
        """
        store = self.versions.store if self.versions is not None else None
        restorable = getattr(store, "restorable", None)
        if restorable is None:
            return {}
        keys: list[tuple[int, str]] = self.versions.accepted_keys() if self.versions is not None else []
        if self.aggregators is not None:
            keys += self.aggregators.accepted_keys()
        found: dict[str, list[tuple[int, str | None]]] = restorable(keys, hint)
        new = {site: [k for k in lost if k not in self.lost] for site, lost in found.items()}
        self.lost = {k for lost in found.values() for k in lost}  # a blob not read back yet is counted once
        return {site: lost for site, lost in new.items() if lost}

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"membership": self.membership.state()}
        if self.aimd is not None:
            out["aimd"] = self.aimd.state()
        if self.versions is not None and self.versions.momentum:
            out["momentum"] = self.versions.snapshot()
        if self.versions is not None and self.versions.residuals:
            out["residuals"] = self.versions.residual_snapshot()
        if self.aggregators is not None:
            out["aggregator_residuals"] = self.aggregators.snapshot()
        return out

    def load(self, state: dict[str, Any]) -> None:
        self.membership.load(state["membership"])
        if self.aimd is not None and "aimd" in state:
            self.aimd.load(state["aimd"])
        if self.versions is not None:
            self.versions.restore(state.get("momentum", {}), state.get("residuals"))
        if self.aggregators is not None:
            self.aggregators.restore(state.get("aggregator_residuals", {}))

    def accept(self, round_idx: int, reported: set[int], attempt_of: dict[int, int]) -> None:
        """The round's reported clients start the next round from the momentum and residual their
        reporting attempt wrote; the others (late, failed) from the ones they had."""
        if self.versions is None:
            return
        for c in sorted(reported):
            self.versions.accept([c], round_idx, attempt_of.get(c, 0))


def run_sync(ctx: RunContext) -> LoopResult:
    """Run ``cfg.rounds`` synchronous rounds (from the checkpoint in ``ctx.resume``, if any).

    Raises:
        RoundError: a round ended below the policy's ``min_fraction``. Rows of finished
            tasks and rounds, and the checkpoint of the last finished round, are on disk.
    """
    cfg, exp, recorder, progress, policy = ctx.cfg, ctx.exp, ctx.recorder, ctx.progress, ctx.policy
    strategy = as_sync(exp.strategy)
    rng = np.random.default_rng(cfg.seed)
    tree = _tree(ctx)
    name_aggregators = getattr(ctx.state, "name_aggregators", None)  # a store per site: where residuals live
    if tree is not None and name_aggregators is not None:
        name_aggregators(node.name for node in tree.aggregators)
    site = ctx.placement.client_site.__getitem__ if ctx.placement is not None else None
    planner = Planner(ctx.slots, cfg.plan.clients_per_task, exp.expected_work if exp.shard_sizes else None, site)
    weights = exp.initial
    size = len(weights.to_bytes())  # payload bytes of one model, for the cost model
    summaries: list[RoundSummary] = []
    peaks: dict[Slot, float] = {}
    clock = SlotClock()
    slowest: float | None = None
    s_cfg = cfg.strategy
    book = _ClientBook(
        Membership(cfg.workers, policy.max_missed, policy.readmit_after),
        AIMDEpochs(s_cfg.aimd_start, s_cfg.aimd_max) if s_cfg.aimd else None,
        _versions(ctx),
        AggregatorResiduals(ctx.state, tree)
        if ctx.state is not None and tree is not None and cfg.transfer.error_feedback else None,
    )
    slow = frozenset(cfg.faults.slow)
    injector = ctx.injector
    census = injector.census.full if injector is not None else (lambda: True)
    first = 0
    tied_to = ctx.checkpoint_hash
    if ctx.resume is not None:
        point = ctx.resume
        first, weights, slowest = point.next_round, point.weights, point.slowest_s
        rng.bit_generator.state = point.rng_state
        book.load(point.clients)
        progress.say(f"resuming at round {first + 1} of {cfg.rounds}")
    carried: list[Pending[_Job]] = []  # late results of the previous round (round.late=stale)
    if injector is not None:
        injector.start_run()
    for r in range(first, cfg.rounds):
        stopping.check()  # a stop signal whose exception was lost ends the run before another round
        start = time.time()
        readmitted = book.membership.readmit(r, census)
        members = book.membership.members()
        if not members:
            raise RoundError(f"round {r + 1}: no client left to sample (all missed more than round.max_missed="
                             f"{policy.max_missed} rounds and none could be re-admitted)")
        sampled = strategy.sample(r, len(members), rng, members)
        dropped = strategy.dropped(r)
        if dropped:  # stragglers the strategy leaves out (FedProx's FedAvg baseline)
            recorder.task_rows(dropped_rows(r, dropped, start))
        t0 = time.perf_counter()
        ref = ctx.transfer.publish(_broadcast(ctx, weights), r)
        publish_s = time.perf_counter() - t0  # encoding the broadcast included
        rnd = SyncRound(ctx, planner, clock, r, weights, sampled, tree)
        if book.aimd is not None:
            rnd.epochs = {c: book.aimd.epochs(c) for c in sampled}
        rnd.slow, rnd.slow_factor = slow, cfg.faults.slow_factor
        rnd.versions = book.versions
        rnd.agg_residuals = book.aggregators
        deadline_s = policy.deadline(slowest, len(sampled) / max(1, ctx.slots))
        progress.start_round(r, len(sampled))
        try:
            rnd.start(ref)
            if injector is not None:
                injector.start_round(r)
            rnd.run(deadline_s)
        except BaseException:  # Ctrl-C, SIGTERM, a failure: what the round's tasks stored is released
            rnd.release_outstanding()
            raise
        stale = fold_stale(ctx, carried, rnd.root_agg) if carried else []
        carried = rnd.late_items
        ok, quorum = len(rnd.folded), policy.must_report(len(sampled))
        if ok >= quorum:
            t0 = time.perf_counter()
            weights = strategy.aggregate(r, weights, rnd.root_agg, rnd.failures)
            rnd.stats.aggregate_s += time.perf_counter() - t0
        end = time.time()  # the aggregate is ready: before the round's keys are evicted
        if ok >= quorum:
            ctx.transfer.end_round(r)  # below the quorum the run stops; closing the transfer evicts it
        slowest = max(slowest or 0.0, end - start)
        for slot, peak in rnd.peaks.items():
            peaks[slot] = max(peaks.get(slot, 0.0), peak)
        if r == cfg.rounds - 1 or ok < quorum:
            recorder.mark("end", end)  # the last aggregate is ready; evaluation is not timed
        t0 = time.perf_counter()
        loss, acc = exp.evaluate(weights) if exp.evaluate and ok >= quorum else (math.nan, math.nan)
        eval_s = time.perf_counter() - t0
        global_train = exp.evaluate_train(weights) if exp.evaluate_train and ok >= quorum else (math.nan, math.nan)
        two_tier, hierarchical = _modeled_bytes(tree, sampled, size)
        reported = set(rnd.folded)
        late = sorted(rnd.late - reported)
        removed = book.membership.update(r, reported, [c for c in sampled if c not in reported])
        book.accept(r, reported, rnd.attempt_of)
        if book.aimd is not None:
            book.aimd.update(sorted(reported), late)
        s = rnd.stats
        recorder.round_row(
            round_row(
                r, start, end, s, test_loss=loss, test_acc=acc, sampled=len(sampled), participants=ok,
                failed=len(sampled) - ok, publish_s=publish_s, eval_s=eval_s, edge_bytes=s.edge_bytes,
                deadline_s=deadline_s,
                modeled_two_tier_bytes=two_tier,
                modeled_hierarchical_bytes=hierarchical,
                compression_ratio=s.raw_up(size) / s.bytes_from if s.bytes_from else math.nan,
                global_train_loss=global_train[0],
                global_train_acc=global_train[1],
                members=len(members),
                reported=ok,
                late=len(late),
                stale_folded=len(stale),
                removed=" ".join(map(str, removed)),
                readmitted=" ".join(map(str, readmitted)),
                killed_slots=injector.killed_in(r) if injector is not None else 0,
                live_slots=injector.census.live_slots() if injector and injector.kills else "",
            )
        )
        if ok < quorum:
            for item in carried:
                item.future.add_done_callback(partial(release_late, ctx.transfer))
            kinds = sorted({f.kind for f in rnd.failures})
            first_msg = rnd.failures[0].message if rnd.failures else ""
            raise RoundError(
                f"round {r + 1}: {ok}/{len(sampled)} sampled clients reported ({len(late)} late, "
                f"{len(sampled) - ok - len(late)} failed), below the quorum of {quorum} "
                f"(round.min_fraction={policy.min_fraction}); failures: {', '.join(kinds)}"
                + (f" (first: {first_msg})" if first_msg else "")
                + f"; finished rounds are in {recorder.dir}"
            )
        # a store per site: what a restarted server lost, every round (without checkpoints too: a
        # blob lost from a store and its mirror stops the run, never starts its client afresh)
        for label, keys in book.from_mirrors(RESUME_HINT if cfg.round.checkpoint else NO_CHECKPOINT).items():
            _restored(ctx, label, keys)
        if cfg.round.checkpoint:
            point = checkpoint.Checkpoint(r + 1, weights, rng.bit_generator.state, slowest, tied_to, book.state())
            with deferred():  # written and renamed whole: a stop signal waits for the rename
                checkpoint.save(recorder.dir, point)
        progress.end_round(r, ok, len(sampled), end - start, loss, acc, rnd.stats.retries)
        summaries.append(RoundSummary(r, end - start, loss, acc, ok, len(sampled) - ok))
    for item in carried:  # late results of the last round: nothing to fold them into
        item.future.add_done_callback(partial(release_late, ctx.transfer))
    return LoopResult(weights, summaries, peaks, clock)

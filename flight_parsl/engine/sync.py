"""The synchronous round loop, on any tree topology (flat is a tree of height 1).

Per round: the strategy picks participants; the global model is published once;
the tasks of the round's active subtree run as their inputs become ready: relay
tasks pass the model down (``broadcast="tree"``; with ``"direct"`` every worker
reads the published model itself), train tasks run on the workers, aggregate
tasks combine an aggregator's children into one partial (linear aggregation pushed
down the tree); the coordinator folds its children's results into a streaming
weighted mean as they complete (O(model) memory). With a proxy transfer the
coordinator only ever handles small references, so worker and aggregator payloads
go worker -> aggregator -> coordinator through the store.

The loop sees only a ``concurrent.futures.Executor`` and a transfer, so it runs
unchanged on a thread pool and on Parsl HTEX.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, field

import numpy as np

from flight_parsl.core.errors import TaskError
from flight_parsl.engine.context import Experiment
from flight_parsl.engine.progress import Progress
from flight_parsl.engine.records import RunRecorder
from flight_parsl.worker.tasks import TaskResult, aggregate_task, relay_task, train_task
from flight_parsl.topology.tree import Topology, hierarchical_bytes, two_tier_bytes
from flight_parsl.transfer.base import Ref, Transfer
from flight_parsl.core.weights import FlatWeights


@dataclass
class RoundSummary:
    """What one round produced (also written to rounds.csv)."""

    round: int
    makespan_s: float
    test_loss: float
    test_acc: float


@dataclass
class WorkerClock:
    """Busy and idle time per worker, from task start/finish times on the worker clocks.

    A worker is idle from finishing one task to starting its next one.
    """

    last_finished: dict[int, float] = field(default_factory=dict)
    busy_s: dict[int, float] = field(default_factory=dict)
    idle_s: dict[int, float] = field(default_factory=dict)

    def record(self, worker: int, started: float, finished: float) -> float:
        """Account one task; returns the idle seconds before it (NaN for a first task)."""
        idle = started - self.last_finished[worker] if worker in self.last_finished else math.nan
        if not math.isnan(idle):
            self.idle_s[worker] = self.idle_s.get(worker, 0.0) + max(idle, 0.0)
        self.busy_s[worker] = self.busy_s.get(worker, 0.0) + (finished - started)
        self.last_finished[worker] = finished
        return idle

    def idle_percent(self) -> dict[int, float]:
        """Idle share of each worker's time between its first start and last finish, in %."""
        out = {}
        for w, busy in self.busy_s.items():
            idle = self.idle_s.get(w, 0.0)
            out[w] = 100.0 * idle / (idle + busy) if idle + busy > 0 else 0.0
        return out


@dataclass
class RunResult:
    """The final model, one summary per round, each worker process's peak RSS, and idle times."""

    weights: FlatWeights
    rounds: list[RoundSummary]
    worker_peak_rss_mb: dict[tuple[str, int], float]
    clock: WorkerClock


def task_row(res: TaskResult, submitted: float, received: float, collect_s: float, idle_s: float) -> dict[str, object]:
    """One tasks.csv row."""
    return {
        "round": res.round,
        "kind": res.kind,
        "node": res.node,
        "worker": "" if res.worker is None else res.worker,
        "host": res.host,
        "pid": res.pid,
        "submitted": submitted,
        "started": res.started,
        "finished": res.finished,
        "received": received,
        "idle_s": idle_s,
        "get_s": res.get_s,
        "deserialize_s": res.deserialize_s,
        "compute_s": res.compute_s,
        "serialize_s": res.serialize_s,
        "put_s": res.put_s,
        "collect_s": collect_s,
        "bytes_in": res.bytes_in,
        "bytes_out": res.bytes_out,
        "samples": res.samples,
        "train_loss": res.train_loss,
        "train_acc": res.train_acc,
        "rss_mb": res.rss_mb,
        "peak_rss_mb": res.peak_rss_mb,
    }


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


@dataclass
class _Job:
    node: str
    submitted: float


class _Round:
    """The tasks of one round on the active subtree, launched as their inputs are ready."""

    def __init__(
        self,
        exp: Experiment,
        executor: Executor,
        transfer: Transfer,
        recorder: RunRecorder,
        progress: Progress,
        tree: Topology,
        round_idx: int,
        weights: FlatWeights,
        broadcast: str,
        clock: WorkerClock,
    ) -> None:
        self.exp, self.executor, self.transfer = exp, executor, transfer
        self.recorder, self.progress, self.tree = recorder, progress, tree
        self.r, self.broadcast, self.clock = round_idx, broadcast, clock
        self.pending: dict[Future[TaskResult], _Job] = {}
        self.waiting = {n.name: set(tree.children(n.name)) for n in tree.aggregators}
        self.child_results: dict[str, list[tuple[Ref, int]]] = {n.name: [] for n in tree.aggregators}
        self.root_mean = exp.strategy.aggregator(weights)  # type: ignore[union-attr]
        self.root_children = len(tree.children(tree.root.name))
        self.trained = 0
        self.edge_bytes = 0
        self.bytes_to_workers = self.bytes_from_workers = 0
        self.losses: list[float] = []
        self.accs: list[float] = []
        self.peaks: dict[tuple[str, int], float] = {}
        self.aggregate_s = 0.0

    # launching -----------------------------------------------------------------

    def _submit(self, node: str, fn: object, *args: object) -> None:
        future = self.executor.submit(fn, *args)  # type: ignore[arg-type]
        self.pending[future] = _Job(node, time.time())

    def send_down(self, node: str, ref: Ref) -> None:
        """Start ``node``'s part of the round with the model reference ``ref``."""
        kind = self.tree.nodes[node].kind
        if kind == "worker":
            w = self.tree.nodes[node].worker_index
            assert w is not None
            self._submit(node, train_task, ref, self.r, w, self.exp.workload, self.exp.settings_for(self.r, w))
        elif self.broadcast == "tree":
            self._submit(node, relay_task, ref, self.r, node)
        else:
            for child in self.tree.children(node):
                self.send_down(child, ref)

    def start(self, ref: Ref) -> None:
        for child in self.tree.children(self.tree.root.name):
            self.send_down(child, ref)

    # results -------------------------------------------------------------------

    def run(self, timeout: float | None) -> FlatWeights:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.root_mean.count < self.root_children:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = wait(list(self.pending), timeout=left, return_when=FIRST_COMPLETED)
            if not done:
                raise TaskError(
                    f"round {self.r + 1} timed out after {timeout} s with "
                    f"{self.trained}/{len(self.tree.workers)} workers done"
                )
            for future in done:
                self._on_done(future, self.pending.pop(future))
        t0 = time.perf_counter()
        result = self.root_mean.result()
        self.aggregate_s += time.perf_counter() - t0
        return result

    def _on_done(self, future: Future[TaskResult], job: _Job) -> None:
        try:
            res = future.result()
        except Exception as exc:
            node = self.tree.nodes[job.node]
            what = f"worker {node.worker_index}" if node.kind == "worker" else f"aggregator {job.node}"
            raise TaskError(f"{what} failed in round {self.r + 1}: {type(exc).__name__}: {exc}") from exc
        received = time.time()
        self.transfer.adopt(res.payload)
        process = (res.host, res.pid)
        self.peaks[process] = max(self.peaks.get(process, 0.0), res.peak_rss_mb)
        idle = math.nan
        if res.kind == "train":
            assert res.worker is not None
            idle = self.clock.record(res.worker, res.started, res.finished)
            self.trained += 1
            self.bytes_to_workers += res.bytes_in
            self.bytes_from_workers += res.bytes_out
            self.losses.append(res.train_loss)
            self.accs.append(res.train_acc)
        # Edges: a train/relay task read its parent's model; an aggregate task read its children.
        self.edge_bytes += res.bytes_in
        collect_s = math.nan
        if res.kind == "relay":
            for child in self.tree.children(job.node):
                self.send_down(child, res.payload)
        else:
            collect_s = self._pass_up(job.node, res)
        self.recorder.task_row(task_row(res, job.submitted, received, collect_s, idle))
        self.progress.task_done(self.r, self.trained, len(self.tree.workers))

    def _pass_up(self, node: str, res: TaskResult) -> float:
        """Hand a result to its parent: fold it at the root, or queue it at an aggregator."""
        parent = self.tree.parent(node)
        assert parent is not None
        if parent == self.tree.root.name:
            t0 = time.perf_counter()
            weights = self.transfer.collect(res.payload)
            collect_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            self.root_mean.add(weights, res.samples)
            self.aggregate_s += time.perf_counter() - t0
            self.edge_bytes += res.payload.nbytes
            return collect_s
        self.child_results[parent].append((res.payload, res.samples))
        self.waiting[parent].discard(node)
        if not self.waiting[parent]:
            refs, samples = zip(*self.child_results.pop(parent))
            self._submit(parent, aggregate_task, list(refs), list(samples), self.r, parent)
        return math.nan


def run_sync(
    exp: Experiment,
    executor: Executor,
    transfer: Transfer,
    recorder: RunRecorder,
    progress: Progress,
    topology: Topology,
    rounds: int,
    seed: int,
    round_timeout: float | None = None,
    broadcast: str = "direct",
) -> RunResult:
    """Run ``rounds`` synchronous rounds over ``topology``.

    Raises:
        TaskError: a task failed or a round timed out. Rows of finished tasks and
            rounds are already on disk.
    """
    rng = np.random.default_rng(seed)
    weights = exp.initial
    summaries: list[RoundSummary] = []
    peaks: dict[tuple[str, int], float] = {}
    clock = WorkerClock()
    all_workers = list(range(topology.num_workers))
    size = len(weights.to_bytes())  # payload bytes of one model, for the cost model
    for r in range(rounds):
        start = time.time()
        participants = exp.strategy.select(r, all_workers, rng)  # type: ignore[union-attr]
        tree = topology.active_subtree(participants)
        t0 = time.perf_counter()
        ref = transfer.publish(weights, r)
        publish_s = time.perf_counter() - t0
        progress.start_round(r, len(participants))
        rnd = _Round(exp, executor, transfer, recorder, progress, tree, r, weights, broadcast, clock)
        rnd.start(ref)
        weights = rnd.run(round_timeout)
        transfer.end_round(r)
        end = time.time()
        if r == rounds - 1:
            recorder.mark("end", end)  # the last aggregate is ready; evaluation is not timed
        for process, peak in rnd.peaks.items():
            peaks[process] = max(peaks.get(process, 0.0), peak)
        t0 = time.perf_counter()
        loss, acc = exp.evaluate(weights) if exp.evaluate else (math.nan, math.nan)
        eval_s = time.perf_counter() - t0
        recorder.round_row(
            {
                "round": r,
                "start": start,
                "end": end,
                "makespan_s": end - start,
                "publish_s": publish_s,
                "aggregate_s": rnd.aggregate_s,
                "eval_s": eval_s,
                "participants": len(participants),
                "bytes_to_workers": rnd.bytes_to_workers,
                "bytes_from_workers": rnd.bytes_from_workers,
                "bytes_moved": rnd.bytes_to_workers + rnd.bytes_from_workers,
                "edge_bytes": rnd.edge_bytes,
                "modeled_two_tier_bytes": two_tier_bytes(tree, size),
                "modeled_hierarchical_bytes": hierarchical_bytes(tree, size),
                "test_loss": loss,
                "test_acc": acc,
                "train_loss": _mean(rnd.losses),
                "train_acc": _mean(rnd.accs),
            }
        )
        progress.end_round(r, rnd.trained, len(participants), end - start, loss, acc)
        summaries.append(RoundSummary(r, end - start, loss, acc))
    return RunResult(weights, summaries, peaks, clock)

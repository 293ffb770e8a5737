"""Asynchronous federated learning (FedAsync, FedBuff) on a flat topology.

Every slot always has work: as soon as one client's update is in, the next client
is dispatched with the newest global model. Clients are dispatched from a queue
(seeded order, the longest-waiting first), one client per task, and at most one
task per slot is out at a time. The strategy sees each update with its staleness
(how many global models were made since the client's copy) and says whether it
produced a new global model (FedAsync: every update; FedBuff: every K).

The budget counts updates: ``rounds`` windows of as many updates as a synchronous
round samples clients, so the two modes compare at equal local work. rounds.csv
gets one row per window, with the model evaluated at that point; tasks.csv has the
window in ``round`` and the global model version the client started from in
``model_version``. A failed update is recorded and its client goes back to the
queue; a window in which fewer than ``policy.min_fraction`` of the attempted
updates succeeded stops the run. Each published model version is released once no
task holds it.

With a codec (``transfer.codec``, :mod:`flight_parsl.transfer.codecs`) a client sends its
update, the delta from the model version it trained from, encoded (with
``transfer.error_feedback`` plus its residual: one client per task, so textbook error
feedback); the coordinator decodes it and hands the strategy what it expects: FedBuff
the delta itself, FedAsync the client's model rebuilt on the exact weights of that
version, which it keeps while any task holds the version. ``transfer.codec_down``
encodes each published version. A client's momentum and residual are written under
the task's version and become the ones it starts from only when its update is folded
(:class:`~flight_parsl.transfer.state.VersionBook`).

After every window the loop writes a checkpoint (:mod:`flight_parsl.engine.checkpoint`):
the model and its version, the strategy's buffer, the client queue, the work still
out (its clients and the model versions they started from, re-issued first when the
run resumes), each client's accepted momentum (``train.keep_momentum``) and residual
(``transfer.error_feedback``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from flight_parsl.core.errors import RoundError
from flight_parsl.core.types import Failure, Slot, TaskResult
from flight_parsl.core.weights import FlatWeights
from flight_parsl.engine import checkpoint
from flight_parsl.engine.context import RunContext
from flight_parsl.engine.events import CompletionQueue, Pending, SlotClock
from flight_parsl.engine.records import failure_rows, result_rows, round_row
from flight_parsl.engine.outcomes import (
    LoopResult,
    RoundStats,
    RoundSummary,
    classify,
    describe,
    lost_slot,
    release_late,
)
from flight_parsl.fl.population import sample_size
from flight_parsl.fl.protocols import as_async
from flight_parsl.transfer.base import Ref
from flight_parsl.transfer.codecs import encode, make_codec, unpack
from flight_parsl.transfer.state import VersionBook
from flight_parsl.worker.tasks import train_task


@dataclass
class _Job:
    client: int
    version: int
    task: int
    delta: bool = False  # the client sends a delta of its own (FedBuff), not a model


@dataclass
class _Window(RoundStats):
    """Measurements of one window of updates."""

    start: float = field(default_factory=time.time)
    publish_s: float = 0.0
    updates: int = 0
    failed: int = 0


class AsyncLoop:
    """The coordinator's state for one asynchronous run."""

    def __init__(self, ctx: RunContext) -> None:
        cfg = ctx.cfg
        self.ctx = ctx
        self.strategy = as_async(ctx.exp.strategy)
        s = cfg.strategy
        self.window_size = sample_size(cfg.workers, s.participation, s.clients_per_round)
        self.total = cfg.rounds * self.window_size
        self.concurrency = max(1, min(ctx.slots, cfg.workers))
        order = np.random.default_rng(cfg.seed).permutation(cfg.workers)
        self.waiting_clients: deque[int] = deque(int(c) for c in order)
        self.weights = ctx.exp.initial
        self.version = 0
        self.refs: dict[int, Ref] = {}
        self.models: dict[int, FlatWeights] = {}  # the exact weights of each published version
        self.holders: dict[int, int] = {}
        self.queue: CompletionQueue[_Job] = CompletionQueue(ctx.executor)
        self.clock = SlotClock()
        self.peaks: dict[Slot, float] = {}
        self.folded = 0
        self.next_task = 0
        self.window = _Window()
        self.summaries: list[RoundSummary] = []
        self.windows = 0  # windows closed, in this segment and the ones before
        self.slowest: float | None = None
        keep, feedback = cfg.train.keep_momentum, cfg.transfer.error_feedback
        self.versions = (
            VersionBook(ctx.state, momentum=keep, residuals=feedback) if ctx.state is not None and (keep or feedback)
            else None
        )
        self.comp = ctx.compression
        self.model_bytes = len(ctx.exp.initial.to_bytes())  # one float32 model's payload, for the ratio
        self.reissue: list[tuple[int, int]] = []  # (client, model version) still out at the checkpoint
        self.handling: Pending[_Job] | None = None  # the outcome being handled
        if ctx.resume is not None:
            self._restore(ctx.resume)

    # checkpoint --------------------------------------------------------------------

    def _checkpoint(self) -> None:
        """Write the state after the window just closed (see the module docstring)."""
        out = sorted(self.queue.outstanding.values(), key=lambda p: p.tag.task)
        held = {p.tag.version for p in out} - {self.version}
        strategy_state = getattr(self.strategy, "state", None)
        loop = {
            "version": self.version,
            "folded": self.folded,
            "next_task": self.next_task,
            "waiting": list(self.waiting_clients),
            "out": [(p.tag.client, p.tag.version) for p in out],
            "models": {v: self.models[v] for v in sorted(held)},
            "strategy": strategy_state() if strategy_state is not None else {},
            "momentum": self.versions.snapshot() if self.versions is not None else {},
            "residuals": self.versions.residual_snapshot() if self.versions is not None else {},
        }
        point = checkpoint.Checkpoint(self.windows, self.weights, {}, self.slowest, self.ctx.checkpoint_hash,
                                      mode="async", loop=loop)
        checkpoint.save(self.ctx.recorder.dir, point)

    def _restore(self, point: checkpoint.Checkpoint) -> None:
        loop = point.loop
        self.weights, self.windows, self.slowest = point.weights, point.next_round, point.slowest_s
        self.version, self.folded, self.next_task = loop["version"], loop["folded"], loop["next_task"]
        self.waiting_clients = deque(loop["waiting"])
        load = getattr(self.strategy, "load", None)
        if load is not None:
            load(loop["strategy"])
        if self.versions is not None:
            self.versions.restore(loop["momentum"], loop.get("residuals"))
        for v, weights in loop["models"].items():  # the versions the re-issued work started from
            self.refs[v] = self.ctx.transfer.publish(self._broadcast(weights), v)
            self.models[v] = weights
            self.holders[v] = 0
        self.reissue = list(loop["out"])
        self.ctx.progress.say(f"resuming at window {self.windows + 1} of {self.ctx.cfg.rounds}")
    # models ------------------------------------------------------------------------

    def _broadcast(self, weights: FlatWeights) -> FlatWeights:
        """A model version as published: encoded by ``transfer.codec_down``, when set."""
        comp = self.comp
        if comp is None or comp.down == "none":
            return weights
        return encode(make_codec(comp.down, comp.block), weights, comp.block)

    def _current_ref(self) -> Ref:
        if self.version not in self.refs:
            t0 = time.perf_counter()
            self.refs[self.version] = self.ctx.transfer.publish(self._broadcast(self.weights), self.version)
            self.models[self.version] = self.weights
            self.holders[self.version] = 0
            self.window.publish_s += time.perf_counter() - t0
        return self.refs[self.version]

    def _release(self, version: int) -> None:
        """Drop a model version no task holds any more (the current one stays)."""
        if version != self.version and self.holders.get(version) == 0:
            del self.holders[version], self.refs[version], self.models[version]
            self.ctx.transfer.end_round(version)

    # dispatch ----------------------------------------------------------------------

    def _fill(self) -> None:
        """Dispatch clients while slots are free and updates are still due (first, after a
        resume, the work that was out at the checkpoint, from the model versions it had)."""
        while self.reissue:
            client, version = self.reissue.pop(0)
            self._dispatch(client, version)
        while len(self.queue) < self.concurrency and self.folded + len(self.queue) < self.total and self.waiting_clients:
            self._dispatch(self.waiting_clients.popleft(), None)

    def _dispatch(self, client: int, version: int | None) -> None:
        if version is None or version == self.version:
            ref, version = self._current_ref(), self.version
        else:
            ref = self.refs[version]
        settings = self.ctx.exp.settings_for(self.folded, client)
        job = _Job(client, version, self.next_task, settings.return_delta)
        self.next_task += 1
        self.holders[version] += 1
        state = self.ctx.state if self.versions is None else self.versions.view([client], job.task, 0)
        self.queue.submit(
            job, train_task, ref, self.folded // self.window_size, "coordinator", [(client, settings)],
            self.ctx.exp.workload, None, state, self.ctx.faults, 0, self.comp,
        )
        self.window.tasks += 1

    def _done_with(self, job: _Job) -> None:
        self.holders[job.version] -= 1
        self._release(job.version)
        self.waiting_clients.append(job.client)

    # outcomes ----------------------------------------------------------------------

    def _on_result(self, item: Pending[_Job], res: TaskResult) -> None:
        job, ctx = item.tag, self.ctx
        received = time.time()
        res.round = self.folded // self.window_size  # the window the update is folded in
        (ref, weight), = res.outputs
        t0 = time.perf_counter()
        update = ctx.transfer.collect(ref)
        collect_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if self.comp is not None and self.comp.deltas:  # an encoded delta from the model of job.version
            update = unpack(update)  # decoding counts as aggregation
            if not job.delta:  # FedAsync mixes in the client's model
                base = self.models[job.version]
                update = base.like(np.add(base.buffer, update.buffer, dtype=np.float32))
        new = self.strategy.on_update(self.weights, update, weight, self.version - job.version)
        del update
        if new is not None:
            self.weights = new
            self.version += 1
        self.window.aggregate_s += time.perf_counter() - t0
        if self.versions is not None:
            self.versions.accept([job.client], job.task, 0)
        self._done_with(job)
        self._release(self.version - 1)
        idle = self.clock.record(res.slot, res.started, res.finished)
        self.peaks[res.slot] = max(self.peaks.get(res.slot, 0.0), res.peak_rss_mb)
        w = self.window
        w.count_train(res)
        w.updates += 1
        self.folded += 1
        ctx.recorder.task_rows(result_rows(res, job.task, 0, item.submitted, received, collect_s, idle, job.version))

    def _on_failure(
        self, item: Pending[_Job], kind: str, message: str, slot: tuple[str, int | None] | None = None
    ) -> None:
        job = item.tag
        failure = Failure(self.folded // self.window_size, (job.client,), kind, message, 0, "coordinator")
        self.ctx.recorder.task_rows(
            failure_rows(failure, "train", job.task, item.submitted, time.time(), job.version, slot)
        )
        self.window.failed += 1
        if self.versions is not None:  # what the failed task wrote is never read
            self.versions.discard([job.client], job.task, [0])
        self._done_with(job)
        attempted = self.window.updates + self.window.failed
        if self.window.failed > (1.0 - self.ctx.policy.min_fraction) * max(attempted, self.window_size):
            raise RoundError(
                f"window {failure.round + 1}: {self.window.failed} of {attempted} updates failed, more than "
                f"policy.min_fraction={self.ctx.policy.min_fraction} allows (last: {kind}: {message})"
            )

    def _close_window(self) -> None:
        """Evaluate the current model and write the window's rounds.csv row."""
        ctx, w = self.ctx, self.window
        index = self.windows
        end = time.time()
        if self.folded == self.total:
            ctx.recorder.mark("end", end)
        t0 = time.perf_counter()
        loss, acc = ctx.exp.evaluate(self.weights) if ctx.exp.evaluate else (math.nan, math.nan)
        eval_s = time.perf_counter() - t0
        ctx.recorder.round_row(
            round_row(
                index, w.start, end, w, test_loss=loss, test_acc=acc, sampled=w.updates + w.failed,
                participants=w.updates, failed=w.failed, publish_s=w.publish_s, eval_s=eval_s, retries=w.failed,
                compression_ratio=w.raw_up(self.model_bytes) / w.bytes_from if w.bytes_from else math.nan,
            )
        )
        ctx.progress.end_round(index, w.updates, self.window_size, end - w.start, loss, acc)
        self.summaries.append(RoundSummary(index, end - w.start, loss, acc, w.updates, w.failed))
        self.windows += 1
        self.window = _Window()
        if ctx.cfg.round.checkpoint:
            self._checkpoint()
        if self.folded < self.total:
            ctx.progress.start_round(index + 1, self.window_size)

    def release_outstanding(self) -> None:
        """The run stops mid-way: release what every update still out (or done and not yet
        folded) stores, now or when its task ends (before the channel closes: the executor's
        shutdown waits for its tasks), so that an external Redis keeps no key of the run."""
        release = partial(release_late, self.ctx.transfer)
        for item in [*self.queue.abandon(), *([self.handling] if self.handling is not None else [])]:
            item.future.add_done_callback(release)
        self.handling = None

    def run(self) -> LoopResult:
        try:
            return self._run()
        except BaseException:  # Ctrl-C, SIGTERM, a failure: what the tasks still out stored is released
            self.release_outstanding()
            raise

    def _run(self) -> LoopResult:
        ctx = self.ctx
        if self.folded < self.total:
            ctx.progress.start_round(self.windows, self.window_size)
        self._fill()
        while self.folded < self.total:
            deadline_s = ctx.policy.deadline(self.slowest, self.window_size / self.concurrency)
            item = self.queue.next(deadline_s)
            if item is None:
                for late in self.queue.abandon():
                    late.future.add_done_callback(partial(release_late, ctx.transfer))
                    self._on_failure(late, "deadline", f"no update arrived within {deadline_s:.1f} s")
            else:
                self.handling = item  # out of the queue, not yet folded: released if the run stops here
                try:
                    res = item.future.result()
                except Exception as exc:
                    self.handling = None
                    self._on_failure(item, classify(exc), describe(exc), lost_slot(exc, ctx.injector))
                else:
                    self._on_result(item, res)
                    self.handling = None
                    ctx.progress.task_done(self.windows, self.window.updates, self.window_size)
                    if self.window.updates == self.window_size:
                        self.slowest = max(self.slowest or 0.0, time.time() - self.window.start)
                        self._close_window()
            self._fill()
        for version in list(self.holders):
            self.holders[version] = 0
            self._release(version)
        return LoopResult(self.weights, self.summaries, self.peaks, self.clock)


def run_async(ctx: RunContext) -> LoopResult:
    """Run ``rounds x window`` asynchronous updates (see the module docstring).

    Raises:
        RoundError: too many updates of a window failed. Finished rows stay on disk.
    """
    return AsyncLoop(ctx).run()

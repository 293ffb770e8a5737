"""The run directory: resolved config, per-round and per-task tables, and a summary.

Layout of a run directory::

    config.yaml    the resolved experiment config
    rounds.csv     one row per round (async: per window of updates); built by :func:`round_row`
    tasks.csv      one row per client per task attempt (and per aggregate / relay task);
                   built by :func:`result_rows`, :func:`failure_rows`, :func:`dropped_rows`
    summary.json   timestamps (start, dfk_start_done, priming_done, end), derived
                   durations, status and totals; rewritten at each milestone; the
                   start-up phases ``startup_phases`` and their ``startup_marks``
                   (:mod:`flight_parsl.engine.startup`)
    checkpoint.pkl the state after the last finished round (flight_parsl.engine.checkpoint)
    faults.csv     injected faults, when a run injects some (flight_parsl.processes.injector)

Rows are written and flushed as they happen, so a crash loses nothing finished.
Every table counts rounds from 1 (``round``), as the console and ``@ROUND`` fault specs
do; the loops count from 0 and the row builders here add the 1.

A resumed run appends to the same tables: rows of rounds past the checkpoint are
dropped from rounds.csv (those rounds run again), tasks.csv keeps every attempt
and numbers each stretch of the run in ``segment`` (0 before the first resume).
summary.json lists each stretch in ``segments`` (its own start, dfk_start_done,
priming_done, end, start2end, prime2end); the top-level ``start2end`` and ``prime2end``
span all of them, from the first segment's start (or priming) to the last one's end,
the time between segments included, and ``start2end_spans`` says so.

rounds.csv columns (empty: not measured in this mode):

- ``round``: the round, from 1 (async: the window of updates; decentralized: the round).
- ``start``: Unix time the round started (before sampling).
- ``end``: Unix time its aggregate was ready (async: the window's last update folded).
- ``makespan_s``: ``end - start``.
- ``deadline_s``: the round's deadline (sync).
- ``publish_s``: publishing the global model (decentralized: the round's channel).
- ``aggregate_s``: folding results and the strategy's aggregate on the coordinator.
- ``eval_s``: evaluating the global model (not part of the makespan).
- ``sampled``: clients sampled (async: updates attempted in the window).
- ``participants``: clients whose results were folded.
- ``failed``: ``sampled - participants``.
- ``tasks``: tasks submitted: train, aggregate, relay, retries included.
- ``retries``: tasks submitted again (async: failed updates).
- ``bytes_to_workers``: the sum of the round's train tasks' ``task_bytes_in``.
- ``bytes_from_workers``: the sum of the round's train tasks' ``task_bytes_out``.
- ``bytes_moved``: ``bytes_to_workers + bytes_from_workers``.
- ``edge_bytes``: bytes over every edge of the tree (flat: ``bytes_moved``).
- ``modeled_two_tier_bytes``: the cost model's bytes of a two-tier tree for the round (sync).
- ``modeled_hierarchical_bytes``: the cost model's bytes of the round's active tree (sync).
- ``compression_ratio``: bytes the round's train tasks would have sent up as float32 models
  (their results x one model's payload) over ``bytes_from_workers`` (sync and async windows; 1.0 without a codec).
- ``test_loss``: the global model's test loss (decentralized: mean over clients of their own).
- ``test_acc``: the global model's test accuracy (decentralized: mean over clients of their own).
- ``train_loss``: mean over the round's clients of their local training loss.
- ``train_acc``: mean over the round's clients of their local training accuracy.
- ``global_train_loss``: the global model's loss on the training set (sync, when asked for).
- ``global_train_acc``: the global model's accuracy on the training set (sync, when asked for).
- ``members``: clients that could be sampled (sync: those not removed for missing rounds).
- ``reported``: clients whose results were folded (sync; equals ``participants``).
- ``late``: clients whose work was still out when the round closed (sync).
- ``stale_folded``: late clients of the round before folded stale into this one (sync).
- ``removed``: clients removed from the sample after this round, space separated (sync).
- ``readmitted``: clients re-admitted before this round, space separated (sync).
- ``killed_slots``: worker processes the fault injector killed during the round (sync).
- ``live_slots``: worker processes alive at the round's end (sync, with ``faults.kill_slots``).
- ``cold_slots``: tasks recorded while the round was open that were the first on a slot the
  warm-up had not primed (a worker process Parsl restarted): see ``task_cold``.
- ``proxy_test_acc``: mean over clients of the shared model's test accuracy (decentralized).
- ``epsilon``: the largest client DP epsilon so far (decentralized with DP).
- ``coord_rss_mb``: the coordinator process's resident memory (MiB) when the row was written
  (every mode): flat over a long run unless the coordinator leaks.
- ``link_bytes``: bytes each virtual host's link carried during the round (several sites on
  virtual hosts, every mode), from the kernel's counters of the bridge side of its veth, read
  when the row is written: JSON ``{"HOST": {"to_host": BYTES, "from_host": BYTES}, ...}``,
  every protocol counted (the model, Redis, TLS, HTEX's task messages, TCP/IP). Round 1
  counts from the end of the warm-up, each later round from the row before; empty without
  virtual hosts. summary.json ``site_links`` has the whole run's.

tasks.csv columns. A task runs one or more clients; it has one row per client. Columns
named ``task_*`` are the task's: every row of a packed task repeats them, so sum them
over distinct ``(segment, round, task, attempt)``, never over rows. The other columns
are the row's own (its client's) or labels.

- ``round``: the round, from 1 (async: the window the update was folded in).
- ``kind``: ``train``, ``aggregate`` or ``relay``.
- ``task``: the task's id: train tasks count up from 0 over the run (a retry gets a new id),
  a round's aggregate and relay tasks count down from -1.
- ``attempt``: 0 for the first try, then 1, 2 ... for retries.
- ``node``: the tree node the task reports to (train) or is (aggregate / relay).
- ``client``: the client of this row (empty for aggregate / relay tasks).
- ``status``: ``ok``, ``error``, ``lost`` (its worker process died), ``late``, ``deadline``, ``dropped``.
- ``error``: the failure's message.
- ``model_version``: the global model version the client started from (async).
- ``host``: the host of the slot that ran the task (lost: the host of the worker that died).
- ``pid``: the slot's process id (lost: the pid of the worker process that died, where known).
- ``thread``: the slot's thread (thread backend).
- ``block``: the Parsl block of the slot (HTEX's block id: 0 for the first block, then 1, 2 ...
  for the blocks Parsl starts later, a replacement after a walltime included; summary.json's
  ``block_jobs`` maps ``LABEL/BLOCK`` to its batch job); empty off Parsl HTEX.
- ``accelerator``: the accelerator the slot was pinned to: its ``CUDA_VISIBLE_DEVICES``, which
  Parsl sets per worker from the site's ``available_accelerators``; empty when unset.
- ``site``: the site the task ran at (several sites).
- ``task_submitted``: Unix time the coordinator submitted the task.
- ``task_started``: Unix time the task started on its slot (slot clock).
- ``task_finished``: Unix time the task finished on its slot (slot clock).
- ``task_received``: Unix time the coordinator had its outcome.
- ``task_idle_s``: the slot's idle time before the task started.
- ``task_get_s``: reading the task's inputs from the transfer.
- ``task_deserialize_s``: turning them into weights.
- ``task_compute_s``: the task's compute (all its clients).
- ``task_serialize_s``: serializing its outputs.
- ``task_put_s``: writing its outputs to the transfer.
- ``task_encode_s``: encoding its outputs with the run's codec, error feedback included (``transfer.codec``).
- ``task_decode_s``: decoding its encoded inputs (the broadcast, an aggregator's children).
- ``task_collect_s``: the coordinator reading the task's outputs.
- ``task_bytes_in``: bytes the task read (the model once, whatever its number of clients; encoded
  when ``transfer.codec_down`` is set).
- ``task_bytes_out``: bytes the task wrote (one folded partial, or one result per client; the
  encoded payloads with a codec).
- ``task_clients``: the number of clients the task ran (rows it has).
- ``samples``: the client's training samples (aggregate: the partial's weight).
- ``client_started``: Unix time the client's training started (slot clock).
- ``client_finished``: Unix time it finished.
- ``client_s``: the client's compute time.
- ``train_loss``: the client's local training loss.
- ``train_acc``: the client's local training accuracy.
- ``task_rss_mb``: the slot process's RSS when the task ended.
- ``task_peak_rss_mb``: the slot process's peak RSS so far.
- ``straggler``: 1 when the client was slowed down (or dropped) as a straggler.
- ``epochs``: the client's local epochs this round.
- ``task_rtt_s``: ``task_received - task_submitted``.
- ``task_cold``: 1 when the task was the first one on its slot (host, pid) that the warm-up did
  not reach: a worker process Parsl started after the warm-up (a restart after a kill) pays its
  imports and data loading in this task; 0 on a primed slot, a slot that primed as it started
  included (a block that came after the warm-up on a site with a ``strategy``: see
  :mod:`flight_parsl.execution.primed_pool`); empty for work that ran on no slot.
- ``task_device``: the torch device the task's clients trained on: ``cuda:0`` (the slot's own GPU
  where Parsl pinned one), another ``torch.accelerator`` device, or ``cpu``; empty when the task
  trained nothing (``train.mode=none``, aggregate and relay tasks, decentralized peers, which
  train on the CPU).
- ``segment``: the stretch of the run: 0, then 1 after the first ``--resume`` ...
- ``private_test_acc``: the client's private (or only) model on its test set (decentralized).
- ``proxy_test_acc``: the client's shared model on its test set (decentralized).
- ``epsilon``: the client's DP epsilon so far (decentralized).
- ``client_bytes_in``: bytes the client read: received model and state (decentralized).
- ``client_bytes_out``: bytes the client wrote: sent model and state (decentralized).
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import IO, Any

from flight_parsl.config.experiment import ExperimentConfig, save_yaml
from flight_parsl.core.memory import rss_mb
from flight_parsl.core.stopping import deferred
from flight_parsl.core.types import Failure, TaskResult
from flight_parsl.engine.outcomes import RoundStats, mean_finite
from flight_parsl.processes.batch_job import batch_job_info

ROUND_COLUMNS = (
    "round",
    "start",
    "end",
    "makespan_s",
    "deadline_s",
    "publish_s",
    "aggregate_s",
    "eval_s",
    "sampled",
    "participants",
    "failed",
    "tasks",
    "retries",
    "bytes_to_workers",
    "bytes_from_workers",
    "bytes_moved",
    "edge_bytes",
    "modeled_two_tier_bytes",
    "modeled_hierarchical_bytes",
    "compression_ratio",
    "test_loss",
    "test_acc",
    "train_loss",
    "train_acc",
    "global_train_loss",
    "global_train_acc",
    "members",
    "reported",
    "late",
    "stale_folded",
    "removed",
    "readmitted",
    "killed_slots",
    "live_slots",
    "cold_slots",
    "proxy_test_acc",
    "epsilon",
    "coord_rss_mb",
    "link_bytes",
)

# One row per client per task attempt; ``task_*`` columns are the task's and repeat on each of its rows.
TASK_COLUMNS = (
    "round",
    "kind",
    "task",
    "attempt",
    "node",
    "client",
    "status",
    "error",
    "model_version",
    "host",
    "pid",
    "thread",
    "block",
    "accelerator",
    "site",
    "task_submitted",
    "task_started",
    "task_finished",
    "task_received",
    "task_idle_s",
    "task_get_s",
    "task_deserialize_s",
    "task_compute_s",
    "task_serialize_s",
    "task_put_s",
    "task_encode_s",
    "task_decode_s",
    "task_collect_s",
    "task_bytes_in",
    "task_bytes_out",
    "task_clients",
    "samples",
    "client_started",
    "client_finished",
    "client_s",
    "train_loss",
    "train_acc",
    "task_rss_mb",
    "task_peak_rss_mb",
    "straggler",
    "epochs",
    "task_rtt_s",
    "task_cold",
    "task_device",
    "segment",
    "private_test_acc",
    "proxy_test_acc",
    "epsilon",
    "client_bytes_in",
    "client_bytes_out",
)

#: Columns of tasks.csv that hold one value per task, repeated on every client row of a packed
#: task (the ``task_*`` columns): sum them over distinct tasks, not over rows.
TASK_LEVEL = tuple(c for c in TASK_COLUMNS if c.startswith("task_"))

TIMESTAMPS = ("start", "dfk_start_done", "priming_done", "end")

#: A key of result rows (never a column): the task's slot primed as it started (see
#: :mod:`flight_parsl.execution.primed_pool`), so its first task is not cold.
PRIMED_AT_START = "_primed_at_start"


def default_run_dir(cfg: ExperimentConfig, root: str | Path = "runs") -> Path:
    """A fresh timestamped directory name under ``root``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{cfg.model.name}-n{cfg.workers}-{cfg.train.mode}"
    path, i = base, 1
    while path.exists():
        path = base.with_name(f"{base.name}-{i}")
        i += 1
    return path


class _Table:
    """A CSV file that is appended to and flushed row by row.

    ``keep``: continue an existing file (a resumed run), keeping its rows for which
    ``keep(row)`` holds; the header stays the file's own.
    """

    def __init__(self, path: Path, columns: tuple[str, ...], keep: Callable[[dict[str, str]], bool] | None = None) -> None:
        self.path = path
        self.rows = 0
        if keep is not None and path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                columns = tuple(reader.fieldnames or columns)
                kept = [row for row in reader if keep(row)]
            tmp = path.with_name(path.name + ".tmp")
            with deferred():  # never a .tmp left behind by a stop signal
                with tmp.open("w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=columns)
                    writer.writeheader()
                    writer.writerows(kept)
                tmp.replace(path)
            self._file: IO[str] = path.open("a", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=columns, extrasaction="ignore")
            self.rows = len(kept)
            return
        self._file = path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=columns, extrasaction="raise")
        self._writer.writeheader()
        self._file.flush()

    def write(self, row: dict[str, Any]) -> None:
        self.write_many([row])

    def write_many(self, rows: list[dict[str, Any]]) -> None:
        """Append rows and flush once; a stop signal waits, so that ``rows`` counts what is on disk."""
        with deferred():
            self._writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
            self._file.flush()
            self.rows += len(rows)

    def close(self) -> None:
        self._file.close()


def _cell(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


class RunRecorder:
    """Writes one run directory."""

    def __init__(self, out: str | Path, cfg: ExperimentConfig, resume_round: int | None = None) -> None:
        """Open a new run directory, or with ``resume_round`` (0-based: the rounds already done)
        continue one from that round."""
        self.dir = Path(out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment = 0
        self._slots: set[tuple[str, int]] | None = None  # slots seen (primed, or ran a task); None: not known
        self._cold = 0  # cold tasks since the last round row
        self._links: Callable[[], dict[str, dict[str, int]]] | None = None  # the virtual hosts' link counters
        self._link_base: dict[str, dict[str, int]] = {}  # their values at the last round row
        if resume_round is None:
            save_yaml(cfg, self.dir / "config.yaml")
            self.rounds = _Table(self.dir / "rounds.csv", ROUND_COLUMNS)
            self.tasks = _Table(self.dir / "tasks.csv", TASK_COLUMNS)
            self.summary: dict[str, Any] = {"status": "running", **batch_job_info()}
            self.summary["segments"] = [{"segment": 0, "first_round": 1}]
            self.mark("start")
            return
        old = self.dir / "summary.json"
        self.summary = json.loads(old.read_text()) if old.is_file() else {}
        self.segment = int(self.summary.get("resumes", 0)) + 1
        # rounds.csv counts from 1: rounds 1 .. resume_round are done and stay
        self.rounds = _Table(self.dir / "rounds.csv", ROUND_COLUMNS, lambda row: int(row["round"]) <= resume_round)
        self.tasks = _Table(self.dir / "tasks.csv", TASK_COLUMNS, lambda row: True)
        segments = self.summary.get("segments")
        if not isinstance(segments, list):  # a run directory from before segments were recorded
            segments = [{"segment": 0, **{k: self.summary[k] for k in TIMESTAMPS if k in self.summary}}]
            _derive(segments[0])
        segments.append({"segment": self.segment, "first_round": resume_round + 1})
        for key in ("end", "start2end", "prime2end", "error"):
            self.summary.pop(key, None)
        self.summary.update(status="running", resumes=self.segment, resumed_from_round=resume_round + 1,
                            segments=segments, **batch_job_info())
        self.summary.setdefault("resumed_at", []).append(time.time())
        self.summary.setdefault("start", time.time())
        self.mark("start")

    def mark(self, event: str, when: float | None = None) -> None:
        """Record a timestamp (one of TIMESTAMPS) and rewrite summary.json.

        The current segment gets every timestamp; the top level keeps the first segment's
        ``start``, ``dfk_start_done`` and ``priming_done`` and the last one's ``end``, so that
        ``start2end`` and ``prime2end`` span the whole run."""
        when = time.time() if when is None else when
        segments = self.summary.get("segments")
        if event in TIMESTAMPS and segments:
            segments[-1][event] = when
            _derive(segments[-1])
        if event == "end" or self.segment == 0 or event not in TIMESTAMPS:
            self.summary[event] = when
        else:
            self.summary.setdefault(event, when)
        _derive(self.summary)
        if "start2end" in self.summary:
            self.summary["start2end_spans"] = (
                "the run: one segment" if self.segment == 0 else
                f"all {self.segment + 1} segments, from the first one's start to the last one's end, "
                "the time between them included (each segment's own: segments)"
            )
        self.write_summary()

    def update(self, **values: Any) -> None:
        """Add or replace summary fields and rewrite summary.json."""
        self.summary.update(values)
        self.write_summary()

    def primed(self, slots: Iterable[tuple[str, int]]) -> None:
        """The (host, pid) of the slots the warm-up reached: a task on any other slot is cold."""
        self._slots = set(slots)

    def task_rows(self, rows: list[dict[str, Any]]) -> None:
        """Append the rows of one task (one per client); mark a task on an unprimed slot cold."""
        rows = [{**row, "segment": self.segment} for row in rows]
        primed = [bool(row.pop(PRIMED_AT_START, False)) for row in rows]
        if self._slots is not None:
            new: set[tuple[str, int]] = set()
            for row, at_start in zip(rows, primed):
                if "task_started" not in row or row.get("pid") in (None, ""):
                    continue  # failed or dropped work that ran on no slot
                slot = (str(row.get("host")), int(row["pid"]))
                if at_start:  # primed as it started (a late block's pool): not cold
                    row["task_cold"] = 0
                    self._slots.add(slot)
                    continue
                cold = slot not in self._slots or slot in new
                row["task_cold"] = int(cold)
                if cold:
                    new.add(slot)
            self._slots |= new
            self._cold += len(new)
        self.tasks.write_many(rows)

    def watch_links(self, read: Callable[[], dict[str, dict[str, int]]]) -> None:
        """From now on each round row gets ``link_bytes``: what ``read`` (host -> ``to_host`` /
        ``from_host`` byte counters, :meth:`~flight_parsl.execution.netns.VirtualNetwork.link_bytes`)
        counted since the row before, or since this call for the first one."""
        self._links = read
        self._link_base = read()

    def _round_links(self) -> str:
        """The ``link_bytes`` cell: each link's bytes since the last row (JSON), or empty."""
        if self._links is None:
            return ""
        now = self._links()
        base, self._link_base = self._link_base, now
        return json.dumps({host: {way: n - base.get(host, {}).get(way, 0) for way, n in sorted(counts.items())}
                           for host, counts in sorted(now.items())}, separators=(",", ":"))

    def round_row(self, row: dict[str, Any]) -> None:
        """Append one round row (built by :func:`round_row`), with the round's cold tasks and
        the bytes its links carried."""
        links = self._round_links()  # first: the round's bytes, before anything else takes time
        if self._slots is not None:
            row = {**row, "cold_slots": self._cold}
            self._cold = 0
        row = {**row, "coord_rss_mb": round(rss_mb(), 1), "link_bytes": links}
        self.rounds.write(row)
        self.update(rounds_completed=self.rounds.rows)

    def finish(self, status: str, error: str | None = None) -> None:
        """Mark the end, record the status, close the tables."""
        self.summary["status"] = status
        self.summary["rounds_completed"] = self.rounds.rows  # a signal may land between a row and its update
        if error is not None:
            self.summary["error"] = error
        if "end" not in self.summary:
            self.mark("end")
        self.write_summary()
        self.rounds.close()
        self.tasks.close()

    def write_summary(self) -> None:
        """Atomically rewrite summary.json."""
        tmp = self.dir / "summary.json.tmp"
        text = json.dumps(self.summary, indent=2, default=str) + "\n"
        with deferred():  # never a summary.json.tmp left behind by a stop signal
            tmp.write_text(text)
            tmp.replace(self.dir / "summary.json")


def _derive(times: dict[str, Any]) -> None:
    """``start2end`` and ``prime2end`` of a summary (or of one segment) from its timestamps."""
    if "end" in times and "start" in times:
        times["start2end"] = times["end"] - times["start"]
        if "priming_done" in times:
            times["prime2end"] = times["end"] - times["priming_done"]


def round_row(
    index: int,
    start: float,
    end: float,
    stats: RoundStats,
    *,
    test_loss: float,
    test_acc: float,
    sampled: int,
    participants: int,
    failed: int,
    publish_s: float,
    eval_s: float = math.nan,
    retries: int | None = None,
    edge_bytes: int | None = None,
    **columns: Any,
) -> dict[str, Any]:
    """The rounds.csv row of round ``index`` (0-based; the row counts from 1), for every loop.

    Args:
        stats: what the round moved and measured: tasks, bytes each way, aggregation time,
            its clients' training losses and accuracies.
        retries: default ``stats.retries``.
        edge_bytes: bytes over the tree's edges; default ``bytes_moved`` (a flat topology,
            where every edge ends at the coordinator).
        columns: the loop's own columns (``deadline_s``, ``members``, ``proxy_test_acc`` ...):
            names of :data:`ROUND_COLUMNS` only.

    Raises:
        ValueError: a column rounds.csv does not have.
    """
    unknown = sorted(set(columns) - set(ROUND_COLUMNS))
    if unknown:
        raise ValueError(f"not columns of rounds.csv: {', '.join(unknown)}")
    moved = stats.bytes_to + stats.bytes_from
    return {
        **columns,
        "round": index + 1,
        "start": start,
        "end": end,
        "makespan_s": end - start,
        "publish_s": publish_s,
        "aggregate_s": stats.aggregate_s,
        "eval_s": eval_s,
        "sampled": sampled,
        "participants": participants,
        "failed": failed,
        "tasks": stats.tasks,
        "retries": stats.retries if retries is None else retries,
        "bytes_to_workers": stats.bytes_to,
        "bytes_from_workers": stats.bytes_from,
        "bytes_moved": moved,
        "edge_bytes": moved if edge_bytes is None else edge_bytes,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "train_loss": mean_finite(stats.losses),
        "train_acc": mean_finite(stats.accs),
    }


def result_rows(
    res: TaskResult,
    task: int,
    attempt: int,
    submitted: float,
    received: float,
    collect_s: float,
    idle_s: float,
    model_version: int | str = "",
) -> list[dict[str, Any]]:
    """tasks.csv rows of a finished task: one per client (one row for aggregate / relay)."""
    base = {
        "round": res.round + 1,
        "kind": res.kind,
        "task": task,
        "attempt": attempt,
        "node": res.node,
        "status": "ok",
        "error": "",
        "model_version": model_version,
        "host": res.host,
        "pid": res.pid,
        "thread": res.thread,
        "block": res.block,
        "accelerator": res.accelerator,
        "task_submitted": submitted,
        "task_started": res.started,
        "task_finished": res.finished,
        "task_received": received,
        "task_idle_s": idle_s,
        "task_get_s": res.get_s,
        "task_deserialize_s": res.deserialize_s,
        "task_compute_s": res.compute_s,
        "task_serialize_s": res.serialize_s,
        "task_put_s": res.put_s,
        "task_encode_s": res.encode_s,
        "task_decode_s": res.decode_s,
        "task_collect_s": collect_s,
        "task_bytes_in": res.bytes_in,
        "task_bytes_out": res.bytes_out,
        "task_clients": max(1, len(res.clients)),
        "task_rss_mb": res.rss_mb,
        "task_peak_rss_mb": res.peak_rss_mb,
        "task_rtt_s": received - submitted,
        "task_device": res.device,
    }
    if res.primed_at_start:
        base[PRIMED_AT_START] = True  # read (and dropped) by RunRecorder.task_rows: the slot is not cold
    if not res.clients:
        weight = res.weight
        return [{**base, "client": "", "samples": int(weight) if float(weight).is_integer() else weight}]
    return [
        {
            **base,
            "client": c.client,
            "samples": c.samples,
            "client_started": c.started,
            "client_finished": c.finished,
            "client_s": c.compute_s,
            "train_loss": c.train_loss,
            "train_acc": c.train_acc,
            "straggler": int(c.straggler),
            "epochs": c.epochs,
        }
        for c in res.clients
    ]


def failure_rows(
    failure: Failure,
    kind: str,
    task: int,
    submitted: float,
    received: float,
    model_version: int | str = "",
    slot: tuple[str, int | None] | None = None,
) -> list[dict[str, Any]]:
    """tasks.csv rows of failed work: one per client, with the failure's kind and message.

    ``slot``: the host and pid (None: not known) of the worker process whose death failed the
    task (``lost``; see :func:`flight_parsl.engine.outcomes.lost_slot`)."""
    base: dict[str, Any] = {
        "round": failure.round + 1,
        "kind": kind,
        "task": task,
        "attempt": failure.attempt,
        "node": failure.node,
        "status": failure.kind,
        "error": failure.message,
        "model_version": model_version,
        "task_submitted": submitted,
        "task_received": received,
        "task_clients": max(1, len(failure.clients)),
        "task_rtt_s": received - submitted,
    }
    if slot is not None:
        base["host"] = slot[0]
        base["pid"] = "" if slot[1] is None else slot[1]
    if not failure.clients:
        return [{**base, "client": ""}]
    return [{**base, "client": c} for c in failure.clients]


def dropped_rows(round_idx: int, clients: list[int], when: float) -> list[dict[str, Any]]:
    """tasks.csv rows of stragglers the strategy dropped from round ``round_idx`` (0-based):
    they trained nothing."""
    return [
        {"round": round_idx + 1, "kind": "train", "client": c, "status": "dropped", "task_submitted": when,
         "task_received": when, "straggler": 1, "epochs": 0}
        for c in clients
    ]

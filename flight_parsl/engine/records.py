"""The run directory: resolved config, per-round and per-task tables, and a summary.

Layout of a run directory::

    config.yaml    the resolved experiment config
    rounds.csv     one row per round
    tasks.csv      one row per client per task attempt (and per aggregate / relay task)
    summary.json   timestamps (start, dfk_start_done, priming_done, end), derived
                   durations, status and totals; rewritten at each milestone
    checkpoint.pkl the state after the last finished round (flight_parsl.engine.checkpoint)
    faults.csv     injected faults, when a run injects some (flight_parsl.processes.injector)

Rows are written and flushed as they happen, so a crash loses nothing finished.
A resumed run appends to the same tables: rows of rounds past the checkpoint are
dropped from rounds.csv (those rounds run again), tasks.csv keeps every attempt
and numbers each stretch of the run in ``segment`` (0 before the first resume).
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from collections.abc import Callable
from typing import IO, Any

from flight_parsl.config.experiment import ExperimentConfig, save_yaml
from flight_parsl.core.types import Failure, TaskResult
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
    "proxy_test_acc",  # decentralized mode: the mean over clients of the shared model's accuracy
    "epsilon",  # decentralized mode with DP: the largest client epsilon so far
)

# One row per client per task attempt. Task-level columns (submitted .. peak_rss_mb
# except the client ones) repeat on each row of a task; ``task_clients`` rows share them.
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
    "site",
    "submitted",
    "started",
    "finished",
    "received",
    "idle_s",
    "get_s",
    "deserialize_s",
    "compute_s",
    "serialize_s",
    "put_s",
    "collect_s",
    "bytes_in",
    "bytes_out",
    "task_clients",
    "samples",
    "client_started",
    "client_finished",
    "client_s",
    "train_loss",
    "train_acc",
    "rss_mb",
    "peak_rss_mb",
    "straggler",
    "epochs",
    "rtt_s",
    "segment",
    # decentralized mode: the client's private (or only) model and its shared model on the client's
    # test set, its DP epsilon so far, and the bytes it read and wrote (received model + state blob in,
    # sent model + state blob out)
    "private_test_acc",
    "proxy_test_acc",
    "epsilon",
    "client_bytes_in",
    "client_bytes_out",
)

TIMESTAMPS = ("start", "dfk_start_done", "priming_done", "end")


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
        """Append rows and flush once."""
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
        """Open a new run directory, or with ``resume_round`` continue one from that round."""
        self.dir = Path(out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment = 0
        if resume_round is None:
            save_yaml(cfg, self.dir / "config.yaml")
            self.rounds = _Table(self.dir / "rounds.csv", ROUND_COLUMNS)
            self.tasks = _Table(self.dir / "tasks.csv", TASK_COLUMNS)
            self.summary: dict[str, Any] = {"status": "running", **batch_job_info()}
            self.mark("start")
            return
        old = self.dir / "summary.json"
        self.summary = json.loads(old.read_text()) if old.is_file() else {}
        self.segment = int(self.summary.get("resumes", 0)) + 1
        self.rounds = _Table(self.dir / "rounds.csv", ROUND_COLUMNS, lambda row: int(row["round"]) < resume_round)
        self.tasks = _Table(self.dir / "tasks.csv", TASK_COLUMNS, lambda row: True)
        for key in ("end", "start2end", "prime2end", "error"):
            self.summary.pop(key, None)
        self.summary.update(status="running", resumes=self.segment, resumed_from_round=resume_round,
                            **batch_job_info())
        self.summary.setdefault("resumed_at", []).append(time.time())
        self.summary.setdefault("start", time.time())
        self.write_summary()

    def mark(self, event: str, when: float | None = None) -> None:
        """Record a timestamp (one of TIMESTAMPS) and rewrite summary.json."""
        self.summary[event] = time.time() if when is None else when
        self._derive()
        self.write_summary()

    def update(self, **values: Any) -> None:
        """Add or replace summary fields and rewrite summary.json."""
        self.summary.update(values)
        self.write_summary()

    def task_rows(self, rows: list[dict[str, Any]]) -> None:
        """Append the rows of one task (one per client)."""
        self.tasks.write_many([{**row, "segment": self.segment} for row in rows])

    def round_row(self, row: dict[str, Any]) -> None:
        """Append one round row."""
        self.rounds.write(row)
        self.update(rounds_completed=self.rounds.rows)

    def finish(self, status: str, error: str | None = None) -> None:
        """Mark the end, record the status, close the tables."""
        self.summary["status"] = status
        self.summary["rounds_completed"] = self.rounds.rows  # a signal may land between a row and its count
        if error is not None:
            self.summary["error"] = error
        if "end" not in self.summary:
            self.mark("end")
        self.write_summary()
        self.rounds.close()
        self.tasks.close()

    def _derive(self) -> None:
        s = self.summary
        if "end" in s:
            s["start2end"] = s["end"] - s["start"]
            if "priming_done" in s:
                s["prime2end"] = s["end"] - s["priming_done"]

    def write_summary(self) -> None:
        """Atomically rewrite summary.json."""
        tmp = self.dir / "summary.json.tmp"
        tmp.write_text(json.dumps(self.summary, indent=2, default=str) + "\n")
        tmp.replace(self.dir / "summary.json")


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
        "round": res.round,
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
        "task_clients": max(1, len(res.clients)),
        "rss_mb": res.rss_mb,
        "peak_rss_mb": res.peak_rss_mb,
    }
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
    failure: Failure, kind: str, task: int, submitted: float, received: float, model_version: int | str = ""
) -> list[dict[str, Any]]:
    """tasks.csv rows of failed work: one per client, with the failure's kind and message."""
    base = {
        "round": failure.round,
        "kind": kind,
        "task": task,
        "attempt": failure.attempt,
        "node": failure.node,
        "status": failure.kind,
        "error": failure.message,
        "model_version": model_version,
        "submitted": submitted,
        "received": received,
        "task_clients": max(1, len(failure.clients)),
    }
    if not failure.clients:
        return [{**base, "client": ""}]
    return [{**base, "client": c} for c in failure.clients]


def dropped_rows(round_idx: int, clients: list[int], when: float) -> list[dict[str, Any]]:
    """tasks.csv rows of stragglers the strategy dropped from a round: they trained nothing."""
    return [
        {"round": round_idx, "kind": "train", "client": c, "status": "dropped", "submitted": when, "received": when,
         "straggler": 1, "epochs": 0}
        for c in clients
    ]

"""The run directory: resolved config, per-round and per-task tables, and a summary.

Layout of a run directory::

    config.yaml    the resolved experiment config
    rounds.csv     one row per round
    tasks.csv      one row per client per task attempt (and per aggregate / relay task)
    summary.json   timestamps (start, dfk_start_done, priming_done, end), derived
                   durations, status and totals; rewritten at each milestone

Rows are written and flushed as they happen, so a crash loses nothing finished.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import IO, Any

from flight_parsl.config.experiment import ExperimentConfig, save_yaml
from flight_parsl.core.types import Failure, TaskResult

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
    """A CSV file that is appended to and flushed row by row."""

    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        self.path = path
        self._file: IO[str] = path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=columns, extrasaction="raise")
        self._writer.writeheader()
        self._file.flush()
        self.rows = 0

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

    def __init__(self, out: str | Path, cfg: ExperimentConfig) -> None:
        self.dir = Path(out)
        self.dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, self.dir / "config.yaml")
        self.rounds = _Table(self.dir / "rounds.csv", ROUND_COLUMNS)
        self.tasks = _Table(self.dir / "tasks.csv", TASK_COLUMNS)
        self.summary: dict[str, Any] = {"status": "running"}
        self.mark("start")

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
        self.tasks.write_many(rows)

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

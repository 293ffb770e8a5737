"""The run directory's tables: one list of columns, rows built in one place, columns that add up."""

import re
import subprocess
import sys
import time

import pytest
from conftest import read_csv, read_summary

from flight_parsl.core.types import ClientOutcome, Failure, TaskResult
from flight_parsl.engine import records
from flight_parsl.engine.outcomes import RoundStats, lost_slot
from flight_parsl.engine.progress import Progress
from flight_parsl.engine.records import (
    ROUND_COLUMNS,
    TASK_COLUMNS,
    TASK_LEVEL,
    dropped_rows,
    failure_rows,
    result_rows,
    round_row,
)
from flight_parsl.engine.runner import run_experiment
from flight_parsl.processes.injector import SlotCensus, worker_rank


def _documented(title: str) -> list[str]:
    """The column names the module docstring lists under the paragraph starting with ``title``."""
    doc = records.__doc__ or ""
    section = doc.split(title, 1)[1].split("\n\n", 1)[1]  # skip the rest of the title's paragraph
    section = section.split("\n\n", 1)[0]
    return re.findall(r"^- ``([a-z_0-9]+)``:", section, flags=re.M)


def test_the_docstring_lists_every_column_in_order() -> None:
    assert _documented("rounds.csv columns") == list(ROUND_COLUMNS)
    assert _documented("tasks.csv columns") == list(TASK_COLUMNS)
    assert len(set(TASK_COLUMNS)) == len(TASK_COLUMNS) and len(set(ROUND_COLUMNS)) == len(ROUND_COLUMNS)


def _result(clients: int) -> TaskResult:
    outcomes = [ClientOutcome(c, 10 + c, 1.0 + c, 2.0 + c, 0.5 * c, 0.1 * c, 0.2 * c, 1) for c in range(clients)]
    return TaskResult(
        "train", "coordinator", 2, "host-a", 4242, 10.0, 12.0, 0.1, 0.2, 1.5, 0.3, 0.4, 1000, 700, 55.0, 60.0,
        clients=outcomes,
    )


def test_task_level_columns_repeat_and_sum_once_per_task() -> None:
    rows = result_rows(_result(3), 7, 0, 9.0, 13.0, 0.25, 1.0)
    assert [r["round"] for r in rows] == [3, 3, 3]  # the loop's round 2 is the third: rows count from 1
    assert [r["client"] for r in rows] == [0, 1, 2] and [r["samples"] for r in rows] == [10, 11, 12]
    for col in TASK_LEVEL:  # the task's own values: the same on every row, never a per-client share
        assert len({r.get(col) for r in rows}) == 1, col
    assert rows[0]["task_bytes_in"] == 1000 and rows[0]["task_bytes_out"] == 700 and rows[0]["task_rtt_s"] == 4.0
    # summing a task_* column over distinct tasks gives what rounds.csv counts
    stats = RoundStats()
    stats.count_train(_result(3))
    once = {(r["round"], r["task"], r["attempt"]): r["task_bytes_out"] for r in rows}
    assert sum(once.values()) == stats.bytes_from == 700 != sum(r["task_bytes_out"] for r in rows)
    assert set(rows[0]) <= set(TASK_COLUMNS)
    assert {c for c in TASK_COLUMNS if c.startswith("task_")} == set(TASK_LEVEL)
    assert not {"bytes_in", "bytes_out", "submitted", "rtt_s", "compute_s"} & set(TASK_COLUMNS)


def test_failure_and_dropped_rows_count_rounds_from_1_and_carry_the_lost_slot() -> None:
    failure = Failure(0, (3, 4), "lost", "WorkerLost: ...", 1, "coordinator")
    rows = failure_rows(failure, "train", 5, 1.0, 3.5, slot=("host-b", 999))
    assert [(r["round"], r["client"], r["pid"], r["host"]) for r in rows] == [(1, 3, 999, "host-b"), (1, 4, 999, "host-b")]
    assert rows[0]["task_rtt_s"] == 2.5 and rows[0]["task_clients"] == 2
    unknown = failure_rows(failure, "train", 5, 1.0, 3.5, slot=("host-b", None))
    assert unknown[0]["pid"] == "" and unknown[0]["host"] == "host-b"
    assert "pid" not in failure_rows(failure, "train", 5, 1.0, 3.5)[0]
    assert [r["round"] for r in dropped_rows(4, [1, 2], 0.0)] == [5, 5]


def test_round_row_is_the_one_builder_of_rounds_csv_rows() -> None:
    stats = RoundStats(bytes_to=100, bytes_from=40, edge_bytes=500, aggregate_s=0.5, retries=2, tasks=6,
                       losses=[1.0, float("nan"), 3.0], accs=[0.5])
    row = round_row(0, 10.0, 12.5, stats, test_loss=0.3, test_acc=0.9, sampled=4, participants=3, failed=1,
                    publish_s=0.1, members=4)
    assert row["round"] == 1 and row["makespan_s"] == 2.5 and row["members"] == 4
    assert (row["bytes_moved"], row["edge_bytes"], row["retries"], row["tasks"]) == (140, 140, 2, 6)
    assert row["train_loss"] == 2.0 and row["train_acc"] == 0.5
    tree = round_row(2, 0.0, 1.0, stats, test_loss=0.0, test_acc=0.0, sampled=1, participants=1, failed=0,
                     publish_s=0.0, edge_bytes=stats.edge_bytes, retries=0)
    assert (tree["round"], tree["edge_bytes"], tree["retries"]) == (3, 500, 0)
    assert set(row) <= set(ROUND_COLUMNS)
    with pytest.raises(ValueError, match="not columns of rounds.csv: bytes"):
        round_row(0, 0.0, 1.0, stats, test_loss=0.0, test_acc=0.0, sampled=1, participants=1, failed=0,
                  publish_s=0.0, bytes=1)


def test_a_run_writes_1_based_rounds_and_one_segment(make_config) -> None:
    cfg = make_config("train.mode=none", "model.name=tiny", "plan.clients_per_task=2", workers=4, rounds=2)
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    rounds, tasks = read_csv(out / "rounds.csv"), read_csv(out / "tasks.csv")
    assert [r["round"] for r in rounds] == ["1", "2"] and {t["round"] for t in tasks} == {"1", "2"}
    for r in rounds:  # bytes from workers = the task-level column summed once per task
        mine = {(t["task"], t["attempt"]): int(t["task_bytes_out"]) for t in tasks if t["round"] == r["round"]}
        assert len(mine) == 2 and sum(mine.values()) == int(r["bytes_from_workers"])
        assert sum(int(t["task_bytes_out"]) for t in tasks if t["round"] == r["round"]) == 2 * sum(mine.values())
    summary = read_summary(out)
    (segment,) = summary["segments"]
    assert segment["segment"] == 0 and segment["first_round"] == 1
    assert {k: segment[k] for k in ("start", "end", "start2end")} == {k: summary[k] for k in ("start", "end", "start2end")}
    assert summary["start2end_spans"] == "the run: one segment"
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # this process ran the coordinator
    assert all(10.0 < float(r["coord_rss_mb"]) <= peak + 1.0 for r in rounds), [r["coord_rss_mb"] for r in rounds]


class _WorkerLost(Exception):
    """Parsl's WorkerLost, as it reaches the coordinator: a rank and a host, no pid."""

    def __init__(self, worker_id: int, hostname: str) -> None:
        super().__init__(worker_id, hostname)
        self.worker_id, self.hostname = worker_id, hostname


_WorkerLost.__name__ = "WorkerLost"


def test_the_census_names_the_dead_worker_of_a_rank(tmp_path) -> None:
    # a process that keeps worker_5.log open, as an HTEX worker does, in a shell's background (so that
    # its parent is not this process: the census leaves out the coordinator's own children)
    log = tmp_path / "block-0" / "pool" / "worker_5.log"
    log.parent.mkdir(parents=True)
    code = f"import time; f = open({str(log)!r}, 'a'); time.sleep(60)"
    shell = subprocess.Popen(["sh", "-c", f'"{sys.executable}" -c "{code}" & echo $!; wait'], stdout=subprocess.PIPE,
                             text=True)
    pid = None
    try:
        assert shell.stdout is not None
        pid = int(shell.stdout.readline())
        deadline = time.monotonic() + 10
        while worker_rank(pid) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker_rank(pid) == 5
        census = SlotCensus(1)
        census.record(census.host, pid)
        assert census.rank == {pid: 5}
        assert census.lost(census.host, 5) is None  # still alive: not the lost one
        subprocess.run(["kill", "-9", str(pid)], check=True)
        shell.wait(timeout=10)  # the shell reaps it
        injector = type("Injector", (), {"census": census})()
        assert lost_slot(_WorkerLost(5, census.host), injector) == (census.host, pid)
        assert lost_slot(_WorkerLost(5, census.host), injector) == (census.host, None)  # named once
        assert lost_slot(_WorkerLost(1, "elsewhere"), injector) == ("elsewhere", None)
        assert lost_slot(RuntimeError("boom"), injector) is None
    finally:
        if pid is not None:
            subprocess.run(["kill", "-9", str(pid)], capture_output=True)
        shell.kill()
        shell.wait(timeout=10)


def test_the_first_task_on_a_slot_the_warm_up_missed_is_cold(make_config, tmp_path) -> None:
    cfg = make_config(workers=2, rounds=1)
    recorder = records.RunRecorder(tmp_path / "cold", cfg)
    recorder.primed({("host-a", 1)})
    primed_task = result_rows(_result(1), 0, 0, 9.0, 13.0, 0.25, 1.0)  # pid 4242 ...
    for row in primed_task:
        row["pid"] = 1
    recorder.task_rows(primed_task)
    recorder.task_rows(result_rows(_result(2), 1, 0, 9.0, 13.0, 0.25, 1.0))  # a restarted worker: 4242
    recorder.task_rows(result_rows(_result(1), 2, 0, 9.0, 13.0, 0.25, 1.0))  # the same one, now warm
    recorder.task_rows(failure_rows(Failure(2, (5,), "lost", "WorkerLost", 0, "coordinator"), "train", 3, 9.0, 9.5,
                                    slot=("host-a", 77)))  # died: ran nothing to completion there
    recorder.round_row(round_row(2, 1.0, 2.0, RoundStats(), test_loss=0.1, test_acc=0.9, sampled=4, participants=3,
                                 failed=1, publish_s=0.0))
    recorder.round_row(round_row(3, 2.0, 3.0, RoundStats(), test_loss=0.1, test_acc=0.9, sampled=4, participants=4,
                                 failed=0, publish_s=0.0))
    recorder.finish("completed")
    tasks = read_csv(tmp_path / "cold" / "tasks.csv")
    assert [(t["task"], t["task_cold"]) for t in tasks] == [("0", "0"), ("1", "1"), ("1", "1"), ("2", "0"), ("3", "")]
    assert [r["cold_slots"] for r in read_csv(tmp_path / "cold" / "rounds.csv")] == ["1", "0"]


def test_each_round_row_has_the_bytes_its_links_carried_since_the_row_before(make_config, tmp_path) -> None:
    import json

    counters = iter([{"host-a": {"to_host": 100, "from_host": 10}},  # when the warm-up ended
                     {"host-a": {"to_host": 1100, "from_host": 510}},
                     {"host-a": {"to_host": 1200, "from_host": 520}, "host-b": {"to_host": 7, "from_host": 3}}])
    recorder = records.RunRecorder(tmp_path / "links", make_config(workers=2, rounds=2))
    recorder.round_row(round_row(0, 0.0, 1.0, RoundStats(), test_loss=0.1, test_acc=0.9, sampled=1, participants=1,
                                 failed=0, publish_s=0.0))  # no virtual hosts (yet): empty
    recorder.watch_links(lambda: next(counters))
    for r in (1, 2):
        recorder.round_row(round_row(r, 0.0, 1.0, RoundStats(), test_loss=0.1, test_acc=0.9, sampled=1,
                                     participants=1, failed=0, publish_s=0.0))
    recorder.finish("completed")
    cells = [r["link_bytes"] for r in read_csv(tmp_path / "links" / "rounds.csv")]
    assert cells[0] == ""
    assert json.loads(cells[1]) == {"host-a": {"from_host": 500, "to_host": 1000}}
    assert json.loads(cells[2]) == {"host-a": {"from_host": 10, "to_host": 100}, "host-b": {"from_host": 3, "to_host": 7}}


def test_a_thread_pool_run_has_no_cold_task(make_config) -> None:
    cfg = make_config("train.mode=none", "model.name=tiny", "slots=2", workers=4, rounds=2)
    out = run_experiment(cfg, Progress(cfg.rounds, enabled=False))
    assert {t["task_cold"] for t in read_csv(out / "tasks.csv")} == {"0"}
    assert [r["cold_slots"] for r in read_csv(out / "rounds.csv")] == ["0", "0"]


def test_a_stop_that_lands_while_a_row_is_flushed_waits_until_the_row_is_counted(tmp_path) -> None:
    """A stop signal inside a row's write is raised after ``rows`` counts the row on disk (the
    summary's ``rounds_completed`` then matches rounds.csv)."""
    from flight_parsl.core import stopping
    from flight_parsl.core.errors import Terminated

    table = records._Table(tmp_path / "t.csv", ("a",))
    flush = table._file.flush

    def flush_then_stop() -> None:
        flush()
        stopping.stop(15)  # what the command's SIGTERM handler calls, here between flush and count

    table._file.flush = flush_then_stop  # type: ignore[method-assign]
    try:
        with pytest.raises(Terminated):
            table.write({"a": 1})
    finally:
        stopping.reset()
        table._file.flush = flush  # type: ignore[method-assign]
        table.close()
    assert table.rows == 1 == len(read_csv(tmp_path / "t.csv"))

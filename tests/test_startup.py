"""The start-up phases (flight_parsl.engine.startup): summary.json's ``startup_phases`` split
start2end along the run's marks; Parsl's first blocks are launched at once, not one
``strategy_period`` after the DataFlowKernel starts. The end-to-end checks on real HTEX
workers are in tests/test_htex.py (``assert_startup_phases``)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from flight_parsl.core.proctime import process_started
from flight_parsl.engine import startup
from flight_parsl.execution.backends import start_blocks_now

MARKS = {"start": 100.0, "dfk_begin": 100.5, "interchange_begin": 100.6, "interchange_up": 101.2,
         "dfk_loaded": 101.3, "block_launched": 101.3, "workers_started": 102.0, "last_task_started": 103.5,
         "priming_done": 105.0, "end": 106.0, "process_started": 99.0}


def assert_startup_phases(summary: dict[str, Any], parsl: bool = True) -> None:
    """summary.json's phases: every phase there, none negative, the marks in run order, and the
    phases (without interpreter_imports, which precedes start) sum to start2end."""
    found, marks = summary["startup_phases"], summary["startup_marks"]
    assert set(startup.PHASES) <= set(found)
    given = {k: v for k, v in found.items() if v is not None}
    assert all(v >= 0 for v in given.values()), found
    assert sum(v for k, v in given.items() if k != "interpreter_imports") == pytest.approx(summary["start2end"], abs=1e-3)
    assert found["rounds"] == pytest.approx(summary["prime2end"], abs=1e-3)
    if parsl:
        assert all(found[k] is not None for k in startup.PHASES), found
        order = ["dfk_begin", "interchange_begin", "interchange_up", "dfk_loaded", "block_launched",
                 "pool_started", "workers_started", "last_task_started", "last_primed", "end"]
        times = [marks[k] for k in order]
        assert times == sorted(times), {k: marks[k] for k in order}
        assert marks["start"] <= marks["dfk_begin"] and marks["last_task_started"] <= marks["priming_done"]
        # the first block is launched as the DataFlowKernel is up (Parsl alone: 5 s later)
        assert marks["block_launched"] - marks["dfk_loaded"] < 1.0


def test_phases_follow_the_marks_and_sum_to_start2end() -> None:
    found = startup.phases(MARKS)
    assert list(found) == ["interpreter_imports", *startup.PHASES]
    expected = {"interpreter_imports": 1.0, "setup": 0.5, "dataflowkernel": 0.2, "interchange": 0.6,
                "block_wait": 0.0, "worker_pool": 0.7, "workers": 1.5, "warm_up": 1.5, "rounds": 1.0}
    assert found == pytest.approx(expected)
    assert sum(v for k, v in found.items() if k != "interpreter_imports") == pytest.approx(6.0)
    assert "imports 1.00s" in startup.describe(found) and "rounds" not in startup.describe(found)


def test_missing_marks_leave_a_phase_out_and_its_time_to_the_next() -> None:
    pool = {k: MARKS[k] for k in ("start", "priming_done", "end")}  # a thread pool: no DataFlowKernel
    found = startup.phases(pool)
    assert found["setup"] is None and found["workers"] is None
    assert found["warm_up"] == pytest.approx(5.0) and found["rounds"] == pytest.approx(1.0)


def test_marks_before_the_start_count_zero() -> None:
    """A sweep's later run on the same executor: its start-up happened before the run began."""
    reused = {**{k: v - 50.0 for k, v in MARKS.items() if k not in ("start", "priming_done", "end")},
              "start": 100.0, "priming_done": 100.4, "end": 101.0}
    found = startup.phases(reused)
    assert found["interchange"] == 0.0 and found["workers"] == 0.0 and found["block_wait"] == 0.0
    assert found["warm_up"] == pytest.approx(0.4) and sum(v for v in found.values() if v is not None) > 1.0 - 1e-9


def test_record_takes_the_slowest_slot_and_the_segment() -> None:
    summary: dict[str, Any] = {"start": 100.0, "priming_done": 105.0, "end": 106.0,
                               "segments": [{"start": 100.0, "priming_done": 105.0, "end": 106.0}]}
    timings = [{"pool_started": 101.4, "worker_started": 102.0, "task_started": 103.0, "primed": 104.0},
               {"pool_started": 101.4, "worker_started": 102.2, "task_started": 103.5, "primed": None}]
    backend = {k: MARKS[k] for k in ("dfk_begin", "interchange_begin", "interchange_up", "dfk_loaded", "block_launched")}
    found = startup.record(summary, backend, timings, None)
    assert summary["startup_marks"]["workers_started"] == 102.0
    assert summary["startup_marks"]["last_task_started"] == 103.5 and summary["startup_marks"]["last_primed"] == 104.0
    assert found["workers"] == pytest.approx(1.5) and "interpreter_imports" not in found


def test_process_start_is_this_process() -> None:
    started = process_started()
    assert started is not None and started <= time.time()
    assert process_started(999_999_999) is None
    startup.count_process_start()
    assert startup.take_process_start() == pytest.approx(started, abs=0.05)
    assert startup.take_process_start() is None  # only the first run after the command line's start


class _Poller:
    """Parsl's JobStatusPoller's shape: a timer thread calling ``callback``; the strategy's first
    tick scales out the initial blocks once (its ``first`` flag)."""

    def __init__(self) -> None:
        self.first, self.launched = True, 0
        self.callback = self.poll

    def poll(self) -> None:
        if self.first:
            time.sleep(0.05)  # a slow submit: a second tick meanwhile must not launch again
            self.launched += 1
            self.first = False

    def make_callback(self) -> None:
        self.callback()


def test_the_first_tick_runs_at_once_and_never_twice_with_the_timer() -> None:
    poller = _Poller()
    dfk = type("DFK", (), {"job_status_poller": poller})()
    timer = threading.Thread(target=lambda: (time.sleep(0.01), poller.make_callback()))
    timer.start()
    start_blocks_now(dfk)
    timer.join()
    assert poller.launched == 1

"""artifacts/perf/run.py: its pure parts (figures, ratios, targets, table, meminfo sampler) and its process handling.

No Parsl and no Flower: runs use stand-in processes (sh, sleep) and canned rows.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import pytest
from conftest import perf_script

perf = perf_script()

pytestmark = pytest.mark.timeout(30)

MEMINFO = """MemTotal:       24000000 kB
MemFree:         1000000 kB
MemAvailable:   20000000 kB
Buffers:          100000 kB
HugePages_Total:       0
"""


def _meminfo(total: int, available: int) -> str:
    return MEMINFO.replace("24000000", str(total)).replace("20000000", str(available))


def test_meminfo_used() -> None:
    assert perf.meminfo_used_kib(MEMINFO) == 4_000_000
    with pytest.raises(ValueError, match="MemAvailable"):
        perf.meminfo_used_kib("MemTotal: 10 kB\nMemFree: 5 kB\n")


def test_mem_sampler_peak_minus_baseline(tmp_path: Path) -> None:
    path = tmp_path / "meminfo"
    path.write_text(_meminfo(24_000_000, 20_000_000))  # 4,000,000 KiB in use
    sampler = perf.MemSampler(path)
    assert sampler.peak_delta_gb is None
    sampler.start()
    for available in (19_000_000, 17_000_000, 21_000_000):  # peak: 7,000,000 KiB in use
        path.write_text(_meminfo(24_000_000, available))
        sampler.sample()
    assert sampler.samples == 3
    assert sampler.peak_delta_gb == pytest.approx(3_000_000 * 1024 / 1e9)
    assert sampler.baseline_gb == pytest.approx(4_000_000 * 1024 / 1e9)
    sampler.start()  # a new run: a fresh baseline and peak
    assert sampler.peak_delta_gb == 0


def test_round_figures_and_error_line() -> None:
    assert perf.round_figures([]) == (None, None)
    assert perf.round_figures([2.0]) == (2.0, None)
    assert perf.round_figures([2.0, 0.5, 0.25]) == (2.0, 0.375)
    stderr = "WARNING parsl: something\nerror: unknown config key 'slots'\n"
    assert perf.last_error_line(stderr) == "error: unknown config key 'slots'"
    tb = "Traceback (most recent call last):\n  File x\nRuntimeError: boom\nlater noise\n"
    assert perf.last_error_line(tb) == "RuntimeError: boom"
    assert perf.last_error_line("just this\n\n") == "just this"
    assert perf.last_error_line("") == "no error output"


def _rows() -> list[dict]:
    def row(label: str, framework: str, status: str = "ok", **figures: float) -> dict:
        moves = perf.FLOWER_MOVES if framework == "flower" else perf.ONE_MSG if "no-preagg" in label else perf.PREAGG
        return {"cell": "c", "row": label, "framework": framework, "status": status, "moves": moves, **figures}

    return [
        row("flight_parsl", "flight_parsl", whole_s=10.0, first_s=2.0, warm_s=1.0, peak_mem_gb=3.0, coord_mb=500.0),
        row("flight_parsl no-preagg", "flight_parsl", status="failed: exit 2: error: unknown config key"),
        row("flight_parsl process", "flight_parsl", whole_s=6.0, first_s=1.0, warm_s=2.0, peak_mem_gb=5.0),
        row("flower-sim default", "flower", whole_s=40.0, first_s=8.0, warm_s=4.0, peak_mem_gb=2.0, actors=1),
        row("flower-sim matched", "flower", whole_s=30.0, first_s=6.0, warm_s=5.0, peak_mem_gb=6.0, actors=8),
        row("flower-sim 1cpu", "flower", status="failed: timeout after 5 s"),
    ]


def test_best_and_ratios() -> None:
    rows = _rows()
    assert perf.best(rows, "flower", "whole_s") == (30.0, "flower-sim matched")
    assert perf.best(rows, "flower", "peak_mem_gb") == (2.0, "flower-sim default")
    assert perf.best(rows, "flight_parsl", "whole_s") == (6.0, "flight_parsl process")
    assert perf.best(rows, "nobody", "whole_s") is None
    perf.add_ratios(rows)
    assert rows[0]["whole_s_vs_flower"] == pytest.approx(10 / 30)
    assert rows[0]["warm_s_vs_flower"] == pytest.approx(1 / 4)
    assert rows[0]["peak_mem_gb_vs_flower"] == pytest.approx(3 / 2)
    assert rows[1]["whole_s_vs_flower"] is None  # failed
    assert "whole_s_vs_flower" not in rows[3]  # Flower rows get no ratio
    bvb = {b["metric"]: b for b in perf.best_vs_best(rows)}
    assert bvb["whole_s"]["ratio"] == pytest.approx(6 / 30)
    assert bvb["whole_s"]["flight"] == (6.0, "flight_parsl process")
    assert bvb["warm_s"]["ratio"] == pytest.approx(1 / 4)
    assert bvb["peak_mem_gb"]["ratio"] == pytest.approx(3 / 2)


def test_targets() -> None:
    T = perf.Target
    cell = perf.Cell("c", "tiny", 8, (
        perf.fp(targets=(T("whole_s", 15), T("whole_vs_flower", 1 / 3), T("warm_s", 0.5), T("mem_gb", 3))),
        perf.fp("no-preagg", overrides=("plan.preaggregate=false",), targets=(T("whole_s", 15),)),
        perf.fp("process", targets=(T("coord_vs_ref_mb", 100, ref="ref"),)),
    ))
    rows = _rows()
    others = [{"cell": "ref", "row": "flight_parsl process", "status": "ok", "coord_mb": 450.0}]
    rows[2]["coord_mb"] = 600.0
    verdicts = perf.check_targets(cell, rows, rows + others)
    got = [(v["row"], v["metric"], v["verdict"]) for v in verdicts]
    assert got == [
        ("flight_parsl", "whole_s", "PASS"),  # 10 <= 15
        ("flight_parsl", "whole_vs_flower", "PASS"),  # 10 / 30 == 1/3 exactly (<=)
        ("flight_parsl", "warm_s", "MISS"),  # 1.0 > 0.5
        ("flight_parsl", "mem_gb", "PASS"),  # 3.0 <= 3
        ("flight_parsl no-preagg", "whole_s", "MISS"),  # the run failed
        ("flight_parsl process", "coord_vs_ref_mb", "MISS"),  # 600 - 450 = 150 > 100
    ]
    by = {(v["row"], v["metric"]): v for v in verdicts}
    assert by[("flight_parsl", "whole_vs_flower")]["value"] == pytest.approx(1 / 3)
    assert by[("flight_parsl no-preagg", "whole_s")]["why"] == "run failed"
    assert by[("flight_parsl process", "coord_vs_ref_mb")]["value"] == pytest.approx(150)
    assert perf.target_text(T("whole_vs_flower", 1 / 3)) == "whole run / Flower's best <= 1/3"
    assert perf.target_text(T("mem_gb", 4)) == "peak machine memory <= 4 GB"
    assert perf.target_text(T("coord_vs_ref_mb", 100, "tiny-1k")) == "coordinator peak RSS minus tiny-1k's <= 100 MB"

    # No Flower figure or no reference run: the target cannot be checked (n/a), not a MISS.
    alone = [r for r in rows if r["framework"] == "flight_parsl"]
    verdicts = {(v["row"], v["metric"]): v for v in perf.check_targets(cell, alone, alone)}
    assert verdicts[("flight_parsl", "whole_vs_flower")]["verdict"] == "n/a"
    assert verdicts[("flight_parsl process", "coord_vs_ref_mb")]["verdict"] == "n/a"
    assert verdicts[("flight_parsl process", "coord_vs_ref_mb")]["why"] == "no ref figure"


def test_whole_vs_flower_pass_and_miss() -> None:
    T = perf.Target
    cell = perf.Cell("c", "tiny", 8, (perf.fp(targets=(T("whole_vs_flower", 1 / 3),)),))
    for whole, verdict in ((9.0, "PASS"), (11.0, "MISS")):
        rows = [{"row": "flight_parsl", "framework": "flight_parsl", "status": "ok", "whole_s": whole},
                {"row": "flower-sim default", "framework": "flower", "status": "ok", "whole_s": 30.0}]
        (v,) = perf.check_targets(cell, rows, rows)
        assert v["verdict"] == verdict


def test_render_cell() -> None:
    T = perf.Target
    cell = perf.Cell("c", "tiny", 8, (perf.fp(targets=(T("whole_s", 15), T("warm_s", 0.5))),), note="a note")
    rows = _rows()
    perf.add_ratios(rows)
    text = perf.render_cell(cell, rows, perf.check_targets(cell, rows, rows), rounds=3)
    assert text.startswith("### c: tiny, 8 clients, 3 rounds, no training")
    assert "_a note_" in text
    assert ("| flight_parsl | pre-aggregated in the slot | 10.0 | 2.00 | 1.00 | 3.00 | - | - | - | 500 | 0.33x | "
            "0.25x | 1.50x | - | ok |") in text
    assert "| flower-sim matched (8 actors) | one message per client | 30.0 |" in text
    assert "| flower-sim default (1 actor) | one message per client | 40.0 |" in text
    assert ("| flight_parsl no-preagg | one message per client, like Flower | - | - | - | - | - | - | - | - | - | - "
            "| - | - | failed: exit 2: error: unknown config key |") in text
    assert ("flight_parsl best (pre-aggregated in the slot) / Flower best: whole run s 6.00 (flight_parsl process) / "
            "30.0 (flower-sim matched) = 0.20x") in text
    # the one-message row failed: its best-vs-best line says so
    assert "flight_parsl best (one message per client, like Flower) / Flower best: - (one side has no ok run)" in text
    assert "| whole run <= 15 s | flight_parsl | 10.0 | PASS |" in text
    assert "| warm round <= 0.5 s | flight_parsl | 1.00 | MISS |" in text
    assert perf.fmt(0.012345) == "0.0123" and perf.fmt(None) == "-" and perf.fmt(1234.5) == "1234"
    assert perf.summarize([{"verdict": "PASS"}, {"verdict": "MISS"}, {"verdict": "n/a"}, {"verdict": "PASS"}]) == (
        "targets: 2 PASS, 1 MISS, 1 n/a")


def test_select_cells() -> None:
    names = [c.name for c in perf.select_cells(["tiny-100k"])]
    assert names == ["tiny-1k", "tiny-100k"]  # the reference cell comes along, first
    assert [c.name for c in perf.select_cells(["smoke"])] == list(perf.SMOKE_CELLS)
    assert "tiny-100k" in [c.name for c in perf.select_cells(["all"])]
    assert not any(c.smoke for c in perf.select_cells(["all"]))
    with pytest.raises(ValueError, match="unknown cell 'x'"):
        perf.select_cells(["x"])
    cell = perf.CELLS_BY_NAME["tiny-100k"]
    argv = perf.flight_argv(cell, cell.rows[1], 3, Path("/o"))
    assert argv[1:] == ["-m", "flight_parsl.scale", "--workers", "100000", "--model", "tiny", "--train", "none",
                        "--rounds", "3", "--out", "/o", "-q", "strategy.clients_per_round=1000",
                        "plan.preaggregate=false"]
    digits = perf.CELLS_BY_NAME["digits-mlp-64"]
    assert "--train" not in perf.flight_argv(digits, digits.rows[0], digits.rounds_for(2), Path("/o"))
    assert digits.rounds_for(2) == 3
    flower = perf.flower_argv(perf.CELLS_BY_NAME["tiny-64"], perf.flower("default"), 2, Path("/o"), 60)
    assert flower[-2:] == ["--client-cpus", "default"] and "simulation" in flower


def _dead(pid: int, wait_s: float = 2.0) -> bool:
    """Whether ``pid`` is gone (or a zombie) within ``wait_s``."""
    deadline = time.time() + wait_s
    while True:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        if time.time() > deadline:
            return False
        time.sleep(0.02)


def test_run_processes_finds_marked_processes_outside_the_tree() -> None:
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()  # a root that has exited: nothing is under it any more
    env = {**os.environ, perf.RUN_MARK: "t-1"}
    marked = subprocess.Popen(["sleep", "30"], env=env, start_new_session=True)
    other = subprocess.Popen(["sleep", "30"], env={**os.environ, perf.RUN_MARK: "t-2"}, start_new_session=True)
    try:
        deadline = time.time() + 2
        found: dict = {}
        while marked.pid not in found and time.time() < deadline:  # until sleep has exec'd
            found = perf.RunProcesses(gone.pid, "t-1").scan()
            time.sleep(0.02)
        assert marked.pid in found and other.pid not in found and os.getpid() not in found
    finally:
        for proc in (marked, other):
            proc.kill()
            proc.wait()


def test_run_process_timeout_kills_the_tree(tmp_path: Path) -> None:
    # A child that starts a grandchild in a session of its own (as Parsl's worker pool and Ray do).
    pidfile = tmp_path / "pid"
    script = f"setsid sleep 60 & echo $! > {pidfile}; sleep 60"
    start = time.time()
    out = perf.run_process(["sh", "-c", script], dict(os.environ), 0.5, tmp_path / "logs")
    assert out.timed_out and time.time() - start < 8
    assert out.rc is not None and out.mem_gb is not None and out.mem_gb >= 0
    assert _dead(int(pidfile.read_text()))


def test_run_process_stops_leftovers_and_reads_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perf, "LEFTOVER_GRACE_S", 0.2)
    pidfile = tmp_path / "pid"
    # The subshell exits at once: its sleep is re-parented away from the run (as Parsl's worker pool is)
    # and is found by the run's environment mark.
    script = f"(sleep 60 & echo $! > {pidfile}); sleep 0.7; echo 'error: unknown config key' >&2; exit 2"
    out = perf.run_process(["sh", "-c", script], dict(os.environ), 20, tmp_path / "logs")
    assert not out.timed_out and out.rc == 2
    assert out.tree_rss_gb is not None and out.tree_rss_gb > 0  # sh and sleep were seen
    assert perf.RUN_MARK not in os.environ
    assert out.killed_leftovers == 1
    assert _dead(int(pidfile.read_text()))
    assert perf.last_error_line(out.stderr_path.read_text()) == "error: unknown config key"


def test_main_writes_results_and_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run_row(cell, row, rounds, out_dir, timeout, repeat=1, settled=None):  # noqa: ANN001, ANN202
        base = {"cell": cell.name, "row": row.label, "framework": row.framework, "model": cell.model,
                "workers": cell.workers, "rounds": rounds, "train": cell.train, "args": "", "run_dir": "",
                "repeat": repeat, "moves": row.moves, "load_1m": settled.load, "settled": "yes"}
        if "no-preagg" in row.label or "per-client" in row.label:
            return {**base, "status": "failed: exit 2: error: unknown config key 'plan.preaggregate'"}
        scale = 3.0 if row.framework == "flower" else 1.0
        return {**base, "status": "ok", "whole_s": 5.0 * scale, "first_s": 1.0 * scale, "warm_s": 0.05 * scale,
                "peak_mem_gb": 1.0 * scale, "coord_mb": 300.0, "wall_s": 6.0 * scale,
                "actors": 2 if row.framework == "flower" else None}

    monkeypatch.setattr(perf, "run_row", fake_run_row)
    monkeypatch.setattr(perf, "settle", lambda threshold, max_wait: perf.Settle(True, 0.25, 0.0, []))
    monkeypatch.setattr(perf.time, "sleep", lambda s: None)
    said: list[str] = []
    rc = perf.main(["--cells", "smoke-tiny-8", "--out", str(tmp_path / "out"), "--repeats", "1"], say=said.append)
    assert rc == 1  # the no-preagg row failed
    assert any("smoke-tiny-8 | flight_parsl no-preagg | run 1/1: failed: exit 2" in line for line in said)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| whole run <= 6 s | flight_parsl | 5.00 | PASS |" in table
    assert "| warm round <= 0.1 s | flight_parsl | 0.05 | PASS |" in table
    assert "| whole run <= 3.5 s | flight_parsl process | 5.00 | MISS |" in table
    assert "targets: 2 PASS, 1 MISS, 0 n/a" in table
    with (tmp_path / "out" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["row"] for r in rows] == [r.label for r in perf.CELLS_BY_NAME["smoke-tiny-8"].rows]
    assert rows[0]["repeat"] == "1" and rows[0]["settled"] == "yes"
    with (tmp_path / "out" / "medians.csv").open() as f:
        medians = list(csv.DictReader(f))
    assert float(medians[0]["whole_s_vs_flower"]) == pytest.approx(1 / 3)
    assert medians[0]["targets"] == "whole run <= 6 s: PASS; warm round <= 0.1 s: PASS"

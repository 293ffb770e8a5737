"""artifacts/perf/run.py: settled launches, repeats (median with min-max), verdicts on medians, memory checks.

Pure parts only (fake load readers, canned runs); no Parsl, no Flower, no sleeping.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import perf_script

perf = perf_script()

pytestmark = pytest.mark.timeout(30)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_settle_waits_for_load_and_strays() -> None:
    clock = FakeClock()
    loads = iter([3.0, 1.5, 0.8, 0.6, 0.5])
    strays = iter([[], [], ["42 raylet"], [], []])
    got = perf.settle(1.0, 60, read_load=lambda: next(loads), find_strays=lambda: next(strays),
                      sleep=clock.sleep, clock=clock, poll_s=2.0)
    # 3.0 and 1.5 too high, 0.8 with a raylet alive: settled at the 4th check (0.6, nothing alive)
    assert got.settled and got.load == 0.6 and got.waited_s == 6.0 and got.strays == [] and got.why() == ""
    assert clock.slept == [2.0, 2.0, 2.0]


def test_settle_gives_up_and_says_why() -> None:
    clock = FakeClock()
    got = perf.settle(1.0, 5, read_load=lambda: 4.0, find_strays=lambda: ["7 process_worker_pool"],
                      sleep=clock.sleep, clock=clock, poll_s=2.0)
    assert not got.settled and got.waited_s == 5.0  # 2 + 2 + the last 1 s, then one more check
    assert clock.slept == [2.0, 2.0, 1.0]
    assert got.why() == "load 4.00; 1 stray process(es): 7 process_worker_pool"
    clock = FakeClock()  # max wait 0: check once, never sleep
    got = perf.settle(1.0, 0, read_load=lambda: 0.2, find_strays=lambda: [], sleep=clock.sleep, clock=clock)
    assert got.settled and clock.slept == []
    got = perf.settle(1.0, 0, read_load=lambda: 1.0, find_strays=lambda: [], sleep=clock.sleep, clock=clock)
    assert not got.settled and got.why() == "load 1.00"  # "below" the threshold: 1.0 is not


def test_stray_processes_finds_by_command_line() -> None:
    import subprocess

    # A process whose command line names a Parsl service is found; this test's own process is not.
    proc = subprocess.Popen(["sh", "-c", "sleep 5 # process_worker_pool"])
    try:
        import time

        deadline = time.time() + 5
        found: list[str] = []
        while f"{proc.pid} process_worker_pool" not in found and time.time() < deadline:  # until sh has exec'd
            found = perf.stray_processes(("process_worker_pool",))
            time.sleep(0.02)
        assert f"{proc.pid} process_worker_pool" in found
        assert perf.stray_processes(("no-such-service-name-here",)) == []
    finally:
        proc.kill()
        proc.wait()


def test_memory_baseline_is_the_least_over_the_window(tmp_path: Path) -> None:
    path = tmp_path / "meminfo"
    readings = iter([9_000_000, 8_000_000, 5_000_000, 6_000_000])  # KiB available; in use = 24M - these

    def write_next(_: float = 0) -> None:
        path.write_text(f"MemTotal: 24000000 kB\nMemAvailable: {next(readings)} kB\n")

    write_next()
    sampler = perf.MemSampler(path)
    # an earlier run's memory being given back: in use falls 15M -> 16M -> 19M -> 18M ... the least is 15M
    sampler.start(window_s=3 * perf.SAMPLE_S, sleep=write_next)
    assert sampler.baseline_kib == 15_000_000
    sampler.start()  # no window: one reading (the last one written)
    assert sampler.baseline_kib == 18_000_000


@pytest.mark.parametrize(("machine", "procs", "flag"), [
    (0.002, 1.57, True),  # the --quick case the brief names
    (1.0, 1.9, False), (1.0, 2.1, True), (2.1, 1.0, True), (0.0, 0.0, False),
    (None, 1.0, False), (1.0, None, False), (-0.3, 0.5, True),
])
def test_mem_disagrees(machine: float | None, procs: float | None, flag: bool) -> None:
    assert perf.mem_disagrees(machine, procs) is flag


def _run(row: str, rep: int, status: str = "ok", framework: str = "flight_parsl", **figures: float) -> dict:
    moves = perf.FLOWER_MOVES if framework == "flower" else perf.ONE_MSG if "no-preagg" in row else perf.PREAGG
    return {"cell": "c", "row": row, "repeat": rep, "framework": framework, "moves": moves, "status": status,
            **figures}


def _runs() -> list[dict]:
    return [
        _run("flight_parsl", 1, whole_s=10.0, warm_s=0.5, peak_mem_gb=1.0, tree_pss_gb=0.9, shm_gb=0.01,
             tree_rss_gb=1.2, load_1m=0.2, settled="yes"),
        _run("flight_parsl", 2, whole_s=30.0, warm_s=0.7, peak_mem_gb=0.002, tree_pss_gb=1.2, shm_gb=0.02,
             tree_rss_gb=1.57, load_1m=0.9, settled="yes", mem_flag="disagree"),
        _run("flight_parsl", 3, whole_s=12.0, warm_s=0.6, peak_mem_gb=1.1, tree_pss_gb=1.0, shm_gb=0.0,
             tree_rss_gb=1.3, load_1m=1.4, settled="no"),
        _run("flight_parsl no-preagg", 1, whole_s=20.0, warm_s=2.0, load_1m=0.5),
        _run("flight_parsl no-preagg", 2, "failed: exit 1: boom", load_1m=0.6),
        _run("flower-sim default", 1, framework="flower", whole_s=40.0, warm_s=8.0, actors=1, load_1m=0.3),
        _run("flower-sim default", 2, framework="flower", whole_s=50.0, warm_s=9.0, actors=1, load_1m=0.4),
        _run("flower-sim 1cpu", 1, "failed: timeout", framework="flower", load_1m=0.3),
    ]


def test_aggregate_median_min_max() -> None:
    rows = {r["row"]: r for r in perf.aggregate(_runs())}
    assert list(rows) == ["flight_parsl", "flight_parsl no-preagg", "flower-sim default", "flower-sim 1cpu"]
    fp = rows["flight_parsl"]
    assert (fp["whole_s"], fp["whole_s_min"], fp["whole_s_max"]) == (12.0, 10.0, 30.0)  # median, not mean
    assert fp["warm_s"] == pytest.approx(0.6)
    assert (fp["load_min"], fp["load_max"]) == (0.2, 1.4)
    assert fp["status"] == "ok" and fp["runs"] == 3 and fp["ok_runs"] == 3
    assert fp["unsettled"] == 1 and fp["mem_flags"] == 1
    fl = rows["flower-sim default"]
    assert fl["whole_s"] == 45.0 and fl["actors"] == 1  # even count: the mean of the middle two
    part = rows["flight_parsl no-preagg"]
    assert part["status"] == "ok 1/2; failed: exit 1: boom" and part["whole_s"] == 20.0
    assert (part["load_min"], part["load_max"]) == (0.5, 0.6)  # every run's load, failed ones too
    dead = rows["flower-sim 1cpu"]
    assert dead["status"] == "failed: timeout" and dead["whole_s"] is None and not perf.is_ok(dead)
    assert perf.median([3.0]) == 3.0 and perf.median([4.0, 1.0, 2.0, 3.0]) == 2.5


def test_verdicts_and_ratios_on_medians() -> None:
    T = perf.Target
    cell = perf.Cell("c", "tiny", 8, (
        perf.fp(targets=(T("whole_s", 15), T("whole_vs_flower", 0.3))),
        perf.fp("no-preagg", overrides=("plan.preaggregate=false",), targets=(T("warm_vs_flower", 0.2),)),
    ))
    rows = perf.aggregate(_runs())
    perf.add_ratios(rows)
    verdicts = {(v["row"], v["metric"]): v for v in perf.check_targets(cell, rows, rows)}
    # median 12 passes 15 although one run took 30 (a mean of 17.3 would miss)
    assert verdicts[("flight_parsl", "whole_s")]["verdict"] == "PASS"
    assert verdicts[("flight_parsl", "whole_s")]["value"] == 12.0
    assert verdicts[("flight_parsl", "whole_vs_flower")]["value"] == pytest.approx(12 / 45)  # Flower's best median
    # one message per client: warm 2.0 / Flower's best warm 8.5 = 0.235 > 0.2
    assert verdicts[("flight_parsl no-preagg", "warm_vs_flower")]["value"] == pytest.approx(2.0 / 8.5)
    assert verdicts[("flight_parsl no-preagg", "warm_vs_flower")]["verdict"] == "MISS"
    fp = next(r for r in rows if r["row"] == "flight_parsl")
    assert fp["whole_s_vs_flower"] == pytest.approx(12 / 45)
    # coordinator memory, absolute
    value, why = perf.target_value(T("coord_mb", 500), {"status": "ok", "coord_mb": 388.0}, [], [])
    assert (value, why) == (388.0, "")
    assert perf.target_text(T("warm_vs_flower", 0.1)) == "warm round / Flower's best <= 0.1"
    assert perf.target_text(T("coord_mb", 500)) == "coordinator peak RSS <= 500 MB"


def test_render_ranges_marks_and_both_movement_rows() -> None:
    cell = perf.Cell("c", "mlp", 8, (perf.fp(targets=(perf.Target("whole_s", 15),)),), train="local")
    runs = _runs()
    for r in runs:
        if r["status"] == "ok":
            r["acc"] = 0.95 if r["framework"] == "flight_parsl" else 0.96
    rows = perf.aggregate(runs)
    perf.add_ratios(rows)
    text = perf.render_cell(cell, rows, perf.check_targets(cell, rows, rows), rounds=3)
    assert "| row | moves | whole run s | first round s | warm round s | peak mem GB | procs PSS GB | shm GB | " \
           "procs RSS GB | coord MB | final acc | whole / Fl |" in text
    assert ("| flight_parsl | pre-aggregated in the slot | 12.0 (10.0-30.0) | - | 0.6 (0.5-0.7) | "
            "1.00 (0.002-1.10) ! | 1.00 (0.9-1.20) | 0.01 (0-0.02) | 1.30 (1.20-1.57) | - | 0.95 | 0.27x |") in text
    assert "| 0.20-1.40 | ok; unsettled 1/3 |" in text
    assert "! peak machine memory and the processes' PSS (with the run's /dev/shm) differ by more than 2x: " \
           "flight_parsl (1/3 runs)" in text
    assert "flight_parsl best (pre-aggregated in the slot) / Flower best: whole run s 12.0 (flight_parsl) / 45.0 " \
           "(flower-sim default) = 0.27x" in text
    assert "flight_parsl best (one message per client, like Flower) / Flower best: whole run s 20.0 " \
           "(flight_parsl no-preagg) / 45.0 (flower-sim default) = 0.44x" in text
    assert "| target (on the median) | row | value | verdict |" in text
    mem_cell = perf.Cell("c", "mlp", 8, (perf.fp(targets=(perf.Target("mem_gb", 3),)),))
    (v,) = perf.check_targets(mem_cell, rows, rows)  # a flagged memory figure says so beside its verdict
    assert v["verdict"] == "PASS" and v["why"] == "! the machine figure disagrees with procs PSS in 1 run(s)"
    text = perf.render_cell(mem_cell, rows, [v], rounds=3)
    assert "| peak machine memory <= 3 GB | flight_parsl | 1.00 (! the machine figure disagrees with procs PSS in " \
           "1 run(s)) | PASS |" in text
    assert perf.fmt(99.96) == "100" and perf.fmt(99.94) == "99.9"
    assert perf.fmt_range({"x": 1.0, "x_min": 1.0, "x_max": 1.0}, "x") == "1.00"
    assert perf.fmt_range({"x": None}, "x") == "-"
    assert perf.fmt_range({"x": 2e-6, "x_min": 0.0, "x_max": 0.004}, "x", 0.001) == "<0.001 (0-0.004)"
    assert perf.fmt_range({"x": 2e-6}, "x") == "2e-06"


def test_argv_of_training_and_quickstart_cells() -> None:
    digits = perf.CELLS_BY_NAME["digits-mlp-64-r100"]
    flower = perf.flower_argv(digits, perf.flower("1cpu"), digits.rounds_for(3), Path("/o"), 60)
    assert flower[1:] == ["-m", "flight_parsl.baselines.flower", "--workers", "64", "--model", "mlp", "--dataset",
                          "digits", "--train", "local", "--mode", "simulation", "--rounds", "100", "--out", "/o",
                          "--timeout", "60", "--client-cpus", "1"]
    assert "--train" not in perf.flower_argv(perf.CELLS_BY_NAME["tiny-64"], perf.flower("1cpu"), 3, Path("/o"), 60)
    quick = perf.CELLS_BY_NAME["quickstart"]
    assert perf.flight_argv(quick, quick.rows[0], 3, Path("/o"))[1:] == [
        "-m", "flight_parsl.scale", "--workers", "4", "--rounds", "3", "--out", "/o", "-q"]
    one_m = perf.CELLS_BY_NAME["tiny-1m"]
    assert one_m.workers == 1_000_000 and "strategy.clients_per_round=1000" in one_m.overrides
    r18 = {r.label: r for r in perf.CELLS_BY_NAME["resnet18-64"].rows}
    assert r18["flight_parsl"].moves == perf.PREAGG
    assert r18["flight_parsl no-preagg"].moves == r18["flight_parsl per-client"].moves == perf.ONE_MSG
    assert perf.Target("warm_vs_flower", 0.1) in r18["flight_parsl no-preagg"].targets


def test_final_acc_reads_either_summary() -> None:
    assert perf.final_acc({"final_test_acc": 0.958}) == 0.958
    assert perf.final_acc({"rounds_detail": [{"accuracy": 0.5}, {"accuracy": 0.961}]}) == 0.961
    assert perf.final_acc({"rounds_detail": []}) is None and perf.final_acc({}) is None


def test_main_repeats_go_round_the_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[tuple[str, int]] = []

    def fake_run_row(cell, row, rounds, out_dir, timeout, repeat=1, settled=None):  # noqa: ANN001, ANN202
        order.append((row.label, repeat))
        return {"cell": cell.name, "row": row.label, "framework": row.framework, "moves": row.moves,
                "repeat": repeat, "status": "ok", "whole_s": 2.0 + repeat, "warm_s": 0.01, "wall_s": 3.0,
                "load_1m": settled.load, "settled": "yes" if settled.settled else "no"}

    loads = iter([0.1, 0.2, 3.0, 0.4, 0.5, 0.6])
    monkeypatch.setattr(perf, "run_row", fake_run_row)
    monkeypatch.setattr(perf, "settle", lambda threshold, wait: (
        lambda load: perf.Settle(load < threshold, load, wait, []))(next(loads)))
    monkeypatch.setattr(perf.time, "sleep", lambda s: None)
    said: list[str] = []
    rc = perf.main(["--cells", "smoke-tiny-8", "--frameworks", "flight_parsl", "--repeats", "2",
                    "--settle-load", "1", "--settle-max-wait", "0", "--out", str(tmp_path)], say=said.append)
    assert rc == 0
    labels = ["flight_parsl", "flight_parsl process", "flight_parsl no-preagg"]
    assert order == [(label, 1) for label in labels] + [(label, 2) for label in labels]
    assert any("UNSETTLED" in line and "load 3.00" in line for line in said)
    with (tmp_path / "results.csv").open() as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 6 and [r["settled"] for r in runs].count("no") == 1
    with (tmp_path / "medians.csv").open() as f:
        medians = {r["row"]: r for r in csv.DictReader(f)}
    assert float(medians["flight_parsl"]["whole_s"]) == 3.5 and medians["flight_parsl"]["runs"] == "2"
    assert medians["flight_parsl no-preagg"]["unsettled"] == "1"
    table = (tmp_path / "table.md").read_text()
    assert "median (min-max) of 2 run(s)" in table and "3.50 (3.00-4.00)" in table
    assert perf.main(["--repeats", "0", "--out", str(tmp_path)], say=said.append) == 2


def test_skip_leaves_out_rows_everywhere_or_in_one_cell(capsys: pytest.CaptureFixture[str]) -> None:
    said: list[str] = []
    assert perf.main(["--cells", "smoke-tiny-8,smoke-digits-8", "--dry-run",
                      "--skip", "flower-sim matched,smoke-tiny-8:flight_parsl process"], say=said.append) == 0
    rows = [line.split(": ", 1)[0] for line in said[:-1]]
    assert "smoke-tiny-8 | flower-sim default" in rows and "smoke-digits-8 | flower-sim default" in rows
    assert not any("matched" in r or r == "smoke-tiny-8 | flight_parsl process" for r in rows)
    assert "smoke-tiny-8 | flight_parsl" in rows
    assert perf.main(["--cells", "smoke-tiny-8", "--dry-run", "--skip", "no-such-row"], say=said.append) == 2
    assert "--skip names no row: no-such-row" in capsys.readouterr().err

"""What a SIGKILLed coordinator leaves on HTEX with a managed Redis, removed by
``python -m flight_parsl.cleanup RUN_DIR`` and by ``--resume``; a timed slot kill (``K@Ts``)
for real; the clean-up command's answers for directories that are not runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import read_csv, read_summary
from redis_fixtures import managed_redis, require_redis_server  # noqa: F401 (fixture)

from flight_parsl.cleanup import main as cleanup

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _cleanup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flight_parsl.cleanup", *args], env=ENV, capture_output=True,
                          text=True, timeout=60)


def _of_run(run: Path) -> list[psutil.Process]:
    """Live processes (not zombies) whose command line names the run directory, or that the
    run's leftovers.json lists with its start time."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.pid != os.getpid() and proc.info["status"] != psutil.STATUS_ZOMBIE and \
                    any(str(run) in arg for arg in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def _alive(entry: dict) -> bool:
    try:
        proc = psutil.Process(int(entry["pid"]))
        return proc.status() != psutil.STATUS_ZOMBIE and entry["match"] in " ".join(proc.cmdline())
    except psutil.NoSuchProcess:
        return False


def _kill_all(run: Path, listed: dict | None) -> None:
    """Whatever the verdict, leave nothing behind."""
    for proc in _of_run(run):
        proc.kill()
    for entry in (listed or {}).get("processes", []):
        if _alive(entry):
            os.kill(int(entry["pid"]), signal.SIGKILL)


def _start(run: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "flight_parsl.scale", "--workers", "4", "--train", "none", "--model", "tiny",
           "--transfer", "redis", "--out", str(run), "-q", "slots=2", "plan.clients_per_task=1", *extra]
    log = (run.parent / f"{run.name}.log").open("w")
    return subprocess.Popen(cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen, ready, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run exited ({proc.returncode}) before {what}")
        try:
            if ready():
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    pytest.fail(f"no {what} within {timeout:g} s")


def _sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def test_cleanup_answers_for_what_is_not_a_run(tmp_path, capsys) -> None:
    assert cleanup([str(tmp_path / "missing"), "--dry-run"]) == 0
    assert cleanup([str(tmp_path / "missing")]) == 0
    assert capsys.readouterr().out.count("nothing to clean") == 2
    (tmp_path / "plain").mkdir()
    assert cleanup([str(tmp_path / "plain")]) == 2
    assert "is not a flight_parsl run directory" in capsys.readouterr().err
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "summary.json").write_text("{}")
    assert cleanup([str(tmp_path / "done")]) == 0
    assert "has no leftovers.json" in capsys.readouterr().out


def test_cleanup_refuses_a_run_whose_coordinator_still_runs(tmp_path, capsys) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = tmp_path / "open"
        run.mkdir()
        started = int(Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        directory = tmp_path / "channel"
        directory.mkdir()
        (run / "leftovers.json").write_text(json.dumps(
            {"coordinator": {"pid": sleeper.pid, "started": started}, "processes": [],
             "directories": [str(directory)]}))
        assert cleanup([str(run)]) == 2
        assert f"its coordinator (pid {sleeper.pid}) still runs" in capsys.readouterr().err
        assert directory.exists() and (run / "leftovers.json").exists()  # untouched
    finally:
        sleeper.kill()
        sleeper.wait()
    assert cleanup([str(run), "--dry-run"]) == 0 and directory.exists()
    assert str(directory) in capsys.readouterr().out
    assert cleanup([str(run)]) == 0 and not directory.exists() and not (run / "leftovers.json").exists()


def test_a_timed_slot_kill_then_a_sigkilled_coordinator_and_the_cleanup_command(tmp_path) -> None:
    require_redis_server()
    run = tmp_path / "run"
    hangs = ",".join(f"{c}@{r}" for r in (1, 2, 3) for c in range(4))  # 4 clients x 1 s on 2 slots: 2 s rounds
    proc = _start(run, "--rounds", "100000", f"faults.hang={hangs}", "faults.hang_s=1", "faults.kill_slots=1@1.5s")
    listed = None
    try:
        _wait(proc, lambda: len(read_csv(run / "faults.csv")) >= 1 and len(read_csv(run / "rounds.csv")) >= 3,
              "a timed kill and three rounds")
        _sigkill(proc)
        listed = json.loads((run / "leftovers.json").read_text())
        kinds = {entry["match"] for entry in listed["processes"] if _alive(entry)}
        assert {"redis-server", "interchange", "process_worker_pool"} <= kinds, listed
        redis_dir = next(d for d in listed["directories"] if Path(d).exists())

        # K@Ts for real: one row in faults.csv, the killed worker gone, its task lost, a cold restart
        faults, tasks, summary = read_csv(run / "faults.csv"), read_csv(run / "tasks.csv"), read_summary(run)
        assert [f["action"] for f in faults] == ["kill_slot"], faults
        killed = int(faults[0]["target"])
        primed = {int(slot.split(":")[1]) for slot in summary["slot_pids"]}
        assert killed in primed and not _alive({"pid": killed, "match": ""})
        first_start = float(read_csv(run / "rounds.csv")[0]["start"])
        assert 1.5 <= float(faults[0]["time"]) - first_start < 5.0  # 1.5 s after the first round started
        lost = [t for t in tasks if t["status"] == "lost"]
        assert len(lost) == 1 and int(lost[0]["pid"]) == killed and lost[0]["round"] == faults[0]["round"]
        later = [t for t in tasks if t["status"] == "ok" and float(t["task_started"]) > float(faults[0]["time"])]
        assert killed not in {int(t["pid"]) for t in later}
        assert any(t["task_cold"] == "1" and int(t["pid"]) not in primed for t in later)  # the restarted worker

        # what the SIGKILL left: listed by --dry-run and untouched, then removed
        dry = _cleanup(str(run), "--dry-run")
        assert dry.returncode == 0, dry.stderr
        for kind in ("redis-server", "interchange", "process_worker_pool"):
            assert kind in dry.stdout, dry.stdout
        assert redis_dir in dry.stdout and Path(redis_dir).exists()
        assert all(_alive(e) for e in listed["processes"] if e["match"] in ("redis-server", "interchange"))
        done = _cleanup(str(run))
        assert done.returncode == 0 and done.stdout.startswith("removed "), done.stdout + done.stderr
        deadline = time.monotonic() + 10
        while (_of_run(run) or any(_alive(e) for e in listed["processes"])) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _of_run(run) == [] and not any(_alive(e) for e in listed["processes"])
        assert not Path(redis_dir).exists() and not (run / "leftovers.json").exists()
        again = _cleanup(str(run))
        assert again.returncode == 0 and again.stdout.startswith("nothing to clean"), again.stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_all(run, listed)


def test_resume_removes_what_a_sigkilled_htex_coordinator_left(tmp_path) -> None:
    require_redis_server()
    run = tmp_path / "run"
    proc = _start(run, "--rounds", "4", "faults.hang=0@2,1@2,2@2,3@2", "faults.hang_s=3")
    listed = None
    try:
        _wait(proc, lambda: (run / "checkpoint.pkl").exists() and len(read_csv(run / "rounds.csv")) >= 1,
              "a first round and its checkpoint")
        _sigkill(proc)  # in round 2, its clients hanging
        listed = json.loads((run / "leftovers.json").read_text())
        assert {e["match"] for e in listed["processes"] if _alive(e)} >= {"redis-server", "interchange",
                                                                         "process_worker_pool"}
        resumed = subprocess.run([sys.executable, "-m", "flight_parsl.scale", "--resume", str(run)], env=ENV,
                                 capture_output=True, text=True, timeout=180)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "removed what the stopped run left: " in resumed.stderr
        for kind in ("redis-server", "interchange", "process_worker_pool"):
            assert kind in resumed.stderr.split("removed what the stopped run left: ")[1].splitlines()[0]
        assert not any(_alive(e) for e in listed["processes"])
        assert not any(Path(d).exists() for d in listed["directories"])
        assert [r["round"] for r in read_csv(run / "rounds.csv")] == ["1", "2", "3", "4"]
        assert read_summary(run)["status"] == "completed" and not (run / "leftovers.json").exists()
        deadline = time.monotonic() + 10
        while _of_run(run) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _of_run(run) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_all(run, listed)


def test_a_killed_run_leaves_its_keys_and_user_on_an_external_redis_and_the_cleanup_removes_them(
        tmp_path, managed_redis) -> None:
    import redis

    from flight_parsl.transfer.redis_server import count_keys

    admin = redis.Redis(managed_redis.address.host, managed_redis.address.port, decode_responses=True)
    admin.set("someone:else", "kept")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "flight_parsl.scale", "--workers", "2", "--train", "none", "--model", "tiny",
           "--transfer", "redis", "--redis", str(managed_redis.address), "--backend", "thread", "--out", str(run),
           "-q", "--rounds", "100000"]
    with (tmp_path / "run.log").open("w") as log:
        proc = subprocess.Popen(cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(proc, lambda: len(read_csv(run / "rounds.csv")) >= 2, "two rounds")
        _sigkill(proc)
    finally:
        if proc.poll() is None:
            _sigkill(proc)
    entry = json.loads((run / "leftovers.json").read_text())["redis"]
    assert entry["address"] == str(managed_redis.address) and entry["user"].startswith("flight_parsl-")
    assert entry["prefix"].startswith("flight_parsl:") and entry["tls"] is False
    assert entry["user"] in admin.acl_users()  # the killed run's user is still there
    admin.set(f"{entry['prefix']}left", "x")  # and a key of its own (whatever the kill caught in flight)
    assert f"Redis keys {entry['prefix']}* and ACL user {entry['user']}" in _cleanup(str(run), "--dry-run").stdout
    done = _cleanup(str(run))
    assert done.returncode == 0, done.stderr
    assert f"Redis ACL user {entry['user']} at {managed_redis.address}" in done.stdout, done.stdout
    assert admin.acl_users() == ["default"]
    assert count_keys(managed_redis.address, f"{entry['prefix']}*") == 0
    assert admin.get("someone:else") == "kept"
    admin.close()

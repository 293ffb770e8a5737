"""flight_parsl on a real Slurm: SlurmProvider blocks, jobs/ submitted with sbatch, scancel.

Needs the one-node cluster of ``jobs/local_slurm/start.sh`` (``.ci/run`` starts it when it runs
as root); every test here is skipped when ``sinfo`` is missing or shows no idle node.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SUBMIT = ROOT / "jobs" / "submit.py"


def _slurm_idle() -> bool:
    if not (shutil.which("sinfo") and shutil.which("sbatch") and shutil.which("scancel")):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                             timeout=10).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(state in ("idle", "mixed") for state in out)


pytestmark = pytest.mark.skipif(not _slurm_idle(),
                                reason="no Slurm here (sudo jobs/local_slurm/start.sh starts one)")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("SLURM_JOB_ID", None)
    return env


def _job_history() -> list[dict[str, str]]:
    """The cluster's job completion log (``sacct -c``), one dict per job."""
    out = subprocess.run(["sacct", "-c", "-P", "-n", "--format=JobID,JobName,State,Start"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return [dict(zip(("id", "name", "state", "start"), r)) for r in rows]


def _job_processes(job_id: str, redis_port: int | None = None, marker: str | None = None) -> dict[int, str]:
    """Live processes of Slurm job ``job_id``: pid -> command line.

    The pids Slurm tracks for the job (``scontrol listpids``: the batch script, srun steps)
    and all their descendants (the harness, the interchange, worker pools), the redis-server
    listening on ``redis_port`` (it daemonizes, so it leaves the tree) and any process whose
    command line holds ``marker`` (Parsl's LocalProvider detaches the script that runs srun).
    """
    out = subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True,
                         timeout=30).stdout.splitlines()[1:]
    found: dict[int, str] = {}
    roots = [int(line.split()[0]) for line in out if line.split() and line.split()[0].isdigit()]
    for pid in roots:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                found[p.pid] = " ".join(p.cmdline())
        except psutil.Error:
            continue
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if redis_port is not None and "redis-server" in (p.info["name"] or "") and f":{redis_port}" in cmd:
            found[p.pid] = cmd
        if marker and marker in cmd and p.pid != os.getpid():
            found[p.pid] = cmd
    return found


def _alive(procs: dict[int, str], since: float) -> list[str]:
    """Those of ``procs`` still running (a pid reused by a process started after ``since`` is not)."""
    left = []
    for pid, cmd in procs.items():
        try:
            if psutil.Process(pid).create_time() <= since:
                left.append(f"{pid} {cmd}")
        except psutil.Error:
            continue
    return left


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _squeue(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(1)


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.timeout(400)
def test_slurm_provider_runs_blocks_as_jobs_with_monitoring(tmp_path: Path) -> None:
    site = yaml.safe_load((ROOT / "configs" / "parsl" / "slurm-local.yaml").read_text())
    site["monitoring"] = True
    site_path = tmp_path / "site.yaml"
    site_path.write_text(yaml.safe_dump(site))
    run_dir = tmp_path / "run"
    before = {j["id"] for j in _job_history()}
    proc = subprocess.run(
        [sys.executable, "-m", "flight_parsl.scale", "--workers", "8", "--train", "none",
         "--model", "tiny", "--rounds", "2", "--parsl-config", str(site_path), "--out", str(run_dir)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["rounds_completed"] == 2
    assert "provider=slurm" in proc.stderr and "encrypted=True" in proc.stderr
    blocks = [j for j in _job_history() if j["id"] not in before and j["name"].startswith("parsl.htex.block")]
    assert len(blocks) == 1, _job_history()  # the HTEX block ran as a Slurm job ...
    assert blocks[0]["state"] in ("COMPLETED", "CANCELLED")  # ... and Parsl ended it
    assert _squeue(blocks[0]["id"]) == ""
    assert _job_processes(blocks[0]["id"]) == {}
    # Parsl's MonitoringHub wrote every task's states into <run dir>/monitoring.db
    with sqlite3.connect(run_dir / "monitoring.db") as db:
        tasks = db.execute("SELECT COUNT(*) FROM task").fetchone()[0]
        done = db.execute("SELECT COUNT(DISTINCT task_id) FROM status "
                          "WHERE task_status_name = 'exec_done'").fetchone()[0]
        states = {r[0] for r in db.execute("SELECT DISTINCT task_status_name FROM status")}
    tasks_csv = _rows(run_dir / "tasks.csv")
    assert tasks >= len({(r["round"], r["task"]) for r in tasks_csv}) > 0  # + the warm-up tasks
    assert done == tasks
    assert {"pending", "launched", "exec_done"} <= states  # "running" needs resource monitoring


@pytest.mark.timeout(600)
def test_job_cancelled_mid_run_loses_nothing_and_resubmission_resumes(tmp_path: Path) -> None:
    spec = yaml.safe_load((ROOT / "jobs" / "specs" / "local_slurm.yaml").read_text())
    results = tmp_path / "results.csv"
    spec.update(workers=[2], models=["tiny"], transfers=["parsl", "redis"], rounds=300,
                results=str(results), redis_port=_free_port(), job_name="fp-cancel",
                extra_args=["--out", str(tmp_path / "runs")])
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))

    def submit(out: str) -> str:
        proc = subprocess.run([sys.executable, str(SUBMIT), str(spec_path), "--out-dir",
                               str(tmp_path / out)], cwd=ROOT, env=_env(), capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return (tmp_path / out / "submitted.tsv").read_text().split("\t")[2]

    job = submit("first")
    try:
        # the parsl cell finishes; cancel while the redis cell is in its rounds
        _wait(lambda: len(_rows(results)) == 1, 240, "the first cell's row")
        redis_run = tmp_path / "runs" / "tiny-n2-redis-t0"
        _wait(lambda: (redis_run / "rounds.csv").exists() and len(_rows(redis_run / "rounds.csv")) >= 2,
              120, "the redis run's rounds")
        assert _squeue(job), "the job ended before it could be cancelled"
        running = _job_processes(job, spec["redis_port"], str(tmp_path / "runs"))
        snapshot = time.time()
        for part in ("redis-server", "flight_parsl.scale", "interchange", "process_worker_pool", "srun"):
            assert any(part in c for c in running.values()), (part, [c[:90] for c in running.values()])
        subprocess.run(["scancel", job], check=True, timeout=30)
        _wait(lambda: _squeue(job) == "", 90, "the cancelled job to leave the queue")
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
    log = (tmp_path / "first" / "fp-cancel-n1" / f"slurm-{job}.out").read_text()
    assert "harness exit 143" in log, log[-3000:]
    summary = json.loads((redis_run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"]
    assert summary["job_id"] == job and summary["job_nodes"]
    assert summary["rounds_completed"] == len(_rows(redis_run / "rounds.csv")) >= 2
    (row,) = _rows(results)  # the finished cell, recorded with its job
    assert (row["transfer"], row["status"], row["job_id"]) == ("parsl", "ok", job)
    # the harness, the interchange, the worker pool, the srun step, redis-server: none is left
    _wait(lambda: _alive(running, snapshot) == [], 30, "the job's processes to end")
    assert _job_processes(job, spec["redis_port"], str(tmp_path / "runs")) == {}
    assert "CANCELLED" in {j["state"] for j in _job_history() if j["id"] == job}

    again = submit("second")
    _wait(lambda: _squeue(again) == "", 300, "the resubmitted job")
    log = (tmp_path / "second" / "fp-cancel-n1" / f"slurm-{again}.out").read_text()
    assert "already done" in log and "harness exit 0" in log, log[-3000:]
    rows = _rows(results)
    assert [(r["transfer"], r["status"], r["job_id"]) for r in rows] == [
        ("parsl", "ok", job), ("redis", "ok", again)]
    assert _job_processes(again, spec["redis_port"], str(tmp_path / "runs")) == {}

"""A test session stopped by SIGTERM (a CI time limit) leaves no managed redis-server behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from redis_fixtures import require_redis_server

TESTS = Path(__file__).resolve().parent

HELD = '''
import time
from redis_fixtures import managed_redis  # noqa: F401  (a fixture)


def test_holds_a_server(managed_redis):
    print("PID", managed_redis.pid, flush=True)
    time.sleep(120)
'''


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_during_a_test_stops_its_redis_server(tmp_path) -> None:
    require_redis_server()
    (tmp_path / "test_held.py").write_text(HELD)
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(tmp_path / "test_held.py")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    pid = None
    deadline = time.time() + 60
    assert proc.stdout is not None
    while pid is None and time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("PID"):
            pid = int(line.split()[1])
    assert pid is not None, "the inner test never started its server"
    assert _alive(pid), "the managed redis-server is not running"
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode != 0
    time.sleep(0.5)
    left = _alive(pid)
    if left:  # leave nothing behind, whatever the verdict
        os.kill(pid, signal.SIGKILL)
    assert not left, "SIGTERM left the managed redis-server running"

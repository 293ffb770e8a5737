"""A multi-node Slurm cluster on this machine: ``jobs/local_slurm/start.sh --nodes K``.

Each compute node is a network namespace with its own host name (node1..nodeK) and slurmd, joined
to a bridge; slurmctld listens on the bridge. The test starts its own 3-node cluster beside the
one-node cluster CI runs (another directory, namespace prefix, subnet and port), runs jobs across
its nodes and stops it, checking that nothing of it is left. Needs root and Debian's slurm-wlm.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
START, STOP = REPO / "jobs/local_slurm/start.sh", REPO / "jobs/local_slurm/stop.sh"
TAG, NET, PORT = "t3", "10.232.9", "6837"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "ip", "nsenter")),
    reason="needs root, slurm-wlm, munge and iproute2 (.ci/run installs them)",
)


def _env(directory: Path) -> dict[str, str]:
    return {**os.environ, "FP_SLURM_DIR": str(directory), "FP_SLURM_TAG": TAG, "FP_SLURM_NET": NET,
            "FP_SLURM_PORT": PORT, "FP_SLURMD_TIMEOUT": "10", "SLURM_CONF": str(directory / "slurm.conf")}


def _run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)


def _namespaces() -> set[str]:
    out = _run(["ip", "netns", "list"], dict(os.environ)).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(f"{TAG}node")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[dict[str, str]]:
    directory = tmp_path_factory.mktemp("cluster")
    directory.chmod(0o755)
    env = _env(directory)
    try:
        started = _run(["bash", str(START), "--nodes", "3"], env, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        yield env
    finally:
        stopped = _run(["bash", str(STOP)], env, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert _namespaces() == set(), "stop.sh left node namespaces"
        assert _run(["ip", "link", "show", f"{TAG}slurm0"], env).returncode != 0, "stop.sh left the bridge"
        assert not list(directory.glob("slurmd-node*.pid")), "stop.sh left a slurmd"


def test_three_nodes_each_a_namespace_with_its_own_host_name(cluster) -> None:
    assert _run(["sinfo", "-h", "-o", "%D %T %N"], cluster).stdout.split() == ["3", "idle", "node[1-3]"]
    assert _namespaces() == {f"{TAG}node1", f"{TAG}node2", f"{TAG}node3"}
    out = _run(["srun", "-N3", "sh", "-c", "echo $(hostname) $(ip -4 -o addr show eth0 | awk '{print $4}')"],
               cluster).stdout
    assert sorted(out.split("\n")[:-1]) == [f"node{i} {NET}.1{i}/24" for i in (1, 2, 3)]


def test_a_two_node_batch_job_runs_a_step_on_both(cluster, tmp_path) -> None:
    out = tmp_path / "job.out"
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH -N 2\n#SBATCH -J fp-two-nodes\n#SBATCH -o {out}\nsrun hostname\n")
    submitted = _run(["sbatch", "--parsable", str(script)], cluster)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    deadline = time.time() + 60
    while _run(["squeue", "-h", "-j", job], cluster).stdout.strip() and time.time() < deadline:
        time.sleep(0.5)
    assert sorted(out.read_text().split()) == ["node1", "node2"]
    history = _run(["sacct", "-c", "-n", "-X", "-j", job, "--format=State,NodeList%20"], cluster).stdout.split()
    assert history == ["COMPLETED", "node[1-2]"]


@pytest.mark.parametrize("nodes", ["0", "10", "two"])
def test_a_bad_node_count_is_one_clear_error(nodes, tmp_path) -> None:
    done = _run(["bash", str(START), "--nodes", nodes], _env(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: --nodes must be a whole number from 1 to 9, got '{nodes}'"


@pytest.mark.parametrize("transfer", ["redis", "file"])
def test_a_run_on_two_node_blocks_uses_both_nodes_and_records_its_block_job(cluster, tmp_path, transfer) -> None:
    """Workers on two nodes reach the interchange and the run's Redis at the head node's bridge
    address (``address: auto``); the file channel works across nodes, which share the filesystem."""
    out = tmp_path / "run"
    done = _run([sys.executable, "-m", "flight_parsl.scale", "--workers", "4", "--rounds", "2", "--train", "none",
                 "--model", "tiny", "--parsl-config", "configs/parsl/slurm-cluster.yaml", "--out", str(out), "-q",
                 "--transfer", transfer], {**cluster, "PYTHONPATH": str(REPO)}, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    rows = list(csv.DictReader((out / "tasks.csv").open()))
    assert summary["status"] == "completed" and summary["slots"] == 4 and summary["transfer"] == transfer
    assert all(r["status"] == "ok" for r in rows) and int(rows[0]["task_bytes_in"]) > 0
    assert {r["host"] for r in rows} == {"node1", "node2"}  # one block, two nodes, tasks on both
    ((block, job),) = summary["block_jobs"].items()
    assert block == "htex/0" and job.isdigit()
    history = _run(["sacct", "-c", "-n", "-X", "-j", job, "--format=JobName%30,NodeList%20"], cluster).stdout.split()
    assert history[0].startswith("parsl.htex.block-0") and history[1] == "node[1-2]"


def test_address_auto_without_slurm_names_the_interfaces(tmp_path) -> None:
    from flight_parsl.core.errors import ConfigError
    from flight_parsl.execution.addresses import auto_address

    env = {"SLURM_CONF": str(tmp_path / "none.conf")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with pytest.raises(ConfigError, match=r"key 'address' = 'auto': Slurm lists no node .*interfaces here: .*lo 127"):
            auto_address({"kind": "slurm", "partition": "local"})
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    with pytest.raises(ConfigError, match="for a 'local' provider set 'address' or 'interface'"):
        auto_address({"kind": "local"})


def _cluster_site(tmp_path: Path, **changes: str) -> Path:
    """configs/parsl/slurm-cluster.yaml with some provider lines changed (``key=value`` YAML text)."""
    text = (REPO / "configs/parsl/slurm-cluster.yaml").read_text()
    for key, value in changes.items():
        text, n = re.subn(rf"^(\s*){key}:.*$", rf"\g<1>{key}: {value}", text, count=1, flags=re.M)
        if not n:
            text = text.replace("  max_blocks: 1", f"  max_blocks: 1\n  {key}: {value}")
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"partition": "nope"}, "could not start block 0: sbatch: error: invalid partition specified: nope"),
        ({"nodes_per_block": "4"}, "could not start block 0: sbatch: error: "),
        ({"pending_timeout_s": "3"}, "block htex/0 (job "),
    ],
    ids=["no-such-partition", "more-nodes-than-the-cluster", "pending-too-long"],
)
def test_a_block_slurm_cannot_run_is_one_clear_error_and_nothing_is_left(cluster, tmp_path, changes, message) -> None:
    blocker = None
    if "pending_timeout_s" in changes:  # every node taken: the block waits in the queue
        blocker = _run(["sbatch", "--parsable", "-N3", "--exclusive", "-o", "/dev/null", "--wrap", "sleep 300"],
                       cluster).stdout.strip()
    try:
        started = time.time()
        done = _run([sys.executable, "-m", "flight_parsl.scale", "--workers", "2", "--rounds", "1", "--train", "none",
                     "--model", "tiny", "--parsl-config", str(_cluster_site(tmp_path, **changes)),
                     "--out", str(tmp_path / "run")], {**cluster, "PYTHONPATH": str(REPO)}, timeout=200)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert done.returncode == 2 and len(errors) == 1 and message in errors[0], done.stderr[-2000:]
        assert time.time() - started < 60
        if blocker:
            assert "still pending after 3 s (provider.pending_timeout_s); cancelled" in errors[0]
        deadline = time.time() + 20  # a cancelled job may show as completing for a moment
        while "parsl" in (left := _run(["squeue", "-h", "-o", "%i %j %T"], cluster).stdout) and time.time() < deadline:
            time.sleep(0.5)
        assert "parsl" not in left, left
    finally:
        if blocker:
            _run(["scancel", blocker], cluster)


def _hang(rounds: tuple[int, ...], clients: int) -> str:
    """``faults.hang`` making every client of ``rounds`` sleep: more tasks wait than slots run."""
    return ",".join(f"{c}@{r}" for r in rounds for c in range(clients))


def _job_nodes(job: str, env: dict[str, str]) -> str:
    """The node list of a finished (or running) Slurm job, from the job completion log or squeue."""
    deadline = time.time() + 30
    while time.time() < deadline:
        done = _run(["sacct", "-c", "-n", "-X", "-j", job, "--format=NodeList%20"], env).stdout.split()
        if done:
            return done[0]
        time.sleep(0.5)
    return _run(["squeue", "-h", "-j", job, "-o", "%N"], env).stdout.strip()


def test_a_growing_queue_gets_a_second_block_on_another_node(cluster, tmp_path) -> None:
    """configs/parsl/slurm-elastic.yaml: one-node blocks, init 1, max 2, Parsl's simple strategy.
    Every round queues 8 one-client tasks (each sleeps 2 s) on 2 slots: Parsl asks for a second
    block, which Slurm puts on another node (exclusive blocks); once its workers primed, the later
    rounds run on the slots of both."""
    out = tmp_path / "run"
    done = _run([sys.executable, "-m", "flight_parsl.scale", "--workers", "8", "--rounds", "4", "--train", "none",
                 "--model", "tiny", "plan.clients_per_task=1", f"faults.hang={_hang((1, 2, 3, 4), 8)}", "faults.hang_s=2",
                 "--parsl-config", "configs/parsl/slurm-elastic.yaml", "--out", str(out), "-q"],
                {**cluster, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    rows = list(csv.DictReader((out / "tasks.csv").open()))
    assert summary["status"] == "completed" and all(r["status"] == "ok" for r in rows)
    assert sorted(summary["block_jobs"]) == ["htex/0", "htex/1"], summary["block_jobs"]
    hosts = {b: {r["host"] for r in rows if r["block"] == b} for b in ("0", "1")}
    assert {r["block"] for r in rows} == {"0", "1"} and len(hosts["0"]) == len(hosts["1"]) == 1, hosts
    assert hosts["0"] != hosts["1"]  # the second block is on another node
    nodes = {b: _job_nodes(job, cluster) for b, job in summary["block_jobs"].items()}
    assert nodes == {"htex/0": hosts["0"].pop(), "htex/1": hosts["1"].pop()}, nodes
    _primed_before_work(out, "1", rows)


def _primed_before_work(out: Path, block: str, rows: list[dict[str, str]]) -> None:
    """The block that came after the warm-up took work only once its workers had primed: its pool
    registered with the interchange after both workers primed, and none of its tasks is cold."""
    late = [r for r in rows if r["block"] == block and r["status"] == "ok"]
    assert late and all(r["task_cold"] == "0" for r in late)
    (log,) = (out / "parsl").glob(f"*/htex/block-{block}/*/manager.log")
    (line,) = [x for x in log.read_text().splitlines() if "2 of 2 workers primed; registering" in x]
    assert min(float(r["task_started"]) for r in late) > float(line.split()[0])


def test_a_block_that_reaches_its_walltime_is_replaced_and_the_run_completes(cluster, tmp_path) -> None:
    """slurm-elastic.yaml with one block at most and a walltime of 1 minute (Slurm's least; it ends
    the job 60-90 s after its start, at its next time-limit check). Rounds of 10 s (4 clients
    sleeping 5 s on 2 slots) outlast it: Slurm ends the block mid-round, HTEX loses its pool, the
    round retries those clients, Parsl (polling Slurm every 5 s) starts a replacement block, whose
    workers prime before it takes them, and every round completes with all its clients."""
    text = (REPO / "configs/parsl/slurm-elastic.yaml").read_text()
    for old, new in (('walltime: "00:30:00"', 'walltime: "00:01:00"'), ("max_blocks: 2", "max_blocks: 1"),
                     ("heartbeat_threshold: 10", "heartbeat_threshold: 4"), ("heartbeat_period: 2", "heartbeat_period: 1")):
        assert old in text, old
        text = text.replace(old, new)
    site = tmp_path / "site.yaml"
    site.write_text(text)
    out, rounds = tmp_path / "run", 11
    done = _run([sys.executable, "-m", "flight_parsl.scale", "--workers", "4", "--rounds", str(rounds), "--train",
                 "none", "--model", "tiny", "plan.clients_per_task=1", "round.retries=2", "round.backoff_s=0",
                 f"faults.hang={_hang(tuple(range(1, rounds + 1)), 4)}", "faults.hang_s=5", "--parsl-config",
                 str(site), "--out", str(out), "-q"], {**cluster, "PYTHONPATH": str(REPO)}, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    rows = list(csv.DictReader((out / "tasks.csv").open()))
    assert summary["status"] == "completed" and sorted(summary["block_jobs"])[:2] == ["htex/0", "htex/1"]
    history = _run(["sacct", "-c", "-n", "-X", "-j", summary["block_jobs"]["htex/0"], "--format=State"],
                   cluster).stdout.split()
    assert history == ["TIMEOUT"], history  # Slurm ended it at its time limit
    lost = [r for r in rows if r["status"] == "lost"]
    assert lost and all("ManagerLost" in r["error"] for r in lost)
    assert [r["participants"] for r in csv.DictReader((out / "rounds.csv").open())] == ["4"] * rounds
    retried = {(r["round"], r["client"]) for r in lost}
    assert {(r["round"], r["client"]) for r in rows if r["status"] == "ok" and r["block"] == "1"} >= retried
    _primed_before_work(out, "1", rows)


def test_a_node_that_dies_mid_round_costs_its_tasks_and_the_run_completes(cluster, tmp_path) -> None:
    """Every process of node2 (its slurmd, worker pool and workers) SIGKILLed while round 2's tasks
    run: HTEX loses the pool, the round retries its clients on node1, the run completes, the lost
    rows name node2, and Slurm marks node2 down. Runs last: it takes node2 out of the cluster."""
    site = tmp_path / "site.yaml"
    site.write_text((REPO / "configs/parsl/slurm-cluster.yaml").read_text()
                    .replace("heartbeat_threshold: 30", "heartbeat_threshold: 4")
                    .replace("heartbeat_period: 2", "heartbeat_period: 1"))
    out = tmp_path / "run"
    hang = ",".join(f"{c}@2" for c in range(8))  # round 2's first attempts sleep: the kill lands mid-round
    run = subprocess.Popen(
        [sys.executable, "-m", "flight_parsl.scale", "--workers", "8", "--rounds", "3", "--train", "none", "--model",
         "tiny", "plan.clients_per_task=1", "round.retries=2", "round.backoff_s=0", f"faults.hang={hang}",
         "faults.hang_s=6", "--parsl-config", str(site), "--out", str(out), "-q"],
        env={**cluster, "PYTHONPATH": str(REPO)}, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.time() + 240
        while not ((out / "rounds.csv").exists() and len((out / "rounds.csv").read_text().splitlines()) >= 2):
            assert run.poll() is None and time.time() < deadline, "round 1 never finished"
            time.sleep(0.3)
        time.sleep(1.5)
        pids = _run(["ip", "netns", "pids", f"{TAG}node2"], cluster).stdout.split()
        assert pids, "node2 runs nothing"
        subprocess.run(["kill", "-9", *pids], check=True)
        _, err = run.communicate(timeout=240)
    finally:
        run.kill()
    assert run.returncode == 0, err[-3000:]
    rows = [r for r in csv.DictReader((out / "tasks.csv").open()) if r["round"] == "2"]
    lost = {r["client"] for r in rows if r["status"] == "lost"}
    assert lost and {r["host"] for r in rows if r["status"] == "lost"} == {"node2"}
    assert all("node2" in r["error"] for r in rows if r["status"] == "lost")
    assert {r["client"] for r in rows if r["status"] == "ok"} == {str(c) for c in range(8)}
    assert {r["host"] for r in rows if r["status"] == "ok" and r["client"] in lost} == {"node1"}
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    deadline = time.time() + 60
    while "down" not in _run(["sinfo", "-h", "-n", "node2", "-o", "%T"], cluster).stdout:
        assert time.time() < deadline, "Slurm never marked node2 down"
        time.sleep(1)

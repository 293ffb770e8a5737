"""Tests for jobs/: sweep spec -> PBS/Slurm scripts -> (fake) qsub/sbatch.

Nothing is submitted to a real scheduler: submission tests put a fake ``sbatch``/``qsub``
first on PATH, or none at all.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repo root off sys.path
    sys.path.insert(0, str(ROOT))

from flight_parsl.core.errors import ConfigError  # noqa: E402
from jobs.render import (  # noqa: E402
    SpecError,
    SubmitError,
    group_workers,
    load_spec,
    nodes_for,
    render_jobs,
    submit_jobs,
    validate_spec,
    write_jobs,
)

SUBMIT = ROOT / "jobs" / "submit.py"
SPECS = sorted((ROOT / "jobs" / "specs").glob("*.yaml"))
EXPANSE_SITE = ROOT / "configs" / "parsl" / "expanse.yaml"
POLARIS_SITE = ROOT / "jobs" / "sites" / "polaris.yaml"
HARNESS = "python -m flight_parsl.scale"
STUDY_WORKERS = [2, 8, 32, 128, 256, 512, 1024, 2048]


def slurm_spec(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "scheduler": "slurm",
        "job_name": "fp-test",
        "account": "abc123",
        "partition": "compute",
        "qos": None,
        "constraint": None,
        "walltime": "01:00:00",
        "worker_init": "source ~/venvs/fp/bin/activate",
        "parsl_config": str(EXPANSE_SITE),
        "workers_per_node": 128,
        "workers": list(STUDY_WORKERS),
        "models": ["tiny", "smallnet"],
        "transfers": ["parsl", "redis"],
        "trials": 3,
        "rounds": 1,
        "results": "results/scaling.csv",
        "redis_interface": "ib0",
        "redis_port": 6379,
        "extra_args": [],
    }
    spec.update(over)
    return spec


def pbs_spec(**over: Any) -> dict[str, Any]:
    spec = slurm_spec(scheduler="pbs", queue="prod", partition=None,
                      parsl_config=str(POLARIS_SITE), redis_interface="bond0")
    spec.update(over)
    return spec


def render(data: dict[str, Any], tmp_path: Path, check_models: bool = False):
    spec = validate_spec(data, "test-spec", check_models=check_models)
    return spec, render_jobs(spec, tmp_path / "out", cwd=tmp_path)


def harness_lines(script: str) -> list[str]:
    """The harness command lines (each runs in the background: the script waits for it)."""
    return [line.removesuffix(" &") for line in script.splitlines() if line.startswith(HARNESS)]


def write_spec(tmp_path: Path, data: dict[str, Any], name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(args: list[str], cwd: Path, path_dirs: list[Path] | None = None,
            replace_path: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    extra = os.pathsep.join(str(d) for d in (path_dirs or []))
    env["PATH"] = extra if replace_path else os.pathsep.join(p for p in (extra, env.get("PATH", "")) if p)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, str(SUBMIT), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def fake_command(bin_dir: Path, name: str, output: str) -> Path:
    """A fake scheduler command that appends its arguments to <bin>/<name>.log."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    log = bin_dir / f"{name}.log"
    script = bin_dir / name
    script.write_text(f'#!/bin/bash\necho "$@" >> "{log}"\necho "{output}"\n')
    script.chmod(0o755)
    return log


# ------------------------------------------------------------------------ node counts


@pytest.mark.parametrize(("workers", "nodes"), [
    (1, 2), (2, 2), (8, 2), (32, 2), (128, 2), (129, 3), (256, 3), (257, 4), (512, 5),
    (1024, 9), (2048, 17),
])
def test_nodes_for_study_counts(workers: int, nodes: int) -> None:
    assert nodes_for(workers, 128) == nodes


def test_group_workers_one_group_per_node_count() -> None:
    assert group_workers(STUDY_WORKERS, 128) == {
        2: [2, 8, 32, 128], 3: [256], 5: [512], 9: [1024], 17: [2048],
    }
    # order of the spec does not matter; groups and members come out sorted
    assert group_workers([2048, 8, 256, 2], 128) == {2: [2, 8], 3: [256], 17: [2048]}


def test_group_workers_custom_workers_per_node() -> None:
    assert group_workers([4, 64, 65, 128, 256], 64) == {2: [4, 64], 3: [65, 128], 5: [256]}
    assert group_workers([1, 2, 3], 1) == {2: [1], 3: [2], 4: [3]}
    assert nodes_for(2048, 256) == 9


@pytest.mark.parametrize(("workers", "per_node"), [(0, 128), (True, 128), (4, 0), (4, 1.5)])
def test_nodes_for_rejects_bad_numbers(workers: Any, per_node: Any) -> None:
    with pytest.raises(ValueError):
        nodes_for(workers, per_node)


def test_render_makes_one_job_per_node_count_with_custom_per_node(tmp_path: Path) -> None:
    _, jobs = render(slurm_spec(workers_per_node=64, workers=[2, 64, 65, 128, 256]), tmp_path)
    assert [(j.nodes, j.workers) for j in jobs] == [(2, (2, 64)), (3, (65, 128)), (5, (256,))]
    assert [j.name for j in jobs] == ["fp-test-n2", "fp-test-n3", "fp-test-n5"]


# --------------------------------------------------------------------------- rendering


def test_slurm_script_directives_and_harness_command(tmp_path: Path) -> None:
    _, jobs = render(slurm_spec(), tmp_path)
    assert [j.nodes for j in jobs] == [2, 3, 5, 9, 17]
    for job in jobs:
        s = job.script
        assert s.startswith("#!/bin/bash\n")
        assert "#SBATCH --account=abc123\n" in s
        assert f"#SBATCH --nodes={job.nodes}\n" in s
        assert "#SBATCH --ntasks-per-node=1\n" in s
        assert "#SBATCH --time=01:00:00\n" in s
        assert f"#SBATCH --job-name=fp-test-n{job.nodes}\n" in s
        assert f"#SBATCH --output={job.dir}/slurm-%j.out\n" in s
        assert "#SBATCH --partition=compute\n" in s
        assert "--qos" not in s and "--constraint" not in s
        assert "set -euo pipefail" in s
        assert 'cd "$SLURM_SUBMIT_DIR"' in s
        assert "source ~/venvs/fp/bin/activate\n" in s
        # every directive comes before the first command
        header = s.split("set -euo pipefail")[0]
        assert all(line.startswith("#") for line in header.splitlines() if line.strip())
        lines = harness_lines(s)
        assert len(lines) == 1
        line = lines[0]
        assert f"--workers {','.join(str(w) for w in job.workers)} " in line
        assert "--model tiny,smallnet " in line
        assert "--transfer parsl,redis " in line
        assert "--trials 3 " in line and "--rounds 1 " in line and "--train none " in line
        assert f"--parsl-config {job.site_path} " in line
        assert f"--results {tmp_path / 'results' / 'scaling.csv'} " in line
    assert "--workers 2,8,32,128 " in harness_lines(jobs[0].script)[0]
    assert "--workers 2048 " in harness_lines(jobs[-1].script)[0]


def test_slurm_optional_directives(tmp_path: Path) -> None:
    _, jobs = render(slurm_spec(partition=None, qos="regular", constraint="cpu",
                                directives=["#SBATCH --cpus-per-task=256"]), tmp_path)
    s = jobs[0].script
    assert "--partition" not in s
    assert "#SBATCH --qos=regular\n" in s
    assert "#SBATCH --constraint=cpu\n" in s
    assert "#SBATCH --cpus-per-task=256\n" in s


def test_pbs_script_directives(tmp_path: Path) -> None:
    _, jobs = render(pbs_spec(walltime="00:45:00"), tmp_path)
    assert [j.nodes for j in jobs] == [2, 3, 5, 9, 17]
    for job in jobs:
        s = job.script
        assert "#PBS -A abc123\n" in s
        assert "#PBS -q prod\n" in s
        assert f"#PBS -l select={job.nodes}:system=polaris\n" in s
        assert "#PBS -l walltime=00:45:00\n" in s
        assert "#PBS -l filesystems=home:eagle\n" in s
        assert f"#PBS -N fp-test-n{job.nodes}\n" in s
        assert f"#PBS -o {job.dir}/" in s and f"#PBS -e {job.dir}/" in s
        assert 'cd "$PBS_O_WORKDIR"' in s
        assert "#SBATCH" not in s
        assert len(harness_lines(s)) == 1
        header = s.split("set -euo pipefail")[0]
        assert all(line.startswith("#") for line in header.splitlines() if line.strip())
        # mpiexec places managers from $PBS_NODEFILE: the job narrows it to the worker nodes
        assert 'export PBS_NODEFILE="$WORKER_NODEFILE"' in s
        assert f"-ne {job.nodes - 1} ]" in s


def test_redis_block_only_when_redis_is_a_transfer(tmp_path: Path) -> None:
    _, with_redis = render(slurm_spec(transfers=["parsl", "redis"]), tmp_path / "a")
    _, without = render(slurm_spec(transfers=["parsl"]), tmp_path / "b")
    for job in with_redis:
        s = job.script
        line = harness_lines(s)[0]
        assert "--transfer parsl,redis " in line
        assert "--redis $REDIS_HOST:$REDIS_PORT" in line
        assert "ip -4 addr show ib0 | awk '/inet /{print $2}' | cut -d/ -f1" in s
        assert "REDIS_PORT=6379\n" in s
        start = s.index('redis-server "$REDIS_CONF" --bind')
        assert '--bind "$REDIS_HOST" "${REDIS_LISTEN[@]}"' in s
        assert 'redis-server "$REDIS_CONF" --bind' in s  # requirepass from a private file
        assert "--protected-mode no" not in s and "requirepass" in s
        for flag in ("--save ''", "--appendonly no", "--protected-mode yes", "--daemonize yes",
                     "--logfile"):
            assert flag in s[start:start + 300]
        # TLS by default: a TLS port only, certificates in a private temporary directory
        assert "REDIS_TLS=1\n" in s and '--port 0 --tls-port "$REDIS_PORT"' in s
        assert 'mktemp -d "${TMPDIR:-/tmp}/flight-parsl-redis-tls-XXXXXX"' in s
        assert 'export FLIGHT_PARSL_REDIS_CA_FILE="$REDIS_TLS_DIR/ca.crt"' in s
        trap = s.index("trap '")
        assert 'stop_redis() { "${REDIS_CLI[@]}" shutdown nosave' in s
        assert 'REDIS_CLI=(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT")' in s
        assert "stop_redis" in s[trap:].split("\n")[0] and 'rm -rf "$REDIS_TLS_DIR"' in s[trap:].split("\n")[0]
        assert s[trap:].split("\n")[0].endswith("EXIT")
        # the trap is set before anything is made; the server is up (bounded ping loop) before the harness runs
        assert trap < s.index("mktemp") < start < s.index('"${REDIS_CLI[@]}" ping') < s.index(HARNESS)
    for job in without:
        s = job.script
        assert "--transfer parsl " in harness_lines(s)[0]
        assert "--redis" not in s
        assert "redis-server" not in s and "' EXIT" not in s


def test_redis_host_without_interface_and_custom_port(tmp_path: Path) -> None:
    _, jobs = render(slurm_spec(redis_interface=None, redis_port=7001), tmp_path)
    s = jobs[0].script
    assert "hostname -i | awk '{print $1}'" in s
    assert "ip -4 addr" not in s
    assert "REDIS_PORT=7001\n" in s


def test_file_transfer_stays_in_the_same_command(tmp_path: Path) -> None:
    _, jobs = render(slurm_spec(transfers=["parsl", "file", "redis"],
                                extra_args=["transfer.file_dir=/scratch/fp", "--round-timeout",
                                            "600"]), tmp_path)
    for job in jobs:
        lines = harness_lines(job.script)
        assert len(lines) == 1
        assert "--transfer parsl,file,redis " in lines[0]
        assert lines[0].endswith(
            "--redis $REDIS_HOST:$REDIS_PORT transfer.file_dir=/scratch/fp --round-timeout 600")


def test_extra_args_are_shell_quoted(tmp_path: Path) -> None:
    _, jobs = render(slurm_spec(transfers=["parsl"], extra_args=["train.note=a b; rm -rf x"]),
                     tmp_path)
    assert harness_lines(jobs[0].script)[0].endswith("'train.note=a b; rm -rf x'")


def _bash_n(path: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, f"{path}: {proc.stderr}"


@pytest.mark.parametrize("spec_path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_specs_render_and_pass_bash_n(spec_path: Path, tmp_path: Path) -> None:
    spec = load_spec(spec_path)  # also checks the model names against the harness
    jobs = render_jobs(spec, tmp_path / "out", cwd=ROOT)
    study = [1] if spec.head_node_workers else [2, 3, 5, 9, 17]  # local_slurm: one node
    assert [j.nodes for j in jobs] == study
    write_jobs(jobs)
    for job in jobs:
        assert job.script_path.read_text() == job.script
        assert os.access(job.script_path, os.X_OK)
        _bash_n(job.script_path)


@pytest.mark.parametrize("make", [slurm_spec, pbs_spec], ids=["slurm", "pbs"])
@pytest.mark.parametrize("transfers", [["parsl"], ["redis"], ["parsl", "redis"]])
@pytest.mark.parametrize("interface", ["ib0", None])
def test_every_variant_passes_bash_n(make, transfers: list[str], interface: str | None,
                                     tmp_path: Path) -> None:
    _, jobs = render(make(transfers=transfers, redis_interface=interface, worker_init=""),
                     tmp_path)
    write_jobs(jobs)
    for job in jobs:
        _bash_n(job.script_path)


def test_bash_n_catches_a_broken_script(tmp_path: Path) -> None:
    broken = tmp_path / "broken.sh"
    broken.write_text("#!/bin/bash\nif true; then\n  echo x\n")
    with pytest.raises(AssertionError):
        _bash_n(broken)


# --------------------------------------------------------------------------- site copy


@pytest.mark.parametrize("make", [slurm_spec, pbs_spec], ids=["expanse", "polaris"])
def test_site_copy_per_job(make, tmp_path: Path) -> None:
    from flight_parsl.execution.site import load_site

    source_text = Path(make()["parsl_config"]).read_text()
    _, jobs = render(make(workers_per_node=64, workers=[2, 64, 65, 1000]), tmp_path)
    write_jobs(jobs)
    assert [j.nodes for j in jobs] == [2, 3, 17]
    for job in jobs:
        assert job.site_path == job.dir / "site.yaml"
        assert job.site_path.parent == job.script_path.parent
        data = yaml.safe_load(job.site_path.read_text())
        assert data["provider"]["nodes_per_block"] == job.nodes - 1
        assert data["max_workers_per_node"] == 64
        assert data["provider"]["worker_init"] == "source ~/venvs/fp/bin/activate"
        site = load_site(job.site_path)  # the harness accepts it
        assert site["provider"]["nodes_per_block"] == job.nodes - 1
        assert site["provider"]["kind"] == "local"
        assert f"--parsl-config {job.site_path} " in harness_lines(job.script)[0]
    assert Path(make()["parsl_config"]).read_text() == source_text  # the source is untouched


def test_site_that_submits_its_own_job_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="'parsl_config'.*pbspro"):
        render(pbs_spec(parsl_config=str(ROOT / "configs" / "parsl" / "polaris.yaml")), tmp_path)


def test_site_with_too_few_accelerators_is_refused(tmp_path: Path) -> None:
    site = yaml.safe_load(POLARIS_SITE.read_text())
    site["available_accelerators"] = 4
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(site))
    with pytest.raises(SpecError, match="'workers_per_node'"):
        render(pbs_spec(parsl_config=str(path)), tmp_path)
    _, jobs = render(pbs_spec(parsl_config=str(path), workers_per_node=4, workers=[4, 8]), tmp_path)
    assert [j.nodes for j in jobs] == [2, 3]


def test_missing_site_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="'parsl_config'.*not found"):
        render(slurm_spec(parsl_config="configs/parsl/nope.yaml"), tmp_path)


def test_bare_site_name_resolves(tmp_path: Path) -> None:
    _, jobs = render(slurm_spec(parsl_config="expanse"), tmp_path)
    assert "expanse.yaml" in jobs[0].site_text


def test_write_jobs_refuses_to_overwrite(tmp_path: Path) -> None:
    _, jobs = render(slurm_spec(transfers=["parsl"]), tmp_path)
    write_jobs(jobs)
    with pytest.raises(SubmitError, match="exists already"):
        write_jobs(jobs)


# ------------------------------------------------------------------- rendered scripts run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    """Whether something accepts connections on the loopback port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2.0).close()
        return True
    except OSError:
        return False


#: What the harness does with the job's Redis: it opens the redis transfer (credentials and CA from
#: the environment, as the job script exports them), makes its own user and stores a key.
HARNESS_CHECK = """
import sys
from flight_parsl.transfer import open_transfer
with open_transfer("redis", redis=sys.argv[1], redis_timeout=5.0) as t:
    c = t.store.connector
    key = c.put(b"x")
    print("tls" if c.tls else "plain", c.username.split("-")[0], bytes(c.get(key)).decode())
"""


def _fake_python(bin_dir: Path, record: Path, exit_code: int = 0) -> None:
    """A `python` that records its arguments, pings the --redis server and lists $PBS_NODEFILE."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "python"
    script.write_text(f"""#!/bin/bash
echo "ARGS $*" >> "{record}"
prev=""
TLS=()
if [ -n "${{FLIGHT_PARSL_REDIS_CA_FILE:-}}" ]; then
    TLS=(--tls --cacert "$FLIGHT_PARSL_REDIS_CA_FILE")
    CA_DIR=$(dirname "$FLIGHT_PARSL_REDIS_CA_FILE")
    echo "CA $FLIGHT_PARSL_REDIS_CA_FILE $(stat -c %a "$CA_DIR") $(cd "$CA_DIR" && stat -c %n:%a * | tr '\n' ' ')" >> "{record}"
fi
for a in "$@"; do
    if [ "$prev" = "--redis" ]; then
        echo "PING $(redis-cli "${{TLS[@]}}" -h "${{a%:*}}" -p "${{a##*:}}" ping)" >> "{record}"
        echo "ANON $(env -u REDISCLI_AUTH redis-cli "${{TLS[@]}}" -h "${{a%:*}}" -p "${{a##*:}}" ping 2>&1)" >> "{record}"
        echo "PLAIN $(timeout 5 redis-cli -h "${{a%:*}}" -p "${{a##*:}}" ping 2>&1 | head -c 60)" >> "{record}"
        echo "AUTH $REDISCLI_AUTH" >> "{record}"
        echo "HARNESS $({sys.executable} -c "$HARNESS_CHECK" "$a" 2>&1 | tail -n 1)" >> "{record}"
    fi
    prev="$a"
done
if [ -n "${{PBS_NODEFILE:-}}" ]; then sed 's/^/NODE /' "$PBS_NODEFILE" >> "{record}"; fi
exit {exit_code}
""")
    script.chmod(0o755)


needs_redis = pytest.mark.skipif(
    not (shutil.which("redis-server") and shutil.which("redis-cli") and shutil.which("ip")),
    reason="redis-server, redis-cli or ip not installed",
)


@needs_redis
@pytest.mark.parametrize(("harness_rc", "tls"), [(0, True), (3, True), (0, False)])
def test_slurm_script_runs_redis_and_stops_it(tmp_path: Path, harness_rc: int, tls: bool) -> None:
    port = _free_port()
    _, jobs = render(slurm_spec(workers=[2, 8], transfers=["parsl", "redis"], worker_init="",
                                redis_interface="lo", redis_port=port, redis_tls=tls), tmp_path)
    write_jobs(jobs)
    (job,) = jobs
    record = tmp_path / "record.txt"
    _fake_python(tmp_path / "bin", record, exit_code=harness_rc)
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
               SLURM_SUBMIT_DIR=str(tmp_path), SLURM_JOB_ID="42", HARNESS_CHECK=HARNESS_CHECK)
    try:
        proc = subprocess.run(["bash", str(job.script_path)], env=env, capture_output=True,
                              text=True, timeout=90)
        assert proc.returncode == harness_rc, proc.stderr
        lines = record.read_text().splitlines()
        assert lines[0].startswith("ARGS -m flight_parsl.scale --workers 2,8 ")
        assert lines[0].endswith(f"--redis 127.0.0.1:{port}")
        assert "PING PONG" in lines  # the server answered while the harness ran
        # the harness reached it (over TLS with the job's CA), as a user of its own
        assert f"HARNESS {'tls' if tls else 'plain'} flight_parsl x" in lines, lines
        assert "ANON NOAUTH Authentication required." in lines  # not without the job's password
        cas = [line.split() for line in lines if line.startswith("CA ")]
        (plain,) = [line for line in lines if line.startswith("PLAIN")]
        if tls:  # the harness got the job's CA; its directory is private; plain text gets no answer
            ((_, ca_file, mode, *files),) = cas
            assert mode == "700" and sorted(files) == ["ca.crt:600", "server.crt:600", "server.key:600"]
            assert not Path(ca_file).is_relative_to(tmp_path)  # never the job or run directory
            assert "PONG" not in plain and "NOAUTH" not in plain
            assert not Path(ca_file).parent.exists()  # the EXIT trap removed the certificates
        else:
            assert cas == [] and plain == "PLAIN PONG"  # redis_tls: false: plain text, with the password
        (password,) = [line.split(" ", 1)[1] for line in lines if line.startswith("AUTH ")]
        assert len(password) == 64  # 32 random bytes, hex
        assert password not in lines[0] and password not in proc.stdout + proc.stderr
        assert password not in job.script_path.read_text()
        assert not (job.dir / "redis-42.conf").exists()  # the EXIT trap removed it
        assert (job.dir / "redis-42.log").is_file()
        deadline = time.time() + 10
        while _listening(port) and time.time() < deadline:
            time.sleep(0.2)
        assert not _listening(port)  # the EXIT trap stopped it, also after a failure
    finally:
        if _listening(port):  # a failed test: stop the server with the job's password
            auth = [line.split(" ", 1)[1] for line in record.read_text().splitlines() if line.startswith("AUTH ")]
            tls_args = ["--tls", "--insecure"] if tls else []
            subprocess.run(["redis-cli", *tls_args, "-h", "127.0.0.1", "-p", str(port), "shutdown", "nosave"],
                           capture_output=True, timeout=10, env=dict(os.environ, REDISCLI_AUTH=auth[0] if auth else ""))


@needs_redis
def test_redis_block_fails_clearly_without_the_interface(tmp_path: Path) -> None:
    _, jobs = render(slurm_spec(workers=[2], transfers=["redis"], worker_init="",
                                redis_interface="nosuchif0", redis_port=_free_port()), tmp_path)
    write_jobs(jobs)
    record = tmp_path / "record.txt"
    _fake_python(tmp_path / "bin", record)
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
               SLURM_SUBMIT_DIR=str(tmp_path), SLURM_JOB_ID="7")
    proc = subprocess.run(["bash", str(jobs[0].script_path)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert "no IPv4 address for Redis (interface nosuchif0)" in proc.stderr
    assert not record.exists()  # the harness never started


def test_pbs_script_keeps_workers_off_the_head_node(tmp_path: Path) -> None:
    _, jobs = render(pbs_spec(workers=[256], transfers=["parsl"], worker_init=""), tmp_path)
    write_jobs(jobs)
    (job,) = jobs
    assert job.nodes == 3
    head = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    nodefile = tmp_path / "nodefile"
    nodefile.write_text(f"{head}.hsn.example\nw1.hsn.example\nw2.hsn.example\nw1.hsn.example\n")
    record = tmp_path / "record.txt"
    _fake_python(tmp_path / "bin", record)
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
               PBS_O_WORKDIR=str(tmp_path), PBS_JOBID="99.pbs", PBS_NODEFILE=str(nodefile))
    proc = subprocess.run(["bash", str(job.script_path)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = record.read_text().splitlines()
    assert lines[0].startswith("ARGS -m flight_parsl.scale --workers 256 ")
    assert [line for line in lines if line.startswith("NODE ")] == [
        "NODE w1.hsn.example", "NODE w2.hsn.example"]
    assert "warning" not in proc.stderr


# --------------------------------------------------------------------------- command line


def test_dry_run_prints_scripts_and_creates_nothing(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, slurm_spec(account="YOUR_ACCOUNT"))  # dry-run needs no account
    log = fake_command(tmp_path / "bin", "sbatch", "Submitted batch job 123")
    out = tmp_path / "out"
    proc = run_cli([str(spec), "--dry-run", "--out-dir", str(out)], tmp_path, [tmp_path / "bin"])
    assert proc.returncode == 0, proc.stderr
    headers = [line for line in proc.stdout.splitlines() if line.startswith("# ==> ")]
    assert headers == [
        f"# ==> {out}/fp-test-n{n}/{name}" for n in (2, 3, 5, 9, 17)
        for name in ("job.sh", "site.yaml")
    ]
    assert proc.stdout.count("#!/bin/bash") == 5
    assert proc.stdout.count(HARNESS) == 5
    assert "#SBATCH --nodes=17" in proc.stdout
    assert "nodes_per_block: 16" in proc.stdout
    assert "nothing submitted" in proc.stderr
    assert not out.exists()
    assert not log.exists()  # sbatch never ran


def test_submit_calls_sbatch_once_per_job(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, slurm_spec())
    log = fake_command(tmp_path / "bin", "sbatch", "Submitted batch job 123")
    out = tmp_path / "out"
    proc = run_cli([str(spec), "--out-dir", str(out)], tmp_path, [tmp_path / "bin"])
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    expected = [str(out / f"fp-test-n{n}" / "job.sh") for n in (2, 3, 5, 9, 17)]
    assert calls == expected
    for path in expected:
        assert Path(path).is_file()
        assert (Path(path).parent / "site.yaml").is_file()
    assert proc.stdout.count("-> job 123") == 5
    assert "fp-test-n17: 17 nodes, workers 2048 -> job 123" in proc.stdout
    rows = (out / "submitted.tsv").read_text().splitlines()
    assert [r.split("\t")[:3] for r in rows] == [[f"fp-test-n{n}", str(n), "123"]
                                                  for n in (2, 3, 5, 9, 17)]


def test_submit_calls_qsub_for_pbs(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, pbs_spec(workers=[2, 256]))
    log = fake_command(tmp_path / "bin", "qsub", "4567.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov")
    out = tmp_path / "out"
    proc = run_cli([str(spec), "--out-dir", str(out)], tmp_path, [tmp_path / "bin"])
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines() == [str(out / "fp-test-n2" / "job.sh"),
                                            str(out / "fp-test-n3" / "job.sh")]
    assert "-> job 4567.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov" in proc.stdout


def test_missing_qsub_is_a_clear_error(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, pbs_spec())
    empty = tmp_path / "emptybin"
    empty.mkdir()
    out = tmp_path / "out"
    proc = run_cli([str(spec), "--out-dir", str(out)], tmp_path, [empty], replace_path=True)
    assert proc.returncode == 1
    assert "'qsub' not found on PATH" in proc.stderr
    assert "--dry-run" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_missing_sbatch_in_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, jobs = render(slurm_spec(), tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SubmitError, match="'sbatch' not found on PATH.*--dry-run"):
        submit_jobs(jobs, "slurm")


def test_refused_job_stops_and_names_it(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"
    fake.write_text('#!/bin/bash\ncase "$1" in *n3*) echo "sbatch: error: bad qos" >&2; exit 1;; '
                    'esac\necho "Submitted batch job 55"\n')
    fake.chmod(0o755)
    spec = write_spec(tmp_path, slurm_spec())
    proc = run_cli([str(spec), "--out-dir", str(tmp_path / "out")], tmp_path, [bin_dir])
    assert proc.returncode == 1
    assert "fp-test-n2: 2 nodes, workers 2,8,32,128 -> job 55" in proc.stdout
    assert "fp-test-n3/job.sh failed (exit 1): sbatch: error: bad qos" in proc.stderr
    assert "submitted before it: fp-test-n2=55" in proc.stderr
    assert "fp-test-n5" not in proc.stdout


def test_placeholder_account_is_not_submitted(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, slurm_spec(account="YOUR_ACCOUNT"))
    log = fake_command(tmp_path / "bin", "sbatch", "Submitted batch job 1")
    proc = run_cli([str(spec), "--out-dir", str(tmp_path / "out")], tmp_path, [tmp_path / "bin"])
    assert proc.returncode == 2
    assert "'account'" in proc.stderr
    assert not log.exists()


def test_cli_spec_error_exits_2_naming_the_key(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, slurm_spec(trials=0))
    proc = run_cli([str(spec), "--dry-run"], tmp_path)
    assert proc.returncode == 2
    assert "'trials'" in proc.stderr and "must be >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


# ------------------------------------------------------------------------- spec errors


def _without(key: str) -> dict[str, Any]:
    spec = slurm_spec()
    del spec[key]
    return spec


@pytest.mark.parametrize(("data", "key", "detail"), [
    (slurm_spec(trails=3), "trails", "unknown key"),
    (slurm_spec(scheduler="lsf"), "scheduler", "must be one of 'slurm' or 'pbs'"),
    (slurm_spec(trials=0), "trials", ">= 1"),
    (slurm_spec(trials="3"), "trials", "must be an integer"),
    (slurm_spec(rounds=-1), "rounds", ">= 1"),
    (slurm_spec(workers_per_node=0), "workers_per_node", ">= 1"),
    (slurm_spec(workers_per_node=True), "workers_per_node", "must be an integer"),
    (slurm_spec(workers=[]), "workers", "needs at least 1 item"),
    (slurm_spec(workers=[2, 0]), "workers[1]", ">= 1"),
    (slurm_spec(workers=[2, 2.5]), "workers[1]", "must be an integer"),
    (slurm_spec(workers=[8, 8]), "workers", "twice"),
    (slurm_spec(workers=128), "workers", "must be a list"),
    (slurm_spec(models=[]), "models", "needs at least 1 item"),
    (slurm_spec(transfers=["grpc"]), "transfers[0]", "must be one of 'parsl', 'redis' or 'file'"),
    (slurm_spec(transfers=[]), "transfers", "needs at least 1 item"),
    (slurm_spec(transfers=["file"]), "transfers", "transfer.file_dir"),
    (slurm_spec(walltime=3600), "walltime", "quote"),
    (slurm_spec(walltime="1 hour"), "walltime", "HH:MM:SS"),
    (slurm_spec(account=""), "account", "empty"),
    (_without("account"), "account", "missing"),
    (_without("parsl_config"), "parsl_config", "missing"),
    (slurm_spec(queue="prod"), "queue", "pbs key"),
    (pbs_spec(partition="compute"), "partition", "slurm key"),
    (pbs_spec(queue=None), "queue", "required"),
    (slurm_spec(redis_port=70000), "redis_port", "must be <= 65535"),
    (slurm_spec(redis_interface="ib0; rm"), "redis_interface", "one word"),
    (slurm_spec(job_name="my job"), "job_name", "letters"),
    (slurm_spec(extra_args=["--workers=4"]), "extra_args[0]", "--workers"),
    (slurm_spec(extra_args=["--redis", "h:1"]), "extra_args[0]", "--redis"),
    (slurm_spec(extra_args="x=1"), "extra_args", "must be a list"),
    (slurm_spec(directives=["--exclusive"]), "directives[0]", "#SBATCH"),
    (pbs_spec(directives=["#SBATCH --exclusive"]), "directives[0]", "#PBS"),
])
def test_spec_errors_name_the_key(data: dict[str, Any], key: str, detail: str) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec(data, "test-spec", check_models=False)
    message = str(info.value)
    assert f"'{key}'" in message
    assert detail in message
    assert message.startswith("job spec 'test-spec': ")
    assert isinstance(info.value, ConfigError)  # one error family: FlightParslError


def test_unknown_model_names_the_key() -> None:
    pytest.importorskip("torch")
    with pytest.raises(SpecError, match="'models'.*'resnet19'.*valid names: .*resnet18"):
        validate_spec(slurm_spec(models=["tiny", "resnet19"]), "test-spec")
    validate_spec(slurm_spec(models=["tiny", "resnet18"]), "test-spec")  # and good ones pass


def test_spec_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("scheduler: [slurm\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- scheduler\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(listed)


def test_valid_spec_defaults() -> None:
    data = slurm_spec()
    for key in ("job_name", "trials", "rounds", "results", "redis_port", "extra_args", "qos",
                "constraint", "redis_interface", "workers_per_node"):
        del data[key]
    spec = validate_spec(data, "test-spec", check_models=False)
    assert (spec.job_name, spec.trials, spec.rounds, spec.redis_port) == ("fp-scaling", 1, 1, 6379)
    assert spec.workers_per_node == 128 and spec.results == "results/scaling.csv"
    assert spec.extra_args == () and spec.directives == ()
    pbs = validate_spec(pbs_spec(), "test-spec", check_models=False)
    assert pbs.filesystems == "home:eagle"

"""Several sites in one run: placement, the multi-site Config, the router, Globus Compute
sites, virtual hosts (network namespaces), and one real two-site run across namespaces."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import read_csv, read_summary, run_quietly

from flight_parsl.core.errors import ConfigError, ExecutorError
from flight_parsl.engine.placement import place
from flight_parsl.engine.plan import Planner
from flight_parsl.execution import globus
from flight_parsl.execution.netns import (
    VirtualHost,
    VirtualNetwork,
    netns_available,
    virtual_network,
)
from flight_parsl.execution.sites import SiteRouter, build_sites_config, load_sites
from flight_parsl.topology.tree import load_topology

REPO = Path(__file__).resolve().parents[1]
TWO_SITES = REPO / "configs" / "topologies" / "example_two_sites.yaml"
SITE_A = REPO / "configs" / "parsl" / "netns" / "site-a.yaml"
SITE_B = REPO / "configs" / "parsl" / "netns" / "site-b.yaml"
ENDPOINT = "2e2f1a8c-1b7e-4f7e-9c55-0d3f6a1b2c3d"

NO_NETNS = netns_available()


def _write(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _ours() -> list[str]:
    """Namespaces of this process still present."""
    import os

    out = subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"fpns-{os.getpid()}-")]


# placement ----------------------------------------------------------------------------


def test_placement_follows_the_site_keys_of_the_topology() -> None:
    tree = load_topology(TWO_SITES)
    p = place(tree, 8, ["site-a", "site-b"])
    assert p.client_site == ("site-a",) * 4 + ("site-b",) * 4
    assert p.node("agg-a") == "site-a" and p.node("agg-b") == "site-b"
    assert p.train([5, 6]) == "site-b"
    assert p.clients_per_site() == {"site-a": 4, "site-b": 4}
    assert place(None, 3, ["home", "x"]).client_site == ("home",) * 3  # flat: the default site


def test_aggregators_can_run_at_their_childrens_site(tmp_path) -> None:
    topo = {
        "nodes": [
            {"name": "coordinator", "kind": "coordinator", "children": ["agg"]},
            {"name": "agg", "kind": "aggregator", "children": ["w0", "w1"]},
            {"name": "w0", "kind": "worker", "site": "edge"},
            {"name": "w1", "kind": "worker", "site": "edge"},
        ]
    }
    tree = load_topology(_write(tmp_path / "t.yaml", topo))
    assert place(tree, 2, ["home", "edge"]).node("agg") == "home"
    assert place(tree, 2, ["home", "edge"], aggregate_at="children").node("agg") == "edge"


def test_unknown_sites_are_named_and_tasks_never_mix_sites(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"site 'site-b' is not one of the run's sites \(site-a\)"):
        place(load_topology(TWO_SITES), 8, ["site-a"])
    topo = {
        "nodes": [
            {"name": "coordinator", "kind": "coordinator", "children": ["w0", "w1", "w2", "w3"]},
            {"name": "w0", "kind": "worker", "site": "a"},
            {"name": "w1", "kind": "worker", "site": "b"},
            {"name": "w2", "kind": "worker", "site": "a"},
            {"name": "w3", "kind": "worker", "site": "b"},
        ]
    }
    p = place(load_topology(_write(tmp_path / "t.yaml", topo)), 4, ["a", "b"])
    assert p.client_site == ("a", "b", "a", "b")
    tasks = Planner(1, site=p.client_site.__getitem__).plan({"coordinator": [0, 1, 2, 3]})
    assert sorted(t.clients for t in tasks) == [(0, 2), (1, 3)]  # one slot, yet one task per site


# the multi-site Config and the router -------------------------------------------------


def test_one_config_holds_one_encrypted_htex_per_site_on_the_bridge(tmp_path) -> None:
    sites = load_sites(f"{SITE_A},{SITE_B}")
    net = VirtualNetwork("fpns-0-", "fpbr0", "10.231.99.1", "10.231.99.0/24")
    net.hosts = {
        "host-a": VirtualHost("host-a", "fpns-0-host-a", "10.231.99.2"),
        "host-b": VirtualHost("host-b", "fpns-0-host-b", "10.231.99.3"),
    }
    config = build_sites_config(sites, {"site-a": 3, "site-b": 2}, tmp_path, net)
    a, b = config.executors
    assert (a.label, b.label) == ("site-a", "site-b")
    assert a.address == b.address == "10.231.99.1" and a.encrypted and b.encrypted
    assert (a.max_workers_per_node, b.max_workers_per_node) == (3, 2)
    assert a.launch_cmd.startswith("ip netns exec fpns-0-host-a unshare --uts")
    assert "process_worker_pool.py" in a.launch_cmd
    with pytest.raises(ConfigError, match="needs a virtual network"):
        build_sites_config(sites, {}, tmp_path, None)


def test_site_labels_must_differ(tmp_path) -> None:
    with pytest.raises(ConfigError, match="share the label 'site-a'"):
        load_sites([str(SITE_A), str(SITE_A)])


def test_router_sends_tasks_to_their_site_and_spreads_the_rest_by_slots() -> None:
    pools = {"a": ThreadPoolExecutor(1, thread_name_prefix="a"), "b": ThreadPoolExecutor(1, thread_name_prefix="b")}
    router = SiteRouter(pools, {"a": 1, "b": 3})
    try:

        def where() -> str:
            import threading

            return threading.current_thread().name[0]

        assert router.submit_to("b", where).result() == "b"
        assert router.submit_to(None, where).result() == "a"
        assert sorted(router.submit(where).result() for _ in range(8)) == ["a"] * 2 + ["b"] * 6
        with pytest.raises(ExecutorError, match="no site 'c'"):
            router.submit_to("c", where)
    finally:
        router.shutdown()


# Globus Compute -------------------------------------------------------------------------


def _globus_site(tmp_path: Path, **provider) -> str:
    return _write(tmp_path / "gc.yaml", {"label": "gc", "slots": 4, "provider": {"kind": "globus_compute", **provider}})


def test_globus_compute_site_needs_a_valid_endpoint_id(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"'provider.endpoint_id' is missing"):
        load_sites(_globus_site(tmp_path))
    with pytest.raises(ConfigError, match=r"'provider.endpoint_id' = 'nope': is not a UUID"):
        load_sites(_globus_site(tmp_path, endpoint_id="nope"))
    with pytest.raises(ConfigError, match=r"unknown key 'provider.queue'"):
        load_sites(_globus_site(tmp_path, endpoint_id=ENDPOINT, queue="x"))
    (site,) = load_sites(_globus_site(tmp_path, endpoint_id=ENDPOINT))
    assert site["label"] == "gc" and site["slots"] == 4 and site["provider"]["endpoint_id"] == ENDPOINT


def test_globus_compute_without_the_sdk_is_one_clear_error(tmp_path) -> None:
    pytest.importorskip("parsl")
    try:
        import globus_compute_sdk  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("globus-compute-sdk is installed")
    sites = load_sites(_globus_site(tmp_path, endpoint_id=ENDPOINT))
    with pytest.raises(ConfigError, match=r"site 'gc': provider 'globus_compute' needs the optional globus-compute-sdk"):
        build_sites_config(sites, {}, tmp_path)


def test_globus_compute_config_builds_with_the_sdk(tmp_path) -> None:
    pytest.importorskip("globus_compute_sdk", reason="the optional globus-compute-sdk is not installed")
    sites = load_sites(f"{SITE_A.parent.parent / 'local.yaml'},{_globus_site(tmp_path, endpoint_id=ENDPOINT)}")

    class Client:  # stands in for the SDK's web-service client: nothing here may log in or connect
        pass

    config = build_sites_config(sites, {"htex": 1}, tmp_path, globus_client=Client())
    from parsl.executors import GlobusComputeExecutor

    gce = config.executors[1]
    assert isinstance(gce, GlobusComputeExecutor) and gce.label == "gc"
    assert str(gce.executor.endpoint_id) == ENDPOINT
    assert globus.describe(sites[1]).endswith(f"endpoint={ENDPOINT} slots=4")


# virtual hosts ---------------------------------------------------------------------------


@pytest.mark.skipif(NO_NETNS is not None, reason=f"no network namespaces here: {NO_NETNS}")
def test_virtual_network_is_removed_also_after_an_error() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with virtual_network(["h1", "h2"]) as net:
            assert len(_ours()) == 2
            h1 = net.host("h1")
            out = subprocess.run(
                f"{h1.command_prefix()} sh -c 'hostname; ip -4 -o addr show eth0; ip route'",
                shell=True, check=False, capture_output=True, text=True, timeout=30,
            ).stdout
            assert out.splitlines()[0] == "h1" and f"inet {h1.address}/24" in out
            assert "default" not in out  # nothing routes outside the run's /24
            raise RuntimeError("boom")
    assert _ours() == []
    bridges = subprocess.run(["ip", "-o", "link", "show", net.bridge], check=False, capture_output=True, text=True)
    assert bridges.returncode != 0  # the bridge is gone


@pytest.mark.skipif(NO_NETNS is not None, reason=f"no network namespaces here: {NO_NETNS}")
def test_two_sites_across_namespaces_run_every_task_at_its_site(make_config) -> None:
    """A real run: two HTEX sites with encryption on, each worker pool in its own namespace,
    connected over TCP to the interchange on the bridge; Redis on the bridge too."""
    t0 = time.monotonic()
    run = run_quietly(
        make_config,
        f"sites.files={SITE_A},{SITE_B}",
        backend="parsl",
        workers=8,
        rounds=2,
        topology=str(TWO_SITES),
        model={"name": "tiny"},
        train={"mode": "none"},
        transfer={"kind": "redis"},
        plan={"clients_per_task": 2},
    )
    summary = read_summary(run)
    assert summary["status"] == "completed"
    sites = summary["sites"]
    assert {k: (v["virtual_host"], v["encrypted"], v["clients"]) for k, v in sites.items()} == {
        "site-a": ("host-a", True, 4),
        "site-b": ("host-b", True, 4),
    }
    assert sites["site-a"]["interchange_address"] == sites["site-b"]["interchange_address"] != "127.0.0.1"
    for label in ("site-a", "site-b"):  # CurveZMQ keys were made: the executors ran encrypted
        assert list(run.glob(f"parsl/*/{label}/certificates/*.key_secret")), label
    links = summary["site_links"]  # kernel counters of each host's veth: real traffic both ways
    assert sorted(links) == ["host-a", "host-b"]
    assert all(v["to_host"] > 0 and v["from_host"] > 0 for v in links.values())
    rows = read_csv(run / "tasks.csv")
    expected = {"agg-a": "site-a", "agg-b": "site-b"}
    host_of = {"site-a": "host-a", "site-b": "host-b"}
    assert {r["kind"] for r in rows} == {"train", "aggregate"}
    assert len([r for r in rows if r["kind"] == "train"]) == 16  # 8 clients x 2 rounds
    for r in rows:
        assert r["status"] == "ok"
        assert r["site"] == expected[r["node"]], r
        assert r["host"] == host_of[r["site"]], r  # the slot's host name is its namespace's
    assert _ours() == []
    assert time.monotonic() - t0 < 120


@pytest.mark.skipif(NO_NETNS is not None, reason=f"no network namespaces here: {NO_NETNS}")
def test_a_failed_multi_site_run_leaves_no_namespace_or_redis(make_config, tmp_path) -> None:
    import psutil

    broken = []
    for path in (SITE_A, SITE_B):
        site = yaml.safe_load(path.read_text())
        site.update(start_timeout=5)
        site["provider"]["worker_init"] = "exit 3"  # no worker pool ever starts
        broken.append(_write(tmp_path / path.name, site))
    with pytest.raises(ExecutorError):
        run_quietly(
            make_config, f"sites.files={broken[0]},{broken[1]}", backend="parsl", workers=8, rounds=1,
            topology=str(TWO_SITES), model={"name": "tiny"}, train={"mode": "none"}, transfer={"kind": "redis"},
        )
    assert read_summary(tmp_path / "run")["status"] == "failed"
    assert _ours() == []
    on_bridge = [  # the run's redis-server listened on its bridge (10.231.X.1); other runs use loopback
        p.pid for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "redis-server" and any(a.startswith("10.231.") for a in p.info["cmdline"] or [])
    ]
    assert on_bridge == []


@pytest.mark.skipif(NO_NETNS is not None, reason=f"no network namespaces here: {NO_NETNS}")
@pytest.mark.timeout(240)
def test_cleanup_removes_the_namespaces_of_a_sigkilled_several_sites_run(tmp_path) -> None:
    """A several-sites run's coordinator SIGKILLed mid-run leaves its namespaces (worker pools
    inside), bridge, veths and bridge redis-server; ``python -m flight_parsl.cleanup`` removes exactly
    those (leftovers.json lists them), and leaves another run's namespaces alone."""
    import json
    import os
    import signal
    import sys

    import psutil

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = tmp_path / "run"
    hangs = ",".join(f"{c}@{r}" for r in range(1, 4) for c in range(8))
    cmd = [sys.executable, "-m", "flight_parsl.scale", "--workers", "8", "--rounds", "100000", "--train", "none",
           "--model", "tiny", "--transfer", "redis", "--topology", str(TWO_SITES), "--out", str(run), "-q",
           f"sites.files={SITE_A},{SITE_B}", "plan.clients_per_task=2", f"faults.hang={hangs}", "faults.hang_s=0.5"]
    with (tmp_path / "run.log").open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def network() -> tuple[list[str], list[str]]:
        prefix = f"fpns-{proc.pid}-"
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        return [n for n in names if n.startswith(prefix)], [w for w in links.split() if w.rstrip(":").split("@")[0]
                                                            in (f"fpbr{proc.pid}",)]

    def of_run() -> list[int]:
        found = []
        for p in psutil.process_iter(["cmdline", "status"]):
            try:
                if p.info["status"] != psutil.STATUS_ZOMBIE and any(str(run) in a for a in p.info["cmdline"] or []):
                    found.append(p.pid)
            except psutil.NoSuchProcess:
                continue
        return found

    listed = None
    bystander = virtual_network(["bystander"])  # another run's network: not this run's leftover
    bystander.__enter__()
    try:
        deadline = time.monotonic() + 120
        while not ((run / "rounds.csv").exists() and len(read_csv(run / "rounds.csv")) >= 1):
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, "no first round within 120 s"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        listed = json.loads((run / "leftovers.json").read_text())
        namespaces, bridge = network()
        assert sorted(listed["network"]["namespaces"]) == sorted(namespaces) and len(namespaces) == 2
        assert listed["network"]["bridge"] == f"fpbr{proc.pid}" and bridge
        assert len(listed["network"]["links"]) == 2
        assert any(p["match"] == "redis-server" for p in listed["processes"]), listed  # the bridge's Redis
        inside = [pid for ns in namespaces for pid in
                  subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()]
        assert inside, "the sites' worker pools run inside their namespaces"
        dry = subprocess.run([sys.executable, "-m", "flight_parsl.cleanup", str(run), "--dry-run"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, dry.stderr
        for name in ("interchange", *namespaces, f"fpbr{proc.pid}", *listed["network"]["links"]):
            assert name in dry.stdout, dry.stdout
        assert network()[0] == namespaces  # --dry-run touched nothing
        done = subprocess.run([sys.executable, "-m", "flight_parsl.cleanup", str(run)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert network() == ([], [])
        assert len(_ours()) == 1  # the bystander's namespace is still there
        deadline = time.monotonic() + 10
        while of_run() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert of_run() == []
        def live(pid: int) -> bool:
            try:
                return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        assert not any(live(int(p)) for p in inside)
        for entry in listed["processes"]:
            try:
                assert entry["match"] not in " ".join(psutil.Process(int(entry["pid"])).cmdline())
            except psutil.NoSuchProcess:
                pass
        assert not (run / "leftovers.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in of_run():
            os.kill(pid, signal.SIGKILL)
        bystander.__exit__(None, None, None)
        from flight_parsl.execution.netns import remove_stale

        remove_stale()

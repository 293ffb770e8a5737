"""Shaped links (a site's ``link:``): units and bad input, the tc commands, and, as root in
namespaces, links measured near what was asked and nothing left afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from flight_parsl.core.errors import ConfigError
from flight_parsl.execution import links as links_mod
from flight_parsl.execution.links import Link, check_links, host_links, measure_link, off_by, tcp_settings
from flight_parsl.execution.netns import netns_available, virtual_network
from flight_parsl.execution.site import normalize_site

REPO = Path(__file__).resolve().parents[1]
TWO_SITES = REPO / "configs" / "topologies" / "example_two_sites.yaml"
SITE_A = REPO / "configs" / "parsl" / "netns" / "site-a.yaml"
SITE_B = REPO / "configs" / "parsl" / "netns" / "site-b.yaml"

NO_NETNS = netns_available() or links_mod.tc_available()
needs_netns = pytest.mark.skipif(NO_NETNS is not None, reason=f"no network namespaces or tc here: {NO_NETNS}")


def _site(link: object, host: str | None = "h") -> dict:
    return normalize_site({"label": "s", "virtual_host": host, "link": link}, "site file 'x.yaml'")


def _netem_here() -> bool:
    """True when this kernel has the netem qdisc (probed in a throwaway namespace)."""
    name = f"fpns-{os.getpid()}-netem-probe"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        probe = subprocess.run(["tc", "-n", name, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                               check=False, capture_output=True)
        return probe.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


NETEM = NO_NETNS is None and _netem_here()


def _devices() -> list[str]:
    devs = subprocess.run(["ip", "-o", "link", "show"], check=False, capture_output=True, text=True).stdout
    return [line.split(": ")[1].split("@")[0] for line in devs.splitlines() if ": " in line]


#: ifb devices the kernel made at boot (its ifb driver's numifbs); the links never make one.
IFB_AT_START = {d for d in _devices() if d.startswith("ifb")} if NO_NETNS is None else set()


def _leftovers() -> list[str]:
    """Namespaces, veths and bridges of this process, and new ifb devices, still present."""
    pid = os.getpid()
    ns = subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True).stdout
    out = [line.split()[0] for line in ns.splitlines() if line.startswith(f"fpns-{pid}-")]
    out += [d for d in _devices() if d.startswith(("fpv", "fpi", "fpbr")) and str(pid) in d
            or d.startswith("ifb") and d not in IFB_AT_START]
    return out


# units and bad input ----------------------------------------------------------------------


def test_units_become_bits_per_second_milliseconds_and_percent() -> None:
    assert _site({"rate": "1gbit", "delay": "5ms", "jitter": "0ms", "loss": "0%"})["link"] == {
        "rate": 10**9, "delay": 5.0, "jitter": 0.0, "loss": 0.0}
    assert _site({"rate": "50Mbit/s", "delay": "800us", "jitter": "0.1ms", "loss": 0.5})["link"] == {
        "rate": 50 * 10**6, "delay": 0.8, "jitter": 0.1, "loss": 0.5}
    assert _site({"rate": "512kbit", "delay": "0.02s"})["link"]["delay"] == 20.0
    site = _site({"rate": "100mbit", "delay": "20ms"})
    assert normalize_site(site)["link"] == site["link"]  # the normalised form validates again
    assert Link.of(site["link"]).rtt_ms == 40.0  # the delay is one way


@pytest.mark.parametrize(("link", "message"), [
    ({"rate": 0}, "key 'link.rate' = 0: must be > 0"),
    ({"rate": "0mbit"}, "key 'link.rate' = '0mbit': must be > 0"),
    ({"rate": "10furlong"}, "unknown unit 'furlong'; use bit, kbit, mbit, gbit, tbit"),
    ({"rate": "100mbps"}, "unit 'mbps' is ambiguous (tc reads it as bytes per second): write 100mbit"),
    ({"delay": "5 fortnights"}, "key 'link.delay' = '5 fortnights': unknown unit 'fortnights'; use us, ms, s"),
    ({"delay": "-1ms"}, "key 'link.delay' = '-1ms': must be >= 0"),
    ({"loss": "100%"}, "key 'link.loss' = '100%': must be >= 0% and < 100%"),
    ({"delay": "1ms", "jitter": "2ms"}, "key 'link.jitter' = '2ms': must be <= link.delay (1ms)"),
    ({}, "key 'link' = {}: shapes nothing"),
    ({"rate": "1gbit", "latency": "5ms"}, "unknown key 'link.latency'; allowed keys in link: rate, delay, jitter, loss"),
])
def test_bad_links_are_one_message_in_the_schema_format(link: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _site(link)
    assert str(err.value).startswith("site file 'x.yaml': key") or "unknown key" in str(err.value)
    assert message in str(err.value)


def test_a_link_needs_a_virtual_host() -> None:
    with pytest.raises(ConfigError, match=r"site file 'x.yaml': key 'link' = \{'rate': '1gbit'\}: needs 'virtual_host'"):
        _site({"rate": "1gbit"}, host=None)


def test_sites_on_one_virtual_host_share_one_link() -> None:
    a = _site({"rate": "1gbit"}) | {"label": "a"}
    b = _site({"rate": "2gbit"}) | {"label": "b"}
    with pytest.raises(ConfigError, match="virtual host 'h' already has the link of site 'a'"):
        host_links([a, b])
    assert host_links([a, a | {"label": "c"}]) == {"h": Link(10**9)}


def test_tc_commands_chain_netem_and_tbf_with_queues_for_rate_times_delay() -> None:
    wan = Link(100 * 10**6, 20.0, 1.0, 0.5)
    netem, tbf = wan.qdiscs("eth0")
    assert netem[:7] == ["qdisc", "add", "dev", "eth0", "root", "handle", "1:"]
    assert netem[7:] == ["netem", "limit", str(wan.netem_limit()), "delay", "20000us", "1000us", "loss", "random", "0.5%"]
    assert tbf[4:8] == ["parent", "1:1", "handle", "10:"] and tbf[8:10] == ["tbf", "rate"]
    burst, limit = wan.tbf_sizes()
    assert tbf[10:] == ["100000000bit", "burst", str(burst), "limit", str(limit)]
    assert burst == 50_000  # 4 ms of 100 Mbit/s
    assert limit >= 100e6 / 8 * 0.042  # the rate times the round trip (with jitter)
    fast = Link(10**10, 50.0)  # 10 Gbit/s, 100 ms round trip: far over netem's default 1000 packets
    assert fast.netem_limit() * 1448 >= 2 * 10**10 / 8 * 0.1
    only_rate = Link(10**9).qdiscs("fpv1h0")
    assert len(only_rate) == 1 and only_rate[0][4:7] == ["root", "handle", "1:"] and "tbf" in only_rate[0]
    only_delay = Link(None, 5.0).qdiscs("eth0")
    assert len(only_delay) == 1 and "netem" in only_delay[0] and "tbf" not in only_delay[0]


def test_off_by_twenty_percent_is_named() -> None:
    link = Link(50 * 10**6, 20.0)
    near = {"rtt_ms": 41.0, "to_host_bit_s": 47e6, "from_host_bit_s": 48e6}
    assert off_by(link, near) == []
    far = {"rtt_ms": 60.0, "to_host_bit_s": 30e6, "from_host_bit_s": 48e6}
    assert off_by(link, far) == ["rtt 60 ms, asked 40 ms", "throughput into the host 30mbit/s, asked 50mbit/s"]


def test_missing_tc_is_one_message_before_anything_is_made(make_config, monkeypatch, tmp_path) -> None:
    from flight_parsl.processes.multisite import open_run_sites

    site = yaml.safe_load(SITE_B.read_text()) | {"link": {"rate": "100mbit"}}
    path = tmp_path / "site-b.yaml"
    path.write_text(yaml.safe_dump(site))
    monkeypatch.setattr(links_mod.shutil, "which", lambda name: None)
    cfg = make_config(f"sites.files={SITE_A},{path}", backend="parsl", workers=8, topology=str(TWO_SITES))
    before = _leftovers() if NO_NETNS is None else []
    with pytest.raises(ConfigError, match=r"^site 'site-b': key 'link' = \{'rate': '100mbit', 'delay': '0ms', "
                                          r"'jitter': '0ms', 'loss': '0%'\}: needs the 'tc' command"):
        with open_run_sites(cfg):
            pass
    if NO_NETNS is None:
        assert _leftovers() == before == []


# as root, in namespaces -----------------------------------------------------------------


@needs_netns
def test_shaped_links_measure_within_twenty_percent_and_leave_nothing() -> None:
    """Two links at once, rate and delay: netem where the kernel has it, else the delay line."""
    asked = {"slow": Link(50 * 10**6, 20.0), "fast": Link(200 * 10**6, 5.0)}
    with virtual_network(list(asked), asked) as net:
        for name, link in asked.items():
            host = net.host(name)
            assert host.shaper == ("netem + tbf" if NETEM else "delay line + tbf")
            outer = subprocess.run(["tc", "qdisc", "show", "dev", host.link], capture_output=True, text=True).stdout
            inner = subprocess.run(["tc", "-n", host.netns, "qdisc", "show", "dev", "eth0"],
                                   capture_output=True, text=True).stdout
            for shown in (outer, inner):  # both directions: the bridge side's egress and eth0's
                assert f"rate {link.rate // 10**6}Mbit" in shown, shown
                assert ("netem" in shown) == NETEM
        checked = check_links(net, asked)
    for name, link in asked.items():
        m = checked[name]["measured"]
        assert checked[name]["off"] == [], checked[name]
        for key in ("to_host_bit_s", "from_host_bit_s"):
            assert abs(m[key] - link.rate) <= 0.2 * link.rate, (name, key, m)
            assert m[key] <= 1.05 * link.rate  # tbf lets no more through (the window's ends are timed late)
        assert abs(m["rtt_ms"] - link.rtt_ms) <= max(0.2 * link.rtt_ms, 2.0), (name, m)
        assert m["rtt_ms"] >= link.rtt_ms  # never faster than the delay both ways
        assert m["check_s"] < 4.0, m  # under 2 s a check; a second one when the first was off
        tcp = checked[name]["tcp"]  # what decides a warm connection's window after a round's idle
        assert set(tcp) == {"host", "coordinator"}
        for side in tcp.values():
            assert set(side) == {"tcp_congestion_control", "tcp_slow_start_after_idle", "tcp_rmem", "tcp_wmem"}
            assert side["tcp_slow_start_after_idle"] in ("0", "1") and len(side["tcp_rmem"].split()) == 3
        assert tcp["coordinator"] == tcp_settings()  # the bridge side is this process's namespace
    assert _leftovers() == []


@needs_netns
def test_a_rate_alone_is_shaped_by_tbf_only() -> None:
    asked = {"plain": Link(100 * 10**6)}
    with virtual_network(list(asked), asked) as net:
        assert net.host("plain").shaper == "tbf" and net.host("plain").link.startswith("fpv")  # a veth pair
        m = check_links(net, asked)["plain"]["measured"]
    assert abs(m["to_host_bit_s"] - 10**8) <= 2 * 10**7 and m["rtt_ms"] < 2.0, m
    assert _leftovers() == []


@needs_netns
def test_an_unshaped_host_measures_far_over_a_shaped_rate() -> None:
    """The check can fail: an unshaped veth is far faster than the rate it is held to."""
    with virtual_network(["free"]) as net:
        m = measure_link(net.host("free").netns, net.address, Link(50 * 10**6))
    assert off_by(Link(50 * 10**6), m), m
    assert _leftovers() == []


@needs_netns
def test_a_delay_line_that_cannot_start_is_one_message_and_leaves_nothing() -> None:
    """Without netem a delay needs the delay line's TAP devices; when they cannot be made the
    run stops with one message naming both (here: a device name with a slash)."""
    import psutil

    link = Link(100 * 10**6, 20.0, source="site 'wan'")
    with pytest.raises(ConfigError, match=r"^site 'wan': key 'link' = .*: delay, jitter and loss need the kernel's "
                                          r"netem qdisc \(CONFIG_NET_SCH_NETEM\), which this kernel lacks, or TAP "
                                          r"devices for a userspace delay line, which failed: OSError"):
        links_mod.start_delay_line({"wan": (link, "fpt/bad", "fpu0")})
    lines = [p for p in psutil.Process().children(recursive=True) if "delayline.py" in " ".join(p.cmdline())]
    assert lines == [] and _leftovers() == []


@needs_netns
def test_the_delay_line_goes_with_the_network_also_after_an_error() -> None:
    import psutil

    link = Link(None, 2.0, 1.0, 1.0, source="site 'lossy'")
    with pytest.raises(RuntimeError, match="boom"):
        with virtual_network(["lossy"], {"lossy": link}, netem=False) as net:
            host = net.host("lossy")
            assert host.shaper == "delay line" and host.link.startswith("fpt")
            m = measure_link(host.netns, net.address, link)
            assert 2.0 <= m["rtt_ms"] <= 8.0, m  # 2 x (2 +- 1) ms, and a loss here and there
            raise RuntimeError("boom")
    lines = [p for p in psutil.Process().children(recursive=True) if "delayline.py" in " ".join(p.cmdline())]
    assert lines == [] and _leftovers() == []


@needs_netns
def test_a_site_link_carries_one_model_down_and_one_partial_up_per_round(make_config, tmp_path) -> None:
    """Kernel byte counters of each site's link after a two-site run in which one task per
    site trains the site's four clients and folds them into one partial: per round, the
    model crosses each link once down and the partial once up, plus a small overhead
    (Parsl's own messages, TCP/IP headers). The shaped link (200 Mbit/s, 5 ms) carries the
    same bytes, and its rounds take at least what its rate allows."""
    from conftest import read_summary, run_quietly

    topo = {"description": "two sites straight under the coordinator", "nodes": [
        {"name": "coordinator", "kind": "coordinator", "children": [f"w{i}" for i in range(8)]},
        *({"name": f"w{i}", "kind": "worker", "site": "site-a" if i < 4 else "site-b"} for i in range(8))]}
    topo_path = tmp_path / "flat-two-sites.yaml"
    topo_path.write_text(yaml.safe_dump(topo))
    site_b = yaml.safe_load(SITE_B.read_text()) | {"link": {"rate": "200mbit", "delay": "5ms"}}
    site_b_path = tmp_path / "site-b.yaml"
    site_b_path.write_text(yaml.safe_dump(site_b))
    rounds = 2
    run = run_quietly(
        make_config, f"sites.files={SITE_A},{site_b_path}", backend="parsl", workers=8, rounds=rounds,
        topology=str(topo_path), train={"mode": "none"}, transfer={"kind": "parsl"},
        model={"name": "mlp", "in_channels": 3, "image_size": 64},  # 2.5M parameters, 10 MB
        plan={"clients_per_task": 4},
    )
    summary = read_summary(run)
    assert summary["status"] == "completed"
    model = summary["model_bytes"]
    assert model > 9_000_000
    payload = rounds * model  # each way: 1 model down, 1 partial up per round
    links = summary["site_links"]
    for host in ("host-a", "host-b"):
        for way in ("to_host", "from_host"):
            overhead = links[host][way] - payload
            print(f"{host} {way}: {links[host][way]} bytes, {payload} of models, overhead {overhead} "
                  f"({overhead / payload:.2%})")
            assert 0 < overhead <= 0.05 * payload, (host, way, links[host][way], payload)
    assert summary["sites"]["site-b"]["link"]["rate_bit_s"] == 200 * 10**6
    assert summary["links"]["host-b"]["shaper"] in ("netem + tbf", "delay line + tbf")
    assert summary["sites"]["site-a"]["link"] is None
    assert list(summary["links"]) == ["host-b"] and summary["links"]["host-b"]["off"] == []
    bound = 2 * model * 8 / 200e6  # the model down and the partial up, one after the other
    import csv

    with open(run / "rounds.csv") as f:
        makespans = [float(r["makespan_s"]) for r in csv.DictReader(f)]
    assert len(makespans) == rounds and min(makespans) >= bound, (makespans, bound)
    assert _leftovers() == []


@needs_netns
def test_a_killed_run_takes_its_delay_line_and_devices_along(tmp_path) -> None:
    """SIGKILL of the process that owns the network: the delay line dies with it (its devices
    with the line), and the next network removes the namespaces it left."""
    import signal
    import sys
    import time

    import psutil

    from flight_parsl.execution.netns import remove_stale

    script = (
        "import sys, time\n"
        "from flight_parsl.execution.links import Link\n"
        "from flight_parsl.execution.netns import virtual_network\n"
        "with virtual_network(['k'], {'k': Link(None, 5.0)}, netem=False) as net:\n"
        "    print(net.host('k').link, flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        tap = proc.stdout.readline().strip()
        assert tap.startswith("fpt"), tap
        line = [p for p in psutil.Process(proc.pid).children() if "delayline.py" in " ".join(p.cmdline())]
        assert len(line) == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        psutil.wait_procs(line, timeout=10)
        assert not line[0].is_running() or line[0].status() == psutil.STATUS_ZOMBIE
        deadline = time.monotonic() + 10
        while tap in _devices() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tap not in _devices()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
    assert any(name.startswith(f"fpns-{proc.pid}-") for name in remove_stale())


# the local Slurm cluster's compute nodes -------------------------------------------------


def _free_cluster_address() -> tuple[str, str]:
    """A slurmctld port nobody listens on and a 10.232.X /24 nobody routes (other clusters run
    beside this one: a shared port would send this test's daemons to another cluster)."""
    import ipaddress
    import socket

    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    used = [ipaddress.ip_network(t, strict=False) for t in routes.split() if t[0].isdigit() and "." in t]
    net = next(f"10.232.{x}" for x in range(40, 250)
               if not any(ipaddress.ip_network(f"10.232.{x}.0/24").overlaps(u) for u in used))
    for port in range(6900 + os.getpid() % 50, 7000):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        return net, str(port)
    raise RuntimeError("no free port for a side slurmctld")


@pytest.mark.skipif(NO_NETNS is not None or not all(
    shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "nsenter")),
    reason="needs root, slurm-wlm, munge, iproute2")
def test_local_slurm_nodes_take_a_shaped_link_and_stop_removes_it(tmp_path) -> None:
    """``start.sh --nodes 2 --link 100mbit,10ms`` on a side cluster: each node's link measures
    near what was asked, jobs run on both nodes, and stop.sh leaves nothing."""
    net, port = _free_cluster_address()
    tag = "lk"
    directory = tmp_path / "cluster"
    directory.mkdir()
    directory.chmod(0o755)
    env = {**os.environ, "FP_SLURM_DIR": str(directory), "FP_SLURM_TAG": tag, "FP_SLURM_NET": net,
           "FP_SLURM_PORT": port, "FP_SLURMD_TIMEOUT": "10", "SLURM_CONF": str(directory / "slurm.conf")}
    start, stop = REPO / "jobs/local_slurm/start.sh", REPO / "jobs/local_slurm/stop.sh"
    bad = subprocess.run(["bash", str(start), "--nodes", "2", "--link", "100mbps,10ms"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unit 'mbps' is ambiguous" in bad.stderr, bad.stderr
    assert not (directory / "slurm.conf").exists()  # refused before anything was written or started
    link = Link(100 * 10**6, 10.0)
    try:
        up = subprocess.run(["bash", str(start), "--nodes", "2", "--link", "100mbit,10ms"], env=env,
                            capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        hosts = subprocess.run(["srun", "-N2", "hostname"], env=env, capture_output=True, text=True, timeout=60)
        assert sorted(hosts.stdout.split()) == ["node1", "node2"], hosts.stdout + hosts.stderr
        for i in (1, 2):
            m = measure_link(f"{tag}node{i}", f"{net}.1", link)
            if off_by(link, m):
                m = measure_link(f"{tag}node{i}", f"{net}.1", link)  # once more, as the run's check does
            assert off_by(link, m) == [], m
    finally:
        down = subprocess.run(["bash", str(stop)], env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
    left = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert f"{tag}slurm0" not in left and f": {tag}t1" not in left and f": {tag}n1@" not in left
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{tag}node1" not in names and f"{tag}node2" not in names
    assert not (directory / "delayline.pid").exists()

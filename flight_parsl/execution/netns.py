"""Virtual hosts on one machine: Linux network namespaces joined by a bridge.

This module owns the private network a multi-site run builds for itself when a
site says ``virtual_host: NAME``: one network namespace per virtual host, each
with its own address, a veth pair from each namespace to one bridge in the root
namespace, and the bridge's address, which is where processes inside the
namespaces reach the coordinator's side (the HTEX interchange, a Redis server).

Nothing is routed outside: the namespaces get only their ``/24`` (no default
route), so they reach the bridge address and each other, never another network.
Names carry a per-process prefix (``fpns-<pid>-``, bridge ``fpbr<pid>``) and
:func:`virtual_network` removes everything it made when it exits, including after
an error, also killing processes still inside its namespaces. Needs root and the
``ip`` command (iproute2); a shaped link (a site's ``link:``, see
:mod:`flight_parsl.execution.links`) needs ``tc`` too.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from flight_parsl.core.errors import ConfigError, ExecutorError
from flight_parsl.execution.links import (
    Link,
    apply_link,
    check_tc,
    netem_available,
    start_delay_line,
    stop_delay_line,
)

log = logging.getLogger(__name__)

#: Private /16 whose /24s the networks use (10.231.X.0/24, X free on this machine).
SUBNET_BASE = "10.231"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,30}$")


@dataclass(frozen=True)
class VirtualHost:
    """One namespace: its host name, namespace name and address."""

    name: str
    netns: str
    address: str
    link: str = ""  # the root side of its veth pair (or delay line), on the bridge
    shaper: str = ""  # what shapes its link: "tbf", "netem + tbf", "delay line + tbf"; "": unshaped

    def command_prefix(self) -> str:
        """Shell words that run a command inside this host: its network namespace and
        its own host name (a private UTS namespace), so ``socket.gethostname()`` there
        returns :attr:`name`."""
        return (
            f"ip netns exec {self.netns} unshare --uts /bin/sh -c "
            f"'hostname {self.name} && exec \"$0\" \"$@\"'"
        )


@dataclass
class VirtualNetwork:
    """A bridge in the root namespace and the virtual hosts attached to it."""

    prefix: str
    bridge: str
    address: str  # the bridge's address: the coordinator's side
    subnet: str
    hosts: dict[str, VirtualHost] = field(default_factory=dict)

    def link_bytes(self) -> dict[str, dict[str, int]]:
        """Bytes each host's link carried so far, read from the kernel's counters of the
        bridge side of its veth pair: ``to_host`` (sent into the namespace) and
        ``from_host`` (received from it); every protocol counts (HTEX, Redis, TCP/IP)."""
        out = {}
        for host in self.hosts.values():
            stats = f"/sys/class/net/{host.link}/statistics"
            try:
                with open(f"{stats}/tx_bytes") as tx, open(f"{stats}/rx_bytes") as rx:
                    out[host.name] = {"to_host": int(tx.read()), "from_host": int(rx.read())}
            except OSError:
                continue
        return out

    def host(self, name: str) -> VirtualHost:
        """The virtual host ``name``.

        Raises:
            ConfigError: no such host in this network.
        """
        if name not in self.hosts:
            raise ConfigError(f"virtual host {name!r} is not part of this network; hosts: {', '.join(self.hosts)}")
        return self.hosts[name]


def netns_available() -> str | None:
    """None when namespaces can be made here, else the reason (not root, no ``ip``, ...)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    if shutil.which("unshare") is None:
        return "the 'unshare' command (util-linux) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True)
    if probe.returncode != 0:
        return f"'ip netns list' failed: {probe.stderr.strip()}"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise ExecutorError(f"'ip {' '.join(args)}' failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine has an address or a route in."""
    text = _ip("-4", "addr").stdout + "\n" + _ip("-4", "route").stdout
    nets = []
    for token in re.findall(r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)\b", text):
        try:
            nets.append(ipaddress.ip_network(token, strict=False))
        except ValueError:
            continue
    return nets


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 under 10.231.0.0/16 that no address or route of this machine overlaps."""
    used = _used_networks()
    start = os.getpid() % 250 + 1
    for i in range(250):
        x = (start + i) % 250 + 1
        net = ipaddress.ip_network(f"{SUBNET_BASE}.{x}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise ExecutorError(f"no free /24 under {SUBNET_BASE}.0.0/16 for a virtual network")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Remove namespaces and bridges this module made in processes that no longer run."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(r"^fpns-(\d+)-", name)
        if m and not _pid_alive(int(m.group(1))):
            remove_namespace(name)
            removed.append(name)
    for line in _ip("-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        m = re.search(r": (fpbr(\d+))[:@]", line)
        if m and not _pid_alive(int(m.group(2))):
            _ip("link", "del", m.group(1), check=False)
            removed.append(m.group(1))
    return removed


def remove_namespace(netns: str) -> None:
    """Kill what still runs inside ``netns`` (processes of this run), then delete it."""
    pids = _ip("netns", "pids", netns, check=False).stdout.split()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [int(p) for p in pids if p.isdigit() and _pid_alive(int(p))]
        if not alive:
            break
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and any(_pid_alive(p) for p in alive):
            time.sleep(0.05)
    _ip("netns", "del", netns, check=False)


@contextmanager
def virtual_network(
    names: Sequence[str], links: Mapping[str, Link] | None = None, netem: bool | None = None,
) -> Iterator[VirtualNetwork]:
    """Create one virtual host per name on a fresh bridge; remove all of it on exit.

    Args:
        names: host names (letters, digits, ``_.-``; at most 31 characters), distinct.
        links: host name -> its shaped link (:mod:`flight_parsl.execution.links`), applied with
            ``tc`` on both ends of its veth pair; gone with the namespace.
        netem: whether delay, jitter and loss use the kernel's netem (False: the userspace delay
            line of :mod:`flight_parsl.execution.delayline`); None: netem when the kernel has it.

    Yields:
        The network: the bridge address (the root side) and the hosts.

    Raises:
        ConfigError: bad or repeated names, a link for a host not in ``names``, a link whose
            qdisc this kernel lacks (netem).
        ExecutorError: namespaces cannot be made here, or ``tc`` is missing (the reason says why).
    """
    names = list(names)
    shaped = dict(links or {})
    for name in names:
        if not _NAME.match(name):
            raise ConfigError(
                f"site key 'virtual_host' = {name!r}: use letters, digits, '_', '.', '-' (at most 31 characters)"
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"virtual host names repeat: {names}")
    reason = netns_available()
    if reason:
        raise ExecutorError(f"cannot create virtual hosts: {reason}")
    for name in shaped:
        if name not in names:
            raise ConfigError(f"a link for virtual host {name!r}, which is not one of {names}")
    check_tc(shaped)
    if len(names) > 250:
        raise ConfigError(f"{len(names)} virtual hosts; at most 250 fit one /24")
    remove_stale()
    pid = os.getpid()
    subnet = free_subnet()
    addrs = list(subnet.hosts())
    net = VirtualNetwork(f"fpns-{pid}-", f"fpbr{pid}", str(addrs[0]), str(subnet))
    made_bridge = False
    made: list[str] = []
    pairs: list[str] = []
    line: subprocess.Popen[str] | None = None
    try:
        _ip("link", "add", net.bridge, "type", "bridge")
        made_bridge = True
        _ip("addr", "add", f"{net.address}/{subnet.prefixlen}", "dev", net.bridge)
        _ip("link", "set", net.bridge, "up")
        for name in names:
            _ip("netns", "add", f"{net.prefix}{name}")
            made.append(f"{net.prefix}{name}")
        # delay, jitter and loss: netem where the kernel has it, else a userspace delay line
        delayed = [n for n in names if n in shaped and shaped[n].needs_netem]
        if netem is None:
            netem = not delayed or netem_available(made[0])
        lined = {} if netem else {n: (f"fpt{pid}h{names.index(n)}"[:15], f"fpu{pid}h{names.index(n)}"[:15])
                                  for n in delayed}
        if lined:
            line = start_delay_line({n: (shaped[n], *lined[n]) for n in lined})
        for i, name in enumerate(names):
            netns = f"{net.prefix}{name}"
            if name in lined:
                outer, inner = lined[name]  # the delay line's TAP devices, made by it
            else:
                outer, inner = f"fpv{pid}h{i}"[:15], f"fpi{pid}h{i}"[:15]
                _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
                pairs.append(outer)
            _ip("link", "set", inner, "netns", netns)
            _ip("link", "set", outer, "master", net.bridge)
            _ip("link", "set", outer, "up")
            address = str(addrs[i + 1])
            _ip("netns", "exec", netns, "ip", "link", "set", "lo", "up")
            _ip("netns", "exec", netns, "ip", "link", "set", inner, "name", "eth0")
            _ip("netns", "exec", netns, "ip", "addr", "add", f"{address}/{subnet.prefixlen}", "dev", "eth0")
            _ip("netns", "exec", netns, "ip", "link", "set", "eth0", "up")
            shaper = ""
            if name in shaped:
                apply_link(shaped[name], outer, netns, netem=name not in lined)
                parts = ["delay line" if name in lined else "netem"] if shaped[name].needs_netem else []
                shaper = " + ".join(parts + (["tbf"] if shaped[name].rate else []))
            net.hosts[name] = VirtualHost(name, netns, address, outer, shaper)
        log.info("virtual network %s on %s: %s", net.bridge, subnet, ", ".join(f"{h.name}={h.address}" for h in net.hosts.values()))
        yield net
    finally:
        if line is not None:  # its TAP devices go with it
            stop_delay_line(line)
        for netns in made:  # deleting a namespace deletes its veth end, and so the pair
            remove_namespace(netns)
        for link in pairs:  # a pair whose inner end never moved into its namespace
            if _ip("link", "show", link, check=False).returncode == 0:
                _ip("link", "del", link, check=False)
        if made_bridge:
            _ip("link", "del", net.bridge, check=False)

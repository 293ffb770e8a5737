"""``address: auto``: the address of this host that a site's compute nodes reach.

On a cluster the interchange (and a run's Redis) must listen on the network the compute
nodes share, which is not what this host's name resolves to (often loopback, or a
management network). For a Slurm site the nodes of its partition are known
(``scontrol show node``: their ``NodeAddr``); the address is the source address of the
kernel's route to them (``ip route get``). A node that is this host gives its own address
back, which is right too. No node, or no route, is one clear error naming this host's
interfaces.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import Sequence

from flight_parsl.core.errors import ConfigError

_TIMEOUT_S = 10.0


def _run(args: Sequence[str]) -> str:
    """A command's standard output ('' when it is missing, fails or hangs)."""
    if shutil.which(args[0]) is None:
        return ""
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def slurm_node_addresses(partition: str | None = None) -> list[str]:
    """The ``NodeAddr`` of every node of ``partition`` (all nodes when None), as Slurm lists them."""
    names = set(_run(["sinfo", "-h", "-N", "-o", "%N", *(["-p", partition] if partition else [])]).split())
    out = []
    for line in _run(["scontrol", "-o", "show", "node"]).splitlines():
        name, addr = re.search(r"NodeName=(\S+)", line), re.search(r"NodeAddr=(\S+)", line)
        if name and addr and (not names or name[1] in names):
            out.append(addr[1])
    return out


def route_source(target: str) -> tuple[str, str] | None:
    """(interface, source address) of this host's route to ``target``, or None without one."""
    try:
        ip = socket.gethostbyname(target)
    except OSError:
        return None
    match = re.search(r"\bdev (\S+).*?\bsrc (\S+)", _run(["ip", "-o", "route", "get", ip]))
    return (match[1], match[2]) if match else None


def interface_names() -> str:
    """This host's interfaces with their IPv4 addresses, for messages."""
    pairs = re.findall(r"^\d+: (\S+)\s+inet (\S+)", _run(["ip", "-o", "-4", "addr", "show"]), re.M)
    return ", ".join(f"{name} {addr}" for name, addr in pairs) or "unknown"


def auto_address(provider: dict[str, object], source: str = "site") -> str:
    """The address a site's compute nodes reach this host at (see the module docstring).

    Raises:
        ConfigError: the site's nodes cannot be found (not a Slurm site, Slurm not answering, an
            empty partition) or this host has no route to them; the message names the interfaces.
    """
    if provider.get("kind") != "slurm":
        raise ConfigError(f"{source}: key 'address' = 'auto': finds the route to a Slurm site's nodes; for a "
                          f"{provider.get('kind')!r} provider set 'address' or 'interface' "
                          f"(interfaces here: {interface_names()})")
    partition = provider.get("partition")
    nodes = slurm_node_addresses(str(partition) if partition else None)
    if not nodes:
        raise ConfigError(f"{source}: key 'address' = 'auto': Slurm lists no node"
                          f"{f' in partition {partition!r}' if partition else ''} (is slurmctld running?); set "
                          f"'address' or 'interface' (interfaces here: {interface_names()})")
    for node in nodes:
        route = route_source(node)
        if route is not None:
            return route[1]
    raise ConfigError(f"{source}: key 'address' = 'auto': no interface of this host routes to the nodes "
                      f"{', '.join(nodes)}; set 'address' or 'interface' (interfaces here: {interface_names()})")

"""A run's sites: loaded, placed, and their virtual network opened and closed.

:func:`open_run_sites` turns ``sites.files`` into what the runner needs before
anything starts: the normalised sites, the placement of clients and aggregators
(:mod:`flight_parsl.engine.placement`), each site's slots (the ``slots`` setting
applied to the clients it runs), the virtual network when a site names a
``virtual_host``, and, for ``--transfer redis`` without ``--redis``, a managed
redis-server bound to the network's bridge address so that workers on the
virtual hosts reach it over TCP (over TLS unless ``transfer.redis_tls=false``: other hosts
reach that address); with ``transfer.per_site`` instead one managed redis-server inside each
site's namespace, bound to the site host's address (:mod:`flight_parsl.transfer.persite`).
Sites with a ``link:`` get their virtual host's veth shaped, and each shaped link is measured
before anything else uses it (:mod:`flight_parsl.execution.links`); ``link_bytes`` counts
from after that check. Everything it opened is closed when it exits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from flight_parsl.config.experiment import ExperimentConfig
from flight_parsl.core.errors import ConfigError
from flight_parsl.engine.placement import Placement, place
from flight_parsl.execution.backends import resolve_slots
from flight_parsl.execution.links import Link, check_links, check_tc, host_links
from flight_parsl.execution.netns import VirtualNetwork


@dataclass
class RunSites:
    """What a multi-site run opened before its executor."""

    sites: list[dict[str, Any]]
    placement: Placement
    slots: dict[str, int]
    network: VirtualNetwork | None = None
    redis: str | None = None  # HOST:PORT of a managed redis-server on the bridge
    redis_password: str | None = field(default=None, repr=False)  # that server's fresh password
    hosts: dict[str, str] = field(default_factory=dict)  # site label -> virtual host name
    link_bytes: dict[str, dict[str, int]] = field(default_factory=dict)  # host -> bytes, read at the end
    links: dict[str, dict[str, Any]] = field(default_factory=dict)  # host -> the link check (asked, measured)
    link_base: dict[str, dict[str, int]] = field(default_factory=dict)  # host -> bytes after the link check
    redis_ca: str | None = field(default=None, repr=False)  # the PEM text of its CA, when it speaks TLS
    server: Any = None  # the managed redis-server on the bridge (its pid and directory go into leftovers.json)
    # transfer.per_site: site label -> (HOST:PORT, admin password, CA PEM) of its own managed redis-server
    site_redis: dict[str, tuple[str, str, str | None]] = field(default_factory=dict, repr=False)
    site_servers: list[Any] = field(default_factory=list, repr=False)  # their ManagedRedis (leftovers.json)

    def summary(self) -> dict[str, Any]:
        """summary.json's ``sites``: label -> provider, virtual host, address, slots, clients, link,
        and ``store``: HOST:PORT of the site's own Redis (``transfer.per_site``; else None)."""
        clients = self.placement.clients_per_site()
        out: dict[str, Any] = {}
        for s in self.sites:
            label = s["label"]
            host = self.network.host(s["virtual_host"]) if self.network and s.get("virtual_host") else None
            out[label] = {
                "provider": s["provider"]["kind"],
                "virtual_host": host.name if host else None,
                "host_address": host.address if host else None,
                "interchange_address": self.network.address if host and self.network else s.get("address"),
                "encrypted": s.get("encrypted"),
                "slots": self.slots.get(label),
                "clients": clients.get(label, 0),
                "link": Link.of(s["link"]).asked() if s.get("link") and host else None,
                "store": self.site_redis[label][0] if label in self.site_redis else None,  # transfer.per_site
            }
        return out

    def site_server(self) -> dict[str, Any]:
        """``transfer.per_site``: site label -> its own managed redis-server (``faults.redis_stop``)."""
        return dict(zip(self.site_redis, self.site_servers, strict=True))

    def run_link_bytes(self) -> dict[str, dict[str, int]]:
        """What each host's link carried since the link check (kernel counters, both ways)."""
        if self.network is None:
            return {}
        now = self.network.link_bytes()
        return {
            host: {k: v - self.link_base.get(host, {}).get(k, 0) for k, v in counts.items()}
            for host, counts in now.items()
        }


@contextmanager
def open_run_sites(cfg: ExperimentConfig) -> Iterator[RunSites | None]:
    """The run's sites when ``sites.files`` is set (else None); closes what it opened.

    Raises:
        ConfigError: a bad site file, or a topology that does not fit the sites.
        ExecutorError: a site needs virtual hosts and namespaces cannot be made here.
    """
    if not cfg.sites.files:
        yield None
        return
    from flight_parsl.execution.sites import load_sites, virtual_hosts
    from flight_parsl.topology.tree import parse_topology

    sites = load_sites(cfg.sites.files)
    tree = None if cfg.topology == "flat" else parse_topology(cfg.topology, cfg.workers)
    placement = place(tree, cfg.workers, [s["label"] for s in sites], cfg.sites.aggregate_at)
    slots = {label: resolve_slots(cfg.slots, max(1, n)) for label, n in placement.clients_per_site().items()}
    hosts = virtual_hosts(sites)
    links = host_links(sites)
    check_tc(links)  # before anything is made
    missing = [s["label"] for s in sites if not s.get("virtual_host")]
    if cfg.transfer.per_site and missing:
        raise ConfigError(f"config: key 'transfer.per_site' = True: each site needs a virtual_host for its own "
                          f"store; site(s) {', '.join(map(repr, missing))} have none")
    labels = [s["label"] for s in sites]
    unknown = sorted({stop.site for stop in cfg.faults.redis_stop if stop.site is not None} - set(labels))
    if unknown:
        raise ConfigError(f"config: key 'faults.redis_stop' = {[stop.shown for stop in cfg.faults.redis_stop]}: "
                          f"site(s) {', '.join(map(repr, unknown))} are not sites of the run "
                          f"(sites: {', '.join(labels)})")
    with ExitStack() as stack:
        network = None
        checked: dict[str, dict[str, Any]] = {}
        if hosts:
            from flight_parsl.execution.netns import virtual_network

            network = stack.enter_context(virtual_network(hosts, links))
            checked = check_links(network, links)  # on quiet links, before anything else uses them
        redis = password = ca = server = None
        site_servers: list[Any] = []
        site_redis = _site_servers(stack, cfg, sites, network, site_servers) if cfg.transfer.per_site else {}
        if network is not None and cfg.transfer.kind == "redis" and cfg.transfer.redis is None and not site_redis:
            from flight_parsl.transfer.redis_auth import new_password
            from flight_parsl.transfer.redis_server import ManagedRedis

            # Bound to the run's private bridge, with a fresh password only this run knows; the
            # virtual hosts reach it across the bridge, so it speaks TLS (unless redis_tls=false).
            password = new_password()
            server = ManagedRedis(host=network.address, password=password, tls=cfg.transfer.redis_tls is not False)
            redis = str(stack.enter_context(server).address)
            ca = server.ca_pem
        run_sites = RunSites(
            sites, placement, slots, network, redis, password,
            {s["label"]: s["virtual_host"] for s in sites if s.get("virtual_host")},
            links=checked,
            link_base=network.link_bytes() if network is not None else {},
            redis_ca=ca,
            server=server,
            site_redis=site_redis,
            site_servers=site_servers,
        )
        try:
            yield run_sites
        finally:  # before the network goes: what each site's link carried during the run
            if network is not None:
                run_sites.link_bytes = run_sites.run_link_bytes()


def _site_servers(stack: ExitStack, cfg: ExperimentConfig, sites: list[dict[str, Any]],
                  network: VirtualNetwork | None, servers: list[Any]) -> dict[str, tuple[str, str, str | None]]:
    """``transfer.per_site``: a managed redis-server inside each site's namespace, bound to the
    site host's address (TLS unless ``transfer.redis_tls=false``, a fresh admin password each);
    the coordinator reaches it across the bridge, the site's workers on their own host. Each
    server started is appended to ``servers``."""
    from flight_parsl.transfer.redis_auth import new_password
    from flight_parsl.transfer.redis_server import ManagedRedis

    assert network is not None  # every site is on a virtual host (checked before anything was made)
    out: dict[str, tuple[str, str, str | None]] = {}
    for s in sites:
        host = network.host(s["virtual_host"])
        password = new_password()
        server = ManagedRedis(host=host.address, password=password, tls=cfg.transfer.redis_tls is not False,
                              netns=host.netns)
        out[s["label"]] = (str(stack.enter_context(server).address), password, server.ca_pem)
        servers.append(server)
    return out

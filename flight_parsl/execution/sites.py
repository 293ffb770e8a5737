"""Several sites in one run: one executor per site YAML in one Parsl Config.

This module owns the multi-site side of execution: loading a list of site files
(HTEX sites through :mod:`flight_parsl.execution.site`, Globus Compute sites
through :mod:`flight_parsl.execution.globus`), building one fresh Parsl Config
with one executor per site (labels must differ), running the worker pools of a
site with ``virtual_host: NAME`` inside that virtual host (a network namespace of
:mod:`flight_parsl.execution.netns`; the interchange then listens on the bridge
address and the workers connect over TCP, CurveZMQ-encrypted when the site says
``encrypted: true``), and :class:`SiteRouter`, the one ``concurrent.futures``
Executor the engine sees: :meth:`SiteRouter.submit_to` sends a task to a named
site; a plain ``submit`` spreads tasks over the sites in proportion to their slots
(the warm-up and release tasks, which must reach every slot).
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from parsl.config import Config

from flight_parsl.config.schema import key_error
from flight_parsl.core.errors import ConfigError, ExecutorError
from flight_parsl.execution import globus
from flight_parsl.execution.netns import VirtualNetwork
from flight_parsl.execution.site import (
    _no_memoizer_kwargs,
    build_parsl_config,
    describe_site,
    normalize_site,
    read_site,
    site_start_timeout,
)


def split_paths(paths: str | Sequence[str]) -> list[str]:
    """The site files of ``sites.files``: a list of paths, or (older callers) ``a.yaml,b.yaml``;
    empty items dropped."""
    items = paths.split(",") if isinstance(paths, str) else list(paths)
    return [str(p).strip() for p in items if p and str(p).strip()]


def load_any_site(path: str | Path) -> dict[str, Any]:
    """One site file, HTEX or Globus Compute, validated and normalised.

    Raises:
        ConfigError: the file is missing, unreadable or breaks its schema
            (``site file 'PATH': key 'KEY' = VALUE: PROBLEM``).
    """
    data, source = read_site(path)
    if globus.is_globus(data):
        return globus.normalize(data, source)
    return normalize_site(data, source)


def load_sites(paths: str | Sequence[str]) -> list[dict[str, Any]]:
    """Every site of a run, in order (the first is the default site).

    Args:
        paths: the site files (``sites.files``: a list of paths; a comma-separated string
            is still accepted).

    Raises:
        ConfigError: no site, a bad site, or two sites with one label.
    """
    names = split_paths(paths)
    if not names:
        raise key_error("config", "sites.files", paths, "no site file given; expected [A.yaml, B.yaml, ...]")
    sites = [load_any_site(p) for p in names]
    seen: dict[str, str] = {}
    for path, site in zip(names, sites):
        if site["label"] in seen:
            raise key_error(
                "config", "sites.files", names,
                f"sites {seen[site['label']]!r} and {path!r} share the label {site['label']!r}; "
                "every site needs its own label")
        seen[site["label"]] = path
    return sites


def virtual_hosts(sites: Sequence[Mapping[str, Any]]) -> list[str]:
    """The distinct virtual host names the sites ask for, in order."""
    return list(dict.fromkeys(s["virtual_host"] for s in sites if s.get("virtual_host")))


def is_globus_site(site: Mapping[str, Any]) -> bool:
    """True for a normalised Globus Compute site."""
    return site["provider"]["kind"] == globus.KIND


def _htex(site: Mapping[str, Any], slots: int, run_dir: str | Path, network: VirtualNetwork | None) -> Any:
    """The site's HTEX; on a virtual host it listens on the bridge and its workers start inside."""
    spec = copy.deepcopy(dict(site))
    host = None
    if spec["virtual_host"]:
        if network is None:
            raise ConfigError(f"site {spec['label']!r}: virtual_host {spec['virtual_host']!r} needs a virtual network")
        host = network.host(spec["virtual_host"])
        spec["address"], spec["interface"] = network.address, None
    htex = build_parsl_config(spec, slots, run_dir).executors[0]
    if host is not None:  # HTEX formats launch_cmd when it starts: a prefix set now is used
        htex.launch_cmd = f"{host.command_prefix()} {htex.launch_cmd}"
    return htex


def build_sites_config(
    sites: Sequence[Mapping[str, Any]],
    slots: Mapping[str, int],
    run_dir: str | Path,
    network: VirtualNetwork | None = None,
    globus_client: Any = None,
) -> Config:
    """A fresh Parsl Config with one executor per site.

    Args:
        sites: normalised sites (from :func:`load_sites`); the first one's Parsl
            strategy and idle time apply to the whole Config.
        slots: worker processes per site label (for local sites that leave
            ``max_workers_per_node`` null).
        run_dir: the run's directory; Parsl writes under ``<run_dir>/parsl``.
        network: the run's virtual network, needed when a site names a virtual host.
        globus_client: the ``globus_compute_sdk.Client`` of Globus Compute sites (None: the
            SDK makes one from the stored login).

    Raises:
        ConfigError: a site is invalid, or needs what is missing (the Globus Compute
            SDK, a virtual network).
    """
    executors = []
    first: Mapping[str, Any] | None = None
    for site in sites:
        if is_globus_site(site):
            executors.append(globus.build_executor(site, globus_client))
            continue
        first = first or site
        executors.append(_htex(site, max(1, slots.get(site["label"], 1)), run_dir, network))
    kwargs: dict[str, Any] = {
        "executors": executors,
        "run_dir": str(Path(run_dir) / "parsl"),
        "strategy": first["strategy"] if first else "none",
        "usage_tracking": 0,
        **_no_memoizer_kwargs(),
    }
    if first is not None and first["max_idletime"] is not None:
        kwargs["max_idletime"] = first["max_idletime"]
    return Config(**kwargs)


def executor_slots(executor: Any, fallback: int) -> int:
    """Worker processes an HTEX starts at load; ``fallback`` for other executors."""
    try:
        provider = executor.provider
        return int(executor.max_workers_per_node) * int(provider.nodes_per_block) * max(int(provider.init_blocks), 1)
    except (AttributeError, TypeError, ValueError):
        return fallback


class SiteRouter(Executor):
    """One Executor over one executor per site.

    Args:
        pools: an Executor per site label (insertion order: the first is the default).
        slots: worker processes per site label.
    """

    def __init__(self, pools: Mapping[str, Executor], slots: Mapping[str, int]) -> None:
        if not pools:
            raise ValueError("a SiteRouter needs at least one site")
        self.pools = dict(pools)
        self.slots = {label: max(1, int(slots.get(label, 1))) for label in self.pools}
        self.default = next(iter(self.pools))
        cycle = [label for label in self.pools for _ in range(self.slots[label])]
        self._spread = itertools.cycle(cycle)
        self._lock = threading.Lock()

    def submit_to(self, site: str | None, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` at ``site`` (None: the default site).

        Raises:
            ExecutorError: no such site in this run.
        """
        label = self.default if site is None else site
        if label not in self.pools:
            raise ExecutorError(f"no site {label!r} in this run; sites: {', '.join(self.pools)}")
        return self.pools[label].submit(fn, *args, **kwargs)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:  # type: ignore[override]
        """Run ``fn`` at the next site of a cycle that visits each site once per slot."""
        with self._lock:
            label = next(self._spread)
        return self.pools[label].submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shut down every site's executor."""
        for pool in self.pools.values():
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def submit_at(executor: Executor, site: str | None, fn: Callable[..., Any], *args: Any) -> Future[Any]:
    """``executor.submit_to(site, ...)`` on a :class:`SiteRouter`, else a plain submit."""
    if site is not None and isinstance(executor, SiteRouter):
        return executor.submit_to(site, fn, *args)
    return executor.submit(fn, *args)


def describe_sites(sites: Sequence[Mapping[str, Any]], slots: Mapping[str, int], network: VirtualNetwork | None) -> str:
    """One log line per site, joined by ``; ``."""
    parts = []
    for site in sites:
        if is_globus_site(site):
            parts.append(globus.describe(site))
            continue
        text = describe_site(site, slots.get(site["label"]))
        if site["virtual_host"] and network is not None:
            host = network.host(site["virtual_host"])
            text += f" virtual_host={host.name}({host.address}) interchange={network.address}"
        parts.append(text)
    return "; ".join(parts)


def start_timeout(sites: Sequence[Mapping[str, Any]]) -> float:
    """The longest start timeout of the sites."""
    return max(float(s["start_timeout"]) if is_globus_site(s) else site_start_timeout(s) for s in sites)


@contextmanager
def open_sites_backend(
    sites: Sequence[Mapping[str, Any]],
    slots: Mapping[str, int],
    run_dir: str | Path,
    network: VirtualNetwork | None = None,
    on_started: Callable[[], None] | None = None,
) -> Iterator[Any]:
    """Load one DataFlowKernel over every site, yield a ``Backend`` whose executor is a
    :class:`SiteRouter`; always clean the DataFlowKernel up."""
    import time

    from parsl.concurrent import ParslPoolExecutor

    from flight_parsl.execution.backends import Backend, close_dfk, load_dfk

    started_at = time.time()
    config = build_sites_config(sites, slots, run_dir, network)
    try:
        dfk, marks = load_dfk(config)
    except Exception as exc:  # Parsl raises many kinds here; one message for the user
        raise ExecutorError(f"Parsl failed to start ({type(exc).__name__}: {exc}); logs: {config.run_dir}") from exc
    try:
        site_slots = {
            site["label"]: (site["slots"] if is_globus_site(site) else executor_slots(ex, slots.get(site["label"], 1)))
            for site, ex in zip(sites, config.executors)
        }
        pools = {label: ParslPoolExecutor(dfk=dfk, executors=[label]) for label in site_slots}
        router = SiteRouter(pools, site_slots)
        if on_started:
            on_started()
        yield Backend(
            router,
            "parsl",
            describe_sites(sites, site_slots, network),
            start_timeout(sites),
            sum(site_slots.values()),
            started_at=started_at,
            dfk=dfk,
            marks=marks,
        )
    finally:
        close_dfk(dfk)

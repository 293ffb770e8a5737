"""A store per site (``transfer.per_site=true``): one ProxyStore Redis store in each site.

Each site has a managed redis-server inside its namespace
(:func:`flight_parsl.processes.multisite.open_run_sites`). The coordinator publishes the
round's global model into every site's store once (one copy crosses each site's link) and
hands each task the reference of its own site's store (:meth:`SiteTransfer.for_site`); a
worker resolves it on its own host and replies into the same store, so the site's
aggregator reads its children locally and only its partial crosses the link, when the
coordinator collects it. Every other call goes to the store a reference belongs to.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from flight_parsl.core.errors import TransferError
from flight_parsl.core.weights import FlatWeights
from flight_parsl.transfer.base import Resolved
from flight_parsl.transfer.proxy import ProxyRef, ProxyTransfer, store_of


@dataclass(frozen=True)
class SiteRefs:
    """The round's global model in every site's store: site label -> its reference.

    Only :meth:`SiteTransfer.for_site` opens it; a task never carries it."""

    refs: dict[str, ProxyRef]
    round: int

    @property
    def nbytes(self) -> int:
        return next(iter(self.refs.values())).nbytes

    def resolve(self, cache: bool = True) -> Resolved:
        raise TransferError("a store per site: a task needs its own site's reference (SiteTransfer.for_site)")

    def reply(self, weights: FlatWeights) -> tuple[ProxyRef, float, float]:
        raise TransferError("a store per site: a task needs its own site's reference (SiteTransfer.for_site)")


class SiteTransfer:
    """The coordinator's side of a store per site (``sites``: label -> that site's channel)."""

    kind = "redis"

    def __init__(self, sites: dict[str, ProxyTransfer]) -> None:
        self.sites = sites
        self._by_store = {t.store_name: t for t in sites.values()}
        self.server: Any = None  # no single server for fault injection
        self.servers: list[Any] = []  # the sites' managed servers (what a killed run leaves, leftovers.json)
        self.redis_user: str | None = None
        self.shared = False
        self.where = ", ".join(f"{label}: {t.where}" for label, t in sites.items())

    @property
    def store_name(self) -> str:
        """Every site's store name, comma-separated: what slots of a reused executor let go of
        (:func:`flight_parsl.worker.release.release_task` releases each it holds)."""
        return ",".join(t.store_name for t in self.sites.values())

    def _of(self, ref: Any) -> ProxyTransfer:
        if isinstance(ref, SiteRefs):
            raise TransferError("a store per site: collect a site's reference, not the round's SiteRefs")
        try:
            return self._by_store[store_of(ref.proxy).name]
        except KeyError:
            raise TransferError(f"reference {ref.key} belongs to no site's store") from None

    def publish(self, weights: FlatWeights, round_idx: int) -> SiteRefs:
        """The model into every site's store at once: one thread a site, so the copies cross the
        sites' links side by side, not one link after another."""
        if len(self.sites) == 1:
            return SiteRefs({label: t.publish(weights, round_idx) for label, t in self.sites.items()}, round_idx)
        with ThreadPoolExecutor(len(self.sites), thread_name_prefix="publish") as pool:
            futures = {label: pool.submit(t.publish, weights, round_idx) for label, t in self.sites.items()}
            return SiteRefs({label: f.result() for label, f in futures.items()}, round_idx)

    def for_site(self, ref: Any, site: str | None) -> Any:
        """The reference a task at ``site`` carries (a site's own references pass as they are)."""
        if not isinstance(ref, SiteRefs):
            return ref
        if site not in ref.refs:
            raise TransferError(f"a store per site: no store for site {site!r} (sites: {', '.join(ref.refs)})")
        return ref.refs[site]

    def collect(self, ref: ProxyRef) -> FlatWeights:
        return self._of(ref).collect(ref)

    def adopt(self, ref: ProxyRef) -> None:
        self._of(ref).adopt(ref)

    def discard(self, ref: ProxyRef) -> None:
        self._of(ref).discard(ref)

    def end_round(self, round_idx: int) -> None:
        for t in self.sites.values():
            t.end_round(round_idx)

    def close(self) -> None:
        for t in self.sites.values():
            t.close()

"""A store per site (``transfer.per_site=true``): one ProxyStore Redis store in each site.

Each site has a managed redis-server inside its namespace
(:func:`flight_parsl.processes.multisite.open_run_sites`). The coordinator publishes the
round's global model into every site's store once (one copy crosses each site's link) and
hands each task the reference of its own site's store (:meth:`SiteTransfer.for_site`); a
worker resolves it on its own host and replies into the same store, so the site's
aggregator reads its children locally and only its partial crosses the link, when the
coordinator collects it. The coordinator reads the sites' partials at once: as a task's
result arrives the engine calls :meth:`SiteTransfer.prefetch`, which starts reading it in
its site's own reader thread, so the partials of several sites cross their links side by
side, and :meth:`SiteTransfer.collect` hands over what was read (the engine folds in the
order results arrived, as before: the same sum, bit for bit). Every other call goes to the
store a reference belongs to.

The run's client state (``train.keep_momentum``, ``transfer.error_feedback``) lives the same
way: :class:`SiteState` keeps each client's blobs (momentum, residual) in its own site's store,
and an aggregator's residual in its aggregator's site's, so a task at a site carries only its
site's handle (:meth:`SiteState.for_site`) and the state never crosses a site link. A task also
writes each blob into its site's mirror (:class:`~flight_parsl.transfer.state.MirroredState`,
files in the run directory written at the site), from which the coordinator reads a checkpoint's
blobs: of the per-round checkpoint only key names cross the link (which accepted keys a site's
server lost). The coordinator's other calls (deleting a version no longer accepted, a restore
at ``--resume``) are small or once a run. A blob a site's restarted server lost is read back
from the site's mirror by the site's next task that needs it, which puts it back into the
store (:class:`~flight_parsl.transfer.state.MirroredState`); the checkpoint only checks that
the mirror holds every lost one (:meth:`SiteState.restorable`) and the run goes on.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flight_parsl.core.errors import TransferError

#: The folder of the run directory where each site's tasks mirror its clients' state.
MIRROR_DIR = "site_state"
#: What a run that lost client state from a site's store and its mirror can do, with checkpoints.
RESUME_HINT = "continue from the last checkpoint with --resume"
from flight_parsl.core.weights import FlatWeights
from flight_parsl.transfer.base import Resolved
from flight_parsl.transfer.proxy import ProxyRef, ProxyTransfer, store_of
from flight_parsl.transfer.state import _AGGREGATOR_KEYS, ClientState, DirState

log = logging.getLogger(__name__)


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

    def reply(self, weights: FlatWeights, recycle: bool = False) -> tuple[ProxyRef, float, float]:
        raise TransferError("a store per site: a task needs its own site's reference (SiteTransfer.for_site)")

    def streams(self) -> bool:
        return False


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
        self._label = {t.store_name: label for label, t in sites.items()}
        # site label -> its one reader thread (read ahead); None once closed
        self._readers: dict[str, ThreadPoolExecutor] | None = {}
        self._ahead: dict[Any, tuple[int, Future[FlatWeights]]] = {}  # key -> (round, its read under way or done)
        self._taken: dict[Any, int] = {}  # key -> round: collected or discarded; a late prefetch skips it
        self._lock = threading.Lock()

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
        sites' links side by side, not one link after another (serialized once for all; streamed
        from the model's own buffer, with no serialized copy, where every site's store streams)."""
        data = None if all(t.streams for t in self.sites.values()) else weights.to_buffer()
        if len(self.sites) == 1:
            return SiteRefs({label: t.publish(weights, round_idx, data) for label, t in self.sites.items()}, round_idx)
        with ThreadPoolExecutor(len(self.sites), thread_name_prefix="publish") as pool:
            futures = {label: pool.submit(t.publish, weights, round_idx, data) for label, t in self.sites.items()}
            return SiteRefs({label: f.result() for label, f in futures.items()}, round_idx)

    def for_site(self, ref: Any, site: str | None) -> Any:
        """The reference a task at ``site`` carries (a site's own references pass as they are)."""
        if not isinstance(ref, SiteRefs):
            return ref
        if site not in ref.refs:
            raise TransferError(f"a store per site: no store for site {site!r} (sites: {', '.join(ref.refs)})")
        return ref.refs[site]

    def prefetch(self, ref: ProxyRef) -> None:
        """Start reading ``ref`` from its site's store in that site's reader thread (one a site:
        the sites' partials cross their links at once, one site's reads in order), unless it
        is being read already, or was collected or discarded. :meth:`collect` hands the result
        over; a read that fails raises there, and only for its own reference."""
        channel = self._of(ref)
        key, label = ref.key, self._label[channel.store_name]
        with self._lock:
            if key in self._ahead or key in self._taken or self._readers is None:
                return
            reader = self._readers.get(label)
            if reader is None:
                reader = self._readers[label] = ThreadPoolExecutor(1, thread_name_prefix=f"collect-{label}")
            self._ahead[key] = (ref.round, reader.submit(channel.read, ref))

    def _claim(self, ref: ProxyRef) -> Future[FlatWeights] | None:
        """The read ahead of ``ref`` (None: none started); from now on no prefetch starts one."""
        key = ref.key
        with self._lock:
            self._taken[key] = ref.round
            ahead = self._ahead.pop(key, None)
        return None if ahead is None else ahead[1]

    def collect(self, ref: ProxyRef) -> FlatWeights:
        """``ref``'s weights: what its site's reader read ahead (waiting for it), else read now."""
        channel = self._of(ref)
        ahead = self._claim(ref)
        channel.adopt(ref)
        if ahead is None:
            return channel.read(ref)
        return ahead.result()

    def adopt(self, ref: ProxyRef) -> None:
        self._of(ref).adopt(ref)

    def discard(self, ref: ProxyRef) -> None:
        channel = self._of(ref)
        ahead = self._claim(ref)
        if ahead is not None:
            ahead.cancel()  # a read under way ends on its own; its bytes are dropped
        channel.discard(ref)

    def end_round(self, round_idx: int) -> None:
        with self._lock:  # reads ahead of the round nobody collected: their keys go with the round
            stale = [k for k, (r, _) in self._ahead.items() if r == round_idx]
            for key in stale:
                self._ahead.pop(key)[1].cancel()
            self._taken = {k: r for k, r in self._taken.items() if r != round_idx}
        for t in self.sites.values():
            t.end_round(round_idx)

    def stop_reading(self) -> None:
        """End the sites' reader threads (a read under way finishes first); no read ahead after."""
        with self._lock:
            readers, self._readers = self._readers, None
            self._ahead.clear()
        for reader in (readers or {}).values():
            reader.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self.stop_reading()
        for t in self.sites.values():
            t.close()


class SiteState:
    """The run's client state with a store per site: each key in the store of the site it belongs to.

    ``stores``: site label -> that site's client state (its Redis keys under the run's prefix).
    ``placement``: the run's :class:`~flight_parsl.engine.placement.Placement` (``client_site``,
    ``node``): a client's blob and its error-feedback residual live at the client's site, an
    aggregator's residual (:func:`~flight_parsl.transfer.state.aggregator_key` of its place in
    the tree, named by :meth:`name_aggregators`) at its aggregator's site. The coordinator calls
    :meth:`get`, :meth:`put` and :meth:`delete`, which go to the key's site; a task gets its
    site's own handle (:meth:`for_site`). Pickled (the release of a reused executor's slots) it
    keeps the stores only.
    """

    def __init__(self, stores: dict[str, ClientState], placement: Any = None) -> None:
        self.stores = stores
        self.placement = placement
        self.aggregators: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        return {"stores": self.stores, "placement": None, "aggregators": ()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def name_aggregators(self, names: Any) -> None:
        """The tree's aggregators in the order :func:`~flight_parsl.transfer.state.aggregator_key` numbers them."""
        self.aggregators = tuple(names)

    def site_of(self, key: int) -> str:
        """The site whose store keeps ``key`` (a client, its residual, an aggregator's residual)."""
        if self.placement is None:
            raise TransferError("a store per site: this handle has no placement (a task gets its site's own)")
        key = int(key)
        if key >= 0:
            return str(self.placement.client_site[key])
        if key > _AGGREGATOR_KEYS:  # feedback_key(client) = -1 - client
            return str(self.placement.client_site[-1 - key])
        index = _AGGREGATOR_KEYS - key
        if index >= len(self.aggregators):
            raise TransferError(f"a store per site: no aggregator number {index} in the tree")
        return str(self.placement.node(self.aggregators[index]))

    def where(self, key: int) -> str:
        """Which site's store keeps ``key``, and where it is (for error messages)."""
        site = self.site_of(key)
        store = self.stores[site]
        mirror = getattr(store, "mirror", None)
        store = getattr(store, "store", store)  # a mirrored site: its server
        host, port = getattr(store, "host", None), getattr(store, "port", None)
        return (f"site {site}'s store" + (f" at {host}:{port}" if host is not None else "")
                + (f", and its mirror {mirror.root}" if mirror is not None else ""))

    def describe(self, key: int) -> str:
        """What ``key`` holds, in words: a client's blob, its residual, an aggregator's residual."""
        key = int(key)
        if key >= 0:
            return f"client {key}"
        if key > _AGGREGATOR_KEYS:
            return f"the error-feedback residual of client {-1 - key}"
        index = _AGGREGATOR_KEYS - key
        name = self.aggregators[index] if index < len(self.aggregators) else f"number {index}"
        return f"the error-feedback residual of aggregator {name}"

    def for_site(self, site: str | None) -> ClientState:
        """The handle a task at ``site`` carries: its site's store."""
        if site not in self.stores:
            raise TransferError(f"a store per site: no client state for site {site!r} (sites: {', '.join(self.stores)})")
        return self.stores[site]

    def get(self, client: int, version: str | None = None) -> bytes | None:
        """The blob of ``client`` (a key of the client state), from its site's mirror when the site
        has one (:class:`~flight_parsl.transfer.state.MirroredState`: no byte of it crosses the
        site's link), else (or when the mirror lacks it) from its site's store."""
        store = self.stores[self.site_of(client)]
        mirror = getattr(store, "mirror", None)
        if mirror is None:
            return store.get(client, version)
        blob = mirror.get(client, version)
        if blob is None:  # not mirrored (a file removed by hand): the site's server, across the link
            blob = getattr(store, "store", store).get(client, version)
        return blob

    def lost(self, keys: Any) -> list[tuple[int, str | None]]:
        """Which of ``keys`` ((key, version) pairs) their sites' stores no longer hold (a server
        that was stopped lost them): one pipelined lookup a site, of key names only. Stores
        that cannot tell (no ``missing``) report nothing."""
        by_site: dict[str, list[tuple[int, str | None]]] = {}
        for key, version in keys:
            by_site.setdefault(self.site_of(key), []).append((int(key), version))
        out: list[tuple[int, str | None]] = []
        for site, wanted in by_site.items():
            store = self.stores[site]
            missing = getattr(getattr(store, "store", store), "missing", None)
            if missing is not None:
                out += missing(wanted)
        return out

    def restorable(self, keys: Any, hint: str = RESUME_HINT) -> dict[str, list[tuple[int, str | None]]]:
        """Which of ``keys`` ((key, version) pairs) each site's server lost (:meth:`lost`), by site,
        every one of them held by the site's mirror: the site's tasks read them there and put them
        back (:class:`~flight_parsl.transfer.state.MirroredState`), so the run goes on. Only key
        names cross the links (the mirror is looked up in the run directory).

        Raises:
            TransferError: a lost key the site's mirror does not hold either (or a site without
                a mirror lost it): the run cannot go on from its state; the message ends with
                ``hint`` (``--resume`` can, from the last checkpoint).
        """
        out: dict[str, list[tuple[int, str | None]]] = {}
        for key, version in self.lost(keys):
            site = self.site_of(key)
            mirror = getattr(self.stores[site], "mirror", None)
            if mirror is None or not mirror.has(key, version):
                raise TransferError(
                    f"the accepted state {version} of {self.describe(key)} is missing from the store "
                    f"({self.where(key)}): a Redis that was stopped lost it"
                    + (" and its mirror does not hold it" if mirror is not None else "")
                    + f"; {hint}")
            out.setdefault(site, []).append((key, version))
        return out

    def put(self, client: int, data: bytes, version: str | None = None) -> None:
        self.stores[self.site_of(client)].put(client, data, version)

    def delete(self, client: int, version: str | None = None) -> None:
        delete = getattr(self.stores[self.site_of(client)], "delete", None)
        if delete is not None:
            delete(client, version)

    def release(self) -> None:
        for store in self.stores.values():
            store.release()


@contextmanager
def site_mirrors(run_dir: str | Path, labels: list[str]) -> Iterator[dict[str, DirState]]:
    """A folder a site (``run_dir/site_state/<label>``) where its tasks mirror its clients' state
    (:class:`~flight_parsl.transfer.state.MirroredState`): the checkpoint reads the blobs there,
    not across the site's link. Removed when the run ends, whatever ends it (the checkpoint holds
    what ``--resume`` restores); what a killed coordinator left there is removed at the next start."""
    root = Path(run_dir).resolve() / MIRROR_DIR  # the tasks at the sites have their own working directories
    shutil.rmtree(root, ignore_errors=True)
    mirrors = {}
    for label in labels:
        (root / label).mkdir(parents=True)
        mirrors[label] = DirState(str(root / label))
    try:
        yield mirrors
    finally:
        shutil.rmtree(root, ignore_errors=True)

"""The ``redis`` and ``file`` transfers: weights travel through a ProxyStore store.

The coordinator puts the round's global model into the store once and every task
carries the same small proxy; each worker resolves it (cached per process, so a
worker running several tasks of a round fetches it once) and returns a proxy of its
own result, which it put into the same store. Result bytes therefore never pass
through the Parsl interchange. Every key of a round belongs to that round's
:class:`~proxystore.store.lifetimes.ContextLifetime`, which evicts them when the
round ends; closing the transfer ends any open lifetime, so a finished or failed
run leaves no key behind.

Payloads are our own pickled :class:`FlatWeights` bytes; the store's serializer is
the identity, so ProxyStore adds no copy and byte counts are exact.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import numpy as np
from proxystore.connectors.file import FileConnector
from proxystore.connectors.redis import RedisConnector, RedisKey

from flight_parsl.core.errors import TransferError
from flight_parsl.core.stopping import deferred
from flight_parsl.core.weights import FlatWeights, Layout, PayloadSlices, header
from flight_parsl.transfer.base import Resolved

if TYPE_CHECKING:
    from proxystore.serialize import BytesLike
    from proxystore.store import Store
    from proxystore.store.factory import StoreFactory

log = logging.getLogger(__name__)
T = TypeVar("T")

_FETCH_LOCK = threading.Lock()  # one resolve at a time per process, as the store's own lock does


#: Files of evicted results a directory keeps for reuse (see :class:`MappedFileConnector`).
POOL_FILES = 256
_POOL = ".pool"  # the pool's subdirectory of the store directory
_RESULT = "r-"  # the name prefix of a result written to be recycled


class MappedFileConnector(FileConnector):
    """A ProxyStore FileConnector whose reads map the file instead of copying it, whose
    writes go straight from the caller's buffers, and whose results reuse the files of
    evicted ones.

    - :meth:`get` maps the file: a worker (or the coordinator) reads a model straight from
      the page cache, ``FlatWeights.from_bytes`` wraps the mapping without a copy.
    - :meth:`put_parts` writes several buffers (``FlatWeights.to_parts``: a header and the
      model's own buffer) with one ``writev``: one copy of the model, none to join it first.
    - With ``recycle`` a value is a *result*, read once by its parent and never cached:
      when its key is evicted, its file is not deleted but moved into the directory's pool
      (``<store_dir>/.pool``, at most ``pool_files`` files), and the next result written
      takes a file from there and overwrites it in place. Every result still has a file and
      a key of its own; what is reused is the storage behind it, whose pages the kernel
      then need not allocate and clear again (on tmpfs, about half the cost of a write).
      A value written without ``recycle`` (a published model, which workers cache and map
      for as long as they like) is deleted on eviction as before.
    - A reader keeps the maps of the result files it read (at most ``map_files``, by file:
      device and inode) and reads a later result in a reused file through the same map.
      Mapping a fresh file costs a page-table entry per 4 KiB page, set up on first touch
      and torn down at unmap (for ResNet-18's 46.8 MB more than the fold's add itself);
      the pages of a reused file stay mapped, and the writer's overwrite shows through them
      (a shared map of the page cache). A kept map holds its file open: one that this
      connector deletes (the pool full, ``close``) is forgotten first, so no deleted file
      lives on in a map. A map pins no memory of its own: the pages are the pool's, which
      hold them anyway; they do count in the reader's RSS (as shared pages), up to a result
      file's size per kept map. ``map_files=0``, or no pool: a map per read, unmapped once
      the read's last view goes.

    Keys, markers, :meth:`put` and ``clear`` are FileConnector's own.
    """

    def __init__(self, store_dir: str, *, clear: bool = True, buffering: int = -1,
                 pool_files: int = POOL_FILES, map_files: int = POOL_FILES) -> None:
        super().__init__(store_dir, clear=clear, buffering=buffering)
        self.pool_files = pool_files
        self.map_files = map_files if pool_files > 0 else 0
        self.pool_dir = os.path.join(self.store_dir, _POOL)
        # (device, inode) -> the map of a result file this process read, least recently used first
        self._maps: OrderedDict[tuple[int, int], mmap.mmap] = OrderedDict()
        self._maps_lock = threading.Lock()

    def config(self) -> dict[str, Any]:
        """FileConnector's configuration, the pool's size and the maps a reader keeps."""
        return {**super().config(), "pool_files": self.pool_files, "map_files": self.map_files}

    def get(self, key: Any) -> memoryview | None:
        """The value of ``key``: a view of its file's map (a kept one for a result in a reused file)."""
        path = os.path.join(self.store_dir, key.filename)
        if not os.path.exists(path + ".ready"):
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            if self.map_files <= 0 or not key.filename.startswith(_RESULT):
                return memoryview(mmap.mmap(fd, 0, access=mmap.ACCESS_READ))
            st = os.fstat(fd)
            ident = (st.st_dev, st.st_ino)  # a kept map holds its file: no other live file has its inode
            with self._maps_lock:
                mapped = self._maps.pop(ident, None)
                if mapped is None or len(mapped) < st.st_size:  # a longer result than the map saw: map again
                    mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
                self._maps[ident] = mapped
                while len(self._maps) > self.map_files:
                    self._maps.popitem(last=False)  # dropped, not closed: a caller may still hold a view
            return memoryview(mapped)[: st.st_size]
        finally:
            os.close(fd)

    def _forget(self, path: str) -> None:
        """Drop the kept map of the file at ``path`` (before this connector deletes it)."""
        if not self._maps:
            return
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        with self._maps_lock:
            self._maps.pop((st.st_dev, st.st_ino), None)

    def kept_maps(self) -> int:
        """How many result files' maps this process keeps."""
        return len(self._maps)

    def close(self, clear: bool | None = None) -> None:
        """Drop the kept maps, then close as FileConnector does (removing the directory)."""
        with self._maps_lock:
            self._maps.clear()
        super().close(clear)

    def _claim(self, path: str) -> int | None:
        """Move a pooled file to ``path`` and open it for writing (None: the pool is empty)."""
        try:
            names = os.listdir(self.pool_dir)
        except FileNotFoundError:
            return None
        for name in names:  # another process may take the same file first: the rename decides
            try:
                os.rename(os.path.join(self.pool_dir, name), path)
            except FileNotFoundError:
                continue
            return os.open(path, os.O_WRONLY)
        return None

    def put_parts(self, parts: Sequence[BytesLike], recycle: bool = False) -> Any:
        """Store the concatenation of ``parts`` under a new key, writing each part in place
        (no joined copy); ``recycle``: a result, whose file a later result may reuse once
        its key is evicted (see the class)."""
        from proxystore.connectors.file import FileKey

        key = FileKey(filename=(_RESULT if recycle else "") + str(uuid.uuid4()))
        path = os.path.join(self.store_dir, key.filename)
        fd = self._claim(path) if recycle and self.pool_files > 0 else None
        if fd is None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            views = [memoryview(p).cast("B") for p in parts]
            total = sum(v.nbytes for v in views)
            written = 0
            while views:
                n = os.writev(fd, views)
                written += n
                while views and n >= views[0].nbytes:  # drop what was written, keep the rest
                    n -= views[0].nbytes
                    views.pop(0)
                if views and n:
                    views[0] = views[0][n:]
            os.ftruncate(fd, total)  # a reused file may have been longer
        finally:
            os.close(fd)
        open(path + ".ready", "wb").close()
        return key

    def evict(self, key: Any) -> None:
        """Remove the key; a result's file goes to the pool while it has room."""
        if not key.filename.startswith(_RESULT) or self.pool_files <= 0:
            super().evict(key)
            return
        path = os.path.join(self.store_dir, key.filename)
        marker = path + ".ready"
        if os.path.exists(marker):  # first: no reader finds the key any more
            os.remove(marker)
        if not os.path.exists(path):
            return
        try:
            os.makedirs(self.pool_dir, exist_ok=True)
            if len(os.listdir(self.pool_dir)) < self.pool_files:
                os.rename(path, os.path.join(self.pool_dir, key.filename))
                return
        except OSError:  # the pool is gone (the store is closing) or full: delete as before
            pass
        self._forget(path)
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


class TimedRedisConnector(RedisConnector):
    """A ProxyStore RedisConnector whose client gives up after ``timeout`` seconds, logs in as
    the run's user and keeps its keys under the run's prefix.

    ProxyStore's own connector builds a client without timeouts, user, password or TLS and
    names its keys with bare uuids, so a Redis that stops answering blocks a put or get
    forever and nothing ties a key to its run. This one connects and waits for each reply at
    most ``timeout`` seconds, without retries; logs in as ``username`` with ``password``
    (the run's ACL user, whose key pattern is ``prefix*``); names every key
    ``<prefix><uuid>``; and with ``tls`` speaks TLS, checking the server against ``ca`` (the
    PEM text of the run's CA). Its config carries all of it to the workers, which rebuild
    it from there. A managed server over TLS also listens on a Unix socket
    (``unix_socket``, found in :func:`~flight_parsl.transfer.redis_server.local_socket` where
    the server was started): a process on the server's own host (whose network namespace
    holds the server's address: :func:`~flight_parsl.transfer.redis_server.on_this_host`)
    connects there, without TLS, since its bytes never reach a network; one on another host
    (across a site's link) speaks TLS. With one Redis beside the coordinator, the
    coordinator's publish and collect go through the socket and the sites' workers through
    TLS; with a store per site, the other way round. A get reads the value straight into one buffer
    (:class:`~flight_parsl.transfer.bulk.BulkReader`) instead of through redis-py's parser.
    """

    def __init__(
        self,
        hostname: str,
        port: int,
        clear: bool = False,
        timeout: float | None = None,
        password: str | None = None,
        username: str | None = None,
        prefix: str = "",
        tls: bool = False,
        ca: str | None = None,
        unix_socket: str | None = None,
        reconnect: bool = False,
    ) -> None:
        from flight_parsl.transfer.bulk import BulkReader
        from flight_parsl.transfer.redis_server import (
            DEFAULT_TIMEOUT, RedisAddress, local_socket, on_this_host, redis_client,
        )

        super().__init__(hostname, port, clear)
        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        self.password = password
        self.username = username
        self.prefix = prefix
        self.tls = tls
        self.ca = ca
        self.unix_socket = unix_socket if unix_socket is not None else local_socket(hostname, port) if tls else None
        # the socket when this process is on the server's host (and the socket is there, and its own)
        local = self.unix_socket if self.unix_socket and os.access(self.unix_socket, os.R_OK | os.W_OK) and (
            on_this_host(hostname)) else None
        self.local = local is not None
        self.reconnect = reconnect  # a site's own store: reads survive its restart (BulkReader)
        self._redis_client.close()  # never connected: clients connect on first use
        self._redis_client = redis_client(
            RedisAddress(hostname, port), self.timeout, password, username=username, tls=tls, ca=ca,
            unix_socket=local,
        )
        self._reader = BulkReader(
            hostname, port, self.timeout, password, username, tls, ca, unix_socket=local, reconnect=reconnect
        )

    def _key(self) -> RedisKey:
        return RedisKey(redis_key=f"{self.prefix}{uuid.uuid4()}")

    def new_key(self, obj: BytesLike | None = None) -> RedisKey:
        """A new key under the run's prefix."""
        return self._key()

    def put(self, obj: BytesLike) -> RedisKey:
        """Store ``obj`` under a new key of the run's prefix."""
        key = self._key()
        self._redis_client.set(key.redis_key, _flat(obj))
        return key

    def put_stream(self, size: int, parts: Iterable[bytes | memoryview]) -> RedisKey:
        """Store ``size`` bytes under a new key of the run's prefix, sending each of ``parts`` as
        soon as it is yielded (:meth:`~flight_parsl.transfer.bulk.BulkReader.put`: the value
        appears under its key whole, or not at all)."""
        key = self._key()
        self._reader.put(key.redis_key, size, parts)
        return key

    def put_batch(self, objs: Sequence[BytesLike]) -> list[RedisKey]:
        """Store ``objs`` under new keys of the run's prefix (one MSET)."""
        keys = [self._key() for _ in objs]
        self._redis_client.mset({key.redis_key: bytes(obj) for key, obj in zip(keys, objs, strict=True)})
        return keys

    def get(self, key: Any) -> memoryview | None:
        """The value of ``key`` (a view of one buffer), or None when it is missing."""
        return self._reader.get(key.redis_key)

    def get_slices(self, key: Any, sink: Callable[[int, memoryview], None]) -> int | None:
        """Hand the value of ``key`` to ``sink(offset, view)`` a slice at a time, with no buffer of
        its size (:meth:`~flight_parsl.transfer.bulk.BulkReader.get_slices`); its size, or None
        when it is missing."""
        return self._reader.get_slices(key.redis_key, sink)

    def close(self, clear: bool | None = None) -> None:
        """Close the sockets (``clear``: as ProxyStore's, flush the whole database first)."""
        self._reader.close()
        super().close(clear)

    def config(self) -> dict[str, Any]:
        """The connector's configuration: the timeout, the user, its password, the prefix and TLS too."""
        return {
            **super().config(), "timeout": self.timeout, "password": self.password, "username": self.username,
            "prefix": self.prefix, "tls": self.tls, "ca": self.ca, "unix_socket": self.unix_socket,
            "reconnect": self.reconnect,
        }

    def __repr__(self) -> str:
        """Name the server and the user, never the password."""
        return (f"{type(self).__name__}(hostname={self.hostname!r}, port={self.port}, timeout={self.timeout}, "
                f"username={self.username!r}, tls={self.tls}, local={self.local})")


def _flat(obj: BytesLike) -> bytes | memoryview:
    """``obj`` as bytes or a byte-format view of it, without a copy where it is contiguous:
    redis-py sends a large one apart from the command, as it is (and counts its length in bytes)."""
    if isinstance(obj, bytes):
        return obj
    try:
        return memoryview(obj).cast("B")
    except TypeError:  # not C-contiguous
        return bytes(obj)


#: Bytes of each slice of a model a streamed publish sends (the server copies one slice at a time).
PUBLISH_SLICE = 4 << 20


def _model_parts(head: bytes, weights: FlatWeights) -> Iterator[bytes | memoryview]:
    """The serialized model as its header, then byte views of its buffer's slices (no copy)."""
    yield head
    body = np.ascontiguousarray(weights.buffer).data.cast("B")
    for start in range(0, body.nbytes, PUBLISH_SLICE):
        yield body[start : start + PUBLISH_SLICE]


def identity(data: BytesLike) -> BytesLike:
    """Store (de)serializer: payloads are already bytes."""
    return data


def store_of(proxy: Any) -> Store[Any]:
    """The store a proxy resolves from (each process keeps its own, registered by name)."""
    from proxystore.store.utils import get_factory

    # A proxy made by a Store carries a StoreFactory; get_factory is typed as any factory.
    return cast("StoreFactory[Any, Any]", get_factory(proxy)).get_store()


def root_cause(exc: BaseException) -> str:
    """``Type: message`` of the innermost cause (ProxyStore wraps a connector's error in its own)."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return f"{type(exc).__name__}: {exc}"


def store_location(proxy: Any) -> str:
    """Where a proxy's store lives, for error messages: ``host:port`` or a directory."""
    try:
        connector = store_of(proxy).connector
    except Exception:  # noqa: BLE001 - the message being built is about a failure already
        return "its store"
    if isinstance(connector, RedisConnector):
        from flight_parsl.transfer.redis_server import RedisAddress

        return f"Redis at {RedisAddress(connector.hostname, connector.port)}"
    return str(getattr(connector, "store_dir", connector))


@dataclass(frozen=True)
class ProxyRef:
    """A ProxyStore proxy of pickled weights, with its size and round."""

    proxy: Any
    nbytes: int
    round: int

    @property
    def key(self) -> Any:
        """The store key behind the proxy."""
        from proxystore.store.utils import get_key

        return get_key(self.proxy)

    def resolve(self, cache: bool = True) -> Resolved:
        # Through the process's store and its small cache, not extract(): a resolved
        # proxy keeps its bytes for as long as the proxy lives. A cache hit fetches
        # nothing; the lock makes "was it cached" and the read one step per process.
        t0 = time.perf_counter()
        try:
            store = store_of(self.proxy)
            key = self.key
            with _FETCH_LOCK:
                if store.is_cached(key):
                    data, fetched = store.get(key), 0
                else:
                    data = store.get(key) if cache else store.connector.get(key)
                    fetched = self.nbytes
        except Exception as exc:
            raise TransferError(
                f"cannot resolve proxy key {self.key} of round {self.round + 1} from {store_location(self.proxy)}: "
                f"{root_cause(exc)}"
            ) from exc
        if data is None:
            raise TransferError(f"cannot resolve proxy key {self.key} of round {self.round + 1}: the key is missing")
        t1 = time.perf_counter()
        weights = FlatWeights.from_bytes(data)
        return Resolved(weights, t1 - t0, time.perf_counter() - t1, fetched)

    def reply(self, weights: FlatWeights, recycle: bool = False) -> tuple[ProxyRef, float, float]:
        t0 = time.perf_counter()
        store = store_of(self.proxy)
        if hasattr(store.connector, "put_stream"):  # straight from the buffer, in slices: no serialized copy
            slices = (weights.buffer[s : s + PUBLISH_SLICE // 4] for s in range(0, weights.buffer.size,
                                                                                   PUBLISH_SLICE // 4))
            return self.reply_stream(weights.layout, slices)
        put_parts = getattr(store.connector, "put_parts", None)
        if put_parts is None:
            data = weights.to_buffer()
        else:  # the store writes the buffer as it is: no joined copy
            parts = weights.to_parts()
        t1 = time.perf_counter()
        with self._storing():
            if put_parts is None:
                proxy, nbytes = store.proxy(data, populate_target=False), len(data)
            else:
                key = put_parts(parts, recycle=recycle)
                proxy, nbytes = store.proxy_from_key(key), sum(len(p) for p in parts)
        return ProxyRef(proxy, nbytes, self.round), t1 - t0, time.perf_counter() - t1

    @contextmanager
    def _storing(self) -> Iterator[None]:
        """A failure to store this task's result, as one TransferError naming the round and store."""
        try:
            yield
        except Exception as exc:
            raise TransferError(
                f"cannot store the result of round {self.round + 1} in {store_location(self.proxy)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def streams(self) -> bool:
        """Whether :meth:`reply_stream` can send a result as it is made (a Redis store)."""
        try:
            return hasattr(store_of(self.proxy).connector, "put_stream")
        except Exception:  # noqa: BLE001 - no store: reply reports it
            return False

    def reply_stream(self, layout: Layout, slices: Iterable[np.ndarray]) -> tuple[ProxyRef, float, float]:
        """A result stored as it is made: ``slices`` yields its float32 buffer in consecutive
        slices (e.g. :meth:`~flight_parsl.fl.aggregate.WeightedMean.finish`, which folds and
        divides a slice only when asked for it), and each slice leaves for the store as soon as it
        exists, so the work that makes the result overlaps its put. The payload is the bytes
        :meth:`reply` sends. Returns the reference, the seconds spent on the header (the
        serialization; the slices are sent as they are) and on the put (making the slices
        included). Only where :meth:`streams`."""
        t0 = time.perf_counter()
        store = store_of(self.proxy)
        head = header(layout)
        nbytes = len(head) + layout.size * 4
        t1 = time.perf_counter()

        def parts() -> Iterator[bytes | memoryview]:
            yield head
            for piece in slices:
                yield np.ascontiguousarray(piece).data.cast("B")

        with self._storing():
            key = store.connector.put_stream(nbytes, parts())
            proxy: Any = store.proxy_from_key(key)
        return ProxyRef(proxy, nbytes, self.round), t1 - t0, time.perf_counter() - t1


class PartFold(Protocol):
    """What :meth:`ProxyTransfer.collect_fold` folds into (:class:`~flight_parsl.fl.aggregate.WeightedMean`)."""

    def expect(self, layout: Layout, weight: float) -> None:
        """Raise ValueError unless a result of ``layout`` and ``weight`` fits."""

    def add_part(self, start: int, values: np.ndarray, weight: float) -> None:
        """Fold the elements ``start`` on of a result."""

    def added(self, weight: float) -> None:
        """Count a result whose every element was folded."""


class ProxyTransfer:
    """Coordinator side of a ProxyStore channel.

    Args:
        kind: ``redis`` or ``file`` (for logs and results).
        connector: the ProxyStore connector.
        where: a human-readable location for error messages (host:port, a path).
        cache_size: objects each process's store keeps resolved; small, because a
            cached model is a full copy of it.
    """

    def __init__(self, kind: str, connector: Any, where: str, cache_size: int = 1) -> None:
        from proxystore.store import Store

        self.kind = kind
        self.where = where
        self.server: Any = None  # a managed redis-server behind the connector, if the run started one
        # On a server that outlives the run (--redis): the ACL user the run made there (None: none),
        # and whether a coordinator killed without unwinding leaves the run's keys (and that user) there.
        self.redis_user: str | None = None
        # a client of the server's admin user (the caller closes it), for what the run's user may not
        # do: list the run's client-state keys at the end (Redis only; None: the run's own user)
        self.admin: Any = None
        # ``ACL SETUSER`` rules of the run's user made on a server given by address (a managed server
        # of the sites' own registers them, to make the user again when a fault restarts it)
        self.user_rules: list[str] | None = None
        self.shared = False
        self.store = Store(
            f"flight-parsl-{uuid.uuid4().hex[:12]}",
            connector,
            serializer=identity,
            deserializer=identity,
            cache_size=cache_size,
            register=True,
        )
        self._lifetimes: dict[int, Any] = {}

    @property
    def store_name(self) -> str:
        """The store's name: each process that resolves a proxy registers its own store under it."""
        return str(self.store.name)

    def _lifetime(self, round_idx: int) -> Any:
        from proxystore.store.lifetimes import ContextLifetime

        if round_idx not in self._lifetimes:
            self._lifetimes[round_idx] = ContextLifetime(self.store, name=f"round-{round_idx}")
        return self._lifetimes[round_idx]

    @property
    def streams(self) -> bool:
        """Whether the store takes a streamed put (Redis): :meth:`publish` then sends the model
        straight from its buffer, slice by slice, with no serialized copy."""
        return hasattr(self.store.connector, "put_stream")

    def publish(self, weights: FlatWeights, round_idx: int, data: memoryview | None = None) -> ProxyRef:
        """The round's model into the store (``data``: its ``to_buffer()``, when the caller has it
        already). A store that streams (:attr:`streams`) gets the header and then the model's own
        buffer in slices, no serialized copy of it made (a store per site sends the one buffer
        to every site at once)."""
        put_stream = getattr(self.store.connector, "put_stream", None) if data is None else None
        put_parts = None if data is not None or put_stream is not None else getattr(
            self.store.connector, "put_parts", None)
        payload: Any
        if put_stream is not None:
            head = header(weights.layout)
            nbytes = len(head) + weights.nbytes
        elif put_parts is None:
            payload = weights.to_buffer() if data is None else data
            nbytes = len(payload)
        else:
            payload = weights.to_parts()
            nbytes = sum(len(p) for p in payload)
        try:
            with deferred():  # the key and its lifetime are written together, or not at all
                proxy: Any
                if put_stream is not None:
                    key = put_stream(nbytes, _model_parts(head, weights))
                    proxy = self.store.proxy_from_key(key, lifetime=self._lifetime(round_idx))
                elif put_parts is None:
                    proxy = self.store.proxy(payload, lifetime=self._lifetime(round_idx), populate_target=False)
                else:  # straight from the model's buffer; never recycled: workers cache it
                    key = put_parts(payload)
                    proxy = self.store.proxy_from_key(key, lifetime=self._lifetime(round_idx))
        except Exception as exc:
            raise TransferError(
                f"{self.kind} store at {self.where} failed in round {round_idx + 1}: {type(exc).__name__}: {exc}"
            ) from exc
        return ProxyRef(proxy, nbytes, round_idx)

    def adopt(self, ref: ProxyRef) -> None:
        self._lifetime(ref.round).add_key(ref.key)

    def collect(self, ref: ProxyRef) -> FlatWeights:
        self.adopt(ref)
        return self.read(ref)

    def read(self, ref: ProxyRef) -> FlatWeights:
        """``ref``'s weights from the store, without adopting its key (what :meth:`collect`
        does after the adopt; a store per site reads ahead with it in a thread a site)."""
        data = self._reading(ref, self.store.connector.get)
        if data is None:
            raise TransferError(f"result key {ref.key} of round {ref.round + 1} is missing from the {self.kind} store")
        return FlatWeights.from_bytes(data)

    def _reading(self, ref: ProxyRef, read: Callable[[Any], T], passing: tuple[type[Exception], ...] = ()) -> T:
        """``read(ref.key)``; the store's failure as a TransferError naming the store, key and round
        (an exception of a ``passing`` type as it is)."""
        try:
            return read(ref.key)
        except passing:
            raise
        except Exception as exc:
            raise TransferError(
                f"{self.kind} store at {self.where} failed reading key {ref.key} of round {ref.round + 1}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def collect_fold(self, ref: ProxyRef, into: PartFold, weight: float) -> float:
        """:meth:`collect` ``ref`` and fold it into ``into`` with ``weight``, a slice at a time as
        it is read where the store reads in slices (Redis): each slice is folded while the next
        is on its way, and no buffer of the model's size is made (a fresh one costs its page
        faults in every round). Otherwise :meth:`collect`, then one fold. Returns the seconds
        spent folding; the rest of the call is the read. A read that fails midway raises
        :class:`TransferError` with part of the result folded in: the run stops on it."""
        self.adopt(ref)
        get_slices = getattr(self.store.connector, "get_slices", None)
        if get_slices is None:
            weights = self.read(ref)
            t0 = time.perf_counter()
            into.expect(weights.layout, weight)
            into.add_part(0, weights.buffer, weight)
            into.added(weight)
            return time.perf_counter() - t0
        fold_s = 0.0

        def fold(start: int, values: np.ndarray) -> None:
            nonlocal fold_s
            t0 = time.perf_counter()
            into.add_part(start, values, weight)
            fold_s += time.perf_counter() - t0

        payload = PayloadSlices(lambda layout: into.expect(layout, weight), fold)
        # a result that does not fit (its layout, its length) raises as a fold does: ValueError, TypeError
        size = self._reading(ref, lambda key: get_slices(key, payload), (ValueError, TypeError))
        if size is None:
            raise TransferError(f"result key {ref.key} of round {ref.round + 1} is missing from the {self.kind} store")
        payload.done()
        into.added(weight)
        return fold_s

    def discard(self, ref: ProxyRef) -> None:
        try:
            self.store.evict(ref.key)
        except Exception:  # best effort: the store may be closing
            log.warning("could not evict result key %s", ref.key)

    def end_round(self, round_idx: int) -> None:
        lifetime = self._lifetimes.pop(round_idx, None)
        if lifetime is not None:
            try:
                lifetime.close()
            except Exception as exc:
                raise TransferError(
                    f"{self.kind} store at {self.where} failed evicting round {round_idx + 1}: {exc}"
                ) from exc

    def close(self) -> None:
        """End every open lifetime (evicting its keys), then close the store."""
        for round_idx in list(self._lifetimes):
            try:
                self.end_round(round_idx)
            except TransferError:
                pass  # the store is gone; nothing left to evict
        self.store.close()

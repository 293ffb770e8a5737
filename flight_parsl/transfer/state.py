"""Per-client state that persists across rounds, keyed by client id.

Some clients carry state from round to round (an optimizer's momentum, the
error-feedback residual of a lossy codec under :func:`feedback_key` (an aggregator's
under :func:`aggregator_key`), a private model,
an epoch budget or a privacy budget). A :class:`ClientState` is a
small picklable handle that tasks carry: a slot reads a client's blob before its
training and writes it back after. It lives in the run's store with a run-long
scope: Redis keys under one run prefix (``redis`` transfer) or files in one run
directory (``file`` and ``parsl`` transfers; a directory every slot sees). The
coordinator's :func:`open_state` removes all of it when the run ends, whatever
ends it.

A blob may carry a *version* (``<client>@<version>``): the decentralized loop
(and ``train.keep_momentum``) writes each attempt's new state under a new version
and reads, in the next round or a retry, only the version whose task result it
accepted (:class:`VersionedView`). A task killed half-way, or one whose result
came too late, never changes what its client starts from.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from flight_parsl.core.errors import TransferError

log = logging.getLogger(__name__)


def _key(client: int, version: str | None) -> str:
    return f"{int(client)}" if version is None else f"{int(client)}@{version}"


class ClientState(Protocol):
    """Read and write one blob per client (and version)."""

    def get(self, client: int, version: str | None = None) -> bytes | None:
        """The client's blob (of ``version``), or None before its first write."""

    def put(self, client: int, data: bytes, version: str | None = None) -> None:
        """Replace the client's blob (of ``version``)."""

    def release(self) -> None:
        """Close what this process opened for the handle (the run is over; the blobs stay)."""


@dataclass(frozen=True)
class DirState:
    """Client blobs as files ``<root>/<client>.bin`` (written atomically)."""

    root: str

    def _path(self, client: int, version: str | None = None) -> str:
        return os.path.join(self.root, f"{_key(client, version)}.bin")

    def get(self, client: int, version: str | None = None) -> bytes | None:
        try:
            with open(self._path(client, version), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def has(self, client: int, version: str | None = None) -> bool:
        """Whether the client's blob of ``version`` is there (without reading it)."""
        return os.path.exists(self._path(client, version))

    def put(self, client: int, data: bytes, version: str | None = None) -> None:
        path = self._path(client, version)
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"  # threads of one process write side by side
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise TransferError(f"cannot write the state of client {client} under {self.root}: {exc}") from exc

    def delete(self, client: int, version: str | None = None) -> None:
        """Remove the client's blob of ``version`` (nothing when there is none)."""
        try:
            os.remove(self._path(client, version))
        except FileNotFoundError:
            pass

    def release(self) -> None:
        return None


@dataclass(frozen=True)
class RedisState:
    """Client blobs as Redis keys ``<prefix><client>``."""

    host: str
    port: int
    prefix: str
    timeout: float = 30.0
    password: str | None = field(default=None, repr=False)
    username: str | None = None  # the run's ACL user (None: the default user)
    tls: bool = False
    ca: str | None = field(default=None, repr=False)  # the PEM text of the CA of a TLS server

    def connection(self) -> Any:
        """This process's Redis client for the handle (slots reuse it across tasks)."""
        conn = _CONNECTIONS.get(self)
        if conn is None:
            import redis

            ssl_args: dict[str, Any] = {}
            if self.tls:
                ssl_args = {"ssl": True, "ssl_ca_data": self.ca, "ssl_cert_reqs": "required"}
            conn = _CONNECTIONS[self] = redis.Redis(
                self.host, self.port, username=self.username, password=self.password, socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout, **ssl_args,
            )
        return conn

    def _fail(self, what: str, client: int, exc: Exception) -> TransferError:
        return TransferError(
            f"Redis at {self.host}:{self.port} failed to {what} the state of client {client}: "
            f"{type(exc).__name__}: {exc}"
        )

    def get(self, client: int, version: str | None = None) -> bytes | None:
        try:
            return self.connection().get(f"{self.prefix}{_key(client, version)}")
        except Exception as exc:
            raise self._fail("read", client, exc) from exc

    def put(self, client: int, data: bytes, version: str | None = None) -> None:
        try:
            self.connection().set(f"{self.prefix}{_key(client, version)}", data)
        except Exception as exc:
            raise self._fail("write", client, exc) from exc

    def delete(self, client: int, version: str | None = None) -> None:
        """Remove the client's blob of ``version``."""
        try:
            self.connection().delete(f"{self.prefix}{_key(client, version)}")
        except Exception as exc:
            raise self._fail("delete", client, exc) from exc

    def missing(self, keys: Sequence[tuple[int, str | None]]) -> list[tuple[int, str | None]]:
        """Which of ``keys`` (client, version) the server does not hold: one pipelined ``EXISTS``
        a key, so only the key names cross the wire, never a blob."""
        if not keys:
            return []
        try:
            pipe = self.connection().pipeline(transaction=False)
            for client, version in keys:
                pipe.exists(f"{self.prefix}{_key(client, version)}")
            found = pipe.execute()
        except Exception as exc:
            raise self._fail("look up", keys[0][0], exc) from exc
        return [key for key, n in zip(keys, found, strict=True) if not n]

    def clear(self, admin: Any = None) -> None:
        """Delete every key of the handle's prefix, listed with SCAN through ``admin`` (a client
        of the server's admin user: a run's ACL user may not list key names); None: this
        handle's own connection (credentials used as given, which may list keys)."""
        conn = admin if admin is not None else self.connection()
        keys = list(conn.scan_iter(match=f"{self.prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            conn.delete(*keys[i : i + 1000])
        self.release()

    def release(self) -> None:
        conn = _CONNECTIONS.pop(self, None)
        if conn is not None:
            conn.close()


_CONNECTIONS: dict[RedisState, Any] = {}


@dataclass(frozen=True)
class MirroredState:
    """A site's client state (``transfer.per_site``) with a copy on the site's side of its link.

    Tasks read ``store`` (the site's Redis) and write both: the blob into ``store``, then the same
    bytes into ``mirror`` (files in the run directory, written by the task at its site). The
    coordinator reads a checkpoint's blobs from ``mirror`` (:class:`~flight_parsl.transfer.persite.SiteState`),
    so they never cross the site's link; it asks ``store`` only which accepted keys it lost.

    A blob the store lacks (its server was stopped and came back empty) is read from ``mirror``
    and put back into ``store`` (:meth:`get`): the site's task that reads it next restores it, at
    the site, so the run goes on from the state it had and later reads are local to Redis again.
    This lives here, in the handle a task carries, because only the task is at the site: the
    coordinator writing the blob back would carry it across the site's link."""

    store: ClientState
    mirror: DirState

    def get(self, client: int, version: str | None = None) -> bytes | None:
        """The blob from ``store``; when it is not there, from ``mirror``, written back into ``store``.
        A store that cannot be reached raises as before (the task fails, and is retried)."""
        blob = self.store.get(client, version)
        if blob is not None:
            return blob
        blob = self.mirror.get(client, version)
        if blob is not None:
            self.store.put(client, blob, version)
            log.info("client state %s restored from the mirror %s", _key(client, version), self.mirror.root)
        return blob

    def put(self, client: int, data: bytes, version: str | None = None) -> None:
        self.store.put(client, data, version)
        self.mirror.put(client, data, version)

    def delete(self, client: int, version: str | None = None) -> None:
        delete = getattr(self.store, "delete", None)
        if delete is not None:
            delete(client, version)
        self.mirror.delete(client, version)

    def release(self) -> None:
        self.store.release()


@dataclass(frozen=True)
class VersionedView:
    """What one task attempt sees of the store: each client's accepted version, read; a new one, written.

    ``read`` maps a client to the version its last accepted task wrote (absent or None:
    the unversioned blob, None before any); ``write`` names this attempt's version.
    The coordinator switches a client to ``write`` only when it accepts the task's
    result (:class:`VersionBook`), so a task that dies or comes too late leaves the
    client where it was. ``residuals``: a client's error-feedback residual
    (:func:`feedback_key`) is versioned the same way (with the client's version);
    otherwise it is one unversioned blob.
    """

    store: ClientState
    read: tuple[tuple[int, str | None], ...]
    write: str
    residuals: bool = False

    def get(self, client: int, version: str | None = None) -> bytes | None:
        if client < 0 and not self.residuals:  # an unversioned error-feedback residual
            return self.store.get(client, version)
        owner = client if client >= 0 else -1 - client
        return self.store.get(client, version if version is not None else dict(self.read).get(owner))

    def put(self, client: int, data: bytes, version: str | None = None) -> None:
        if client < 0 and not self.residuals:
            self.store.put(client, data, version)
            return
        self.store.put(client, data, version if version is not None else self.write)

    def release(self) -> None:
        self.store.release()


class VersionBook:
    """The coordinator's record of each client's accepted state version, and the blobs' life cycle.

    :meth:`view` hands a task attempt its :class:`VersionedView`; :meth:`accept` switches
    the clients of an accepted result to that attempt's version and deletes the version
    they had. :meth:`snapshot` / :meth:`restore` move the accepted blobs into and out of
    a checkpoint. ``momentum``: the clients' own blobs are versioned (``train.keep_momentum``,
    the decentralized state); ``residuals``: their error-feedback residuals are
    (:func:`feedback_key`, ``transfer.error_feedback``).
    """

    def __init__(self, store: ClientState, momentum: bool = True, residuals: bool = False) -> None:
        self.store = store
        self.momentum, self.residuals = momentum, residuals
        self.accepted: dict[int, str] = {}

    @staticmethod
    def version(round_idx: int, attempt: int) -> str:
        """The version an attempt of round ``round_idx`` (0-based) writes: ``<round>.<attempt>``, from 1."""
        return f"{round_idx + 1}.{attempt}"

    def _keys(self, client: int) -> list[int]:
        """The store keys of ``client`` that carry versions."""
        return [k for k, on in ((client, self.momentum), (feedback_key(client), self.residuals)) if on]

    def accepted_keys(self) -> list[tuple[int, str]]:
        """Every accepted (store key, version): each client's blob and residual that carry versions."""
        return [(k, v) for c, v in sorted(self.accepted.items()) for k in self._keys(c)]

    def view(self, clients: Sequence[int], round_idx: int, attempt: int) -> VersionedView:
        read = tuple((c, self.accepted.get(c)) for c in clients)
        return VersionedView(self.store, read, self.version(round_idx, attempt), self.residuals)

    def accept(self, clients: Sequence[int], round_idx: int, attempt: int) -> None:
        """``clients`` start from what attempt ``attempt`` of round ``round_idx`` wrote; the version
        they had and what the round's earlier attempts wrote are deleted."""
        new = self.version(round_idx, attempt)
        for c in clients:
            old = self.accepted.get(c)
            self.accepted[c] = new
            if old is not None and old != new:
                for key in self._keys(c):
                    _delete(self.store, key, old)
        self.discard(clients, round_idx, range(attempt))

    def discard(self, clients: Sequence[int], round_idx: int, attempts: Iterable[int]) -> None:
        """Delete what ``attempts`` of round ``round_idx`` wrote for ``clients`` (never accepted).
        Work still running may write again later: the store's removal at the run's end gets that."""
        attempts = list(attempts)
        for c in clients:
            for a in attempts:
                if self.accepted.get(c) != self.version(round_idx, a):
                    for key in self._keys(c):
                        _delete(self.store, key, self.version(round_idx, a))

    def snapshot(self) -> dict[int, tuple[str, bytes]]:
        """Every client's accepted version and blob (for a checkpoint; empty without ``momentum``)."""
        if not self.momentum:
            return {}
        out = {}
        for c, v in sorted(self.accepted.items()):  # a store per site: from the sites' mirrors
            blob = self.store.get(c, v)
            if blob is None:
                where = getattr(self.store, "where", None)  # a store per site: which site's
                at = f" ({where(c)})" if callable(where) else ""
                raise TransferError(f"the accepted state {v} of client {c} is missing from the store{at}: a Redis "
                                    f"that was stopped lost it; continue from the last checkpoint with --resume")
            out[c] = (v, blob)
        return out

    def residual_snapshot(self) -> dict[int, tuple[str, bytes]]:
        """Every client's accepted error-feedback residual and its version (for a checkpoint;
        empty without ``residuals``)."""
        if not self.residuals:
            return {}
        out = {}
        for c, v in sorted(self.accepted.items()):
            blob = self.store.get(feedback_key(c), v)
            if blob is not None:
                out[c] = (v, blob)
        return out

    def restore(
        self, saved: dict[int, tuple[str, bytes]], residuals: dict[int, tuple[str, bytes]] | None = None
    ) -> None:
        """Write a :meth:`snapshot` (and a :meth:`residual_snapshot`) into the (fresh) store and
        accept their versions."""
        for c, (v, blob) in saved.items():
            self.store.put(c, blob, v)
            self.accepted[c] = v
        for c, (v, blob) in (residuals or {}).items():
            self.store.put(feedback_key(c), blob, v)
            self.accepted[c] = v


def _clear(state: RedisState, admin: Callable[[], Any] | None) -> None:
    """``state.clear`` through a fresh client of ``admin`` (closed after), or its own connection."""
    if admin is None:
        state.clear()
        return
    conn = admin()
    try:
        state.clear(conn)
    finally:
        conn.close()
        state.release()


def _delete(store: ClientState, client: int, version: str) -> None:
    delete = getattr(store, "delete", None)
    if delete is not None:
        delete(client, version)


def feedback_key(client: int) -> int:
    """Where a client's error-feedback residual lives in the same store: ``-1 - client``.

    Client ids are >= 0, so the residual never meets the client's own blob (its momentum).
    """
    return -1 - int(client)


#: Where aggregators' residuals start in the store's key space: far below any client's.
_AGGREGATOR_KEYS = -(1 << 40)


def aggregator_key(index: int) -> int:
    """Where the error-feedback residual of a tree's aggregator number ``index`` lives in the
    store: below every :func:`feedback_key` of a client."""
    return _AGGREGATOR_KEYS - int(index)


@dataclass(frozen=True)
class AggregatorFeedback:
    """What an aggregate task needs for error feedback: the run's store, the aggregator's key
    (:func:`aggregator_key`), the version of its residual to add (None: none yet) and the
    version it writes its new residual under (accepted by the coordinator once the
    aggregator's result is in)."""

    store: ClientState
    key: int
    read: str | None
    write: str

    def residual(self) -> bytes | None:
        """The residual to add (None before the aggregator's first)."""
        return None if self.read is None else self.store.get(self.key, self.read)

    def keep(self, residual: bytes) -> None:
        """Write the aggregator's new residual."""
        self.store.put(self.key, residual, self.write)


@contextmanager
def open_state(
    redis: tuple[str, int] | None = None,
    directory: str | None = None,
    timeout: float = 30.0,
    password: str | None = None,
    *,
    username: str | None = None,
    prefix: str | None = None,
    tls: bool = False,
    ca: str | None = None,
    admin: Callable[[], Any] | None = None,
) -> Iterator[ClientState]:
    """A run-scoped client state: Redis keys under a fresh prefix, or a fresh directory.

    With ``redis`` (host, port) the keys live there, as ``<prefix>client:<id>`` (``prefix``: the
    run's, which its ACL user may touch; default ``flight_parsl:<fresh id>:``), reached as
    ``username`` with ``password`` (over TLS checked against ``ca`` with ``tls``); otherwise in
    a new directory under ``directory`` (default /dev/shm or the temp dir). Everything is
    removed on exit, including after an error or Ctrl-C: the keys are listed through a client
    ``admin()`` makes (the server's admin user, closed after; None: ``username`` itself).
    """
    run = uuid.uuid4().hex[:12]
    if redis is not None:
        keys = f"{prefix if prefix is not None else f'flight_parsl:{run}:'}client:"
        state = RedisState(redis[0], redis[1], keys, timeout, password, username, tls, ca)
        try:
            yield state
        finally:
            try:
                _clear(state, admin)
            except Exception as exc:  # the server may be gone with its keys; never hide the cause
                log.warning("cannot remove client state keys from Redis at %s:%s: %s", redis[0], redis[1], exc)
        return
    base = Path(directory or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()))
    root = base / f"flight_parsl-state-{run}"
    root.mkdir(parents=True)
    try:
        yield DirState(str(root))
    finally:
        shutil.rmtree(root, ignore_errors=True)

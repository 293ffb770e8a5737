"""Per-client state that persists across rounds, keyed by client id.

Some clients carry state from round to round (an optimizer's momentum, the
error-feedback residual of a lossy codec under :func:`feedback_key`, a private model,
an epoch budget or a privacy budget). A :class:`ClientState` is a
small picklable handle that tasks carry: a slot reads a client's blob before its
training and writes it back after. It lives in the run's store with a run-long
scope: Redis keys under one run prefix (``redis`` transfer) or files in one run
directory (``file`` and ``parsl`` transfers; a directory every slot sees). The
coordinator's :func:`open_state` removes all of it when the run ends, whatever
ends it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from flight_parsl.core.errors import TransferError

log = logging.getLogger(__name__)


class ClientState(Protocol):
    """Read and write one blob per client."""

    def get(self, client: int) -> bytes | None:
        """The client's blob, or None before its first write."""

    def put(self, client: int, data: bytes) -> None:
        """Replace the client's blob."""

    def release(self) -> None:
        """Close what this process opened for the handle (the run is over; the blobs stay)."""


@dataclass(frozen=True)
class DirState:
    """Client blobs as files ``<root>/<client>.bin`` (written atomically)."""

    root: str

    def _path(self, client: int) -> str:
        return os.path.join(self.root, f"{int(client)}.bin")

    def get(self, client: int) -> bytes | None:
        try:
            with open(self._path(client), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def put(self, client: int, data: bytes) -> None:
        path = self._path(client)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise TransferError(f"cannot write the state of client {client} under {self.root}: {exc}") from exc

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

    def connection(self) -> Any:
        """This process's Redis client for the handle (slots reuse it across tasks)."""
        conn = _CONNECTIONS.get(self)
        if conn is None:
            import redis

            conn = _CONNECTIONS[self] = redis.Redis(
                self.host, self.port, password=self.password, socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
            )
        return conn

    def _fail(self, what: str, client: int, exc: Exception) -> TransferError:
        return TransferError(
            f"Redis at {self.host}:{self.port} failed to {what} the state of client {client}: "
            f"{type(exc).__name__}: {exc}"
        )

    def get(self, client: int) -> bytes | None:
        try:
            return self.connection().get(f"{self.prefix}{int(client)}")
        except Exception as exc:
            raise self._fail("read", client, exc) from exc

    def put(self, client: int, data: bytes) -> None:
        try:
            self.connection().set(f"{self.prefix}{int(client)}", data)
        except Exception as exc:
            raise self._fail("write", client, exc) from exc

    def clear(self) -> None:
        """Delete every key of the handle's prefix."""
        conn = self.connection()
        keys = list(conn.scan_iter(match=f"{self.prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            conn.delete(*keys[i : i + 1000])
        _CONNECTIONS.pop(self, None)

    def release(self) -> None:
        conn = _CONNECTIONS.pop(self, None)
        if conn is not None:
            conn.close()


_CONNECTIONS: dict[RedisState, Any] = {}


def feedback_key(client: int) -> int:
    """Where a client's error-feedback residual lives in the same store: ``-1 - client``.

    Client ids are >= 0, so the residual never meets the client's own blob (its momentum).
    """
    return -1 - int(client)


@contextmanager
def open_state(
    redis: tuple[str, int] | None = None, directory: str | None = None, timeout: float = 30.0, password: str | None = None
) -> Iterator[ClientState]:
    """A run-scoped client state: Redis keys under a fresh prefix, or a fresh directory.

    With ``redis`` (host, port) the keys live there (``password``: the server's); otherwise in a new directory
    under ``directory`` (default /dev/shm or the temp dir). Everything is removed on
    exit, including after an error or Ctrl-C.
    """
    run = uuid.uuid4().hex[:12]
    if redis is not None:
        state = RedisState(redis[0], redis[1], f"flight_parsl:{run}:client:", timeout, password)
        try:
            yield state
        finally:
            try:
                state.clear()
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

"""Redis reads of large values, straight from the socket into one buffer.

redis-py reads a reply in small pieces through its parser's buffer and copies the
value out at the end: for a model-sized value that costs a few times the payload
in memory and most of a read's time in Python. And a plain ``GET`` makes the
server copy the whole value into a reply buffer of its own before writing it.

:class:`BulkReader` asks for the value's length (``STRLEN``), allocates one buffer
of that size, and fetches the value as ``GETRANGE`` slices of :data:`CHUNK` bytes,
:data:`WINDOW` of them in flight (the first ones in the same write as ``STRLEN``: one
round trip before the first byte, which counts across a link), each received with
``recv_into`` in place: one
copy on this side (the kernel's, into huge pages where the kernel gives them) and
only a chunk-sized reply buffer on the server's, whose single thread every slot
shares.

A streamed put (:func:`write_value`, :meth:`BulkReader.put`) goes the other way: a value
whose bytes are still being made (a slot's partial, cast slice by slice) leaves slice by
slice as ``SETRANGE`` commands into a temporary key, every reply read at the end, and the
temporary key is renamed to the value's own in the same pipeline, so no reader finds the
key before it is whole, and a put that fails midway leaves no key of that name.

It speaks the few lines of RESP these commands need and nothing else; every other
command stays with redis-py. Sockets are kept per reader (one per concurrent
caller) and carry the same timeout as the other Redis clients.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from collections.abc import Iterable, Iterator

import numpy as np

#: Bytes per ``GETRANGE`` request.
CHUNK = 4 << 20
#: ``GETRANGE`` requests in flight at once.
WINDOW = 2
#: The longest reply line read before a value (``$<length>``, ``:<int>`` or an error).
MAX_LINE = 1 << 12


class ProtocolError(ConnectionError):
    """The server's reply is not what the command returns."""


class ReplyError(RuntimeError):
    """The server answered with an error line (``-ERR ...``)."""


def encode(*args: str | int) -> bytes:
    """One RESP request."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(parts)


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock``."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("Redis closed the connection in the middle of a reply")
        got += n


def _line(sock: socket.socket) -> bytes:
    """One reply line, without its CRLF; read byte by byte so nothing after it is consumed."""
    line = bytearray()
    while not line.endswith(b"\r\n"):
        if len(line) > MAX_LINE:
            raise ProtocolError("Redis sent a reply line longer than 4 KiB")
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError("Redis closed the connection before replying")
        line += byte
    if line.startswith(b"-"):
        raise ReplyError(line[1:-2].decode(errors="replace"))
    return bytes(line[:-2])


def _integer(sock: socket.socket) -> int:
    line = _line(sock)
    if not line.startswith(b":"):
        raise ProtocolError(f"expected an integer reply, got {line[:40]!r}")
    return int(line[1:])


def _bulk_into(sock: socket.socket, view: memoryview) -> bool:
    """Read one bulk reply into ``view``; False (its bytes read past) when its length differs."""
    line = _line(sock)
    if not line.startswith(b"$"):
        raise ProtocolError(f"expected a bulk reply, got {line[:40]!r}")
    size = int(line[1:])
    if size < 0:
        return False
    if size == len(view):
        _recv_into(sock, view)
    else:
        _recv_into(sock, memoryview(bytearray(size)))
    _recv_into(sock, memoryview(bytearray(2)))  # its CRLF
    return size == len(view)


def receive_buffer(size: int) -> np.ndarray:
    """An uninitialized byte buffer; numpy asks for transparent huge pages on large ones, so
    filling it faults a few 2 MiB pages instead of thousands of 4 KiB ones (a third of the
    read's CPU time for a model-sized value)."""
    return np.empty(size, dtype=np.uint8)


def _slices(size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, size, CHUNK):
        yield start, min(size, start + CHUNK)


def read_value(sock: socket.socket, key: str) -> memoryview | None:
    """The value of ``key`` (one buffer), or None when the key is missing or vanishes mid-read.

    ``STRLEN`` and the first :data:`WINDOW` ``GETRANGE`` requests leave in one write, before the
    length is known (each asks for a whole :data:`CHUNK`; Redis cuts a range at the value's end
    and answers an empty string past it): the read waits for one round trip before its first
    byte, not two (a 10 ms round trip less a read across a 1 Gbit/s, 5 ms link).
    """
    first = [(k * CHUNK, (k + 1) * CHUNK) for k in range(WINDOW)]
    sock.sendall(encode("STRLEN", key) + b"".join(encode("GETRANGE", key, s, e - 1) for s, e in first))
    size = _integer(sock)
    slices = list(_slices(size))
    view = receive_buffer(size).data if size else memoryview(b"")  # a memoryview of the buffer
    whole = True
    for i in range(max(len(slices), WINDOW)):
        if i >= 1 and i + WINDOW - 1 < len(slices):  # keep WINDOW requests in flight
            s, e = slices[i + WINDOW - 1]
            sock.sendall(encode("GETRANGE", key, s, e - 1))
        if i < len(slices):
            start, stop = slices[i]
            whole = _bulk_into(sock, view[start:stop]) and whole
        else:  # a first request past the value's end: an empty reply
            whole = _bulk_into(sock, memoryview(b"")) and whole
    if size == 0:  # a missing key, or an empty value
        sock.sendall(encode("EXISTS", key))
        return memoryview(b"") if _integer(sock) and whole else None
    return view if whole else None


#: Appended to a streamed value's key while it is written (still under the run's key prefix).
PARTIAL_SUFFIX = ".partial"


def _command_head(*args: str | int, payload: int) -> bytes:
    """A RESP request whose last argument, ``payload`` bytes long, is sent after this head
    (followed by CRLF)."""
    return b"*%d\r\n" % (len(args) + 1) + b"".join(
        b"$%d\r\n%b\r\n" % (len(raw), raw) for raw in (str(a).encode() for a in args)
    ) + b"$%d\r\n" % payload


def write_value(sock: socket.socket, key: str, size: int, parts: Iterable[bytes | memoryview]) -> None:
    """Store ``size`` bytes under ``key``, sent part by part as ``parts`` yields them.

    The value is made under ``key`` + :data:`PARTIAL_SUFFIX`: a ``SETRANGE`` of its last
    byte allocates it whole at once (no growing copies on the server), each part is a
    ``SETRANGE`` at its offset, sent as soon as the part exists, and a ``RENAME`` to ``key``
    closes the pipeline; the replies are read at the end, so the link never waits for a
    round trip. A reader never sees ``key`` part-written: it appears whole, with the rename.
    Raises when the parts do not add up to ``size`` or the server answers an error.
    """
    if size <= 0:
        raise ValueError("a streamed put needs a value of at least one byte")
    tmp = key + PARTIAL_SUFFIX
    sock.sendall(encode("SETRANGE", tmp, size - 1, "\0"))
    commands = 1
    offset = 0
    crlf = b""
    for part in parts:
        view = memoryview(part).cast("B")
        if not view.nbytes:
            continue
        if offset + view.nbytes > size:
            raise ValueError(f"a streamed put got more than the {size} bytes it announced")
        sock.sendall(crlf + _command_head("SETRANGE", tmp, offset, payload=view.nbytes))
        sock.sendall(view)
        crlf = b"\r\n"
        offset += view.nbytes
        commands += 1
    if offset != size:
        raise ValueError(f"a streamed put got {offset} bytes of the {size} it announced")
    sock.sendall(crlf + encode("RENAME", tmp, key))
    error: ReplyError | None = None  # the first error; the pipeline's other replies are read past it
    for _ in range(commands):
        try:
            _integer(sock)
        except ReplyError as exc:
            error = error or exc
    try:
        reply = _line(sock)
    except ReplyError as exc:
        error, reply = error or exc, b"+OK"
    if error is not None:  # the caller deletes what the rename may have made of a part-written value
        raise error
    if reply != b"+OK":
        raise ProtocolError(f"expected +OK to RENAME, got {reply[:40]!r}")


def _readable(sock: socket.socket) -> bool:
    """Whether an idle socket has something to read: between requests only its end (the server
    closed it, e.g. a restarted server after ``faults.redis_stop``) or garbage, never a reply;
    redis-py checks its pooled connections the same way before using one again."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    ready, _, _ = select.select([sock], [], [], 0)
    return bool(ready)


class BulkReader:
    """Reads of one Redis server over a few raw sockets, each value into one buffer.

    Args:
        host: the server's host name or address.
        port: its port.
        timeout: seconds to connect and for each read (``socket.timeout`` is a
            ``TimeoutError``, as with the other Redis clients).
        password: sent with ``AUTH`` on every new socket when set.
        username: the ACL user ``AUTH`` logs in as (None: the default user).
        tls: speak TLS, checking the server's certificate and host name against ``ca``
            (the CA's PEM text; None: the system's trusted CAs).
        unix_socket: connect to the server's Unix socket at this path instead (its own
            host: ``host``, ``port`` and ``tls`` unused).
        reconnect: before reusing an idle socket, check that the server has not closed it
            (one ``select``), and take a fresh one if it has: a site's own store, restarted by
            ``faults.redis_stop``, serves its next rounds. Off (the default), a read on a socket
            a restarted server closed fails, and the run with it, as it always did with one store.
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float,
        password: str | None = None,
        username: str | None = None,
        tls: bool = False,
        ca: str | None = None,
        unix_socket: str | None = None,
        reconnect: bool = False,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.unix_socket = unix_socket
        self.reconnect = reconnect
        self._password = password
        self._username = username
        self._tls: ssl.SSLContext | None = None
        if tls and unix_socket is None:
            self._tls = ssl.create_default_context(cadata=ca) if ca else ssl.create_default_context()
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False

    def _connect(self) -> socket.socket:
        if self.unix_socket is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.unix_socket)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
        if self._password is not None:
            auth = ("AUTH", self._password) if self._username is None else ("AUTH", self._username, self._password)
            try:
                sock.sendall(encode(*auth))
                reply = _line(sock)
                if reply != b"+OK":
                    raise ProtocolError(f"expected +OK to AUTH, got {reply[:40]!r}")
            except BaseException:
                sock.close()
                raise
        return sock

    def get(self, key: str) -> memoryview | None:
        """The value of ``key``, or None when it is missing."""
        with self._lock:
            sock = self._idle.pop() if self._idle else None
        if sock is not None and self.reconnect and _readable(sock):  # the server closed it (restarted): a fresh one
            sock.close()
            sock = None
        if sock is None:
            sock = self._connect()
        try:
            value = read_value(sock, key)
        except BaseException:  # the socket may hold part of a reply: never reuse it
            sock.close()
            raise
        with self._lock:
            keep = not self._closed
            if keep:
                self._idle.append(sock)
        if not keep:
            sock.close()
        return value

    def put(self, key: str, size: int, parts: Iterable[bytes | memoryview]) -> None:
        """Store ``size`` bytes under ``key`` as ``parts`` yields them (:func:`write_value`).

        On a failure midway (the server, the link, or ``parts`` itself raising) the socket is
        closed and the part-written value is deleted, under its temporary name and under ``key``
        (the pipeline's rename runs even after a refused ``SETRANGE``), when the server still
        answers (best effort: on a server that went away it goes with the server). ``key`` is
        new and named to no reader before this returns, so nothing reads it meanwhile."""
        with self._lock:
            sock = self._idle.pop() if self._idle else None
        if sock is not None and self.reconnect and _readable(sock):
            sock.close()
            sock = None
        if sock is None:
            sock = self._connect()
        try:
            write_value(sock, key, size, parts)
        except BaseException:
            sock.close()
            self._drop(key, key + PARTIAL_SUFFIX)
            raise
        with self._lock:
            keep = not self._closed
            if keep:
                self._idle.append(sock)
        if not keep:
            sock.close()

    def _drop(self, *keys: str) -> None:
        """``DEL keys`` on a fresh socket, errors ignored (a failed streamed put's leftovers)."""
        try:
            sock = self._connect()
        except Exception:  # noqa: BLE001 - best effort: the server may be gone
            return
        try:
            sock.sendall(encode("DEL", *keys))
            _integer(sock)
        except Exception:  # noqa: BLE001
            pass
        finally:
            sock.close()

    def close(self) -> None:
        """Close the idle sockets; one still in use closes when its read returns."""
        with self._lock:
            idle, self._idle, self._closed = self._idle, [], True
        for sock in idle:
            sock.close()

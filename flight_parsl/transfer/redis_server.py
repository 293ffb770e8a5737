"""A managed ``redis-server`` for laptops, tests and job scripts, and a reachability check.

This module owns everything flight_parsl does to find, start, probe and stop a Redis
server: :class:`RedisAddress` (``HOST:PORT`` parsing), :func:`check_reachable` (one PING
with a one-line error), :class:`ManagedRedis` (a private, non-persistent server on a
free loopback port that leaves nothing behind), :func:`redis_available`,
:func:`count_keys` (SCAN-based key counting to check that a run cleaned up) and
:func:`redis_client`, which builds every client with connect and read timeouts.
"""

from __future__ import annotations

import atexit
import hashlib
import ipaddress
import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from flight_parsl.core.errors import ConfigError, ExecutorError
from flight_parsl.transfer.redis_auth import PASSWORD_ENV, PASSWORD_FILE_ENV, write_private

if TYPE_CHECKING:
    from flight_parsl.transfer.redis_tls import Certificates

log = logging.getLogger(__name__)

DEFAULT_BINARY = "redis-server"
POLL_INTERVAL = 0.05
BIND_ATTEMPTS = 5
LOG_TAIL_LINES = 15
STOP_TIMEOUT = 5.0
#: Seconds a Redis client waits to connect and for each reply (config key transfer.redis_timeout).
DEFAULT_TIMEOUT = 30.0

_BIND_FAILURE_MARKERS = (
    "Address already in use",
    "Could not create server TCP listening socket",
    "Could not create server TLS listening socket",
)


@dataclass(frozen=True)
class RedisAddress:
    """Where a Redis server listens.

    Attributes:
        host: Host name or IP address (IPv6 without brackets).
        port: TCP port, 1..65535.
    """

    host: str
    port: int

    def __str__(self) -> str:
        """Return ``host:port`` (``[host]:port`` for an IPv6 address)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> RedisAddress:
        """Parse ``HOST:PORT`` or ``[IPV6]:PORT``.

        Args:
            text: The address as given by the user.

        Returns:
            The parsed address.

        Raises:
            ConfigError: The text is not of the form HOST:PORT or the port is out of range.
        """
        expected = f"invalid Redis address {text!r}; expected HOST:PORT (e.g. 127.0.0.1:6379)"
        stripped = text.strip()
        host, sep, port_text = stripped.rpartition(":")
        if not sep or not host or not port_text:
            raise ConfigError(expected)
        if host.startswith("[") or host.endswith("]"):
            if not (host.startswith("[") and host.endswith("]")) or len(host) < 3:
                raise ConfigError(expected)
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ConfigError(f"{expected}; {host!r} is not an IPv6 address") from None
        elif ":" in host:
            raise ConfigError(f"{expected}; write an IPv6 host in brackets, [::1]:6379")
        if any(ch.isspace() for ch in host) or not port_text.isascii() or not port_text.isdigit():
            raise ConfigError(expected)
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ConfigError(
                f"invalid Redis address {text!r}: port {port} is outside 1..65535; "
                "expected HOST:PORT"
            )
        return cls(host=host, port=port)


def redis_client(
    address: RedisAddress,
    timeout: float,
    password: str | None = None,
    *,
    username: str | None = None,
    tls: bool = False,
    ca: str | None = None,
    unix_socket: str | None = None,
) -> redis.Redis:
    """Build a client that tries once (no retries, no backoff) with the given timeouts.

    Every Redis client flight_parsl creates comes from here: a server that stops
    answering (a stopped process, a hung node) makes a call fail after ``timeout``
    seconds instead of blocking forever, and no retry multiplies that time.

    Args:
        address: The server.
        timeout: Seconds for connecting and for each reply.
        password: The server's password (``requirepass``, or the ``username``'s), or None.
        username: The ACL user to log in as (None: the default user).
        tls: Speak TLS and check the server's certificate and host name.
        ca: The PEM text of the CA that signed the server's certificate (None with ``tls``:
            the system's trusted CAs).
        unix_socket: Connect to the server's Unix socket at this path instead (on the
            server's own host: no network, so no TLS; ``address``, ``tls`` and ``ca`` unused).
    """
    if unix_socket is not None:
        return redis.Redis(
            unix_socket_path=unix_socket,
            username=username,
            password=password,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
    ssl_args: dict[str, object] = {}
    if tls:
        ssl_args = {"ssl": True, "ssl_ca_data": ca, "ssl_cert_reqs": "required", "ssl_check_hostname": True}
    return redis.Redis(
        host=address.host,
        port=address.port,
        username=username,
        password=password,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        **ssl_args,  # type: ignore[arg-type]
    )


#: What a run's ACL user may do besides its keys: read and write them, talk to the server;
#: never the commands that act on the whole server (FLUSHALL, KEYS, CONFIG, ...) or scripts,
#: nor list key names: a key pattern does not filter what SCAN, KEYS or RANDOMKEY return, so
#: they would show other runs' key names (the run's own code never lists keys as its user: a
#: run's client state is cleared through the server's admin connection).
RUN_USER_RULES = ("+@read", "+@write", "+@connection", "-@dangerous", "-@scripting", "-scan", "-keys",
                  "-randomkey")


def run_user_rules(username: str, password: str, prefix: str) -> list[str]:
    """``ACL SETUSER`` arguments of a run's user: on, its password (as a SHA-256 hash, so the
    text never crosses the wire), the keys under ``prefix`` only, no pub/sub channels."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    return [username, "reset", "on", f"#{digest}", f"~{prefix}*", "resetchannels", *RUN_USER_RULES]


def create_user(admin: redis.Redis, rules: list[str]) -> None:
    """``ACL SETUSER`` through ``admin`` (a client allowed to manage users)."""
    admin.execute_command("ACL", "SETUSER", *rules)


def delete_user(admin: redis.Redis, username: str) -> None:
    """``ACL DELUSER`` (its connections are closed by the server)."""
    admin.execute_command("ACL", "DELUSER", username)


def _reason(exc: BaseException) -> str:
    """Describe why talking to Redis failed, on one line."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, (TimeoutError, socket.timeout, redis.exceptions.TimeoutError)):
            return "timed out"
        if isinstance(current, redis.exceptions.AuthenticationError) or "NOAUTH" in str(current):
            return (f"authentication failed ({' '.join(str(current).split())}); give its password "
                    f"in {PASSWORD_FILE_ENV} (a file, mode 600) or {PASSWORD_ENV}")
        current = current.__cause__ or current.__context__
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def check_reachable(
    address: RedisAddress,
    timeout: float = DEFAULT_TIMEOUT,
    password: str | None = None,
    *,
    username: str | None = None,
    tls: bool = False,
    ca: str | None = None,
) -> None:
    """Connect to Redis and send PING.

    Args:
        address: The server to probe.
        timeout: Seconds for connecting and for the reply.
        password: The server's password, or None.
        username, tls, ca: as for :func:`redis_client`.

    Raises:
        ExecutorError: One line, ``Redis at HOST:PORT is unreachable: REASON``.
    """
    client = redis_client(address, timeout, password, username=username, tls=tls, ca=ca)
    try:
        client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        raise ExecutorError(f"Redis at {address} is unreachable: {_reason(exc)}") from None
    finally:
        client.close()


def redis_available(binary: str = DEFAULT_BINARY) -> bool:
    """Return whether the redis-server binary can be found (``shutil.which``)."""
    return shutil.which(binary) is not None


def count_keys(
    address: RedisAddress,
    pattern: str = "*",
    timeout: float = 5.0,
    password: str | None = None,
    *,
    username: str | None = None,
    tls: bool = False,
    ca: str | None = None,
) -> int:
    """Count the keys matching a glob pattern with SCAN (never KEYS).

    Args:
        address: The server to query.
        pattern: A Redis glob pattern.
        timeout: Seconds for connecting and for each reply.
        password: The server's password, or None.
        username, tls, ca: as for :func:`redis_client`.

    Returns:
        The number of matching keys in database 0.

    Raises:
        ExecutorError: The server cannot be reached.
    """
    client = redis_client(address, timeout, password, username=username, tls=tls, ca=ca)
    try:
        return sum(1 for _ in client.scan_iter(match=pattern, count=1000))
    except (redis.exceptions.RedisError, OSError) as exc:
        raise ExecutorError(f"Redis at {address} is unreachable: {_reason(exc)}") from None
    finally:
        client.close()


#: The Unix socket of each managed server over TLS that this process started: (host, port) ->
#: its path. A connector made here for that server carries the path to its other users.
_LOCAL_SOCKETS: dict[tuple[str, int], str] = {}
_ON_THIS_HOST: dict[str, bool] = {}


def local_socket(host: str, port: int) -> str | None:
    """The Unix socket of the managed server at ``host:port`` this process started (None: none)."""
    return _LOCAL_SOCKETS.get((host, port))


def on_this_host(host: str) -> bool:
    """Whether ``host`` is an address of this host (of this process's network namespace: a
    socket can bind it). A virtual host's address is not the coordinator's, and the other way
    round, so each side of a site link answers for its own end only. Cached per address."""
    if host not in _ON_THIS_HOST:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
                probe.bind((infos[0][4][0], 0))
        except OSError:
            _ON_THIS_HOST[host] = False
        else:
            _ON_THIS_HOST[host] = True
    return _ON_THIS_HOST[host]


def _free_port(host: str) -> int:
    """Ask the kernel for a free TCP port on host (bind to port 0, then release it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _namespace_port() -> int:
    """A port for a server in a run's own namespace (nothing else listens there; a taken
    one is tried again with another)."""
    import random

    return random.randint(20000, 60000)


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """Return the last non-empty lines of a text file, or [] if it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


class _BindFailed(Exception):
    """The server could not listen on the chosen port; try another one."""


class ManagedRedis:
    """A private redis-server on a free loopback port, stopped and cleaned up on exit.

    The server keeps no data on disk (``--save "" --appendonly no``), writes only inside
    its own temporary directory (removed on stop), runs in its own session so Ctrl-C in
    the terminal does not kill it before it is shut down cleanly, and is also stopped by
    ``atexit``. With a ``password`` it reads ``requirepass`` from a config file that only its
    owner may read (never from its command line), so no other user of the host can use it.
    With ``tls`` it listens on a TLS port only (its plain port is 0), with a CA and a server
    certificate for ``host`` made for it (:mod:`~flight_parsl.transfer.redis_tls`): files of
    mode 0600 in its own temporary directory, removed with it; :attr:`ca_pem` is what
    clients check it against. The same certificates serve a :meth:`restart`. A server over TLS
    also listens on a Unix socket (:attr:`unix_socket`, mode 0700 in a private directory of its
    own that outlives a restart): the clients on its own host use it instead of TLS
    (:class:`~flight_parsl.transfer.proxy.TimedRedisConnector`), since their bytes never reach a
    network; every client on another host still speaks TLS, and every client logs in.

    Example:
        with ManagedRedis() as server:
            check_reachable(server.address)
    """

    def __init__(
        self,
        binary: str = DEFAULT_BINARY,
        host: str = "127.0.0.1",
        start_timeout: float = 10.0,
        maxmemory: str | None = None,
        password: str | None = None,
        tls: bool = False,
        netns: str | None = None,
    ) -> None:
        """Configure the server; nothing starts until :meth:`start` or ``with``.

        Args:
            binary: The redis-server executable (a name on PATH or a path).
            host: The address to bind and to connect to.
            start_timeout: Seconds to wait for the first PING answer.
            maxmemory: Passed as ``--maxmemory`` (e.g. ``"256mb"``) if set.
            password: Clients must AUTH with it (``requirepass``); None leaves the server open.
            tls: Speak TLS only, with certificates made for ``host``.
            netns: Run inside this network namespace (``ip netns exec``, which execs the
                server: its pid is the server's); ``host`` is an address of that namespace.
        """
        self.netns = netns
        self.password = password
        self.tls = tls
        self._pems: dict[str, str] | None = None  # the certificates and keys, made once
        self.binary = binary
        self.host = host
        self.start_timeout = start_timeout
        self.maxmemory = maxmemory
        self._address: RedisAddress | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._directory: Path | None = None
        self._users: dict[str, list[str]] = {}  # ACL users made by add_user, made again on restart
        self._lock = threading.Lock()
        self._socket_dir: Path | None = None  # with tls: the Unix socket's directory (kept across restarts)

    # -- public API ------------------------------------------------------------------

    @property
    def address(self) -> RedisAddress:
        """The address the server listens on (kept after :meth:`stop`)."""
        if self._address is None:
            raise ExecutorError("ManagedRedis has not been started; use it in a with block")
        return self._address

    @property
    def pid(self) -> int | None:
        """The server's process id, or None before start and after stop."""
        return self._process.pid if self._process is not None else None

    @property
    def directory(self) -> Path | None:
        """The server's temporary directory (removed on stop), or None before start."""
        return self._directory

    @property
    def unix_socket(self) -> str | None:
        """The path of the server's Unix socket (with ``tls``, while started; else None)."""
        return str(self._socket_dir / "redis.sock") if self._socket_dir is not None else None

    @property
    def ca_pem(self) -> str | None:
        """The PEM text of the CA that signed the server's certificate (None without TLS, or before start)."""
        return self._pems["ca.crt"] if self._pems is not None else None

    def client(self, timeout: float = DEFAULT_TIMEOUT, password: str | None = None,
               username: str | None = None) -> redis.Redis:
        """A client of this server (over TLS when it speaks TLS), as ``username`` with ``password``."""
        return redis_client(self.address, timeout, password, username=username, tls=self.tls, ca=self.ca_pem)

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> RedisAddress:
        """Start the server and wait until it answers PING.

        Returns:
            The address it listens on.

        Raises:
            ExecutorError: The binary is missing, or the server exited early or did not
                answer within ``start_timeout`` (the message holds its last log lines).
        """
        with self._lock:
            if self._process is not None:
                raise ExecutorError("ManagedRedis is already started; use a new instance")
            resolved = shutil.which(self.binary)
            if resolved is None:
                raise ExecutorError(
                    f"{self.binary} not found on PATH; install it (apt-get install "
                    "redis-server) or pass --redis HOST:PORT of a running server"
                )
            last_error: _BindFailed | None = None
            for attempt in range(1, BIND_ATTEMPTS + 1):
                try:
                    self._start_once(resolved, _free_port(self.host) if self.netns is None else _namespace_port())
                except _BindFailed as exc:
                    last_error = exc
                    log.debug("redis-server bind failed (attempt %d): %s", attempt, exc)
                    continue
                atexit.register(self.stop)
                if self.unix_socket is not None:
                    _LOCAL_SOCKETS[(self.host, self.address.port)] = self.unix_socket
                log.info("started redis-server pid %s at %s", self.pid, self._address)
                return self.address
            raise ExecutorError(
                f"redis-server could not bind a free port on {self.host} after "
                f"{BIND_ATTEMPTS} attempts: {last_error}"
            )

    def admin(self, timeout: float = DEFAULT_TIMEOUT) -> redis.Redis:
        """A client logged in as the server's default user (its ``password``): it may manage users.
        The caller closes it."""
        return self.client(timeout, self.password)

    def add_user(self, rules: list[str]) -> None:
        """``ACL SETUSER *rules`` (``rules[0]``: the user's name); kept, and made again by :meth:`restart`."""
        with self._lock:
            self._users[rules[0]] = list(rules)
            self._apply_users([rules])

    def remove_user(self, username: str) -> None:
        """``ACL DELUSER`` a user made by :meth:`add_user` (nothing when the server is not running)."""
        with self._lock:
            self._users.pop(username, None)
            if self._process is None or self._process.poll() is not None:
                return
            client = self.admin(5.0)
            try:
                delete_user(client, username)
            finally:
                client.close()

    def _apply_users(self, users: list[list[str]]) -> None:
        if not users:
            return
        client = self.admin()
        try:
            for rules in users:
                create_user(client, rules)
        finally:
            client.close()

    def stop(self) -> None:
        """Shut the server down (SHUTDOWN NOSAVE, then terminate/kill) and remove its files.

        Safe to call more than once and before start.
        """
        with self._lock:
            self._shutdown()
            atexit.unregister(self.stop)
            if self._socket_dir is not None:
                if self._address is not None:
                    _LOCAL_SOCKETS.pop((self.host, self._address.port), None)
                shutil.rmtree(self._socket_dir, ignore_errors=True)
                self._socket_dir = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (fault injection); :meth:`restart` brings it back."""
        with self._lock:
            process = self._process
            if process is not None and process.poll() is None:
                _signal(process.kill)
                _reap(process)

    def restart(self) -> RedisAddress:
        """Start a fresh, empty server on the same port (after :meth:`kill` or a crash).

        Raises:
            ExecutorError: it was never started, or cannot listen on its port again.
        """
        with self._lock:
            address = self.address
            resolved = shutil.which(self.binary)
            if resolved is None:
                raise ExecutorError(f"{self.binary} not found on PATH")
            self._shutdown(graceful=False)
            try:
                self._start_once(resolved, address.port)
            except _BindFailed as exc:
                self._address = address
                raise ExecutorError(f"redis-server cannot listen on {address} again: {exc}") from None
            self._apply_users(list(self._users.values()))  # the run's user again (its keys are gone)
            return self.address

    def __enter__(self) -> ManagedRedis:
        """Start the server."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    def __repr__(self) -> str:
        """Show the address and whether the server runs."""
        where = str(self._address) if self._address else "not started"
        return f"ManagedRedis({where}, running={self.running})"

    # -- internals -------------------------------------------------------------------

    def _command(self, binary: str, port: int, directory: Path) -> list[str]:
        """Build the redis-server command line (a password goes into a private config file)."""
        args = [binary] if self.netns is None else ["ip", "netns", "exec", self.netns, binary]
        if self.password is not None:
            conf = write_private(directory / "redis.conf", f"requirepass {self.password}\n")
            args.append(str(conf))
        if self.tls:
            certs = self._certificates(directory)
            args += [
                "--port", "0",
                "--tls-port", str(port),
                "--tls-cert-file", str(certs.cert_file),
                "--tls-key-file", str(certs.key_file),
                "--tls-ca-cert-file", str(certs.ca_file),
                "--tls-auth-clients", "no",  # clients prove who they are with the run's user and password
            ]  # fmt: skip
            if self._socket_dir is None:  # made once: a restart listens on the same path
                self._socket_dir = Path(tempfile.mkdtemp(prefix="flight-parsl-redis-sock-"))  # mode 0700
            args += ["--unixsocket", str(self._socket_dir / "redis.sock"), "--unixsocketperm", "700"]
        else:
            args += ["--port", str(port)]
        args += [
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--dir", str(directory),
            "--logfile", str(directory / "redis.log"),
        ]  # fmt: skip
        if self.maxmemory is not None:
            args += ["--maxmemory", self.maxmemory]
        return args

    def _certificates(self, directory: Path) -> Certificates:
        """The TLS files in ``directory``: made the first time, written again after a restart."""
        from flight_parsl.transfer.redis_tls import Certificates, make_certificates

        if self._pems is None:
            certs = make_certificates(directory, self.host)
            self._pems = {p.name: p.read_text() for p in directory.iterdir() if p.suffix in (".crt", ".key")}
            return certs
        for name, text in self._pems.items():
            write_private(directory / name, text)
        return Certificates(directory, self._pems["ca.crt"])

    def _start_once(self, binary: str, port: int) -> None:
        """Start one server on port; raise _BindFailed if the port was taken."""
        directory = Path(tempfile.mkdtemp(prefix="flight-parsl-redis-"))
        address = RedisAddress(self.host, port)
        self._directory = directory
        self._address = address
        self._stderr = (directory / "stderr.log").open("wb")
        try:
            self._process = subprocess.Popen(
                self._command(binary, port, directory),
                stdin=subprocess.DEVNULL,
                stdout=self._stderr,
                stderr=self._stderr,
                cwd=directory,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            self._shutdown(graceful=False)
            raise ExecutorError(f"cannot start {binary}: {exc}") from None
        try:
            self._wait_ready(address)
        except BaseException:
            lines = self._log_lines()
            self._shutdown(graceful=False)
            self._address = None
            if any(marker in line for line in lines for marker in _BIND_FAILURE_MARKERS):
                raise _BindFailed(lines[-1] if lines else "address in use") from None
            raise

    def _wait_ready(self, address: RedisAddress) -> None:
        """Poll PING every 50 ms until it answers from our own process."""
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            status = self._process.poll()
            if status is not None:
                raise ExecutorError(
                    f"redis-server exited with status {status} before answering on "
                    f"{address}{self._log_excerpt()}"
                )
            if self._answers(address):
                return
            if time.monotonic() >= deadline:
                raise ExecutorError(
                    f"redis-server did not answer PING on {address} within "
                    f"{self.start_timeout:g} s{self._log_excerpt()}"
                )
            time.sleep(POLL_INTERVAL)

    def _answers(self, address: RedisAddress) -> bool:
        """Return whether our process (not another one on the port) answers PING."""
        assert self._process is not None
        client = redis_client(address, 1.0, self.password, tls=self.tls, ca=self.ca_pem)
        try:
            if not client.ping():
                return False
            info = client.info("server")
            return int(info.get("process_id", -1)) == self._process.pid
        except (redis.exceptions.RedisError, OSError):
            return False
        finally:
            client.close()

    def _log_lines(self) -> list[str]:
        """Return the last lines of the server's log file and stderr."""
        if self._directory is None:
            return []
        return _tail(self._directory / "redis.log") + _tail(self._directory / "stderr.log")

    def _log_excerpt(self) -> str:
        """Format the last log lines for an error message."""
        lines = self._log_lines()
        if not lines:
            return " (its log is empty)"
        return "; last lines of its log:\n" + "\n".join(f"  {line}" for line in lines)

    def _shutdown(self, graceful: bool = True) -> None:
        """Stop the process if any, close files and remove the temporary directory.

        Args:
            graceful: Send SHUTDOWN NOSAVE first; False (a server that never became
                ready) goes straight to SIGTERM.
        """
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            if not graceful or self._address is None:
                _signal(process.terminate)
            else:
                client = redis_client(self._address, 1.0, self.password, tls=self.tls, ca=self.ca_pem)
                try:
                    client.shutdown(nosave=True)
                except (redis.exceptions.RedisError, OSError) as exc:
                    log.debug("SHUTDOWN NOSAVE failed (%s); sending SIGTERM", exc)
                    _signal(process.terminate)
                finally:
                    client.close()
            _reap(process)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._directory is not None and self._directory.exists():
            shutil.rmtree(self._directory, ignore_errors=True)


def _signal(send: Callable[[], None]) -> None:
    """Send a signal with Popen.terminate/kill, ignoring a process that is already gone."""
    try:
        send()
    except ProcessLookupError:
        pass


def _reap(process: subprocess.Popen[bytes]) -> None:
    """Wait for process to exit, escalating to SIGTERM and then SIGKILL."""
    try:
        process.wait(timeout=STOP_TIMEOUT)
        return
    except subprocess.TimeoutExpired:
        pass
    for send in (process.terminate, process.kill):
        _signal(send)
        try:
            process.wait(timeout=STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            continue
    log.warning("redis-server pid %s did not exit after SIGKILL", process.pid)


__all__ = [
    "DEFAULT_TIMEOUT",
    "RUN_USER_RULES",
    "ManagedRedis",
    "RedisAddress",
    "check_reachable",
    "count_keys",
    "create_user",
    "delete_user",
    "redis_available",
    "redis_client",
    "run_user_rules",
]

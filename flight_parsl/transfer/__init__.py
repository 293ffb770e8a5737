"""Model transfer channels (see :mod:`flight_parsl.transfer.base`).

``parsl``: weights ride inside the Parsl tasks. ``redis``: ProxyStore over Redis (an
existing server given as HOST:PORT, or a managed one on loopback), every client with
connect and read timeouts. ``file``: ProxyStore over a directory that every worker sees.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from flight_parsl.core.errors import unknown_name
from flight_parsl.transfer.base import Ref, Transfer
from flight_parsl.transfer.inline import InlineRef, InlineTransfer

TRANSFER_KINDS = ("file", "parsl", "redis")


def default_file_dir() -> str:
    """/dev/shm where it exists (memory-backed on Linux), else the temp dir."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


@contextmanager
def open_transfer(
    kind: str,
    redis: str | None = None,
    file_dir: str | None = None,
    cache_size: int = 1,
    redis_timeout: float | None = None,
    redis_password: str | None = None,
    redis_host: str = "127.0.0.1",
) -> Iterator[Transfer]:
    """Open a transfer channel and everything behind it; close all of it on exit.

    A managed redis-server and a run's own file directory are removed on exit,
    including after an error, Ctrl-C or SIGTERM. ``redis_timeout``: seconds every
    Redis client (the reachability check, the coordinator's and the workers' stores)
    waits to connect and for each reply (default ``redis_server.DEFAULT_TIMEOUT``);
    a server that stops answering then fails with a message naming its address.
    ``redis_password``: the password of the server at ``redis`` (else the environment's,
    see :mod:`~flight_parsl.transfer.redis_auth`). ``redis_host``: where a managed server
    listens (a cluster's head-node address that the compute nodes reach; loopback by default).
    """
    if kind not in TRANSFER_KINDS:
        raise unknown_name("transfer", kind, TRANSFER_KINDS)
    if kind == "parsl":
        yield InlineTransfer()
        return
    from flight_parsl.transfer.proxy import ProxyTransfer

    with ExitStack() as stack:
        if kind == "redis":
            from flight_parsl.transfer.proxy import TimedRedisConnector
            from flight_parsl.transfer.redis_auth import new_password
            from flight_parsl.transfer.redis_auth import redis_password as env_password
            from flight_parsl.transfer.redis_server import DEFAULT_TIMEOUT, ManagedRedis, RedisAddress, check_reachable

            timeout = DEFAULT_TIMEOUT if redis_timeout is None else redis_timeout
            server = None
            if redis is None:  # a server of its own, with a fresh password only this run knows
                password: str | None = new_password()
                server = stack.enter_context(ManagedRedis(password=password, host=redis_host))
                address = server.address
            else:  # a password from the environment (redis_auth), if the server has one
                password = redis_password if redis_password is not None else env_password()
                address = RedisAddress.parse(redis)
                check_reachable(address, timeout, password)
            connector = TimedRedisConnector(address.host, address.port, timeout=timeout, password=password)
            transfer = ProxyTransfer("redis", connector, str(address), cache_size)
            transfer.server = server  # the run's own server, which fault injection may stop
        else:
            from flight_parsl.transfer.proxy import MappedFileConnector

            base = Path(file_dir or default_file_dir())
            if not base.is_dir():
                from flight_parsl.core.errors import ConfigError

                raise ConfigError(f"config key 'transfer.file_dir': {base} is not a directory")
            run_dir = base / f"flight_parsl-{uuid.uuid4().hex[:12]}"
            # clear=True removes only this run's own subdirectory on close.
            transfer = ProxyTransfer("file", MappedFileConnector(str(run_dir), clear=True), str(run_dir), cache_size)
        stack.callback(transfer.close)
        yield transfer


__all__ = ["InlineRef", "InlineTransfer", "Ref", "Transfer", "TRANSFER_KINDS", "default_file_dir", "open_transfer"]

"""Model transfer channels (see :mod:`flight_parsl.transfer.base`).

``parsl``: weights ride inside the Parsl tasks. ``redis``: ProxyStore over Redis (an
existing server given as HOST:PORT, or a managed one on loopback), every client with
connect and read timeouts. ``file``: ProxyStore over a directory that every worker sees.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

from flight_parsl.core.errors import unknown_name
from flight_parsl.transfer.base import Ref, Transfer
from flight_parsl.transfer.inline import InlineRef, InlineTransfer

log = logging.getLogger(__name__)

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
    redis_tls: bool | str = "auto",
    redis_ca: str | None = None,
    site_redis: dict[str, tuple[str, str, str | None]] | None = None,
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
    ``redis_tls``: whether Redis speaks TLS: ``auto`` for a managed server that listens
    anywhere but loopback (other hosts reach it), and for a server at ``redis`` whose CA is
    given (``redis_ca``, the PEM text; else ``FLIGHT_PARSL_REDIS_CA_FILE``); True; False.
    A managed server over TLS gets a CA and certificate of its own, removed with it.

    Every key of a ``redis`` run starts with the run's prefix ``flight_parsl:<run id>:``, and
    the run reads and writes them as an ACL user of its own (``flight_parsl-<run id>``, a
    fresh password) that may touch no other key: a worker of one run cannot read or
    overwrite another run's keys on a shared server. A managed server's default user has
    a password only the coordinator knows; an external server's user is made with the
    credentials given and removed at the end, or, when those credentials may not make
    users, the run uses them as they are (see :func:`_open_redis`).

    ``site_redis`` (``transfer.per_site``): site label -> (HOST:PORT, password, CA PEM) of
    each site's own server; the channel is then a
    :class:`~flight_parsl.transfer.persite.SiteTransfer` with the run's user on each.
    """
    if kind not in TRANSFER_KINDS:
        raise unknown_name("transfer", kind, TRANSFER_KINDS)
    if kind == "parsl":
        yield InlineTransfer()
        return
    from flight_parsl.transfer.proxy import ProxyTransfer

    with ExitStack() as stack:
        if kind == "redis" and site_redis:
            from flight_parsl.transfer.persite import SiteTransfer
            from flight_parsl.transfer.proxy import ProxyTransfer

            channels = {}
            for label, (address, password, ca) in site_redis.items():
                channel = cast("ProxyTransfer", _open_redis(stack, address, cache_size, redis_timeout, password,
                                                            redis_host, redis_tls, ca, reconnect=True))
                channel.shared = False  # the site's own server: its keys go with it
                stack.callback(channel.close)
                channels[label] = channel
            sites = SiteTransfer(channels)
            stack.callback(sites.stop_reading)  # before the channels close
            yield sites
            return
        if kind == "redis":
            transfer = _open_redis(stack, redis, cache_size, redis_timeout, redis_password, redis_host, redis_tls,
                                   redis_ca)
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


def _open_redis(
    stack: ExitStack,
    redis: str | None,
    cache_size: int,
    redis_timeout: float | None,
    redis_password: str | None,
    redis_host: str,
    redis_tls: bool | str = "auto",
    redis_ca: str | None = None,
    reconnect: bool = False,
) -> Transfer:
    """The ``redis`` channel: the server (managed, or given), the run's ACL user, its connector
    (``reconnect``: its reads survive a restart of the server, for a site's own store)."""
    import redis as redis_py

    from flight_parsl.transfer.proxy import ProxyTransfer, TimedRedisConnector
    from flight_parsl.transfer.redis_auth import new_password
    from flight_parsl.transfer.redis_auth import redis_ca as env_ca
    from flight_parsl.transfer.redis_auth import redis_password as env_password
    from flight_parsl.transfer.redis_auth import redis_username as env_username
    from flight_parsl.transfer.redis_server import (
        DEFAULT_TIMEOUT, ManagedRedis, RedisAddress, check_reachable, create_user, delete_user, redis_client,
        run_user_rules,
    )

    timeout = DEFAULT_TIMEOUT if redis_timeout is None else redis_timeout
    run = uuid.uuid4().hex[:12]
    prefix = f"flight_parsl:{run}:"
    username, password = f"flight_parsl-{run}", new_password()
    rules = run_user_rules(username, password, prefix)
    server = None
    made = None  # the user the run made on an external server
    lister: Any = None  # makes a client of a user that may list keys (the run's own may not)
    if redis is None:  # a server of its own: its default user's password stays with the coordinator
        from flight_parsl.transfer.redis_tls import is_loopback

        tls = redis_tls is True or (redis_tls == "auto" and not is_loopback(redis_host))
        server = stack.enter_context(ManagedRedis(password=new_password(), host=redis_host, tls=tls))
        address, ca = server.address, server.ca_pem
        server.add_user(rules)
        lister = server.admin
    else:  # credentials from the environment (redis_auth), if the server wants some
        # credentials given here (the sites' own server) or else the environment's (--redis): never a mix
        from_env = redis_password is None
        given_password = env_password() if from_env else redis_password
        given_user = env_username() if from_env else None
        address = RedisAddress.parse(redis)
        ca = env_ca() if from_env and redis_ca is None else redis_ca
        tls = redis_tls is True or (redis_tls == "auto" and ca is not None)
        check_reachable(address, timeout, given_password, username=given_user, tls=tls, ca=ca)
        admin = redis_client(address, timeout, given_password, username=given_user, tls=tls, ca=ca)
        try:
            create_user(admin, rules)
        except redis_py.exceptions.ResponseError as exc:  # NOPERM, or a Redis without ACLs (before 6)
            admin.close()
            log.info("Redis at %s: the credentials given cannot make the run's ACL user (%s); the run uses "
                     "them as they are, its keys under %s", address, " ".join(str(exc).split()), prefix)
            username, password = given_user, given_password  # type: ignore[assignment]
        else:
            stack.callback(_remove_user, admin, username)
            made = username
            lister = partial(redis_client, address, timeout, given_password, username=given_user, tls=tls, ca=ca)
    connector = TimedRedisConnector(
        address.host, address.port, timeout=timeout, password=password, username=username, prefix=prefix,
        tls=tls, ca=ca, reconnect=reconnect,
    )
    transfer = ProxyTransfer("redis", connector, str(address), cache_size)
    transfer.server = server  # the run's own server, which fault injection may stop
    transfer.redis_user, transfer.shared = made, redis is not None
    transfer.admin = lister
    transfer.user_rules = rules if made is not None else None
    return transfer


def _remove_user(admin: Any, username: str) -> None:
    """Remove the run's ACL user from an external server (a server that is gone took it along)."""
    from flight_parsl.transfer.redis_server import delete_user

    try:
        delete_user(admin, username)
    except Exception as exc:  # noqa: BLE001 - the run is over; say what is left
        log.warning("could not remove the run's ACL user %s from Redis: %s", username, exc)
    finally:
        admin.close()


__all__ = ["InlineRef", "InlineTransfer", "Ref", "Transfer", "TRANSFER_KINDS", "default_file_dir", "open_transfer"]

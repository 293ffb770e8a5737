"""Redis passwords: where the coordinator finds one, how a fresh one is made and kept.

A Redis reachable over a cluster network must not be open to every user of that network.
flight_parsl never puts a password on a command line or in a log: a server it starts
(:class:`~flight_parsl.transfer.redis_server.ManagedRedis`) reads ``requirepass`` from a
config file readable by its owner only, and an external server's password (``--redis``)
comes from the environment:

- ``FLIGHT_PARSL_REDIS_PASSWORD_FILE``: a file holding the password (its first line), which
  must not be readable by group or others;
- else ``REDISCLI_AUTH``: the variable ``redis-cli`` itself reads, so one ``export`` in a job
  script serves the harness and ``redis-cli``;
- ``FLIGHT_PARSL_REDIS_USER``: the ACL user that password belongs to (unset: the default user);
- ``FLIGHT_PARSL_REDIS_CA_FILE``: with ``transfer.redis_tls=true``, the PEM file of the CA that
  signed the server's certificate (unset: the system's trusted CAs).

A run does not hand those credentials to its workers when it can help it: with them it makes
an ACL user of its own (``flight_parsl-<run id>``, a fresh password, its keys only) and
removes it at the end; only credentials that may not make users are used as they are.

Workers get the password inside their tasks (the transfer's connector configuration), over
Parsl's channel, which is encrypted for every site that leaves the host.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from flight_parsl.core.errors import ConfigError

__all__ = [
    "CA_FILE_ENV", "redis_ca", "PASSWORD_ENV", "PASSWORD_FILE_ENV", "USER_ENV", "new_password", "redis_password", "redis_username", "write_private",
]

#: Environment variable naming a file with the password of an external Redis.
PASSWORD_FILE_ENV = "FLIGHT_PARSL_REDIS_PASSWORD_FILE"
#: Environment variable holding the password (redis-cli's own).
PASSWORD_ENV = "REDISCLI_AUTH"
#: Environment variable naming the ACL user of an external Redis.
USER_ENV = "FLIGHT_PARSL_REDIS_USER"
#: Environment variable naming the PEM file of the CA of an external Redis over TLS.
CA_FILE_ENV = "FLIGHT_PARSL_REDIS_CA_FILE"


def new_password() -> str:
    """A fresh random password (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def write_private(path: str | Path, text: str) -> Path:
    """Write ``text`` to a new file only its owner may read or write (mode 0600).

    Raises:
        FileExistsError: the file exists already (it is never overwritten).
    """
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return p


def redis_password(env: Mapping[str, str] | None = None) -> str | None:
    """The password of an external Redis from the environment, or None when none is set.

    Raises:
        ConfigError: the password file is missing, empty, or readable by group or others.
    """
    env = os.environ if env is None else env
    path = env.get(PASSWORD_FILE_ENV)
    if path:
        p = Path(path)
        try:
            mode = p.stat().st_mode
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"environment variable {PASSWORD_FILE_ENV} = {path!r}: cannot read "
                              f"it ({exc.strerror or exc}); expected a file holding the Redis "
                              "password") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"environment variable {PASSWORD_FILE_ENV} = {path!r}: the file has "
                              f"mode {stat.S_IMODE(mode):04o}; a password file must be readable "
                              f"by its owner only (chmod 600 {path})")
        password = text.splitlines()[0].strip() if text.strip() else ""
        if not password:
            raise ConfigError(f"environment variable {PASSWORD_FILE_ENV} = {path!r}: the file is "
                              "empty; expected the Redis password on its first line")
        return password
    return env.get(PASSWORD_ENV) or None


def redis_username(env: Mapping[str, str] | None = None) -> str | None:
    """The ACL user of an external Redis from the environment (``FLIGHT_PARSL_REDIS_USER``), or None."""
    env = os.environ if env is None else env
    return env.get(USER_ENV) or None


def redis_ca(env: Mapping[str, str] | None = None) -> str | None:
    """The PEM text of an external Redis's CA (``FLIGHT_PARSL_REDIS_CA_FILE``), or None when unset.

    Raises:
        ConfigError: the file cannot be read or holds no certificate.
    """
    env = os.environ if env is None else env
    path = env.get(CA_FILE_ENV)
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"environment variable {CA_FILE_ENV} = {path!r}: cannot read it ({exc.strerror or exc}); "
                          "expected the PEM file of the CA that signed the Redis server's certificate") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigError(f"environment variable {CA_FILE_ENV} = {path!r}: no PEM certificate in it")
    return text

"""Redis test helpers shared by test modules: skip (or, under CI, fail) without redis-server.

Import what a module needs; pytest puts tests/ on sys.path (rootdir-relative, "prepend"
import mode, no __init__.py), so this works from any test module::

    from redis_fixtures import managed_redis, redis_server, require_redis_server
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from flight_parsl.transfer.redis_server import ManagedRedis

MISSING_REASON = "redis-server not installed"


def require_redis_server(binary: str = "redis-server") -> str:
    """Return the redis-server path; skip the test without it, or fail it when CI is "true".

    Args:
        binary: The executable to look for on PATH.

    Returns:
        The resolved path of the binary.
    """
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(MISSING_REASON)
        pytest.skip(MISSING_REASON)
    return path


@pytest.fixture
def redis_server() -> str:
    """The redis-server binary path (skips, or fails under CI=true, when it is missing)."""
    return require_redis_server()


@pytest.fixture
def managed_redis() -> Iterator[ManagedRedis]:
    """A running ManagedRedis, stopped after the test (skips/fails like redis_server).

    It calls require_redis_server() itself, so importing this fixture alone is enough.
    """
    with ManagedRedis(binary=require_redis_server()) as server:
        yield server

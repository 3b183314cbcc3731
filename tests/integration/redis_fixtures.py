"""Redis fixtures: a real local ``redis-server`` (Debian's build, fetched without root; see
``scoring/launchers/redis_server.py``) on loopback, one per test session, plus a server of its own for a test that
kills it.

Test modules load these as a plugin, so that every module shares the one server (a fixture function imported into
two modules would start two)::

    pytest_plugins = ["tests.integration.redis_fixtures"]

Fixtures:

- ``redis_server`` (session): a started `RedisServer`; use ``redis_server.url``. Stopped by pid at the end of the
  session. Do not stop, kill or flush it in a test: others share it. Give each test keys of its own
  (``redis_prefix``).
- ``redis_prefix`` (function): a key prefix unique to the test, so tests sharing ``redis_server`` never meet.
- ``fresh_redis_server`` (function): a started `RedisServer` of the test's own, in the test's ``tmp_path``, to stop,
  kill and restart at will; stopped at the end of the test.

The first use on a machine fetches ``redis-server`` into ``~/.cache/scoring/redis-<version>`` (``$SCORING_REDIS_HOME``),
not into the session's temporary ``SCORING_CACHE_DIR``: about two seconds, once; a ``redis-server`` on PATH is used
instead when there is one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from scoring.launchers import redis_server as rs

START_TIMEOUT_S = 60.0
"""Generous: the server itself answers within a tenth of a second, but the first start on a machine fetches it."""


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[rs.RedisServer]:
    """One Redis server for the whole session."""
    server = rs.RedisServer(tmp_path_factory.mktemp("redis-server"), binary=rs.resolve_redis_server())
    server.start(timeout_s=START_TIMEOUT_S)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_prefix(request) -> str:
    """A key prefix of this test's own: its name and a random suffix (``:`` left out, to keep it one segment)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-")[:80] or "test"
    return f"test-{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def fresh_redis_server(tmp_path) -> Iterator[rs.RedisServer]:
    """A Redis server of this test's own (its folder ``tmp_path / "redis"``): stop, kill and restart it freely."""
    server = rs.RedisServer(tmp_path / "redis", binary=rs.resolve_redis_server())
    server.start(timeout_s=START_TIMEOUT_S)
    try:
        yield server
    finally:
        server.stop()

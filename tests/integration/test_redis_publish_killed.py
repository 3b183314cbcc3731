"""A Redis publish killed half way (SIGKILL of the publishing process, between two pipelines): readers keep the
version that was current, and the next publish under the prefix, of the same version or a newer one, converges:
every key exactly once, with the right version, and nothing a killed publish wrote left behind. A real redis-server
(the session's fixture); the publisher a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import redis

from scoring.adapters import redis_store as store

pytest_plugins = ["tests.integration.redis_fixtures"]

SOURCE = "file:///lake/scores"
KEYS = 600
BATCH = 50


def _records(tag: str, n: int = KEYS) -> list[tuple[str, bytes]]:
    return [(f"c{i}", f'{{"id": {i}, "tag": "{tag}"}}'.encode()) for i in range(n)]


def _publisher(url: str, prefix: str, version: int, tag: str) -> subprocess.Popen:
    """A process publishing `version` slowly (a pause after each pipeline of BATCH keys), to be killed midway."""
    code = textwrap.dedent(
        f"""
        import time
        from scoring.adapters import redis_store as store
        records = [(f"c{{i}}", f'{{{{"id": {{i}}, "tag": "{tag}"}}}}'.encode()) for i in range({KEYS})]
        store.publish({url!r}, {prefix!r}, {version}, records, source={SOURCE!r}, batch_keys={BATCH},
                      on_progress=lambda written: time.sleep(0.2))
        """
    )
    return subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ))


def _kill_midway(client: redis.Redis, process: subprocess.Popen, prefix: str, version: int) -> int:
    """SIGKILL `process` once it has written some but not all keys of `version`; how many it had written."""
    pattern = store._glob_escaped(store.record_key(prefix, version, "")) + "*"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        written = sum(1 for _ in client.scan_iter(match=pattern, count=1000))
        if written >= 2 * BATCH:
            break
        assert process.poll() is None, "the publisher ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    written = sum(1 for _ in client.scan_iter(match=pattern, count=1000))
    assert 0 < written < KEYS, written
    return written


def _all_keys(client: redis.Redis, prefix: str) -> set[bytes]:
    return set(client.scan_iter(match=store._glob_escaped(prefix) + ":*", count=1000))


def _assert_exactly(client: redis.Redis, prefix: str, version: int, records: list[tuple[str, bytes]]) -> None:
    expected = {store.record_key(prefix, version, k).encode() for k, _ in records}
    assert _all_keys(client, prefix) == expected | {store.meta_key(prefix).encode()}
    assert client.mget([store.record_key(prefix, version, k) for k, _ in records]) == [v for _, v in records]
    assert client.hget(store.meta_key(prefix), "version") == str(version).encode()


def test_a_publish_killed_half_way_leaves_the_old_version_served_and_the_next_publish_converges(
    redis_server, redis_prefix
):
    client = redis.Redis.from_url(redis_server.url)
    store.publish(redis_server.url, redis_prefix, 1, _records("v1"), source=SOURCE)

    # killed while writing version 2, then version 2 published again: exactly version 2's records
    _kill_midway(client, _publisher(redis_server.url, redis_prefix, 2, "v2"), redis_prefix, 2)
    with store.RedisReader(redis_server.url, redis_prefix) as reader:
        current = reader.current()
        assert current is not None and current.version == 1  # readers never saw the half-written version
        assert reader.mget(1, [k for k, _ in _records("v1")]) == [v for _, v in _records("v1")]
    result = store.publish(redis_server.url, redis_prefix, 2, _records("v2"), source=SOURCE, batch_keys=BATCH)
    assert (result.published, result.previous_version, result.keys) == (True, 1, KEYS)
    _assert_exactly(client, redis_prefix, 2, _records("v2"))

    # killed while writing version 3, and the table moved on: version 4 is published, 3's keys do not stay behind
    _kill_midway(client, _publisher(redis_server.url, redis_prefix, 3, "v3"), redis_prefix, 3)
    store.publish(redis_server.url, redis_prefix, 4, _records("v4"), source=SOURCE, batch_keys=BATCH)
    _assert_exactly(client, redis_prefix, 4, _records("v4"))

"""A versioned key-value store of precomputed score records in Redis, for the online service: a publisher writes a
whole version beside the current one and then switches to it atomically; readers look up the current version first,
then the records of that version.

Layout under a `prefix` (keys are text; ``:``, spaces and any unicode are fine in Redis keys)::

    <prefix>:meta              hash: version, source (the Delta table), keys (count), published_at (ISO UTC),
                               complete ("1"); always replaced whole, in the same MULTI/EXEC as the switch
    <prefix>:v<version>:k:<key>  one record's JSON bytes
    <prefix>:retired           set of versions replaced by a switch whose keys are still to be deleted
    <prefix>:pending           set of versions whose keys a publish started writing and has not switched to yet

Why this shape:

- **A switch is one MULTI/EXEC.** Writing a version's keys takes many round trips; readers must never see half of
  them. They never do: until the meta hash names the new version, readers read the old one, untouched. The meta
  hash is deleted and rewritten in the same transaction, so its fields always belong to one version.
- **A publish killed midway changes nothing that readers see.** The keys it wrote sit under a version nobody reads,
  marked in ``<prefix>:pending`` before the first is written. The next publish under the prefix (the same version
  again, or a newer one) first deletes every pending version's keys, then writes its own from clean and switches: after
  it, the prefix holds exactly the current version's records, each once, whatever a killed publish left behind.
- **Publishing is idempotent per version.** When the meta hash already names the version as complete, `publish`
  writes nothing and says so (``published=False``): a retried job costs one round trip.
- **The old version is deleted after the switch**, with ``SCAN MATCH`` and ``UNLINK`` in batches (never ``KEYS``,
  which blocks the server). A reader that read the old version from meta just before the switch may then miss a
  key; it should read meta again and retry with the new version. The replaced version is recorded in
  ``<prefix>:retired`` inside the switch's transaction and removed from it only once its keys are gone, so a publish
  that dies while deleting leaves the deletion to the next publish under the prefix (even one that writes nothing).

One publisher per prefix at a time is assumed (the ``publish-online`` job): two publishers of different versions
racing each other leave the last switch current, correctly, but may waste each other's writes. Keys written by a
publish that was abandoned stay until the next publish under the prefix (or :func:`drop_version`) removes them.

Redis errors are translated where they happen: a server that does not answer is a `BackendUnavailableError`
(transient: a retry may succeed), naming the URL (password hidden) and how to fix it; anything else Redis refuses is
a `ScoringError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from scoring.core.identity import same_table
from scoring.errors import BackendUnavailableError, ConfigError, ScoringError

_LOGGER = logging.getLogger(__name__)

DEFAULT_SOCKET_TIMEOUT_S = 0.5
"""A reader's socket (connect and read) timeout: an online lookup must fail fast rather than hang a request."""

PUBLISH_TIMEOUT_S = 30.0
"""A publisher's socket timeout: a pipeline of ten thousand ``SET`` s may take a while on a loaded server."""

DELETE_BATCH_KEYS = 1_000
"""Keys per ``SCAN`` page and per ``UNLINK`` when deleting a version: small enough never to block the server long."""

_UNAVAILABLE_HINT = (
    "start Redis (scoring.launchers.redis_server.RedisServer, or the redis_server test fixture), or check the URL "
    "(serve.redis.url)"
)


# --- keys ------------------------------------------------------------------------------------------------------------


def meta_key(prefix: str) -> str:
    """The hash that names the current version: ``<prefix>:meta``."""
    return f"{prefix}:meta"


def retired_key(prefix: str) -> str:
    """The set of replaced versions whose keys are still to be deleted: ``<prefix>:retired``."""
    return f"{prefix}:retired"


def pending_key(prefix: str) -> str:
    """The set of versions a publish started writing and has not switched to: ``<prefix>:pending``."""
    return f"{prefix}:pending"


def record_key(prefix: str, version: int, key: str) -> str:
    """Where one record of `version` lives: ``<prefix>:v<version>:k:<key>``."""
    return f"{prefix}:v{version}:k:{key}"


def _glob_escaped(text: str) -> str:
    """`text` as a literal inside a ``SCAN MATCH`` pattern: a prefix may hold ``*``, ``?``, ``[`` or ``\\``."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


# --- results ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Published:
    """The current version, as the meta hash says."""

    version: int
    source: str
    """Where the records came from: the Delta table's path."""
    keys: int
    """How many records the publish wrote."""
    published_at: dt.datetime
    """When the version became current (UTC, timezone-aware)."""


@dataclasses.dataclass(frozen=True)
class PublishResult:
    """What :func:`publish` did."""

    version: int
    keys: int
    """Records written; when nothing was published, the count the meta hash holds for the version."""
    published: bool
    """False when the version was already current and complete: nothing was written."""
    previous_version: int | None
    """The version that was current before the switch; None when there was none, or nothing was published."""
    elapsed_s: float
    removed_keys: int = 0
    """Keys of replaced versions deleted after the switch (also by a publish that wrote nothing, finishing an
    earlier publish's interrupted deletion)."""


# --- errors ----------------------------------------------------------------------------------------------------------


def redacted(url: str) -> str:
    """`url` with its password, if any, replaced by ``***``: safe for messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)
        user = parts.username or ""
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))
    except ValueError:
        return "(an unparsable Redis URL)"


@contextlib.contextmanager
def _translated(url: str, action: str) -> Iterator[None]:
    """Turn redis-py's exceptions into ours, naming the URL and what was being done."""
    try:
        yield
    except redis.exceptions.AuthenticationError as e:  # a ConnectionError to redis-py, but retrying cannot help
        raise ScoringError(
            f"Redis at {redacted(url)} refused the credentials while {action}: {e}",
            hint="put the right user and password in the URL (redis://user:password@host:port/db)",
        ) from e
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
        raise BackendUnavailableError(
            f"Redis at {redacted(url)} did not answer while {action}: {e}", hint=_UNAVAILABLE_HINT
        ) from e
    except redis.exceptions.RedisError as e:
        raise ScoringError(
            f"Redis at {redacted(url)} failed while {action}: {e}",
            hint="read the error above (out of memory? a key of another type under this prefix?)",
        ) from e


def _pool(url: str, socket_timeout_s: float, retry: Retry, max_connections: int | None = None) -> redis.ConnectionPool:
    try:
        return redis.ConnectionPool.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=retry,
            max_connections=max_connections,
        )
    except ValueError as e:
        raise ScoringError(
            f"not a Redis URL: {redacted(url)} ({e})",
            hint="write it as redis://host:port/db, e.g. redis://127.0.0.1:6379/0",
        ) from e


def _parse_meta(prefix: str, url: str, fields: dict[bytes, bytes]) -> Published | None:
    if not fields or fields.get(b"complete") != b"1":
        return None
    try:
        return Published(
            version=int(fields[b"version"]),
            source=fields.get(b"source", b"").decode(),
            keys=int(fields[b"keys"]),
            published_at=dt.datetime.fromisoformat(fields[b"published_at"].decode()),
        )
    except (KeyError, ValueError) as e:
        raise ScoringError(
            f"the meta hash {meta_key(prefix)!r} at {redacted(url)} is unreadable ({e!r}): {fields!r}",
            hint=f"publish again after deleting {meta_key(prefix)!r}, or use another prefix",
        ) from e


# --- publishing ------------------------------------------------------------------------------------------------------


def source_of(identity: Any, table_id: str) -> str:
    """What the meta hash records as a published version's ``source``: the table's identity and Delta table id
    (``file:///lake/scores#<id>``), so that a table re-created at the same place is not taken for the one published."""
    return f"{identity}#{table_id}" if table_id else str(identity)


def same_source(recorded: str, ours: str) -> bool:
    """Whether a recorded ``source`` is the table `ours` names: the same place by identity and, where both say, the
    same Delta table id (a meta hash written before ids were recorded holds the path alone)."""
    where, _, table_id = recorded.rpartition("#") if "#" in recorded else (recorded, "", "")
    our_where, _, our_id = ours.rpartition("#") if "#" in ours else (ours, "", "")
    try:
        place = same_table(where, our_where) if where and our_where else where == our_where
    except ValueError:
        place = where == our_where
    return place and (not table_id or not our_id or table_id == our_id)


def publish(
    url: str,
    prefix: str,
    version: int,
    records: Iterable[tuple[str, bytes]],
    *,
    source: str,
    batch_keys: int = 10_000,
    on_progress: Callable[[int], None] | None = None,
    timeout_s: float = PUBLISH_TIMEOUT_S,
) -> PublishResult:
    """Write `records` (key text, JSON bytes) as `version` under `prefix`, then make it current atomically, then
    delete the version it replaced.

    Keys go out in non-transactional pipelines of `batch_keys`; `on_progress` is called after each with the number of
    records written so far (an exception it raises stops the publish, the previous version staying current). When
    the meta hash already names `version` as complete, nothing is written and `records` is not read. `source` (the
    Delta table) is recorded in the meta hash. Duplicate keys overwrite each other and count once each in `keys`.

    Raises `BackendUnavailableError` when Redis does not answer, `ScoringError` when it refuses a command or a record
    is not (str, bytes).
    """
    if not isinstance(prefix, str) or not prefix:
        raise ScoringError(f"a Redis key prefix must be non-empty text, not {prefix!r}", hint="e.g. 'scores'")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ScoringError(f"a published version must be an integer >= 0, not {version!r}")
    if batch_keys < 1:
        raise ScoringError(f"batch_keys must be >= 1, not {batch_keys!r}")
    started = time.monotonic()
    retry = Retry(ExponentialWithJitterBackoff(base=0.1, cap=2.0), 3)  # SETs and the WATCHed switch are retry-safe
    pool = _pool(url, timeout_s, retry)
    client = redis.Redis(connection_pool=pool)
    try:
        with _translated(url, f"publishing version {version} under {prefix!r}"):
            current = _parse_meta(prefix, url, client.hgetall(meta_key(prefix)))
            if current is not None and current.version == version:
                if not same_source(current.source, source):
                    raise ConfigError(
                        f"version {version} under {prefix!r} at {redacted(url)} is already served from "
                        f"{current.source}, and this publish is version {version} of {source}: another table (or one "
                        "deleted and re-created at the same place), whose keys would overwrite the served ones in "
                        "place",
                        hint="publish under a new serve.redis.prefix, or publish again after the table's next commit",
                    )
                removed = _delete_retired(client, prefix, version) + _delete_pending(client, prefix, version)
                _LOGGER.info("version %d under %r is already current: nothing to publish", version, prefix)
                return PublishResult(version, current.keys, False, None, time.monotonic() - started, removed)
            # what a killed publish left (this version's or another's keys) goes first: this one writes from clean
            cleared = _delete_pending(client, prefix, current.version if current is not None else None)
            client.sadd(pending_key(prefix), version)
            written = _write(client, prefix, version, records, batch_keys, on_progress)
            previous = _switch(client, prefix, version, source, written)
            removed = _delete_retired(client, prefix, version) + cleared
    finally:
        pool.disconnect()
    elapsed = time.monotonic() - started
    _LOGGER.info(
        "published version %d under %r at %s: %d keys in %.1f s (replaced %s, %d old keys deleted)",
        version,
        prefix,
        redacted(url),
        written,
        elapsed,
        previous,
        removed,
    )
    return PublishResult(version, written, True, previous, elapsed, removed)


def _write(
    client: redis.Redis,
    prefix: str,
    version: int,
    records: Iterable[tuple[str, bytes]],
    batch_keys: int,
    on_progress: Callable[[int], None] | None,
) -> int:
    written = pending = 0
    with client.pipeline(transaction=False) as pipe:
        for index, record in enumerate(records):
            try:
                key, value = record
            except (TypeError, ValueError):
                key, value = None, None
            if not isinstance(key, str) or not isinstance(value, bytes | bytearray | memoryview):
                raise ScoringError(
                    f"record {index} to publish under {prefix!r} is not (key text, JSON bytes): {record!r:.200}",
                    hint="encode each record's JSON to bytes and give its key as str",
                )
            pipe.set(record_key(prefix, version, key), value)
            pending += 1
            if pending >= batch_keys:
                pipe.execute()
                written, pending = written + pending, 0
                if on_progress is not None:
                    on_progress(written)
        if pending:
            pipe.execute()
            written += pending
            if on_progress is not None:
                on_progress(written)
    return written


def _switch(client: redis.Redis, prefix: str, version: int, source: str, keys: int) -> int | None:
    """Make `version` current in one MULTI/EXEC, WATCHing the meta hash so that the version recorded as replaced
    is exactly the one that was current at the switch. Returns that version (None if there was none)."""
    meta, retired = meta_key(prefix), retired_key(prefix)
    fields = {
        "version": str(version),
        "source": source,
        "keys": str(keys),
        "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "complete": "1",
    }
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(meta)
                old = pipe.hget(meta, "version")
                previous = int(old) if old is not None and int(old) != version else None
                pipe.multi()
                pipe.delete(meta)
                pipe.hset(meta, mapping=fields)
                if previous is not None:
                    pipe.sadd(retired, previous)
                pipe.srem(retired, version)
                pipe.srem(pending_key(prefix), version)
                pipe.execute()
                return previous
            except redis.exceptions.WatchError:  # another switch came in between: read the current version again
                continue


def _delete_retired(client: redis.Redis, prefix: str, current: int) -> int:
    """Delete the keys of every replaced version (never `current`'s); a version leaves the retired set only once
    its keys are gone."""
    removed = 0
    for member in sorted(client.smembers(retired_key(prefix))):
        version = int(member)
        if version != current:
            removed += _unlink_version(client, prefix, version)
        client.srem(retired_key(prefix), member)
    return removed


def _delete_pending(client: redis.Redis, prefix: str, current: int | None) -> int:
    """Delete the keys of every version a publish started and never switched to (killed midway), never `current`'s;
    a version leaves the pending set only once its keys are gone."""
    removed = 0
    for member in sorted(client.smembers(pending_key(prefix))):
        if current is None or int(member) != current:
            removed += _unlink_version(client, prefix, int(member))
        client.srem(pending_key(prefix), member)
    return removed


def _unlink_version(client: redis.Redis, prefix: str, version: int) -> int:
    pattern = _glob_escaped(record_key(prefix, version, "")) + "*"
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=DELETE_BATCH_KEYS):
        batch.append(key)
        if len(batch) >= DELETE_BATCH_KEYS:
            removed += client.unlink(*batch)
            batch = []
    if batch:
        removed += client.unlink(*batch)
    return removed


def drop_version(url: str, prefix: str, version: int, *, timeout_s: float = PUBLISH_TIMEOUT_S) -> int:
    """Delete every key of `version` under `prefix` (e.g. one left by an abandoned publish); the number deleted.

    Refuses the current version (`ScoringError`): readers use it.
    """
    pool = _pool(url, timeout_s, Retry(NoBackoff(), 1))
    client = redis.Redis(connection_pool=pool)
    try:
        with _translated(url, f"deleting version {version} under {prefix!r}"):
            current = _parse_meta(prefix, url, client.hgetall(meta_key(prefix)))
            if current is not None and current.version == version:
                raise ScoringError(
                    f"version {version} is the current one under {prefix!r} at {redacted(url)}: not deleted",
                    hint="publish another version first; its publish deletes this one",
                )
            removed = _unlink_version(client, prefix, version)
            client.srem(retired_key(prefix), version)
            client.srem(pending_key(prefix), version)
            return removed
    finally:
        pool.disconnect()


# --- reading ---------------------------------------------------------------------------------------------------------


class RedisReader:
    """Reads published records for the online service: one connection pool, short timeouts, our errors.

    Safe to share between threads (redis-py's pool hands each command a connection of its own). A lookup reads
    :meth:`current` for the version, then :meth:`get` / :meth:`mget` with it; a miss right after a switch may mean
    the version just got replaced: read :meth:`current` again and retry once.
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S,
        max_connections: int | None = None,
    ) -> None:
        """`socket_timeout_s` bounds connecting and each reply; a failed command is retried once at once (a pooled
        connection that a server restart closed), so an unreachable server fails within about twice that."""
        self.url = url
        self.prefix = prefix
        self._pool = _pool(url, socket_timeout_s, Retry(NoBackoff(), 1), max_connections)
        self._client = redis.Redis(connection_pool=self._pool)

    def __repr__(self) -> str:
        return f"RedisReader({redacted(self.url)}, prefix={self.prefix!r})"

    def current(self) -> Published | None:
        """The current version, or None when nothing was published under the prefix yet."""
        with _translated(self.url, f"reading {meta_key(self.prefix)!r}"):
            fields = self._client.hgetall(meta_key(self.prefix))
        return _parse_meta(self.prefix, self.url, fields)

    def get(self, version: int, key: str) -> bytes | None:
        """One record of `version`, or None when it has no such key (or the version was deleted)."""
        with _translated(self.url, f"reading key {key!r} of version {version} under {self.prefix!r}"):
            return self._client.get(record_key(self.prefix, version, key))

    def mget(self, version: int, keys: list[str]) -> list[bytes | None]:
        """Records of `version`, one per key in order (None for a miss), in one round trip."""
        if not keys:
            return []
        with _translated(self.url, f"reading {len(keys)} keys of version {version} under {self.prefix!r}"):
            return self._client.mget([record_key(self.prefix, version, key) for key in keys])

    def ping(self) -> bool:
        """True when Redis answers; False when it does not (never raises: for health checks)."""
        try:
            return bool(self._client.ping())
        except redis.exceptions.RedisError:
            return False

    def close(self) -> None:
        """Close the pool's connections. Idempotent."""
        self._pool.disconnect()

    def __enter__(self) -> RedisReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

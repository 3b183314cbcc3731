"""Where the online service's precomputed scores come from: the batch output table read with delta-rs into a
:class:`~scoring.core.index.PrecomputedIndex` (:func:`build_index`), or what ``scoring publish-online`` wrote to Redis
(:class:`RedisIndex`, read per request through a :class:`RedisView` pinned to one published version)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from scoring.adapters import deltalog
from scoring.config import JobConfig, ServeConfig
from scoring.core.identity import table_identity
from scoring.core.index import Hit, Key, Layout, PrecomputedIndex, decode_hit
from scoring.errors import ConfigError, InputError

_LOGGER = logging.getLogger(__name__)

REDIS_KEY_SEPARATOR = "\x1f"
"""Joins a composite key's parts into one Redis key text (the ASCII unit separator: never in a real key)."""


def redis_key(key: Key) -> str:
    return key if isinstance(key, str) else REDIS_KEY_SEPARATOR.join(key)


class RedisIndex:
    """The Redis index as the service sees it: the published version, refreshed; a lookup per request."""

    def __init__(self, url: str, prefix: str) -> None:
        from scoring.adapters.redis_store import RedisReader

        self.reader = RedisReader(url, prefix)
        self.url = url
        self.prefix = prefix
        self.published = None

    def refresh(self) -> bool:
        """Re-read the published version; True when it changed."""
        current = self.reader.current()
        changed = current is not None and (self.published is None or current.version != self.published.version)
        if current is not None:
            self.published = current
        return changed

    @property
    def table_version(self) -> int | None:
        return None if self.published is None else self.published.version

    def view(self) -> RedisView:
        return RedisView(self, self.published)

    def __len__(self) -> int:
        return 0 if self.published is None else int(self.published.keys)


@dataclasses.dataclass(frozen=True)
class RedisView:
    """The Redis index at one published version, for one request: its keys are read in one round trip, all at one
    version (when a publish switched and deleted that version meanwhile, all at the new one)."""

    index: RedisIndex
    published: Any

    @property
    def table_version(self) -> int | None:
        return None if self.published is None else self.published.version

    def get_many(self, keys: Sequence[Key]) -> list[Hit | None]:
        if self.published is None or not keys:
            return [None] * len(keys)
        names = [redis_key(k) for k in keys]
        records = self.index.reader.mget(self.published.version, names)
        if any(r is None for r in records) and self.index.refresh():  # switched under us: all at the new version
            records = self.index.reader.mget(self.index.published.version, names)
        return [None if r is None else decode_hit(r) for r in records]


def build_index(config: JobConfig) -> PrecomputedIndex:
    """The precomputed index of the job's output table (``serve.table``, default ``output.table``), latest version,
    restricted to ``serve.partition`` when set; read with delta-rs."""
    serve = config.serve or ServeConfig()
    table_path = serve.table or config.output.table
    started = time.perf_counter()
    snap = deltalog.snapshot(table_path, key="serve.table" if serve.table else "output.table")
    if snap is None:
        raise InputError(
            f"no Delta table at {table_path}: nothing precomputed to serve",
            hint="run the batch job first (scoring run CONFIG), or point serve.table at its output",
        )
    missing = [p for p in serve.partition if p not in snap.partition_columns]
    if missing:
        raise ConfigError(
            f"serve.partition names {missing}, which are not partition columns of {table_path} "
            f"(partition columns: {list(snap.partition_columns) or 'none'})",
            hint="name partition columns of the output table, or leave serve.partition out",
        )
    dataset = snap.dataset()
    where = None
    if serve.partition:
        import pyarrow.dataset as pds

        for column, value in serve.partition.items():
            field_type = dataset.schema.field(column).type
            try:
                typed = pa.scalar(value).cast(field_type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise ConfigError(
                    f"serve.partition.{column}: {value!r} is not a {field_type} value",
                    hint=f"give {column} as the table stores it (e.g. 2026-11-01 for a date)",
                ) from None
            condition = pds.field(column) == typed
            where = condition if where is None else where & condition
    table = dataset.to_table(filter=where)
    try:
        layout = Layout.of(table.schema, tuple(config.input.key), snap.partition_columns)
    except ValueError as e:
        raise InputError(
            f"{table_path} is not a scoring output table: {e}",
            hint="point serve.table at a table written by scoring run (key, lineage and prediction columns)",
        ) from None
    index = PrecomputedIndex.build(
        table,
        layout,
        table_version=snap.version,
        source=table_path,
        table_id=snap.table_id,
        identity=table_identity(table_path),
    )
    _LOGGER.info(
        "index of %s version %d: %d keys from %d rows in %.2f s",
        table_path,
        snap.version,
        len(index),
        index.rows,
        time.perf_counter() - started,
    )
    return index

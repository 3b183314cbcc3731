"""``scoring publish-online``: the precomputed index of the output table, written to Redis for ``serve.index: redis``."""

from __future__ import annotations

from typing import Any

from scoring.config import JobConfig, ServeConfig
from scoring.engine.progress import LogReporter, Reporter
from scoring.modes.online.sources import build_index, redis_key


def publish(config: JobConfig, *, reporter: Reporter | None = None) -> dict[str, Any]:
    """``scoring publish-online``: the index of the output table's latest version, written to Redis under
    ``serve.redis.prefix`` and switched to in one step (see :func:`scoring.adapters.redis_store.publish`)."""
    from scoring.adapters import redis_store

    reporter = reporter or LogReporter()
    serve = config.serve or ServeConfig()
    prefix = serve.redis.prefix or f"scoring:{config.name}"
    index = build_index(config)
    reporter.step(f"{index.source} version {index.table_version}: {len(index):,} keys to publish to {prefix}")
    total = len(index)

    def progress(done: int) -> None:
        reporter.tasks("publishing keys", done, total)

    result = redis_store.publish(
        serve.redis.url,
        prefix,
        int(index.table_version or 0),
        ((redis_key(key), record) for key, record in index.items()),
        source=redis_store.source_of(index.identity or index.source, index.table_id),
        batch_keys=serve.redis.batch_keys,
        on_progress=progress,
    )
    reporter.close()
    return {
        "table": index.source,
        "table_version": index.table_version,
        "url": serve.redis.url,
        "prefix": prefix,
        "keys": result.keys if result.published else total,
        "published": result.published,
        "previous_version": result.previous_version,
        "elapsed_s": result.elapsed_s,
    }

"""`scoring bench-stream`'s paths through the streaming mode (where events come from, where scores go, the trigger),
the constants the benchmark's parts share, and a run's context; :mod:`scoring.tools.bench_stream` has the whole story
and re-exports these names."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from scoring.errors import ConfigError
from scoring.tools import bench_data

_LOGGER = logging.getLogger(__name__)

N_FEATURES = bench_data.N_FEATURES
KEY = "customer_id"
EVENT_TIME = "event_time"
WARMUP_KEY_BASE = 1 << 40
"""Warm-up rows have keys from here on; the timed window's keys start at 0."""
WARMUP_ROWS = 1_000
TOPIC_PARTITIONS = 2
"""Partitions of the input and output topics: one Spark task per core."""
READER_POLL_S = 0.02
DEFAULT_COMMIT_INTERVAL_S = 0.1
BATCH_ROWS = 10_000
AIMS = {"kafka-delta": ("lag_p95_s", 2.0), "kafka-kafka": ("lag_p99_s", 0.1)}
"""What we aim for on a 2-core machine (reported against, never asserted): path -> (figure, seconds)."""


@dataclasses.dataclass(frozen=True)
class StreamPath:
    """One way through the streaming mode: where events come from, where scores go, and the trigger."""

    name: str
    source: str
    """``delta`` or ``kafka``"""
    sink: str
    """``delta`` or ``kafka``"""
    trigger: str = "micro-batch"
    interval_s: float = 0.0


PATHS: dict[str, StreamPath] = {
    "delta-delta": StreamPath("delta-delta", "delta", "delta"),
    "kafka-delta": StreamPath("kafka-delta", "kafka", "delta"),
    "kafka-kafka": StreamPath("kafka-kafka", "kafka", "kafka"),
}


def paths_for(names: list[str] | None, trigger: str | None = None, interval_s: float = 0.0) -> list[StreamPath]:
    """The chosen paths (all by default). `trigger` applies to the Kafka -> Kafka path (the only one Spark's Real-time
    Mode could run); the Delta paths keep the micro-batch trigger. `interval_s` applies to every micro-batch path."""
    chosen = names or list(PATHS)
    unknown = [n for n in chosen if n not in PATHS]
    if unknown:
        raise ConfigError(f"--path {unknown}: choose from {list(PATHS)}")
    out = []
    for name in dict.fromkeys(chosen):
        path = dataclasses.replace(PATHS[name], interval_s=interval_s)
        if trigger is not None and path.name == "kafka-kafka":
            path = dataclasses.replace(path, trigger=trigger)
        out.append(path)
    return out


@dataclasses.dataclass
class _Context:
    spark: Any
    bootstrap: str | None
    model_uri: str
    tracking_uri: str
    workdir: Path
    rate: float
    duration_s: float
    commit_interval_s: float
    drain_s: float
    warmup_timeout_s: float

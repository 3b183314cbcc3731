"""`scoring bench-stream`'s two outside processes: the producer (events at a fixed rate to a Delta table or a Kafka
topic, each stamped with its send time) and the independent reader (when each row arrives at the sink); see
:mod:`scoring.tools.bench_stream`."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from scoring.tools import demo
from scoring.tools.bench_stream_paths import EVENT_TIME, KEY, N_FEATURES, READER_POLL_S, WARMUP_KEY_BASE

_LOGGER = logging.getLogger(__name__)

# -- the producer (a process of its own) ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ProducerSpec:
    kind: str
    """``delta`` (append commits to `target`, a table path) or ``kafka`` (records to `target`, a topic)"""
    target: str
    bootstrap: str | None
    rate: float
    duration_s: float
    first_key: int
    log_path: str
    commit_interval_s: float
    parent_pid: int


def _feature_pool(rows: int = 4_096, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, N_FEATURES)).astype(np.float32)


def _producer_main(spec: _ProducerSpec, ready, go) -> None:
    """Send ``rate * duration_s`` events at `rate`, stamping each with its send time; write keys and send times to
    ``spec.log_path`` (npz). Starts timing when `go` is set, after its set-up (imports, connections)."""
    pool = _feature_pool()
    total = int(round(spec.rate * spec.duration_s))
    keys = np.arange(spec.first_key, spec.first_key + total, dtype=np.int64)
    sent = np.zeros(total, dtype=np.float64)
    send = _kafka_sender(spec, pool, keys, sent) if spec.kind == "kafka" else _delta_sender(spec, pool, keys, sent)
    ready.set()
    if not go.wait(600):
        return
    started = time.time()
    behind_max = send(total, started)
    np.savez(spec.log_path, keys=keys, sent=sent, started=started, ended=time.time(), behind_max_s=behind_max)


def _kafka_sender(spec: _ProducerSpec, pool: np.ndarray, keys: np.ndarray, sent: np.ndarray):
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": spec.bootstrap,
            "linger.ms": 1,
            "acks": "all",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    fields = ",".join(f'"{n}":%r' for n in demo.feature_names(N_FEATURES))
    rows = [fields % tuple(float(v) for v in row) for row in pool]
    template = '{"' + KEY + '":%d,"sent_at_us":%d,%s}'
    errors: list[Any] = []

    def delivered(error, _message) -> None:
        if error is not None:
            errors.append(error)

    def send(total: int, started: float) -> float:
        done, behind_max = 0, 0.0
        while done < total:
            now = time.time()
            due = min(total, int((now - started) * spec.rate) + 1)
            behind_max = max(behind_max, (due - done) / spec.rate)
            for i in range(done, due):
                at = time.time()
                key = int(keys[i])
                value = template % (key, int(at * 1e6), rows[i % len(rows)])
                while True:
                    try:
                        producer.produce(
                            spec.target, value=value, key=str(key), timestamp=int(at * 1000), on_delivery=delivered
                        )
                        break
                    except BufferError:
                        producer.poll(0.005)
                sent[i] = at
            done = due
            producer.poll(0)
            if os.getppid() != spec.parent_pid:
                return behind_max
            wait = started + done / spec.rate - time.time()
            if wait > 0:
                time.sleep(min(wait, 0.005))
        left = producer.flush(60)
        if errors or left:
            raise RuntimeError(f"Kafka producer: {len(errors)} delivery errors ({errors[:3]}), {left} not flushed")
        return behind_max

    return send


def _source_schema():
    import pyarrow as pa

    return pa.schema(
        [
            (KEY, pa.int64()),
            *[(n, pa.float32()) for n in demo.feature_names(N_FEATURES)],
            (EVENT_TIME, pa.timestamp("us", tz="UTC")),
        ]
    )


def _source_rows(pool: np.ndarray, keys: np.ndarray, first: int, at: float):
    import pyarrow as pa

    schema = _source_schema()
    index = np.arange(first, first + len(keys)) % len(pool)
    arrays = [pa.array(keys, pa.int64())]
    arrays += [pa.array(pool[index, j]) for j in range(N_FEATURES)]
    arrays.append(pa.array(np.full(len(keys), int(at * 1e6), dtype=np.int64), pa.timestamp("us", tz="UTC")))
    return pa.Table.from_arrays(arrays, schema=schema)


def _delta_sender(spec: _ProducerSpec, pool: np.ndarray, keys: np.ndarray, sent: np.ndarray):
    def send(total: int, started: float) -> float:
        done, behind_max = 0, 0.0
        next_commit = started + spec.commit_interval_s
        while done < total:
            wait = next_commit - time.time()
            if wait > 0:
                time.sleep(wait)
            at = time.time()
            due = min(total, int((at - started) * spec.rate))
            if due > done:
                demo.write_delta(
                    spec.target, _source_rows(pool, keys[done:due], done, at), partition_by=(), mode="append"
                )
                sent[done:due] = at
                done = due
            behind_max = max(behind_max, time.time() - next_commit)
            next_commit = max(next_commit + spec.commit_interval_s, time.time())
            if os.getppid() != spec.parent_pid:
                break
        return behind_max

    return send


# -- the reader (a process of its own) ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ReaderSpec:
    kind: str
    """``delta`` (poll the Delta log of `target`, a table path) or ``kafka`` (consume `target`, a topic)"""
    target: str
    bootstrap: str | None
    partitions: int
    log_path: str
    deadline: float
    """Epoch seconds after which the reader gives up, whatever happens (it never outlives a crashed bench)."""
    parent_pid: int


def _reader_main(spec: _ReaderSpec, ready, stop, warm_seen, timed_seen) -> None:
    """Record every row arriving at the sink: key, arrival time (and, for Delta, the poll time and the version);
    write them to ``spec.log_path`` (npz) once `stop` is set and nothing new came for a moment."""
    parts: dict[str, list[np.ndarray]] = {"keys": [], "arrived": [], "seen": [], "version": []}

    def record(keys: np.ndarray, arrived: float, seen: float, version: int) -> None:
        n = len(keys)
        parts["keys"].append(keys)
        parts["arrived"].append(np.full(n, arrived))
        parts["seen"].append(np.full(n, seen))
        parts["version"].append(np.full(n, version, dtype=np.int64))
        warm = int(np.count_nonzero(keys >= WARMUP_KEY_BASE))
        with warm_seen.get_lock():
            warm_seen.value += warm
        with timed_seen.get_lock():
            timed_seen.value += n - warm

    poll = _kafka_poller(spec) if spec.kind == "kafka" else _delta_poller(spec)
    ready.set()
    idle_since = None
    try:
        while time.time() < spec.deadline and os.getppid() == spec.parent_pid:
            got = poll(record)
            if got:
                idle_since = None
                continue
            if stop.is_set():
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= 1.0:
                    break
            time.sleep(READER_POLL_S if spec.kind == "delta" else 0)
    finally:
        out = {k: np.concatenate(v) if v else np.empty(0) for k, v in parts.items()}
        np.savez(spec.log_path, **out)


def _kafka_poller(spec: _ReaderSpec):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": spec.bootstrap,
            "group.id": f"bench-stream-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.assign([TopicPartition(spec.target, p, OFFSET_BEGINNING) for p in range(spec.partitions)])

    def poll(record) -> bool:
        messages = consumer.consume(num_messages=10_000, timeout=0.05)
        at = time.time()
        keys = [int(m.key()) for m in messages if m.error() is None and m.key() is not None]
        if keys:
            record(np.array(keys, dtype=np.int64), at, at, -1)
        return bool(messages)

    return poll


def _delta_poller(spec: _ReaderSpec):
    import pyarrow.parquet as pq

    from scoring.adapters import deltalog

    table = Path(spec.target)
    state = {"version": 0}

    def poll(record) -> bool:
        v = state["version"]
        log = table / "_delta_log" / f"{v:020d}.json"
        try:
            text = log.read_text()
        except FileNotFoundError:
            return False
        seen = time.time()
        committed, files = deltalog.commit_summary(text)
        arrived = committed / 1000 if committed is not None else seen
        for name in files:
            keys = pq.read_table(table / name, columns=[KEY]).column(0).to_numpy()
            record(keys.astype(np.int64), arrived, seen, v)
        state["version"] = v + 1
        return True

    return poll

"""Small confluent-kafka helpers that work against any Kafka broker (the local one of
:mod:`scoring.launchers.kafka_broker`, or another): wait for it, create topics, produce records and read a topic back.
An unreachable broker is a `BackendUnavailableError` within seconds, not a hang."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from scoring.errors import BackendUnavailableError, ScoringError

_LOGGER = logging.getLogger(__name__)


class _QuietLogger:
    """librdkafka's own log lines (connection refused while a broker starts, ...) go to DEBUG, not to stderr."""

    def log(self, level: int, msg: str, *args: object) -> None:
        _LOGGER.debug("librdkafka: %s", msg % args if args else msg)


def _client_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "logger": _QuietLogger(), **extra}


def _admin(bootstrap: str, timeout_s: float) -> Any:
    from confluent_kafka.admin import AdminClient

    ms = max(1, int(timeout_s * 1000))
    return AdminClient(_client_config(bootstrap, **{"socket.connection.setup.timeout.ms": max(1000, ms)}))


def _answers(bootstrap: str, timeout_s: float) -> bool:
    from confluent_kafka import KafkaException

    try:
        _admin(bootstrap, timeout_s).list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return True


def _unreachable(bootstrap: str, timeout_s: float, cause: object) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"Kafka broker at {bootstrap} did not answer within {timeout_s:g} s: {cause}",
        hint="start the broker (scoring.launchers.kafka_broker.Broker, or the kafka_broker test fixture), or check "
        "the bootstrap address (host:port)",
    )


def wait_for_broker(bootstrap: str, timeout_s: float = 5.0) -> None:
    """Return once the broker(s) at `bootstrap` answer a metadata request; `BackendUnavailableError` after
    `timeout_s`."""
    from confluent_kafka import KafkaException

    try:
        _admin(bootstrap, timeout_s).list_topics(timeout=timeout_s)
    except KafkaException as e:
        raise _unreachable(bootstrap, timeout_s, e.args[0] if e.args else e) from e


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    *,
    config: dict[str, str] | None = None,
    exists_ok: bool = False,
    timeout_s: float = 30.0,
) -> None:
    """Create topic `name` (replication factor 1) and return once every partition has a leader.

    Raises `BackendUnavailableError` when the broker does not answer, `ScoringError` when the topic exists (unless
    `exists_ok`) or the broker refuses it.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    wait_for_broker(bootstrap, timeout_s=min(timeout_s, 5.0))
    admin = _admin(bootstrap, timeout_s)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=dict(config or {}))],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    try:
        futures[name].result(timeout=timeout_s)
    except KafkaException as e:
        error = e.args[0] if e.args else None
        if not (exists_ok and isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise ScoringError(
                f"Kafka broker {bootstrap} did not create topic {name!r} ({partitions} partitions): {error or e}",
                hint="pass exists_ok=True to reuse an existing topic, or choose another name",
            ) from e
    _wait_for_topic(admin, bootstrap, name, timeout_s)


def _wait_for_topic(admin: Any, bootstrap: str, name: str, timeout_s: float) -> int:
    """Wait until `name` shows in the metadata with a leader for every partition; its partition count."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            # All topics: a metadata request naming a topic may create it (auto.create.topics.enable).
            topics = admin.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic()))).topics
            topic = topics.get(name)
            if (
                topic is not None
                and topic.error is None
                and topic.partitions
                and all(p.leader >= 0 for p in topic.partitions.values())
            ):
                return len(topic.partitions)
        except KafkaException:
            pass
        if time.monotonic() >= deadline:
            raise BackendUnavailableError(
                f"topic {name!r} on Kafka broker {bootstrap} had no leader for every partition within {timeout_s:g} s"
            )
        time.sleep(0.05)


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


ProducedRecord = tuple[bytes | str | None, bytes | str] | tuple[bytes | str | None, bytes | str, int | None]
"""What :func:`produce` takes: ``(key, value)`` or ``(key, value, timestamp_ms)``; str is encoded as UTF-8."""


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[ProducedRecord],
    *,
    partition: int | None = None,
    timeout_s: float = 30.0,
) -> int:
    """Produce `records` to `topic` (``acks=all``), flush, and return how many were delivered.

    A timestamp of None lets the producer stamp the record. `partition` pins every record to one partition; by
    default the key decides (records without a key are spread). Raises `BackendUnavailableError` when the broker does
    not answer or delivery does not finish within `timeout_s`, `ScoringError` when the broker refuses a record.
    """
    from confluent_kafka import KafkaError, Producer

    wait_for_broker(bootstrap, timeout_s=min(timeout_s, 5.0))
    ms = max(1000, int(timeout_s * 1000))
    producer = Producer(
        _client_config(bootstrap, **{"acks": "all", "linger.ms": 5, "message.timeout.ms": ms, "request.timeout.ms": ms})
    )
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            errors.append(error)

    count = 0
    for record in records:
        key, value = record[0], record[1]
        timestamp = record[2] if len(record) > 2 else None
        kwargs: dict[str, Any] = {"key": _as_bytes(key), "value": _as_bytes(value), "on_delivery": delivered}
        if timestamp is not None:
            kwargs["timestamp"] = int(timestamp)
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
        count += 1
        producer.poll(0)
    left = producer.flush(timeout_s)
    if errors:
        first = errors[0]
        cls = (
            BackendUnavailableError if first.retriable() or first.code() == KafkaError._MSG_TIMED_OUT else ScoringError
        )
        raise cls(
            f"Kafka broker {bootstrap} did not take {len(errors)} of {count} records for topic {topic!r}: {first}",
            hint="read the broker's log; check the topic exists (or auto-creation is on) and the records' sizes",
        )
    if left:
        raise BackendUnavailableError(
            f"{left} of {count} records for topic {topic!r} were not delivered to Kafka broker {bootstrap} within "
            f"{timeout_s:g} s",
            hint="the broker may be down or overloaded; read its log, or raise timeout_s",
        )
    return count


class ConsumedRecord(NamedTuple):
    """One record read back by :func:`consume_all`."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    timestamp_ms: int
    """The record's timestamp (producer's create time, or the broker's log-append time), in ms since the epoch."""


def consume_all(
    bootstrap: str,
    topic: str,
    *,
    expect: int | None = None,
    timeout_s: float = 30.0,
    idle_s: float = 1.0,
    isolation_level: str = "read_committed",
) -> list[ConsumedRecord]:
    """Read `topic` from its earliest offsets, sorted by (partition, offset).

    With `expect`, reads until that many records arrived (it stops there: call again without `expect` to see whether
    more follow) or `timeout_s` passed, waiting for the topic to appear if it does not exist yet. Without, reads
    until every partition's end and `idle_s` without a new record, or `timeout_s`; a missing topic gives ``[]``.
    Partitions are assigned directly (no consumer group join, nothing committed). Raises `BackendUnavailableError`
    when the broker does not answer.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    deadline = time.monotonic() + timeout_s
    wait_for_broker(bootstrap, timeout_s=min(timeout_s, 5.0))
    admin = _admin(bootstrap, 5.0)
    partitions = _partitions(admin, topic)
    while not partitions:
        if expect is None or time.monotonic() >= deadline:
            return []
        time.sleep(0.1)
        partitions = _partitions(admin, topic)

    consumer = Consumer(
        _client_config(
            bootstrap,
            **{
                "group.id": f"scoring-reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": isolation_level,
            },
        )
    )
    records: list[ConsumedRecord] = []
    at_end: set[int] = set()
    last_new = time.monotonic()
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        while time.monotonic() < deadline:
            if expect is not None and len(records) >= expect:
                break
            if expect is None and at_end >= set(partitions) and time.monotonic() - last_new >= idle_s:
                break
            for message in consumer.consume(num_messages=10_000, timeout=0.2):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(message.partition())
                        continue
                    if error.fatal() or not error.retriable():
                        raise ScoringError(f"reading topic {topic!r} from Kafka broker {bootstrap} failed: {error}")
                    _LOGGER.debug("reading %s: %s", topic, error)
                    continue
                at_end.discard(message.partition())
                last_new = time.monotonic()
                _ts_type, ts = message.timestamp()
                records.append(
                    ConsumedRecord(message.key(), message.value(), message.partition(), message.offset(), ts)
                )
    finally:
        consumer.close()
    records.sort(key=lambda r: (r.partition, r.offset))
    return records


def _partitions(admin: Any, topic: str) -> list[int]:
    """The partition ids of `topic`, or [] if it does not exist (yet)."""
    from confluent_kafka import KafkaException

    try:
        # All topics: a metadata request naming the topic would create it where auto.create.topics.enable is on.
        meta = admin.list_topics(timeout=5.0).topics.get(topic)
    except KafkaException:
        return []
    if meta is None or meta.error is not None:
        return []
    return sorted(meta.partitions)


def topic_names(bootstrap: str, timeout_s: float = 5.0) -> Sequence[str]:
    """The broker's topics (internal ones, starting with ``__``, left out)."""
    from confluent_kafka import KafkaException

    try:
        topics = _admin(bootstrap, timeout_s).list_topics(timeout=timeout_s).topics
    except KafkaException as e:
        raise _unreachable(bootstrap, timeout_s, e.args[0] if e.args else e) from e
    return sorted(t for t in topics if not t.startswith("__"))

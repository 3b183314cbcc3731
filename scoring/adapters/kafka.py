"""Kafka for a stream, through Spark's own connector: the source (JSON records parsed into typed columns, the records
that cannot be parsed marked with why), the sink (JSON records keyed by the input key), and a check at start that the
brokers answer and the topic exists (confluent-kafka's admin client), so that a typo fails in seconds, not after
Spark's retries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from scoring import columns
from scoring.errors import BackendUnavailableError, InputError

RAW_VALUE = "raw_value"
"""The record's value as text, kept with every row (a quarantined row shows exactly what arrived)."""
_CORRUPT = "_scoring_corrupt_record"
_REASON = "_scoring_bad_record"


def check_topic(bootstrap_servers: str, topic: str, *, key: str, timeout_s: float = 10.0) -> None:
    """Fail now, with the config key, when the brokers do not answer within `timeout_s` or `topic` does not exist."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "socket.connection.setup.timeout.ms": 5000})
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as e:
        raise BackendUnavailableError(
            f"{key}.bootstrap_servers: no Kafka broker answered at {bootstrap_servers} within {timeout_s:.0f} s "
            f"({e.args[0] if e.args else e})",
            hint="check the address and that the brokers are up; nothing was read or written",
        ) from None
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        known = sorted(t for t in metadata.topics if not t.startswith("__"))[:20]
        raise InputError(
            f"{key}.topic: topic {topic!r} does not exist on {bootstrap_servers} (topics there: {known})",
            hint="fix the topic name, or create the topic first",
        )


def read_stream(
    spark,
    bootstrap_servers: str,
    topic: str,
    *,
    starting_offsets: str,
    max_offsets: int | None,
    options: Mapping[str, str],
):
    """The topic as a streaming DataFrame of Kafka's columns (key, value, topic, partition, offset, timestamp)."""
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap_servers)
        .option("subscribe", topic)
        .option("startingOffsets", starting_offsets)
    )
    if max_offsets is not None:
        reader = reader.option("maxOffsetsPerTrigger", str(max_offsets))
    for name, value in options.items():
        reader = reader.option(name, value)
    return reader.load()


def parse_records(df, fields: Mapping[str, str], features: Sequence[str]):
    """Kafka records (`df`, the source's columns) -> one row per record: the named `fields` (typed as given) and the
    `features` (doubles) read from the JSON value, the record's origin (:data:`~scoring.columns.SOURCE_TOPIC`,
    partition, offset, and its timestamp as :data:`~scoring.columns.EVENT_TIME`), the raw value, and a reason column
    (:func:`bad_record_reason`) that is null for a usable record and says what is wrong otherwise: not JSON, a field
    of the wrong type, a missing or null field. Nothing is dropped."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType, _parse_datatype_string

    wanted = [StructField(name, _parse_datatype_string(kind)) for name, kind in fields.items() if name not in features]
    wanted += [StructField(name, DoubleType()) for name in features]
    schema = StructType([*wanted, StructField(_CORRUPT, StringType())])
    parsed = df.select(
        F.from_json(
            F.col("value").cast("string"),
            schema,
            {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT},
        ).alias("_r"),
        F.col("value").cast("string").alias(RAW_VALUE),
        F.col("topic").alias(columns.SOURCE_TOPIC),
        F.col("partition").alias(columns.SOURCE_PARTITION),
        F.col("offset").alias(columns.SOURCE_OFFSET),
        F.col("timestamp").alias(columns.EVENT_TIME),
    )
    missing = F.concat_ws(", ", *[F.when(F.col(f"_r.`{f.name}`").isNull(), F.lit(f.name)) for f in wanted])
    reason = (
        F.when(F.col(RAW_VALUE).isNull(), F.lit("empty record (no value)"))
        .when(
            F.col(f"_r.{_CORRUPT}").isNotNull(),
            F.lit("malformed record: not a JSON object, or a field of the wrong type (features must be numbers)"),
        )
        .when(missing != "", F.concat(F.lit("missing or null field(s): "), missing))
    )
    return parsed.select(
        *[F.col(f"_r.`{f.name}`").alias(f.name) for f in wanted],
        columns.SOURCE_TOPIC,
        columns.SOURCE_PARTITION,
        columns.SOURCE_OFFSET,
        columns.EVENT_TIME,
        RAW_VALUE,
        reason.alias(_REASON),
    )


def bad_record_reason():
    """The column :func:`parse_records` adds: why a record cannot be scored, or null."""
    from pyspark.sql import functions as F

    return F.col(_REASON)


def drop_parse_columns(df):
    return df.drop(_REASON)


def write_records(df, bootstrap_servers: str, topic: str, key: Sequence[str]) -> None:
    """Each row of `df` as one JSON record (all columns) on `topic`, keyed by the input key (its values joined by
    ``|`` when the key has several columns). At least once: a replayed micro-batch is sent again."""
    from pyspark.sql import functions as F

    key_column = F.concat_ws("|", *[F.col(f"`{k}`").cast("string") for k in key])
    (
        df.select(key_column.alias("key"), F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns])).alias("value"))
        .write.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap_servers)
        .option("topic", topic)
        .save()
    )

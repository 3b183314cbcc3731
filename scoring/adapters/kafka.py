"""Kafka for a stream, through Spark's own connector: the source (JSON records parsed into typed columns, the records
that cannot be parsed marked with why), the sink (JSON records keyed by the input key), and a check at start that the
brokers answer and the topic exists (confluent-kafka's admin client), so that a typo fails in seconds, not after
Spark's retries."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from scoring import columns
from scoring.errors import BackendUnavailableError, InputError, require_extra

RAW_VALUE = "raw_value"
"""The record's value as text, kept with every row (a quarantined row shows exactly what arrived)."""
_CORRUPT = "_scoring_corrupt_record"
_REASON = "_scoring_bad_record"
_LOGGER = logging.getLogger(__name__)
_TIMESTAMP_FORMAT = "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"
"""Timestamps in the sink's JSON: Spark's default keeps milliseconds only, and a scored_at cut there no longer matches
the output table's."""


class _DebugLog:
    """librdkafka's own log lines go to this module's logger at DEBUG, not to stderr."""

    def log(self, level: int, msg: str, *args: object) -> None:
        _LOGGER.debug("librdkafka: %s", msg % args if args else msg)


def check_topic(bootstrap_servers: str, topic: str, *, key: str, timeout_s: float = 10.0) -> None:
    """Fail now, with the config key, when the brokers do not answer within `timeout_s` or `topic` does not exist."""
    require_extra("stream", key)
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient(
            {
                "bootstrap.servers": bootstrap_servers,
                "socket.connection.setup.timeout.ms": 5000,
                "logger": _DebugLog(),  # librdkafka's "connection refused" lines: the error below says it once
            }
        )
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
    (:func:`bad_record_reason`) that is null for a usable record and says what is wrong otherwise: an empty value, a
    field of the wrong type (which, and what it held), not a JSON object, a missing or null field. Nothing is dropped.

    A feature must be a JSON number: ``"NaN"``, ``"Infinity"`` or any other string is a field of the wrong type, so
    that one such record is set aside here rather than failing the query at the feature check."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType, _parse_datatype_string

    wanted = [StructField(name, _parse_datatype_string(kind)) for name, kind in fields.items() if name not in features]
    wanted += [StructField(name, DoubleType()) for name in features]
    schema = StructType([*wanted, StructField(_CORRUPT, StringType())])
    as_text = StructType([StructField(f.name, StringType()) for f in wanted])
    value = F.col("value").cast("string")
    parsed = df.select(
        F.from_json(
            value,
            schema,
            {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT, "allowNonNumericNumbers": "false"},
        ).alias("_r"),
        value.alias(RAW_VALUE),
        F.col("topic").alias(columns.SOURCE_TOPIC),
        F.col("partition").alias(columns.SOURCE_PARTITION),
        F.col("offset").alias(columns.SOURCE_OFFSET),
        F.col("timestamp").alias(columns.EVENT_TIME),
    )
    # The same fields as text, parsed again only for the records the typed parse refused: a field present there but
    # null in the typed parse holds a value of the wrong type.
    parsed = parsed.withColumn(
        "_t",
        F.when(F.col(f"_r.{_CORRUPT}").isNotNull(), F.from_json(F.col(RAW_VALUE), as_text, {"mode": "PERMISSIVE"})),
    )

    def typed(f) -> Any:
        return F.col(f"_r.`{f.name}`")

    def text(f) -> Any:
        return F.col(f"_t.`{f.name}`")

    wrong = F.concat_ws(
        ", ",
        *[
            F.when(
                typed(f).isNull() & text(f).isNotNull(),
                F.concat(
                    F.lit(f"{f.name} ({_expected(f.name, f.dataType, features)}, got "),
                    F.substring(text(f), 1, 60),
                    F.lit(")"),
                ),
            )
            for f in wanted
        ],
    )
    missing = F.concat_ws(", ", *[F.when(typed(f).isNull(), F.lit(f.name)) for f in wanted])
    reason = (
        F.when(F.col(RAW_VALUE).isNull() | (F.trim(F.col(RAW_VALUE)) == ""), F.lit("empty record (no value)"))
        .when(
            F.col(f"_r.{_CORRUPT}").isNotNull() & (wrong != ""),
            F.concat(F.lit("field(s) of the wrong type: "), wrong),
        )
        .when(
            F.col(f"_r.{_CORRUPT}").isNotNull(),
            F.lit("malformed record: not a JSON object (invalid JSON, or a JSON value that is not an object)"),
        )
        .when(missing != "", F.concat(F.lit("missing or null field(s): "), missing))
    )
    return parsed.select(
        *[typed(f).alias(f.name) for f in wanted],
        columns.SOURCE_TOPIC,
        columns.SOURCE_PARTITION,
        columns.SOURCE_OFFSET,
        columns.EVENT_TIME,
        RAW_VALUE,
        reason.alias(_REASON),
    )


def _expected(name: str, kind, features: Sequence[str]) -> str:
    if name in features:
        return "a JSON number expected"
    return f"{kind.simpleString()} expected"


def bad_record_reason():
    """The column :func:`parse_records` adds: why a record cannot be scored, or null."""
    from pyspark.sql import functions as F

    return F.col(_REASON)


def drop_parse_columns(df):
    return df.drop(_REASON)


def write_records(df, bootstrap_servers: str, topic: str, key: Sequence[str]) -> None:
    """Each row of `df` as one JSON record on `topic`, keyed by the input key (its values joined by ``|`` when the
    key has several columns). Every column is in every record (a null one as JSON null), timestamps in ISO 8601 to the
    microsecond, as in the Delta output. At least once: a replayed micro-batch is sent again."""
    from pyspark.sql import functions as F

    key_column = F.concat_ws("|", *[F.col(f"`{k}`").cast("string") for k in key])
    options = {"ignoreNullFields": "false", "timestampFormat": _TIMESTAMP_FORMAT}
    value = F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns]), options)
    (
        df.select(key_column.alias("key"), value.alias("value"))
        .write.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap_servers)
        .option("topic", topic)
        .save()
    )

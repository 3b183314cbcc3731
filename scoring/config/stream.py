"""The ``stream:`` section: a streaming query (Delta or Kafka source; Delta and/or Kafka sinks)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from scoring.config.base import (
    _INT32_MAX,
    _INT64_MAX,
    _as_list,
    _at_most,
    _Int,
    _Seconds,
    _spark_text,
    _Strict,
)

_FIELD_TYPES = Literal["string", "long", "int", "double", "boolean", "date", "timestamp"]


class KafkaSourceConfig(_Strict):
    bootstrap_servers: str
    """Kafka brokers, ``host:port[,host:port...]``."""
    topic: str
    """Topic to read. Each record's value is a JSON object with the key, feature and partition fields by name."""
    starting_offsets: Literal["earliest", "latest"] = "earliest"
    """Where a new query starts; a restarted query resumes from its checkpoint instead."""
    fields: dict[str, _FIELD_TYPES] = {}
    """Spark types of the non-feature fields read from the JSON value (key, partition, event time), e.g.
    ``{customer_id: long}``. Default: ``string``. Features are always read as ``double``."""
    options: dict[str, str] = {}
    """Extra options for Spark's Kafka source, passed as given, e.g. ``kafka.security.protocol: SSL`` or
    ``failOnDataLoss: false``."""

    @field_validator("options", mode="before")
    @classmethod
    def _spark_spelling(cls, value: Any) -> Any:
        return {k: _spark_text(v) for k, v in value.items()} if isinstance(value, dict) else value


class KafkaSinkConfig(_Strict):
    bootstrap_servers: str | None = None
    """Kafka brokers for the output topic. Default: ``stream.kafka.bootstrap_servers``."""
    topic: str
    """Topic the scores go to: one JSON record per scored row (key, partition, predictions, lineage, source),
    keyed by the input key."""


class StreamConfig(_Strict):
    source: Literal["delta", "kafka"] = "delta"
    """Where rows come from: ``delta`` (the append-only Delta table ``input.table``, read as a stream) or ``kafka``
    (``stream.kafka``)."""
    checkpoint: str
    """Checkpoint folder of the query (Spark's offsets and commits). One per query: a restart with the same folder
    resumes exactly where the query stopped."""
    trigger: Literal["micro-batch", "available-now", "real-time"] = "micro-batch"
    """``micro-batch``: a micro-batch every ``interval_s`` (0: as soon as the previous one ends); ``available-now``:
    what is there now, then stop (as ``--available-now``); ``real-time``: refused at start: Spark's Real-time Mode
    holds our Python scoring UDF's results until each real-time batch ends (see the README's Streaming section)."""
    interval_s: Annotated[_Seconds, Field(ge=0)] = 0.0
    """Seconds between micro-batch starts (``trigger: micro-batch``)."""
    max_files_per_trigger: (
        Annotated[_Int, Field(ge=1), _at_most(_INT32_MAX, "Spark reads it as a 32-bit int")] | None
    ) = None
    """Delta source: most new files per micro-batch (Spark's default: 1,000)."""
    max_offsets_per_trigger: Annotated[_Int, Field(ge=1), _at_most(_INT64_MAX, "Kafka offsets are 64-bit")] | None = (
        None
    )
    """Kafka source: most records per micro-batch, over all partitions (default: no limit)."""
    event_time: str | None = None
    """Delta source: a timestamp column holding each row's event time; lag is measured from it. Default: the commit
    time of the source version that added the row. (Kafka: the record's timestamp.)"""
    sinks: list[Literal["delta", "kafka"]] = Field(default=["delta"], min_length=1)
    """Where scores go: ``delta`` (``output.table``, exactly once), ``kafka`` (``stream.kafka_sink``, at least once),
    or both."""
    kafka: KafkaSourceConfig | None = None
    """The Kafka source (``source: kafka``)."""
    kafka_sink: KafkaSinkConfig | None = None
    """The Kafka sink (``kafka`` in ``sinks``)."""
    follow_alias: bool = False
    """Re-resolve ``model.uri`` (an alias) between micro-batches and score with the version it points to from the
    next micro-batch on. Default: the version resolved at start is pinned for the life of the query."""
    alias_check_interval_s: Annotated[_Seconds, Field(ge=0)] = 30.0
    """With ``follow_alias``: at most one registry lookup per this many seconds."""
    metrics_port: Annotated[_Int, Field(ge=0, le=65_535)] | None = None
    """Serve Prometheus metrics on ``127.0.0.1:<port>`` while the query runs (0: any free port). Default: none."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics endpoint listens on."""

    _listify = field_validator("sinks", mode="before")(_as_list)

    @model_validator(mode="after")
    def _complete(self) -> StreamConfig:
        if self.source == "kafka" and self.kafka is None:
            raise ValueError(
                "source: kafka needs a stream.kafka section (bootstrap_servers, topic); or use source: delta"
            )
        if "kafka" in self.sinks and self.kafka_sink is None:
            raise ValueError("sinks lists kafka: add a stream.kafka_sink section (topic, and bootstrap_servers)")
        if self.kafka_sink is not None and self.kafka_sink.bootstrap_servers is None and self.kafka is None:
            raise ValueError("stream.kafka_sink.bootstrap_servers is needed when the source is not Kafka")
        if len(set(self.sinks)) != len(self.sinks):
            raise ValueError(f"sinks lists a sink twice: {self.sinks}")
        if self.trigger == "real-time" and (self.source != "kafka" or self.sinks != ["kafka"]):
            raise ValueError(
                "trigger: real-time runs Kafka to Kafka only (Spark's Real-time Mode has no Delta source or sink, "
                "and no foreachBatch): set source: kafka and sinks: [kafka], or use trigger: micro-batch"
            )
        if self.event_time is not None and self.source == "kafka":
            raise ValueError("event_time is for a Delta source; a Kafka record's own timestamp is its event time")
        return self

    @property
    def sink_servers(self) -> str | None:
        if self.kafka_sink is None:
            return None
        return self.kafka_sink.bootstrap_servers or (self.kafka.bootstrap_servers if self.kafka else None)

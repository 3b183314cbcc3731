"""The stream: section is as strict as the rest of the job config."""

from __future__ import annotations

import pytest

from scoring.config import build_job_config
from scoring.errors import ConfigError

BASE = {
    "input": {"table": "/lake/events", "key": "customer_id"},
    "model": {"uri": "models:/churn@champion"},
    "output": {"table": "/lake/scores"},
}
KAFKA = {"bootstrap_servers": "127.0.0.1:9092", "topic": "events"}


def _config(stream, **sections):
    return build_job_config({**BASE, **sections, "stream": stream}, source="job.yaml")


def test_a_delta_stream_needs_only_a_checkpoint():
    stream = _config({"checkpoint": "/ck"}).stream
    assert (stream.source, stream.trigger, stream.sinks, stream.follow_alias) == (
        "delta",
        "micro-batch",
        ["delta"],
        False,
    )


def test_a_kafka_stream_needs_no_input_table_but_a_kafka_section():
    config = build_job_config(
        {**BASE, "input": {"key": "customer_id"}, "stream": {"checkpoint": "/ck", "source": "kafka", "kafka": KAFKA}}
    )
    assert config.input.table is None and config.stream.kafka.topic == "events"
    with pytest.raises(ConfigError, match="source: kafka needs a stream.kafka section"):
        _config({"checkpoint": "/ck", "source": "kafka"})


def test_a_batch_job_still_needs_an_input_table():
    with pytest.raises(ConfigError, match="input.table: required key is missing"):
        build_job_config({**BASE, "input": {"key": "customer_id"}})


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        ({"checkpoint": "/ck", "sinks": ["kafka"]}, "add a stream.kafka_sink section"),
        ({"checkpoint": "/ck", "sinks": ["delta", "delta"]}, "lists a sink twice"),
        ({"checkpoint": "/ck", "trigger": "real-time"}, "Kafka to Kafka only"),
        ({"checkpoint": "/ck", "trigger": "continuous"}, "trigger"),
        ({"checkpoint": "/ck", "max_files_per_trigger": 0}, "max_files_per_trigger"),
        ({"checkpoint": "/ck", "interval_s": -1}, "interval_s"),
        ({"checkpoint": "/ck", "metrics_port": 70000}, "metrics_port"),
        ({"checkpoint": "/ck", "follow_alias": "maybe"}, "follow_alias"),
        ({"checkpoint": "/ck", "chekpoint": "/x"}, "chekpoint"),
        ({}, "checkpoint"),
        ({"checkpoint": "/ck", "source": "kafka", "kafka": KAFKA, "event_time": "ts"}, "event_time is for a Delta"),
        ({"checkpoint": "/ck", "source": "kafka", "kafka": {**KAFKA, "fields": {"k": "varchar"}}}, "fields"),
    ],
)
def test_a_wrong_stream_section_is_a_located_config_error(stream, message):
    with pytest.raises(ConfigError, match=message) as refused:
        _config(stream)
    assert "job.yaml" in str(refused.value)


def test_stream_keys_can_be_set_from_the_command_line():
    config = build_job_config(
        {**BASE, "stream": {"checkpoint": "/ck"}},
        overrides=[
            "stream.follow_alias=true",
            "stream.sinks=[delta, kafka]",
            "stream.kafka_sink.topic=scores",
            "stream.kafka_sink.bootstrap_servers=127.0.0.1:9092",
        ],
    )
    assert config.stream.follow_alias and config.stream.sink_servers == "127.0.0.1:9092"

"""How a stream's failure is explained, without Spark: checkpoint files judged well-formed or not, and Java cause
chains (stand-ins with the same methods as Py4J's) recognised by their error class and Java class."""

from __future__ import annotations

import pytest

from scoring import build_job_config
from scoring.errors import CheckpointError, InputError
from scoring.modes import stream_failures as sf


def _config(source: str = "delta"):
    tree = {
        "name": "t",
        "input": {"table": "/lake/src", "key": "customer_id"},
        "model": {"uri": "models:/m@live"},
        "output": {"table": "/lake/out"},
        "stream": {"checkpoint": "/lake/ck"},
    }
    if source == "kafka":
        tree["stream"] |= {"source": "kafka", "kafka": {"bootstrap_servers": "h:9092", "topic": "events"}}
    return build_job_config(tree)


class _Java:
    """A Java throwable as Py4J shows it: class name, message, error class (Spark's), cause."""

    def __init__(self, name: str, message: str, condition: str | None = None, cause: _Java | None = None):
        self._name, self._message, self._condition, self._cause = name, message, condition, cause

    def getClass(self):  # noqa: N802 - Java's names
        name = self._name

        class _Class:
            def getName(self):  # noqa: N802
                return name

        return _Class()

    def getMessage(self):  # noqa: N802
        return self._message

    def getCondition(self):  # noqa: N802
        if self._condition is None:
            raise AttributeError("not a SparkThrowable")
        return self._condition

    def getCause(self):  # noqa: N802
        return self._cause


class _Captured(Exception):
    def __init__(self, origin: _Java):
        super().__init__(origin.getMessage())
        self._origin = origin


def _failed(cause: _Java) -> _Captured:
    return _Captured(
        _Java(
            "org.apache.spark.sql.streaming.StreamingQueryException",
            "[STREAM_FAILED] Query terminated with exception",
            "STREAM_FAILED",
            cause,
        )
    )


@pytest.mark.parametrize(
    ("path", "text", "bad"),
    [
        ("/ck/metadata", '{"id":"a1"}', False),
        ("/ck/metadata", '{"id": ', True),
        ("/ck/metadata", '{"other": 1}', True),
        ("/ck/offsets/3", 'v1\n{"batchWatermarkMs":0}\n{"reservoirVersion":3}', False),
        ("/ck/offsets/3", "garbage{", True),
        ("/ck/offsets/3", "v1\n{}\n{broken", True),
        ("/ck/offsets/3", "v1\n", True),
        ("/ck/commits/3", 'v1\n{"nextBatchWatermarkMs":0}', False),
        ("/ck/commits/3", "v1\n{not json", True),
    ],
)
def test_checkpoint_files_are_judged_by_their_kind(path, text, bad):
    assert (sf._malformed(path, text) is not None) is bad


def test_a_re_created_source_is_an_input_error_naming_the_table_and_a_new_checkpoint():
    error = _failed(
        _Java(
            "org.apache.spark.sql.delta.DeltaIllegalStateException",
            "[DIFFERENT_DELTA_TABLE_READ_BY_STREAMING_SOURCE] The streaming query was reading from an unexpected "
            "Delta table (id = 'x').",
            "DIFFERENT_DELTA_TABLE_READ_BY_STREAMING_SOURCE",
        )
    )
    found = sf.translate(error, _config(), spark=None)
    assert isinstance(found, InputError) and "/lake/src" in str(found) and "created again" in str(found)
    assert "new stream.checkpoint" in found.hint


def test_a_deleted_topic_is_an_input_error_naming_the_topic_and_failondataloss():
    error = _failed(
        _Java(
            "org.apache.kafka.common.errors.UnknownTopicOrPartitionException",
            "This server does not host this topic-partition.",
        )
    )
    found = sf.translate(error, _config("kafka"), spark=None)
    assert isinstance(found, InputError) and "'events'" in str(found) and "failOnDataLoss" in found.hint


def test_files_missing_in_the_source_name_the_source_and_the_retention_settings():
    error = _failed(
        _Java(
            "org.apache.spark.SparkException",
            "[FAILED_READ_FILE.FILE_NOT_EXIST] Encountered error while reading file file:/lake/src/part-0.parquet. "
            "File does not exist.",
            "FAILED_READ_FILE.FILE_NOT_EXIST",
        )
    )
    found = sf.translate(error, _config(), spark=None)
    assert isinstance(found, InputError) and str(found).startswith("input.table: files of /lake/src")
    assert "delta.deletedFileRetentionDuration" in found.hint


def test_a_malformed_log_file_without_spark_to_check_it_is_still_named():
    error = _failed(
        _Java(
            "java.lang.IllegalStateException",
            "Failed to read log file file:/lake/ck/offsets/4. [MALFORMED_LOG_FILE] Log file was malformed",
            "MALFORMED_LOG_FILE",
        )
    )
    found = sf.translate(error, _config(), spark=None)
    assert isinstance(found, CheckpointError) and "file:/lake/ck/offsets/4" in str(found)
    assert "backup" in found.hint


def test_an_unknown_failure_stays_unexplained():
    assert sf.translate(_failed(_Java("java.lang.OutOfMemoryError", "Java heap space")), _config(), None) is None


def test_a_batch_run_and_a_stream_may_not_write_into_each_others_output():
    from scoring.engine.checks import _refuse_mixing_batch_and_stream
    from scoring.errors import OutputError

    batch_columns = {"customer_id", "label", "model_version"}
    stream_columns = batch_columns | {"source_version_from", "event_time"}
    with pytest.raises(OutputError, match="is the output of a stream"):
        _refuse_mixing_batch_and_stream("/lake/out", stream_columns, batch_columns)
    with pytest.raises(OutputError, match="is the output of batch runs"):
        _refuse_mixing_batch_and_stream("/lake/out", batch_columns, stream_columns | {"source_topic"})
    _refuse_mixing_batch_and_stream("/lake/out", batch_columns, batch_columns | {"extra"})  # another clash: not this
    _refuse_mixing_batch_and_stream("/lake/out", stream_columns, stream_columns - {"event_time"})

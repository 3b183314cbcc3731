"""The Spark runner: a pinned Delta snapshot read as a DataFrame, scored by a scalar-iterator Arrow UDF on the
executors, committed with Delta transaction ids. Every Spark call goes through :mod:`scoring.adapters.spark` and
:mod:`scoring.adapters.delta`; this module only composes them behind :class:`scoring.runners.base.Runner`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from scoring.adapters import delta
from scoring.config import JobConfig
from scoring.core.score import ScoringSpec
from scoring.core.stamp import Lineage
from scoring.engine import checks
from scoring.engine.progress import watch_spark
from scoring.errors import InputError, from_spark_exception

_LOGGER = logging.getLogger(__name__)


def session_for(config: JobConfig, *, stream: bool = False):
    """The Spark session for a job: its ``spark:`` settings and Arrow batches of ``runtime.batch_rows`` rows; for a
    stream query (`stream`), its own app name and the Kafka connector when it reads or writes Kafka. One builder for
    batch runs and stream queries."""
    from scoring.adapters import spark as spark_glue

    conf = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(config.runtime.batch_rows), **config.spark.conf}
    app_name = f"scoring:{config.name}"
    if stream:
        assert config.stream is not None
        app_name = f"scoring-stream:{config.name}"
        if config.stream.source == "kafka" or "kafka" in config.stream.sinks:
            packages = [spark_glue.kafka_package(), *filter(None, conf.get("spark.jars.packages", "").split(","))]
            conf["spark.jars.packages"] = ",".join(dict.fromkeys(packages))
    spark = spark_glue.get_session(config.spark.master, conf, app_name=app_name)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(config.runtime.batch_rows))
    return spark


def translate_error(error: BaseException, explain: Callable[[BaseException], Exception | None] | None = None):
    """A Spark or Delta exception as the :class:`~scoring.errors.ScoringError` that names its cause, where known:
    Spark's own classified errors (:func:`scoring.errors.from_spark_exception`), a Delta source that was rewritten
    under a stream, then `explain` (a mode's own known failures), then an input data file removed by VACUUM. Returns
    `error` itself when the cause is unknown."""
    found = from_spark_exception(error)
    if found is not None:
        return found
    text = delta.message_of(error) if hasattr(error, "java_exception") or hasattr(error, "getMessage") else str(error)
    if "DELTA_SOURCE_TABLE_IGNORE_CHANGES" in text or "DELTA_SOURCE_IGNORE_DELETE" in text:
        return InputError(
            f"input.table: the source table was updated or had rows deleted, which a stream over an append-only "
            f"table cannot follow ({text.splitlines()[0][:300]})",
            hint="stream from an append-only table; restart with a new checkpoint and output after rewriting it",
        )
    explained = explain(error) if explain is not None else None
    if explained is not None:
        return explained
    text = f"{text}\n{error}"  # the Java message and Python's rendering of it (which holds the error class)
    if "FileNotFound" in text or "FILE_NOT_EXIST" in text or "does not exist" in text and "parquet" in text:
        return InputError(
            f"a data file of the input snapshot is gone: {delta.message_of(error)}",
            hint="the pinned input version was vacuumed (VACUUM removes files of old versions); read a later "
            "version, or leave input.version out to read the latest",
        )
    return error


class SparkRunner:
    """:class:`scoring.runners.base.Runner` on a Spark session (Delta configured)."""

    name = "spark"

    def __init__(self, spark, explain: Callable[[BaseException], Exception | None] | None = None) -> None:
        self.spark = spark
        self._explain = explain

    def read_snapshot(self, table: str, version: int | None) -> tuple[Any, int]:
        return delta.read_snapshot(self.spark, table, version)

    def filter(self, frame, condition: str):
        from scoring.adapters.spark import filtered

        try:
            return filtered(frame, condition)
        except ValueError as e:
            raise ValueError(delta.message_of(e.args[0])) from None

    def profile(self, frame, keys: Sequence[str], partition_by: Sequence[str], valid, fits):
        from scoring.adapters.spark import profile_selection

        return profile_selection(frame, list(keys), list(partition_by), valid, fits)

    def rows_matching(self, output, selected, columns: Sequence[str], partition_by: Sequence[str]) -> dict[tuple, int]:
        from scoring.adapters.spark import rows_matching

        return rows_matching(output, selected, list(columns), list(partition_by))

    def read_latest(self, table: str):
        if delta.latest_version(self.spark, table) is None:
            return None
        return self.spark.read.format("delta").load(table)

    def count(self, frame) -> int:
        return frame.count()

    def project(self, frame, columns: Sequence[str]):
        return frame.select(*[f"`{c}`" for c in columns])

    def empty_like(self, table: str):
        return self.spark.read.format("delta").load(table).limit(0)

    def sample(self, frame, rows: int) -> pa.Table:
        return frame.limit(rows).toArrow()

    def score(self, frame, spec: ScoringSpec, predictor_spec, lineage: Lineage):
        from scoring.adapters import spark as spark_glue

        return spark_glue.score_dataframe(frame, spec, predictor_spec, lineage)

    def keep(self, frame):
        return frame.persist()

    def release(self, frame) -> None:
        frame.unpersist()

    def watch(self, reporter, label: str) -> contextlib.AbstractContextManager[None]:
        return watch_spark(self.spark, reporter, label)

    def check_output_schema(self, table: str, schema, partition_by: Sequence[str]) -> None:
        checks.check_output_schema(self.spark, table, schema, list(partition_by))

    def commit_replace(
        self,
        scored,
        removed,
        table: str,
        *,
        key: Sequence[str],
        partition_by: Sequence[str],
        partitions: Sequence[tuple[Any, ...]] | None,
        selected,
        txn: delta.Txn,
        metadata: Mapping[str, Any],
    ) -> delta.WriteResult:
        return delta.write_scoped(
            scored,
            removed,
            table,
            key=key,
            partition_by=partition_by,
            partitions=partitions,
            selected=selected,
            txn=txn,
            metadata=metadata,
        )

    def commit_append(
        self, scored, table: str, *, key: Sequence[str], partition_by: Sequence[str], txn: delta.Txn, metadata
    ) -> delta.WriteResult:
        return delta.append_batch(scored, table, partition_by=partition_by, txn=txn, metadata=metadata, key=key)

    def commit_quarantine(self, frame, table: str, txn: delta.Txn) -> bool:
        return delta.append_once(frame, table, txn=txn)

    def committed(self, table: str, txn: delta.Txn) -> Mapping[str, Any] | None:
        if delta.latest_version(self.spark, table) is None or delta.committed_version(self.spark, table, txn) is None:
            return None
        commit = delta.find_commit(self.spark, table, txn)
        return commit.metadata if commit else {}

    def translate(self, error: Exception) -> Exception:
        return translate_error(error, self._explain)

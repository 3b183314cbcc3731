"""Delta Lake: read a pinned snapshot; write predictions idempotently, in one commit, with lineage metadata."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from scoring.errors import InputError, OutputError

_LOGGER = logging.getLogger(__name__)


def latest_version(spark, path: str) -> int | None:
    """The table's latest version, or None when there is no Delta table at `path`."""
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, path):
        return None
    return int(DeltaTable.forPath(spark, path).history(1).select("version").head()[0])


def read_snapshot(spark, path: str, version: int | None, *, key: str = "input.table"):
    """(DataFrame, version) of the table at `path`, pinned to `version` (default: the latest, looked up now).
    `key` is the config key named in errors."""
    latest = latest_version(spark, path)
    if latest is None:
        raise InputError(
            f"{key}: no Delta table at {path}",
            hint="check the path (relative paths are resolved from the current directory), or create the table first",
        )
    if version is None:
        version = latest
    elif version > latest:
        raise InputError(
            f"input.version: {path} has no version {version} (latest is {latest})",
            hint=f"use a version between 0 and {latest}, or leave input.version out to read the latest",
        )
    return spark.read.format("delta").option("versionAsOf", version).load(path), version


@dataclasses.dataclass(frozen=True)
class WriteResult:
    version_before: int | None
    version: int | None
    rows_written: int
    committed: bool
    """False when the table already had this run's commit (a retried write): nothing was written again."""


def _message(error: Exception) -> str:
    """A Spark error's message; Spark's own lookup can fail for error classes it does not know (Delta's)."""
    try:
        return error.getMessage()
    except Exception:  # noqa: BLE001 - fall back to the text we have
        return str(error).splitlines()[0]


def _txn_app_id(run_id: str) -> str:
    return f"scoring:{run_id}"


def _last_commit(spark, path: str) -> Mapping[str, Any]:
    from delta.tables import DeltaTable

    row = DeltaTable.forPath(spark, path).history(1).select("version", "userMetadata", "operationMetrics").head()
    return row.asDict()


def write_predictions(
    df, path: str, *, partition_by: Sequence[str], run_id: str, metadata: Mapping[str, Any]
) -> WriteResult:
    """Write `df` to the Delta table at `path` in one commit.

    - Partitioned output: the partitions present in `df` are replaced, the others kept (dynamic partition overwrite),
      so re-running a job over the same input partitions never duplicates rows.
    - Unpartitioned output: the table is replaced.
    - Idempotent per run: the commit carries ``txnAppId = scoring:<run_id>``; Delta skips a second write by the
      same run (a retry after an ambiguous failure), so a run commits at most once.
    - ``userMetadata`` carries `metadata` as JSON (visible in ``DESCRIBE HISTORY`` and to any Delta reader).
    Nothing is committed if anything fails before the commit: a Delta commit is atomic.
    """
    from pyspark.errors import AnalysisException

    spark = df.sparkSession
    before = latest_version(spark, path)
    writer = (
        df.write.format("delta")
        .mode("overwrite")
        .option("txnAppId", _txn_app_id(run_id))
        .option("txnVersion", 0)
        .option("userMetadata", json.dumps(metadata, sort_keys=True))
    )
    if partition_by:
        writer = writer.partitionBy(*partition_by).option("partitionOverwriteMode", "dynamic")
    try:
        writer.save(path)
    except AnalysisException as e:
        raise OutputError(
            f"output.table: cannot write to {path}: {_message(e)}",
            hint="the output table's schema or partitioning differs from this job's; write to a new output.table "
            "or make output.partition_by and the model's outputs match the existing table",
        ) from None
    after = latest_version(spark, path)
    if after == before:
        _LOGGER.warning("run %s had already committed to %s; nothing written again", run_id, path)
        return WriteResult(before, after, 0, committed=False)
    commit = _last_commit(spark, path)
    written = int((commit.get("operationMetrics") or {}).get("numOutputRows", -1))
    return WriteResult(before, after, written, committed=True)


def append_once(df, path: str, *, app_id: str) -> None:
    """Append `df` to the Delta table at `path` (created if missing) at most once per `app_id`."""
    df.write.format("delta").mode("append").option("mergeSchema", "true").option("txnAppId", app_id).option(
        "txnVersion", 0
    ).save(path)

"""Delta Lake through Spark: read a pinned snapshot; replace exactly the rows a run selected, in one idempotent commit.

The writer takes a transaction identity ``(app_id, version)`` (Delta's ``txnAppId`` / ``txnVersion``): Delta records
it in the commit and skips any later write that carries the same app id with a version not above it. A batch run
commits ``("scoring:<run_id>", 0)``; a streaming query will commit ``(<query id>, <batch id>)``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scoring.core.identity import table_identity
from scoring.errors import ConflictError, InputError, OutputError

_LOGGER = logging.getLogger(__name__)

MAX_PRUNED_PARTITIONS = 1_000
"""Up to this many touched partitions, the replace names them as literals so Delta reads only those partitions."""

_OP = "_scoring_op"


@dataclasses.dataclass(frozen=True)
class Txn:
    """A write's transaction identity: Delta skips a write whose app id already committed this version or a later one."""

    app_id: str
    version: int = 0


def is_delta_table(spark, path: str) -> bool:
    from delta.tables import DeltaTable

    return bool(DeltaTable.isDeltaTable(spark, path))


def latest_version(spark, path: str) -> int | None:
    """The table's latest version, or None when there is no Delta table at `path`."""
    if not is_delta_table(spark, path):
        return None
    return int(_snapshot(spark, path).version())


def _snapshot(spark, path: str):
    """The JVM DeltaLog's fresh snapshot (the version, the recorded transactions, the table properties)."""
    jvm = spark._jvm
    log = jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, path)
    empty = jvm.scala.Option.empty()
    return log.update(False, empty, empty)


def committed_version(spark, path: str, txn: Txn) -> int | None:
    """The transaction version the table records for ``txn.app_id`` (None when it never committed)."""
    if not is_delta_table(spark, path):
        return None
    found = _snapshot(spark, path).transactions().get(txn.app_id)
    return int(found.get()) if found.isDefined() else None


def layout(spark, path: str):
    """``(partition columns, schema)`` of the Delta table at `path`, or None when there is none. Read from the log's
    metadata (``DESCRIBE DETAIL`` would run a Spark job for the same facts)."""
    if not is_delta_table(spark, path):
        return None
    columns = _snapshot(spark, path).metadata().partitionColumns()
    partition_by = [str(columns.apply(i)) for i in range(columns.size())]
    return partition_by, spark.read.format("delta").load(path).schema


def table_properties(spark, path: str) -> dict[str, str]:
    snapshot = _snapshot(spark, path)
    conf = snapshot.metadata().configuration()
    return {str(k): str(conf.apply(k)) for k in _scala_keys(conf)}


def _scala_keys(scala_map) -> list[str]:
    keys, it = [], scala_map.keysIterator()
    while it.hasNext():
        keys.append(it.next())
    return keys


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
    try:
        df = spark.read.format("delta").option("versionAsOf", version).load(path)
    except Exception as e:  # the log of that version was cleaned up
        raise InputError(
            f"input.version: cannot read version {version} of {path}: {message_of(e)}",
            hint="that version's log or files are gone (log retention or VACUUM); read a later version, "
            "or leave input.version out to read the latest",
        ) from None
    return df, version


def check_target(spark, path: str, *, key: str) -> None:
    """Refuse before anything is written when `path` cannot take a scoped replace: something that is not a Delta
    table is there (a regular file, a Parquet folder), or the table is append-only."""
    local = _local_path(path)
    if local is not None and local.exists():
        if not local.is_dir():
            raise OutputError(
                f"{key}: {path} is a file, not a Delta table",
                hint=f"point {key} at a Delta table or at a path that does not exist yet",
            )
        if any(local.iterdir()) and not is_delta_table(spark, path) and not _only_orphans(local):
            raise OutputError(
                f"{key}: {path} is a folder that holds data but no Delta table (no _delta_log)",
                hint=f"point {key} at a Delta table or an empty/new path; convert a Parquet folder with "
                "CONVERT TO DELTA first if it is meant to be one",
            )
    if is_delta_table(spark, path):
        properties = table_properties(spark, path)
        if properties.get("delta.appendOnly", "false").lower() == "true":
            raise OutputError(
                f"{key}: {path} is append-only (delta.appendOnly=true), so a re-run cannot replace its rows",
                hint=f"write to another {key}, or ALTER TABLE ... SET TBLPROPERTIES ('delta.appendOnly' = 'false')",
            )


_PART_FILE = re.compile(r"^\.?part-\d{5}-[0-9a-f-]{36}(-c\d{3})?(\.c\d{3})?(\.\w+)?\.parquet(\.crc)?$")


def _only_orphans(folder: Path) -> bool:
    """Whether `folder` holds nothing but the data files of a first Delta write that never committed (a killed run):
    Spark's part files, in partition folders, and an empty ``_delta_log`` skeleton; no ``_SUCCESS`` marker (a plain
    Parquet write leaves one).
    Delta ignores such files, so the next first run may write there."""
    for item in folder.rglob("*"):
        inside_log = "_delta_log" in item.relative_to(folder).parts
        if item.is_dir():
            if "=" not in item.name and not inside_log:
                return False
        elif inside_log or not _PART_FILE.match(item.name):
            return False  # a file in the log (a commit) or one Delta did not write
    return True


def _local_path(path: str) -> Path | None:
    """The local folder of a table reference; None on an object store (see :mod:`scoring.core.identity`)."""
    local = table_identity(path).local_path
    return None if local is None else Path(local)


@dataclasses.dataclass(frozen=True)
class WriteResult:
    """What a write did, read from this write's own commit (never from "the latest commit")."""

    version_before: int | None
    version: int | None
    """The version of this write's commit (None when it was skipped as already committed)."""
    committed: bool
    """False when the table already recorded this transaction (a retried write): nothing was written again."""
    rows_written: int = 0
    rows_replaced: int = 0
    """Existing rows this write replaced (with a new score) or removed (set aside this time)."""
    rows_before: int | None = None
    """Rows in the table before this write (from the Delta log's file statistics)."""
    how: str = ""
    """``create``, ``replace-partitions`` (replaceWhere) or ``merge``."""

    @property
    def rows_kept(self) -> int | None:
        """Existing rows this write left as they were."""
        return None if self.rows_before is None else self.rows_before - self.rows_replaced


def message_of(error: Exception) -> str:
    """A Spark error's message; Spark's own lookup can fail for error classes it does not know (Delta's)."""
    try:
        return error.getMessage()
    except Exception:  # noqa: BLE001 - fall back to the text we have
        return str(error).splitlines()[0] if str(error) else type(error).__name__


_CONFLICTS = (
    "ConcurrentAppendException",
    "ConcurrentDeleteReadException",
    "ConcurrentDeleteDeleteException",
    "ConcurrentTransactionException",
    "ProtocolChangedException",
    "MetadataChangedException",
    "DELTA_CONCURRENT",
    "DELTA_PROTOCOL_CHANGED",
    "DELTA_METADATA_CHANGED",
    "DELTA_PATH_EXISTS",
    "PATH_ALREADY_EXISTS",
    "already exists",
)


def _conflict(error: Exception) -> bool:
    text = f"{type(error).__name__} {error}"
    return any(word in text for word in _CONFLICTS)


def write_scoped(
    scored,
    removed,
    path: str,
    *,
    key: Sequence[str],
    partition_by: Sequence[str],
    partitions: Sequence[tuple[Any, ...]] | None,
    selected=None,
    txn: Txn,
    metadata: Mapping[str, Any],
) -> WriteResult:
    """Replace exactly the ``(key, partition)`` rows this write selected, keep every other row, in one commit.

    - `scored`: the new rows (key, partition, predictions, lineage). Each replaces the row with the same key and
      partition, or is inserted.
    - `removed`: key and partition columns of selected rows that get no score this time (set aside): the rows they
      name are deleted from the output, so the output never shows an older score for a row this run rejected.
    - `partitions`: the partition values the selection touches, when known: named as literals so that Delta reads
      only those partitions.
    - `selected`: key and partition columns of every selected row (scored or not), read from the input; when given,
      the write first asks whether the touched partitions hold any row the selection does not name. When none does
      (a whole partition or the whole table re-scored: the nightly case), replacing those partitions is the same as
      replacing the selected rows, and the write is a ``replaceWhere`` overwrite of them: Delta's cheapest atomic
      replace. Otherwise it is a MERGE.
    The first write creates the table. The replace is a Delta MERGE on the key and partition columns (null-safe);
    `txn` makes it idempotent (a retried write of the same transaction is skipped, and reported as not committed),
    and `metadata` lands in the commit's ``userMetadata``. A concurrent writer that commits first makes this write
    fail with :class:`ConflictError` and commit nothing.
    """
    spark = scored.sparkSession
    before = latest_version(spark, path)
    metadata = {**metadata, "txn_app_id": txn.app_id, "txn_version": txn.version}
    user_metadata = json.dumps(metadata, sort_keys=True, default=str)
    done = committed_version(spark, path, txn)
    if done is not None and done >= txn.version:
        _LOGGER.warning("transaction %s had already committed to %s; nothing written again", txn, path)
        return _already(spark, path, txn, before)
    # A failed first write leaves its uncommitted part files behind (never removed here: a concurrent first writer
    # may be writing into the same folder); Delta ignores them, and check_target lets the next run write there.
    how, scope = "create", None
    try:
        if before is None:
            _create(scored, path, partition_by, key, txn, user_metadata)
        elif (scope := _whole_partitions(spark, path, selected, key, partition_by, partitions)) is not None:
            how = "replace-partitions"
            _replace_partitions(scored, path, scope, txn, user_metadata)
        else:
            how = "merge"
            _merge(scored, removed, path, key, partition_by, partitions, txn, user_metadata)
    except Exception as e:
        if _conflict(e):
            raise ConflictError(
                f"output.table: another writer committed to {path} while this run was writing "
                f"({type(e).__name__}: {message_of(e)}); nothing of this run was committed",
                hint="run the job again (the same run id is fine): it replaces its rows on top of the other "
                "writer's; to avoid it, do not run two jobs into the same output partitions at once",
            ) from None
        raise
    # This write's commit, from the commit files written since `before` (a few small JSON files, no Spark job).
    commit = _commit_in_log(spark, path, txn, before) or find_commit(spark, path, txn)
    if commit is None:  # Delta skipped it: a concurrent attempt of the same transaction committed first
        return _already(spark, path, txn, before)
    version, metrics = commit.version, commit.metrics
    if how == "create":
        return WriteResult(None, version, True, int(metrics.get("numOutputRows", 0)), 0, 0, how)
    if how == "replace-partitions":
        written = int(metrics.get("numOutputRows", 0))
        if scope == "true":  # the whole table was replaced
            rows_before = table_rows(spark, path, version - 1)
            return WriteResult(before, version, True, written, rows_before, rows_before, how)
        if "numDeletedRows" in metrics and int(metrics.get("numCopiedRows", 0)) == 0:
            # replaceWhere on partition values removes whole files; Delta counts their rows from the log's stats
            rows_before = table_rows(spark, path, version - 1)
            return WriteResult(before, version, True, written, int(metrics["numDeletedRows"]), rows_before, how)
        rows_before, replaced = _rows_and_rows_where(spark, path, version - 1, scope)
        return WriteResult(before, version, True, written, replaced, rows_before, how)
    rows_before = table_rows(spark, path, version - 1)
    written = int(metrics.get("numTargetRowsInserted", 0)) + int(metrics.get("numTargetRowsUpdated", 0))
    replaced = int(metrics.get("numTargetRowsUpdated", 0)) + int(metrics.get("numTargetRowsDeleted", 0))
    return WriteResult(before, version, True, written, replaced, rows_before, how)


def _already(spark, path: str, txn: Txn, before: int | None) -> WriteResult:
    """The result of a write skipped because `txn` had committed: that earlier commit's version and row count."""
    commit = find_commit(spark, path, txn)
    version, metrics = (commit.version, commit.metrics) if commit else (None, {})
    written = metrics.get("numOutputRows") if "numTargetRowsInserted" not in metrics else None
    if written is None:
        written = int(metrics.get("numTargetRowsInserted", 0)) + int(metrics.get("numTargetRowsUpdated", 0))
    return WriteResult(before, version, False, int(written))


def _rows_and_rows_where(spark, path: str, version: int, predicate: str) -> tuple[int, int]:
    """Rows of version `version`, and those in the partitions `predicate` names, in one pass that reads only the
    partition values (no data column)."""
    from pyspark.sql import functions as F

    table = spark.read.format("delta").option("versionAsOf", version).load(path)
    row = table.agg(F.count(F.lit(1)), F.sum(F.when(F.expr(predicate), 1).otherwise(0))).head()
    return int(row[0]), int(row[1] or 0)


def table_rows(spark, path: str, version: int) -> int:
    """Rows in version `version` of the table. Delta answers a plain count from the file statistics in its log
    (a metadata-only query), so no data file is read."""
    return int(spark.read.format("delta").option("versionAsOf", version).load(path).count())


def _writer(df, mode: str, txn: Txn, user_metadata: str | None = None):
    """A Delta DataFrameWriter in `mode` that commits under `txn` (and with `user_metadata`, when given)."""
    writer = df.write.format("delta").mode(mode).option("txnAppId", txn.app_id).option("txnVersion", txn.version)
    return writer if user_metadata is None else writer.option("userMetadata", user_metadata)


STATS_COLUMNS = "delta.dataSkippingStatsColumns"
"""The table property that names the columns Delta collects file statistics (min, max, null count) on."""


def stats_properties(key: Sequence[str], partition_by: Sequence[str]) -> dict[str, str]:
    """Table properties of a new output table: file statistics on the key columns only.

    Delta's default collects min/max/null counts on the first 32 columns of every file it writes, here the predictions
    and the six lineage columns too: per-row work in the write for columns nobody prunes files by. The engine's MERGE
    and readers select rows by key and partition; partition values are in the log anyway (no statistics needed), so
    the key columns are what file skipping can use. The row count of each file (``numRecords``) is kept whatever this
    says: Delta answers ``count(*)`` and the run's row counts from it. To collect more on an existing table:
    ``ALTER TABLE delta.`<path>` SET TBLPROPERTIES ('delta.dataSkippingStatsColumns' = 'customer_id,prediction')``."""
    stats = [c for c in dict.fromkeys(key) if c not in partition_by]
    if not stats:
        return {"delta.dataSkippingNumIndexedCols": "0"}
    return {STATS_COLUMNS: ",".join(_quoted(c) for c in stats)}


def _quoted(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else "`" + name.replace("`", "``") + "`"


def _create(scored, path: str, partition_by: Sequence[str], key: Sequence[str], txn: Txn, user_metadata: str) -> None:
    writer = _writer(scored, "errorifexists", txn, user_metadata)
    for name, value in stats_properties(key, partition_by).items():  # options named delta.* become table properties
        writer = writer.option(name, value)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(path)


def _partition_predicate(partition_by: Sequence[str], partitions: Sequence[tuple[Any, ...]], alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    if len(partition_by) == 1:
        values = ", ".join(_sql_literal(p[0]) for p in partitions)
        if any(p[0] is None for p in partitions):
            nulls = f" OR {prefix}`{partition_by[0]}` IS NULL"
            values = ", ".join(_sql_literal(p[0]) for p in partitions if p[0] is not None) or "NULL"
            return f"({prefix}`{partition_by[0]}` IN ({values}){nulls})"
        return f"{prefix}`{partition_by[0]}` IN ({values})"
    ors = [
        "(" + " AND ".join(f"{prefix}`{c}` <=> {_sql_literal(v)}" for c, v in zip(partition_by, p, strict=True)) + ")"
        for p in partitions
    ]
    return "(" + " OR ".join(ors) + ")"


def _whole_partitions(spark, path, selected, key, partition_by, partitions) -> str | None:
    """The predicate of the partitions the selection touches ("true" for an unpartitioned table) when they hold no
    row the selection does not name, so that overwriting them replaces exactly the selected rows; None otherwise."""
    if selected is None:
        return None
    if partition_by:
        if not partitions or len(partitions) > MAX_PRUNED_PARTITIONS:
            return None
        scope = _partition_predicate(partition_by, partitions)
    else:
        scope = "true"
    columns = list(dict.fromkeys([*key, *partition_by]))
    there = spark.read.format("delta").load(path).where(scope).select(*[f"`{c}`" for c in columns])
    cond = [there[f"`{c}`"].eqNullSafe(selected[f"`{c}`"]) for c in columns]
    kept = there.join(selected.select(*[f"`{c}`" for c in columns]), on=cond, how="left_anti").limit(1).count()
    return scope if kept == 0 else None


def _replace_partitions(scored, path: str, scope: str, txn: Txn, user_metadata: str) -> None:
    writer = _writer(scored, "overwrite", txn, user_metadata)
    if scope != "true":
        writer = writer.option("replaceWhere", scope)
    writer.save(path)


def _sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _merge(scored, removed, path, key, partition_by, partitions, txn: Txn, user_metadata: str) -> None:
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    spark = scored.sparkSession
    columns = scored.columns
    source = scored.withColumn(_OP, F.lit("upsert"))
    if removed is not None:
        gone = removed.select(*dict.fromkeys([*key, *partition_by])).withColumn(_OP, F.lit("delete"))
        source = source.unionByName(gone, allowMissingColumns=True)
    match = [f"t.`{c}` <=> s.`{c}`" for c in dict.fromkeys([*key, *partition_by])]
    if partition_by and partitions is not None and 0 < len(partitions) <= MAX_PRUNED_PARTITIONS:
        match.append(_partition_predicate(partition_by, partitions, "t"))
    settings = {
        "spark.databricks.delta.write.txnAppId": txn.app_id,
        "spark.databricks.delta.write.txnVersion": str(txn.version),
        "spark.databricks.delta.commitInfo.userMetadata": user_metadata,
    }
    # Delta reads a DML command's transaction identity and commit metadata from the session: set them around this
    # one command only.
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        (
            DeltaTable.forPath(spark, path)
            .alias("t")
            .merge(source.alias("s"), " AND ".join(match))
            .whenMatchedDelete(condition=f"s.{_OP} = 'delete'")
            .whenMatchedUpdate(condition=f"s.{_OP} = 'upsert'", set={f"`{c}`": f"s.`{c}`" for c in columns})
            .whenNotMatchedInsert(condition=f"s.{_OP} = 'upsert'", values={f"`{c}`": f"s.`{c}`" for c in columns})
            .execute()
        )
    finally:
        for k in settings:
            spark.conf.unset(k)


@dataclasses.dataclass(frozen=True)
class Commit:
    """The commit that carries a transaction: its version, Delta's operation metrics and our ``userMetadata``."""

    version: int
    metrics: dict[str, str]
    metadata: dict[str, Any]


def find_commit(spark, path: str, txn: Txn, *, search: int = 200) -> Commit | None:
    """The commit that carries `txn`, looked up by its identity in the commit metadata among the newest `search`
    commits (never "the latest commit"); None when none does (the write was skipped)."""
    from delta.tables import DeltaTable

    rows = (
        DeltaTable.forPath(spark, path).history(search).select("version", "userMetadata", "operationMetrics").collect()
    )
    for row in rows:
        try:
            meta = json.loads(row.userMetadata or "{}")
        except ValueError:  # another writer's free-text metadata
            continue
        if isinstance(meta, dict) and meta.get("txn_app_id") == txn.app_id and meta.get("txn_version") == txn.version:
            return Commit(int(row.version), dict(row.operationMetrics or {}), meta)
    return None


def recent_user_metadata(spark, path: str, most: int) -> list[str | None]:
    """The ``userMetadata`` of the newest `most` commits of the Delta table at `path`, newest first (None where a
    commit has none)."""
    from delta.tables import DeltaTable

    return [row.userMetadata for row in DeltaTable.forPath(spark, path).history(most).select("userMetadata").collect()]


def append_once(df, path: str, *, txn: Txn) -> bool:
    """Append `df` to the Delta table at `path` (created if missing) at most once per transaction identity.
    Returns whether this call committed."""
    done = committed_version(df.sparkSession, path, txn)
    if done is not None and done >= txn.version:
        return False
    try:
        _writer(df, "append", txn).option("mergeSchema", "true").save(path)
    except Exception as e:
        if _conflict(e):
            raise ConflictError(
                f"another writer committed to {path} at the same time ({type(e).__name__}: {message_of(e)})",
                hint="run the job again with the same run id: it completes this write",
            ) from None
        raise
    return True


def append_batch(
    df,
    path: str,
    *,
    partition_by: Sequence[str],
    txn: Txn,
    metadata: Mapping[str, Any],
    key: Sequence[str] = (),
) -> WriteResult:
    """Append `df` to the Delta table at `path` (created, partitioned by `partition_by`, if missing, with file
    statistics on `key` only: :func:`stats_properties`) in one commit, at most once per transaction identity: a
    stream's micro-batch, ``(query, batch id)``. A batch that the table already records (a restart replaying the batch
    whose commit landed just before the crash) is skipped and reported as not committed, with the version that did
    commit it."""
    spark = df.sparkSession
    before = latest_version(spark, path)
    done = committed_version(spark, path, txn)
    if done is not None and done >= txn.version:
        return _already(spark, path, txn, before)
    metadata = {**metadata, "txn_app_id": txn.app_id, "txn_version": txn.version}
    writer = _writer(df, "append", txn, json.dumps(metadata, sort_keys=True, default=str))
    if before is None and key:  # the first micro-batch creates the table
        for name, value in stats_properties(key, partition_by).items():
            writer = writer.option(name, value)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    try:
        writer.save(path)
    except Exception as e:
        if _conflict(e):
            raise ConflictError(
                f"output.table: another writer committed to {path} while this micro-batch was writing "
                f"({type(e).__name__}: {message_of(e)}); nothing of the micro-batch was committed",
                hint="restart the query: it replays the micro-batch from its checkpoint",
            ) from None
        raise
    commit = _commit_in_log(spark, path, txn, before)
    if commit is None:
        return _already(spark, path, txn, before)
    return WriteResult(before, commit.version, True, int(commit.metrics.get("numOutputRows", 0)), 0, None, "append")


def _commit_in_log(spark, path: str, txn: Txn, after: int | None, *, most: int = 20) -> Commit | None:
    """The commit after version `after` that carries `txn`, read from the commit files of the Delta log (a few small
    JSON files; a history query is a Spark job, too slow for every micro-batch)."""
    from scoring.adapters.spark import read_text

    latest = latest_version(spark, path)
    if latest is None:
        return None
    first = -1 if after is None else after
    for version in range(latest, max(first, latest - most), -1):
        text = read_text(spark, f"{path.rstrip('/')}/_delta_log/{version:020d}.json")
        if text is None:
            continue
        actions = [json.loads(line) for line in text.splitlines() if line.strip()]
        ours = any(
            a.get("txn", {}).get("appId") == txn.app_id and a["txn"].get("version") == txn.version for a in actions
        )
        if ours:
            info = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
            meta = info.get("userMetadata")
            return Commit(
                version,
                {k: str(v) for k, v in (info.get("operationMetrics") or {}).items()},
                json.loads(meta) if meta else {},
            )
    return None

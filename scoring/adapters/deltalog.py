"""Delta tables without Spark, through delta-rs (``deltalake``): what the Airflow sensor, the backfill planner, the
DAG's ``publish`` task and ``scoring show`` read, in one place.

- :func:`snapshot`: the table's latest version, columns and partition columns (None when there is no table yet);
- :func:`partition_rows`: rows per partition value, from the ``add`` actions' statistics in the log (no data file is
  read; a file written without statistics is counted from its Parquet footer);
- :func:`history`: the commits, newest first, with their ``userMetadata`` parsed;
- :func:`transaction_version`: the ``txnVersion`` the table records for a ``txnAppId``;
- :func:`read` / :func:`head` / :func:`count_where`: small reads of a few columns; :func:`append`: the runs table.

delta-rs decodes percent escapes in a local path: a folder named ``a%20b`` (which Spark writes fine) is read as
``a b`` and every read fails with "File not found". :func:`snapshot` refuses such a path with a message that says so,
instead of delta-rs's error.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from scoring.core.identity import table_identity
from scoring.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as pds
    from deltalake import DeltaTable

_LOGGER = logging.getLogger(__name__)

_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


def location(path: str, key: str) -> str:
    """Where delta-rs opens the table `path` names: its canonical identity (:mod:`scoring.core.identity`; a local
    table as its real absolute path, an object store as its canonical URI), so that every reader without Spark (the
    sensor, the runs table, ``scoring show``, the online index, the Redis publish) opens one place however it is
    spelled.

    Refuses a catalog table name (delta-rs knows no catalog) and a local path with a literal percent escape (``%20``),
    which delta-rs would decode and so read another path."""
    from scoring.adapters.catalog import refuse_name

    refuse_name(path, key)
    try:
        identity = table_identity(path)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}", hint=f"give {key} a path or a URI such as s3://bucket/path") from None
    local = identity.local_path
    if local is None:  # a URI: percent escapes are meant to be decoded
        return identity.uri
    found = _ESCAPE.search(local)
    if found:
        raise ConfigError(
            f"{key}: {path} contains {found.group()!r}, which delta-rs decodes (reading "
            f"{local.replace(found.group(), bytes.fromhex(found.group()[1:]).decode('latin-1'))!r} instead), so this "
            "table cannot be read without Spark",
            hint="rename the folder so that the path has no '%' (a real space or '_' both work); escaping the '%' "
            "as %25 does not help, delta-rs decodes it either way",
        )
    return local


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The latest version of a Delta table, as delta-rs sees it."""

    path: str
    version: int
    columns: tuple[str, ...]
    partition_columns: tuple[str, ...]
    table: DeltaTable = dataclasses.field(repr=False, compare=False)
    table_id: str = ""
    """Delta's table id (the log's ``metaData.id``): a table deleted and re-created at the same place has another."""

    def dataset(self) -> pds.Dataset:
        """The snapshot's files as a pyarrow dataset (partition columns typed as in the table).

        A local table's files are read through pyarrow's own local filesystem, not delta-rs's: Arrow's reader threads
        calling into delta-rs's Python filesystem handler abort the interpreter at exit ("terminate called without an
        active exception", exit 134) in most processes that scanned a table that way (delta-rs#2184, arrow#34314).
        """
        return self.table.to_pyarrow_dataset(filesystem=_local_filesystem(self.path))


def _local_filesystem(path: str) -> Any:
    """pyarrow's local filesystem rooted at a local table's folder; None (delta-rs's own) for an object-store URI."""
    import pyarrow.fs as pfs

    local = table_identity(path).local_path
    return None if local is None else pfs.SubTreeFileSystem(local, pfs.LocalFileSystem())


def snapshot(path: str | Any, *, key: str = "table") -> Snapshot | None:
    """The table at `path` (latest version), or None when there is no Delta table there.

    `key` names the setting the path came from in errors (``input.table``, ``output.table``).
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    path = str(path)
    where = location(path, key)
    try:
        table = DeltaTable(where)
    except TableNotFoundError:
        return None
    return Snapshot(
        path=path,
        version=int(table.version()),
        columns=tuple(field.name for field in table.schema().fields),
        partition_columns=tuple(table.metadata().partition_columns),
        table=table,
        table_id=str(table.metadata().id),
    )


def version(path: str, *, key: str = "table") -> int | None:
    """The latest version of the table at `path`, or None when there is none."""
    found = snapshot(path, key=key)
    return None if found is None else found.version


def as_text(value: Any) -> str:
    """A partition value as text: dates as ``YYYY-MM-DD``, everything else as ``str``."""
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def partition_rows(snap: Snapshot, column: str, values: Iterable[str] | None = None) -> dict[str, int]:
    """``{value: rows}`` of a partition column (only `values`, when given, as ``YYYY-MM-DD``/text), read from the
    ``add`` actions' ``numRecords`` in the Delta log; values without rows are absent.

    A file the log has no row count for (written without statistics) is counted from its Parquet footer.
    """
    import pyarrow as pa

    if column not in snap.partition_columns:
        raise ValueError(f"{column!r} is not a partition column of {snap.path} ({list(snap.partition_columns)})")
    wanted = None if values is None else set(values)
    actions = pa.table(snap.table.get_add_actions(flatten=True))
    counts: dict[str, int] = {}
    missing: list[str] = []
    for value, path, rows in zip(
        actions.column(f"partition.{column}").to_pylist(),
        actions.column("path").to_pylist(),
        actions.column("num_records").to_pylist(),
        strict=True,
    ):
        if value is None:
            continue
        text = as_text(value)
        if wanted is not None and text not in wanted:
            continue
        if rows is None:
            missing.append(path)
            counts.setdefault(text, 0)
        else:
            counts[text] = counts.get(text, 0) + int(rows)
    if missing:
        _count_from_footers(snap, column, missing, counts)
    return {value: rows for value, rows in counts.items() if rows > 0}


def _count_from_footers(snap: Snapshot, column: str, files: Sequence[str], counts: dict[str, int]) -> None:
    import pyarrow.dataset as pds

    _LOGGER.info("%s: %d file(s) without row counts in the log; reading their footers", snap.path, len(files))
    wanted = {f.rsplit("/", 1)[-1] for f in files}
    for fragment in snap.dataset().get_fragments():
        if fragment.path.rsplit("/", 1)[-1] not in wanted:
            continue
        value = pds.get_partition_keys(fragment.partition_expression).get(column)
        if value is not None:
            counts[as_text(value)] = counts.get(as_text(value), 0) + fragment.count_rows()


def _in(dataset: pds.Dataset, column: str, values: Iterable[str]):
    """A filter ``column IN values`` typed as the column (a string or a date column both work)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = dataset.schema.field(column).type
    return pc.field(column).isin(pa.array(list(values), pa.string()).cast(kind))


def value_rows(snap: Snapshot, column: str, values: Iterable[str] | None = None) -> dict[str, int]:
    """``{value: rows}`` of any column (only `values`, when given), by reading that one column."""
    dataset = snap.dataset()
    where = None if values is None else _in(dataset, column, values)
    grouped = dataset.to_table(columns=[column], filter=where).group_by(column).aggregate([([], "count_all")])
    return {as_text(row[column]): int(row["count_all"]) for row in grouped.to_pylist() if row[column] is not None}


def has_rows(snap: Snapshot, column: str, value: str) -> bool:
    """Whether any row has ``column = value``: from the log for a partition column, else the first matching row."""
    if column in snap.partition_columns:
        return partition_rows(snap, column, [value]).get(value, 0) > 0
    dataset = snap.dataset()
    return dataset.head(1, columns=[column], filter=_in(dataset, column, [value])).num_rows > 0


def read(
    path: str,
    columns: Sequence[str],
    *,
    column: str | None = None,
    values: Iterable[str] | None = None,
    key: str = "table",
) -> pa.Table | None:
    """`columns` of the table at `path`, restricted to ``column IN values`` when both are given; None when there is
    no table."""
    snap = snapshot(path, key=key)
    if snap is None:
        return None
    dataset = snap.dataset()
    where = _in(dataset, column, values) if column is not None and values is not None else None
    return dataset.to_table(columns=list(columns), filter=where)


def head(path: str, limit: int, *, key: str = "table") -> pa.Table | None:
    """The first `limit` rows of the table at `path` (in file order), or None when there is no table."""
    snap = snapshot(path, key=key)
    return None if snap is None else snap.dataset().head(limit)


def count_where(path: str, column: str, value: Any, *, key: str = "table") -> int:
    """Rows whose `column` equals `value` (0 when there is no table)."""
    import pyarrow.dataset as pds

    snap = snapshot(path, key=key)
    if snap is None:
        return 0
    return snap.dataset().count_rows(filter=pds.field(column) == value)


@dataclasses.dataclass(frozen=True)
class Commit:
    """One entry of a table's history."""

    version: int
    timestamp: dt.datetime | None
    operation: str | None
    user_metadata: str | None
    """The commit's ``userMetadata`` as written."""
    metrics: dict[str, Any]
    """``operationMetrics`` (Spark: ``numOutputRows``, ``numTargetRowsInserted``, ...; delta-rs: ``num_added_rows``)."""

    @property
    def metadata(self) -> dict[str, Any] | None:
        """``userMetadata`` parsed, when it is a JSON object (what ``scoring`` writes); None otherwise."""
        try:
            parsed = json.loads(self.user_metadata or "")
        except json.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, dict) else None


def history(path: str, limit: int | None = None, *, key: str = "table") -> list[Commit]:
    """The table's commits, newest first (at most `limit`); empty when there is no table."""
    snap = snapshot(path, key=key)
    if snap is None:
        return []
    commits = []
    for entry in snap.table.history(limit):
        stamp = entry.get("timestamp")
        commits.append(
            Commit(
                version=int(entry.get("version", -1)),
                timestamp=None if stamp is None else dt.datetime.fromtimestamp(stamp / 1000, tz=dt.UTC),
                operation=entry.get("operation"),
                user_metadata=entry.get("userMetadata"),
                metrics=dict(entry.get("operationMetrics") or {}),
            )
        )
    return sorted(commits, key=lambda c: c.version, reverse=True)


def transaction_version(path: str, app_id: str, *, key: str = "table") -> int | None:
    """The ``txnVersion`` the table records for ``txnAppId`` `app_id` (None: never committed, or no table)."""
    snap = snapshot(path, key=key)
    return None if snap is None else snap.table.transaction_version(app_id)


def append(path: str, rows: pa.Table, *, key: str = "table") -> None:
    """Append `rows` to the table at `path`, creating it on the first call."""
    from deltalake import write_deltalake

    write_deltalake(location(str(path), key), rows, mode="append")


def commit_summary(text: str) -> tuple[int | None, list[str]]:
    """One Delta commit file's text -> its commit time (epoch ms; the in-commit timestamp when the table has one) and
    the paths (unquoted) of the data files it added: which rows a version brought, and when."""
    import json
    from urllib.parse import unquote

    committed, added = None, []
    for line in text.splitlines():
        if not line.strip():
            continue
        action = json.loads(line)
        if "commitInfo" in action:
            info = action["commitInfo"]
            committed = info.get("inCommitTimestamp") or info.get("timestamp")
        elif "add" in action and action["add"].get("dataChange", True):
            added.append(unquote(action["add"]["path"]))
    return committed, added

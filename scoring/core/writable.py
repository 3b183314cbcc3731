"""Which rows an output table can take: the writability rule, as data, for every runner.

A row the output cannot take must be found before the write, never by the write: a write that fails on one row fails
the whole micro-batch (or run), and a stream restarted on it meets the same row again. Two things make a row
unwritable:

- **Its partition values cannot be a path.** Spark (and Delta, through it) writes a row of a partitioned table under
  one directory per partition column, ``<column>=<value>``, each escaped by Hive's rule
  (:func:`escape_path_name`: Spark's ``ExternalCatalogUtils.escapePathName``, the characters of
  :data:`ESCAPED_CHARS` as ``%XX``; measured against what Spark 4.2 with Delta writes). A null (or empty) value is
  written as :data:`DEFAULT_PARTITION`. On a local file system each such segment must be at most
  :data:`NAME_MAX_BYTES` bytes of UTF-8 (Linux's ``NAME_MAX``), the whole path at most :data:`LOCAL_PATH_MAX_BYTES`,
  and no segment may hold a NUL. On an object store there is no directory, but the data file's key (the table's path
  in its bucket, the segments and the data file's name) must be at most :data:`OBJECT_KEY_MAX_BYTES` bytes (S3's and
  GCS's limit).
- **Its key or partition value does not fit the output column's type.** When the output table exists and its column
  is of another type than the one the source gives (an ``int`` key column fed ``bigint`` values, a ``string`` fed to
  a ``date`` column), each value must cast to the column's type without overflow or loss: :func:`cast_kind` says,
  per pair of types, whether that always holds (``widen``), must be checked per row (``narrow``: a round trip that
  gives the value back; ``parse``: a string that parses), or never does (``refuse``: the job cannot write into that
  table at all, which is a table-level error, not a row's).

:class:`WriteRule` holds what one write needs (where the table lives, its partition columns, the casts) and
evaluates the path half of the rule in Python (:meth:`WriteRule.path_problem`): the unit tests' table of edge cases.
The Spark runner compiles the same rule into column expressions (``scoring.engine.writable``) and is checked
against the same table.

Pure: the standard library only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal
from urllib.parse import unquote, urlsplit

from scoring.core.identity import table_identity

ESCAPED_CHARS: frozenset[str] = frozenset(
    [chr(c) for c in range(0x01, 0x20)]
    + ['"', "#", "%", "'", "*", "/", ":", "=", "?", "[", "\\", "]", "^", "{", "\x7f"]
)
"""Characters Spark writes as ``%XX`` in a partition directory's name (``ExternalCatalogUtils.charToEscape`` on a
non-Windows host). Not escaped, though a file system may refuse them: NUL (refused everywhere: :data:`FORBIDDEN`);
everything beyond ASCII is written as its UTF-8 bytes."""

FORBIDDEN: tuple[str, ...] = ("\x00",)
"""Characters no file system takes in a name, which Spark's escaping leaves as they are."""

DEFAULT_PARTITION = "__HIVE_DEFAULT_PARTITION__"
"""The directory value Spark writes for a null (or empty) partition value."""

NAME_MAX_BYTES = 255
"""Longest name of one directory entry on a local file system (Linux ``NAME_MAX``; ext4, xfs, tmpfs), in bytes."""

LOCAL_PATH_MAX_BYTES = 4095
"""Longest path a local file system call takes (Linux ``PATH_MAX`` less the terminating NUL), in bytes."""

OBJECT_KEY_MAX_BYTES = 1024
"""Longest object key on S3 and GCS (Azure Blob allows 1,024 characters), in bytes of UTF-8."""

DATA_FILE_NAME_BYTES = 80
"""Room kept for a data file's name in its directory: Delta writes ``part-00000-<uuid>.c000.snappy.parquet`` (67
bytes; another codec's extension a few more), and Hadoop's local file system a ``.<name>.crc`` beside it."""

CastKind = Literal["same", "widen", "narrow", "parse", "refuse"]

_INTEGRAL = ("tinyint", "smallint", "int", "bigint")
_FRACTIONAL = ("float", "double")
_PARSED = (*_INTEGRAL, *_FRACTIONAL, "decimal", "date", "timestamp", "timestamp_ntz", "boolean")


def escape_path_name(text: str) -> str:
    """`text` escaped as Spark escapes a partition column's name or value in a directory name."""
    return "".join(f"%{ord(c):02X}" if c in ESCAPED_CHARS else c for c in text)


def partition_segment(column: str, value: str | None) -> str:
    """The directory name Spark writes for `value` (already cast to a string, as Spark casts it) of `column`."""
    shown = DEFAULT_PARTITION if value is None or value == "" else escape_path_name(value)
    return f"{escape_path_name(column)}={shown}"


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _family(kind: str) -> str:
    return "decimal" if kind.startswith("decimal") else kind


def cast_kind(source: str, target: str) -> CastKind:
    """How values of Spark type `source` (its ``simpleString``) go into an output column of type `target`."""
    if source == target:
        return "same"
    s, t = _family(source), _family(target)
    if t == "string":
        return "refuse" if s == "binary" or s.startswith(("array", "map", "struct")) else "widen"
    if s == "string":
        return "parse" if t in _PARSED else "refuse"
    if s in _INTEGRAL and t in _INTEGRAL:
        return "widen" if _INTEGRAL.index(t) >= _INTEGRAL.index(s) else "narrow"
    if s in _INTEGRAL and t in _FRACTIONAL:
        return "widen"
    if s == "float" and t == "double":
        return "widen"
    numeric = (*_INTEGRAL, *_FRACTIONAL, "decimal")
    if s in numeric and t in numeric:
        return "narrow"  # double -> float, fractional -> integral, anything <-> decimal: checked by a round trip
    if s == "date" and t in ("timestamp", "timestamp_ntz"):
        return "widen"
    if s in ("timestamp", "timestamp_ntz") and t in ("date", "timestamp", "timestamp_ntz"):
        return "narrow"
    return "refuse"


@dataclasses.dataclass(frozen=True)
class CastCheck:
    """A column whose values the source gives as `source` and the output holds as `target` (a ``widen``,
    ``narrow`` or ``parse`` cast: see :func:`cast_kind`)."""

    column: str
    source: str
    target: str

    @property
    def kind(self) -> CastKind:
        return cast_kind(self.source, self.target)

    def reason(self) -> str:
        """The quarantine reason's text after the value: ``<column> = <value>`` is put before it."""
        return f" does not fit the output column's type {self.target} (the source gives {self.source})"


@dataclasses.dataclass(frozen=True)
class WriteRule:
    """Everything one write into one table needs to decide which rows it can take."""

    is_local: bool
    base_bytes: int
    """Bytes of the table's own path: the absolute local path, or the key prefix inside the bucket."""
    partition_by: tuple[str, ...]
    casts: tuple[CastCheck, ...] = ()
    """Key and partition columns the output holds as another type than the source gives: cast before the write."""

    @classmethod
    def for_table(
        cls,
        table: str,
        partition_by: Sequence[str],
        source_types: Mapping[str, str] | None = None,
        target_types: Mapping[str, str] | None = None,
        *,
        columns: Sequence[str] = (),
    ) -> WriteRule:
        """The rule for writing into `table` (a path or URI) partitioned by `partition_by`. `columns` (the key and
        partition columns) are cast-checked where the existing table (`target_types`, its columns' ``simpleString``)
        holds another type than the source gives (`source_types`). Raises ValueError for a pair that never casts."""
        identity = table_identity(table)
        if identity.is_local:
            base = identity.local_path or "/"
            is_local = True
        else:
            base = unquote(urlsplit(identity.uri).path).strip("/")
            is_local = False
        casts = []
        for name in dict.fromkeys(columns):
            if not source_types or not target_types or name not in source_types or name not in target_types:
                continue
            check = CastCheck(name, source_types[name], target_types[name])
            if check.kind == "refuse":
                raise ValueError(
                    f"column {name!r}: the output holds {check.target}, the source gives {check.source}, which "
                    "never casts to it"
                )
            if check.kind != "same":
                casts.append(check)
        return cls(is_local, utf8_len(base), tuple(partition_by), tuple(casts))

    @property
    def segment_max_bytes(self) -> int | None:
        """Longest partition directory name, or None where only the whole key counts (an object store)."""
        return NAME_MAX_BYTES if self.is_local else None

    @property
    def path_budget_bytes(self) -> int:
        """Bytes the partition segments may take together, one ``/`` for each counted: the limit less the table's
        path, the ``/`` before the segments and the data file's name."""
        limit = LOCAL_PATH_MAX_BYTES if self.is_local else OBJECT_KEY_MAX_BYTES
        return limit - self.base_bytes - 1 - DATA_FILE_NAME_BYTES

    @property
    def checked(self) -> tuple[CastCheck, ...]:
        """The casts that can fail for a row (``narrow``, ``parse``); a ``widen`` cast never does."""
        return tuple(c for c in self.casts if c.kind in ("narrow", "parse"))

    @property
    def can_fail(self) -> bool:
        """Whether any row can be unwritable (an unpartitioned table without checked casts never refuses a row)."""
        return bool(self.partition_by or self.checked)

    def path_problem(self, values: Mapping[str, str | None]) -> str | None:
        """Why a row with these partition values (cast to strings) cannot be written, or None: the same reasons,
        in the same order and words, as the Spark runner's expression."""
        total = 0
        for column in self.partition_by:
            value = values.get(column)
            if value is not None and any(c in value for c in FORBIDDEN):
                return nul_reason(column)
            size = utf8_len(partition_segment(column, value))
            limit = self.segment_max_bytes
            if limit is not None and size > limit:
                return segment_reason(column, size, limit)
            total += size + 1
        if self.partition_by and total > self.path_budget_bytes:
            return path_reason(self.is_local, total, self.path_budget_bytes)
        return None


def nul_reason(column: str) -> str:
    return f"partition value of {column} holds a NUL character, which no file system takes in a name"


def segment_reason(column: str, size: int | str, limit: int) -> str:
    head, tail = segment_reason_parts(column, limit)
    return f"{head}{size}{tail}"


def segment_reason_parts(column: str, limit: int) -> tuple[str, str]:
    return (
        f"partition value of {column} cannot be a directory name: its path segment is ",
        f" bytes after Spark's escaping, over the file system's {limit}",
    )


def path_reason(is_local: bool, size: int | str, budget: int) -> str:
    head, tail = path_reason_parts(is_local, budget)
    return f"{head}{size}{tail}"


def path_reason_parts(is_local: bool, budget: int) -> tuple[str, str]:
    what = "path" if is_local else "object key"
    limit = LOCAL_PATH_MAX_BYTES if is_local else OBJECT_KEY_MAX_BYTES
    return (
        f"partition values too long for a data file's {what}: their path segments take ",
        f" bytes, over the {budget} left of the {limit}-byte limit by the table's path and the file's name",
    )

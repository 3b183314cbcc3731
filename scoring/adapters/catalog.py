"""Tables by name: ``input.table`` / ``output.table`` / ``quality.quarantine_table`` may name a table in Spark's
catalog (``db.features``, ``spark_catalog.db.features``) as well as give its path.

A value is a **name** when it has no ``/`` and no ``:``, reads as two or three dotted identifiers, and nothing exists at
that path relative to the current directory (so a local table ``scores.delta`` keeps working; write ``./scores.delta``
for a folder that does not exist yet). Anything else is a path or URI.

A Spark run resolves every name once, before it reads a row (:func:`resolve`): the engine then works on the table's
location, so pinning (the input's version), idempotency (transaction ids in the output's log) and the checks are the
same as for a path. A name that is not in the catalog yet is the output's first run: it is written under its
database's location (``<database location>/<table>``) and registered (``CREATE TABLE ... USING delta LOCATION``) right
after the commit; a run that died between the two registers it on the next run, before it reads a row.

Readers without Spark (delta-rs: the DAG's sensor and runs table, ``scoring show``, the online index) do not know the
catalog: they refuse a name with a message that says how to find the location (:func:`refuse_name`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

from scoring.errors import ConfigError

_LOGGER = logging.getLogger(__name__)

_PART = r"(?:[A-Za-z_][A-Za-z0-9_]*|`[^`/]+`)"
_NAME = re.compile(rf"^{_PART}(?:\.{_PART}){{1,2}}$")
TABLE_KEYS = ("input.table", "output.table", "quality.quarantine_table")


def is_name(value: str | None) -> bool:
    """Whether `value` names a catalog table rather than giving a path (see the module's docstring)."""
    if not value or "/" in value or ":" in value or not _NAME.match(value):
        return False
    return not Path(value).exists()


def _parts(name: str) -> list[str]:
    return [p.strip("`") for p in re.findall(_PART, name)]


def _quoted(parts: list[str]) -> str:
    return ".".join(f"`{p}`" for p in parts)


@dataclasses.dataclass(frozen=True)
class Table:
    """One table of the job: the value the config gave and, for a name, where it lives."""

    key: str
    given: str
    location: str
    registered: bool = True
    """False for a name not in the catalog yet (the output's first run): :func:`register` adds it after the commit."""

    @property
    def by_name(self) -> bool:
        return self.given != self.location


def _local(uri: str) -> str:
    """``file:/x/y`` -> ``/x/y``: the engine's checks treat a local table as a path."""
    return "/" + uri[len("file:") :].lstrip("/") if uri.startswith("file:") else uri


def locate(spark, key: str, name: str, *, may_create: bool) -> Table:
    """Where the catalog table `name` lives. An input must exist and be Delta; an output may be new (its database
    must exist)."""
    parts = _parts(name)
    quoted = _quoted(parts)
    catalog_kind = spark.conf.get("spark.sql.catalogImplementation", "in-memory")
    if spark.catalog.tableExists(quoted):
        detail = spark.sql(f"DESCRIBE DETAIL {quoted}").select("format", "location").head()
        if detail is None or (detail["format"] or "").lower() != "delta":
            raise ConfigError(
                f"{key}: {name} is a {detail['format'] if detail else 'non-Delta'} table in Spark's catalog, not Delta",
                hint=f"point {key} at a Delta table (convert it with CONVERT TO DELTA, or name another table)",
            )
        return Table(key, name, _local(detail["location"]))
    if not may_create:
        raise ConfigError(
            f"{key}: no table named {name} in Spark's catalog ({catalog_kind}), and no folder {name} in {Path.cwd()}",
            hint="check the name (db.table or catalog.db.table) and that the job's spark.conf points at your metastore "
            "(e.g. spark.sql.catalogImplementation: hive); for a folder, give its path (./name for the current "
            "directory)",
        )
    database = parts[:-1]
    if not spark.catalog.databaseExists(_quoted(database)):
        raise ConfigError(
            f"{key}: {name} is a new table, and its database {'.'.join(database)} is not in Spark's catalog "
            f"({catalog_kind})",
            hint=f"create it first (CREATE DATABASE {_quoted(database)}), check the job's metastore settings "
            "(spark.conf), or give a path (./name for a folder in the current directory)",
        )
    where = spark.catalog.getDatabase(_quoted(database)).locationUri
    location = _local(f"{where.rstrip('/')}/{parts[-1]}")
    from scoring.adapters import delta

    if delta.is_delta_table(spark, location):  # committed, then died before registering: register now
        _register(spark, key, quoted, location)
        return Table(key, name, location)
    return Table(key, name, location, registered=False)


def _register(spark, key: str, quoted: str, location: str) -> None:
    literal = location.replace("\\", "\\\\").replace("'", "\\'")
    spark.sql(f"CREATE TABLE IF NOT EXISTS {quoted} USING delta LOCATION '{literal}'")
    _LOGGER.info("%s: registered %s at %s", key, quoted, location)


def register(spark, table: Table) -> bool:
    """Add a new table's name to the catalog once its location holds a Delta table (after its first commit).
    False when there is nothing to register yet."""
    from scoring.adapters import delta

    if table.registered or not table.by_name:
        return True
    if not delta.is_delta_table(spark, table.location):
        return False
    _register(spark, table.key, _quoted(_parts(table.given)), table.location)
    return True


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The job's tables, each resolved once: the config the engine runs (locations) and what the user named."""

    config: object
    tables: dict[str, Table]

    def given(self, key: str) -> str | None:
        table = self.tables.get(key)
        return table.given if table else None

    def register_new(self, spark, *keys: str) -> tuple[str, ...]:
        """Register new tables after their first commit; returns the keys still waiting for one. The commit has
        landed, so a failure here is a warning, not a failed run: the next run registers the table before it reads a
        row."""
        waiting = []
        for key in keys:
            if key not in self.tables:
                continue
            table = self.tables[key]
            try:
                if not register(spark, table):
                    waiting.append(key)
            except Exception as e:  # noqa: BLE001 - reported, and repaired by the next run
                _LOGGER.warning(
                    "%s: %s was written at %s but could not be added to Spark's catalog (%s); the next run adds it",
                    key,
                    table.given,
                    table.location,
                    e,
                )
        return tuple(waiting)


def resolve(config, spark) -> Resolved:
    """`config` with every table name replaced by its location (paths stay as they are), resolved once through
    Spark's catalog."""
    values = {
        "input.table": config.input.table,
        "output.table": config.output.table,
        "quality.quarantine_table": config.quarantine_table,
    }
    tables = {}
    for key, value in values.items():
        if value is None:
            continue
        if is_name(value):
            tables[key] = locate(spark, key, value, may_create=key != "input.table")
            if tables[key].location != value:
                _LOGGER.info("%s: %s is at %s", key, value, tables[key].location)
        else:
            tables[key] = Table(key, value, value)
    if not any(t.by_name for t in tables.values()):
        return Resolved(config, tables)
    update_input = {"table": tables["input.table"].location} if "input.table" in tables else {}
    quality = config.quality
    if config.quality.quarantine_table is not None or tables["output.table"].by_name:
        quality = quality.model_copy(update={"quarantine_table": tables["quality.quarantine_table"].location})
    resolved = config.model_copy(
        update={
            "input": config.input.model_copy(update=update_input),
            "output": config.output.model_copy(update={"table": tables["output.table"].location}),
            "quality": quality,
        }
    )
    return Resolved(resolved, tables)


def refuse_name(value: str, key: str) -> None:
    """For readers without Spark: a catalog name cannot be read with delta-rs."""
    if is_name(value):
        raise ConfigError(
            f"{key}: {value} reads as a table name in Spark's catalog, and this step reads tables with delta-rs "
            "(no Spark, no catalog)",
            hint=f"give {key} the table's location instead (a Spark run prints it at INFO level, `scoring -v run`; "
            f"or DESCRIBE DETAIL {value} in Spark SQL); for a folder in the current directory write ./{value}",
        )

"""Precomputed scores, keyed for lookup: what ``scoring serve`` answers from without running the model.

A batch output table holds, per row, the key column(s), partition column(s), the six lineage columns and the
prediction column(s). :func:`encode_rows` turns each row into one **record**: the JSON object a client receives
(``model_name``, ``model_version``, ``model_uri``, ``scoring_run_id``, ``scored_at``, ``partition``,
``predictions``), encoded once, when the index is built, so that answering a hit is a dictionary lookup and a byte
concatenation. The same records are what ``scoring publish-online`` writes to Redis.

:class:`PrecomputedIndex` keeps, per key, the record of the most recently scored row (or only the rows of one
partition, when the caller filtered them), beside the row's model version and ``scored_at`` so that a lookup can
tell whether the score is still current without decoding it.

Keys are text: a key value is written as ``str(value)`` (dates as ``YYYY-MM-DD``); a composite key is the tuple of
its parts' texts, in ``input.key`` order.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from scoring.columns import LINEAGE, MODEL_NAME, MODEL_URI, MODEL_VERSION, SCORED_AT, SCORING_RUN_ID

Key = str | tuple[str, ...]
"""A key as the index holds it: the text of a single key column, or the tuple of a composite key's texts."""

_RUN_FIELDS = (MODEL_NAME, MODEL_VERSION, MODEL_URI, SCORING_RUN_ID, SCORED_AT)


def key_text(value: Any) -> str:
    """A key value as text: ``str`` for numbers and strings, ISO format for dates and timestamps."""
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """JSON bytes (NaN and infinities become null, numpy scalars plain numbers)."""
    return orjson.dumps(value, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)


def loads(body: bytes | memoryview) -> Any:
    """A request body's JSON value, read with orjson. A body that orjson refuses only for the literals ``NaN``,
    ``Infinity`` or ``-Infinity``, or for a number too large for a double (what Python's ``json.dumps`` writes for
    a float NaN or infinity), is read with the standard library's parser instead, so that the check of the value
    can name the field that holds it; anything else raises orjson's ``JSONDecodeError``."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        error = e
    try:
        value = json.loads(bytes(body))
        orjson.dumps(value)  # nothing orjson could not write back (lone surrogates, integers beyond 64 bits)
    except (ValueError, TypeError, RecursionError):
        raise error from None
    return value


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which columns of an output table are the key, the partitions and the predictions."""

    key: tuple[str, ...]
    partition: tuple[str, ...]
    predictions: tuple[str, ...]

    @classmethod
    def of(cls, schema: pa.Schema, key: Sequence[str], partition: Sequence[str]) -> Layout:
        """The layout of a batch output table: everything that is not a key, a partition, a lineage column or a
        stream's source column is a prediction."""
        from scoring import columns

        missing = [c for c in (*key, *LINEAGE) if c not in schema.names]
        if missing:
            raise ValueError(f"columns {missing} are missing (found {schema.names})")
        other = {
            columns.SOURCE_VERSION_FROM,
            columns.SOURCE_TOPIC,
            columns.SOURCE_PARTITION,
            columns.SOURCE_OFFSET,
            columns.EVENT_TIME,
        }
        taken = {*key, *partition, *LINEAGE, *other}
        predictions = tuple(n for n in schema.names if n not in taken)
        return cls(tuple(key), tuple(p for p in partition if p in schema.names), predictions)


def _micros(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """``scored_at`` as microseconds since the epoch (UTC), int64."""
    as_us = pc.cast(column, pa.timestamp("us", tz="UTC")) if column.type != pa.timestamp("us", tz="UTC") else column
    return pc.cast(as_us, pa.int64()).to_numpy(zero_copy_only=False)


def _texts(column: pa.ChunkedArray) -> list[str]:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.to_pylist()
    if pa.types.is_integer(column.type):
        return pc.cast(column, pa.string()).to_pylist()
    return [key_text(v) for v in column.to_pylist()]


def _by_value(column: pa.ChunkedArray) -> pa.Array:
    """Each value's JSON text, encoding each distinct value once (strings, dates, anything else)."""
    encoded = pc.dictionary_encode(column).combine_chunks()
    texts = [dumps(_plain(v)).decode() for v in encoded.dictionary.to_pylist()]
    indices = encoded.indices
    out = pc.take(pa.array(texts, pa.string()), indices)
    return pc.if_else(pc.is_null(indices), "null", out) if indices.null_count else out


def _numbers(values: pa.Array) -> pa.Array:
    """Numbers as JSON text: NaN, infinities and nulls become null."""
    if pa.types.is_boolean(values.type):
        text = pc.if_else(values, "true", "false")
    else:
        text = pc.cast(values, pa.string())
        if pa.types.is_floating(values.type):  # a whole float stays a float in JSON: 1.0, not 1
            text = pc.if_else(
                pc.match_substring_regex(text, "[.eE]"), text, pc.binary_join_element_wise(text, ".0", "")
            )
            text = pc.if_else(pc.is_finite(values), text, pa.scalar(None, pa.string()))
    return pc.fill_null(text, "null")


def json_texts(column: pa.ChunkedArray) -> pa.Array:
    """A column's values as JSON texts, vectorised (numbers and lists of numbers without a Python loop)."""
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return _numbers(column.combine_chunks())
    if (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and (
        pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)
    ):
        lists = column.combine_chunks()
        items = _numbers(lists.flatten())
        joined = pc.binary_join(type(lists).from_arrays(lists.offsets, items), ",")
        text = pc.binary_join_element_wise("[", joined, "]", "")
        return pc.if_else(pc.is_null(lists), "null", text) if lists.null_count else text
    if pa.types.is_string(kind) or pa.types.is_date(kind) or pa.types.is_timestamp(kind):
        return _by_value(column)
    return pa.array([dumps(_plain(v)).decode() for v in column.to_pylist()], pa.string())


def _field(name: str) -> str:
    return dumps(name).decode()


@dataclasses.dataclass(frozen=True)
class Encoded:
    """The rows of a table as keys and records, with each row's model version (as a code into `version_names`) and
    ``scored_at`` (µs). A record is ``{`` + its run's part (``run_parts[run_codes[i]]``, shared by every row of a
    run) + the row's own part (partition and predictions, ``data[offsets[i]:offsets[i + 1]]``)."""

    keys: list[Key]
    data: bytes
    offsets: np.ndarray
    run_codes: np.ndarray
    run_parts: list[bytes]
    version_codes: np.ndarray
    version_names: list[str]
    scored_at_us: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    def record(self, i: int) -> bytes:
        return b"{" + self.run_parts[self.run_codes[i]] + self.data[self.offsets[i] : self.offsets[i + 1]]

    def items(self) -> Iterator[tuple[Key, bytes]]:
        offsets, codes, runs, data = self.offsets.tolist(), self.run_codes.tolist(), self.run_parts, self.data
        for i, key in enumerate(self.keys):
            yield key, b"{" + runs[codes[i]] + data[offsets[i] : offsets[i + 1]]


def encode_rows(table: pa.Table, layout: Layout) -> Encoded:
    """One record per row of `table` (see the module's docstring), in the table's order; built with Arrow compute
    (about a second per million rows of numbers), not a Python loop per row."""
    key_columns = [_texts(table.column(k)) for k in layout.key]
    keys: list[Key] = key_columns[0] if len(key_columns) == 1 else list(zip(*key_columns, strict=True))
    scored_us = _micros(table.column(SCORED_AT))
    # the run part (model, version, uri, run id, scored_at) is the same for every row of a run: encode it per run
    scored_text = pc.strftime(pc.cast(table.column(SCORED_AT), pa.timestamp("us", tz="UTC")), "%Y-%m-%dT%H:%M:%SZ")
    run_fields = [table.column(f) for f in _RUN_FIELDS if f != SCORED_AT] + [scored_text]
    run_key = pc.binary_join_element_wise(*[pc.cast(c, pa.string()) for c in run_fields], "\x1f")
    runs = pc.dictionary_encode(pc.fill_null(run_key, "")).combine_chunks()
    firsts = {}
    for row, code in enumerate(runs.indices.to_numpy().tolist()):
        if code not in firsts:
            firsts[code] = row
            if len(firsts) == len(runs.dictionary):
                break
    run_parts = [
        dumps({f: run_fields[j][firsts[code]].as_py() for j, f in enumerate(_RUN_FIELDS)})[1:-1]
        for code in range(len(runs.dictionary))
    ]
    parts: list[Any] = [',"partition":{']
    for i, name in enumerate(layout.partition):
        parts += [("," if i else "") + _field(name) + ":", json_texts(table.column(name))]
    parts.append('},"predictions":{')
    for i, name in enumerate(layout.predictions):
        parts += [("," if i else "") + _field(name) + ":", json_texts(table.column(name))]
    parts.append("}}")
    records = pc.binary_join_element_wise(*parts, "")
    records = records.combine_chunks() if isinstance(records, pa.ChunkedArray) else records
    records = pc.cast(records, pa.large_string()) if len(records) else records
    offsets = np.frombuffer(records.buffers()[1], dtype=np.int64 if records.type == pa.large_string() else np.int32)
    offsets = offsets[records.offset : records.offset + len(records) + 1].astype(np.int64)
    data = records.buffers()[2].to_pybytes() if len(records) else b""
    versions = pc.dictionary_encode(pc.cast(table.column(MODEL_VERSION), pa.string())).combine_chunks()
    return Encoded(
        keys,
        data,
        offsets,
        runs.indices.to_numpy(zero_copy_only=False).astype(np.int32),
        run_parts,
        versions.indices.to_numpy(zero_copy_only=False).astype(np.int32),
        [str(v) for v in versions.dictionary.to_pylist()],
        scored_us,
    )


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.date | dt.datetime) else value


@dataclasses.dataclass(frozen=True)
class Hit:
    """A key's precomputed record, with what decides whether it is current."""

    record: bytes
    model_version: str
    scored_at_us: int


class PrecomputedIndex:
    """Key -> the record of its most recently scored row, for one version of one table. Immutable once built: a new
    table version gets a new index, swapped in whole by the caller."""

    def __init__(
        self, encoded: Encoded, *, table_version: int | None, source: str, table_id: str = "", identity: Any = None
    ) -> None:
        order = np.argsort(encoded.scored_at_us, kind="stable")  # the newest row of a key is inserted last
        keys = encoded.keys
        self._position: dict[Key, int] = dict(zip([keys[i] for i in order.tolist()], order.tolist(), strict=True))
        self._data = encoded.data
        self._offsets = encoded.offsets
        self._run_codes = encoded.run_codes
        self._run_parts = encoded.run_parts
        self._scored_at_us = encoded.scored_at_us
        self._version_names = encoded.version_names
        self._version_codes = encoded.version_codes
        self.table_version = table_version
        self.source = source
        self.table_id = table_id
        """Delta's table id (the log's ``metaData.id``) of the table read: a table re-created at the same place has
        another, whatever its version number."""
        self.identity = identity
        """The :class:`~scoring.core.identity.TableIdentity` of the place the table was read from (None: unknown)."""
        self.rows = len(encoded)
        self.built_at = dt.datetime.now(dt.UTC)

    @classmethod
    def build(
        cls,
        table: pa.Table,
        layout: Layout,
        *,
        table_version: int | None,
        source: str,
        table_id: str = "",
        identity: Any = None,
    ) -> PrecomputedIndex:
        return cls(
            encode_rows(table, layout), table_version=table_version, source=source, table_id=table_id, identity=identity
        )

    def __len__(self) -> int:
        return len(self._position)

    def get(self, key: Key) -> Hit | None:
        i = self._position.get(key)
        if i is None:
            return None
        offsets = self._offsets
        return Hit(
            b"{" + self._run_parts[self._run_codes[i]] + self._data[offsets[i] : offsets[i + 1]],
            self._version_names[self._version_codes[i]],
            int(self._scored_at_us[i]),
        )

    def items(self) -> Iterator[tuple[Key, bytes]]:
        """Every key with its record (the newest row of each key)."""
        offsets, codes, runs, data = self._offsets, self._run_codes, self._run_parts, self._data
        for key, i in self._position.items():
            yield key, b"{" + runs[codes[i]] + data[offsets[i] : offsets[i + 1]]

    def model_versions(self) -> Mapping[str, int]:
        """Keys per model version (the newest row of each key)."""
        chosen = np.fromiter(self._position.values(), dtype=np.int64, count=len(self._position))
        counts = np.bincount(self._version_codes[chosen], minlength=len(self._version_names))
        return {name: int(c) for name, c in zip(self._version_names, counts, strict=True) if c}


def decode_hit(record: bytes) -> Hit:
    """A record read back from elsewhere (Redis): its model version and ``scored_at`` for the freshness check."""
    data = orjson.loads(record)
    scored = data.get(SCORED_AT)
    us = 0 if scored is None else int(dt.datetime.fromisoformat(scored.replace("Z", "+00:00")).timestamp() * 1e6)
    return Hit(record, str(data.get(MODEL_VERSION)), us)

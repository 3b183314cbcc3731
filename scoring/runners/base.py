"""The seam between what a job promises and the engine that carries it out.

A mode (:mod:`scoring.modes.batch`, :mod:`scoring.modes.stream`) owns its source, its sink and its transaction
identity; the unit of work (:func:`scoring.engine.unit.score_unit`) owns the order of the checks. Both reach rows only
through a :class:`Runner`: read a pinned snapshot into a frame, score a frame through the unit of work, commit it under
a transaction id, commit the set-aside rows under their own transaction id, and report a commit's metadata.

A *frame* is whatever the runner scores in parallel (a Spark DataFrame for :class:`scoring.runners.spark.SparkRunner`;
a stream of Arrow record batches for a single-process runner over delta-rs). The engine never looks inside one: it
hands frames back to the runner and to the gate functions of :mod:`scoring.engine.gates` that the runner evaluates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import pyarrow as pa

from scoring.core.score import ScoringSpec
from scoring.core.stamp import Lineage


class Runner(Protocol):
    """Reads, scores and commits rows for the engine. One per run (or per stream query).

    Every method either does what it says or raises; a library's exception is translated (:meth:`translate`) into a
    :class:`~scoring.errors.ScoringError` where its cause is known, so the modes above never see an engine's own
    exception types. Commits are idempotent by transaction id: committing the same ``(app id, version)`` twice writes
    once, and the second call reports the commit that landed (``WriteResult.committed`` False)."""

    name: str
    """The runner's name, for logs and summaries (``spark``)."""

    def read_snapshot(self, table: str, version: int | None) -> tuple[Any, int]:
        """The rows of `table` at `version` (the latest when None) as a frame, and the version read: a pinned
        snapshot, so a run reads exactly one version however long it takes."""
        ...

    def filter(self, frame: Any, condition: str) -> Any:
        """`frame` where the SQL boolean `condition` (``input.where``) holds, checked now: raises ``ValueError``
        with the engine's reason when `condition` is not a valid filter on `frame`."""
        ...

    def profile(
        self, frame: Any, keys: Sequence[str], partition_by: Sequence[str], valid: Any, fits: Any
    ) -> tuple[list[tuple[dict[str, Any], int]], int, int, str | None, int]:
        """One pass over the selected rows: per output partition ``(values, rows)``, the rows in all, the rows with
        invalid features (where `valid` does not hold, among those that `fits`), the first `keys` that appear twice
        (a text, or None) and the rows the output cannot take (where `fits`, None for all, does not hold)."""
        ...

    def rows_matching(
        self, output: Any, selected: Any, columns: Sequence[str], partition_by: Sequence[str]
    ) -> dict[tuple, int]:
        """Per output partition, the rows of `output` whose `columns` equal those of a row of `selected` (what a
        scoped replace of `selected` would replace)."""
        ...

    def read_latest(self, table: str) -> Any | None:
        """The rows of `table` at its latest version as a frame; None when there is no table there yet."""
        ...

    def count(self, frame: Any) -> int:
        """The rows of `frame`."""
        ...

    def project(self, frame: Any, columns: Sequence[str]) -> Any:
        """`frame` with only `columns`, in that order."""
        ...

    def empty_like(self, table: str) -> Any:
        """A frame with no rows, shaped like `table` (which exists)."""
        ...

    def sample(self, frame: Any, rows: int) -> pa.Table:
        """At most `rows` rows of `frame`, on this process (the probe scores them before the job starts)."""
        ...

    def score(self, frame: Any, spec: ScoringSpec, predictor_spec: Any, lineage: Lineage) -> Any:
        """`frame` (pass-through and feature columns) -> pass-through, prediction and lineage columns, lazily where
        the runner can: each worker builds its predictor from `predictor_spec` once and scores its rows in Arrow
        batches (:func:`scoring.core.score.score_batches`)."""
        ...

    def keep(self, frame: Any) -> Any:
        """`frame`, computed once and kept until :meth:`release` (the checks look at scores before they are
        committed, and the commit must write the same scores)."""
        ...

    def release(self, frame: Any) -> None:
        """Forget what :meth:`keep` kept."""
        ...

    def watch(self, reporter: Any, label: str) -> contextlib.AbstractContextManager[None]:
        """A block during which the runner reports the progress of its tasks to `reporter`."""
        ...

    def check_output_schema(self, table: str, schema: Any, partition_by: Sequence[str]) -> None:
        """Refuse (:class:`~scoring.errors.OutputError`) scores of `schema` that the output `table` cannot take."""
        ...

    def commit_replace(
        self,
        scored: Any,
        removed: Any,
        table: str,
        *,
        key: Sequence[str],
        partition_by: Sequence[str],
        partitions: Sequence[tuple[Any, ...]] | None,
        selected: Any,
        txn: Any,
        metadata: Mapping[str, Any],
    ) -> Any:
        """Replace exactly the `selected` ``(key, partition)`` rows of `table` with `scored` (deleting the `removed`
        ones, set aside this time) and keep every other row, in one commit carrying `txn` and `metadata`; a
        :class:`~scoring.adapters.delta.WriteResult`."""
        ...

    def commit_append(
        self, scored: Any, table: str, *, key: Sequence[str], partition_by: Sequence[str], txn: Any, metadata: Any
    ) -> Any:
        """Append `scored` to `table` in one commit carrying `txn` and `metadata`, at most once per `txn`; a
        :class:`~scoring.adapters.delta.WriteResult` (not committed, with the version that did, when `txn` already
        landed)."""
        ...

    def commit_quarantine(self, frame: Any, table: str, txn: Any) -> bool:
        """Append the set-aside rows `frame` to the quarantine `table` at most once per `txn` (its own transaction
        id, never the output's); whether this call committed."""
        ...

    def committed(self, table: str, txn: Any) -> Mapping[str, Any] | None:
        """The metadata of the commit of `table` that carries `txn`, or None when no commit carries it."""
        ...

    def translate(self, error: Exception) -> Exception:
        """`error` as the :class:`~scoring.errors.ScoringError` that names its cause and what to do, when the cause
        is known; else `error` itself."""
        ...

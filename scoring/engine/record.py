"""One record of a run: at once the summary a user reads, the Delta commit's ``userMetadata`` and the runs-table row.

Every shape of "what a run did" is derived from :class:`RunRecord` by a ``to_*`` method and read back by a ``from_*``
method, so the CLI, ``spark-submit``'s summary line, the commit metadata and the Airflow DAG's runs table can never
disagree.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from scoring import columns
from scoring.core.stamp import Lineage

_IN_COMMIT = (
    "job",
    "backend",
    "requested_model_uri",
    "input_table",
    "input_where",
    "output_table",
    "input_uri",
    "output_uri",
    "rows_read",
    "rows_rejected",
    "rows_quarantined",
    "rows_written",
    "partitions",
)
"""Fields of a record that go into the output commit's ``userMetadata`` (with the lineage and the quality summary):
all known before the commit."""


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What a run did. For every committed run, ``rows_read == rows_written + rows_rejected + rows_quarantined``, and
    ``rows_replaced + rows_kept`` is the number of output rows before the run."""

    job: str
    run_id: str
    model_name: str
    model_version: str
    model_uri: str
    requested_model_uri: str
    input_table: str
    input_version: int | None
    output_table: str
    scored_at: str
    """UTC time the run started (ISO 8601): the ``scored_at`` of every row it wrote."""
    backend: str
    input_where: str | None = None
    output_version_before: int | None = None
    output_version: int | None = None
    """Version of this run's own output commit (found by its transaction id, never "the latest")."""
    rows_read: int = 0
    """Rows selected from the input snapshot (after ``input.where``)."""
    rows_written: int = 0
    rows_rejected: int = 0
    """Rows with invalid features (``input.on_invalid_rows: skip``), in the quarantine table."""
    rows_quarantined: int = 0
    """Rows failing a data-quality gate or with invalid predictions, in the quarantine table."""
    rows_replaced: int = 0
    """Output rows of the selected (key, partition)s that this run replaced or removed."""
    rows_kept: int | None = None
    """Output rows this run left exactly as they were (every row it did not select)."""
    committed: bool = False
    """True when this run's output commit happened now; False when the run id had already committed before."""
    completed_earlier_attempt: bool = False
    """True when this run id's output had committed in an earlier attempt that did not finish (a crash after the
    commit): this attempt wrote what was missing (the quarantine rows) and scored nothing again."""
    elapsed_s: float = 0.0
    prediction_columns: tuple[str, ...] = ()
    partitions: tuple[Mapping[str, Any], ...] = ()
    """The output partitions the run selected rows in: ``{"values": {...}, "rows": N}``."""
    timings_s: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Seconds per phase: resolve, session, plan, runtime, score_write."""
    quality: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Gate reports by gate (``input``, ``output``): success, per-expectation statistics, rows quarantined."""
    quarantine_table: str | None = None
    input_uri: str = ""
    """The input table's canonical identity (:mod:`scoring.core.identity`): one spelling per place, for lineage."""
    output_uri: str = ""
    """The output table's canonical identity."""
    """Where rejected and quarantined rows went (None when there were none)."""
    warnings: tuple[str, ...] = ()

    @property
    def rows_per_s(self) -> float:
        """Scoring throughput: rows read per second of the scoring job (read, score, write)."""
        seconds = self.timings_s.get("score_write", self.elapsed_s)
        return self.rows_read / seconds if seconds > 0 else 0.0

    @property
    def lineage(self) -> dict[str, Any]:
        """The lineage values stamped on every row, JSON-ready (:meth:`scoring.core.stamp.Lineage.as_json_dict`)."""
        return Lineage(
            self.model_name,
            self.model_version,
            self.model_uri,
            self.input_version,
            self.run_id,
            dt.datetime.fromisoformat(self.scored_at),
        ).as_json_dict()

    # -- shapes ----------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The summary (``scoring run --json``, spark-submit's ``SCORING_SUMMARY`` line)."""
        out = dataclasses.asdict(self)
        out["rows_per_s"] = round(self.rows_per_s, 1)
        out["prediction_columns"] = list(self.prediction_columns)
        out["partitions"] = [dict(p) for p in self.partitions]
        out["warnings"] = list(self.warnings)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["prediction_columns"] = tuple(values.get("prediction_columns", ()))
        values["partitions"] = tuple(values.get("partitions", ()))
        values["warnings"] = tuple(values.get("warnings", ()))
        return cls(**values)

    def to_commit_metadata(self) -> dict[str, Any]:
        """The output commit's ``userMetadata``: the lineage, the job and its counts, the gates' outcome."""
        out = {**self.lineage, **{k: getattr(self, k) for k in _IN_COMMIT}}
        out["partitions"] = [dict(p) for p in self.partitions]
        out["quality"] = {
            which: {"success": r.get("success"), "quarantined": r.get("quarantined")}
            for which, r in self.quality.items()
        }
        return out

    @classmethod
    def from_commit(cls, metadata: Mapping[str, Any] | str, *, version: int | None = None) -> RunRecord:
        """A record rebuilt from an output commit's ``userMetadata`` (the runs table, when no summary survived)."""
        meta = json.loads(metadata) if isinstance(metadata, str) else dict(metadata)
        return cls(
            job=meta.get("job", ""),
            run_id=meta.get(columns.SCORING_RUN_ID, ""),
            model_name=meta.get(columns.MODEL_NAME, ""),
            model_version=str(meta.get(columns.MODEL_VERSION, "")),
            model_uri=meta.get(columns.MODEL_URI, ""),
            requested_model_uri=meta.get("requested_model_uri", ""),
            input_table=meta.get("input_table", ""),
            input_version=meta.get(columns.INPUT_VERSION),
            output_table=meta.get("output_table", ""),
            input_uri=meta.get("input_uri", ""),
            output_uri=meta.get("output_uri", ""),
            scored_at=meta.get(columns.SCORED_AT, ""),
            backend=meta.get("backend", ""),
            input_where=meta.get("input_where"),
            output_version=version,
            rows_read=int(meta.get("rows_read", 0)),
            rows_written=int(meta.get("rows_written", 0)),
            rows_rejected=int(meta.get("rows_rejected", 0)),
            rows_quarantined=int(meta.get("rows_quarantined", 0)),
            committed=True,
            partitions=tuple(meta.get("partitions", ())),
            quality={k: dict(v) for k, v in (meta.get("quality") or {}).items()},
        )

    def to_runs_row(self, **extra: Any) -> dict[str, Any]:
        """A row of the ``<output>_runs`` table (the Airflow DAG's ``publish``); `extra` adds the scheduler's columns
        (dag id, data interval, publish time)."""
        return {
            **extra,
            "run_id": self.run_id,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "model_uri": self.model_uri,
            "input_version": self.input_version,
            "output_version": self.output_version,
            "rows_read": self.rows_read,
            "rows_written": self.rows_written,
            "rows_rejected": self.rows_rejected,
            "rows_quarantined": self.rows_quarantined,
            "committed": self.committed,
            "quality": json.dumps(dict(self.quality), sort_keys=True, default=str),
        }

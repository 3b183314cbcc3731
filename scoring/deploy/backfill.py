"""Backfill a range of days, one partition per day, through the public API (``scoring.run``).

The logic behind ``notebooks/backfill.ipynb``, as plain functions so that it can be tested and the notebook stays thin:

    >>> from scoring import load_job_config
    >>> from scoring.deploy import backfill
    >>> config = load_job_config("conf/jobs/demo.yaml")
    >>> model = backfill.resolve(config)                      # once: models:/churn@champion -> models:/churn/3
    >>> day_list = backfill.days("2026-11-01", "2026-11-05")
    >>> plan = backfill.plan_backfill(
    ...     backfill.read_scored_partitions(config.output.table, "ds", day_list),
    ...     backfill.read_input_rows(config.input.table, "ds", day_list),
    ...     day_list, model.uri, force=False)
    >>> results = backfill.run_backfill("conf/jobs/demo.yaml", plan, model.uri, spark=backfill.spark_session(config))

Planning needs no Spark: the output and input tables are read with delta-rs. A day is skipped when its output partition
was already scored with the very model version the backfill uses, and reported ``no input`` when the input has no rows
for it. Every day is scored with the same pinned ``models:/<name>/<version>``, so an alias that moves mid-backfill
changes nothing. A day that fails is recorded and the backfill goes on; :func:`raise_for_failures` raises at the end.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import time
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from scoring import columns
from scoring.errors import ConfigError, InputError, ScoringError, require_extra

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from scoring.adapters.registry import ModelRef
    from scoring.config import JobConfig
    from scoring.modes.batch import RunSummary

_LOGGER = logging.getLogger(__name__)

Action = Literal["score", "skip", "no input"]
Status = Literal["scored", "skipped", "no input", "failed"]

SCORE: Action = "score"
"""Plan: the day has input rows and no partition scored with this model version (or ``force``)."""
SKIP: Action = "skip"
"""Plan: the day's output partition was already scored with this model version."""
NO_INPUT: Action = "no input"
"""Plan and status: the input table has no rows for the day; nothing is scored."""

SCORED: Status = "scored"
SKIPPED: Status = "skipped"
FAILED: Status = "failed"

_VERSIONED_URI = re.compile(r"models:/[^/@]+/\d+")


class BackfillError(ScoringError):
    """One or more days of a backfill failed; the others were scored (a failed day commits nothing)."""


@dataclasses.dataclass(frozen=True)
class PlanEntry:
    """What the backfill will do with one day, and why."""

    day: str
    """The partition value, ``YYYY-MM-DD``."""
    action: Action
    reason: str
    input_rows: int
    """Rows of the input table in this partition."""
    scored_with: tuple[str, ...] = ()
    """Model URIs (``models:/<name>/<version>``) the output partition holds now; empty when it is not scored."""


@dataclasses.dataclass(frozen=True)
class DayResult:
    """What happened to one day of a backfill."""

    day: str
    status: Status
    message: str = ""
    """Why a day was skipped, or the error of a failed day."""
    run_id: str | None = None
    rows_written: int | None = None
    elapsed_s: float | None = None


def days(start: str | dt.date, end: str | dt.date) -> list[str]:
    """Every day from `start` to `end`, both included, as ``YYYY-MM-DD`` strings."""
    first, last = _as_date(start, "start_date"), _as_date(end, "end_date")
    if last < first:
        raise ConfigError(
            f"end_date {last.isoformat()} is before start_date {first.isoformat()}",
            hint="give the range oldest day first; both days are included",
        )
    return [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def _as_date(value: str | dt.date, name: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value).strip())
    except ValueError:
        raise ConfigError(f"{name} {value!r} is not a date", hint="write it as YYYY-MM-DD, e.g. 2026-11-01") from None


def plan_backfill(
    scored: Mapping[str, Collection[str]],
    input_rows: Mapping[str, int],
    days: Sequence[str],
    model_uri: str,
    force: bool = False,
) -> list[PlanEntry]:
    """Decide, for each of `days` in order, whether to score it.

    `scored` maps a day to the model URIs its output partition holds (:func:`read_scored_partitions`); `input_rows`
    maps a day to its input row count (:func:`read_input_rows`); `model_uri` is the versioned URI the backfill
    scores with (``models:/<name>/<version>``: a version number alone repeats across models). A day without input
    rows is ``no input``; a day already scored with exactly `model_uri` is skipped unless `force`; every other day
    is scored.
    """
    plan = []
    for day in days:
        rows = int(input_rows.get(day, 0))
        holds = tuple(sorted(scored.get(day, ())))
        if rows == 0:
            reason = "the input table has no rows for this day"
            if holds:
                reason += f" (the output still holds rows scored with {', '.join(holds)})"
            plan.append(PlanEntry(day, NO_INPUT, reason, 0, holds))
        elif not holds:
            plan.append(PlanEntry(day, SCORE, "not scored yet", rows, holds))
        elif holds == (model_uri,):
            if force:
                plan.append(PlanEntry(day, SCORE, f"already scored with {model_uri}; force re-scores it", rows, holds))
            else:
                plan.append(PlanEntry(day, SKIP, f"already scored with {model_uri}", rows, holds))
        else:
            plan.append(PlanEntry(day, SCORE, f"scored with {', '.join(holds)}, not {model_uri}", rows, holds))
    return plan


def to_score(plan: Iterable[PlanEntry]) -> list[PlanEntry]:
    """The entries of `plan` that will be scored."""
    return [entry for entry in plan if entry.action == SCORE]


def check_job(config: JobConfig, partition_column: str) -> None:
    """Refuse a job whose output is not partitioned by `partition_column`: each day's run would replace it whole."""
    if partition_column not in config.output.partition_by:
        raise ConfigError(
            f"output.partition_by is {config.output.partition_by}: a backfill writes one {partition_column!r} "
            f"partition per day, so the output table {config.output.table} must be partitioned by it "
            "(an unpartitioned output is replaced whole by every run)",
            hint=f"add {partition_column} to output.partition_by, or set partition_column to one of its columns",
        )


def resolve(config: JobConfig) -> ModelRef:
    """Resolve the job's ``model.uri`` once, as the engine does; pin the result's ``uri`` for every day."""
    from scoring.adapters import registry

    return registry.resolve_model(config.model.uri, config.model.tracking_uri, config.model.registry_uri)


def spark_session(config: JobConfig):
    """One Spark session (with Delta) for the whole backfill, configured as ``scoring.run`` would configure it."""
    from scoring.adapters.spark import get_session

    conf = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(config.runtime.batch_rows), **config.spark.conf}
    return get_session(config.spark.master, conf, app_name=f"backfill:{config.name}")


def _day(value: Any) -> str:
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def _snapshot(path: str, key: str, partition_column: str):
    """The table at `path` (delta-rs, :mod:`scoring.adapters.deltalog`), checked to have `partition_column`; None
    when there is no table there."""
    from scoring.adapters import deltalog

    snap = deltalog.snapshot(path, key=key)
    if snap is not None and partition_column not in snap.columns:
        raise InputError(
            f"partition_column: {partition_column!r} is not a column of {path} (it has {list(snap.columns)})",
            hint="set partition_column to the column that holds the day",
        )
    return snap


def _read(path: str, wanted: Sequence[str], partition_column: str, days: Sequence[str] | None) -> pa.Table | None:
    """`wanted` columns of the Delta table at `path` (restricted to `days`), or None when there is no table."""
    from scoring.adapters import deltalog

    if _snapshot(path, "output.table", partition_column) is None:
        return None
    return deltalog.read(path, wanted, column=partition_column, values=days, key="output.table")


def read_scored_partitions(
    output_table: str, partition_column: str = "ds", days: Sequence[str] | None = None
) -> dict[str, set[str]]:
    """``{day: {model URI, ...}}`` for the partitions the output table holds (only `days`, when given).

    Read with delta-rs, no Spark. A missing output table holds nothing. Model URIs (``models:/<name>/<version>``)
    rather than bare versions, since version numbers repeat across models.
    """
    table = _read(output_table, [partition_column, columns.MODEL_URI], partition_column, days)
    if table is None:
        _LOGGER.info("output table %s does not exist yet: every day is to be scored", output_table)
        return {}
    scored: dict[str, set[str]] = {}
    for pair in table.group_by([partition_column, columns.MODEL_URI]).aggregate([]).to_pylist():
        scored.setdefault(_day(pair[partition_column]), set()).add(pair[columns.MODEL_URI])
    return scored


def read_input_rows(
    input_table: str, partition_column: str = "ds", days: Sequence[str] | None = None
) -> dict[str, int]:
    """``{day: rows}`` of the input table (only `days`, when given), read with delta-rs; days without rows are absent.

    When the table is partitioned by `partition_column`, rows are counted from the Delta log's file statistics (no
    data is read); otherwise the column is read.
    """
    from scoring.adapters import deltalog

    snap = _snapshot(input_table, "input.table", partition_column)
    if snap is None:
        raise InputError(f"input.table: {input_table} is not a Delta table", hint="check input.table in the job config")
    if partition_column in snap.partition_columns:
        return deltalog.partition_rows(snap, partition_column, days)
    return deltalog.value_rows(snap, partition_column, days)


def plan_frame(plan: Sequence[PlanEntry], partition_column: str = "ds") -> pd.DataFrame:
    """The plan as a table: one row per day, with the action, the input rows and the reason."""
    return pd.DataFrame(
        {
            partition_column: [e.day for e in plan],
            "action": [e.action for e in plan],
            "input_rows": [e.input_rows for e in plan],
            "reason": [e.reason for e in plan],
        }
    )


def _quoted(key: str, value: str) -> str:
    """A ``key=value`` override whose value YAML reads back as exactly this string (JSON strings are YAML)."""
    return f"{key}={json.dumps(value)}"


def day_overrides(config: JobConfig, day: str, versioned_uri: str, partition_column: str = "ds") -> list[str]:
    """The overrides that turn the job into the job for one day: its partition, the pinned model version, and,
    when the job names a ``run_id``, a run id of its own (one run id commits once, so days must not share it)."""
    where = f"{partition_column} = '{day}'"
    if config.input.where:
        where = f"({config.input.where}) AND {where}"
    extra = [_quoted("input.where", where), _quoted("model.uri", versioned_uri)]
    if config.run_id:
        extra.append(_quoted("run_id", f"{config.run_id}-{day}"))
    return extra


def _progress_bar(total: int, enabled: bool):
    with warnings.catch_warnings():
        # tqdm.auto warns, and falls back to a text bar, when ipywidgets is not installed
        warnings.simplefilter("ignore")
        require_extra("notebooks", "the backfill's progress bar")
        from tqdm.auto import tqdm
    return tqdm(total=total, unit="day", desc="backfill", disable=not enabled or total == 0)


def run_backfill(
    config_path: str | Path,
    plan: Sequence[PlanEntry],
    versioned_uri: str,
    overrides: Sequence[str] = (),
    spark=None,
    progress: bool = True,
    *,
    partition_column: str = "ds",
) -> list[DayResult]:
    """Run the planned days in order, each as ``scoring.run(load_job_config(config_path, overrides + day))``.

    Every day is scored with `versioned_uri` (``models:/<name>/<version>``, from :func:`resolve`) in the same Spark
    session (`spark`, started once from the job's settings when None and there is anything to score). A day that
    fails with a :class:`~scoring.errors.ScoringError` is recorded as ``failed`` (the engine committed nothing for it)
    and the backfill goes on; any other exception stops it. Returns one result per plan entry, in plan order.
    """
    import scoring

    if not _VERSIONED_URI.fullmatch(versioned_uri):
        raise ConfigError(
            f"a backfill pins one model version, got {versioned_uri!r}",
            hint="pass the resolved URI, models:/<name>/<version> (backfill.resolve(config).uri)",
        )
    base = scoring.load_job_config(config_path, overrides)
    check_job(base, partition_column)
    work = to_score(plan)
    if work and spark is None:
        spark = spark_session(base)
    results: dict[str, DayResult] = {}
    for entry in plan:
        if entry.action != SCORE:
            results[entry.day] = DayResult(entry.day, SKIPPED if entry.action == SKIP else NO_INPUT, entry.reason)
    bar = _progress_bar(len(work), progress)
    try:
        for entry in work:
            bar.set_postfix_str(entry.day)
            results[entry.day] = _run_day(
                base, config_path, entry.day, versioned_uri, overrides, spark, partition_column
            )
            bar.update()
    finally:
        bar.close()
    return [results[entry.day] for entry in plan]


def _run_day(
    base: JobConfig,
    config_path: str | Path,
    day: str,
    versioned_uri: str,
    overrides: Sequence[str],
    spark,
    partition_column: str,
) -> DayResult:
    import scoring

    started = time.perf_counter()
    try:
        config = scoring.load_job_config(
            config_path, [*overrides, *day_overrides(base, day, versioned_uri, partition_column)]
        )
        summary: RunSummary = scoring.run(config, spark=spark)
    except ScoringError as e:
        _LOGGER.warning("backfill: %s failed: %s", day, e.message)
        return DayResult(day, FAILED, f"{type(e).__name__}: {e.message}", elapsed_s=_since(started))
    if not summary.committed:
        message = f"run {summary.run_id} had already committed; nothing was written again"
        return DayResult(day, SKIPPED, message, summary.run_id, 0, _since(started))
    _LOGGER.info("backfill: %s scored, %d rows (run %s)", day, summary.rows_written, summary.run_id)
    return DayResult(day, SCORED, "", summary.run_id, summary.rows_written, _since(started))


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)


def summary_frame(
    plan: Sequence[PlanEntry], results: Sequence[DayResult], output_table: str, partition_column: str = "ds"
) -> pd.DataFrame:
    """One row per day: status, and the rows, model version(s) and run id(s) read back from the output table."""
    day_list = [entry.day for entry in plan]
    wanted = [partition_column, columns.MODEL_VERSION, columns.SCORING_RUN_ID]
    table = _read(output_table, wanted, partition_column, day_list)
    held: dict[str, list[tuple[str, str, int]]] = {}
    if table is not None:
        groups = table.group_by(wanted).aggregate([([], "count_all")]).to_pylist()
        for g in groups:
            held.setdefault(_day(g[partition_column]), []).append(
                (g[columns.MODEL_VERSION], g[columns.SCORING_RUN_ID], g["count_all"])
            )
    by_day = {r.day: r for r in results}
    rows = []
    for day in day_list:
        result = by_day.get(day)
        found = sorted(held.get(day, []))
        rows.append(
            {
                partition_column: day,
                "status": result.status if result else "not run",
                "rows": sum(n for _, _, n in found),
                "model_version": ", ".join(sorted({v for v, _, _ in found})),
                "run_id": ", ".join(sorted({r for _, r, _ in found})),
                "message": result.message if result else "",
            }
        )
    return pd.DataFrame(rows)


def raise_for_failures(results: Sequence[DayResult]) -> None:
    """Raise a :class:`BackfillError` naming every failed day, if any failed."""
    failed = [r for r in results if r.status == FAILED]
    if failed:
        lines = "\n".join(f"  {r.day}: {r.message}" for r in failed)
        raise BackfillError(
            f"backfill: {len(failed)} of {len(results)} day(s) failed (nothing was written for them):\n{lines}",
            hint="fix the cause and run the backfill again (without force, the days already scored with this version "
            "are skipped)",
        )


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def score_column(schema: pa.Schema, exclude: Collection[str] = ()) -> str | None:
    """The prediction column whose distribution is worth plotting: the first floating (or floating-array, e.g.
    ``probabilities``) column, else the first integer one (e.g. a label). Lineage and `exclude` columns are not
    predictions. None when there is no numeric prediction column."""
    skip = {*columns.LINEAGE, *exclude}
    fallback = None
    for field in schema:
        if field.name in skip:
            continue
        kind = field.type
        if _is_list(kind):
            kind = kind.value_type
        if pa.types.is_floating(kind):
            return field.name
        if fallback is None and (pa.types.is_integer(kind) or pa.types.is_boolean(kind)):
            fallback = field.name
    return fallback


def score_values(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Numbers to plot: the values, or for an array column the last element of each row (for class probabilities,
    the positive class). Nulls and empty arrays are left out."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    kind = values.type
    if _is_list(kind):
        if pa.types.is_fixed_size_list(kind):
            values = values.cast(pa.list_(kind.value_type))
        offsets = values.offsets.to_numpy()
        present = (offsets[1:] > offsets[:-1]) & values.is_valid().to_numpy(zero_copy_only=False)
        inner = values.values.to_numpy(zero_copy_only=False).astype(np.float64)
        return inner[(offsets[1:] - 1)[present]]
    return values.drop_null().to_numpy(zero_copy_only=False).astype(np.float64)


def plot_distribution(
    output_table: str, days: Sequence[str], partition_column: str = "ds", *, exclude: Collection[str] = ()
) -> Figure | None:
    """A box plot of the scores per day, read from the output table with delta-rs; None when nothing is there.

    The column plotted is :func:`score_column`'s choice (`exclude`: the key columns); for an array column, each row's
    last element (:func:`score_values`).
    """
    from matplotlib.figure import Figure

    snap = _snapshot(output_table, "output.table", partition_column)
    if snap is None:
        return None
    schema = snap.dataset().schema
    column = score_column(schema, {partition_column, *exclude})
    if column is None:
        _LOGGER.warning("output table %s has no numeric prediction column to plot", output_table)
        return None
    table = _read(output_table, [partition_column, column, columns.MODEL_VERSION], partition_column, days)
    if table is None or table.num_rows == 0:
        return None
    day_values = np.array([_day(d) for d in table.column(partition_column).to_pylist()])
    shown = [d for d in days if (day_values == d).any()]
    data = [score_values(table.filter(pa.array(day_values == d)).column(column)) for d in shown]
    label = f"{column}[-1]" if _is_list(schema.field(column).type) else column
    versions = ", ".join(sorted(set(table.column(columns.MODEL_VERSION).to_pylist())))
    figure = Figure(figsize=(max(6.0, 0.6 * len(shown) + 2.0), 4.0), layout="constrained")
    ax = figure.subplots()
    ax.boxplot(data, tick_labels=shown, showfliers=False)
    ax.set_xlabel(partition_column)
    ax.set_ylabel(label)
    ax.set_title(f"{label} per {partition_column} (model version {versions})")
    if len(shown) > 8:
        ax.tick_params(axis="x", labelrotation=60)
    return figure


def save_frame(frame: pd.DataFrame, output_dir: str | Path, name: str) -> Path:
    """Write `frame` as JSON records to ``output_dir/name`` and return the path."""
    path = Path(output_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_json(path, orient="records", indent=1)
    return path


def save_figure(figure: Figure, output_dir: str | Path, name: str) -> Path:
    """Write `figure` (PNG, by the name's suffix) to ``output_dir/name`` and return the path."""
    path = Path(output_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path

"""A stream query's checkpoint and its Delta source's log: the query id Spark keeps, the source versions a
micro-batch read, the table id behind a source path, and each source file's commit time (a row's lag where the job
names no event-time column). Read as small files through Spark's file system (:func:`scoring.adapters.spark.read_text`);
nothing here writes."""

from __future__ import annotations

import contextlib
import json
import posixpath
from typing import Any

from scoring.adapters import deltalog
from scoring.errors import OutputError


def query_id(spark, checkpoint: str) -> str:
    """The query's id, which Spark writes to the checkpoint when the query first starts and keeps for its life."""
    from scoring.adapters.spark import read_text

    text = read_text(spark, f"{checkpoint.rstrip('/')}/metadata")
    if text is None:
        raise OutputError(
            f"stream.checkpoint: {checkpoint} has no metadata file although the query started",
            hint="point stream.checkpoint at a folder only this query uses",
        )
    try:
        return str(json.loads(text)["id"])
    except (ValueError, KeyError, TypeError) as e:
        from scoring.modes.stream_failures import checkpoint_error

        raise checkpoint_error(f"{checkpoint.rstrip('/')}/metadata", f"no query id in it: {e!r}") from None


def offset(spark, checkpoint: str, batch_id: int) -> dict[str, Any] | None:
    from scoring.adapters.spark import read_text

    if batch_id < 0:
        return None
    text = read_text(spark, f"{checkpoint.rstrip('/')}/offsets/{batch_id}")
    if text is None:
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    # "v1", the batch's metadata, then one offset per source (this query has one).
    try:
        return json.loads(lines[2]) if len(lines) >= 3 and lines[2].startswith("{") else None
    except ValueError as e:
        from scoring.modes.stream_failures import checkpoint_error

        raise checkpoint_error(f"{checkpoint.rstrip('/')}/offsets/{batch_id}", f"not JSON: {e}") from None


def version_range(spark, checkpoint: str, batch_id: int, table: str | None = None) -> tuple[int | None, int | None]:
    """The Delta source versions micro-batch `batch_id` read, from the checkpoint's offset log: ``(from, to)``.
    Rows of the table's starting snapshot count from version 0.

    With `table` (the source), also that the offset belongs to the table now at that place: a source deleted and
    created again while the query runs keeps being read by Spark's Delta source under the old table's offsets
    (its versions restart, so rows of the new table are skipped, silently); that micro-batch is refused instead."""
    end = offset(spark, checkpoint, batch_id)
    if end is None:
        return None, None
    if table is not None and end.get("reservoirId"):
        now = table_id(spark, table)
        if now is not None and now != end["reservoirId"]:
            from scoring.modes.stream_failures import recreated_source_error

            raise recreated_source_error(
                table, checkpoint, f"the checkpoint read table id {end['reservoirId']}, the table there now is {now}"
            )
    prev = offset(spark, checkpoint, batch_id - 1)
    version, index, starting = int(end["reservoirVersion"]), int(end["index"]), bool(end["isStartingVersion"])
    to = version if starting or index != -1 else version - 1
    if prev is None or starting or prev.get("isStartingVersion"):
        return 0, max(to, 0)
    return min(int(prev["reservoirVersion"]), to), to


def table_id(spark, table: str) -> str | None:
    """Delta's id of the table now at `table` (``metaData.id`` of its log's first commit: one small file), or None
    when that commit is gone (log clean-up) or unreadable."""
    from scoring.adapters.spark import read_text

    try:
        text = read_text(spark, f"{table.rstrip('/')}/_delta_log/{0:020d}.json")
    except Exception:  # noqa: BLE001 - the check is best effort; Delta's own checks still apply
        return None
    for line in (text or "").splitlines():
        if '"metaData"' in line:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                return str(json.loads(line)["metaData"]["id"])
    return None


def commit_times(spark, table: str, version_from: int | None, version_to: int | None, *, most: int = 200) -> dict:
    """File name -> commit time (epoch ms) of the commits `version_from`..`version_to` of the Delta table (the newest
    `most` of them): each row's source commit time, where the job names no event-time column."""
    from scoring.adapters.spark import read_text

    if version_from is None or version_to is None:
        return {}
    times: dict[str, int] = {}
    for version in range(max(version_from, version_to - most + 1), version_to + 1):
        text = read_text(spark, f"{table.rstrip('/')}/_delta_log/{version:020d}.json")
        if text is None:
            continue
        at, added = deltalog.commit_summary(text)
        for name in map(posixpath.basename, added):
            if at is not None:
                times[name] = int(at)
    return times

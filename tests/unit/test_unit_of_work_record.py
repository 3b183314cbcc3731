"""One record for a batch run and a micro-batch: the shapes each gives (summary, commit metadata) and the one
rendering the CLI and the logs use for a run and for a stream query."""

from __future__ import annotations

from scoring import columns
from scoring.engine.record import RunRecord, StreamRecord, summary_lines, summary_rows, summary_title


def _run(**changes) -> RunRecord:
    values = {
        "job": "j",
        "run_id": "r1",
        "model_name": "m",
        "model_version": "3",
        "model_uri": "models:/m/3",
        "requested_model_uri": "models:/m@champion",
        "input_table": "/lake/in",
        "input_version": 7,
        "output_table": "/lake/out",
        "scored_at": "2026-12-01T00:00:00+00:00",
        "backend": "embedded",
        **changes,
    }
    return RunRecord(**values)


def _query() -> StreamRecord:
    return StreamRecord(
        job="j",
        query_id="q",
        checkpoint="/ck",
        source="delta:file:///lake/in",
        sinks=("delta",),
        output_table="/lake/out",
        trigger="micro-batch",
        model_uri="models:/m@champion",
        model_versions=("3",),
        batches=2,
        batches_skipped=0,
        rows_in=10,
        rows_written=9,
        rows_quarantined=1,
        lag_p50_s=None,
        lag_p95_s=None,
        lag_p99_s=None,
        lag_max_s=None,
        elapsed_s=2.0,
        stopped="drained",
    )


def test_a_batch_runs_summary_carries_no_stream_fields():
    summary = _run().to_dict()
    assert not {"mode", "stream_query_id", "batch_id", "checkpoint", "source", "source_version_from"} & set(summary)
    assert RunRecord.from_dict(summary) == _run()


def test_a_micro_batchs_commit_metadata_names_its_query_batch_and_source_versions():
    record = _run(
        mode="stream",
        run_id="q:4",
        stream_query_id="q",
        batch_id=4,
        checkpoint="/ck",
        source="delta:file:///lake/in",
        source_version_from=5,
        rows_read=10,
        rows_quarantined=1,
    )
    meta = record.to_commit_metadata()
    assert meta["mode"] == "stream" and meta["stream_query_id"] == "q" and meta["batch_id"] == 4
    assert meta[columns.SOURCE_VERSION_FROM] == 5 and meta[columns.INPUT_VERSION] == 7
    assert meta[columns.SCORING_RUN_ID] == "q:4" and meta["rows_read"] == 10 and meta["rows_quarantined"] == 1
    assert meta["requested_model_uri"] == "models:/m@champion" and meta[columns.MODEL_VERSION] == "3"


def test_a_run_and_a_query_render_through_one_function():
    assert summary_title(_run()) == "scoring run r1"
    assert summary_title(_query()) == "scoring stream q"
    assert ("rows read", "0") in summary_rows(_run())
    assert ("rows set aside", "1") in summary_rows(_query())
    lines = summary_lines(_query())
    assert lines[0] == "scoring stream q" and any(line.split() == ["micro-batches", "2"] for line in lines)
    assert _query().to_dict()["rows_per_s"] == 5.0

"""Promises of the README's "Streaming" section and docs/streaming.md that no other test proves: each test quotes its sentence and checks
it against real Spark Structured Streaming, real Delta tables read back with delta-rs, a real MLflow registry, or the
real ``scoring stream`` command."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from scoring import build_job_config, columns
from scoring.config import StreamConfig
from scoring.engine.progress import LogReporter
from scoring.errors import ConfigError, QualityError
from scoring.modes import stream
from scoring.tools import demo
from tests.integration.conftest import delta_version, make_table, read_delta

SCORING = [sys.executable, "-m", "scoring.cli"]


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` in Prometheus text `text` whose labels include `labels` (0 when none)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def _job(lake, tmp_path, name="stream", **sections):
    tree = lake.job(str(tmp_path / f"{name}_out"), **sections)
    tree["input"] = {**tree["input"], "table": str(tmp_path / f"{name}_src")}
    tree["stream"] = {"checkpoint": str(tmp_path / f"{name}_ck"), **sections.get("stream", {})}
    return build_job_config(tree)


def _chunk(rows: int, seed: int, first_key: int, *, f00: float | None = None) -> pa.Table:
    """`rows` rows keyed first_key.. (f00 set to one value when given)."""
    table = make_table(rows, seed=seed)
    keys = pa.array(np.arange(first_key, first_key + rows, dtype=np.int64))
    table = table.set_column(table.schema.get_field_index("customer_id"), "customer_id", keys)
    if f00 is not None:
        table = table.set_column(table.schema.get_field_index("f00"), "f00", pa.array(np.full(rows, f00)))
    return table


def _append_file(path, table: pa.Table) -> None:
    """One append = one source version = one file (unpartitioned): one micro-batch with max_files_per_trigger 1."""
    demo.write_delta(path, table, mode="append", partition_by=())


# -- refused at start ----------------------------------------------------------------------------------------------


def test_follow_alias_with_a_triton_sidecar_the_query_starts_itself_is_refused_at_start(spark, lake, tmp_path):
    """docs/streaming.md, What a stream promises: "(`follow_alias` with a Triton sidecar that the query starts itself is
    refused: that server serves one version.)"; Failures: "a clear error at start ..., with nothing written"."""
    config = _job(
        lake,
        tmp_path,
        runtime={"backend": "triton", "triton": {"launch": "auto"}},
        stream={"follow_alias": True},
    )
    _append_file(config.input.table, _chunk(20, 31, 0))
    running = {q.id for q in spark.streams.active}
    with pytest.raises(ConfigError, match=r"stream.follow_alias with runtime.triton.launch: auto") as refused:
        stream.run(config, spark=spark, available_now=True)
    assert "serves only the version resolved at start" in str(refused.value)
    assert "launch: external" in str(refused.value)  # what to do instead
    assert {q.id for q in spark.streams.active} == running  # no query started
    assert delta_version(config.output.table) is None and delta_version(config.quarantine_table) is None
    assert not Path(config.stream.checkpoint).exists()


# -- gates per micro-batch -----------------------------------------------------------------------------------------


def test_table_level_expectations_apply_to_each_micro_batch_as_a_whole(spark, lake, tmp_path):
    """docs/streaming.md, What a stream promises: "Row-level expectations apply to each row; table-level ones
    (`row_count_between`, `mean_between`, `unique`) to each micro-batch as a whole, so bounds meant for a nightly
    table do not fit a stream."."""
    gate = {
        "policy": "fail",
        "expectations": [
            {"type": "row_count_between", "min": 50, "max": 150},
            {"type": "unique", "column": "customer_id"},
            {"type": "mean_between", "column": "f00", "min": 1.5, "max": 3.5},
        ],
    }
    config = _job(lake, tmp_path, stream={"max_files_per_trigger": 1}, quality={"input": gate})
    source = config.input.table
    _append_file(source, _chunk(100, 41, 0, f00=3.0))  # micro-batch 0: keys 0..99, mean of f00 3.0
    again = _chunk(100, 42, 0, f00=1.0)
    keys = again.column("customer_id").to_numpy().copy()
    keys[50] = 7  # micro-batch 1: keys 0..99 again but 50, with 7 twice; mean of f00 1.0
    _append_file(source, again.set_column(0, "customer_id", pa.array(keys)))

    with pytest.raises(QualityError, match=r"micro-batch 1 .*nothing of this micro-batch was committed") as failed:
        stream.run(config, spark=spark, available_now=True)
    message = str(failed.value)
    # micro-batch 0 passed alone; micro-batch 1 fails as a whole of its own 100 rows: its own repeated key (not the
    # keys it shares with micro-batch 0) and its own mean (the mean of every row read, 2.0, is within the bounds);
    # 200 rows read in all is more than row_count_between allows, but no micro-batch holds more than 150
    assert "unique(column=customer_id): 2 of 100 rows failed" in message and "[7, 7]" in message, message
    assert "mean_between(column=f00, min=1.5, max=3.5): observed 1.0" in message, message
    assert "row_count_between" not in message, message
    assert 1.5 <= read_delta(source).column("f00").to_numpy().mean() <= 3.5
    out = read_delta(config.output.table)
    assert sorted(out.column("customer_id").to_pylist()) == list(range(100))  # micro-batch 0, committed


# -- what a running stream reports ---------------------------------------------------------------------------------


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


BAD = {0: [3, 40, 77], 1: [5, 6]}
"""Per micro-batch: the rows whose f03 is infinite (set aside in the quarantine table)."""
ROWS = 100


@pytest.fixture(scope="module")
def reported(spark, lake, tmp_path_factory):
    """One stream of two micro-batches, each with rows of invalid features set aside (input.on_invalid_rows: skip),
    with metrics_port 0, run until it drained: its progress lines, its /metrics text scraped before the query was
    closed, and its summary."""
    tmp_path = tmp_path_factory.mktemp("reported")
    config = _job(
        lake, tmp_path, input={"on_invalid_rows": "skip"}, stream={"max_files_per_trigger": 1, "metrics_port": 0}
    )
    for batch, bad in BAD.items():
        chunk = _chunk(ROWS, 50 + batch, 1000 * batch)
        f03 = chunk.column("f03").to_numpy().copy()
        f03[bad] = np.inf
        _append_file(config.input.table, chunk.set_column(chunk.schema.get_field_index("f03"), "f03", pa.array(f03)))
    lines = _Lines()
    logger = logging.getLogger("scoring.engine.progress")
    logger.addHandler(lines)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        handle = stream.start(config, spark=spark, reporter=LogReporter(), available_now=True)
        try:
            assert handle.await_termination(300), "the stream did not drain"
            url = f"http://127.0.0.1:{handle.metrics.port}/metrics"
            text = urllib.request.urlopen(url, timeout=10).read().decode()
        finally:
            record = handle.close()
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    return config, lines.lines, text, record


PROGRESS = re.compile(
    r"batch (?P<id>\d+): (?P<rows>[\d,]+) rows in (?P<s>[\d.]+) s \((?P<rate>[\d,]+) rows/s\)"
    r"(?:, (?P<aside>[\d,]+) set aside)?, lag p50 (?P<p50>[\d.]+) s p95 (?P<p95>[\d.]+) s, model v(?P<version>\S+)$"
)


def test_each_micro_batch_prints_one_line_with_rows_rate_set_aside_lag_and_model_version(reported):
    """README, Streaming: "Each micro-batch prints one line (rows, rows/s, rows set aside, lag p50/p95, model
    version)"."""
    config, lines, _, record = reported
    batch_lines = [line for line in lines if line.startswith("batch ")]
    assert len(batch_lines) == len(BAD) == record.batches, lines
    (version,) = record.model_versions
    for batch_id, line in enumerate(batch_lines):
        found = PROGRESS.fullmatch(line)
        assert found is not None, line
        assert int(found["id"]) == batch_id
        assert int(found["rows"].replace(",", "")) == ROWS
        assert int(found["aside"].replace(",", "")) == len(BAD[batch_id])
        assert float(found["p50"]) <= float(found["p95"])
        assert found["version"] == version
        rate, seconds = int(found["rate"].replace(",", "")), float(found["s"])
        assert ROWS / (seconds + 0.005) - 1 <= rate <= ROWS / max(seconds - 0.005, 1e-9) + 1  # rows / s, rounded
    quarantined = read_delta(config.quarantine_table)
    assert quarantined.num_rows == sum(map(len, BAD.values()))


def test_quarantined_rows_batch_durations_model_version_and_batches_by_outcome_are_exported(reported):
    """docs/streaming.md, What a stream promises: "with `metrics_port`, Prometheus metrics ..., `_rows_quarantined_total`,
    `_batches_total{outcome}`, `scoring_stream_batch_duration_seconds` and `scoring_stream_lag_seconds`
    (histograms), and `scoring_stream_model_version`"."""
    config, lines, text, record = reported
    job = config.name
    aside = sum(map(len, BAD.values()))
    assert metric(text, "scoring_stream_rows_quarantined_total", job=job) == aside == record.rows_quarantined
    assert metric(text, "scoring_stream_rows_in_total", job=job) == len(BAD) * ROWS
    assert metric(text, "scoring_stream_rows_out_total", job=job) == len(BAD) * ROWS - aside
    assert metric(text, "scoring_stream_batches_total", job=job, outcome="committed") == len(BAD)
    assert metric(text, "scoring_stream_batches_total", job=job) == len(BAD)  # no other outcome
    assert metric(text, "scoring_stream_batch_duration_seconds_count", job=job) == len(BAD)
    # each micro-batch's duration as its progress line gives it (to the line's 2 decimals)
    said = [float(PROGRESS.fullmatch(line)["s"]) for line in lines if line.startswith("batch ")]
    assert metric(text, "scoring_stream_batch_duration_seconds_sum", job=job) == pytest.approx(sum(said), abs=0.011)
    assert metric(text, "scoring_stream_batch_duration_seconds_bucket", job=job, le="+Inf") == len(BAD)
    (version,) = record.model_versions
    assert metric(text, "scoring_stream_model_version", job=job) == float(version)
    out = read_delta(config.output.table)
    assert set(out.column(columns.MODEL_VERSION).to_pylist()) == {version}


# -- the command ---------------------------------------------------------------------------------------------------


def test_scoring_stream_help_lists_every_key_of_the_stream_section():
    """docs/streaming.md, The `stream:` section: "Every key is checked as strictly as the rest of the config (`scoring stream
    --help` lists them)"."""
    done = subprocess.run(
        [*SCORING, "stream", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stderr
    nested = {"kafka", "kafka_sink"}  # sections of their own: named as stream.<name>.*
    named = re.findall(r"stream\.([a-z_]+)", done.stdout)
    missing = [k for k in StreamConfig.model_fields if k not in named]
    assert missing == [], f"not in scoring stream --help: {missing}"
    for section in nested:
        assert f"stream.{section}.*" in done.stdout

"""A stream scored by a real Triton server that dies mid-stream: the query stops with a transient error after the
retries, having committed nothing of the failed micro-batch, and a restart from the checkpoint (against the server
started again) loses and repeats nothing."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from scoring import build_job_config
from scoring.errors import BackendUnavailableError, is_transient
from scoring.launchers import triton_server as ts
from scoring.modes import stream
from scoring.tools import demo
from tests.integration.conftest import delta_version, make_table, read_delta

pytest_plugins = ["tests.integration.triton_fixtures"]


def _chunk(seed: int, first: int, rows: int = 100) -> pa.Table:
    table = make_table(rows, seed=seed)
    keys = pa.array(np.arange(first, first + rows, dtype=np.int64))
    return table.set_column(table.schema.get_field_index("customer_id"), "customer_id", keys)


def _config(lake, tmp_path, url: str):
    tree = lake.job(str(tmp_path / "out"), input={"table": str(tmp_path / "src")})
    tree["runtime"] = {"backend": "triton", "triton": {"url": url, "max_retries": 1, "timeout_s": 3}}
    tree["stream"] = {"checkpoint": str(tmp_path / "ck"), "max_files_per_trigger": 1, "interval_s": 0.2}
    return build_job_config(tree)


def test_a_triton_outage_stops_the_query_and_a_restart_resumes_without_loss(spark, lake, tmp_path, triton_repository):
    import time

    src = tmp_path / "src"
    demo.write_delta(src, _chunk(51, 0), mode="append", partition_by=())
    server = ts.start_server(triton_repository, ready_timeout_s=120)
    try:
        handle = stream.start(_config(lake, tmp_path, server.grpc_url), spark=spark)
        deadline = time.monotonic() + 120
        while handle.scorer.batches < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert handle.scorer.batches == 1
        ts.stop_server(server, timeout_s=0)  # killed
        committed = delta_version(tmp_path / "out")
        demo.write_delta(src, _chunk(52, 1000), mode="append", partition_by=())
        with pytest.raises(BackendUnavailableError) as failed:
            handle.await_termination(180)
        assert is_transient(failed.value) and "micro-batch 1" in str(failed.value)
        with pytest.raises(BackendUnavailableError):
            handle.close()
        assert delta_version(tmp_path / "out") == committed  # nothing of the failed micro-batch
    finally:
        ts.stop_server(server, timeout_s=0)

    demo.write_delta(src, _chunk(53, 2000), mode="append", partition_by=())
    with ts.running_server(triton_repository, ready_timeout_s=120) as again:
        record = stream.run(_config(lake, tmp_path, again.grpc_url), spark=spark, available_now=True)
    keys = read_delta(tmp_path / "out").column("customer_id").to_pylist()
    assert len(keys) == len(set(keys)) == 300
    assert record.batches == 2 and record.rows_written == 200

"""The mode contract: what every mode promises about the rows it commits, whatever reads its source and commits its
sink. Written once, in :class:`ModeContract`; each mode is one subclass that says how to score a job and how to score
it again (anchor: ibis ``ibis/backends/tests/base.py``, ``BackendTest``). Subclasses here: the batch job and the
stream (``available_now``), both on the session's Spark, both read back with delta-rs, an independent reader.

The promises: lineage on every output row; predictions equal to the model's own predict; rows with invalid features
set aside exactly once, however often the unit of work is retried (a batch run id, a micro-batch); a failing gate commits nothing; a unit of work
run again replaces exactly its own rows (a batch re-run replaces the rows it selected, a replayed micro-batch is not
written twice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from scoring import build_job_config, columns
from scoring.config import JobConfig
from scoring.errors import QualityError
from scoring.modes import batch, stream
from scoring.tools import demo
from tests.integration.conftest import delta_version, features_of, make_table, read_delta

ROWS = 40
"""Rows of the one small input table each test scores."""
BAD = (3, 17)
"""Positions of the rows a test gives an invalid (infinite) feature."""


def _input(rows: int = ROWS, seed: int = 41) -> pa.Table:
    table = make_table(rows, seed=seed)
    keys = pa.array(np.arange(rows, dtype=np.int64))
    return table.set_column(table.schema.get_field_index("customer_id"), "customer_id", keys)


def _with_invalid(table: pa.Table) -> pa.Table:
    f02 = table.column("f02").to_numpy().copy()
    f02[list(BAD)] = np.inf
    return table.set_column(table.schema.get_field_index("f02"), "f02", pa.array(f02))


def _model_predict(model_uri: str, table: pa.Table) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(mlflow.onnx.load_model(model_uri).SerializeToString())
    return session.run(["probabilities"], {"X": features_of(table).astype(np.float32)})[0]


class ModeContract:
    """The tests every mode passes. A subclass says how to build its job config and how to score it."""

    mode: ClassVar[str]

    def config(self, lake, tmp_path: Path, **sections: Any) -> JobConfig:
        """The job over the test's own source table (``tmp_path/src``) into ``tmp_path/out``."""
        tree = lake.job(str(tmp_path / "out"), **sections)
        tree["input"] = {**tree["input"], "table": str(tmp_path / "src")}
        return build_job_config(self.adjust(tree, tmp_path))

    def adjust(self, tree: dict, tmp_path: Path) -> dict:
        return tree

    def score(self, config: JobConfig, spark) -> Any:
        """Run the mode's unit(s) of work over everything in the source; the record."""
        raise NotImplementedError

    def score_again(self, config: JobConfig, spark, first: Any) -> Any:
        """Run the same unit of work once more, as a retry or a replay would; the record."""
        raise NotImplementedError

    def retry(self, config: JobConfig, spark, first: Any) -> Any:
        """Run the same unit of work again under the same identity, as a retry after a crash would; the record."""
        return self.score_again(config, spark, first)

    def run_ids(self, record: Any) -> set[str]:
        """The ``scoring_run_id`` values the record's rows may carry (a prefix match for a stream's micro-batches)."""
        raise NotImplementedError

    # -- the contract ----------------------------------------------------------------------------------------------

    def test_every_row_carries_its_lineage_and_the_models_own_prediction(self, spark, lake, tmp_path):
        config = self.config(lake, tmp_path)
        source = _input()
        demo.write_delta(config.input.table, source, partition_by=())
        record = self.score(config, spark)
        out = read_delta(config.output.table).sort_by("customer_id")
        assert out.column("customer_id").to_pylist() == list(range(ROWS))
        for name in columns.LINEAGE:
            assert out.column(name).null_count == 0, f"{self.mode}: lineage column {name} has nulls"
        model_uri = out.column(columns.MODEL_URI)[0].as_py()
        assert set(out.column(columns.MODEL_URI).to_pylist()) == {model_uri}
        assert model_uri.startswith("models:/onnx_clf/")
        assert set(out.column(columns.MODEL_VERSION).to_pylist()) == {model_uri.rsplit("/", 1)[1]}
        assert set(out.column(columns.INPUT_VERSION).to_pylist()) <= set(range(delta_version(config.input.table) + 1))
        assert all(
            any(r.startswith(p) for p in self.run_ids(record)) for r in out.column(columns.SCORING_RUN_ID).to_pylist()
        )
        probabilities = np.stack(out.column("probabilities").to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(probabilities, _model_predict(model_uri, source), rtol=1e-6)

    def test_invalid_rows_are_set_aside_exactly_once(self, spark, lake, tmp_path):
        config = self.config(lake, tmp_path, input={"on_invalid_rows": "skip"})
        demo.write_delta(config.input.table, _with_invalid(_input()), partition_by=())
        first = self.score(config, spark)
        self.retry(config, spark, first)
        out = read_delta(config.output.table)
        assert sorted(out.column("customer_id").to_pylist()) == [k for k in range(ROWS) if k not in BAD]
        quarantine = read_delta(config.quarantine_table)
        assert sorted(quarantine.column("customer_id").to_pylist()) == list(BAD)

    def test_a_failing_gate_commits_nothing(self, spark, lake, tmp_path):
        gate = {
            "expectations": [{"type": "between", "column": "f00", "min": -10.0, "max": 10.0}],
            "policy": "fail",
            "max_bad_fraction": 0.0,
        }
        config = self.config(lake, tmp_path, quality={"input": gate})
        source = _input()
        f00 = source.column("f00").to_numpy().copy()
        f00[5] = 50.0
        source = source.set_column(source.schema.get_field_index("f00"), "f00", pa.array(f00))
        demo.write_delta(config.input.table, source, partition_by=())
        with pytest.raises(QualityError):
            self.score(config, spark)
        assert delta_version(config.output.table) is None
        assert delta_version(config.quarantine_table) is None

    def test_scoring_again_replaces_exactly_its_own_rows(self, spark, lake, tmp_path):
        config = self.config(lake, tmp_path)
        demo.write_delta(config.input.table, _input(), partition_by=())
        first = self.score(config, spark)
        before = read_delta(config.output.table)
        again = self.score_again(config, spark, first)
        out = read_delta(config.output.table)
        assert out.num_rows == before.num_rows == ROWS
        assert sorted(out.column("customer_id").to_pylist()) == list(range(ROWS))
        self.check_again(first, again, before, out)

    def check_again(self, first: Any, again: Any, before: pa.Table, after: pa.Table) -> None:
        """What a second run of the same rows leaves: one row per key (checked above), and the mode's own rule."""


class TestBatch(ModeContract):
    mode = "batch"

    def score(self, config, spark):
        return batch.run(config, spark=spark)

    def score_again(self, config, spark, first):
        """A new run over the same selection (a re-run replaces exactly the rows it selected)."""
        return batch.run(config, spark=spark)

    def retry(self, config, spark, first):
        """The same run id again (a retry): it finds its committed output and writes nothing twice."""
        return batch.run(config.model_copy(update={"run_id": first.run_id}), spark=spark)

    def run_ids(self, record):
        return {record.run_id}

    def check_again(self, first, again, before, after):
        assert again.run_id != first.run_id
        assert again.rows_replaced == ROWS and again.rows_kept == 0
        assert set(after.column(columns.SCORING_RUN_ID).to_pylist()) == {again.run_id}


class TestStream(ModeContract):
    mode = "stream"

    def adjust(self, tree, tmp_path):
        tree["stream"] = {"checkpoint": str(tmp_path / "ck")}
        return tree

    def score(self, config, spark):
        return stream.run(config, spark=spark, available_now=True)

    def score_again(self, config, spark, first):
        """Replay the last micro-batch: its commit is forgotten by the checkpoint (as after a crash between the
        output commit and the checkpoint's), so the query runs it again on restart."""
        commits = Path(config.stream.checkpoint) / "commits"
        last = max((p for p in commits.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        last.unlink()
        crc = commits / f".{last.name}.crc"
        if crc.exists():
            crc.unlink()
        return stream.run(config, spark=spark, available_now=True)

    def run_ids(self, record):
        return {f"{record.query_id}:"}

    def check_again(self, first, again, before, after):
        assert again.batches == 1 and again.batches_skipped == 1 and again.rows_written == 0
        assert (
            pc.equal(
                before.sort_by("customer_id").column(columns.SCORED_AT),
                after.sort_by("customer_id").column(columns.SCORED_AT),
            ).to_pylist()
            == [True] * ROWS
        )


def test_the_contract_runs_once_per_mode():
    assert {cls.mode for cls in ModeContract.__subclasses__()} == {"batch", "stream"}

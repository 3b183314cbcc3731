"""The unit of work's order and its use of the runner, with a runner that records what it is asked (no Spark): the
rows it scores, the output checks it runs, the frames it keeps and releases, and what it does when nothing is left."""

from __future__ import annotations

import contextlib
import datetime as dt

import pyarrow as pa

from scoring import build_job_config
from scoring.core.stamp import Lineage
from scoring.engine import gates
from scoring.engine.unit import UnitContext, score_unit
from scoring.runners.base import Runner

AT = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
SCHEMA = pa.schema([("prediction", pa.float64())])


class Frame:
    def __init__(self, name: str) -> None:
        self.name = name
        self.schema = {"prediction": pa.field("prediction", pa.float64())}


class RecordingRunner:
    """A runner that scores nothing: it names each frame after what made it and records every call."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def read_snapshot(self, table, version):
        return Frame(f"read {table}"), version or 0

    def sample(self, frame, rows):
        self.calls.append(("sample", frame.name, rows))
        return pa.table({"x": [1.0]})

    def score(self, frame, spec, predictor_spec, lineage):
        self.calls.append(("score", frame.name, tuple(spec.output_schema.names), lineage.scoring_run_id))
        return Frame(f"scored {frame.name}")

    def keep(self, frame):
        self.calls.append(("keep", frame.name))
        return frame

    def release(self, frame):
        self.calls.append(("release", frame.name))

    def watch(self, reporter, label):
        return contextlib.nullcontext()

    def check_output_schema(self, table, schema, partition_by):
        self.calls.append(("check_output_schema", table))

    def commit_replace(self, scored, removed, table, **kwargs):
        raise AssertionError("the unit of work never commits")

    def commit_append(self, scored, table, **kwargs):
        raise AssertionError("the unit of work never commits")

    def commit_quarantine(self, frame, table, txn):
        raise AssertionError("the unit of work never commits")

    def committed(self, table, txn):
        return None

    def translate(self, error):
        return error


class Model:
    name, version, uri, features = "m", "1", "models:/m/1", ("a", "b")


def _ctx(runner, **changes) -> UnitContext:
    config = build_job_config(
        {
            "name": "t",
            "input": {"table": "/lake/in", "key": "id", "features": ["a", "b"]},
            "model": {"uri": "models:/m/1"},
            "output": {"table": "/lake/out"},
        }
    )
    values = {
        "config": config,
        "model": Model(),
        "predictor_spec": None,
        "runner": runner,
        "stamp": gates.Stamp("run-1", AT, ("id",)),
        "lineage": Lineage("m", "1", "models:/m/1", 0, "run-1", AT),
        "passthrough": ("id",),
        "rows": 10,
        "output_schema": SCHEMA,
        **changes,
    }
    return UnitContext(**values)


def test_the_recording_runner_is_a_runner():
    runner: Runner = RecordingRunner()
    assert runner.name == "recording"


def test_a_known_output_schema_scores_without_probing_and_checks_the_output_once_asked():
    runner = RecordingRunner()
    result = score_unit(Frame("rows"), _ctx(runner))
    assert [c[0] for c in runner.calls] == ["score", "check_output_schema"]
    assert runner.calls[0] == ("score", "rows", ("prediction",), "run-1")
    assert result.scored.name == "scored rows"
    assert result.set_aside is None and result.rows_quarantined == 0 and result.rows_invalid == 0
    assert result.kept == ()


def test_the_modes_last_touch_comes_before_the_output_check_and_scores_are_kept_for_a_second_sink():
    runner = RecordingRunner()
    result = score_unit(
        Frame("rows"),
        _ctx(runner, check_output=False, keep_scores=True, finish=lambda f: Frame(f"finished {f.name}")),
    )
    assert [c[0] for c in runner.calls] == ["score", "keep"]
    assert runner.calls[1] == ("keep", "finished scored rows")
    result.release(runner)
    assert runner.calls[-1] == ("release", "finished scored rows")


def test_when_every_row_was_set_aside_nothing_is_probed_or_scored():
    runner = RecordingRunner()
    result = score_unit(Frame("rows"), _ctx(runner, rows=0, output_schema=None))
    assert runner.calls == []
    assert result.scored is None and len(result.output_schema) == 0

"""Requests in flight across batches (:func:`scoring.core.batching.in_flight`, what the Triton predictor's
``predict_stream`` runs on) and the engine's pipelined path (:func:`scoring.core.score.score_batches` with a
:class:`~scoring.core.predictor.PipelinedPredictor`): order, back-pressure, errors, early close.

No Triton here: the requests are real calls run by a real thread pool, with latencies and failures chosen by the test.
The same predictor against a real server is in tests/integration/test_triton.py.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from scoring.core.batching import feature_matrix, in_flight, name_outputs
from scoring.core.predictor import PipelinedPredictor
from scoring.core.score import ScoringSpec, score_batch, score_batches
from scoring.errors import BackendUnavailableError, InvalidRowsError, ModelError


class Server:
    """Stands in for the server: a request is a real call in a pool thread that sleeps for the latency the test chose
    for it, then returns its rows doubled (or raises). Counts what is running at once and the most ever seen."""

    def __init__(self, workers: int = 8) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="test-server")
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started: list[int] = []
        self.finished: list[int] = []

    def request(self, tag: int, rows: np.ndarray, latency_s: float = 0.0, error: Exception | None = None):
        def call():
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
                self.started.append(tag)
            try:
                time.sleep(latency_s)
                if error is not None:
                    raise error
                return rows * 2
            finally:
                with self.lock:
                    self.running -= 1
                    self.finished.append(tag)

        return call

    def close(self) -> None:
        self.pool.shutdown(wait=True)


@pytest.fixture
def server():
    server = Server()
    yield server
    server.close()


class Source:
    """An input stream that records how many batches were taken from it."""

    def __init__(self, batches) -> None:
        self.batches = list(batches)
        self.taken = 0

    def __iter__(self):
        for batch in self.batches:
            self.taken += 1
            yield batch


def _stream(server, batches, max_inflight, latency=lambda tag: 0.0, fail=None, requests_per_batch=1, **kw):
    """Each batch is an int array; it is split into `requests_per_batch` requests; outputs are the arrays doubled."""

    def split(batch: np.ndarray):
        parts = np.array_split(batch, requests_per_batch)
        tags = [int(batch[0]) // 1000 * 100 + i for i in range(len(parts))]  # batch index * 100 + request
        calls = [server.request(t, p, latency(t), fail(t) if fail else None) for t, p in zip(tags, parts, strict=True)]
        return len(batch), calls

    def join(rows: int, parts: list[np.ndarray]) -> np.ndarray:
        out = np.concatenate(parts)
        assert len(out) == rows
        return out

    return in_flight(batches, split, join, server.pool.submit, max_inflight, **kw)


def _inputs(n: int, rows: int = 4) -> list[np.ndarray]:
    return [np.arange(i * 1000, i * 1000 + rows) for i in range(n)]


def test_outputs_come_back_in_input_order_when_later_requests_finish_first(server):
    batches = _inputs(12)
    # the first of every three requests is the slowest: with four in flight, later ones finish first
    latencies = {i * 100: (0.05 if i % 3 == 0 else 0.001) for i in range(len(batches))}
    out = list(_stream(server, batches, 4, latency=lambda t: latencies[t]))
    assert [o.tolist() for o in out] == [(b * 2).tolist() for b in batches]
    assert server.finished != sorted(server.finished), "no request overtook another: the test proves nothing"
    assert server.most > 1, "requests were never in flight together"


def test_a_batch_of_several_requests_is_put_back_together_in_order(server):
    batches = _inputs(5, rows=10)
    out = list(_stream(server, batches, 3, requests_per_batch=4, latency=lambda t: 0.02 if t % 100 == 0 else 0.0))
    assert [o.tolist() for o in out] == [(b * 2).tolist() for b in batches]
    assert server.most <= 3


@pytest.mark.parametrize("max_inflight", [1, 2, 5])
def test_never_more_requests_in_flight_nor_batches_taken_than_allowed(server, max_inflight):
    source = Source(_inputs(20))
    held = []  # batches taken from the input whose output was not given yet, seen at every output
    stream = _stream(server, source, max_inflight, latency=lambda t: 0.003, requests_per_batch=2)
    given = 0
    for _ in stream:
        given += 1
        held.append(source.taken - given)
        time.sleep(0.002)  # a slow consumer: the stream must wait for it, not run ahead
    assert given == 20
    assert server.most <= max_inflight
    assert max(held) <= max_inflight


def test_a_consumer_that_stops_reading_stops_the_input_too(server):
    source = Source(_inputs(100))
    stream = _stream(server, source, 3)
    next(stream)
    time.sleep(0.05)  # the requests finish; nothing more may be taken while nobody reads
    assert source.taken <= 4
    stream.close()


def test_a_failed_request_in_the_middle_fails_at_its_turn_after_the_batches_before_it(server):
    batches = _inputs(8)

    def fail(tag: int):
        return BackendUnavailableError(f"request {tag} failed at the server") if tag == 300 else None

    def name(error, index):
        return type(error)(f"batch {index + 1}: {error.message}")

    # the batches before the failed one are slow, so it fails while they are still in flight
    stream = _stream(server, batches, 3, latency=lambda t: 0.03 if t < 300 else 0.0, fail=fail, on_error=name)
    got = []
    with pytest.raises(BackendUnavailableError, match=r"^batch 4: request 300 failed at the server$") as excinfo:
        for out in stream:
            got.append(out)
    assert [g.tolist() for g in got] == [(b * 2).tolist() for b in batches[:3]]  # none dropped, none after it
    assert isinstance(excinfo.value.__cause__, BackendUnavailableError)  # the request's own error, chained
    assert server.running == 0  # nothing left running once the error is out
    assert max(server.started) < 600, "more batches were taken than the window holds"


def test_the_inputs_own_error_is_raised_at_its_turn_and_not_renamed(server):
    def source():
        yield from _inputs(3)
        raise InvalidRowsError("row 7 is bad")

    got = []
    with pytest.raises(InvalidRowsError, match="^row 7 is bad$"):
        for out in _stream(server, source(), 4, latency=lambda t: 0.01, on_error=lambda e, i: ValueError("renamed")):
            got.append(out)
    assert len(got) == 3


def test_closing_early_leaves_no_request_running_and_stops_retries(server):
    stop = threading.Event()
    batches = _inputs(50)
    stream = _stream(server, batches, 4, latency=lambda t: 0.01 if t == 0 else 0.2, stop=stop)
    next(stream)
    assert server.running > 0  # the next ones are in flight
    stream.close()
    assert server.running == 0  # waited for: none still runs after close()
    assert stop.is_set()  # a request still retrying would give up at once
    assert len(server.started) <= 1 + 4


def test_nothing_is_sent_once_the_stop_event_is_set_from_outside(server):
    stop = threading.Event()
    stream = _stream(server, _inputs(10), 2, latency=lambda t: 0.01, stop=stop)
    next(stream)
    stop.set()
    with pytest.raises(RuntimeError, match="not given"):
        list(stream)
    assert server.running == 0


def test_max_inflight_below_one_is_refused(server):
    with pytest.raises(ValueError, match="at least 1"):
        list(_stream(server, _inputs(1), 0))


# -- the engine's pipelined path ----------------------------------------------------------------------------------

SPEC = ScoringSpec(
    features=("a", "b"),
    passthrough=("id",),
    key=("id",),
    model="models:/m/1",
    output_schema=pa.schema([("prediction", pa.float64())]),
)


class PipelinedLinear:
    """A real pipelined predictor: a linear model whose rows are computed in a thread pool, requests of 3 rows, two
    in flight across batches; each batch's first request is slow so that later ones finish first."""

    def __init__(self) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(2)
        self.streams = 0
        self.predicts = 0

    def _rows(self, x: np.ndarray, slow: bool) -> np.ndarray:
        time.sleep(0.01 if slow else 0.0)
        return x @ np.array([1.0, 10.0])

    def predict(self, features: pa.RecordBatch) -> pa.RecordBatch:
        self.predicts += 1
        return name_outputs({"y": self._rows(feature_matrix(features, ["a", "b"], np.float64), False)}, len(features))

    def predict_stream(self, batches):
        self.streams += 1

        def split(features):
            x = feature_matrix(features, ["a", "b"], np.float64)
            return len(x), [
                lambda c=x[i : i + 3], i=i: self._rows(c, i == 0) for i in range(0, max(len(x), 1), 3) if len(x)
            ]

        def join(rows, parts):
            values = np.concatenate(parts) if parts else np.empty(0)
            return name_outputs({"y": values}, rows)

        return in_flight(batches, split, join, self.pool.submit, 2)


def _batch(start: int, rows: int, bad_row: int | None = None) -> pa.RecordBatch:
    a = np.arange(start, start + rows, dtype=np.float64)
    if bad_row is not None:
        a[bad_row] = np.nan
    return pa.RecordBatch.from_pydict({"id": np.arange(start, start + rows), "a": a, "b": a / 10})


def test_a_pipelined_predictor_gets_the_whole_stream_and_gives_what_score_batch_gives():
    predictor = PipelinedLinear()
    assert isinstance(predictor, PipelinedPredictor)
    batches = [_batch(0, 7), _batch(100, 0), _batch(200, 1), _batch(300, 0), _batch(400, 9), _batch(500, 0)]
    try:
        got = list(score_batches(batches, predictor, SPEC))
        expected = [score_batch(b, predictor, SPEC) for b in batches]
    finally:
        predictor.pool.shutdown()
    assert predictor.streams == 1
    assert [g.num_rows for g in got] == [7, 0, 1, 0, 9, 0]
    assert all(g.equals(e) for g, e in zip(got, expected, strict=True))


def test_a_bad_row_in_a_later_batch_fails_after_the_earlier_batches_were_given():
    predictor = PipelinedLinear()
    batches = [_batch(0, 6), _batch(100, 6), _batch(200, 6, bad_row=2), _batch(300, 6)]
    got = []
    try:
        with pytest.raises(InvalidRowsError, match="first at id=202"):
            for out in score_batches(batches, predictor, SPEC):
                got.append(out)
    finally:
        predictor.pool.shutdown()
    assert [g.column("id")[0].as_py() for g in got] == [0, 100]


def test_a_predictor_returning_too_few_rows_is_caught_at_that_batch():
    class Short(PipelinedLinear):
        def predict_stream(self, batches):
            for out in super().predict_stream(batches):
                yield out.slice(0, max(out.num_rows - 1, 0)) if out.num_rows == 5 else out

    predictor = Short()
    try:
        got = []
        with pytest.raises(Exception, match="returned 4 rows for a batch of 5"):
            for out in score_batches([_batch(0, 6), _batch(100, 5), _batch(200, 6)], predictor, SPEC):
                got.append(out)
    finally:
        predictor.pool.shutdown()
    assert len(got) == 1


def test_a_runtime_error_from_the_stream_is_a_model_error_naming_the_model():
    class Broken(PipelinedLinear):
        def _rows(self, x, slow):
            raise ZeroDivisionError("inside the model")

    predictor = Broken()
    try:
        with pytest.raises(ModelError, match=r"models:/m/1 failed on a batch of 6 rows: ZeroDivisionError"):
            list(score_batches([_batch(0, 6)], predictor, SPEC))
    finally:
        predictor.pool.shutdown()


def test_closing_the_scored_stream_early_closes_the_predictors_stream():
    predictor = PipelinedLinear()
    source = Source([_batch(i * 100, 6) for i in range(30)])
    try:
        scored = score_batches(source, predictor, SPEC)
        next(scored)
        scored.close()
        taken = source.taken
        time.sleep(0.03)
        assert source.taken == taken <= 4
        assert predictor.pool._work_queue.empty()
    finally:
        predictor.pool.shutdown()

"""Live inference for the online service: requests micro-batched onto the shared predictor, behind a circuit breaker.

Concurrent requests (each one or more rows) wait in a queue; one worker thread takes what arrived within a short
window (``serve.batch_window_ms``, at most ``serve.max_batch_rows`` rows), scores it as one batch with
:func:`scoring.core.score.score_batch` (the same feature and output checks as batch and streaming), and hands each
request its rows back. So the backend (a Triton server over gRPC, or the embedded runtime) sees batches, not rows.

A backend that fails (unreachable, timing out, refusing) counts against a circuit breaker: after
``serve.breaker_failures`` failures in a row it opens, and live requests are refused at once (503 with
``Retry-After``) or, with ``serve.live_fallback: embedded``, answered in process; a probe every
``serve.breaker_reset_s`` reconnects, and the first that succeeds closes the breaker. Nothing here raises for a
backend outage: requests fail, the process stays up and recovers on its own.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from scoring.core.batching import FEATURE_LIMIT, feature_value_problem, invalid_mask
from scoring.core.index import json_texts
from scoring.core.predictor import Predictor
from scoring.core.score import ScoringSpec, score_batch
from scoring.core.tensors import TensorLayout
from scoring.errors import ModelError, ScoringError, Terminal, Transient

_LOGGER = logging.getLogger(__name__)

_ARROW_TYPES = {
    "double": pa.float64(),
    "float": pa.float32(),
    "long": pa.int64(),
    "integer": pa.int32(),
    "boolean": pa.bool_(),
}


class RequestError(ScoringError, Terminal, ValueError):
    """A client's mistake in a live request: names the field and says what is wrong (a 4xx, never a 500). A
    :class:`~scoring.errors.ScoringError` (and still a ``ValueError``, for callers that catch that)."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 422, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.field = field
        self.status = status

    def __reduce__(self):  # keep `field` and `status` across pickling
        return (_rebuild_request_error, (type(self), self.message, self.field, self.status, self.hint))


def _rebuild_request_error(cls: type[RequestError], message: str, field: str | None, status: int, hint: str | None):
    return cls(message, field=field, status=status, hint=hint)


class LiveUnavailable(Transient, ScoringError):
    """Live inference cannot answer now (backend down, breaker open, deadline passed): a 503 with Retry-After.
    Transient: asking again after ``retry_after_s`` may succeed."""

    def __init__(
        self, message: str, *, retry_after_s: float = 1.0, kind: str = "error", hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.retry_after_s = retry_after_s
        self.kind = kind

    def __reduce__(self):  # keep `retry_after_s` and `kind` across pickling
        return (_rebuild_unavailable, (type(self), self.message, self.retry_after_s, self.kind, self.hint))


def _rebuild_unavailable(cls: type[LiveUnavailable], message: str, retry_after_s: float, kind: str, hint: str | None):
    return cls(message, retry_after_s=retry_after_s, kind=kind, hint=hint)


class RowRejected(RequestError):
    """The model would not score a request's own rows (they failed alone, after their micro-batch failed without a
    backend fault): a 422 for that request only, never counted against the circuit breaker."""


def is_backend_fault(error: BaseException) -> bool:
    """Whether a failure to score is the backend's (by type, never by text): what the adapters raise when a server
    does not answer (:class:`~scoring.errors.Transient`) or the model runtime fails
    (:class:`~scoring.errors.ModelError`). A row's own fault (invalid features, a non-finite prediction) is not."""
    return isinstance(error, Transient | ModelError)


_ELEMENT_TYPES = {
    **_ARROW_TYPES,
    "float64": pa.float64(),
    "float32": pa.float32(),
    "int64": pa.int64(),
    "int32": pa.int32(),
    "bool": pa.bool_(),
}
"""An array input's element type, by the name the model's signature gives it (MLflow's column types, or a tensor
spec's numpy dtype)."""


def feature_types(
    signature: Sequence[tuple[str, str]] | None,
    features: Sequence[str],
    tensors: Sequence[TensorLayout] = (),
) -> dict[str, pa.DataType]:
    """Arrow type of each feature, from the model's MLflow signature (float64 where it does not say). A column that
    ``input.tensors`` lists (`tensors`, see :func:`scoring.core.tensors.layouts`) is an array column: a list of the
    element type of the input it feeds."""
    given = dict(signature or ())
    arrays = {t.column: t for t in tensors}
    out = {}
    for f in features:
        layout = arrays.get(f)
        if layout is None:
            out[f] = _ARROW_TYPES.get(str(given.get(f, "double")).lower(), pa.float64())
        else:
            element = str(given.get(layout.input, given.get(f, "double"))).lower()
            out[f] = pa.list_(_ELEMENT_TYPES.get(element, pa.float64()))
    return out


def value_problem(value: Any, kind: pa.DataType) -> str | None:
    """Why one request value is invalid for a feature of type `kind`, or None: the rule of
    :func:`scoring.core.batching.feature_value_problem` for a scalar, and for each element of an array feature (a
    JSON list), as :func:`scoring.core.tensors.invalid_mask` applies it element-wise in a batch."""
    if not pa.types.is_list(kind):
        return feature_value_problem(value, kind)
    if not isinstance(value, list):
        return f"expected an array of numbers, got {_shown(value)}"
    element = kind.value_type
    for j, item in enumerate(value):
        problem = feature_value_problem(item, element)
        if problem is not None:
            return f"element {j}: {problem}"
    return None


def _shown(value: Any) -> str:
    return type(value).__name__ if isinstance(value, dict | list) else repr(value)[:80]


def check_value(name: str, value: Any, kind: pa.DataType, where: str = "") -> None:
    """Refuse one feature value of a request that the model's input (`kind`) cannot take: the rule the batch engine
    applies to invalid features (:func:`value_problem`), as a :class:`RequestError` naming the feature."""
    problem = value_problem(value, kind)
    if problem is not None:
        raise RequestError(f"{where}features.{name}: {problem}", field=name)


def check_features(row: Any, types: Mapping[str, pa.DataType], where: str = "") -> None:
    """Refuse a request's ``features`` object unless it holds exactly the model's features, each with a value its
    input takes (:func:`check_value`); `where` prefixes the message (which item of a list)."""
    names = types.keys()
    if not isinstance(row, Mapping):
        raise RequestError(f"{where}features: expected an object of feature values", field="features")
    if len(row) != len(types) or any(n not in types for n in row):
        missing = [n for n in names if n not in row]
        if missing:
            raise RequestError(
                f"{where}features: missing {', '.join(missing)} (the model takes {', '.join(names)})",
                field=missing[0],
            )
        extra = [n for n in row if n not in types]
        raise RequestError(
            f"{where}features: unknown {', '.join(map(str, extra))} (the model takes {', '.join(names)})",
            field=str(extra[0]) or '""',
        )
    for n, kind in types.items():
        check_value(n, row[n], kind, where)


def check_batch(batch: pa.RecordBatch, types: Mapping[str, pa.DataType]) -> None:
    """Refuse a typed feature batch (the KServe v2 route's inputs) holding a value the batch engine would set aside
    as invalid (:func:`scoring.core.batching.invalid_mask`: null, NaN, infinite, beyond float32's range), naming the
    input and the first such row."""
    names = [n for n in types if n in batch.schema.names]
    if invalid_mask(batch, names) is None:
        return
    for name in names:
        mask = invalid_mask(batch, [name])
        if mask is not None:
            row = int(mask.argmax())
            raise RequestError(
                f"inputs.{name}: row {row} holds {batch.column(name)[row].as_py()!r}: null, NaN, infinite or beyond "
                f"float32's range ({FEATURE_LIMIT:.8g})",
                field=name,
            )


def features_batch(
    rows: Sequence[Mapping[str, Any]], types: Mapping[str, pa.DataType], *, where: Sequence[str] | None = None
) -> pa.RecordBatch:
    """The requests' feature objects as one Arrow batch in the model's feature order; a missing, extra or mistyped
    feature raises :class:`RequestError` naming it (and which item of a list, via `where`)."""
    names = list(types)
    columns: dict[str, list[Any]] = {n: [] for n in names}
    for i, row in enumerate(rows):
        check_features(row, types, f"{where[i]}." if where else "")
        for n in names:
            columns[n].append(row[n])
    arrays = []
    for n in names:
        try:
            arrays.append(pa.array(columns[n], types[n]))
        except (pa.ArrowInvalid, OverflowError) as e:
            raise RequestError(f"features.{n}: {e}", field=n) from None
    return pa.RecordBatch.from_arrays(arrays, names=names)


class Breaker:
    """Opens after `failures` backend failures in a row; stays open until a probe succeeds."""

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self._clock = clock
        self._in_a_row = 0
        self._opened_at: float | None = None
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def success(self) -> None:
        with self._lock:
            self._in_a_row = 0
            self._opened_at = None

    def failure(self) -> bool:
        """Count a failure; True when it opened the breaker."""
        with self._lock:
            self._in_a_row += 1
            if self._opened_at is None and self._in_a_row >= self.failures:
                self._opened_at = self._clock()
                return True
            return False

    def retry_after_s(self) -> float:
        with self._lock:
            if self._opened_at is None:
                return self.reset_s
            return max(1.0, self.reset_s - (self._clock() - self._opened_at))


@dataclasses.dataclass
class LiveResult:
    """One request's rows scored: the prediction columns, which backend answered and when."""

    predictions: pa.RecordBatch
    backend: str
    fallback: bool
    scored_at: float
    prediction_json: Mapping[str, Sequence[str]]
    """Each prediction column's values as JSON texts, row by row (encoded once per micro-batch, as the precomputed
    index encodes a row)."""


@dataclasses.dataclass
class _Pending:
    batch: pa.RecordBatch
    future: concurrent.futures.Future
    enqueued: float


class LiveScorer:
    """Micro-batched live inference for one model version; see the module's docstring.

    `primary` builds the configured backend's predictor (may raise a ScoringError when the backend is down);
    `fallback`, when given, builds the embedded one used while the breaker is open.
    """

    def __init__(
        self,
        *,
        spec: ScoringSpec,
        primary: Callable[[], Predictor],
        primary_name: str,
        fallback: Callable[[], Predictor] | None = None,
        window_s: float = 0.002,
        max_rows: int = 512,
        breaker: Breaker,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.spec = spec
        self.primary_name = primary_name
        self._primary_factory = primary
        self._fallback_factory = fallback
        self._primary: Predictor | None = None
        self._fallback: Predictor | None = None
        self.window_s = window_s
        self.max_rows = max_rows
        self.breaker = breaker
        self._on_event = on_event or (lambda kind, detail: None)
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._last_probe = 0.0
        self._prober: threading.Thread | None = None
        self._worker = threading.Thread(target=self._run, name="live-batcher", daemon=True)
        self._worker.start()

    # -- public ----------------------------------------------------------------------------------------------------

    def submit(self, batch: pa.RecordBatch) -> concurrent.futures.Future:
        """Queue `batch` (feature rows) for scoring; the future holds a :class:`LiveResult` or raises
        :class:`LiveUnavailable`."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self._stop.is_set():
            future.set_exception(LiveUnavailable("the service is stopping", retry_after_s=1.0, kind="stopping"))
            return future
        if self.breaker.is_open and self._fallback_factory is None:
            future.set_exception(self._refusal())
            return future
        self._queue.put(_Pending(batch, future, time.monotonic()))
        return future

    def ready(self) -> bool:
        """Whether a live request would be answered now (the backend is connected, or the fallback can answer)."""
        if self._fallback_factory is not None:
            return True
        return self._primary is not None and not self.breaker.is_open

    def connect(self) -> bool:
        """Try to build the primary predictor now (at start, and as the breaker's probe); True when it works."""
        try:
            predictor = self._primary_factory()
        except ScoringError as e:
            _LOGGER.warning("live backend %s is not available: %s", self.primary_name, e)
            self._on_event("connect_failed", self.primary_name)
            return False
        old, self._primary = self._primary, predictor
        if old is not None and old is not predictor:
            _close(old)
        self.breaker.success()
        return True

    def close(self) -> None:
        self._stop.set()
        self._queue.put(None)
        self._worker.join(timeout=5)
        for predictor in (self._primary, self._fallback):
            if predictor is not None:
                _close(predictor)
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            if pending is not None and not pending.future.done():
                pending.future.set_exception(
                    LiveUnavailable("the service is stopping", retry_after_s=1.0, kind="stopping")
                )

    # -- the worker ------------------------------------------------------------------------------------------------

    def _refusal(self) -> LiveUnavailable:
        return LiveUnavailable(
            f"live inference through {self.primary_name} is unavailable (circuit breaker open after "
            f"{self.breaker.failures} failures in a row); precomputed scores are still served",
            retry_after_s=self.breaker.retry_after_s(),
            kind="breaker_open",
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.25)
            except queue.Empty:
                self._maybe_probe()
                continue
            if first is None:
                return
            taken = [first]
            rows = first.batch.num_rows
            until = time.monotonic() + self.window_s
            while rows < self.max_rows:
                left = until - time.monotonic()
                try:
                    more = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._stop.set()
                    break
                taken.append(more)
                rows += more.batch.num_rows
            self._score(taken)
            self._maybe_probe()

    def _maybe_probe(self) -> None:
        """While the breaker is open, reconnect every ``reset_s`` on a thread of its own (a connection attempt may
        take the whole deadline; the fallback keeps answering meanwhile)."""
        if not self.breaker.is_open or self._stop.is_set():
            return
        now = time.monotonic()
        if now - self._last_probe < self.breaker.reset_s or (self._prober is not None and self._prober.is_alive()):
            return
        self._last_probe = now
        self._prober = threading.Thread(target=self._probe, name="live-probe", daemon=True)
        self._prober.start()

    def _probe(self) -> None:
        if self.connect():
            _LOGGER.warning("live backend %s is back; circuit breaker closed", self.primary_name)
            self._on_event("breaker_closed", self.primary_name)

    def _predictor(self) -> tuple[Predictor, str, bool] | None:
        if not self.breaker.is_open:
            if self._primary is None and not self.connect():
                if self.breaker.failure():
                    self._opened()
            if self._primary is not None:
                return self._primary, self.primary_name, False
        if self._fallback_factory is not None:
            if self._fallback is None:
                self._fallback = self._fallback_factory()
            return self._fallback, "embedded", True
        return None

    def _opened(self) -> None:
        self._last_probe = time.monotonic()
        _LOGGER.warning(
            "live backend %s failed %d times in a row: circuit breaker open, probing every %g s",
            self.primary_name,
            self.breaker.failures,
            self.breaker.reset_s,
        )
        self._on_event("breaker_opened", self.primary_name)

    def _score(self, taken: list[_Pending]) -> None:
        live = [p for p in taken if p.future.set_running_or_notify_cancel()]
        if not live:
            return
        batch = pa.Table.from_batches([p.batch for p in live]).combine_chunks().to_batches()
        batch = batch[0] if batch else live[0].batch.slice(0, 0)
        chosen = self._predictor()
        if chosen is None:
            refusal = self._refusal()
            for p in live:
                p.future.set_exception(refusal)
            return
        predictor, name, fallback = chosen
        try:
            scored = self._score_capped(batch, predictor)
        except ScoringError as e:
            if isinstance(e, Transient):  # the backend did not answer: every request of the batch fails alike
                self._backend_failed(live, batch, e, name, fallback)
                return
            self._isolate(live, e, predictor, name, fallback)  # which request's rows is it? only that one fails
            return
        if not fallback:
            self.breaker.success()
        self._deliver(live, scored, name, fallback)

    def _score_capped(self, batch: pa.RecordBatch, predictor: Predictor) -> pa.RecordBatch:
        """`batch` scored in backend calls of at most ``max_rows`` rows (one request may hold more, and the last
        request taken into a micro-batch may carry it past the cap)."""
        if batch.num_rows <= self.max_rows:
            return score_batch(batch, predictor, self.spec)
        parts = [
            score_batch(batch.slice(start, self.max_rows), predictor, self.spec)
            for start in range(0, batch.num_rows, self.max_rows)
        ]
        return pa.Table.from_batches(parts).combine_chunks().to_batches()[0]

    def _backend_failed(
        self, live: list[_Pending], batch: pa.RecordBatch, e: ScoringError, name: str, fallback: bool
    ) -> None:
        if fallback:
            self._fail(live, f"the embedded fallback failed: {e.message}", "fallback_failed")
            return
        self._on_event("backend_error", name)
        opened = self.breaker.failure()
        self._primary = None if opened else self._primary
        if opened:
            self._opened()
        if self._fallback_factory is not None:
            self._score_with_fallback(live, batch)
            return
        self._fail(live, f"live inference through {name} failed: {e.message}", "backend_error")

    def _isolate(
        self, live: list[_Pending], error: ScoringError, predictor: Predictor, name: str, fallback: bool
    ) -> None:
        """A micro-batch failed, the backend answering (a terminal error: a row the model or the checks will not
        take, or a model fault): score each request alone, so that only the requests whose own rows fail get an
        error; one that fails alone with a backend fault (:func:`is_backend_fault`) counts against the breaker, any
        other is :class:`RowRejected` (a 422) and never does."""
        healthy = False
        for p in live:
            try:
                if len(live) == 1:  # it failed alone already
                    raise error
                scored = self._score_capped(p.batch, predictor)
            except ScoringError as e:
                if is_backend_fault(e):
                    self._backend_failed([p], p.batch, e, name, fallback)
                    continue
                self._on_event("row_rejected", name)
                p.future.set_exception(
                    RowRejected(f"the model cannot score these features: {e.message}", field="features")
                )
                healthy = True  # the backend answered; the rows were at fault
                continue
            healthy = True
            self._deliver([p], scored, name, fallback)
        if healthy and not fallback:
            self.breaker.success()

    def _deliver(self, live: list[_Pending], scored: pa.RecordBatch, name: str, fallback: bool) -> None:
        now = time.time()
        predictions = scored.select(list(self.spec.output_schema.names)) if self.spec.output_schema else scored
        texts = {c: json_texts(pa.chunked_array([predictions.column(c)])).to_pylist() for c in predictions.schema.names}
        start = 0
        for p in live:
            n = p.batch.num_rows
            rows = {c: values[start : start + n] for c, values in texts.items()}
            p.future.set_result(LiveResult(predictions.slice(start, n), name, fallback, now, rows))
            start += n

    def _score_with_fallback(self, live: list[_Pending], batch: pa.RecordBatch) -> None:
        try:
            if self._fallback is None:
                self._fallback = self._fallback_factory()
            scored = self._score_capped(batch, self._fallback)
        except ScoringError as e:
            self._fail(live, f"the embedded fallback failed: {e.message}", "fallback_failed")
            return
        self._deliver(live, scored, "embedded", True)

    def _fail(self, live: list[_Pending], message: str, kind: str) -> None:
        error = LiveUnavailable(message, retry_after_s=self.breaker.retry_after_s(), kind=kind)
        for p in live:
            p.future.set_exception(error)


def _close(predictor: Any) -> None:
    close = getattr(predictor, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # closing a predictor whose server is gone
            _LOGGER.debug("closing a predictor failed", exc_info=True)


def rows_of(predictions: pa.RecordBatch) -> list[dict[str, Any]]:
    """Prediction rows as plain dicts (numpy-free), for JSON."""
    return predictions.to_pylist()


__all__ = [
    "Breaker",
    "LiveResult",
    "LiveScorer",
    "LiveUnavailable",
    "RequestError",
    "RowRejected",
    "check_batch",
    "check_features",
    "check_value",
    "value_problem",
    "feature_types",
    "is_backend_fault",
    "features_batch",
]

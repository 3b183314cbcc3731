"""The answer policy of the online service, in one place: how a request's items are answered from one
:class:`~scoring.modes.online.snapshot.ServingSnapshot` (hit, stale, live, fallback, refusal), for every route.

The HTTP layer (:mod:`scoring.modes.http_api`) parses bytes and renders an :class:`Answer`; everything it needs
to decide is decided here: which precomputed score is current, when features are scored live, when a stale score
may be served, what a live failure becomes, which model a KServe v2 route may name."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pyarrow as pa

from scoring.adapters.metrics import ServeMetrics
from scoring.config import ServeConfig
from scoring.core import kserve
from scoring.core.index import Key, key_text
from scoring.engine.live import LiveResult, LiveUnavailable, RequestError, check_batch, check_features, features_batch
from scoring.engine.model import PreparedModel
from scoring.modes.online.snapshot import (
    Answer,
    Lookup,
    ServedModel,
    ServingSnapshot,
    describe_live_failure,
    live_answer,
    precomputed_body,
    refusal,
    shown,
)

_ITEM_FIELDS = ("key", "features")


class Answerer:
    """Answers requests from a snapshot; holds only settings and the metrics it counts into (no state of its own:
    the service gives it the snapshot of each request)."""

    def __init__(
        self,
        *,
        serve: ServeConfig,
        key_columns: Sequence[str],
        table: str,
        requested_uri: str,
        metrics: ServeMetrics,
        check_requests: bool = True,
    ) -> None:
        self.serve = serve
        self.key_columns = tuple(key_columns)
        self.table = table
        self.requested_uri = requested_uri
        self.metrics = metrics
        self.check_requests = check_requests
        self._wait_s = serve.deadline_s + serve.batch_window_ms / 1000 + 0.05

    # -- keys and items --------------------------------------------------------------------------------------------

    def key_of(self, value: Any) -> Key:
        """A request's key (a scalar, or for a composite key an object by column or a list in key order) as the
        index's key; a malformed one raises :class:`RequestError`."""
        columns = self.key_columns
        if len(columns) == 1:
            if isinstance(value, Mapping) and set(value) == {columns[0]}:
                value = value[columns[0]]
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                return key_text(value)
            raise RequestError(f"key: expected a string or a number for {columns[0]}, got {shown(value)}", field="key")
        if isinstance(value, Mapping):
            missing = [c for c in columns if c not in value]
            extra = [c for c in value if c not in columns]
            if missing or extra:
                raise RequestError(
                    f"key: the key columns are {', '.join(columns)}"
                    + (f"; missing {', '.join(missing)}" if missing else "")
                    + (f"; unknown {', '.join(map(str, extra))}" if extra else ""),
                    field="key",
                )
            value = [value[c] for c in columns]
        if not isinstance(value, list | tuple) or len(value) != len(columns):
            raise RequestError(
                f"key: expected {len(columns)} parts ({', '.join(columns)}), as an object or a list in that order",
                field="key",
            )
        for part, column in zip(value, columns, strict=True):
            if not isinstance(part, str | int | float) or isinstance(part, bool):
                raise RequestError(f"key.{column}: expected a string or a number, got {shown(part)}", field=column)
        return tuple(key_text(p) for p in value)

    def key_from_path(self, segments: Sequence[str]) -> Key:
        if len(segments) != len(self.key_columns):
            raise RequestError(
                f"the key has {len(self.key_columns)} part(s) ({'/'.join(self.key_columns)}), "
                f"the path gives {len(segments)}",
                field="key",
                status=404,
            )
        return segments[0] if len(segments) == 1 else tuple(segments)

    def _item(self, item: Any, where: str, types: Mapping[str, pa.DataType]) -> tuple[Any, Key, Any]:
        """An item's key as given, as the index's key, and its features (None when not sent), once checked."""
        if not isinstance(item, dict):
            raise RequestError(f"{where or 'the body'}: expected an object with key and features", field="body")
        if len(item) > 2 or any(k not in _ITEM_FIELDS for k in item):
            unknown = [k for k in item if k not in _ITEM_FIELDS]
            name = str(unknown[0]) or '""'  # a field named by the empty string is still named
            raise RequestError(f"{where}{name}: unknown field (expected key and features)", field=name)
        if "key" not in item:
            raise RequestError(f"{where}key: required", field="key")
        key_value = item["key"]
        try:
            key = self.key_of(key_value)
        except RequestError as e:
            raise RequestError(f"{where}{e}", field=e.field, status=e.status) from None
        features = item.get("features")
        if features is not None and self.check_requests:
            check_features(features, types, f"{where}." if where else "")
        return key_value, key, features

    # -- the precomputed route -------------------------------------------------------------------------------------

    def answer_path(self, snap: ServingSnapshot, segments: Sequence[str]) -> Answer:
        """``GET /v1/scores/<key>``: the key's precomputed score (current, or stale where allowed), else a 404."""
        key = self.key_from_path(segments)
        shown_key: Any = segments[0] if len(segments) == 1 else dict(zip(self.key_columns, segments, strict=True))
        found = snap.judge(snap.get_many([key])[0])
        self.metrics.lookup(found.outcome)
        if found.outcome == "hit" or (found.outcome == "stale" and snap.serve_stale):
            return Answer(200, precomputed_body(shown_key, found), source="precomputed")
        if found.outcome == "stale":
            return refusal(
                404,
                f"the precomputed score for {shown_key!r} is stale ({found.reason}); POST /v1/score with its features "
                "to score it live (or set serve.serve_stale: true to serve it marked stale)",
                "key",
            )
        version = snap.index.table_version if snap.index is not None else None
        return refusal(
            404,
            f"no precomputed score for key {shown_key!r} in {self.table} (version {version}); POST /v1/score with its "
            "features to score it live",
            "key",
        )

    async def answer_request(self, snap: ServingSnapshot, payload: Any, *, started: float | None = None) -> Answer:
        """``POST /v1/score`` as a whole: one item (an object) or a list of at most ``serve.max_batch_keys`` items,
        each answered by :meth:`answer` from `snap`; a list's answers are joined in order, each with its status. A
        request answered item by item is counted in the request metrics (its duration from `started`, a
        ``time.perf_counter()``)."""
        started = time.perf_counter() if started is None else started
        single = not isinstance(payload, list)
        items = [payload] if single else payload
        if not single and len(items) > self.serve.max_batch_keys:
            return refusal(413, f"{len(items)} items; serve.max_batch_keys allows {self.serve.max_batch_keys}", "body")
        if not items:
            return Answer(200, b"[]")
        answers = await self.answer(snap, items, single=single)
        sources = {a.source for a in answers}
        source = "live" if "live" in sources else "precomputed" if "precomputed" in sources else "none"
        self.metrics.request("score", source, time.perf_counter() - started)
        if single:
            return answers[0]
        return Answer(200, b"[" + b",".join(_with_status(a.status, a.body) for a in answers) + b"]", source=source)

    async def answer(self, snap: ServingSnapshot, items: Sequence[Any], *, single: bool) -> list[Answer]:
        """Answer every item from one snapshot (`snap`), in order.

        Each item is judged on its own and the same way whatever the table holds: its shape and every feature value
        are checked against the model's inputs first (a 422 naming the field, for that item alone); then a current
        precomputed score answers it, else its features are scored live (all of the request's live items in one
        submission, with the snapshot's model), else a stale score where ``serve.serve_stale`` allows, else a 404.
        A live failure is a 503 (a backend fault) or a 422 (the model would not take that item's rows)."""
        types = snap.model.types
        answers: list[Answer | None] = [None] * len(items)
        keyed: list[tuple[int, Any, Key, Any]] = []
        for i, item in enumerate(items):
            where = "" if single else f"[{i}]"
            try:
                key_value, key, features = self._item(item, where, types)
            except RequestError as e:
                answers[i] = refusal(e.status, str(e), e.field)
                continue
            keyed.append((i, key_value, key, features))
        hits = snap.get_many([key for _, _, key, _ in keyed])
        live_rows: list[Mapping[str, Any]] = []
        live_at: list[tuple[int, Any, Lookup]] = []
        metrics = self.metrics
        for (i, key_value, _, features), hit in zip(keyed, hits, strict=True):
            found = snap.judge(hit)
            if found.outcome == "hit":
                metrics.lookup("hit")
                answers[i] = Answer(
                    200, precomputed_body(key_value, found, features_given=features is not None), source="precomputed"
                )
            elif features is not None and self.serve.live:
                live_rows.append(features)
                live_at.append((i, key_value, found))
            elif found.outcome == "stale" and snap.serve_stale:
                metrics.lookup("stale")
                answers[i] = Answer(200, precomputed_body(key_value, found, features_given=False), source="precomputed")
            else:
                metrics.lookup(found.outcome)
                why = (
                    f"its precomputed score is stale ({found.reason})"
                    if found.outcome == "stale"
                    else "it has no precomputed score"
                )
                how = "send its features to score it live" if self.serve.live else "live inference is off (serve.live)"
                answers[i] = refusal(404, f"key {key_value!r}: {why}; {how}", "key")
        if live_rows:
            for i, answer in zip(
                [i for i, _, _ in live_at], await self._answer_live(snap, live_rows, live_at), strict=True
            ):
                answers[i] = answer
        return [a for a in answers if a is not None]

    # -- live ------------------------------------------------------------------------------------------------------

    async def _answer_live(
        self, snap: ServingSnapshot, rows: list[Mapping[str, Any]], at: list[tuple[int, Any, Lookup]]
    ) -> list[Answer]:
        metrics = self.metrics
        try:
            result = await self.score_live(snap.model, features_batch(rows, snap.model.types))
        except RequestError as e:  # the rows failed on their own in the model (RowRejected): this request only
            metrics.live_error("rejected")
            return [refusal(e.status, str(e), e.field, key=key_value) for _, key_value, _ in at]
        except LiveUnavailable as failure:
            metrics.live_error(failure.kind)
            retry = _retry_after(failure)
            out = []
            for _, key_value, found in at:
                if found.outcome == "stale" and snap.serve_stale:
                    metrics.lookup("stale")
                    out.append(
                        Answer(200, precomputed_body(key_value, found, features_given=True), source="precomputed")
                    )
                else:
                    out.append(Answer(503, orjson.dumps({"error": str(failure), "key": key_value}), retry, "none"))
            return out
        metrics.lookup("live", len(at))
        prepared = snap.model.prepared
        return [
            Answer(200, orjson.dumps(live_answer(key_value, prepared, result, row)), source="live")
            for row, (_, key_value, _) in enumerate(at)
        ]

    async def score_live(self, model: ServedModel, batch: pa.RecordBatch) -> LiveResult:
        """`batch` scored live by `model`'s scorer within the deadline; raises :class:`LiveUnavailable` or
        :class:`RequestError` (:class:`RowRejected`)."""
        if model.live is None:
            raise LiveUnavailable(
                "live inference is switched off (serve.live: false)", retry_after_s=60.0, kind="disabled"
            )
        future = model.live.submit(batch)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=self._wait_s)
        except asyncio.CancelledError:
            raise
        except RequestError:
            raise
        except BaseException as e:  # noqa: BLE001 - every other live failure is "unavailable" (a 503)
            raise describe_live_failure(e) from None

    # -- KServe v2 / Open Inference Protocol -----------------------------------------------------------------------

    async def infer(self, snap: ServingSnapshot, batch: pa.RecordBatch) -> tuple[PreparedModel, LiveResult]:
        """An already-typed feature batch scored live with the snapshot's model; its values are checked first by the
        features' rule (:class:`RequestError` naming the input)."""
        model = snap.model
        if self.check_requests:
            check_batch(batch, model.types)
        return model.prepared, await self.score_live(model, batch)

    def served(self, snap: ServingSnapshot, name: str, version: str | None) -> Answer | None:
        """A 404 when a v2 route names a model (or a version) this service does not serve now, else None."""
        model = snap.model.prepared
        if name != model.name and name != _triton_name(model):
            return refusal(404, f"model {name!r} is not served here; this service serves {model.name!r}", None)
        if version is not None and version != model.version:
            return refusal(
                404,
                f"model {name!r} version {version} is not served; the alias {self.requested_uri} points to "
                f"version {model.version}",
                None,
            )
        return None

    def model_metadata(self, snap: ServingSnapshot, name: str, version: str | None) -> Answer:
        """``GET /v2/models/<name>[/versions/<v>]``: the served version and its inputs."""
        refused = self.served(snap, name, version)
        if refused is not None:
            return refused
        body = {
            "name": name,
            "versions": [snap.model.prepared.version],
            "platform": "scoring",
            "inputs": [{"name": f, "datatype": v2_type(t), "shape": [-1]} for f, t in snap.model.types.items()],
            "outputs": [],
        }
        return Answer(200, orjson.dumps(body))

    async def infer_v2(
        self, snap: ServingSnapshot, name: str, version: str | None, body: bytes, header_length: int | None
    ) -> Answer:
        """``POST /v2/models/<name>[/versions/<v>]/infer``: the request parsed against the snapshot's model, scored
        live with it, and encoded (JSON, or binary tensors with their header's length); a malformed request raises
        :class:`~scoring.core.kserve.ProtocolError`, a bad value :class:`RequestError`."""
        refused = self.served(snap, name, version)
        if refused is not None:
            return refused
        types = snap.model.types
        parsed = kserve.parse_request(body, header_length=header_length, features=list(types), types=types)
        rows = parsed.features.num_rows
        if rows == 0:
            return refusal(422, "the inputs hold no rows", "inputs")
        try:
            prepared, result = await self.infer(snap, parsed.features)
        except LiveUnavailable as failure:
            self.metrics.live_error(failure.kind)
            return refusal(503, str(failure), None, headers=_retry_after(failure))
        encoded, json_length = kserve.encode_response(
            result.predictions,
            model_name=name,
            model_version=prepared.version,
            request=parsed,
            parameters={"source": "live", "backend": result.backend, "fallback": result.fallback},
        )
        self.metrics.lookup("live", rows)
        if json_length is None:
            return Answer(200, encoded, source="live")
        headers = {"Inference-Header-Content-Length": str(json_length)}
        return Answer(200, encoded, headers, "live", "application/octet-stream")


def _retry_after(failure: LiveUnavailable) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(failure.retry_after_s)))}


def _with_status(status: int, body: bytes) -> bytes:
    if status == 200:
        return body
    return body[:-1] + b',"status":' + str(status).encode() + b"}"


def v2_type(kind: pa.DataType) -> str:
    """A feature's Arrow type as a KServe v2 datatype (FP64 where there is no better one)."""
    return {
        pa.float32(): "FP32",
        pa.float64(): "FP64",
        pa.int32(): "INT32",
        pa.int64(): "INT64",
        pa.bool_(): "BOOL",
    }.get(kind, "FP64")


def _triton_name(model: PreparedModel) -> str:
    from scoring.adapters.triton_export import triton_model_name

    return triton_model_name(model.ref)

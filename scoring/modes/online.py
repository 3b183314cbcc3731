"""Online mode: precomputed scores from memory (or Redis), live inference as the fallback, version-aware.

The third way the same model is consumed. :class:`OnlineService` holds no HTTP: it answers lookups and live
requests, and the HTTP routes (``scoring.modes.http_api``) only translate. Its parts:

- **the model**, resolved from ``model.uri`` at start (as batch and streaming do) and re-resolved every
  ``serve.alias_check_interval_s``: when the alias moves, live inference switches to the new version, and every
  precomputed score made by another version becomes **stale**;
- **the precomputed index**: the batch output table (``serve.table``, default ``output.table``) read with delta-rs
  (no Spark) into a :class:`~scoring.core.index.PrecomputedIndex`, rebuilt in a background thread when the table
  gets a new version and swapped in whole (a request holds the index it started with); or, with
  ``serve.index: redis``, what ``scoring publish-online`` loaded, read per request;
- **live inference**: a :class:`~scoring.engine.live.LiveScorer` over the shared predictor (Triton or embedded, from
  ``runtime``), micro-batched, with deadlines and a circuit breaker.

A precomputed score is **current** when its model version is the version the alias points to now and it is younger
than ``serve.max_age_s`` (when set); otherwise it is stale: a request with features is scored live instead; without
features, or with live down, the stale score is served marked ``stale: true`` only when ``serve.serve_stale`` allows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pyarrow as pa

from scoring.adapters import deltalog
from scoring.adapters.metrics import ServeMetrics
from scoring.config import JobConfig, ServeConfig
from scoring.core.identity import TableIdentity, same_table, table_identity
from scoring.core.index import Hit, Key, Layout, PrecomputedIndex, decode_hit, dumps, key_text
from scoring.core.score import ScoringSpec
from scoring.engine.live import (
    Breaker,
    LiveResult,
    LiveScorer,
    LiveUnavailable,
    RequestError,
    check_batch,
    check_features,
    feature_types,
    features_batch,
)
from scoring.engine.model import PreparedModel, prepare_model
from scoring.engine.progress import LogReporter, Reporter
from scoring.errors import ConfigError, InputError, ScoringError

_LOGGER = logging.getLogger(__name__)

REDIS_KEY_SEPARATOR = "\x1f"
"""Joins a composite key's parts into one Redis key text (the ASCII unit separator: never in a real key)."""


def redis_key(key: Key) -> str:
    return key if isinstance(key, str) else REDIS_KEY_SEPARATOR.join(key)


@dataclasses.dataclass(frozen=True)
class Lookup:
    """What the index says about a key: ``hit`` (current), ``stale`` (with why) or ``miss``."""

    outcome: str
    hit: Hit | None = None
    reason: str | None = None


@dataclasses.dataclass(frozen=True)
class _Model:
    prepared: PreparedModel
    types: dict[str, pa.DataType]
    live: LiveScorer | None


_ITEM_FIELDS = ("key", "features")


@dataclasses.dataclass(frozen=True)
class Answer:
    """One item's answer: its status, its JSON body and headers, and what answered it (``precomputed``, ``live``
    or ``none``)."""

    status: int
    body: bytes
    headers: Mapping[str, str] | None = None
    source: str = "none"


def _refusal(status: int, message: str, field: str | None, *, key: Any = None) -> Answer:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    if key is not None:
        body["key"] = key
    return Answer(status, orjson.dumps(body))


def _shown(value: Any) -> str:
    return type(value).__name__ if isinstance(value, dict | list) else repr(value)[:80]


@dataclasses.dataclass(frozen=True)
class ServingSnapshot:
    """What one request is answered from, read once when it starts: the index (one table version, or one Redis
    version), the model (version and live scorer) and the staleness rule with the time it is judged at. A swap of
    the index or a move of the alias while the request runs changes none of it."""

    index: PrecomputedIndex | _RedisView | None
    model: _Model
    max_age_s: float | None
    now: float
    index_stale: str | None
    """Why every score of this index is stale (its table is gone for longer than ``serve.max_age_s``), or None."""
    serve_stale: bool

    def get_many(self, keys: Sequence[Key]) -> list[Hit | None]:
        index = self.index
        if index is None:
            return [None] * len(keys)
        if isinstance(index, _RedisView):
            return index.get_many(keys)
        return [index.get(k) for k in keys]

    def judge(self, hit: Hit | None) -> Lookup:
        """A key's outcome: ``hit`` (current), ``stale`` (with why) or ``miss``."""
        if hit is None:
            return Lookup("miss", reason=None if self.index is not None else "the index is not loaded")
        current = self.model.prepared.version
        if hit.model_version != current:
            return Lookup(
                "stale", hit, f"scored by model version {hit.model_version}; the alias points to {current} now"
            )
        if self.index_stale is not None:
            return Lookup("stale", hit, self.index_stale)
        max_age = self.max_age_s
        if max_age is not None:
            age = self.now - hit.scored_at_us / 1e6
            if age > max_age:
                return Lookup("stale", hit, f"scored {age:.0f} s ago, older than serve.max_age_s ({max_age:g} s)")
        return Lookup("hit", hit)


def precomputed_body(key: Any, lookup: Lookup, *, features_given: bool | None = None) -> bytes:
    """The JSON answer for a precomputed (or stale) score: the stored record with where it came from."""
    assert lookup.hit is not None
    head = {"key": key, "source": "precomputed", "stale": lookup.outcome == "stale"}
    if lookup.outcome == "stale":
        head["stale_reason"] = lookup.reason
    if features_given is not None:
        head["features_used"] = False
    return dumps(head)[:-1] + b"," + lookup.hit.record[1:]


def live_answer(key: Any, prepared: PreparedModel, result: LiveResult, row: int) -> dict[str, Any]:
    return {
        "key": key,
        "source": "live",
        "stale": False,
        "backend": result.backend,
        "fallback": result.fallback,
        "features_used": True,
        "model_name": prepared.name,
        "model_version": prepared.version,
        "model_uri": prepared.uri,
        "scored_at": dt.datetime.fromtimestamp(result.scored_at, dt.UTC).isoformat().replace("+00:00", "Z"),
        "predictions": {name: orjson.Fragment(texts[row]) for name, texts in result.prediction_json.items()},
    }


class _RedisIndex:
    """The Redis index as the service sees it: the published version, refreshed; a lookup per request."""

    def __init__(self, url: str, prefix: str) -> None:
        from scoring.adapters.redis_store import RedisReader

        self.reader = RedisReader(url, prefix)
        self.url = url
        self.prefix = prefix
        self.published = None

    def refresh(self) -> bool:
        """Re-read the published version; True when it changed."""
        current = self.reader.current()
        changed = current is not None and (self.published is None or current.version != self.published.version)
        if current is not None:
            self.published = current
        return changed

    @property
    def table_version(self) -> int | None:
        return None if self.published is None else self.published.version

    def view(self) -> _RedisView:
        return _RedisView(self, self.published)

    def __len__(self) -> int:
        return 0 if self.published is None else int(self.published.keys)


@dataclasses.dataclass(frozen=True)
class _RedisView:
    """The Redis index at one published version, for one request: its keys are read in one round trip, all at one
    version (when a publish switched and deleted that version meanwhile, all at the new one)."""

    index: _RedisIndex
    published: Any

    @property
    def table_version(self) -> int | None:
        return None if self.published is None else self.published.version

    def get_many(self, keys: Sequence[Key]) -> list[Hit | None]:
        if self.published is None or not keys:
            return [None] * len(keys)
        names = [redis_key(k) for k in keys]
        records = self.index.reader.mget(self.published.version, names)
        if any(r is None for r in records) and self.index.refresh():  # switched under us: all at the new version
            records = self.index.reader.mget(self.index.published.version, names)
        return [None if r is None else decode_hit(r) for r in records]


class OnlineService:
    """Answers ``scoring serve``'s routes without HTTP; see the module's docstring. Use :meth:`start` and
    :meth:`close` (or ``with``)."""

    def __init__(
        self, config: JobConfig, *, reporter: Reporter | None = None, clock=time.time, check_requests: bool = True
    ) -> None:
        self.config = config
        self.serve: ServeConfig = config.serve or ServeConfig()
        self.reporter = reporter or LogReporter()
        self.metrics = ServeMetrics(config.name)
        self.table = self.serve.table or config.output.table
        self.key_columns = tuple(config.input.key)
        self._clock = clock
        self._index: PrecomputedIndex | _RedisIndex | None = None
        self._model: _Model | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stack = contextlib.ExitStack()
        self._token = self._auth_token()
        self._swap_lock = threading.Lock()
        self.index_error: str | None = None
        """Why the last refresh of the index failed (the served table missing, unreadable), or None."""
        self.identity: TableIdentity = table_identity(self.table)
        """Where the served table lives (the memory index compares this, Delta's table id and the version)."""
        self._confirmed_at: float | None = None
        """When a refresh last found the served table as the index holds it (or built the index)."""
        self._wait_s = self.serve.deadline_s + self.serve.batch_window_ms / 1000 + 0.05
        self.check_requests = check_requests
        """Whether each item's features are checked before it is answered (always, but for the benchmark that
        measures what the checks cost: ``scoring bench-serve --request-checks both``)."""

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def __enter__(self) -> OnlineService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, *, wait_index: bool = True) -> OnlineService:
        """Resolve the model, open live inference, load the index (waiting for it unless told not to) and start the
        background refreshers."""
        try:
            self._model = self._open_model(prepare_model(self.config))
            self.metrics.model_version(self._model.prepared.version)
            self.reporter.step(
                f"model {self.config.model.uri} -> version {self._model.prepared.version}"
                + ("" if self._model.live is None else f"; live inference through {self._model.live.primary_name}")
            )
            self._load_index_once()
        except BaseException:
            self.close()
            raise
        loader = self._thread(self._refresh_loop, "index-refresh")
        self._thread(self._alias_loop, "alias-check")
        if wait_index:
            loader.join(timeout=0)  # the first index was loaded above
        return self

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if self._model is not None and self._model.live is not None:
            self._model.live.close()
        self._stack.close()
        if isinstance(self._index, _RedisIndex):
            self._index.reader.close()

    def _thread(self, target, name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    # -- the model -------------------------------------------------------------------------------------------------

    @property
    def model(self) -> PreparedModel:
        assert self._model is not None, "start() first"
        return self._model.prepared

    def _open_model(self, prepared: PreparedModel) -> _Model:
        from scoring.adapters import registry

        types = feature_types(registry.signature_inputs(prepared.ref), prepared.features)
        live = self._open_live(prepared) if self.serve.live else None
        return _Model(prepared, types, live)

    def _open_live(self, prepared: PreparedModel) -> LiveScorer:
        from scoring.adapters.runtime import cached_predictor
        from scoring.engine.runtime import open_predictor

        serve = self.serve
        spec = self._stack.enter_context(open_predictor(self.config, prepared, self.reporter))
        name = self.config.runtime.backend
        if name == "triton":  # one attempt per call, bounded by the deadline: the breaker, not retries, copes
            spec = dataclasses.replace(
                spec, timeout_s=serve.deadline_s, max_retries=0, max_inflight=1, batch_rows=serve.max_batch_rows
            )
        fallback = None
        if serve.live_fallback == "embedded" and name == "triton":
            from scoring.adapters.embedded import EmbeddedSpec

            ref = prepared.ref
            embedded = EmbeddedSpec(
                model_uri=ref.uri,
                local_path=ref.local_path,
                flavors=ref.flavors,
                features=prepared.features,
                threads=self.config.runtime.embedded.threads,
                tracking_uri=ref.tracking_uri,
                registry_uri=ref.registry_uri,
            )
            fallback = embedded.create
        scoring_spec = ScoringSpec(
            features=prepared.features, passthrough=(), key=(), model=prepared.uri, output_schema=None
        )
        live = LiveScorer(
            spec=scoring_spec,
            primary=spec.create if name == "triton" else (lambda: cached_predictor(spec)),
            primary_name=name,
            fallback=fallback,
            window_s=serve.batch_window_ms / 1000,
            max_rows=serve.max_batch_rows,
            breaker=Breaker(serve.breaker_failures, serve.breaker_reset_s),
            on_event=self.metrics.live_event,
        )
        if not live.connect() and name == "triton":
            live.breaker.failure()
            self.reporter.step(
                f"live backend {name} is not reachable yet; precomputed scores are served, live requests get 503 "
                "until it answers" + (" (the embedded fallback answers them)" if fallback else "")
            )
        return live

    def _alias_loop(self) -> None:
        while not self._stop.wait(self.serve.alias_check_interval_s):
            try:
                self.check_alias()
            except ScoringError as e:
                _LOGGER.warning(
                    "re-resolving %s failed (keeping version %s): %s", self.config.model.uri, self.model.version, e
                )

    def check_alias(self) -> bool:
        """Re-resolve ``model.uri`` now; True when it moved (live switches, older precomputed scores go stale)."""
        current = prepare_model(self.config)
        old = self._model
        if old is None or current.version == old.prepared.version:
            return False
        new = self._open_model(current)
        with self._swap_lock:
            self._model = new
        self.metrics.model_version(current.version)
        _LOGGER.warning(
            "model %s moved: version %s -> %s; precomputed scores of version %s are stale from now on",
            self.config.model.uri,
            old.prepared.version,
            current.version,
            old.prepared.version,
        )
        if old.live is not None:
            threading.Timer(max(1.0, self.serve.deadline_s * 2), old.live.close).start()
        return True

    # -- the index -------------------------------------------------------------------------------------------------

    def _load_index_once(self) -> None:
        if self.serve.index == "redis":
            prefix = self.serve.redis.prefix or f"scoring:{self.config.name}"
            index = _RedisIndex(self.serve.redis.url, prefix)
            index.refresh()
            self._index = index
            self._record_index()
            if index.published is None:
                self.reporter.step(
                    f"no scores published under {prefix} at {self.serve.redis.url} yet: run scoring publish-online"
                )
            return
        self._swap(self._build_index())

    def _build_index(self) -> PrecomputedIndex:
        return build_index(self.config)

    def _swap(self, index: PrecomputedIndex) -> None:
        with self._swap_lock:
            self._index = index
            self._confirmed_at = self._clock()
        self.reporter.step(f"serving {len(index):,} precomputed keys from {self.table} version {index.table_version}")
        self._record_index()

    def _record_index(self) -> None:
        index = self._index
        if index is None:
            return
        self.metrics.index(version=index.table_version, keys=len(index), built_at=self._clock())

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.serve.refresh_interval_s):
            try:
                self.refresh_index()
            except ScoringError as e:
                self.index_error = e.message
                _LOGGER.warning("refreshing the index failed (keeping the one served): %s", e)
            except Exception as e:  # noqa: BLE001 - a refresh must never kill the thread; the old index stays
                self.index_error = f"{type(e).__name__}: {e}"
                _LOGGER.warning("refreshing the index failed (keeping the one served)", exc_info=True)

    def refresh_index(self) -> bool:
        """Check the table (or Redis) now; build and swap when it is another table or another version of it. True
        when swapped.

        The memory index is reloaded when the served table's identity changes: the place
        (:func:`~scoring.core.identity.same_table`), Delta's table id (a table deleted and re-created at the same
        place is another table, whatever its version number) or the version. A table that is gone is reported in
        :attr:`index_error` at once; the last index keeps answering (stale once it is older than
        ``serve.max_age_s``)."""
        index = self._index
        if isinstance(index, _RedisIndex):
            changed = index.refresh()
            if changed:
                self._record_index()
            return changed
        snap = deltalog.snapshot(self.table, key="serve.table" if self.serve.table else "output.table")
        if snap is None:
            error = (
                f"the served table {self.table} is gone (no Delta table there); answering from the last index "
                f"(version {self.index_version})"
            )
            if self.index_error != error:
                _LOGGER.warning("%s", error)
            self.index_error = error
            return False
        if (
            index is not None
            and index.identity is not None
            and same_table(index.identity, self.identity)
            and (index.table_id, index.table_version) == (snap.table_id, snap.version)
        ):
            self._confirmed_at = self._clock()
            self.index_error = None
            return False
        self._swap(self._build_index())
        self.index_error = None
        return True

    @property
    def index_version(self) -> int | None:
        return None if self._index is None else self._index.table_version

    # -- answering -------------------------------------------------------------------------------------------------

    def snapshot(self) -> ServingSnapshot:
        """What one request answers from, read once: the index, the model (version and live scorer) and the
        staleness rule with the clock. Every item of the request is judged against this one snapshot."""
        model = self._model
        assert model is not None, "start() first"
        index = self._index
        now = self._clock()
        if isinstance(index, _RedisIndex):
            index = index.view()
        return ServingSnapshot(
            index=index,
            model=model,
            max_age_s=self.serve.max_age_s,
            now=now,
            index_stale=self._index_stale(now),
            serve_stale=self.serve.serve_stale,
        )

    def _index_stale(self, now: float) -> str | None:
        """Why every answer of the served index is stale (its table cannot be confirmed for longer than
        ``serve.max_age_s``), or None."""
        max_age = self.serve.max_age_s
        if max_age is None or self.index_error is None or self._confirmed_at is None:
            return None
        age = now - self._confirmed_at
        if age <= max_age:
            return None
        return (
            f"the served index (version {self.index_version}) was last confirmed {age:.0f} s ago, longer than "
            f"serve.max_age_s ({max_age:g} s): {self.index_error}"
        )

    def ready(self) -> tuple[bool, str]:
        """Ready when the index is loaded, not stale as a whole, and live inference (when enabled) can answer (the
        backend's health only: clients' mistakes never count); with why not."""
        if self._index is None or (isinstance(self._index, _RedisIndex) and self._index.published is None):
            return False, "the precomputed index is not loaded"
        stale = self._index_stale(self._clock())
        if stale is not None:
            return False, stale
        model = self._model
        if model is not None and model.live is not None and not model.live.ready():
            return False, f"the live backend ({model.live.primary_name}) is not ready"
        return True, "ready"

    def key_of(self, value: Any) -> Key:
        """A request's key (a scalar, or for a composite key an object by column or a list in key order) as the
        index's key; a malformed one raises :class:`RequestError`."""
        columns = self.key_columns
        if len(columns) == 1:
            if isinstance(value, Mapping) and set(value) == {columns[0]}:
                value = value[columns[0]]
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                return key_text(value)
            raise RequestError(f"key: expected a string or a number for {columns[0]}, got {_shown(value)}", field="key")
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
                raise RequestError(f"key.{column}: expected a string or a number, got {_shown(part)}", field=column)
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

    def lookup(self, key: Key) -> Lookup:
        """One key against a fresh snapshot (a request of several keys uses one :meth:`snapshot` for all)."""
        snap = self.snapshot()
        return snap.judge(snap.get_many([key])[0])

    def answer_path(self, segments: Sequence[str]) -> Answer:
        """``GET /v1/scores/<key>``: the key's precomputed score (current, or stale where allowed), else a 404."""
        snap = self.snapshot()
        key = self.key_from_path(segments)
        shown: Any = segments[0] if len(segments) == 1 else dict(zip(self.key_columns, segments, strict=True))
        found = snap.judge(snap.get_many([key])[0])
        self.metrics.lookup(found.outcome)
        if found.outcome == "hit" or (found.outcome == "stale" and snap.serve_stale):
            return Answer(200, precomputed_body(shown, found), source="precomputed")
        if found.outcome == "stale":
            return _refusal(
                404,
                f"the precomputed score for {shown!r} is stale ({found.reason}); POST /v1/score with its features "
                "to score it live (or set serve.serve_stale: true to serve it marked stale)",
                "key",
            )
        version = snap.index.table_version if snap.index is not None else None
        return _refusal(
            404,
            f"no precomputed score for key {shown!r} in {self.table} (version {version}); POST /v1/score with its "
            "features to score it live",
            "key",
        )

    async def answer(self, items: Sequence[Any], *, single: bool) -> list[Answer]:
        """``POST /v1/score``: answer every item from one :meth:`snapshot`, in order.

        Each item is judged on its own and the same way whatever the table holds: its shape and every feature value
        are checked against the model's inputs first (a 422 naming the field, for that item alone); then a current
        precomputed score answers it, else its features are scored live (all of the request's live items in one
        submission, with the snapshot's model), else a stale score where ``serve.serve_stale`` allows, else a 404.
        A live failure is a 503 (a backend fault) or a 422 (the model would not take that item's rows)."""
        snap = self.snapshot()
        types = snap.model.types
        answers: list[Answer | None] = [None] * len(items)
        keyed: list[tuple[int, Any, Key, Any]] = []
        for i, item in enumerate(items):
            where = "" if single else f"[{i}]"
            try:
                key_value, key, features = self._item(item, where, types)
            except RequestError as e:
                answers[i] = _refusal(e.status, str(e), e.field)
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
                answers[i] = _refusal(404, f"key {key_value!r}: {why}; {how}", "key")
        if live_rows:
            for i, answer in zip(
                [i for i, _, _ in live_at], await self._answer_live(snap, live_rows, live_at), strict=True
            ):
                answers[i] = answer
        return [a for a in answers if a is not None]

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

    async def _answer_live(
        self, snap: ServingSnapshot, rows: list[Mapping[str, Any]], at: list[tuple[int, Any, Lookup]]
    ) -> list[Answer]:
        metrics = self.metrics
        try:
            result = await self._score_live(snap.model, features_batch(rows, snap.model.types))
        except RequestError as e:  # the rows failed on their own in the model (RowRejected): this request only
            metrics.live_error("rejected")
            return [_refusal(e.status, str(e), e.field, key=key_value) for _, key_value, _ in at]
        except LiveUnavailable as failure:
            metrics.live_error(failure.kind)
            retry = {"Retry-After": str(max(1, math.ceil(failure.retry_after_s)))}
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

    async def _score_live(self, model: _Model, batch: pa.RecordBatch) -> LiveResult:
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

    async def infer(self, batch: pa.RecordBatch) -> tuple[PreparedModel, LiveResult]:
        """The KServe v2 route: an already-typed feature batch scored live with one snapshot's model; its values
        are checked first by the features' rule (:class:`RequestError` naming the input)."""
        model = self.snapshot().model
        if self.check_requests:
            check_batch(batch, model.types)
        return model.prepared, await self._score_live(model, batch)

    def feature_types(self) -> dict[str, pa.DataType]:
        """The model's features and their types, in its order."""
        assert self._model is not None, "start() first"
        return dict(self._model.types)

    # -- auth ------------------------------------------------------------------------------------------------------

    def _auth_token(self) -> str | None:
        name = self.serve.auth_token_env
        if name is None:
            return None
        token = os.environ.get(name, "")
        if not token:
            raise ConfigError(
                f"serve.auth_token_env names {name}, which is not set (or empty) in the environment",
                hint=f"export {name}=<a long random token> before starting the service, or leave "
                "serve.auth_token_env out to serve without auth",
            )
        return token

    @property
    def auth_token(self) -> str | None:
        return self._token


def describe_live_failure(error: BaseException) -> LiveUnavailable:
    """Any failure of a live future as :class:`LiveUnavailable` (a deadline passing included)."""
    if isinstance(error, LiveUnavailable):
        return error
    if isinstance(error, concurrent.futures.TimeoutError | TimeoutError):
        return LiveUnavailable("live inference missed its deadline", retry_after_s=1.0, kind="deadline")
    return LiveUnavailable(f"live inference failed: {error}", retry_after_s=1.0, kind="error")


def build_index(config: JobConfig) -> PrecomputedIndex:
    """The precomputed index of the job's output table (``serve.table``, default ``output.table``), latest version,
    restricted to ``serve.partition`` when set; read with delta-rs."""
    serve = config.serve or ServeConfig()
    table_path = serve.table or config.output.table
    started = time.perf_counter()
    snap = deltalog.snapshot(table_path, key="serve.table" if serve.table else "output.table")
    if snap is None:
        raise InputError(
            f"no Delta table at {table_path}: nothing precomputed to serve",
            hint="run the batch job first (scoring run CONFIG), or point serve.table at its output",
        )
    missing = [p for p in serve.partition if p not in snap.partition_columns]
    if missing:
        raise ConfigError(
            f"serve.partition names {missing}, which are not partition columns of {table_path} "
            f"(partition columns: {list(snap.partition_columns) or 'none'})",
            hint="name partition columns of the output table, or leave serve.partition out",
        )
    dataset = snap.dataset()
    where = None
    if serve.partition:
        import pyarrow.dataset as pds

        for column, value in serve.partition.items():
            field_type = dataset.schema.field(column).type
            try:
                typed = pa.scalar(value).cast(field_type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise ConfigError(
                    f"serve.partition.{column}: {value!r} is not a {field_type} value",
                    hint=f"give {column} as the table stores it (e.g. 2026-11-01 for a date)",
                ) from None
            condition = pds.field(column) == typed
            where = condition if where is None else where & condition
    table = dataset.to_table(filter=where)
    try:
        layout = Layout.of(table.schema, tuple(config.input.key), snap.partition_columns)
    except ValueError as e:
        raise InputError(
            f"{table_path} is not a scoring output table: {e}",
            hint="point serve.table at a table written by scoring run (key, lineage and prediction columns)",
        ) from None
    index = PrecomputedIndex.build(
        table,
        layout,
        table_version=snap.version,
        source=table_path,
        table_id=snap.table_id,
        identity=table_identity(table_path),
    )
    _LOGGER.info(
        "index of %s version %d: %d keys from %d rows in %.2f s",
        table_path,
        snap.version,
        len(index),
        index.rows,
        time.perf_counter() - started,
    )
    return index


def publish(config: JobConfig, *, reporter: Reporter | None = None) -> dict[str, Any]:
    """``scoring publish-online``: the index of the output table's latest version, written to Redis under
    ``serve.redis.prefix`` and switched to in one step (see :func:`scoring.adapters.redis_store.publish`)."""
    from scoring.adapters import redis_store

    reporter = reporter or LogReporter()
    serve = config.serve or ServeConfig()
    prefix = serve.redis.prefix or f"scoring:{config.name}"
    index = build_index(config)
    reporter.step(f"{index.source} version {index.table_version}: {len(index):,} keys to publish to {prefix}")
    total = len(index)

    def progress(done: int) -> None:
        reporter.tasks("publishing keys", done, total)

    result = redis_store.publish(
        serve.redis.url,
        prefix,
        int(index.table_version or 0),
        ((redis_key(key), record) for key, record in index.items()),
        source=redis_store.source_of(index.identity or index.source, index.table_id),
        batch_keys=serve.redis.batch_keys,
        on_progress=progress,
    )
    reporter.close()
    return {
        "table": index.source,
        "table_version": index.table_version,
        "url": serve.redis.url,
        "prefix": prefix,
        "keys": result.keys if result.published else total,
        "published": result.published,
        "previous_version": result.previous_version,
        "elapsed_s": result.elapsed_s,
    }

"""The online service: the served model (followed as its alias moves), the precomputed index (refreshed and swapped
whole), live inference, and one snapshot of them per request, answered by the policy in
:mod:`scoring.modes.online.answers`. No HTTP here (see :mod:`scoring.modes.http_api`)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from scoring.adapters import deltalog
from scoring.adapters.metrics import ServeMetrics
from scoring.config import JobConfig, ServeConfig
from scoring.core.identity import TableIdentity, same_table, table_identity
from scoring.core.index import Key, PrecomputedIndex
from scoring.core.score import ScoringSpec
from scoring.core.tensors import layouts
from scoring.engine.follow import AliasFollower, Move
from scoring.engine.live import Breaker, LiveResult, LiveScorer, feature_types
from scoring.engine.model import PreparedModel, prepare_model
from scoring.engine.progress import LogReporter, Reporter
from scoring.errors import ConfigError, ScoringError
from scoring.modes.online.answers import Answerer
from scoring.modes.online.snapshot import Answer, Lookup, ServedModel, ServingSnapshot
from scoring.modes.online.sources import RedisIndex, build_index

_LOGGER = logging.getLogger(__name__)


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
        self._index: PrecomputedIndex | RedisIndex | None = None
        self._follower: AliasFollower[PreparedModel, ServedModel] = AliasFollower(
            lambda: prepare_model(self.config),
            self._open_model,
            interval_s=self.serve.alias_check_interval_s,
            on_move=self._moved,
        )
        """The model alias, followed: one :class:`ServedModel` (types, live scorer) per version met."""
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
        self.answers = Answerer(
            serve=self.serve,
            key_columns=self.key_columns,
            table=self.table,
            requested_uri=config.model.uri,
            metrics=self.metrics,
            check_requests=check_requests,
        )
        """The answer policy (hit, stale, live, fallback), given one snapshot per request."""

    @property
    def check_requests(self) -> bool:
        """Whether each item's features are checked before it is answered (always, but for the benchmark that
        measures what the checks cost: ``scoring bench-serve --request-checks both``)."""
        return self.answers.check_requests

    @check_requests.setter
    def check_requests(self, value: bool) -> None:
        self.answers.check_requests = value

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def __enter__(self) -> OnlineService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, *, wait_index: bool = True) -> OnlineService:
        """Resolve the model, open live inference, load the index (waiting for it unless told not to) and start the
        background refreshers."""
        try:
            served = self._follower.start()
            self.metrics.model_version(served.prepared.version)
            self.reporter.step(
                f"model {self.config.model.uri} -> version {served.prepared.version}"
                + ("" if served.live is None else f"; live inference through {served.live.primary_name}")
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
        for served in self._follower.opened().values():
            if served.live is not None:
                served.live.close()
        self._stack.close()
        if isinstance(self._index, RedisIndex):
            self._index.reader.close()

    def _thread(self, target, name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    # -- the model -------------------------------------------------------------------------------------------------

    @property
    def _model(self) -> ServedModel | None:
        return self._follower.current if self._follower.started else None

    @property
    def model(self) -> PreparedModel:
        assert self._model is not None, "start() first"
        return self._model.prepared

    def _open_model(self, prepared: PreparedModel) -> ServedModel:
        """What the service needs of one version: its features' types (array columns as ``input.tensors`` says)
        and its live scorer. The alias follower calls it once per version."""
        from scoring.adapters import registry

        tensors = self._tensors(prepared)
        types = feature_types(registry.signature_inputs(prepared.ref), prepared.features, tensors)
        live = self._open_live(prepared) if self.serve.live else None
        return ServedModel(prepared, types, live)

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
                tensors=layouts(prepared.features, self.config.input.tensors),  # as the primary's spec
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

    def _tensors(self, prepared: PreparedModel):
        """Which model input each feature column feeds (``input.tensors``); only the columns it lists."""
        listed = self.config.input.tensors
        return tuple(t for t in layouts(prepared.features, listed) if t.column in listed)

    def _alias_loop(self) -> None:
        tick = min(1.0, self.serve.alias_check_interval_s)
        while not self._stop.wait(tick):  # the follower re-resolves once serve.alias_check_interval_s has passed
            try:
                self._follower.check()
            except ScoringError as e:
                _LOGGER.warning(
                    "re-resolving %s failed (keeping version %s): %s", self.config.model.uri, self.model.version, e
                )

    def check_alias(self) -> bool:
        """Re-resolve ``model.uri`` now; True when it moved (live switches, older precomputed scores go stale)."""
        return self._follower.check(force=True) is not None

    def _moved(self, move: Move[PreparedModel, ServedModel]) -> None:
        self.metrics.model_version(move.new_version)
        _LOGGER.warning(
            "model %s moved: version %s -> %s; precomputed scores of version %s are stale from now on%s",
            self.config.model.uri,
            move.old_version,
            move.new_version,
            move.old_version,
            " (re-using what that version opened)" if move.reused else "",
        )

    # -- the index -------------------------------------------------------------------------------------------------

    def _load_index_once(self) -> None:
        if self.serve.index == "redis":
            prefix = self.serve.redis.prefix or f"scoring:{self.config.name}"
            index = RedisIndex(self.serve.redis.url, prefix)
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
        if isinstance(index, RedisIndex):
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
        if isinstance(index, RedisIndex):
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
        if self._index is None or (isinstance(self._index, RedisIndex) and self._index.published is None):
            return False, "the precomputed index is not loaded"
        stale = self._index_stale(self._clock())
        if stale is not None:
            return False, stale
        model = self._model
        if model is not None and model.live is not None and not model.live.ready():
            return False, f"the live backend ({model.live.primary_name}) is not ready"
        return True, "ready"

    def key_of(self, value: Any) -> Key:
        """A request's key as the index's key (see :meth:`Answerer.key_of`)."""
        return self.answers.key_of(value)

    def key_from_path(self, segments: Sequence[str]) -> Key:
        return self.answers.key_from_path(segments)

    def lookup(self, key: Key) -> Lookup:
        """One key against a fresh snapshot (a request of several keys uses one :meth:`snapshot` for all)."""
        snap = self.snapshot()
        return snap.judge(snap.get_many([key])[0])

    def answer_path(self, segments: Sequence[str]) -> Answer:
        """``GET /v1/scores/<key>``, from one snapshot."""
        return self.answers.answer_path(self.snapshot(), segments)

    async def answer_request(self, payload: Any) -> Answer:
        """``POST /v1/score`` (one item or a list of them, parsed from JSON), from one snapshot."""
        started = time.perf_counter()
        return await self.answers.answer_request(self.snapshot(), payload, started=started)

    async def answer(self, items: Sequence[Any], *, single: bool) -> list[Answer]:
        """Every item answered from one snapshot, in order (see :meth:`Answerer.answer`)."""
        return await self.answers.answer(self.snapshot(), items, single=single)

    async def infer(self, batch: pa.RecordBatch) -> tuple[PreparedModel, LiveResult]:
        """An already-typed feature batch scored live with one snapshot's model."""
        return await self.answers.infer(self.snapshot(), batch)

    async def infer_v2(self, name: str, version: str | None, body: bytes, header_length: int | None) -> Answer:
        """The KServe v2 infer route, from one snapshot (see :meth:`Answerer.infer_v2`)."""
        return await self.answers.infer_v2(self.snapshot(), name, version, body, header_length)

    def model_metadata(self, name: str, version: str | None) -> Answer:
        return self.answers.model_metadata(self.snapshot(), name, version)

    def model_ready(self, name: str, version: str | None) -> tuple[Answer | None, bool, str]:
        """A v2 model-ready route: a refusal when `name` / `version` is not served, else whether it is ready and why."""
        refused = self.answers.served(self.snapshot(), name, version)
        ok, why = self.ready()
        return refused, ok, why

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``: readiness, the served version and the index, read once."""
        ok, why = self.ready()
        model = self.model
        return {
            "ready": ok,
            "reason": why,
            "model_name": model.name,
            "model_version": model.version,
            "model_uri": model.uri,
            "requested_model_uri": self.config.model.uri,
            "index": self.serve.index,
            "table": self.table,
            "table_version": self.index_version,
            "index_error": self.index_error,
        }

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

"""The ``serve:`` section: ``scoring serve``'s HTTP service and its precomputed-score index."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from scoring.config.base import (
    _INT32_MAX,
    _at_most,
    _Float,
    _Int,
    _Seconds,
    _Strict,
)


class RedisIndexConfig(_Strict):
    url: str = "redis://127.0.0.1:6379/0"
    """The Redis server ``scoring publish-online`` loads and ``scoring serve`` reads (``redis://host:port/db``)."""
    prefix: str | None = None
    """Key prefix of this job's scores. Default: ``scoring:<job name>``."""
    batch_keys: Annotated[_Int, Field(ge=1), _at_most(1_000_000, "more keys per pipeline than that is a typo")] = 10_000
    """Keys written per pipeline round trip by ``scoring publish-online``."""


class ServeConfig(_Strict):
    host: str = "127.0.0.1"
    """Address ``scoring serve`` listens on (``--host`` overrides it)."""
    port: Annotated[_Int, Field(ge=0, le=65_535)] = 8080
    """Port ``scoring serve`` listens on (0: any free port; ``--port`` overrides it)."""
    table: str | None = None
    """The Delta table of precomputed scores. Default: ``output.table`` (the batch job's output)."""
    partition: dict[str, str] = {}
    """Serve only the rows of this partition (e.g. ``{ds: 2026-11-01}``). Default: when the table holds several rows
    for a key (one per partition), the most recently scored one answers."""
    index: Literal["memory", "redis"] = "memory"
    """Where precomputed scores are looked up: ``memory`` (the table loaded into this process with delta-rs, rebuilt
    in the background when the table gets a new version) or ``redis`` (what ``scoring publish-online`` loaded)."""
    redis: RedisIndexConfig = RedisIndexConfig()
    """The Redis index (``index: redis``)."""
    refresh_interval_s: Annotated[_Seconds, Field(gt=0)] = 5.0
    """How often the table's version (or the Redis index's published version) is checked for a new one."""
    alias_check_interval_s: Annotated[_Seconds, Field(gt=0)] = 30.0
    """How often ``model.uri`` is re-resolved; a precomputed score by another version than the current one is
    stale."""
    max_age_s: Annotated[_Seconds, Field(gt=0)] | None = None
    """A precomputed score older than this (by its ``scored_at``) is stale. Default: no limit."""
    serve_stale: bool = False
    """When a key's precomputed score is stale and live inference is unavailable, answer with it marked
    ``stale: true`` instead of 503."""
    live: bool = True
    """Score keys without a current precomputed score live, with the request's features. ``false``: such a key is
    404 (or its stale score, with ``serve_stale``)."""
    live_fallback: Literal["none", "embedded"] = "none"
    """With ``runtime.backend: triton``: answer live requests in process while Triton is down (the response says
    ``backend: embedded``)."""
    batch_window_ms: Annotated[_Float, Field(ge=0, le=1000)] = 2.0
    """Live requests arriving within this window go to the backend as one batch."""
    max_batch_rows: Annotated[_Int, Field(ge=1), _at_most(1_000_000, "more rows than that is a typo")] = 512
    """Most rows per live backend call."""
    deadline_s: Annotated[_Seconds, Field(gt=0)] = 1.0
    """Longest wait for a live backend call; past it the request gets 503 with ``Retry-After``."""
    breaker_failures: Annotated[_Int, Field(ge=1), _at_most(1_000_000, "more than that is a typo")] = 5
    """Consecutive live backend failures that open the circuit breaker (live requests then get 503 at once)."""
    breaker_reset_s: Annotated[_Seconds, Field(gt=0)] = 5.0
    """Seconds between probes of the backend while the breaker is open; the first probe that succeeds closes it."""
    max_body_bytes: Annotated[_Int, Field(ge=1), _at_most(_INT32_MAX, "more than 2 GiB per request is a typo")] = (
        1_048_576
    )
    """Largest request body accepted (413 above it)."""
    max_batch_keys: Annotated[_Int, Field(ge=1), _at_most(1_000_000, "more keys than that is a typo")] = 1_000
    """Most keys in one ``POST /v1/score`` list (413 above it)."""
    request_receive_timeout_s: Annotated[_Seconds, Field(gt=0)] = 10.0
    """Longest time a connection may take to send one whole request (headers and body), from its first byte (or
    from connecting); past it the server answers 408 and closes the connection. Bounds slow clients: a client that
    sends a byte at a time cannot hold a connection longer than this."""
    max_connections: Annotated[_Int, Field(ge=1), _at_most(1_000_000, "more connections than that is a typo")] = 4096
    """Most connections held open at once. A connection beyond it sheds another: the oldest one still sending its
    request first, then the oldest idle keep-alive one; only when every connection has a request being answered is
    the new one refused (503). So slow clients are dropped, not healthy ones."""
    auth_token_env: str | None = None
    """Name of an environment variable holding a bearer token; when set, every route but ``/v2/health/*`` needs
    ``Authorization: Bearer <token>``. The token itself never goes in a config file."""

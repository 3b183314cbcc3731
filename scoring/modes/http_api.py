"""``scoring serve``'s HTTP face: FastAPI routes over :class:`scoring.modes.online.OnlineService`, run by uvicorn.

The routes only translate: they parse the request, call one method of the service with everything it needs, and
render its :class:`~scoring.modes.online.Answer` (or a client's mistake) as a status, headers and a body. The answer
policy (hit, stale, live, fallback, which model a v2 route may name) lives in the service
(:mod:`scoring.modes.online.answers`), answered from one snapshot per request; nothing here reads the index or the
alias. Every body is encoded with orjson; a precomputed hit is the stored record with a short header, not re-encoded.
Status codes:

- 400 malformed JSON or request shape, 401 missing or wrong bearer token, 404 unknown key / model / version,
  413 body or key list too large, 422 a field with a wrong, missing, extra or non-finite value: each with
  ``{"error": message, "field": name}``;
- 503 with ``Retry-After`` when live inference cannot answer (backend down, circuit breaker open, deadline missed);
- 500 only for a bug, with one line and no traceback.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import signal
import socket
import threading
import time
from typing import Any

import orjson
import pyarrow as pa
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from scoring.core import index, kserve
from scoring.engine.live import RequestError
from scoring.modes.online import Answer, OnlineService

_LOGGER = logging.getLogger(__name__)

_JSON = "application/json"
_OPEN = ("/v2/health/live", "/v2/health/ready")


def _error(status: int, message: str, *, field: str | None = None, headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return Response(orjson.dumps(body), status_code=status, media_type=_JSON, headers=headers)


def _render(answer: Answer) -> Response:
    return Response(answer.body, status_code=answer.status, media_type=answer.media_type, headers=answer.headers)


class _Guard:
    """Pure ASGI middleware: bearer-token auth (constant-time), the body size limit, and the in-flight gauge."""

    def __init__(self, app, service: OnlineService) -> None:
        self.app = app
        self.service = service
        token = service.auth_token
        self.expected = None if token is None else f"Bearer {token}".encode()
        self.limit = service.serve.max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] not in _OPEN:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await _error(
                    401,
                    "missing or wrong bearer token: send Authorization: Bearer <token>",
                    headers={"WWW-Authenticate": "Bearer"},
                )(scope, receive, send)
                return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _error(413, f"the body is larger than serve.max_body_bytes ({self.limit} bytes)", field="body")(
                scope, receive, send
            )
            return
        metrics = self.service.metrics
        metrics.in_flight(1)
        try:
            await self.app(scope, self._limited(receive), send)
        finally:
            metrics.in_flight(-1)

    def _limited(self, receive):
        seen = 0
        limit = self.limit

        async def inner():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        return inner


class _TooLarge(Exception):
    pass


def _json_body(body: bytes) -> Any:
    try:
        return index.loads(body)
    except orjson.JSONDecodeError as e:
        raise RequestError(f"the body is not valid JSON: {e}", field="body", status=400) from None


def _score_schema(service: OnlineService) -> dict[str, Any]:
    """The ``POST /v1/score`` body as OpenAPI describes it (the route reads the raw body itself, for speed and for
    its own error messages; this is what clients, and schema-driven fuzzers, are told)."""
    scalar = {"oneOf": [{"type": "string"}, {"type": "number"}]}
    columns = list(service.key_columns)
    key: dict[str, Any] = scalar
    if len(columns) > 1:
        key = {
            "oneOf": [
                {"type": "array", "items": scalar, "minItems": len(columns), "maxItems": len(columns)},
                {
                    "type": "object",
                    "properties": {c: scalar for c in columns},
                    "required": columns,
                    "additionalProperties": False,
                },
            ]
        }
    features = {
        "type": "object",
        "properties": {
            f: {"type": "array", "items": {"type": "number"}}
            if pa.types.is_list(t)
            else {"type": "boolean" if str(t) == "bool" else "number"}
            for f, t in service.feature_types().items()
        },
        "required": list(service.feature_types()),
        "additionalProperties": False,
    }
    item = {
        "type": "object",
        "properties": {"key": key, "features": features},
        "required": ["key"],
        "additionalProperties": False,
    }
    body = {"oneOf": [item, {"type": "array", "items": item, "maxItems": service.serve.max_batch_keys}]}
    return {"requestBody": {"required": True, "content": {_JSON: {"schema": body}}}}


_INFER_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            _JSON: {
                "schema": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "inputs": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string"},
                                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                                    "datatype": {"enum": ["BOOL", "INT32", "INT64", "FP32", "FP64"]},
                                    "data": {"type": "array"},
                                    "parameters": {"type": "object"},
                                },
                                "required": ["name", "shape", "datatype", "data"],
                            },
                        },
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"name": {"type": "string"}},
                                "required": ["name"],
                            },
                        },
                        "parameters": {"type": "object"},
                    },
                    "required": ["inputs"],
                }
            }
        },
    }
}
"""The KServe v2 inference request (JSON form) as OpenAPI describes it."""


def build_app(service: OnlineService) -> Any:
    """The ASGI application serving `service` (wrapped in the auth / size guard)."""
    app = FastAPI(
        title="scoring serve",
        summary="Precomputed scores with live inference as the fallback, version-aware",
        docs_url="/docs",
        redoc_url=None,
    )
    metrics = service.metrics
    serve = service.serve

    @app.exception_handler(_TooLarge)
    async def _too_large(request: Request, exc: _TooLarge) -> Response:
        return _error(413, f"the body is larger than serve.max_body_bytes ({serve.max_body_bytes} bytes)", field="body")

    @app.exception_handler(RequestError)
    async def _bad_request(request: Request, exc: RequestError) -> Response:
        return _error(exc.status, str(exc), field=exc.field)

    @app.exception_handler(kserve.ProtocolError)
    async def _bad_protocol(request: Request, exc: kserve.ProtocolError) -> Response:
        return _error(exc.status, str(exc), field=exc.field or "inputs")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return _error(404, f"no route {request.url.path}; see /docs for the routes")
        if exc.status_code == 405:
            return _error(405, f"{request.method} is not allowed on {request.url.path}; see /docs for the routes")
        return _error(exc.status_code, str(exc.detail), field="request")

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        _LOGGER.error("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal error ({type(exc).__name__}); the service log has the details")

    # -- health and metrics ----------------------------------------------------------------------------------------

    @app.get("/v2/health/live")
    async def live() -> Response:
        return Response(b'{"live":true}', media_type=_JSON)

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        ok, why = service.ready()
        return Response(orjson.dumps({"ready": ok, "reason": why}), status_code=200 if ok else 503, media_type=_JSON)

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/v1/status")
    async def status() -> Response:
        return Response(orjson.dumps(service.status()), media_type=_JSON)

    # -- precomputed -----------------------------------------------------------------------------------------------

    @app.get("/v1/scores/{key:path}")
    async def get_score(key: str) -> Response:
        started = time.perf_counter()
        answer = service.answer_path(key.split("/"))
        metrics.request("scores", answer.source, time.perf_counter() - started)
        return _render(answer)

    @app.post("/v1/score", openapi_extra=_score_schema(service))
    async def score(request: Request) -> Response:
        return _render(await service.answer_request(_json_body(await request.body())))

    # -- KServe v2 / Open Inference Protocol -----------------------------------------------------------------------

    @app.get("/v2")
    async def server_metadata() -> Response:
        return Response(
            orjson.dumps({"name": "scoring", "version": "1", "extensions": ["binary_tensor_data"]}), media_type=_JSON
        )

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None) -> Response:
        return _render(service.model_metadata(name, version))

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> Response:
        refused, ok, why = service.model_ready(name, version)
        if refused is not None:
            return _render(refused)
        return Response(orjson.dumps({"ready": ok, "reason": why}), status_code=200 if ok else 503, media_type=_JSON)

    @app.post("/v2/models/{name}/infer", openapi_extra=_INFER_SCHEMA)
    @app.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=_INFER_SCHEMA)
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        started = time.perf_counter()
        header = request.headers.get("inference-header-content-length")
        if header is not None and not (header.isascii() and header.isdigit()):
            return _error(
                400,
                "Inference-Header-Content-Length must be a number of bytes (ASCII digits)",
                field="Inference-Header-Content-Length",
            )
        answer = await service.infer_v2(name, version, await request.body(), None if header is None else int(header))
        if answer.source == "live":
            metrics.request("infer", "live", time.perf_counter() - started)
        return _render(answer)

    return _Guard(app, service)


# -- running it ----------------------------------------------------------------------------------------------------


def _uvicorn_config(app: Any, host: str, port: int, service: OnlineService):
    import uvicorn

    serve = service.serve
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="auto",
        http=receipt_protocol(serve.request_receive_timeout_s, serve.max_connections),
        access_log=False,
        log_level="warning",
        lifespan="off",
        timeout_keep_alive=30,
        server_header=False,
    )


def receipt_protocol(receive_timeout_s: float, max_connections: int) -> type:
    """uvicorn's HTTP protocol (httptools) with a receipt deadline per connection and a cap that sheds slow
    connections first.

    - **Deadline**: a request must arrive whole (headers and body) within `receive_timeout_s` of its first byte (of
      the connection being made, for the first request); past it the connection gets a 408 naming the setting and is
      closed. uvicorn's own keep-alive timer restarts on every byte, so a client sending a byte at a time would hold a
      connection for ever; this timer does not restart. It stops when the request is complete (a slow answer is the
      service's business, not the client's) and starts again with the next request's first byte.
    - **Cap**: when a new connection makes more than `max_connections`, the oldest connection still sending its
      request is closed (a 408), else the oldest idle keep-alive one; only when every other connection has a request
      being answered is the new one refused (503). uvicorn's ``limit_concurrency`` would instead answer 503 to every
      new request, healthy or not, once full.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class ReceiptDeadlineProtocol(HttpToolsProtocol):
        def connection_made(self, transport) -> None:  # noqa: ANN001 - asyncio's signature
            super().connection_made(transport)
            self._receipt = None
            self._receiving_since: float | None = None
            self._start_receipt()
            if len(self.connections) > max_connections:
                _shed(self)

        def data_received(self, data: bytes) -> None:
            if self._receipt is None and not self.transport.is_closing():
                self._start_receipt()
            super().data_received(data)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._stop_receipt()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_receipt()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:  # uvicorn's, for bytes that are not HTTP: JSON naming it
            body = orjson.dumps({"error": f"{msg} (the request line or a header is malformed)", "field": "request"})
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            self.transport.close()

        def _start_receipt(self) -> None:
            self._receiving_since = self.loop.time()
            self._receipt = self.loop.call_later(receive_timeout_s, self._receipt_expired)

        def _stop_receipt(self) -> None:
            if self._receipt is not None:
                self._receipt.cancel()
            self._receipt = None
            self._receiving_since = None

        def _receipt_expired(self) -> None:
            self._receipt = None
            self._close_with(
                408,
                f"the request did not arrive whole within serve.request_receive_timeout_s ({receive_timeout_s:g} s)",
            )

        def _close_with(self, status: int, message: str) -> None:
            self._receiving_since = None
            if self.transport.is_closing():
                return
            if self.cycle is None or not self.cycle.response_started:
                body = orjson.dumps({"error": message, "field": "request"})
                reason = {408: "Request Timeout", 503: "Service Unavailable"}[status]
                self.transport.write(
                    f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
                    f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            self.transport.close()

        @property
        def _idle(self) -> bool:
            return self._receiving_since is None and (self.cycle is None or self.cycle.response_complete)

    def _shed(new: ReceiptDeadlineProtocol) -> None:
        others = [c for c in new.connections if c is not new and not c.transport.is_closing()]
        receiving = [c for c in others if getattr(c, "_receiving_since", None) is not None]
        if receiving:
            oldest = min(receiving, key=lambda c: c._receiving_since)
            oldest._close_with(
                408,
                f"shed: the server holds serve.max_connections ({max_connections}) and this connection was the "
                "oldest still sending its request",
            )
            return
        idle = [c for c in others if getattr(c, "_idle", False)]
        if idle:
            idle[0].transport.close()
            return
        new._close_with(503, f"the server holds serve.max_connections ({max_connections}), all busy; try again")

    return ReceiptDeadlineProtocol


class Running:
    """A service listening on a thread of this process (tests, notebooks, embedding): ``.url``, ``.stop()``."""

    def __init__(self, service: OnlineService, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.service = service
        self._server = uvicorn.Server(_uvicorn_config(build_app(service), host, port, service))
        self._server.install_signal_handlers = lambda: None  # the embedding process keeps its own handlers
        self._thread = threading.Thread(target=self._server.run, name="scoring-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {host}:{port}")
            time.sleep(0.02)
        sockets = [s for server in self._server.servers for s in server.sockets]
        self.host = host
        self.port = int(sockets[0].getsockname()[1])
        self.url = f"http://{host}:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on `host`:`port` (0: any free port); OSError when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve_forever(service: OnlineService, sock: socket.socket) -> None:
    """Serve on `sock` until SIGINT / SIGTERM (uvicorn's handlers: in-flight requests finish, then it stops), and
    return, so that the caller can close the service and exit 0."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(_uvicorn_config(build_app(service), host, port, service))
    # Once it has shut down, uvicorn raises the signal it stopped on again, to the handler that was there before it:
    # for SIGTERM that was the default one, which killed the process before the caller could close the service.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    try:
        with contextlib.suppress(KeyboardInterrupt):
            server.run(sockets=[sock])
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt

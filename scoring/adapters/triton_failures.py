"""How a failure of a Triton call is classified: transient (retried) or terminal, and the hint a user gets.

Failures are classified where tritonclient raises them (:meth:`scoring.adapters.triton._Client.call`), by what they are, never by their text
(:func:`is_transient_failure`): a gRPC status code, an HTTP status, or a connection-level exception type. A transient
one becomes a :class:`~scoring.errors.BackendUnavailableError` and is retried with exponential backoff and jitter; a
terminal one becomes a :class:`~scoring.errors.ModelError` at once. Both name the model, version and URL and keep the
server's own message, chained to tritonclient's exception.

What the bundled server (2.51) answered, seen on our machines, and what we make of it:

==========================================================  ======================  ======================  =========
failure                                                     gRPC status             HTTP                    verdict
==========================================================  ======================  ======================  =========
queue full ("Exceeds maximum queue size")                   UNAVAILABLE             503                     transient
our deadline passed                                         DEADLINE_EXCEEDED       TimeoutError            transient
server stopped or killed, nothing listening                 UNAVAILABLE             ConnectionRefusedError  transient
server killed with the request in flight                    UNAVAILABLE             HTTPConnectionClosed    transient
server stopping (SIGTERM), a new request                    (served)                HTTPConnectionClosed    transient
pinned version loading, unloading or unloaded               UNAVAILABLE             503                     transient
unknown model, unknown version                              NOT_FOUND               404                     terminal
wrong shape or dtype, rows > max_batch_size, 0 rows         INVALID_ARGUMENT        400                     terminal
the model raised, or its Python stub died                   INTERNAL                500                     terminal
unknown shared-memory region                                NOT_FOUND               404                     terminal [1]
a client of the other protocol at the port                  UNAVAILABLE             HTTPParseError          as shown
==========================================================  ======================  ======================  =========

A dead Python stub ("Stub process ... is not healthy") kept failing with INTERNAL for as long as we watched, like a
model that raises: INTERNAL is terminal. An unloaded version says "not at ready state" with UNAVAILABLE, exactly as one
that is still loading: it is retried, and the run ends with exit 75 if it does not come back.

[1] Unless the server restarted: its clients reconnect by themselves, but it has forgotten the regions. On NOT_FOUND
for a shared-memory request the predictor asks the server which regions it has, and when its own are gone it
registers them again (a transient failure, retried) instead of failing the job.
"""

from __future__ import annotations

import errno
import socket
import sys

TRANSIENT_GRPC_STATUSES = frozenset(
    {
        "StatusCode.UNAVAILABLE",  # queue full, server down or restarting, connection lost
        "StatusCode.DEADLINE_EXCEEDED",  # our deadline passed
        "StatusCode.RESOURCE_EXHAUSTED",  # gRPC's own overload signal (Triton itself does not send it)
        "StatusCode.CANCELLED",  # cancelled in flight (e.g. a server shutting down)
        "StatusCode.ABORTED",
    }
)
"""gRPC status codes (``InferenceServerException.status()``) that may pass on a retry; every other is terminal:
``NOT_FOUND``, ``INVALID_ARGUMENT``, ``INTERNAL``, ``UNIMPLEMENTED``, ``FAILED_PRECONDITION``, ``ALREADY_EXISTS``,
``UNKNOWN``, ..."""

TRANSIENT_HTTP_STATUSES = frozenset({"408", "429", "502", "503", "504"})
"""HTTP statuses that may pass on a retry (Triton answers a full queue with 503); every other is terminal: 400 (bad
request), 404 (unknown model, version or region), 500 (the model failed), ..."""

_TRANSIENT_ERRNOS = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN})


def _connection_failures() -> tuple[type[BaseException], ...]:
    """Connection-level exception types of the HTTP client stack that may pass on a retry.

    ``ConnectionError`` covers refused, reset, aborted connections and broken pipes; ``TimeoutError`` is
    ``socket.timeout``. gevent's own types are only looked up once gevent is imported: before that, nothing can
    raise them.
    """
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    gevent = sys.modules.get("gevent")
    if gevent is not None:
        found.append(gevent.Timeout)
    response = sys.modules.get("geventhttpclient.response")
    if response is not None:
        found.append(response.HTTPConnectionClosed)  # the server closed the connection (stopping, killed)
    return tuple(found)


def _server_exception() -> type[BaseException] | None:
    utils = sys.modules.get("tritonclient.utils")
    return getattr(utils, "InferenceServerException", None)


def is_transient_failure(error: BaseException) -> bool:
    """Whether a failure that tritonclient (or the HTTP stack beneath it) raised may pass on a retry.

    Decided by type and status only, never by message text:

    - ``InferenceServerException`` with a gRPC status: transient iff in :data:`TRANSIENT_GRPC_STATUSES`;
    - ``InferenceServerException`` with an HTTP status: transient iff in :data:`TRANSIENT_HTTP_STATUSES`;
    - ``InferenceServerException`` without a status (raised by the client itself, e.g. a bad argument): terminal,
      unless it was raised while handling a transient failure (``__context__``, e.g. an async request timing out);
    - refused, reset or aborted connections, broken pipes, socket and gevent timeouts, a connection the server
      closed, an unreachable host or network, a temporary DNS failure: transient;
    - anything else (a reply that is not HTTP, an unknown host name, a bug): terminal.
    """
    server_exception = _server_exception()
    if server_exception is not None and isinstance(error, server_exception):
        status = error.status()
        if status is None:
            context = error.__cause__ or error.__context__
            return context is not None and context is not error and is_transient_failure(context)
        status = str(status)
        if status.startswith("StatusCode."):
            return status in TRANSIENT_GRPC_STATUSES
        return status in TRANSIENT_HTTP_STATUSES
    if isinstance(error, _connection_failures()):
        return True
    if isinstance(error, socket.gaierror):
        return error.errno == socket.EAI_AGAIN  # "temporary failure in name resolution"
    if isinstance(error, OSError):
        return error.errno in _TRANSIENT_ERRNOS
    return False


def _is_client_failure(error: BaseException) -> bool:
    """Whether `error` is a failure of the call (translated by :meth:`scoring.adapters.triton._Client.call`) rather than a bug to re-raise."""
    import http.client

    server_exception = _server_exception()
    if server_exception is not None and isinstance(error, server_exception):
        return True
    return isinstance(error, (OSError, http.client.HTTPException, *_connection_failures()))


def _describe(error: BaseException) -> str:
    """The server's own message (with its status), or the exception's type and text."""
    server_exception = _server_exception()
    if server_exception is not None and isinstance(error, server_exception):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _status(error: BaseException) -> str | None:
    server_exception = _server_exception()
    if server_exception is not None and isinstance(error, server_exception) and error.status() is not None:
        return str(error.status()).removeprefix("StatusCode.")
    return None


_TERMINAL_HINTS = {
    "NOT_FOUND": "the server does not serve that model, version or shared-memory region: export the version "
    "(scoring export MODEL_URI --repository DIR) and let the server load it, or use runtime.triton.launch: auto",
    "404": "the server does not serve that model, version or shared-memory region: export the version "
    "(scoring export MODEL_URI --repository DIR) and let the server load it, or use runtime.triton.launch: auto",
    "INVALID_ARGUMENT": "check that the exported model matches the job's features (count, order, dtype) and that "
    "runtime.triton.batch_rows is at most the model's max_batch_size",
    "400": "check that the exported model matches the job's features (count, order, dtype) and that "
    "runtime.triton.batch_rows is at most the model's max_batch_size",
    "INTERNAL": "the model failed inside the server: read the server's log",
    "500": "the model failed inside the server: read the server's log",
}
_OTHER_TERMINAL_HINT = "check runtime.triton.url and runtime.triton.protocol (is that the server's gRPC or HTTP port?)"
_TRANSIENT_HINT = "check the server's health and load; raise runtime.triton.max_retries or timeout_s"

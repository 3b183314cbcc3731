"""How Triton client failures are classified: by the status tritonclient attaches or the exception's type, never by
its text. Every row is a real tritonclient exception object, built by tritonclient's own code from what the server
(or the socket) gave; the integration tests in tests/integration/test_triton.py produce the same failures for real."""

from __future__ import annotations

import errno
import json
import pickle
import socket

import grpc
import pytest

from scoring.adapters.triton import (
    TRANSIENT_GRPC_STATUSES,
    TRANSIENT_HTTP_STATUSES,
    TritonSpec,
    _Client,
    is_transient_failure,
)
from scoring.errors import EXIT_TERMINAL, EXIT_TRANSIENT, BackendUnavailableError, ModelError, exit_code_for


class _RpcError(grpc.RpcError):
    """What grpc raises for a failed call: a code, details and a debug string (the interface tritonclient reads)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def debug_error_string(self) -> str:
        return f"UNKNOWN:{self._details}"


def grpc_error(code: grpc.StatusCode, details: str = "server message"):
    """The exception tritonclient.grpc raises for a gRPC status (through its own `raise_error_grpc`)."""
    from tritonclient.grpc._utils import raise_error_grpc

    try:
        raise_error_grpc(_RpcError(code, details))
    except Exception as e:  # noqa: BLE001 - we want exactly what it raised
        return e
    raise AssertionError("raise_error_grpc did not raise")


class _Response:
    """The part of a geventhttpclient response that tritonclient.http reads for an error."""

    def __init__(self, status_code: int, body: str) -> None:
        self.status_code, self._body = status_code, body.encode()

    def read(self) -> bytes:
        return self._body


def http_error(status_code: int, message: str = "server message"):
    """The exception tritonclient.http raises for an HTTP status (through its own `_raise_if_error`)."""
    from tritonclient.http._utils import _raise_if_error

    try:
        _raise_if_error(_Response(status_code, json.dumps({"error": message})))
    except Exception as e:  # noqa: BLE001
        return e
    raise AssertionError("_raise_if_error did not raise")


def client_side_error(message: str = "model version must be a string"):
    """An error tritonclient raises itself, without a status (a bad argument)."""
    from tritonclient.utils import raise_error

    try:
        raise_error(message)
    except Exception as e:  # noqa: BLE001
        return e
    raise AssertionError("raise_error did not raise")


def client_side_error_while(cause: BaseException):
    """tritonclient.http's async `get_result` turns a gevent timeout into a status-less error inside `except`."""
    from tritonclient.utils import raise_error

    try:
        try:
            raise cause
        except BaseException:  # noqa: BLE001
            raise_error("failed to obtain inference response")
    except Exception as e:  # noqa: BLE001
        return e
    raise AssertionError("raise_error did not raise")


def _gevent_timeout():
    import gevent

    return gevent.Timeout(1)


def _connection_closed():
    from geventhttpclient.response import HTTPConnectionClosed

    return HTTPConnectionClosed("connection closed.")


def _not_http():
    from geventhttpclient.response import HTTPParseError

    return HTTPParseError("Expected HTTP/, RTSP/ or ICE/", 8)


# (id, factory, transient): what each failure was seen to mean on a real server is in the comment.
TABLE = [
    # gRPC
    (
        "grpc-unavailable-queue-full",
        lambda: grpc_error(grpc.StatusCode.UNAVAILABLE, "Exceeds maximum queue size"),
        True,
    ),
    ("grpc-unavailable-refused", lambda: grpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect"), True),
    ("grpc-deadline-exceeded", lambda: grpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), True),
    ("grpc-resource-exhausted", lambda: grpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED), True),
    ("grpc-cancelled", lambda: grpc_error(grpc.StatusCode.CANCELLED), True),
    ("grpc-aborted", lambda: grpc_error(grpc.StatusCode.ABORTED), True),
    ("grpc-not-found-unknown-model", lambda: grpc_error(grpc.StatusCode.NOT_FOUND, "unknown model"), False),
    ("grpc-invalid-argument-shape", lambda: grpc_error(grpc.StatusCode.INVALID_ARGUMENT, "unexpected shape"), False),
    ("grpc-internal-model-raised", lambda: grpc_error(grpc.StatusCode.INTERNAL, "Stub process is not healthy"), False),
    ("grpc-unimplemented", lambda: grpc_error(grpc.StatusCode.UNIMPLEMENTED), False),
    ("grpc-failed-precondition", lambda: grpc_error(grpc.StatusCode.FAILED_PRECONDITION), False),
    ("grpc-already-exists", lambda: grpc_error(grpc.StatusCode.ALREADY_EXISTS), False),
    ("grpc-unknown", lambda: grpc_error(grpc.StatusCode.UNKNOWN), False),
    ("grpc-permission-denied", lambda: grpc_error(grpc.StatusCode.PERMISSION_DENIED), False),
    # HTTP
    ("http-503-queue-full", lambda: http_error(503, "Exceeds maximum queue size"), True),
    ("http-502", lambda: http_error(502), True),
    ("http-504", lambda: http_error(504), True),
    ("http-429", lambda: http_error(429), True),
    ("http-408", lambda: http_error(408), True),
    ("http-400-shape", lambda: http_error(400, "unexpected shape"), False),
    ("http-404-unknown-model", lambda: http_error(404, "unknown model"), False),
    ("http-500-model-raised", lambda: http_error(500, "model bug"), False),
    ("http-501", lambda: http_error(501), False),
    # raised by the client itself
    ("client-side-no-status", client_side_error, False),
    ("client-side-while-gevent-timeout", lambda: client_side_error_while(_gevent_timeout()), True),
    ("client-side-while-value-error", lambda: client_side_error_while(ValueError("bad")), False),
    # the HTTP stack's connection level
    ("connection-refused", lambda: ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), True),
    ("connection-reset", lambda: ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), True),
    ("broken-pipe", lambda: BrokenPipeError(errno.EPIPE, "Broken pipe"), True),
    ("socket-timeout", lambda: TimeoutError("timed out"), True),  # socket.timeout is TimeoutError
    ("gevent-timeout", _gevent_timeout, True),
    ("http-connection-closed", _connection_closed, True),
    ("host-unreachable", lambda: OSError(errno.EHOSTUNREACH, "No route to host"), True),
    ("dns-temporary-failure", lambda: socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), True),
    ("dns-unknown-host", lambda: socket.gaierror(socket.EAI_NONAME, "Name or service not known"), False),
    ("not-http-at-that-port", _not_http, False),
    ("other-os-error", lambda: PermissionError(errno.EACCES, "Permission denied"), False),
    ("a-bug", lambda: ValueError("could not broadcast"), False),
]


@pytest.mark.parametrize(("factory", "transient"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_a_failure_is_transient_by_its_status_or_type(factory, transient):
    assert is_transient_failure(factory()) is transient


def test_the_status_comes_from_tritonclient_as_the_table_expects():
    """Guards the table's premise: tritonclient puts the gRPC code's name or the HTTP status in `status()`."""
    assert grpc_error(grpc.StatusCode.UNAVAILABLE).status() == "StatusCode.UNAVAILABLE"
    assert http_error(503).status() == "503"
    assert client_side_error().status() is None
    assert {s.removeprefix("StatusCode.") for s in TRANSIENT_GRPC_STATUSES} <= {c.name for c in grpc.StatusCode}
    assert all(s.isdigit() for s in TRANSIENT_HTTP_STATUSES)


def test_the_same_message_text_does_not_change_the_verdict():
    """Text is never the signal: a terminal status whose message reads like an outage stays terminal."""
    assert not is_transient_failure(grpc_error(grpc.StatusCode.INVALID_ARGUMENT, "unavailable: timed out, queue full"))
    assert not is_transient_failure(http_error(400, "503 Service Unavailable, connection refused"))
    assert is_transient_failure(grpc_error(grpc.StatusCode.UNAVAILABLE, "invalid argument"))


def _unused_port() -> int:
    with socket.socket() as sock:  # bound, never listening: connections to it are refused
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_refused_connection_comes_out_of_the_client_as_a_transient_error_naming_model_version_and_url(protocol):
    url = f"127.0.0.1:{_unused_port()}"
    client = _Client(TritonSpec("models:/m/3", "m", "3", ("a",), url, protocol, timeout_s=2))
    try:
        with pytest.raises(BackendUnavailableError) as excinfo:
            client.call("is_server_ready", what="asking whether the server is ready")
    finally:
        client.close()
    error = excinfo.value
    assert exit_code_for(error) == EXIT_TRANSIENT
    assert f"model m version 3 at {url} ({protocol})" in str(error)
    assert is_transient_failure(error.__cause__)  # chained to what tritonclient raised
    again = pickle.loads(pickle.dumps(error))  # it travels from a Spark worker to the driver
    assert type(again) is BackendUnavailableError and again.message == error.message and again.hint == error.hint


def test_a_url_with_a_scheme_is_a_terminal_error_when_the_client_is_made():
    with pytest.raises(ModelError, match="http://127.0.0.1:8000.*has a scheme") as excinfo:
        _Client(TritonSpec("models:/m/3", "m", "3", ("a",), "http://127.0.0.1:8000", "http"))
    assert exit_code_for(excinfo.value) == EXIT_TERMINAL


def test_a_bug_below_the_client_is_not_disguised_as_a_server_failure():
    client = _Client(TritonSpec("models:/m/3", "m", "3", ("a",), f"127.0.0.1:{_unused_port()}", "grpc"))
    try:
        with pytest.raises(TypeError):
            client.call("is_server_ready", no_such_argument=1)
    finally:
        client.close()

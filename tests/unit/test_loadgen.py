"""The open-loop load generator against a real tiny HTTP/1.1 server on 127.0.0.1 (asyncio, in a thread).

Counts, statuses and error kinds are asserted exactly; timings only as lower bounds that the server's own delays
guarantee (a sleep of 50 ms cannot be answered in less), never as upper bounds.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import pickle
import socket
import subprocess
import sys
import threading

import pytest

from scoring.tools import loadgen
from scoring.tools.loadgen import LoadSpec, Request


class _Server:
    """A keep-alive HTTP/1.1 server in a thread of its own. Routes by path:

    - ``/ok...``: 200 with a small body; ``/sleep/<ms>...``: the same after sleeping `ms`;
    - ``/fail...``: 503; ``/chunked``: a chunked 200; ``/hang``: never answers;
    - ``/close``: 200 with ``Connection: close``; ``/drop``: 200, then closes without saying so.
    """

    def __init__(self) -> None:
        self.seen: collections.Counter[str] = collections.Counter()
        self.bodies: list[bytes] = []
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = next((int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length")), 0)
                if length:
                    self.bodies.append(await reader.readexactly(length))
                self.seen[path] += 1
                status, extra, body = 200, "", b'{"score":0.5}'
                if path.startswith("/sleep/"):
                    await asyncio.sleep(int(path.split("/")[2]) / 1000)
                elif path.startswith("/fail"):
                    status, body = 503, b"overloaded"
                elif path == "/hang":
                    await asyncio.sleep(3600)
                elif path == "/close":
                    extra = "Connection: close\r\n"
                if path == "/chunked":
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
                else:
                    writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body)
                await writer.drain()
                if path in ("/close", "/drop"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spec(url: str, paths: list[str], rate_per_s: float, duration_s: float, **kwargs) -> LoadSpec:
    return LoadSpec(url, tuple(Request.get(p) for p in paths), rate_per_s, duration_s, **kwargs)


def test_every_scheduled_request_is_sent_once_and_answered(server):
    paths = [f"/ok/{k}" for k in range(4)]
    result = loadgen.run(_spec(server.url, paths, rate_per_s=200, duration_s=1.0, connections=4))

    assert (result.scheduled, result.sent, result.completed, result.ok) == (200, 200, 200, 200)
    assert result.errors == {}
    assert result.statuses == {"200": 200}
    assert server.seen == {p: 50 for p in paths}  # cycled through the mix
    assert result.latency_ms.min > 0
    assert result.throughput_per_s > 0
    assert result.connections_opened >= 4
    assert result.event_loop == "uvloop"


def test_the_schedule_holds_rate_times_duration_requests_or_poisson_arrivals_within_it():
    spec = _spec("http://127.0.0.1:1", ["/ok"], rate_per_s=300, duration_s=2.0)
    assert len(loadgen.schedule(spec)) == 600
    poisson = loadgen.schedule(dataclasses.replace(spec, arrivals="poisson", seed=7))
    assert poisson == loadgen.schedule(dataclasses.replace(spec, arrivals="poisson", seed=7))
    assert 450 < len(poisson) < 750
    assert all(0 < t < 2.0 for t in poisson) and poisson == sorted(poisson)


def test_every_latency_includes_the_server_delay(server):
    result = loadgen.run(_spec(server.url, ["/sleep/50"], rate_per_s=40, duration_s=0.5))

    assert result.completed == 20
    assert result.latency_ms.min >= 50.0


def test_a_request_waiting_for_a_busy_connection_counts_its_wait_from_its_scheduled_time(server):
    # One connection, a server that takes 50 ms a request, 40 requests/s asked: the server can answer 20/s, so request
    # k (due at 25k ms) cannot finish before (k+1) * 50 ms. A closed-loop client would report 50 ms for each.
    result = loadgen.run(
        _spec(server.url, ["/sleep/50"], rate_per_s=40, duration_s=0.5, connections=1, max_connections=1)
    )

    assert result.completed == 20 and result.errors == {}
    assert result.latency_ms.max >= 19 * 25 + 50
    assert result.send_lag_ms.max >= 19 * 25
    assert result.peak_connections == 1 and result.connections_extra == 0


def test_more_connections_open_when_every_one_is_busy_up_to_the_maximum(server):
    result = loadgen.run(
        _spec(server.url, ["/sleep/100"], rate_per_s=50, duration_s=0.4, connections=1, max_connections=4)
    )

    assert result.completed == 20 and result.errors == {}
    assert result.connections_extra == 3
    assert result.peak_connections == 4


def test_5xx_responses_are_counted_by_status(server):
    result = loadgen.run(_spec(server.url, ["/ok", "/ok", "/ok", "/fail"], rate_per_s=100, duration_s=0.4))

    assert (result.completed, result.ok) == (40, 30)
    assert result.errors == {"http_503": 10}
    assert result.statuses == {"200": 30, "503": 10}


def test_a_status_the_caller_expects_is_not_an_error(server):
    result = loadgen.run(_spec(server.url, ["/ok", "/fail"], rate_per_s=100, duration_s=0.2, ok_statuses=(503,)))

    assert result.ok == 20 and result.errors == {}


def test_a_port_with_no_server_gives_connect_errors_not_a_crash():
    result = loadgen.run(_spec(f"http://127.0.0.1:{_free_port()}", ["/ok"], rate_per_s=50, duration_s=0.2))

    assert result.errors == {"connect": 10}
    assert (result.sent, result.completed, result.ok) == (0, 0, 0)
    assert "127.0.0.1" in result.error_samples["connect"]
    assert result.latency_ms.p99 is None


def test_unanswered_requests_count_as_timeouts_after_the_drain(server):
    result = loadgen.run(_spec(server.url, ["/hang"], rate_per_s=20, duration_s=0.25, drain_timeout_s=0.3))

    assert result.errors == {"timeout": 5}
    assert result.sent == 5 and result.completed == 0
    assert result.elapsed_s >= 0.25


def test_a_chunked_response_is_a_bad_response_that_says_why(server):
    result = loadgen.run(_spec(server.url, ["/chunked"], rate_per_s=20, duration_s=0.2))

    assert result.errors == {"bad_response": 4}
    assert "chunked" in result.error_samples["bad_response"]


def test_connection_close_and_silently_closed_keepalive_connections_are_reopened_not_errors(server):
    result = loadgen.run(_spec(server.url, ["/close", "/drop", "/ok"], rate_per_s=60, duration_s=0.5, connections=2))

    assert result.ok == 30 and result.errors == {}
    assert server.seen == {"/close": 10, "/drop": 10, "/ok": 10}  # a stale connection's request is sent again
    assert result.connections_opened >= 20


def test_post_bodies_go_out_as_given(server):
    requests = (Request.post_json("/ok", {"features": [1.5, 2.0]}), Request("POST", "/ok", body=b"\x00\xff"))
    result = loadgen.run(LoadSpec(server.url, requests, rate_per_s=20, duration_s=0.2))

    assert result.ok == 4
    assert sorted(server.bodies) == sorted([b'{"features":[1.5,2.0]}', b"\x00\xff"] * 2)


def test_the_spec_and_the_result_round_trip_through_json(server):
    spec = LoadSpec(
        server.url,
        (Request.get("/ok", [("X-Key", "a")]), Request("POST", "/ok", body=b"\x00\xff")),
        rate_per_s=10,
        duration_s=0.2,
        arrivals="poisson",
        order="random",
        ok_statuses=(404,),
    )
    assert LoadSpec.from_json(spec.to_json()) == spec
    result = loadgen.run(dataclasses.replace(spec, arrivals="constant"))
    assert loadgen.LoadResult.from_json(result.to_json()) == result


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rate_per_s": 0}, "rate_per_s"),
        ({"url": "https://x:1"}, "url"),
        ({"arrivals": "bursty"}, "arrivals"),
        ({"connections": 300}, "connections"),
        ({"requests": []}, "requests"),
        ({"rate": 5}, "unknown keys ['rate']"),
    ],
)
def test_an_invalid_spec_is_refused_with_the_reason(changes, message):
    good = _spec("http://127.0.0.1:1", ["/ok"], rate_per_s=1, duration_s=1).to_dict()
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        LoadSpec.from_dict({**good, **changes})


def test_the_generator_runs_in_a_process_of_its_own(server):
    result = loadgen.run_in_subprocess(_spec(server.url, ["/ok", "/fail"], rate_per_s=50, duration_s=0.4))

    assert (result.scheduled, result.completed, result.ok) == (20, 20, 10)
    assert result.errors == {"http_503": 10}


def test_python_m_scoring_loadgen_reads_a_spec_on_stdin_and_writes_the_result_on_stdout(server):
    spec = _spec(server.url, ["/ok"], rate_per_s=50, duration_s=0.2)
    done = subprocess.run(
        [sys.executable, "-m", "scoring.tools.loadgen"],
        input=spec.to_json(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] == 10

    bad = subprocess.run(
        [sys.executable, "-m", "scoring.tools.loadgen"],
        input='{"url": "x"}',
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "invalid load spec" in bad.stderr


def test_saturation_reports_the_highest_rate_that_held(server):
    # Two connections to a server taking 20 ms a request: about 100 requests/s at most. 20, 40 and 80/s hold;
    # at 160/s the queue grows by 60 requests a second and the last ones wait hundreds of milliseconds.
    spec = _spec(
        server.url, ["/sleep/20"], rate_per_s=1, duration_s=1, connections=2, max_connections=2, client_lag_bound_ms=50
    )
    found = loadgen.saturation(
        spec, 20, p99_bound_ms=150, factor=2, step_s=0.5, refine_steps=0, pause_s=0, in_subprocess=False
    )

    assert [s.rate_per_s for s in found.steps] == [20, 40, 80, 160]
    assert [s.held for s in found.steps] == [True, True, True, False]
    assert found.max_rate_held == 80
    assert "p99" in found.stopped_because and not found.client_bound


def test_the_load_generator_s_errors_belong_to_the_one_hierarchy_and_pickle():
    from scoring.errors import ConfigError, ScoringError

    failed = loadgen.LoadgenError("the load generator exited 1: boom")
    assert isinstance(failed, ScoringError) and isinstance(failed, RuntimeError)
    back = pickle.loads(pickle.dumps(failed))
    assert type(back) is loadgen.LoadgenError and str(back) == str(failed)

    with pytest.raises(ConfigError, match="invalid load spec") as caught:
        LoadSpec("http://127.0.0.1:1", (Request.get("/"),), rate_per_s=0, duration_s=1)
    assert isinstance(caught.value, ValueError)  # `except ValueError` callers keep working
    back = pickle.loads(pickle.dumps(caught.value))
    assert type(back) is loadgen.LoadSpecError and str(back) == str(caught.value)


def test_the_generator_s_own_process_imports_nothing_from_scoring():
    done = subprocess.run(
        [sys.executable, "-P", "-X", "importtime", loadgen.loadgen_engine.__file__],
        input='{"url": "x"}',
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "invalid load spec" in done.stderr
    imported = [line.rpartition("|")[2].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert "loadgen_spec" in imported
    assert not [name for name in imported if name == "scoring" or name.startswith("scoring.")]

"""The local sidecar's command line: every endpoint on loopback, or not at all. The metrics endpoint fails closed: when
``tritonserver --help`` cannot confirm ``--metrics-address``, metrics are disabled rather than bound to every
interface. The ``--help`` output comes from small fake ``tritonserver`` scripts, read by the launcher's own code."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from scoring.launchers import triton_server as ts

HELP_WITH_METRICS_ADDRESS = """\
Usage: tritonserver [options]
  --model-repository <string>
  --http-address <string>
  --grpc-address <string>
  --allow-metrics <boolean>
  --metrics-address <string>
  --metrics-port <integer>
  --cache-directory <string>
"""

HELP_WITHOUT_METRICS_ADDRESS = """\
Usage: tritonserver [options]
  --model-repository <string>
  --http-address <string>
  --grpc-address <string>
  --allow-metrics <boolean>
  --metrics-port <integer>
"""


def fake_tritonserver(directory: Path, help_text: str, exit_status: int = 1) -> Path:
    """A `tritonserver` that prints `help_text` on stderr and exits with `exit_status` (the real one exits 1)."""
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "tritonserver"
    binary.write_text(f"#!/bin/sh\ncat >&2 <<'EOF'\n{help_text}EOF\nexit {exit_status}\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary


def command_for(binary: Path, metrics_port: int = 9102) -> list[str]:
    return ts._command(
        binary, Path("/repo"), Path("/work/backends"), 9100, 9101, metrics_port, models=None, extra_args=()
    )


def assert_everything_binds_to_loopback(cmd: list[str]) -> None:
    addresses = [arg for arg in cmd if arg.startswith("--") and "-address=" in arg]
    assert addresses, cmd
    assert all(arg.endswith(f"={ts.LOOPBACK}") for arg in addresses), addresses


def test_metrics_bind_to_loopback_when_help_lists_metrics_address(tmp_path, caplog):
    binary = fake_tritonserver(tmp_path / "current", HELP_WITH_METRICS_ADDRESS)
    with caplog.at_level(logging.WARNING, logger=ts.__name__):
        cmd = command_for(binary)
    assert "--metrics-address=127.0.0.1" in cmd and "--metrics-port=9102" in cmd
    assert not any(arg.startswith("--allow-metrics") for arg in cmd)
    assert_everything_binds_to_loopback(cmd)
    assert not caplog.records


def test_metrics_are_disabled_when_help_lacks_metrics_address(tmp_path, caplog):
    binary = fake_tritonserver(tmp_path / "old", HELP_WITHOUT_METRICS_ADDRESS)
    with caplog.at_level(logging.WARNING, logger=ts.__name__):
        cmd = command_for(binary)
    assert "--allow-metrics=false" in cmd
    assert not any(arg.startswith(("--metrics-port", "--metrics-address")) for arg in cmd)
    assert_everything_binds_to_loopback(cmd)
    (record,) = caplog.records
    assert "does not list --metrics-address" in record.getMessage()
    assert "--allow-metrics=false" in record.getMessage()


@pytest.mark.parametrize(
    "make_binary",
    [
        pytest.param(lambda d: fake_tritonserver(d, "", exit_status=127), id="help-prints-nothing"),
        pytest.param(lambda d: fake_tritonserver(d, "Segmentation fault\n", exit_status=139), id="help-crashes"),
        pytest.param(lambda d: d / "missing" / "tritonserver", id="binary-missing"),
    ],
)
def test_metrics_are_disabled_when_help_cannot_be_read(tmp_path, caplog, make_binary):
    binary = make_binary(tmp_path / "broken")
    with caplog.at_level(logging.WARNING, logger=ts.__name__):
        cmd = command_for(binary)
    assert "--allow-metrics=false" in cmd
    assert not any(arg.startswith(("--metrics-port", "--metrics-address")) for arg in cmd)
    assert_everything_binds_to_loopback(cmd)
    assert any("failed or listed no flags" in r.getMessage() for r in caplog.records)


def test_a_handle_without_metrics_has_no_metrics_url_and_old_state_files_still_load():
    values = {
        "pid": 1,
        "host": ts.LOOPBACK,
        "http_port": 1,
        "grpc_port": 2,
        "metrics_port": 0,
        "repository": "/r",
        "workdir": "/w",
        "log_path": "/w/log",
    }
    old = ts.ServerHandle.from_json(values)  # a state file written before `metrics_enabled` existed
    assert old.metrics_enabled
    off = ts.ServerHandle.from_json({**values, "metrics_enabled": False})
    assert off.metrics_url is None
    assert ts.ServerHandle.from_json(off.to_json()) == off

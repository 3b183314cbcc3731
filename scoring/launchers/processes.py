"""Stopping a local server process we started (the Kafka broker, the Redis server), by its pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def signal_and_wait(proc: subprocess.Popen | None, sig: signal.Signals, timeout_s: float) -> bool:
    """Send `sig` to `proc`, wait up to `timeout_s` for it to exit; True when it did (or had already). SIGKILL goes
    to its whole process group (the server alone, in practice: each is started in a group of its own). A process
    already reaped is never signalled: its pid may be someone else's by now."""
    if proc is None or proc.poll() is not None:
        return True
    with contextlib.suppress(ProcessLookupError):
        if sig == signal.SIGKILL:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return True

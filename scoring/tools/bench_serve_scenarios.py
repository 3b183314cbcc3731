"""`scoring bench-serve`'s scenarios (what is sent, at which rates) and the constants the benchmark's parts share;
:mod:`scoring.tools.bench_serve` has the whole story and re-exports these names."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path

from scoring.errors import ConfigError

_LOGGER = logging.getLogger(__name__)

PROFILE_ENV = "SCORING_BENCH_SERVE_PROFILE"
"""Environment variable: a directory; when set, each service process runs under cProfile and leaves its profile there."""
KEY = "customer_id"
N_FEATURES = 20
LIVE_KEY_BASE = 1 << 40
"""Live requests use keys from here on: never in the output table, so every one is scored live."""
BATCH_KEYS = 100
"""Keys per request of the ``batch-100`` scenario."""
PERCENTILES = ("p50", "p95", "p99", "p999")
WARMUP_S = 1.0
"""A short untimed run before each scenario's first timed run (the first live batch loads the model's session)."""
PAUSE_S = 0.5
"""Between runs, so that the service has drained the previous one."""
READY_TIMEOUT_S = 180.0
IDLE_THRESHOLD = 0.15
"""Before each run, wait (``wait_idle_s``) until processes other than the bench's use less than this much of a core."""
BUSY_WARNING = 0.25
"""Other processes using more than this much of a core during a run make its figures suspect (said beside the aims)."""


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One kind of request against one service."""

    name: str
    server: str
    """``embedded`` (the service with runtime.backend embedded) or ``triton`` (runtime.backend triton)."""
    what: str
    rates: tuple[float, ...]
    """Requests per second of the fixed-rate runs."""
    saturation_start: float
    """The saturation search's first rate (requests/s)."""
    keys_per_request: int = 1
    aim: tuple[float, float] | None = None
    """(rate, p99 ms): what we aim for on a 2-core machine, reported against, never asserted."""

    @property
    def base(self) -> str:
        """The scenario's name without its ``@<ref>`` (the same load against the code of another commit)."""
        return self.name.split("@", 1)[0]


def with_baseline(scenarios: Sequence[Scenario], ref: str) -> list[Scenario]:
    """Each scenario, followed by its twin against services started from the code at git `ref` (``<name>@<ref>``,
    server ``<server>@<ref>``): the same requests, rates and repetitions, interleaved with the current code's, so
    that one invocation compares the two on one machine in one window."""
    out = []
    for s in scenarios:
        out += [s, dataclasses.replace(s, name=f"{s.name}@{ref}", server=f"{s.server}@{ref}")]
    return out


def checkout(ref: str, into: Path) -> Path:
    """The ``scoring`` package as of git `ref`, extracted (``git archive``) under `into`; the directory to put first
    on a child's ``sys.path``."""
    root = Path(__file__).resolve().parents[2]
    target = into / f"code-{ref.replace('/', '_')}"
    if target.exists():
        import shutil

        shutil.rmtree(target)
    target.mkdir(parents=True)
    try:
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", "--format=tar", ref, "scoring"], check=True, capture_output=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        raise ConfigError(
            f"--baseline-ref {ref}: git archive failed: {detail.decode(errors='replace').strip() or e}"
        ) from None
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


SCENARIOS: dict[str, Scenario] = {
    "precomputed": Scenario(
        "precomputed", "embedded", "GET /v1/scores/{key}, a random existing key", (500, 1000, 2000), 1000, 1, (1000, 2.0)
    ),
    "precomputed-features": Scenario(
        "precomputed-features", "embedded",
        "POST /v1/score, a random existing key + its 20 features (a hit: the features are checked, not used)",
        (500, 1000, 2000), 1000, 1, (1000, 2.0),
    ),
    "live-embedded": Scenario(
        "live-embedded", "embedded", "POST /v1/score, absent key + 20 features, onnxruntime in process",
        (100, 250, 500), 250, 1, (500, 10.0),
    ),
    "live-triton": Scenario(
        "live-triton", "triton", "POST /v1/score, absent key + 20 features, Triton (gRPC, Python backend)",
        (100, 250, 500), 250, 1, (500, 10.0),
    ),
    "batch-100": Scenario(
        "batch-100", "embedded", f"POST /v1/score, {BATCH_KEYS} random existing keys per request",
        (20, 50, 100), 50, BATCH_KEYS,
    ),
}  # fmt: skip


def scenarios_for(names: Sequence[str] | None, rates: Sequence[float] | None = None) -> list[Scenario]:
    """The chosen scenarios (all by default), with `rates` replacing each one's fixed rates when given."""
    chosen = list(names or SCENARIOS)
    unknown = [n for n in chosen if n not in SCENARIOS]
    if unknown:
        raise ConfigError(f"--scenario {unknown}: choose from {list(SCENARIOS)}")
    if rates is not None and (not rates or any(not r > 0 for r in rates)):
        raise ConfigError(f"--rate must be positive, got {list(rates)}")
    out = []
    for name in dict.fromkeys(chosen):
        scenario = SCENARIOS[name]
        if rates:
            scenario = dataclasses.replace(scenario, rates=tuple(float(r) for r in rates))
        out.append(scenario)
    return out

"""The `scoring` command: thin. Parse, call a mode, print a summary; a ScoringError becomes a plain message and its
exit code.

- :mod:`~scoring.cli.app`: the typer app, its options, and the one error-to-exit-code decorator (and :func:`main`);
- :mod:`~scoring.cli.render`: the run summaries, rendered from a run's record;
- the command groups, each in its own module: :mod:`~scoring.cli.batch` (plan, run, show),
  :mod:`~scoring.cli.stream` (stream), :mod:`~scoring.cli.online` (serve, publish-online), :mod:`~scoring.cli.deploy`
  (submit, render k8s), :mod:`~scoring.cli.sidecar` (export, sidecar, cluster), :mod:`~scoring.cli.tools` (demo,
  demo-serve, demo-stream, bench, bench-stream, bench-serve) and :mod:`~scoring.cli.doctor` (doctor).

Every command imports what it runs lazily: ``scoring --help`` imports no Spark, MLflow or Triton.
"""

from __future__ import annotations

from scoring.cli import batch, deploy, doctor, online, sidecar, stream, tools  # noqa: F401 - each registers its commands
from scoring.cli.app import app, exits_on_error, main
from scoring.cli.render import print_stream_summary, print_summary

_ORDER = (
    "plan",
    "run",
    "stream",
    "submit",
    "export",
    "demo",
    "show",
    "doctor",
    "bench",
    "bench-stream",
    "bench-serve",
    "serve",
    "publish-online",
    "demo-serve",
    "demo-stream",
    "sidecar",
    "cluster",
    "render",
)
"""The order `scoring --help` lists the commands and groups in."""


def _position(info) -> int:
    name = info.name or info.callback.__name__.replace("_", "-")
    return _ORDER.index(name) if name in _ORDER else len(_ORDER)


app.registered_commands.sort(key=_position)
app.registered_groups.sort(key=_position)

__all__ = ["app", "exits_on_error", "main", "print_stream_summary", "print_summary"]

if __name__ == "__main__":
    main()

"""Online commands: `scoring serve` (scores over HTTP) and `scoring publish-online` (load them into Redis)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from scoring.cli.app import SET_HELP, app, err, out
from scoring.errors import ConfigError, require_extra


@app.command()
def serve(
    config: Annotated[Path, typer.Argument(help="YAML job config; its serve: section (optional) tunes the service.")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=SET_HELP)] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default: serve.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default: serve.port, 8080; 0: any).")] = None,
) -> None:
    """Serve the job's scores over HTTP: precomputed scores of the batch output table (loaded with delta-rs, reloaded
    when the table gets a new version), live inference through the job's runtime (Triton or embedded) for keys
    without a current score, version-aware (a score by another model version than the alias's is stale).

    Routes: GET /v1/scores/{key} (composite keys: one path segment per key column, in input.key order);
    POST /v1/score ({"key": ..., "features": {...}} or a list of them); POST /v2/models/{name}/infer and
    /v2/models/{name}/versions/{v}/infer
    (KServe v2 / Open Inference Protocol); /v2/health/live, /v2/health/ready, /metrics, /v1/status, /docs.

    Config keys: serve.host, serve.port, serve.table, serve.partition, serve.index (memory | redis), serve.redis.*,
    serve.refresh_interval_s, serve.alias_check_interval_s, serve.max_age_s, serve.serve_stale, serve.live,
    serve.live_fallback, serve.batch_window_ms, serve.max_batch_rows, serve.deadline_s, serve.breaker_failures,
    serve.breaker_reset_s, serve.max_body_bytes, serve.max_batch_keys, serve.request_receive_timeout_s,
    serve.max_connections, serve.auth_token_env. See the README's Online serving section.

    Runs until Ctrl-C or SIGTERM (requests in flight finish first). Exit status: 0 when stopped; 1 when there is no
    output table to serve; 2 on a bad config; 75 when Redis or the registry is unreachable at start.
    """
    require_extra("serve", "scoring serve")
    from scoring import load_job_config
    from scoring.engine.progress import LogReporter
    from scoring.modes.http_api import bind, serve_forever
    from scoring.modes.online import OnlineService

    job = load_job_config(config, set_ or [])
    service = OnlineService(job, reporter=LogReporter()).start()
    settings = service.serve
    listen_host = host or settings.host
    listen_port = settings.port if port is None else port

    try:
        sock = bind(listen_host, listen_port)
    except OSError as e:
        service.close()
        raise ConfigError(
            f"cannot listen on {listen_host}:{listen_port}: {e.strerror or e}",
            hint="choose another --port (or serve.port), or stop what listens there",
        ) from e
    model = service.model
    err.print(
        f"serving {job.name} on http://{listen_host}:{sock.getsockname()[1]}: model {model.uri} (from "
        f"{job.model.uri}); index {settings.index}, table {service.table} version {service.index_version}; live "
        f"{job.runtime.backend if settings.live else 'off'}. Ctrl-C to stop.",
        highlight=False,
        soft_wrap=True,
    )
    try:
        serve_forever(service, sock)
    finally:
        service.close()
    err.print("stopped", highlight=False)


@app.command("publish-online")
def publish_online(
    config: Annotated[Path, typer.Argument(help="YAML job config: output.table (or serve.table) and serve.redis.")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=SET_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Load the job's precomputed scores into Redis for `scoring serve` with serve.index: redis: every key of the
    table's latest version (the newest row per key, or serve.partition's rows), under serve.redis.prefix, then switch
    readers to it in one step. Idempotent per table version: publishing a version already published writes nothing.
    A publish that is interrupted leaves the previous version served; running it again completes it."""
    require_extra("serve", "scoring publish-online")
    from scoring import load_job_config
    from scoring.engine.progress import default_reporter
    from scoring.modes.online import publish

    job = load_job_config(config, set_ or [])
    summary = publish(job, reporter=default_reporter())
    if as_json:
        out.print_json(json.dumps(summary))
        return
    verb = "published" if summary["published"] else "already published (nothing written)"
    out.print(
        f"{summary['table']} version {summary['table_version']}: {summary['keys']:,} keys {verb} to "
        f"{summary['url']} under {summary['prefix']} in {summary['elapsed_s']:.1f} s"
        + (f" (previous version {summary['previous_version']})" if summary.get("previous_version") is not None else ""),
        highlight=False,
    )

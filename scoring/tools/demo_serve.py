"""``make demo-serve``: the demo's scores served over real HTTP, with a hit, a live answer and a stale key.

1. The demo lake and model (as ``scoring demo``), and the batch output ``.demo/lake/churn_scores`` (scored by the
   batch job when it is not there yet).
2. ``scoring serve``'s service on a free loopback port, in this process (the same routes as the CLI).
3. Requests, shown with their answers: a key the batch scored (``precomputed``), a key it did not (``live``, with
   the request's features), then the alias moved to a newly registered version of the model: the same scored key's
   precomputed score is now stale (404 without features; ``live`` by the new version with them). The alias is put
   back on the version it pointed to before, so the other demos see the demo as it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scoring.engine.progress import Reporter


@dataclasses.dataclass
class Exchange:
    """One request and its answer."""

    title: str
    method: str
    path: str
    body: Any
    status: int
    answer: Any


def run_demo_serve(
    directory: Path, config_path: Path, overrides: Sequence[str], *, reporter: Reporter
) -> list[Exchange]:
    import httpx
    import orjson
    from mlflow import MlflowClient

    from scoring import load_job_config
    from scoring.adapters import deltalog
    from scoring.modes.http_api import Running
    from scoring.modes.online import OnlineService
    from scoring.tools.demo import DEMO_ALIAS, DEMO_MODEL, create_demo, feature_names, make_features, register
    from scoring.tools.demo import train_classifier as train

    made = create_demo(directory)
    config = load_job_config(config_path, ["serve.port=0", *overrides])
    if deltalog.snapshot(config.output.table) is None:
        from scoring.modes.batch import run as run_batch

        reporter.step(f"scoring the demo lake into {config.output.table} first (the batch job)")
        run_batch(load_job_config("conf/jobs/demo.yaml", [f"output.table={config.output.table}"]), reporter=reporter)
    features = feature_names(20)
    rows = deltalog.read(config.input.table, [config.input.key[0], *features], key="input.table")
    hit_features = {f: rows.column(f)[0].as_py() for f in features}
    hit_key = rows.column(config.input.key[0])[0].as_py()
    new_key = max(rows.column(config.input.key[0]).to_pylist()) + 1_000_000
    exchanges: list[Exchange] = []

    client = MlflowClient(tracking_uri=made["tracking_uri"])
    before = client.get_model_version_by_alias(DEMO_MODEL, DEMO_ALIAS).version
    with OnlineService(config, reporter=reporter) as service, Running(service) as running:
        http = httpx.Client(base_url=running.url, timeout=30)

        def ask(title: str, method: str, path: str, body: Any = None) -> None:
            response = http.request(method, path, content=None if body is None else orjson.dumps(body))
            exchanges.append(Exchange(title, method, path, body, response.status_code, response.json()))

        reporter.step(f"serving on {running.url}")
        ask("a key the batch job scored: precomputed", "GET", f"/v1/scores/{hit_key}")
        ask(
            "a key the batch job never saw: scored live with the request's features",
            "POST",
            "/v1/score",
            {"key": new_key, "features": hit_features},
        )
        reporter.step("registering a retrained model version and moving the alias to it")
        table = make_features(5_000, seed=29)
        version = register(
            train(table, features, max_iter=50),
            table,
            features,
            name=DEMO_MODEL,
            alias=DEMO_ALIAS,
            tracking_uri=made["tracking_uri"],
        )
        try:
            service.check_alias()
            ask(
                f"the same scored key after the alias moved to version {version}: its score is stale",
                "GET",
                f"/v1/scores/{hit_key}",
            )
            ask(
                "the stale key with its features: scored live by the new version",
                "POST",
                "/v1/score",
                {"key": hit_key, "features": hit_features},
            )
        finally:
            client.set_registered_model_alias(DEMO_MODEL, DEMO_ALIAS, before)
            reporter.step(f"alias {DEMO_ALIAS} put back on version {before}")
        http.close()
    return exchanges


def print_exchanges(console, exchanges: Sequence[Exchange]) -> None:
    import json

    from rich.panel import Panel
    from rich.syntax import Syntax

    for exchange in exchanges:
        request = f"{exchange.method} {exchange.path}"
        if exchange.body is not None:
            request += "\n" + json.dumps(exchange.body)[:200] + ("..." if len(json.dumps(exchange.body)) > 200 else "")
        answer = json.dumps(exchange.answer, indent=2)
        console.print(
            Panel(
                Syntax(f"{request}\n\n-> {exchange.status}\n{answer}", "json", word_wrap=True),
                title=exchange.title,
                title_align="left",
            )
        )

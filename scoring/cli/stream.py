"""`scoring stream`: score a Delta table's new rows or a Kafka topic continuously, each micro-batch committed once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from scoring.cli.app import SET_HELP, app, err
from scoring.cli.render import print_stream_summary


@app.command()
def stream(
    config: Annotated[Path, typer.Argument(help="YAML job config with a stream: section, e.g. conf/jobs/stream.yaml.")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=SET_HELP)] = None,
    available_now: Annotated[
        bool,
        typer.Option("--available-now", help="Process what the source holds now, then stop (an incremental batch)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Score a stream continuously: new rows of an append-only Delta table, or JSON records of a Kafka topic, scored
    with the same model, checks, gates and lineage as `scoring run`, each micro-batch committed to the output table
    exactly once (and optionally sent to a Kafka topic).

    Runs until stopped: Ctrl-C or SIGTERM stops it after the micro-batch in progress (a second Ctrl-C stops at once;
    the checkpoint makes that safe too). With --available-now it processes what is there and exits, with a summary.
    Progress shows one line per micro-batch: rows, rows/s, lag.

    Config keys: stream.source (delta | kafka), stream.checkpoint, stream.trigger, stream.interval_s,
    stream.max_files_per_trigger, stream.max_offsets_per_trigger, stream.event_time, stream.sinks, stream.kafka.*,
    stream.kafka_sink.*, stream.follow_alias, stream.alias_check_interval_s, stream.metrics_port,
    stream.metrics_host; and input.key, input.features, model, runtime, quality, output as for `scoring run`. See the
    README's Streaming section.

    Exit status as `scoring run`: 0 when stopped or drained; 1 when a micro-batch fails for the input's reason (a
    gate with policy fail, invalid features): a restart meets the same micro-batch; 2 on a bad config; 75 when a
    model server or broker is down: a restart resumes from the checkpoint.
    """
    import signal
    import threading

    from scoring import load_job_config
    from scoring.engine.progress import LogReporter
    from scoring.modes.stream import run as run_stream

    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        err.print(f"{signal.Signals(signum).name}: stopping after the micro-batch in progress", highlight=False)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        job = load_job_config(config, set_ or [])
        record = run_stream(job, reporter=LogReporter(), available_now=available_now, stop=stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if as_json:
        print(json.dumps(record.to_dict(), indent=2, default=str))
    else:
        print_stream_summary(record)

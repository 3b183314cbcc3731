"""`scoring bench-stream`'s figures: lag and throughput from joining the producer's and the reader's logs by key, the
summaries over repetitions, and the tables printed at the end (:mod:`scoring.tools.bench_stream`)."""

from __future__ import annotations

import logging
import statistics
from typing import Any

import numpy as np

from scoring.tools.bench_stream_paths import AIMS, WARMUP_KEY_BASE, _Context

_LOGGER = logging.getLogger(__name__)

# -- figures ----------------------------------------------------------------------------------------------------------


def _quantiles(values: np.ndarray, prefix: str) -> dict[str, float | None]:
    names = ("p50", "p95", "p99", "max")
    if not len(values):
        return {f"{prefix}_{n}_s": None for n in names}
    qs = np.percentile(values, [50, 95, 99, 100])
    return {f"{prefix}_{n}_s": round(float(q), 4) for n, q in zip(names, qs, strict=True)}


def _ms(values: list[float | None]) -> dict[str, float | None]:
    got = [v for v in values if v is not None]
    if not got:
        return {"p50": None, "p95": None, "max": None}
    p50, p95 = np.percentile(got, [50, 95])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "max": float(max(got))}


def _figures(path, sent_log, arrivals, table_keys, record, batches, ctx: _Context) -> dict[str, Any]:
    keys, sent = sent_log["keys"], sent_log["sent"]
    got_keys, arrived, seen = arrivals["keys"], arrivals["arrived"], arrivals["seen"]
    timed = got_keys < WARMUP_KEY_BASE
    got_keys, arrived, seen = got_keys[timed], arrived[timed], seen[timed]
    produced = len(keys)
    # first arrival of each key
    order = np.lexsort((arrived, got_keys))
    unique_keys, first = np.unique(got_keys[order], return_index=True)
    first_arrived, first_seen = arrived[order][first], seen[order][first]
    known = np.isin(unique_keys, keys)
    index = np.searchsorted(keys, unique_keys[known])  # keys are sorted (0, 1, 2, ...)
    lags = first_arrived[known] - sent[index]
    seen_lags = first_seen[known] - sent[index]
    delivered = int(known.sum())
    elapsed = float(first_arrived[known].max() - sent.min()) if delivered else 0.0
    producer_span = float(sent.max() - sent.min()) if produced > 1 else 0.0

    out: dict[str, Any] = {
        "path": path.name,
        "source": path.source,
        "sink": path.sink,
        "trigger": path.trigger,
        "interval_s": path.interval_s,
        "rate": ctx.rate,
        "duration_s": ctx.duration_s,
        "produced": produced,
        "producer_rate": round(produced / producer_span) if producer_span else None,
        "producer_behind_max_s": round(float(sent_log["behind_max_s"]), 3),
        "delivered": delivered,
        "duplicates": int(len(got_keys) - len(unique_keys)),
        "missing": produced - delivered,
        "unexpected": int((~known).sum()),
        "throughput_rows_per_s": round(delivered / elapsed) if elapsed > 0 else None,
        "arrival": "output commit timestamp (Delta log)" if path.sink == "delta" else "consumer receive time",
        **_quantiles(lags, "lag"),
        "seen_lag_p95_s": _quantiles(seen_lags, "seen")["seen_p95_s"] if path.sink == "delta" else None,
    }
    if len(lags) >= 8:  # does the stream keep up? lag at the start and at the end of the window
        by_send = np.argsort(sent[index])
        quarter = len(by_send) // 4
        out["lag_p50_first_quarter_s"] = round(float(np.median(lags[by_send[:quarter]])), 4)
        out["lag_p50_last_quarter_s"] = round(float(np.median(lags[by_send[-quarter:]])), 4)
    if table_keys is not None:
        table_timed = table_keys[table_keys < WARMUP_KEY_BASE]
        table_unique = np.unique(table_timed)
        out["table_rows"] = int(len(table_timed))
        out["table_duplicates"] = int(len(table_timed) - len(table_unique))
        out["table_missing"] = int(produced - np.isin(keys, table_unique).sum())
    out.update(
        {
            "stream_lag_p50_s": record.lag_p50_s,
            "stream_lag_p95_s": record.lag_p95_s,
            "stream_lag_p99_s": record.lag_p99_s,
            "stream_lag_max_s": record.lag_max_s,
            "stream_rows_in": record.rows_in,
            "stream_batches": record.batches,
            "stream_phase_s": dict(getattr(record, "batch_timings_s", {}) or {}),
        }
    )
    trigger = _ms([b["trigger_ms"] for b in batches])
    add = _ms([b["add_batch_ms"] for b in batches])
    overhead = _ms(
        [
            b["trigger_ms"] - b["add_batch_ms"]
            for b in batches
            if b["trigger_ms"] is not None and b["add_batch_ms"] is not None
        ]
    )
    rows = [b["rows"] for b in batches]
    out.update(
        {
            "batches": len(batches),
            "batch_rows_p50": round(statistics.median(rows)) if rows else None,
            "batch_ms_p50": trigger["p50"],
            "batch_ms_p95": trigger["p95"],
            "batch_ms_max": trigger["max"],
            "add_batch_ms_p50": add["p50"],
            "add_batch_ms_p95": add["p95"],
            "overhead_ms_p50": overhead["p50"],
            "overhead_ms_p95": overhead["p95"],
            "overhead_parts_ms_p50": {
                part: _ms([b[f"{part}_ms"] for b in batches])["p50"]
                for part in ("latest_offset", "get_batch", "query_planning", "wal_commit", "commit_offsets")
            },
            "micro_batches": batches,
        }
    )
    return out


_SUMMARISED = (
    "produced",
    "producer_rate",
    "delivered",
    "duplicates",
    "missing",
    "throughput_rows_per_s",
    "lag_p50_s",
    "lag_p95_s",
    "lag_p99_s",
    "lag_max_s",
    "seen_lag_p95_s",
    "stream_lag_p50_s",
    "stream_lag_p95_s",
    "stream_lag_p99_s",
    "stream_lag_max_s",
    "batches",
    "batch_rows_p50",
    "batch_ms_p50",
    "batch_ms_p95",
    "add_batch_ms_p50",
    "overhead_ms_p50",
    "lag_p50_first_quarter_s",
    "lag_p50_last_quarter_s",
)


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Median, min and max of each figure across repetitions (and the median of each of the stream's phases)."""
    out: dict[str, dict[str, Any]] = {"median": {}, "min": {}, "max": {}}
    for name in _SUMMARISED:
        values = [r[name] for r in runs if r.get(name) is not None]
        out["median"][name] = statistics.median(values) if values else None
        out["min"][name] = min(values) if values else None
        out["max"][name] = max(values) if values else None
    out["failed"] = [r["error"] for r in runs if "error" in r]
    phases = dict.fromkeys(p for r in runs for p in r.get("stream_phase_s", {}))
    out["median"]["stream_phase_s"] = {
        p: round(statistics.median([r["stream_phase_s"][p] for r in runs if p in r.get("stream_phase_s", {})]), 3)
        for p in phases
    }
    return out


def _cell(summary: dict, name: str, fmt: str, scale: float = 1.0, repeat: int = 1) -> str:
    value = summary["median"].get(name)
    if value is None:
        return "-"
    text = format(value * scale, fmt)
    if repeat > 1 and summary["min"].get(name) is not None:
        low, high = format(summary["min"][name] * scale, fmt), format(summary["max"][name] * scale, fmt)
        if low != high:
            text += f" ({low}-{high})"
    return text


def print_report(console, report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    if not console.is_terminal:  # a file or a pipe: do not squeeze the tables into 80 columns
        console = Console(file=console.file, width=200)
    repeat = report["repeat"]
    spread = ", medians (min-max)" if repeat > 1 else ""
    lag = Table(
        title=f"end-to-end: {report['rate']:,.0f} events/s x {report['duration_s']:g} s, {report['features']} "
        f"features, {repeat} run(s) per path{spread}, {report['cores']} cores"
    )
    for col in (
        "path",
        "trigger",
        "produced",
        "ev/s sent",
        "delivered",
        "dup",
        "missing",
        "rows/s",
        "lag p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "stream's own p50/p95/p99 ms",
    ):
        lag.add_column(col, justify="left" if col in ("path", "trigger") else "right")
    batch = Table(
        title="where a micro-batch's time goes (Spark's progress reports: triggerExecution = addBatch + overhead)"
    )
    for col in (
        "path",
        "batches",
        "rows/batch",
        "batch ms p50",
        "p95",
        "addBatch (score+write) p50",
        "overhead p50",
        "lag p50 1st->4th quarter ms",
        "load avg 1m",
    ):
        batch.add_column(col, justify="left" if col == "path" else "right")
    for name, p in report["paths"].items():
        ok = [r for r in p["runs"] if "error" not in r]
        if not ok:
            lag.add_row(name, p["runs"][0]["trigger"], "failed", *[""] * 10)
            continue
        first = ok[0]

        def c(key: str, fmt: str = ",.0f", scale: float = 1.0, p=p) -> str:
            return _cell(p, key, fmt, scale, repeat)

        own = "/".join(_cell(p, f"stream_lag_{q}_s", ",.0f", 1000, 1) for q in ("p50", "p95", "p99"))
        lag.add_row(
            name,
            first["trigger"] + (f" {first['interval_s']:g} s" if first["trigger"] == "micro-batch" else ""),
            c("produced"),
            _cell(p, "producer_rate", ",.0f"),
            c("delivered"),
            c("duplicates"),
            c("missing"),
            _cell(p, "throughput_rows_per_s", ",.0f"),
            c("lag_p50_s", scale=1000),
            c("lag_p95_s", scale=1000),
            c("lag_p99_s", scale=1000),
            c("lag_max_s", scale=1000),
            own,
        )
        quarters = (
            f"{_cell(p, 'lag_p50_first_quarter_s', ',.0f', 1000, 1)} -> "
            f"{_cell(p, 'lag_p50_last_quarter_s', ',.0f', 1000, 1)}"
        )
        batch.add_row(
            name,
            c("batches"),
            c("batch_rows_p50"),
            c("batch_ms_p50"),
            c("batch_ms_p95"),
            c("add_batch_ms_p50"),
            c("overhead_ms_p50"),
            quarters,
            f"{min(min(r['load_avg_1m']) for r in ok):.1f}-{max(max(r['load_avg_1m']) for r in ok):.1f}",
        )
    console.print(lag)
    console.print(batch)
    for name, p in report["paths"].items():
        for error in dict.fromkeys(p["failed"]):
            console.print(f"{name} failed: {error}", highlight=False, markup=False)
        phases = p["median"].get("stream_phase_s") or {}
        if phases:
            console.print(
                f"{name}: the stream's own split of a micro-batch (mean s): "
                + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()),
                highlight=False,
            )
    console.print(
        "lag = arrival - send time per key; arrival: Delta sink = the output commit's timestamp in the Delta log, "
        "Kafka sink = receive time at an independent consumer. The stream's own lag runs from the event time to "
        "just after its commit (timed window only).",
        highlight=False,
    )
    for name, (figure, limit) in AIMS.items():
        if name in report["paths"]:
            value = report["paths"][name]["median"].get(figure)
            verdict = "-" if value is None else ("met" if value < limit else "not met")
            shown = "-" if value is None else f"{value * 1000:,.0f} ms"
            console.print(
                f"aim {name}: {figure.replace('_s', '').replace('lag_', 'lag ')} under {limit * 1000:,.0f} ms: "
                f"{shown} ({verdict})",
                highlight=False,
            )

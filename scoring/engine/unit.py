"""The unit of work, once: score a set of rows end to end, the same way for a batch run and a stream's micro-batch.

    invalid-feature split -> input gate -> probe -> score -> output-schema check -> prediction check -> output gate
    -> set-aside union (lineage is stamped on every scored row as it is scored)

A mode reads its rows, sets aside what only it knows about (a Kafka record that cannot be parsed, a row the output
cannot take), calls :func:`score_unit`, and commits the result under its own transaction identity. Nothing here
writes; every frame operation goes through the :class:`~scoring.runners.base.Runner`, every kept / set-aside split
through :mod:`scoring.engine.gates`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from scoring.config import JobConfig
from scoring.core.score import ScoringSpec
from scoring.core.stamp import Lineage
from scoring.engine import gates
from scoring.engine.model import PreparedModel
from scoring.engine.probe import PROBE_ROWS, probe
from scoring.engine.progress import Reporter
from scoring.errors import ScoringError

_LOGGER = logging.getLogger(__name__)

INVALID_FEATURE = "invalid feature (null, NaN, infinite or beyond float32)"
"""Why a row with an invalid feature was set aside (its quarantine row's reason)."""
INVALID_PREDICTION = "NaN or infinite prediction"
"""Why a row with an invalid prediction was set aside."""


@dataclasses.dataclass(frozen=True)
class UnitContext:
    """Everything one unit of work needs, settled by the mode before it starts."""

    config: JobConfig
    model: PreparedModel
    predictor_spec: Any
    runner: Any
    """The :class:`~scoring.runners.base.Runner` that holds the rows."""
    stamp: gates.Stamp
    """What every set-aside row is stamped with (run id, time, key and partition columns)."""
    lineage: Lineage
    """What every scored row is stamped with."""
    passthrough: tuple[str, ...]
    """Columns copied from input to output unchanged (key, partition, and a stream's source columns)."""
    rows: int
    """Rows handed to the unit (after the mode's own set-asides)."""
    rows_invalid: int = 0
    """Rows with invalid features among them (counted by the mode's one pass; the mode has already refused them
    when ``input.on_invalid_rows`` is ``fail``): set aside here."""
    gate_source: str = ""
    """What the input gate's report names as the rows' source."""
    output_gate_source: str = ""
    """What the output gate's report names as the scores' source."""
    output_schema: pa.Schema | None = None
    """The prediction columns already probed for this model (a stream probes once per model version); None: probe."""
    check_output: bool = True
    """Check the scores' schema against the output table (a stream does it once per model version)."""
    finish: Callable[[Any], Any] | None = None
    """The mode's last touch on the scored frame, before any check (a stream adds its source columns)."""
    keep_scores: bool = False
    """Keep the scores for a second look even without output checks (a stream writing two sinks)."""
    set_aside: Sequence[Any] = ()
    """Quarantine frames the mode set aside before the unit (unioned with the unit's own)."""
    reporter: Reporter | None = None
    """Where progress goes (a batch run); None: quiet (a micro-batch reports one line of its own)."""
    rows_selected: int | None = None
    """Rows the run selected, for the progress line (defaults to `rows`)."""


@dataclasses.dataclass(frozen=True)
class UnitResult:
    """What a unit of work produced: the scores to commit (None when every row was set aside), the rows set aside
    (one quarantine frame, or None), the prediction columns, the counts and the gates' reports."""

    scored: Any | None
    set_aside: Any | None
    output_schema: pa.Schema
    rows_invalid: int
    """Rows set aside for invalid features."""
    rows_quarantined: int
    """Rows set aside by the input gate, for invalid predictions, or by the output gate."""
    quality: dict[str, Any]
    """Gate reports by gate (``input``, ``output``), JSON-ready."""
    kept: tuple[Any, ...] = ()
    """Frames the runner keeps for this unit: :meth:`release` them once the commit is done."""

    def release(self, runner) -> None:
        for frame in self.kept:
            runner.release(frame)


def score_unit(rows, ctx: UnitContext) -> UnitResult:
    """Score `rows` end to end (see the module): gates raise :class:`~scoring.errors.QualityError` on failure,
    checks raise their :class:`~scoring.errors.ScoringError`; nothing is written either way."""
    config, runner, stamp = ctx.config, ctx.runner, ctx.stamp
    set_aside = list(ctx.set_aside)
    reports: dict[str, Any] = {}
    quarantined = 0
    source = rows
    if ctx.rows_invalid:
        valid = gates.valid_features(source.schema, ctx.model.features)
        cut = gates.split(source, valid, INVALID_FEATURE, "input", stamp, count=False)
        source = cut.kept
        set_aside.append(cut.set_aside)
    gate = config.quality.input
    if gate.expectations:
        _step(ctx, f"input gate: {len(gate.expectations)} expectation(s)")
        cut = gates.apply_gate(source, gate, "input", stamp, source=ctx.gate_source)
        source, quarantined = cut.kept, quarantined + cut.count
        set_aside.append(cut.set_aside)
        if cut.report is not None:
            reports["input"] = cut.report.to_dict()
        if cut.count:
            _step(ctx, f"input gate set aside {cut.count} row(s) failing expectations")

    spec = ScoringSpec(
        features=ctx.model.features,
        passthrough=ctx.passthrough,
        key=tuple(config.input.key),
        model=ctx.model.uri,
        allow_nonfinite=config.output.on_invalid_predictions == "quarantine",
    )
    left = ctx.rows - ctx.rows_invalid - quarantined
    output_schema = ctx.output_schema
    if left > 0 and output_schema is None:
        try:
            output_schema = probe(runner.sample(source, PROBE_ROWS), spec, ctx.predictor_spec)
        except ScoringError:
            raise
        except Exception as e:
            raise runner.translate(e) from None
    if output_schema is None:
        output_schema = pa.schema([])
    if left <= 0 or len(output_schema) == 0:
        return UnitResult(None, gates.union(set_aside), output_schema, ctx.rows_invalid, quarantined, reports)

    scored = runner.score(
        source, dataclasses.replace(spec, output_schema=output_schema), ctx.predictor_spec, ctx.lineage
    )
    if ctx.finish is not None:
        scored = ctx.finish(scored)
    if ctx.check_output:
        runner.check_output_schema(config.output.table, scored.schema, config.output.partition_by)
    kept: list[Any] = []
    checks_predictions = config.output.on_invalid_predictions == "quarantine"
    if config.quality.output.expectations or checks_predictions or ctx.keep_scores:
        # The checks need the scores before the commit: score once, keep them, check them, then commit them.
        scored = runner.keep(scored)
        kept.append(scored)
        _step(
            ctx,
            f"scoring {ctx.rows_selected if ctx.rows_selected is not None else ctx.rows:,} rows, then checking the predictions",
        )
        watching = runner.watch(ctx.reporter, "scoring") if ctx.reporter is not None else contextlib.nullcontext()
        try:
            with watching:
                if checks_predictions:
                    finite = gates.finite_predictions([scored.schema[n] for n in output_schema.names])
                    cut = gates.split(scored, finite, INVALID_PREDICTION, "output", stamp)
                    scored, quarantined = cut.kept, quarantined + cut.count
                    set_aside.append(cut.set_aside)
                if config.quality.output.expectations:
                    cut = gates.apply_gate(
                        scored, config.quality.output, "output", stamp, source=ctx.output_gate_source
                    )
                    scored, quarantined = cut.kept, quarantined + cut.count
                    set_aside.append(cut.set_aside)
                    if cut.report is not None:
                        reports["output"] = cut.report.to_dict()
        except BaseException:
            for frame in kept:
                runner.release(frame)
            raise
    return UnitResult(
        scored, gates.union(set_aside), output_schema, ctx.rows_invalid, quarantined, reports, tuple(kept)
    )


def _step(ctx: UnitContext, message: str) -> None:
    if ctx.reporter is not None:
        ctx.reporter.step(message)

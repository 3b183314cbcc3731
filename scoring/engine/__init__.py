"""The shared middle of the engine: what batch, streaming and online scoring all do between their source and sink.

    prepare_model    resolve the model once, learn its features           (model.py)
    open_predictor   the embedded runtime or a Triton sidecar              (runtime.py)
    probe            score a few rows on the driver: the output schema     (probe.py)
    split_invalid / apply_gate   rows kept, rows set aside, gate reports   (gates.py)
    write_rule / split_unwritable   rows the output cannot take, set aside  (gates.py, scoring.core.writable)
    Lineage          what every row is stamped with                        (scoring.core.stamp)
    RunRecord        the summary, the commit metadata and the runs-table row of a run or a micro-batch (record.py)
    score_unit       the unit of work, once: the above in order, for a batch run and a micro-batch   (unit.py)
    PhaseClock       where a unit's seconds go                             (clock.py)

A mode (``scoring.modes.*``) owns only its source, its sink and its transaction identity; a runner
(``scoring.runners.*``) reads, scores and commits the rows.
"""

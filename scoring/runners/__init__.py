"""Runners: where rows are read, scored in parallel and committed (:class:`scoring.runners.base.Runner`).

The engine and the modes above a runner define what a job promises (pinning, scoped replace, quarantine, gates,
lineage, typed failures); a runner only carries it out on one engine: Spark today (:mod:`scoring.runners.spark`).
"""

"""``scoring render k8s``: the CLI over :func:`scoring.deploy.kubernetes.render` (no registry, no cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scoring.deploy import kubernetes

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "golden"
DEMO_TRITON = ROOT / "conf" / "jobs" / "demo-triton.yaml"


@pytest.fixture(autouse=True)
def _no_registry(monkeypatch):
    """Every alias points to version 7 (as in test_kubernetes.py, whose golden files this compares with)."""
    monkeypatch.setattr(kubernetes, "resolve_alias", lambda name, alias, **_: "7")
    monkeypatch.delenv(kubernetes.IMAGE_ENV, raising=False)


def test_scoring_render_k8s_writes_what_a_platform_team_applies(tmp_path):
    from typer.testing import CliRunner

    from scoring.cli import app

    jobs = sorted((GOLDEN / "several-models" / "jobs").glob("*.yaml"))
    result = CliRunner().invoke(app, ["render", "k8s", *map(str, jobs), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "scoring-churn-configmap.yaml",
        "scoring-churn-sparkapplication.yaml",
        "scoring-fraud-configmap.yaml",
        "scoring-fraud-sparkapplication.yaml",
    ]
    assert "models:/churn@champion pinned to models:/churn/7" in result.output
    assert (tmp_path / "out" / "scoring-churn-sparkapplication.yaml").read_text() == (
        GOLDEN / "several-models" / "rendered" / "scoring-churn-sparkapplication.yaml"
    ).read_text()
    bad = CliRunner().invoke(
        app, ["render", "k8s", str(DEMO_TRITON), "--set", "spark.master=local", "--out", str(tmp_path)]
    )
    assert bad.exit_code == 2 and "spark-operator sets the master" in bad.output

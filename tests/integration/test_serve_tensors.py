"""``scoring serve`` with a tensor, multi-input model: a serve config whose ``input.tensors`` maps array columns to
named, padded model inputs answers live with the model's own predict (onnxruntime on the same padded arrays), and
checks each array element by the one feature rule. The table it serves is written by the real batch job."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from scoring import build_job_config, run
from scoring.tools import demo
from tests.integration.serve_fixtures import serving
from tests.integration.tensor_models import SEQ, ids_mask_model, register_onnx

MODEL = "serve_tensor_ids_mask"
ROWS = 40
TENSORS = {"token_ids": {"input": "ids", "length": SEQ, "pad": 0}, "attention": {"input": "mask"}}


@dataclasses.dataclass
class TensorServed:
    root: Path
    model: object

    def job(self, **serve) -> dict:
        return {
            "name": "serve-tensors",
            "input": {
                "table": str(self.root / "input"),
                "key": "customer_id",
                "features": ["token_ids", "attention"],
                "tensors": TENSORS,
            },
            "model": {"uri": f"models:/{MODEL}@champion"},
            "output": {"table": str(self.root / "output")},
            "spark": {"master": "local[2]"},
            "serve": serve,
        }


@pytest.fixture(scope="module")
def tensor_served(spark, registry, tmp_path_factory) -> TensorServed:
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("serve-tensors")
    lengths = rng.integers(3, SEQ + 1, size=ROWS)
    table = pa.table(
        {
            "customer_id": pa.array(np.arange(ROWS, dtype=np.int64)),
            "ds": pa.array(["2026-11-01"] * ROWS),
            "token_ids": pa.array([rng.integers(1, 100, size=n).tolist() for n in lengths], pa.list_(pa.int64())),
            "attention": pa.array([[1] * n + [0] * (SEQ - n) for n in lengths], pa.list_(pa.int64())),
        }
    )
    demo.write_delta(root / "input", table)
    model = ids_mask_model()
    register_onnx(model, MODEL)
    served = TensorServed(root, model)
    run(build_job_config(served.job()), spark=spark)
    return served


def _own_predict(model, ids: list[list[int]], mask: list[list[int]]) -> np.ndarray:
    import onnxruntime

    padded = np.zeros((len(ids), SEQ), dtype=np.int64)
    for i, row in enumerate(ids):
        padded[i, : min(len(row), SEQ)] = row[:SEQ]
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (total,) = session.run(None, {"ids": padded, "mask": np.array(mask, dtype=np.int64)})
    return total


def test_a_serve_config_with_input_tensors_answers_live_with_the_models_own_predict(tensor_served):
    ids = [[5, 7, 9], [1, 2, 3, 4, 5, 6], [42, 8, 8, 1]]
    mask = [[1] * len(r) + [0] * (SEQ - len(r)) for r in ids]
    with serving(tensor_served.job()) as s:
        body = [
            {"key": f"new-{i}", "features": {"token_ids": t, "attention": m}}
            for i, (t, m) in enumerate(zip(ids, mask, strict=True))
        ]
        response = s.client.post("/v1/score", json=body)
        assert response.status_code == 200, response.text
        answers = response.json()
        assert all(a.get("source") == "live" for a in answers), answers
        (column,) = answers[0]["predictions"]
        got = np.array([a["predictions"][column] for a in answers], dtype=np.float32)
        np.testing.assert_allclose(got, _own_predict(tensor_served.model, ids, mask), rtol=1e-6)

        # a precomputed key is still answered from the table the batch job wrote
        hit = s.client.get("/v1/scores/3")
        assert hit.status_code == 200 and hit.json()["source"] == "precomputed", hit.text


def test_each_array_element_is_checked_by_the_feature_rule_naming_the_feature(tensor_served):
    with serving(tensor_served.job()) as s:
        for features, field, words in [
            (
                {"token_ids": [1, 1e39, 3], "attention": [1, 1, 1, 0, 0, 0]},
                "token_ids",
                "element 1: 1e+39 is beyond",
            ),
            ({"token_ids": [1, 2, 3], "attention": 1}, "attention", "expected an array of numbers"),
            ({"token_ids": [1, "x"], "attention": [1, 1, 0, 0, 0, 0]}, "token_ids", "expected a number"),
        ]:
            response = s.client.post("/v1/score", json={"key": "new", "features": features})
            assert response.status_code == 422, response.text
            assert response.json()["field"] == field and words in response.json()["error"], response.text

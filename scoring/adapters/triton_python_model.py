"""The Triton Python-backend model that `scoring export --target python` writes as ``<model>/<version>/model.py``.

It runs the version's ``model.onnx`` with onnxruntime inside the server, for Triton servers that only have the Python
backend (like the one bundled in the ``nvidia-pytriton`` wheel). Requests the dynamic batcher hands over together are
concatenated and run in one onnxruntime call, then split back per request.

This file is copied verbatim into model repositories; it imports only what the server's Python environment has.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        self.session = ort.InferenceSession(
            os.path.join(version_dir, "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [
            (o["name"], pb_utils.triton_string_to_numpy(o["data_type"]), o["dims"]) for o in config["output"]
        ]

    def execute(self, requests):
        tensors = [[pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs] for r in requests]
        sizes = [t[0].shape[0] for t in tensors]
        feeds = {
            name: tensors[0][i] if len(tensors) == 1 else np.concatenate([t[i] for t in tensors])
            for i, name in enumerate(self.inputs)
        }
        results = self.session.run([name for name, _, _ in self.outputs], feeds)
        responses, start = [], 0
        for n in sizes:
            out = []
            for (name, dtype, dims), values in zip(self.outputs, results, strict=True):
                part = np.asarray(values[start : start + n]).astype(dtype, copy=False)
                out.append(pb_utils.Tensor(name, part.reshape((n, *[d if d > 0 else -1 for d in dims]))))
            responses.append(pb_utils.InferenceResponse(output_tensors=out))
            start += n
        return responses

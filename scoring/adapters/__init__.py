"""One outside library each: every import of pyspark, delta, mlflow, onnxruntime (and later tritonclient) lives here."""

"""The pure core: numpy, pyarrow and pandas only. No Spark, no MLflow, no network (a test checks the imports).

Everything here works on one Arrow batch at a time, so the same code scores a Spark partition, a streaming
micro-batch or an online request.
"""

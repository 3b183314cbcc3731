"""Tools for measuring and showing the product: benchmarks, the load generator, the demos. Not on the runtime import path."""

"""Ways to run the engine. Each composes the pure core with adapters."""

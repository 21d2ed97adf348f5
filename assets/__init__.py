"""vitforge's Dagster code location. Thin: each asset reads its Config, calls one
``pipeline.stages`` function, and returns a small manifest with Dagster metadata."""

"""The gates a package must pass, and the MLflow model registry."""

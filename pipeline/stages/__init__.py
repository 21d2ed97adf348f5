"""One function per stage: the pipeline call plus its MLflow run.

The CLI (and so ``dvc repro``) and the Dagster assets call these same functions,
so a materialization and a DVC stage produce the same files and the same run.
"""

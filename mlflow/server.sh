#!/usr/bin/env bash
# Start an MLflow tracking server. Defaults: the embedded SQLite store of this folder.
# Scaled out: MLFLOW_BACKEND_STORE_URI=postgresql://... MLFLOW_ARTIFACTS_DESTINATION=s3://...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec mlflow server \
  --backend-store-uri "${MLFLOW_BACKEND_STORE_URI:-sqlite:///$here/mlflow.db}" \
  --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-$here/artifacts}" \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}"

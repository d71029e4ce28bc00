#!/usr/bin/env bash
# The MLflow tracking + registry server of a maskgan deployment, in the low-memory shape: one uvicorn
# worker and no job-execution workers (~350 MB instead of ~2.5 GB; REFERENCE.md §4).
# Run by: the Ray head (ray_cluster.yaml head_start_ray_commands), systemd (infra/mlflow/mlflow.service),
# Kubernetes (infra/mlflow/kubernetes.yaml). Configure with environment variables, never with secrets:
#   MLFLOW_BACKEND_STORE_URI      sqlite:////var/lib/mlflow/mlflow.db (default) or a Postgres URI whose
#                                 password comes from ~/.pgpass or PGPASSWORD set by the runtime (a k8s
#                                 secretKeyRef, a systemd credential), never written in a URI here
#   MLFLOW_ARTIFACTS_DESTINATION  s3://bucket/prefix (required): the server proxies artefact up/downloads,
#                                 so only the server needs S3 access (its IAM role), not every client
#   MLFLOW_HOST                   127.0.0.1 (default); the Ray head sets 0.0.0.0 so workers reach it,
#                                 the security group admitting only the VPC (never 0.0.0.0/0)
#   MLFLOW_PORT                   5000 (default)
set -euo pipefail

: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION=s3://bucket/prefix}"
case "${MLFLOW_ARTIFACTS_DESTINATION}" in
    s3://*) ;;
    *) echo "MLFLOW_ARTIFACTS_DESTINATION must be s3://bucket/prefix, got ${MLFLOW_ARTIFACTS_DESTINATION}" >&2
       exit 2 ;;
esac
export MLFLOW_BACKEND_STORE_URI="${MLFLOW_BACKEND_STORE_URI:-sqlite:////var/lib/mlflow/mlflow.db}"
export MLFLOW_HOST="${MLFLOW_HOST:-127.0.0.1}"
export MLFLOW_PORT="${MLFLOW_PORT:-5000}"
# The job-execution workers (huey) are what makes a default server take GBs; maskgan does not use them.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

if [[ "${MLFLOW_BACKEND_STORE_URI}" == sqlite:////* ]]; then
    mkdir -p "$(dirname "${MLFLOW_BACKEND_STORE_URI#sqlite:///}")"  # SQLite creates the file, not its folder
fi

exec mlflow server \
    --backend-store-uri "${MLFLOW_BACKEND_STORE_URI}" \
    --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION}" \
    --serve-artifacts \
    --host "${MLFLOW_HOST}" \
    --port "${MLFLOW_PORT}" \
    --workers 1

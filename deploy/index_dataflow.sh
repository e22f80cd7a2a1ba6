#!/usr/bin/env bash
# Builds the retrieval index (tensorflow-transform PCA, --transform, + nearest-neighbour index) from
# scored Parquet files on Dataflow. CPU workers are enough: the job is a few passes of linear algebra.
#
#   PROJECT=my-project BUCKET=gs://my-bucket EMBEDDINGS='gs://my-bucket/scores/run1-*.parquet' \
#   OUTPUT=gs://my-bucket/index/run1 deploy/index_dataflow.sh [extra pipelines.index flags]
set -euo pipefail

: "${PROJECT:?set PROJECT to your Google Cloud project id}"
: "${BUCKET:?set BUCKET to a gs:// bucket for temp and staging files}"
: "${EMBEDDINGS:?set EMBEDDINGS to the scored Parquet pattern, e.g. gs://bucket/scores/run1-*.parquet}"
: "${OUTPUT:?set OUTPUT to a gs:// folder for the index}"
REGION="${REGION:-us-central1}"
IMAGE="${IMAGE:-${REGION}-docker.pkg.dev/${PROJECT}/nextvlad/worker:latest}"
JOB_NAME="${JOB_NAME:-nextvlad-index-$(date +%Y%m%d-%H%M%S)}"
MACHINE_TYPE="${MACHINE_TYPE:-n2-highmem-8}"
MAX_WORKERS="${MAX_WORKERS:-10}"
DIM="${DIM:-256}"
INDEX_TYPE="${INDEX_TYPE:-ivf}"
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-nextvlad-worker@${PROJECT}.iam.gserviceaccount.com}"
PYTHON="${PYTHON:-python}"

exec ${PYTHON} -m pipelines.index \
  --runner=DataflowRunner \
  --project="${PROJECT}" \
  --region="${REGION}" \
  --job_name="${JOB_NAME}" \
  --temp_location="${BUCKET}/tmp" \
  --staging_location="${BUCKET}/staging" \
  --sdk_container_image="${IMAGE}" \
  --sdk_location=container \
  --experiments=use_runner_v2 \
  --machine_type="${MACHINE_TYPE}" \
  --max_num_workers="${MAX_WORKERS}" \
  --service_account_email="${SERVICE_ACCOUNT}" \
  --embeddings="${EMBEDDINGS}" \
  --output="${OUTPUT}" \
  --dim="${DIM}" \
  --index_type="${INDEX_TYPE}" \
  "$@"

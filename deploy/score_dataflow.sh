#!/usr/bin/env bash
# Scores a corpus on Dataflow with GPU workers: one row per video into Parquet (or BigQuery).
#
#   PROJECT=my-project BUCKET=gs://my-bucket INPUT='gs://my-bucket/frames/*.tfrecord' \
#   MODEL=gs://my-bucket/models/run1/model.keras OUTPUT=gs://my-bucket/scores/run1 \
#   deploy/score_dataflow.sh [extra pipelines.score flags]
#
# Every value comes from the environment, with the defaults below; see deploy/README.md for the
# image, the service account and the IAM roles it needs.
set -euo pipefail

: "${PROJECT:?set PROJECT to your Google Cloud project id}"
: "${BUCKET:?set BUCKET to a gs:// bucket for temp and staging files}"
: "${INPUT:?set INPUT to a TFRecord file pattern, e.g. gs://bucket/frames/*.tfrecord}"
: "${MODEL:?set MODEL to a model.keras file or a model_dir on GCS}"
: "${OUTPUT:?set OUTPUT to a gs:// output prefix}"
REGION="${REGION:-us-central1}"
IMAGE="${IMAGE:-${REGION}-docker.pkg.dev/${PROJECT}/nextvlad/worker:latest}"
JOB_NAME="${JOB_NAME:-nextvlad-score-$(date +%Y%m%d-%H%M%S)}"
MACHINE_TYPE="${MACHINE_TYPE:-g2-standard-8}"      # 8 vCPU + one NVIDIA L4
GPU_TYPE="${GPU_TYPE:-nvidia-l4}"
GPU_COUNT="${GPU_COUNT:-1}"
NUM_WORKERS="${NUM_WORKERS:-1}"
MAX_WORKERS="${MAX_WORKERS:-20}"
BATCH_SIZE="${BATCH_SIZE:-256}"
OUTPUT_FORMAT="${OUTPUT_FORMAT:-parquet}"           # or bigquery (then set BIGQUERY_TABLE)
BIGQUERY_TABLE="${BIGQUERY_TABLE:-}"
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-nextvlad-worker@${PROJECT}.iam.gserviceaccount.com}"
PYTHON="${PYTHON:-python}"

exec ${PYTHON} -m pipelines.score \
  --runner=DataflowRunner \
  --project="${PROJECT}" \
  --region="${REGION}" \
  --job_name="${JOB_NAME}" \
  --temp_location="${BUCKET}/tmp" \
  --staging_location="${BUCKET}/staging" \
  --sdk_container_image="${IMAGE}" \
  --sdk_location=container \
  --experiments=use_runner_v2 \
  --dataflow_service_options="worker_accelerator=type:${GPU_TYPE};count:${GPU_COUNT};install-nvidia-driver" \
  --machine_type="${MACHINE_TYPE}" \
  --num_workers="${NUM_WORKERS}" \
  --max_num_workers="${MAX_WORKERS}" \
  --autoscaling_algorithm=THROUGHPUT_BASED \
  --service_account_email="${SERVICE_ACCOUNT}" \
  --share_model \
  --input="${INPUT}" \
  --model="${MODEL}" \
  --output="${OUTPUT}" \
  --output_format="${OUTPUT_FORMAT}" \
  ${BIGQUERY_TABLE:+--bigquery_table="${BIGQUERY_TABLE}"} \
  --batch_size="${BATCH_SIZE}" \
  "$@"

#!/usr/bin/env bash
# Trains a model on a Vertex AI custom job with GPUs, `--distribution mirrored` over the GPUs of
# one machine, writing the model_dir to GCS (resumable: a re-run of the same job continues).
#
#   PROJECT=my-project TRAIN_DATA='gs://my-bucket/yt8m/frame/train*.tfrecord' \
#   EVAL_DATA='gs://my-bucket/yt8m/frame/validate*.tfrecord' MODEL_DIR=gs://my-bucket/models/run1 \
#   deploy/train_vertex.sh [extra trainer.train flags]
set -euo pipefail

: "${PROJECT:?set PROJECT to your Google Cloud project id}"
: "${TRAIN_DATA:?set TRAIN_DATA to a TFRecord pattern on GCS}"
: "${MODEL_DIR:?set MODEL_DIR to a gs:// folder for checkpoints, logs and model.keras}"
REGION="${REGION:-us-central1}"
IMAGE="${IMAGE:-${REGION}-docker.pkg.dev/${PROJECT}/nextvlad/worker:latest}"
DISPLAY_NAME="${DISPLAY_NAME:-nextvlad-train-$(date +%Y%m%d-%H%M%S)}"
MACHINE_TYPE="${MACHINE_TYPE:-a2-highgpu-2g}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-NVIDIA_TESLA_A100}"
ACCELERATOR_COUNT="${ACCELERATOR_COUNT:-2}"
PRESET="${PRESET:-final}"
INPUT_FORMAT="${INPUT_FORMAT:-frame}"
BATCH_SIZE="${BATCH_SIZE:-160}"
EPOCHS="${EPOCHS:-5}"
EVAL_DATA="${EVAL_DATA:-}"
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-nextvlad-trainer@${PROJECT}.iam.gserviceaccount.com}"
GCLOUD="${GCLOUD:-gcloud}"

# The worker image's entrypoint is Beam's boot program; the job overrides it with the trainer.
exec ${GCLOUD} ai custom-jobs create \
  --project="${PROJECT}" \
  --region="${REGION}" \
  --display-name="${DISPLAY_NAME}" \
  --service-account="${SERVICE_ACCOUNT}" \
  --worker-pool-spec="machine-type=${MACHINE_TYPE},accelerator-type=${ACCELERATOR_TYPE},accelerator-count=${ACCELERATOR_COUNT},replica-count=1,container-image-uri=${IMAGE}" \
  --command=python \
  --args=-m,trainer.train,--distribution=mirrored,--mixed_precision,--preset="${PRESET}",--input_format="${INPUT_FORMAT}",--train_data="${TRAIN_DATA}",${EVAL_DATA:+--eval_data="${EVAL_DATA}",}--model_dir="${MODEL_DIR}",--batch_size="${BATCH_SIZE}",--epochs="${EPOCHS}" \
  "$@"

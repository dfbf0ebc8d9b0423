#!/usr/bin/env bash
# One pod of launch/k8s/job.yaml (an Indexed Job, one pod per node): torchrun with this pod's node rank, which is
# the pod's completion index. No filesystem is shared: each pod checkpoints to its own disk and publishes its
# ranks' part to S3 (the config's s3_uri); a replacement pod resumes from S3 alone (resume_from_checkpoint auto).
#
#   launch/k8s/entrypoint.sh NPROC_PER_NODE CONFIG.yaml [--key value ...]
#
# Expects from the pod (job.yaml sets them): JOB_COMPLETION_INDEX (Kubernetes, for Indexed Jobs), NNODES,
# MASTER_ADDR (pod 0's stable name <job>-0.<headless service>) and MASTER_PORT; S3 credentials from a Secret.
# A static rendezvous: node rank = completion index, pod 0's torchrun hosts the store, so ranks are contiguous per
# pod and a replacement pod takes its predecessor's rank.
#
# Exit status, for the Job's podFailurePolicy: 2 user error (fail the Job at once), 42 preempted (the pod is
# replaced and resumes), 130 Ctrl-C, else torchrun's (counted against backoffLimit).
set -euo pipefail

# shellcheck source=SCRIPTDIR/../lib.bash
source "$(dirname "${BASH_SOURCE[0]}")/../lib.bash"
qa_parse_args "$0" "$@"
shift 2
NODE_RANK=${JOB_COMPLETION_INDEX:?set by Kubernetes for an Indexed Job}
NNODES=${NNODES:?set NNODES to the number of pods, the Job completions}

qa_launch_info "$((NNODES * NPROC))" 0 --config "$CONFIG" "$@"

qa_run_and_requeue "launch/k8s/entrypoint.sh" "$OUTPUT_DIR" \
  "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK" \
  --master_addr "${MASTER_ADDR:?set MASTER_ADDR}" --master_port "${MASTER_PORT:?set MASTER_PORT}" \
  --nproc_per_node "$NPROC" train.py --config "$CONFIG" "$@"

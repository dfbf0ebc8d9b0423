#!/usr/bin/env bash
# The same job with plain torchrun instead of `accelerate launch`: train.py needs neither accelerate's
# launcher nor its config files, because it builds the Accelerator and the DeepSpeed plugin from the run
# config alone.
#
#   launch/torchrun.sh NPROC_PER_NODE CONFIG.yaml [--key value ...]          # one machine
#   NNODES=2 MASTER_ADDR=node0 MASTER_PORT=29500 launch/torchrun.sh 8 CONFIG.yaml   # on every node
#
# Expects from the environment:
#   * the project's Python environment: an activated virtualenv, else ./.venv, else python3 (PYTHON=... wins);
#   * multi-node: NNODES, MASTER_ADDR (a host every node reaches) and MASTER_PORT, the same on every node;
#     torchrun's c10d rendezvous assigns the node ranks; output_dir on a filesystem all nodes share, unless
#     the config sets s3_uri (then each node publishes and fetches its own ranks' checkpoint files);
#   * GPUs, or DS_ACCELERATOR=cpu for CPU runs (gloo, fp32);
#   * S3 credentials (AWS_* or an instance role) when the config sets s3_uri, WANDB_API_KEY for online W&B.
# QA_LAUNCH_ECHO=1 prints the torchrun command instead of running it.
#
# Exit status: as launch/local.sh's (2 config error, 42 preempted, 130 Ctrl-C, else torchrun's 0 or 1). Send
# SIGTERM/SIGUSR1 to this script's PID, once; Ctrl-C in the terminal reaches torchrun directly.
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.bash
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"
qa_parse_args "$0" "$@"
shift 2
NNODES=${NNODES:-1}

qa_launch_info "$((NNODES * NPROC))" 0 --config "$CONFIG" "$@"

if ((NNODES == 1)); then
  rdzv=(--standalone)
else
  rdzv=(--nnodes "$NNODES" --rdzv_backend c10d --rdzv_id "${RDZV_ID:-squad-qa}"
        --rdzv_endpoint "${MASTER_ADDR:?set MASTER_ADDR for multi-node}:${MASTER_PORT:?set MASTER_PORT}")
fi
qa_run_and_requeue "launch/torchrun.sh" "$OUTPUT_DIR" \
  "$PYTHON" -m torch.distributed.run "${rdzv[@]}" --nproc_per_node "$NPROC" train.py --config "$CONFIG" "$@"

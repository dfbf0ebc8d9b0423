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
#     torchrun's c10d rendezvous assigns the node ranks; output_dir on a filesystem all nodes share;
#   * GPUs, or DS_ACCELERATOR=cpu for CPU runs (gloo, fp32);
#   * S3 credentials (AWS_* or an instance role) when the config sets s3_uri, WANDB_API_KEY for online W&B.
#
# Exit status: train.py's, except 42 (PREEMPTED_EXIT_CODE) when the run checkpointed after SIGTERM/SIGUSR1
# and left output_dir/PREEMPTED. Send signals to this script's PID, once.
set -euo pipefail

usage() {
  echo "usage: [NNODES=N MASTER_ADDR=host MASTER_PORT=port] $0 NPROC_PER_NODE CONFIG.yaml" \
    "[--key value ...]" >&2
  exit 2
}
[[ $# -ge 2 ]] || usage
NPROC=$1
CONFIG=$2
shift 2
[[ $NPROC =~ ^[1-9][0-9]*$ ]] || usage
# Paths inside the run config are relative to the repository root, where train.py runs.
if [[ -f $CONFIG ]]; then CONFIG="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")"; fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z ${PYTHON:-} ]]; then
  if [[ -n ${VIRTUAL_ENV:-} ]]; then PYTHON=python
  elif [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python
  else PYTHON=python3
  fi
fi
NNODES=${NNODES:-1}

OUTPUT_DIR=""
info=$("$PYTHON" -m qa.plan launch-info "$((NNODES * NPROC))" 0 --config "$CONFIG" "$@")
while IFS='=' read -r key value; do
  if [[ $key == output_dir ]]; then OUTPUT_DIR=$value; fi
done <<<"$info"

if ((NNODES == 1)); then
  rdzv=(--standalone)
else
  rdzv=(--nnodes "$NNODES" --rdzv_backend c10d --rdzv_id "${RDZV_ID:-squad-qa}"
        --rdzv_endpoint "${MASTER_ADDR:?set MASTER_ADDR for multi-node}:${MASTER_PORT:?set MASTER_PORT}")
fi
# Environment rather than flags: older torchrun versions ignore what they do not know. The agent forwards
# SIGUSR1 to the workers once (they run in sessions of their own) and waits for their checkpoint.
export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}

rm -f "$OUTPUT_DIR/PREEMPTED"  # left by an earlier, preempted attempt
"$PYTHON" -m torch.distributed.run "${rdzv[@]}" --nproc_per_node "$NPROC" train.py --config "$CONFIG" "$@" &
child=$!
got_signal=0
# shellcheck disable=SC2329  # called from the traps below, which shellcheck does not follow
forward() {
  got_signal=1
  echo "launch/torchrun.sh: SIG$1 -> forwarding to torchrun (pid $child); the run checkpoints and exits" >&2
  kill -s "$1" "$child" 2>/dev/null || true
}
trap 'forward TERM' TERM
trap 'forward USR1' USR1

rc=0
while :; do  # `wait` returns early when a trapped signal arrives
  got_signal=0
  wait "$child" && rc=0 || rc=$?
  ((got_signal)) || break
done

if [[ -f "$OUTPUT_DIR/PREEMPTED" ]]; then
  echo "launch/torchrun.sh: preempted at step $(cat "$OUTPUT_DIR/PREEMPTED"); rerun with" \
    "--resume_from_checkpoint auto" >&2
  exit 42
fi
exit "$rc"

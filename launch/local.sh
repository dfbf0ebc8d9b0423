#!/usr/bin/env bash
# One machine, N training processes:
#
#   launch/local.sh NPROC CONFIG.yaml [--key value ...]
#   launch/local.sh 8 configs/squad_v1_distilbert.yaml --learning_rate 3e-5
#
# Expects from the environment:
#   * the project's Python environment: an activated virtualenv, else ./.venv, else python3 (PYTHON=... wins);
#   * GPUs that `nvidia-smi -L` lists; without them it runs on CPU (gloo, DS_ACCELERATOR=cpu, fp32), as the
#     tests do. LAUNCH_DEVICE=cpu|gpu overrides the detection;
#   * S3 credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION, or AWS_PROFILE or an
#     instance role) when the config sets s3_uri, and WANDB_API_KEY for online W&B (else W&B runs offline);
#   * HF_HUB_OFFLINE=1 and a filled HF cache on machines without internet.
#
# The accelerate config is picked from configs/accelerate/ to match the run config's DeepSpeed JSON, and
# --deepspeed_config_file passes that JSON so the launcher and the run config always agree.
# Exit status: train.py's, except 42 (PREEMPTED_EXIT_CODE) when the run checkpointed after SIGTERM/SIGUSR1
# and left output_dir/PREEMPTED (torchrun's own status does not carry the workers' 42 through).
# Send SIGTERM or SIGUSR1 to this script's PID (not its process group: a second signal skips the checkpoint).
set -euo pipefail

usage() {
  echo "usage: $0 NPROC CONFIG.yaml [--key value ...]" >&2
  exit 2
}
[[ $# -ge 2 ]] || usage
NPROC=$1
CONFIG=$2
shift 2
[[ $NPROC =~ ^[1-9][0-9]*$ ]] || usage
# The run config's own paths (data, DeepSpeed JSON, output_dir) are relative to the repository root, where
# train.py runs; only CONFIG itself may be given relative to the caller's directory.
if [[ -f $CONFIG ]]; then CONFIG="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")"; fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z ${PYTHON:-} ]]; then
  if [[ -n ${VIRTUAL_ENV:-} ]]; then PYTHON=python
  elif [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python
  else PYTHON=python3
  fi
fi

case ${LAUNCH_DEVICE:-auto} in
  gpu) GPU=1 ;;
  cpu) GPU=0 ;;
  auto)
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then GPU=1; else GPU=0; fi ;;
  *) echo "LAUNCH_DEVICE must be cpu, gpu or auto" >&2; exit 2 ;;
esac

# output_dir, DeepSpeed JSON and accelerate config, resolved by the same config loader train.py uses; a bad
# config fails here with train.py's message (exit 2).
OUTPUT_DIR="" DS_JSON="" ACC_CONFIG=""
info=$("$PYTHON" -m qa.plan launch-info "$NPROC" "$GPU" --config "$CONFIG" "$@")
while IFS='=' read -r key value; do
  case $key in
    output_dir) OUTPUT_DIR=$value ;;
    deepspeed) DS_JSON=$value ;;
    accelerate_config) ACC_CONFIG=$value ;;
  esac
done <<<"$info"

# torchrun's agent forwards these signals to the workers (the workers run in their own sessions, so nothing
# else reaches them) and waits this long for them to checkpoint before it kills them.
export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}

launch=("$PYTHON" -m accelerate.commands.launch --num_processes "$NPROC" --num_machines 1
        --main_process_port "${MAIN_PROCESS_PORT:-0}")
if [[ $GPU == 1 && -n $DS_JSON ]]; then
  launch+=(--config_file "$ACC_CONFIG" --deepspeed_config_file "$DS_JSON")
elif [[ $GPU == 1 ]]; then
  # deepspeed: null is plain DDP; an explicit --multi_gpu keeps a user's default accelerate config out.
  launch+=(--dynamo_backend no)
  if ((NPROC > 1)); then launch+=(--multi_gpu); fi
else
  # CPU: gloo collectives; DeepSpeed ZeRO runs on its CPU accelerator; fp16 is GPU-only, so fp32.
  export DS_ACCELERATOR=cpu
  launch+=(--mixed_precision no --dynamo_backend no)
  if [[ -n $DS_JSON ]]; then launch+=(--use_deepspeed --deepspeed_config_file "$DS_JSON")
  elif ((NPROC > 1)); then launch+=(--multi_gpu)
  fi
fi

# A marker left by an earlier, preempted attempt must not make this one look preempted.
rm -f "$OUTPUT_DIR/PREEMPTED"

"${launch[@]}" train.py --config "$CONFIG" "$@" &
child=$!
got_signal=0
# shellcheck disable=SC2329  # called from the traps below, which shellcheck does not follow
forward() {
  got_signal=1
  echo "launch/local.sh: SIG$1 -> forwarding to the launcher (pid $child); the run checkpoints and exits" >&2
  kill -s "$1" "$child" 2>/dev/null || true
}
trap 'forward TERM' TERM
trap 'forward USR1' USR1

# `wait` returns early when a trapped signal arrives; wait again until the launcher itself has exited.
rc=0
while :; do
  got_signal=0
  wait "$child" && rc=0 || rc=$?
  ((got_signal)) || break
done

if [[ -f "$OUTPUT_DIR/PREEMPTED" ]]; then
  echo "launch/local.sh: preempted at step $(cat "$OUTPUT_DIR/PREEMPTED"); rerun with" \
    "--resume_from_checkpoint auto (the squad_* configs set it)" >&2
  exit 42
fi
exit "$rc"

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
# QA_LAUNCH_ECHO=1 prints the launcher command instead of running it.
#
# The accelerate config is picked from configs/accelerate/ to match the run config's DeepSpeed JSON, and
# --deepspeed_config_file passes that JSON so the launcher and the run config always agree.
# Exit status: 2 for a config error found before launching; 42 when the run checkpointed after SIGTERM/SIGUSR1
# and left output_dir/PREEMPTED; 130 after Ctrl-C (checkpointed too); else the launcher's: 0, or 1 when a worker
# failed (torchrun's own status carries neither the workers' 42 nor their 2 through).
# Send SIGTERM or SIGUSR1 to this script's PID (not its process group: a second signal skips the checkpoint);
# Ctrl-C in the terminal signals the whole group, which is right for SIGINT (the script does not forward it).
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.bash
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"
qa_parse_args "$0" "$@"
shift 2

case ${LAUNCH_DEVICE:-auto} in
  gpu) GPU=1 ;;
  cpu) GPU=0 ;;
  auto)
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then GPU=1; else GPU=0; fi ;;
  *) echo "LAUNCH_DEVICE must be cpu, gpu or auto" >&2; exit 2 ;;
esac

qa_launch_info "$NPROC" "$GPU" --config "$CONFIG" "$@"

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

qa_run_and_requeue "launch/local.sh" "$OUTPUT_DIR" "${launch[@]}" train.py --config "$CONFIG" "$@"

# shellcheck shell=bash
# Shared by launch/local.sh, launch/torchrun.sh and launch/k8s/entrypoint.sh (sourced, not run): argument checks, the Python to use,
# and running the launcher in the background so SIGTERM/SIGUSR1 reach it and a preemption becomes exit 42.

# qa_parse_args NAME "$@": sets NPROC and CONFIG (absolute when it is a file: the script cd's to the repo root,
# where train.py and the run config's own relative paths live) and cds there.
qa_parse_args() {
  local name=$1
  shift
  if [[ $# -lt 2 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $name NPROC CONFIG.yaml [--key value ...]" >&2
    exit 2
  fi
  # shellcheck disable=SC2034  # read by the sourcing script
  NPROC=$1
  CONFIG=$2
  if [[ -f $CONFIG ]]; then CONFIG="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")"; fi
  cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
  if [[ -z ${PYTHON:-} ]]; then
    if [[ -n ${VIRTUAL_ENV:-} ]]; then PYTHON=python
    elif [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python
    else PYTHON=python3
    fi
  fi
  # DeepSpeed's JIT-built ops (CPU collectives, CPU Adam) are cached per environment, never in the ~/.cache
  # that every venv of the user shares (another torch there means a rebuild of minutes, or a stale op).
  if [[ -z ${TORCH_EXTENSIONS_DIR:-} ]]; then
    TORCH_EXTENSIONS_DIR="$("$PYTHON" -c 'import sys; print(sys.prefix)')/torch_extensions"
    export TORCH_EXTENSIONS_DIR
  fi
  # torchrun's agent forwards these signals to the workers (they run in sessions of their own, so nothing
  # else reaches them) and waits this long for them to checkpoint before it kills them.
  export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
  export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}
  export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
}

# qa_launch_info WORLD_SIZE GPU TRAIN_ARGS...: output_dir, DeepSpeed JSON, accelerate config and the exit codes,
# resolved by the config loader train.py uses (a bad config fails here with train.py's one line, exit 2). Sets
# OUTPUT_DIR, DS_JSON, ACC_CONFIG, QA_EXIT_PREEMPTED and QA_EXIT_INTERRUPTED.
# shellcheck disable=SC2034  # read by the sourcing script
qa_launch_info() {
  local info key value
  OUTPUT_DIR="" DS_JSON="" ACC_CONFIG=""
  info=$("$PYTHON" -m qa.preflight launch-info "$@")
  while IFS='=' read -r key value; do
    case $key in
      output_dir) OUTPUT_DIR=$value ;;
      deepspeed) DS_JSON=$value ;;
      accelerate_config) ACC_CONFIG=$value ;;
      exit_preempted) QA_EXIT_PREEMPTED=$value ;;
      exit_interrupted) QA_EXIT_INTERRUPTED=$value ;;
    esac
  done <<<"$info"
}

# qa_run_and_requeue NAME OUTPUT_DIR COMMAND...: runs COMMAND, forwards TERM/USR1 to it once each, and exits
# with its status, or 42 when the run left OUTPUT_DIR/PREEMPTED (torchrun does not carry the workers' 42), or
# 130 after Ctrl-C (the launcher itself exits 1: torchrun's agent re-raises the signal it handled), seen by the
# INT trap or by the run's OUTPUT_DIR/INTERRUPTED (a loaded machine once ended the script without the trap).
qa_run_and_requeue() {
  local name=$1 output_dir=$2
  shift 2
  if [[ -n ${QA_LAUNCH_ECHO:-} ]]; then  # show the launch instead of running it
    printf '%q ' "$@"
    echo
    exit 0
  fi
  rm -f "$output_dir/PREEMPTED" "$output_dir/INTERRUPTED"  # left by an earlier attempt
  "$@" &
  QA_CHILD=$!
  QA_GOT_SIGNAL=0
  QA_GOT_INT=0
  trap 'qa_forward TERM' TERM
  trap 'qa_forward USR1' USR1
  # Ctrl-C reaches the launcher from the terminal (same process group), which passes it to the workers once;
  # forwarding it again would be a second Ctrl-C (exit at once, no checkpoint). So only wait for the run.
  trap 'QA_GOT_SIGNAL=1; QA_GOT_INT=1' INT
  local rc=0
  while :; do  # `wait` returns early when a trapped signal arrives
    QA_GOT_SIGNAL=0
    wait "$QA_CHILD" && rc=0 || rc=$?
    ((QA_GOT_SIGNAL)) || break
  done
  if [[ -f "$output_dir/PREEMPTED" ]]; then
    echo "$name: preempted at step $(cat "$output_dir/PREEMPTED"); rerun with" \
      "--resume_from_checkpoint auto (the squad_* configs set it)" >&2
    exit "${QA_EXIT_PREEMPTED:?launch-info gives it}"
  fi
  if ((QA_GOT_INT)) || [[ -f "$output_dir/INTERRUPTED" ]]; then
    echo "$name: interrupted (launcher status $rc); rerun with --resume_from_checkpoint auto to continue" >&2
    exit "${QA_EXIT_INTERRUPTED:?launch-info gives it}"
  fi
  exit "$rc"
}

# shellcheck disable=SC2329  # called from the traps above, which shellcheck does not follow
qa_forward() {
  QA_GOT_SIGNAL=1
  echo "launch: SIG$1 -> forwarding to the launcher (pid $QA_CHILD); the run checkpoints and exits" >&2
  kill -s "$1" "$QA_CHILD" 2>/dev/null || true
}

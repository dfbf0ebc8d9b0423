#!/usr/bin/env bash
# One short GPU check, run in a single device call (see docs/throughput.md): fp16 training of a
# distilbert-base-sized QA model (random weights, built from its config: nothing loads from the Hub) under
# DeepSpeed ZeRO-2 and ZeRO-3 on one GPU with the demo data, then bench/train_throughput.py in fp16.
# Needs: wheels of what the GPU image lacks in .whl/ (deepspeed, datasets and their needs) and a tokenizer
# directory in .gpu/tokenizer (both git-ignored); logs go to $OUT (default /tmp/gpu_check). Prepared with:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 -d .whl \
#       datasets dill multiprocess hjson pydantic pydantic_core annotated-types typing-inspection fsspec pyarrow
#   cp <pip cache>/deepspeed-*-py3-none-any.whl .whl/   # deepspeed is an sdist: the wheel `make venv` built
#   cp <any BERT tokenizer: tokenizer.json, tokenizer_config.json, vocab.txt, special_tokens_map.json> .gpu/tokenizer/
# Measured on one H200 (2026-12-04): both ZeRO stages train in fp16 (loss scale 65536 -> 32768, 2 skipped
# steps), about 1.7 GiB peak, the exported model loads. bench/train_throughput.py wants warm-up steps on a GPU
# (--warmup 60): each new padded length is slow the first time.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, accelerate, deepspeed, datasets; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'accelerate', accelerate.__version__, 'deepspeed', deepspeed.__version__, 'datasets', \
datasets.__version__, torch.cuda.get_device_name())" || exit 1
python3 - <<'PY' || exit 1
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, DistilBertConfig

tok = AutoTokenizer.from_pretrained(".gpu/tokenizer")
model = AutoModelForQuestionAnswering.from_config(DistilBertConfig(vocab_size=tok.vocab_size))
model.save_pretrained("/tmp/gpu_model")
tok.save_pretrained("/tmp/gpu_model")
print("model:", sum(p.numel() for p in model.parameters()) / 1e6, "M parameters")
PY
for zero in zero2 zero3; do
  start=$(date +%s)
  timeout "${TRAIN_TIMEOUT:-150}" accelerate launch --config_file configs/accelerate/1gpu.yaml \
      --deepspeed_config_file "configs/deepspeed/$zero.json" train.py --config configs/demo_cpu.yaml \
      --deepspeed "configs/deepspeed/$zero.json" --model_name_or_path /tmp/gpu_model --mixed_precision fp16 \
      --report_to none --output_dir "/tmp/gpu_run_$zero" --eval_before_training false --checkpointing_steps null \
      --dataloader_num_workers 2 > "$OUT/train_$zero.log" 2>&1
  echo "== train $zero: rc=$? in $(( $(date +%s) - start ))s"
  grep -E "loss_scale|skipped|mfu|peak_mem|samples/s|exact_match|error|Error" "$OUT/train_$zero.log" | tail -8
  cp "/tmp/gpu_run_$zero/metrics.jsonl" "$OUT/metrics_$zero.jsonl" 2>/dev/null
  python3 -c "from transformers import AutoModelForQuestionAnswering as M; M.from_pretrained('/tmp/gpu_run_$zero/final'); \
print('exported model loads')" 2>&1 | tail -1
done
timeout "${BENCH_TIMEOUT:-120}" python3 bench/train_throughput.py --model distilbert --baseline --steps 200 --warmup 60 \
    > "$OUT/throughput.log" 2>&1
echo "== throughput: rc=$?"
tail -15 "$OUT/throughput.log"

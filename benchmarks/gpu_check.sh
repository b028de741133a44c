#!/usr/bin/env bash
# A GPU check ready to run: ranking training docs/s (base and Weight-COS-DPO, float32 and bf16) with the
# achieved FLOP/s against the device's matmul rate in the same run, and one SmolLM2 training step in bf16
# against TRL's DPOTrainer on the same device. Under 5 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh                     # on the GPU (cuda)
#   bash benchmarks/gpu_check.sh --device cpu --quick [--model FOLDER]
#
# --quick: a few steps of each, for a smoke test (the test suite runs it on CPU); --model: the LLM to
# step (default smollm2). Needs the bench extra (pip install -e ".[bench]") for TRL.
set -euo pipefail
PYTHON="${PYTHON:-python}"  # the interpreter with cosdpo installed (default: python on PATH)
cd "$(dirname "$0")"
device=cuda quick=() model=smollm2
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --quick) quick=(--quick); shift ;;
    --model) model="$2"; shift 2 ;;
    *) echo "usage: gpu_check.sh [--device cuda|cpu] [--quick] [--model NAME]" >&2; exit 2 ;;
  esac
done
if [ "$device" = cpu ]; then
  export CUDA_VISIBLE_DEVICES=""  # every trainer on the CPU, even on a machine with a GPU
elif ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible to torch (use --device cpu to run on the CPU)" >&2
  exit 2
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
for precision in fp32 bf16; do
  echo "== ranking training, $precision"
  "$PYTHON" throughput.py --device "$device" --precision "$precision" "${quick[@]}"
done
echo "== SmolLM2 training step, bf16: ours against TRL's DPOTrainer"
"$PYTHON" trl_step.py --device "$device" --precision bf16 --model "$model" "${quick[@]}"

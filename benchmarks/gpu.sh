#!/usr/bin/env bash
# The GPU checks and benchmarks in one go, one log each under $1 (default benchmarks/gpu-logs): where the
# README's GPU numbers come from. $2: a trained default-experiment model (run dir or model.pt) for the AutoAttack
# comparison, skipped without it. Each part has its own time limit, so a slow part leaves the others' numbers.
set -u
out=${1:-benchmarks/gpu-logs}; model=${2:-}
mkdir -p "$out"
{ nvidia-smi -L; python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
  timeout 60 python -m pytest -q -p no:cacheprovider tests/test_training_speed.py -k "device or cuda"; } \
  > "$out/device.log" 2>&1
# end to end on CUDA: bf16 training, evaluation with eval.batch_size=auto, compiled by default (graphs built first)
timeout 240 python -m advbench epochs=1 amp=bf16 eval.n_examples=2000 progress=false \
  hydra.run.dir=/tmp/advbench-gpu-run > "$out/e2e.log" 2>&1
cat /tmp/advbench-gpu-run/results.json >> "$out/e2e.log" 2>/dev/null
timeout 80 python benchmarks/attack_speed.py --amp bf16 --compile > "$out/attack_speed.log" 2>&1
timeout 90 python benchmarks/train_throughput.py --epochs 1 --compile false > "$out/train_throughput.log" 2>&1
# compile's default on CUDA: advbench compiled beside the hand-written loop eager and compiled (graphs built first)
timeout 300 python benchmarks/train_throughput.py --epochs 1 --recipes fast \
  > "$out/train_throughput_compiled.log" 2>&1
if [ -n "$model" ]; then
  timeout 150 python benchmarks/autoattack_speed.py "$model" --preset autoattack_fast --batch-sizes 500,auto \
    --no-reference > "$out/autoattack_batch.log" 2>&1
  # all 10,000 test images, beside the reference: advbench compiled (the CUDA default), then eager
  timeout 300 python benchmarks/autoattack_speed.py "$model" --batch-sizes auto > "$out/autoattack.log" 2>&1
  timeout 120 python benchmarks/autoattack_speed.py "$model" --batch-sizes auto --compile false --no-reference \
    > "$out/autoattack_eager.log" 2>&1
  # FAB-T's projection: the sort (CUDA's solver) against Newton's method (the CPU's), side by side
  timeout 60 python benchmarks/fab_projection.py "$model" --device cuda --n-examples 1000 --repeats 2 \
    > "$out/fab_projection.log" 2>&1
fi

#!/usr/bin/env bash
# Runs on a lent GPU machine, from the repository root, with benchmarks/gpu_kit.sh's .gpu-kit and data carried:
# benchmarks/gpu.sh on the kit's trained run, advbench and the kit's packages on PYTHONPATH (nothing installed),
# its logs packed into $OUT (a call brings back 8 files at most).
#   benchmarks/gpu_device.sh [seconds for gpu.sh, default 540]
set -u
export PYTHONPATH="$PWD:$PWD/.gpu-kit/site${PYTHONPATH:+:$PYTHONPATH}"
bash benchmarks/gpu.sh /tmp/gpu-logs .gpu-kit/default "${1:-540}"
tar czf "${OUT:-.}/gpu-logs.tgz" -C /tmp gpu-logs && cp /tmp/gpu-logs/parts.log "${OUT:-.}/"

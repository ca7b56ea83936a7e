#!/usr/bin/env bash
# Every GPU check and benchmark, most wanted first, within one time budget: where the docs' GPU numbers come from.
#
#   benchmarks/gpu.sh [log dir] [trained default-experiment run or model.pt] [seconds]
#
# One log per part under the log dir (default benchmarks/gpu-logs), and parts.log: each part's exit status and
# seconds, or why it was skipped. A lent GPU comes with minutes, not hours, so a part gets at most its own limit
# and what is left of the budget (default 540 s), and one that would start with under 30 s left is skipped:
# a slow part costs the parts after it, never the logs before it. GPU_PARTS="autoattack text_speed" runs only
# those (the names below). Without the run, the AutoAttack parts are skipped; the Hugging Face ones need the nlp
# extra. PYTHON names the interpreter (default python3). On a lent machine, benchmarks/gpu_device.sh runs this
# with benchmarks/gpu_kit.sh's packages.
set -u
out=${1:-benchmarks/gpu-logs}; model=${2:-}; budget=${3:-540}
py=${PYTHON:-python3}
end=$((SECONDS + budget))
mkdir -p "$out"
: > "$out/parts.log"

wanted() { [ -z "${GPU_PARTS:-}" ] || [[ " $GPU_PARTS " == *" $1 "* ]]; }

part() {  # part NAME LIMIT COMMAND...: the command, logged to NAME.log, within LIMIT and the budget's rest
  local name=$1 left=$((end - SECONDS)) start=$SECONDS status
  local limit=$(($2 < left ? $2 : left))
  shift 2
  wanted "$name" || return 0
  if [ "$left" -lt 30 ]; then echo "$name: skipped, ${left} s of the budget left" >> "$out/parts.log"; return; fi
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  status=$?
  echo "$name: exit $status after $((SECONDS - start)) s (limit $limit s)" >> "$out/parts.log"
}

with_model() {  # the part only where a trained run was given
  if [ -n "$model" ]; then part "$@"
  elif wanted "$1"; then echo "$1: skipped, no trained run given" >> "$out/parts.log"; fi
}

part device 60 bash -c "nvidia-smi -L; $py -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())';
  $py -m pytest -q -p no:cacheprovider tests/test_training_speed.py -k 'device or cuda'"
# issue 25's aims first: AutoAttack on all 10,000 test images beside the reference (advbench compiled, the CUDA
# default), the compiled Fast-AT epoch beside hand-written loops, and the text step in five runs
with_model autoattack 200 "$py" benchmarks/autoattack_speed.py "$model" --batch-sizes auto
part train_throughput_compiled 200 "$py" benchmarks/train_throughput.py --epochs 1 --recipes fast
part text_speed 120 "$py" benchmarks/text_speed.py --runs 5 --fgm-only
# FAB-T's projection: the sort (CUDA's solver) against Newton's method (the CPU's), side by side
with_model fab_projection 60 "$py" benchmarks/fab_projection.py "$model" --device cuda --n-examples 1000 --repeats 2
with_model autoattack_eager 120 "$py" benchmarks/autoattack_speed.py "$model" --batch-sizes auto --compile false \
  --no-reference
# end to end: bf16 training, evaluation with eval.batch_size=auto, compiled by default (graphs built first)
part e2e 240 bash -c "$py -m advbench epochs=1 amp=bf16 eval.n_examples=2000 progress=false \
  hydra.run.dir=/tmp/advbench-gpu-run && cat /tmp/advbench-gpu-run/results.json"
part attack_speed 80 "$py" benchmarks/attack_speed.py --amp bf16 --compile
part train_throughput 90 "$py" benchmarks/train_throughput.py --epochs 1 --compile false
with_model autoattack_batch 150 "$py" benchmarks/autoattack_speed.py "$model" --preset autoattack_fast \
  --batch-sizes 500,auto --no-reference
# the Hugging Face checks: tests/test_hf.py with its CUDA autocast cases, then a tiny offline BERT trained from the
# command line under bf16 and fp16 (FreeLB-3, and the FGM recipe on the embedding matrix)
part hf_tests 150 "$py" -m pytest -q -p no:cacheprovider -rs tests/test_hf.py
part hf_cli 300 bash -c "$py -m advbench.tasks.text.tiny_bert /tmp/tiny_bert --dataset synthetic_text || exit 1
  for amp in bf16 fp16; do
    for recipe in 'freelb attack=pgd attack.target=embedding attack.norm=l2 attack.steps=3' \
                  'mixed attack=fgm attack.target=embedding_weights'; do
      echo \"== amp=\$amp training=\$recipe\"
      $py -m advbench dataset=synthetic_text model=hf model.name_or_path=/tmp/tiny_bert training=\$recipe \
        eps=0.5 epochs=3 lr=2e-3 amp=\$amp progress=false hydra.run.dir=/tmp/hf-\$amp-\${recipe%% *} 2>&1 |
        grep -E 'epoch 3|clean_acc .* on|Error|error'
    done
  done"
cat "$out/parts.log"

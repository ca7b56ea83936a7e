#!/usr/bin/env bash
# The Hugging Face text checks on a GPU, one log each under $1 (default benchmarks/gpu-logs): tests/test_hf.py
# (with its CUDA autocast cases), CLI runs of a tiny offline BERT under bf16 and fp16 (FreeLB-3, and the FGM
# recipe on the embedding matrix), and benchmarks/text_speed.py. Needs transformers and tokenizers (advbench[nlp]).
set -u
out=${1:-benchmarks/gpu-logs}
mkdir -p "$out"
{ nvidia-smi -L; timeout 150 python -m pytest -q -p no:cacheprovider -rs tests/test_hf.py; } > "$out/hf_tests.log" 2>&1
python -m advbench.models.tiny_bert /tmp/tiny_bert --dataset synthetic_text > "$out/hf_cli.log" 2>&1
for amp in bf16 fp16; do
  for recipe in "freelb attack=pgd attack.target=embedding attack.norm=l2 attack.steps=3" \
                "mixed attack=fgm attack.target=embedding_weights"; do
    echo "== amp=$amp training=$recipe"
    # shellcheck disable=SC2086  # the recipe is several overrides
    timeout 120 python -m advbench dataset=synthetic_text model=hf model.name_or_path=/tmp/tiny_bert \
      training=$recipe eps=0.5 epochs=3 lr=2e-3 amp=$amp progress=false hydra.run.dir="/tmp/hf-$amp-${recipe%% *}" 2>&1 |
      grep -E "epoch 3|clean_acc .* on|Error|error"
  done
done >> "$out/hf_cli.log" 2>&1
timeout 150 python benchmarks/text_speed.py > "$out/text_speed.log" 2>&1

#!/usr/bin/env bash
# Packs, here, what a lent GPU machine lacks for benchmarks/gpu.sh: its image has PyTorch, transformers, pytest and
# the scientific stack, but not Hydra, pyautoattack, torchattacks or faster-coco-eval, no Fashion-MNIST, and no
# network. Writes .gpu-kit/site (those packages for the image's Python, to put on PYTHONPATH; the reference's
# 44 MB example model left out, to stay within what a call carries), .gpu-kit/default (a trained run's model and
# config) and data/fashion-mnist (the IDX files), all git-ignored. Then, with the device tool:
#   run  command="bash benchmarks/gpu_device.sh"  carry=[".gpu-kit", "data"]  timeout_s=600
#
#   benchmarks/gpu_kit.sh <trained default-experiment run dir> [the image's Python version, default 3.12]
set -euo pipefail
run=${1:?usage: benchmarks/gpu_kit.sh <trained default-experiment run dir> [python version]}
version=${2:-3.12}
kit=.gpu-kit
pip=${PIP:-.venv/bin/pip}
fmnist=/usr/share/datasets/fashion-mnist
rm -rf "$kit" && mkdir -p "$kit/site" "$kit/default" "$kit/wheels" data/fashion-mnist
# antlr4-python3-runtime (Hydra's parser) is a source release only: built here, where setuptools is at hand
"$pip" wheel -q --no-deps -w "$kit/wheels" 'antlr4-python3-runtime==4.9.3'
"$pip" install -q --target "$kit/site" --no-deps --python-version "$version" --only-binary=:all: \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --find-links "$kit/wheels" \
  'antlr4-python3-runtime==4.9.3' 'hydra-core>=1.3,<1.4' 'omegaconf>=2.3,<2.4' hydra-joblib-launcher \
  hydra-submitit-launcher submitit 'faster-coco-eval>=1.6' pyautoattack torchattacks
rm -rf "$kit/wheels" "$kit/site/bin" "$kit/site/pyautoattack/examples"
cp "$run/model.pt" "$run/config_resolved.yaml" "$kit/default/"
cp "$fmnist"/*.gz data/fashion-mnist/
du -sh "$kit" data/fashion-mnist

#!/usr/bin/env bash
# Quick start on a fresh machine, no downloads beyond the package registries:
# install, generate the synthetic RGB-D dataset, train DFormer-Tiny on the CPU (or a GPU),
# evaluate it (per-class table + mIoU) and write visualisations to output/infer.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
start=$(date +%s)

bash install.sh
bash train.sh "$@"
bash eval.sh
bash infer.sh --max-images 8
echo "[quickstart] done in $(( $(date +%s) - start )) s; visualisations in output/infer/panel/"

#!/usr/bin/env bash
# Quick start on a fresh machine, no downloads beyond the package registries:
# install, generate the synthetic RGB-D dataset, train DFormer-Tiny on the CPU (or a GPU),
# evaluate it (per-class table + mIoU) and write visualisations to output/infer.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
start=$(date +%s)
times=()
phase() {  # phase NAME COMMAND...: run it and remember how long it took
  local name=$1 t0
  shift
  t0=$(date +%s)
  "$@"
  times+=("$name $(( $(date +%s) - t0 )) s")
}

phase install bash install.sh
phase train bash train.sh "$@"
phase eval bash eval.sh
phase infer bash infer.sh --max-images 8
echo "[quickstart] done in $(( $(date +%s) - start )) s ($(IFS=,; echo "${times[*]}" | sed 's/,/, /g')); visualisations in output/infer/panel/"

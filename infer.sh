#!/usr/bin/env bash
# Segment images and write class maps, colour maps, overlays and panels.
#
# Default: the synthetic quick-start model on its test split, outputs in output/infer:
#   bash infer.sh
# Your own images (matched by file stem), or one pair:
#   CONFIG=local_configs.NYUDepthv2.DFormer_Large CHECKPOINT=checkpoints/trained/NYUv2_DFormer_Large.pth \
#     bash infer.sh --rgb-dir my/RGB --depth-dir my/Depth --out output/mine
#   bash infer.sh --rgb a.jpg --depth a.png --mst --opacity 0.6
# Environment: CONFIG, CHECKPOINT, OUT, PYTHON. Other arguments go to utils/infer.py
# (see `python utils/infer.py --help`); without an input option, --split test is used.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

CONFIG=${CONFIG:-local_configs.SynthRGBD.DFormer_Tiny}
OUT=${OUT:-output/infer}
source utils/common.sh
CHECKPOINT=${CHECKPOINT:-$(dformer_default_checkpoint "$CONFIG")}
dformer_require_checkpoint "$CHECKPOINT" infer.sh "$CONFIG"

input=(--split test)
for arg in "$@"; do
  case "$arg" in --rgb|--rgb=*|--rgb-dir|--rgb-dir=*|--split|--split=*) input=() ;; esac
done
exec "$PY" utils/infer.py --config "$CONFIG" --checkpoint "$CHECKPOINT" --out "$OUT" "${input[@]}" "$@"

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
VENV=${DFORMER_VENV:-.venv}
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$VENV/bin/python" ]; then PY="$VENV/bin/python"
else PY=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -z "${CHECKPOINT:-}" ]; then
  run_dir="checkpoints/$("$PY" -c "from local_configs import load_config; c = load_config('$CONFIG'); print(c.dataset_name + '_' + c.backbone)")"
  CHECKPOINT="$run_dir/best.pkl"
  if [ ! -f "$CHECKPOINT" ]; then
    newest=$(ls -t "$run_dir"/*/best.pkl 2>/dev/null | head -n 1 || true)
    [ -n "$newest" ] && CHECKPOINT=$newest
  fi
fi
if [ ! -f "$CHECKPOINT" ]; then
  echo "[infer.sh] checkpoint not found: $CHECKPOINT" >&2
  echo "[infer.sh] train one first (python utils/train.py --config $CONFIG) or set CHECKPOINT=path" >&2
  exit 1
fi

input=(--split test)
for arg in "$@"; do
  case "$arg" in --rgb|--rgb=*|--rgb-dir|--rgb-dir=*|--split|--split=*) input=() ;; esac
done
exec "$PY" utils/infer.py --config "$CONFIG" --checkpoint "$CHECKPOINT" --out "$OUT" "${input[@]}" "$@"

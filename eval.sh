#!/usr/bin/env bash
# Evaluate a trained model (mIoU, per-class IoU/accuracy table).
#
# Default: the synthetic quick-start model on this machine, single scale:
#   bash eval.sh
# Real datasets (the authors' protocol is --mst --sliding, plus --pad-sunrgbd for SUN + DFormerv2):
#   CONFIG=local_configs.NYUDepthv2.DFormer_Large \
#   CHECKPOINT=checkpoints/trained/NYUv2_DFormer_Large.pth GPUS=2 bash eval.sh --mst --sliding
# Environment: CONFIG, CHECKPOINT, GPUS (>1 runs `mpirun -np $GPUS`), PYTHON, MPIRUN_ARGS.
# Every other argument goes to utils/eval.py (see `python utils/eval.py --help`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

CONFIG=${CONFIG:-local_configs.SynthRGBD.DFormer_Tiny}
GPUS=${GPUS:-1}
VENV=${DFORMER_VENV:-.venv}
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$VENV/bin/python" ]; then PY="$VENV/bin/python"
else PY=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -z "${CHECKPOINT:-}" ]; then
  # The quick-start run: <log_dir>/best.pkl, else the newest <log_dir>/<timestamp>/best.pkl.
  run_dir="checkpoints/$("$PY" -c "from local_configs import load_config; c = load_config('$CONFIG'); print(c.dataset_name + '_' + c.backbone)")"
  CHECKPOINT="$run_dir/best.pkl"
  if [ ! -f "$CHECKPOINT" ]; then
    newest=$(ls -t "$run_dir"/*/best.pkl 2>/dev/null | head -n 1 || true)
    [ -n "$newest" ] && CHECKPOINT=$newest
  fi
fi
if [ ! -f "$CHECKPOINT" ]; then
  echo "[eval.sh] checkpoint not found: $CHECKPOINT" >&2
  echo "[eval.sh] train one first (python utils/train.py --config $CONFIG) or set CHECKPOINT=path" >&2
  exit 1
fi

cmd=("$PY" utils/eval.py --config "$CONFIG" --checkpoint "$CHECKPOINT" "$@")
if [ "$GPUS" -gt 1 ]; then
  extra=${MPIRUN_ARGS:-}
  [ "$(id -u)" = 0 ] && extra="--allow-run-as-root $extra"
  # shellcheck disable=SC2086
  exec mpirun -np "$GPUS" $extra "${cmd[@]}"
fi
exec "${cmd[@]}"

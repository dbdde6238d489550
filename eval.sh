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
source utils/common.sh
CHECKPOINT=${CHECKPOINT:-$(dformer_default_checkpoint "$CONFIG")}
dformer_require_checkpoint "$CHECKPOINT" eval.sh "$CONFIG"

cmd=("$PY" utils/eval.py --config "$CONFIG" --checkpoint "$CHECKPOINT" "$@")
if [ "$GPUS" -gt 1 ]; then
  extra=${MPIRUN_ARGS:-}
  [ "$(id -u)" = 0 ] && extra="--allow-run-as-root $extra"
  # shellcheck disable=SC2086
  exec mpirun -np "$GPUS" $extra "${cmd[@]}"
fi
exec "${cmd[@]}"

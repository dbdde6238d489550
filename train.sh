#!/usr/bin/env bash
# Train a DFormer / DFormerv2 segmentor (utils/train.py).
#
#   bash train.sh                               # DFormer-Tiny on SynthRGBD, CPU or one GPU
#   bash train.sh --resume                      # continue that run from its latest.pkl
#   CONFIG=local_configs.NYUDepthv2.DFormerv2_S GPUS=2 bash train.sh --mst
#
# Environment:
#   CONFIG    config module      (default local_configs.SynthRGBD.DFormer_Tiny)
#   GPUS      processes/GPUs     (default 1; >1 launches `mpirun -np GPUS`, global batch
#                                 C.batch_size split across them)
#   WORK_DIR  run folder         (default C.log_dir itself for the default config,
#                                 else <C.log_dir>/<timestamp> chosen by train.py)
#   PYTHON    interpreter        (default .venv/bin/python if present, else python3)
#   MPIRUN    MPI launcher and its options (default mpirun; with Open MPI plus
#             --mca odls_base_sigkill_timeout 10, so Ctrl-C stops and saves)
# Extra arguments go to utils/train.py (see `python utils/train.py --help`); later flags win,
# so e.g. `--mst` re-enables the multi-scale validation that the CPU default turns off.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

DEFAULT_CONFIG=local_configs.SynthRGBD.DFormer_Tiny
CONFIG=${CONFIG:-$DEFAULT_CONFIG}
GPUS=${GPUS:-1}
source utils/common.sh

ARGS=(--config "$CONFIG" --gpus "$GPUS")
if [ "$CONFIG" = "$DEFAULT_CONFIG" ]; then
    # The quick start: a fixed run folder (so --resume finds it) and single-scale validation
    # (5 scales + flip would multiply the CPU validation time by ten).
    ARGS+=(--work-dir "${WORK_DIR:-$(dformer_log_dir "$CONFIG")}" --no-mst)
elif [ -n "${WORK_DIR:-}" ]; then
    ARGS+=(--work-dir "$WORK_DIR")
fi

if [ "$GPUS" -gt 1 ]; then
    read -r -a LAUNCH <<< "${MPIRUN:-mpirun}"
    if [ -z "${MPIRUN:-}" ] && mpirun --version 2>/dev/null | grep -q "Open MPI"; then
        # Ctrl-C: Open MPI sends SIGTERM to every rank and SIGKILL 1 s later, too soon for
        # rank 0 to finish its step and save; give it 10 s.
        LAUNCH+=(--mca odls_base_sigkill_timeout 10)
    fi
    LAUNCH+=(-np "$GPUS")
    if [ "$(id -u)" = 0 ]; then
        LAUNCH+=(--allow-run-as-root)
    fi
    exec "${LAUNCH[@]}" -x PYTHONPATH "$PY" utils/train.py "${ARGS[@]}" "$@"
fi
exec "$PY" utils/train.py "${ARGS[@]}" "$@"

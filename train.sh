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
#             --mca odls_base_sigkill_timeout 10). Ctrl-C stops every rank after its
#             step and saves (through SIGUSR1, which mpirun forwards); twice aborts.
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
        # mpirun's own answer to a signal (the second Ctrl-C below, or `kill` of mpirun):
        # SIGTERM to every rank after 10 s instead of 1 s, SIGKILL 10 s after that
        LAUNCH+=(--mca odls_base_sigkill_timeout 10)
    fi
    LAUNCH+=(-np "$GPUS")
    if [ "$(id -u)" = 0 ]; then
        LAUNCH+=(--allow-run-as-root)
    fi
    # Ctrl-C: every rank stops after its current step and rank 0 saves, as in one process.
    # mpirun forwards SIGUSR1 to the ranks at once (they take it as a stop request), but it
    # answers SIGINT by killing them late and hard; so it runs in its own process group,
    # where the terminal's Ctrl-C does not reach it, and this script turns Ctrl-C into SIGUSR1.
    MPIRUN_PID= STOPS=0
    stop_ranks() {
        STOPS=$((STOPS + 1))
        if [ -z "$MPIRUN_PID" ]; then
            exit 130
        elif [ "$STOPS" = 1 ]; then
            echo "train.sh: every rank stops after its current step and saves (Ctrl-C again: abort without saving)" >&2
            kill -USR1 "$MPIRUN_PID" 2>/dev/null || true
        elif [ "$STOPS" = 2 ] && command -v pkill >/dev/null; then
            pkill -INT -P "$MPIRUN_PID" || true   # a second SIGINT: KeyboardInterrupt in each rank
        else
            kill -INT "$MPIRUN_PID" 2>/dev/null || true   # mpirun's own kill: SIGKILL within 20 s
        fi
    }
    trap stop_ranks INT TERM HUP
    set -m
    "${LAUNCH[@]}" -x PYTHONPATH "$PY" utils/train.py "${ARGS[@]}" "$@" < /dev/null &
    MPIRUN_PID=$!
    set +m
    while :; do
        status=0
        wait "$MPIRUN_PID" || status=$?
        # a trapped signal interrupts `wait` (status > 128) while mpirun still runs
        kill -0 "$MPIRUN_PID" 2>/dev/null || exit "$status"
    done
fi
exec "$PY" utils/train.py "${ARGS[@]}" "$@"

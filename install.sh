#!/usr/bin/env bash
# Installs everything DFormer-Jittor needs, idempotently:
#   * oneDNN (Debian/Ubuntu libdnnl-dev) for fast CPU convolutions, when apt is usable;
#   * a Python virtual environment in .venv (override with DFORMER_VENV=path, or
#     DFORMER_VENV=none to install into the current interpreter) with requirements.txt;
#   * Jittor's one-time core compilation (a few minutes on 2 cores, cached in ~/.cache/jittor).
# Usage: bash install.sh        (then: source .venv/bin/activate)
#        bash install.sh --cuda [--wheels DIR]
#   --cuda: also check that Jittor can use the installed CUDA toolkit (utils/cuda_toolkit.py;
#           cuBLAS/cuRAND may come from PyTorch's nvidia-* wheels) and compile its CUDA core;
#           exits with one line naming what is missing, never downloads CUDA.
#   --wheels DIR: install the Python requirements from DIR only (pip --no-index), for
#           machines without network (README, section GPU).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

log() { echo "[install] $*"; }

CUDA=0
WHEELS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) CUDA=1 ;;
    --wheels) WHEELS=${2:?--wheels needs a folder}; shift ;;
    *) echo "[install] unknown option $1 (use --cuda, --wheels DIR)" >&2; exit 2 ;;
  esac
  shift
done

if ! ldconfig -p 2>/dev/null | grep libdnnl.so >/dev/null; then  # no -q: it would SIGPIPE ldconfig under pipefail
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing oneDNN (libdnnl-dev) with apt-get"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libdnnl-dev >/dev/null) \
      || log "WARNING: apt-get could not install libdnnl-dev; CPU convolutions will be slow"
  else
    log "WARNING: oneDNN (libdnnl-dev) is not installed and apt-get is not usable as root;"
    log "         Jittor will run on the CPU without it (very slow convolutions)."
  fi
fi

PY=${PYTHON:-python3}
VENV=${DFORMER_VENV:-.venv}
if [ "$VENV" != "none" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
  fi
  PY="$VENV/bin/python"
fi

stamp="$VENV/.requirements.sha"
want=$(sha1sum requirements.txt | cut -d' ' -f1)
if [ "$VENV" = "none" ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing Python requirements"
  if [ -n "$WHEELS" ]; then
    "$PY" -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS" \
      -r requirements.txt
  else
    "$PY" -m pip install -q --disable-pip-version-check -r requirements.txt
  fi
  [ "$VENV" != "none" ] && echo "$want" > "$stamp"
fi

if [ "$CUDA" = 1 ]; then
  "$PY" -c "from utils import runtime; runtime.require_cuda()" || exit 1
fi
log "checking Jittor (the first run compiles its core: a few minutes)"
t0=$(date +%s)
DFORMER_PARALLEL_COMPILE=1 "$PY" -c "from utils import runtime; runtime.setup(); import jittor; print('[install]', runtime.describe())"
if [ "$CUDA" = 1 ]; then
  "$PY" -c "from utils import runtime; runtime.setup(); import jittor as jt; runtime.init_device(True); print('[install] CUDA ready:', (jt.ones(4) * 2).sum().item() == 8.0)"
fi
log "Jittor ready in $(( $(date +%s) - t0 )) s"

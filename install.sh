#!/usr/bin/env bash
# Installs everything DFormer-Jittor needs, idempotently:
#   * oneDNN (Debian/Ubuntu libdnnl-dev) for fast CPU convolutions, when apt is usable;
#   * a Python virtual environment in .venv (override with DFORMER_VENV=path, or
#     DFORMER_VENV=none to install into the current interpreter) with requirements.txt;
#   * Jittor's one-time core compilation (a few minutes on 2 cores, cached in ~/.cache/jittor).
# Usage: bash install.sh        (then: source .venv/bin/activate)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

log() { echo "[install] $*"; }

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
  "$PY" -m pip install -q --disable-pip-version-check -r requirements.txt
  [ "$VENV" != "none" ] && echo "$want" > "$stamp"
fi

log "checking Jittor (the first run compiles its core: a few minutes)"
t0=$(date +%s)
DFORMER_PARALLEL_COMPILE=1 "$PY" -c "from utils import runtime; runtime.setup(); import jittor; print('[install]', runtime.describe())"
log "Jittor ready in $(( $(date +%s) - t0 )) s"

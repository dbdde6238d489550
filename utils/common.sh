# Shell helpers shared by train.sh, eval.sh, infer.sh and run_tests.sh (sourced, not run).

# The interpreter: $PYTHON, else the project's virtual environment, else python3.
dformer_python() {
  local venv=${DFORMER_VENV:-.venv}
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
  elif [ "$venv" != none ] && [ -x "$venv/bin/python" ]; then echo "$venv/bin/python"
  else echo python3; fi
}

# The config's log folder (C.log_dir) of config module $1.
dformer_log_dir() {
  "$PY" -c 'import sys
from utils.config import load_config
from utils.errors import run_cli
run_cli(lambda argv: print(load_config(argv[0]).log_dir), sys.argv[1:])' "$1"
}

# The checkpoint a run of config $1 left: <log_dir>/best.pkl (the quick start's fixed
# folder), else the newest <log_dir>/<timestamp>/best.pkl. An unknown config prints one
# `error:` line (utils/errors.py) and ends the calling script with status 2.
dformer_default_checkpoint() {
  local run_dir newest
  run_dir=$(dformer_log_dir "$1") || exit 2
  if [ -f "$run_dir/best.pkl" ]; then echo "$run_dir/best.pkl"; return; fi
  newest=$(ls -t "$run_dir"/*/best.pkl 2>/dev/null | head -n 1 || true)
  echo "${newest:-$run_dir/best.pkl}"
}

# Fail with one `error:` line when the checkpoint $1 is missing ($2: script name, $3: config).
dformer_require_checkpoint() {
  if [ ! -f "$1" ]; then
    echo "error: checkpoint not found: $1; train one first (bash train.sh, or python utils/train.py --config $3) or set CHECKPOINT=path" >&2
    exit 2
  fi
}

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=$(dformer_python)

#!/usr/bin/env bash
# Installs what is needed (install.sh) and runs the test suite.
# Extra arguments go to pytest, e.g. `bash run_tests.sh -m slow` or `bash run_tests.sh -k parity`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash install.sh
source utils/common.sh
exec "$PY" -m pytest -ra "$@" tests

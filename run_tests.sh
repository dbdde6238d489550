#!/usr/bin/env bash
# Installs what is needed (install.sh, and OpenMPI for the multi-process tests) and runs the
# test suite.
# Extra arguments go to pytest, e.g. `bash run_tests.sh -m slow` or `bash run_tests.sh -k parity`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# tests/test_mpi.py runs `mpirun -np 2`; Jittor builds its MPI ops when it finds mpicc, so
# OpenMPI goes in before install.sh compiles Jittor's core. Without it those tests skip.
if ! command -v mpirun >/dev/null 2>&1 || ! command -v mpicc >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[run_tests] installing OpenMPI (openmpi-bin libopenmpi-dev) with apt-get"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin \
      libopenmpi-dev >/dev/null) \
      || echo "[run_tests] WARNING: apt-get could not install OpenMPI; the MPI tests will skip"
  else
    echo "[run_tests] WARNING: OpenMPI is not installed and apt-get is not usable as root;"
    echo "            the MPI tests (tests/test_mpi.py) will skip."
  fi
fi

bash install.sh
source utils/common.sh
exec "$PY" -m pytest -ra "$@" tests

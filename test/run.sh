#!/usr/bin/env bash
# Run the test suite with the environment made by tools/install.sh:
#   bash test/run.sh [pytest args]
set -euo pipefail
root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "${root}/tools/venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  . "${root}/tools/venv/bin/activate"
fi
cd "${root}"
exec python -m pytest -q -ra test "$@"

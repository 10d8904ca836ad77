#!/usr/bin/env bash
# Run the test suite with the environment made by tools/install.sh:
#   bash test/run.sh [pytest args]
# Test files run in parallel, one process per core (pytest-xdist; each file stays in one process,
# the longest first: test/conftest.py); UPMP_TEST_WORKERS=1 runs them in this process, in order.
# The lint (ruff check, rules in ruff.toml) runs first: a change that does not pass it fails the run.
set -euo pipefail
root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "${root}/tools/venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  . "${root}/tools/venv/bin/activate"
fi
cd "${root}"
python -m ruff check --quiet . || { echo "test/run.sh: ruff check found the problems above (rules: ruff.toml)" >&2; exit 1; }
workers=${UPMP_TEST_WORKERS:-$(nproc)}
if [ "${workers}" -gt 1 ]; then
  exec python -m pytest -q -ra -n "${workers}" --dist loadfile --no-loadscope-reorder test "$@"
fi
exec python -m pytest -q -ra test "$@"

# Sourced by run.sh / sv.sh: puts the toolkit and utils/ on the paths.
UPMP_ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../.." && pwd)
export UPMP_ROOT
# The venv made by tools/install.sh, unless the user already runs in a venv of their own.
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "${UPMP_ROOT}/tools/venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  . "${UPMP_ROOT}/tools/venv/bin/activate"
fi
export PATH="${PWD}/utils:${PATH}"
export PYTHONPATH="${UPMP_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
export LC_ALL=C
export PYTHONUNBUFFERED=1

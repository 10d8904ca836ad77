#!/usr/bin/env bash
# Install upmp and everything it needs; idempotent (a second run does nothing and says so).
#   bash tools/install.sh            # Debian packages + Python stack in tools/venv (or the active venv)
#   bash tools/install.sh --no-apt   # skip Debian packages (install sox espeak-ng flite ffmpeg yourself)
#   bash tools/install.sh --slurm    # only the Debian packages of a one-node Slurm (test/recipes/test_slurm.py)
# Python pins: tools/requirements.txt. Debian packages: DEB_PACKAGES below.
set -euo pipefail

DEB_PACKAGES="sox libsox-fmt-all espeak-ng flite ffmpeg"
SLURM_PACKAGES="slurmctld slurmd munge slurm-client"
root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
use_apt=true
slurm_only=false
for arg in "$@"; do
  case "${arg}" in
    --no-apt) use_apt=false ;;
    --slurm) slurm_only=true ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "$0: unknown option ${arg}" 1>&2; exit 1 ;;
  esac
done

log() { echo "[install] $*" 1>&2; }

install_debs() {  # <packages...>: those not installed yet, with apt-get
  local missing="" p sudo=""
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "${p}" 2>/dev/null | grep -q "install ok installed" || missing="${missing} ${p}"
  done
  if [ -z "${missing}" ]; then
    log "Debian packages already installed: $*"
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo > /dev/null || { log "need root (or sudo) to install:${missing}"; exit 1; }
    sudo=sudo
  fi
  log "installing Debian packages:${missing}"
  # a fresh image has no package lists; an install that fails on stale lists is retried after an update
  # shellcheck disable=SC2086
  if ! compgen -G "/var/lib/apt/lists/*_Packages*" > /dev/null || \
     ! DEBIAN_FRONTEND=noninteractive ${sudo} apt-get install -y -qq --no-install-recommends ${missing} > /dev/null; then
    ${sudo} apt-get update -qq
    DEBIAN_FRONTEND=noninteractive ${sudo} apt-get install -y -qq --no-install-recommends ${missing} > /dev/null
  fi
}

if "${slurm_only}"; then
  # Debian's packages start nothing where services cannot run (containers); the test starts its own daemons
  install_debs ${SLURM_PACKAGES}
  exit 0
fi

# 1. Debian packages
if "${use_apt}"; then
  # shellcheck disable=SC2086
  install_debs ${DEB_PACKAGES}
fi

# 2. Python environment: the active venv, or tools/venv
if [ -n "${VIRTUAL_ENV:-}" ]; then
  venv=${VIRTUAL_ENV}
  log "using the active virtual environment ${venv}"
else
  venv=${root}/tools/venv
  if [ ! -x "${venv}/bin/python" ]; then
    log "creating ${venv}"
    python3 -m venv "${venv}"
  fi
fi
py=${venv}/bin/python

stamp=${venv}/.upmp_install_stamp
want=$(cat "${root}/tools/requirements.txt" "${root}/setup.py" | sha256sum | cut -c1-16):${root}
if [ -f "${stamp}" ] && [ "$(cat "${stamp}")" == "${want}" ] && \
   "${py}" -c "import upmp, s3prl, espnet2, kaldiio, torchaudio" > /dev/null 2>&1; then
  log "Python stack already installed in ${venv} (pins unchanged): nothing to do"
  exit 0
fi

log "installing the pinned Python stack into ${venv} (tools/requirements.txt)"
"${py}" -m pip install -q --disable-pip-version-check -r "${root}/tools/requirements.txt" 2>&1 \
  | grep -v "^WARNING: Location" || true
"${py}" -c "import torch, torchaudio, s3prl, espnet2, kaldiio" \
  || { log "the Python stack failed to import after installation"; exit 1; }
log "installing upmp (editable) from ${root}"
"${py}" -m pip install -q --disable-pip-version-check --no-deps -e "${root}" 2>&1 \
  | grep -v "^WARNING: Location" || true
"${py}" -c "import upmp" || { log "upmp failed to import"; exit 1; }
echo "${want}" > "${stamp}"
log "done: ${venv} ($("${py}" -c 'import torch; print("torch", torch.__version__)'))"

#!/usr/bin/env bash
# Install upmp and everything it needs; idempotent (a second run does nothing and says so).
#   bash tools/install.sh            # Debian packages + Python stack in tools/venv (or the active venv)
#   bash tools/install.sh --no-apt   # skip Debian packages (install sox espeak-ng flite ffmpeg yourself)
# Python pins: tools/requirements.txt. Debian packages: DEB_PACKAGES below.
set -euo pipefail

DEB_PACKAGES="sox libsox-fmt-all espeak-ng flite ffmpeg"
root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
use_apt=true
for arg in "$@"; do
  case "${arg}" in
    --no-apt) use_apt=false ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "$0: unknown option ${arg}" 1>&2; exit 1 ;;
  esac
done

log() { echo "[install] $*" 1>&2; }

# 1. Debian packages
if "${use_apt}"; then
  missing=""
  for p in ${DEB_PACKAGES}; do
    dpkg-query -W -f='${Status}' "${p}" 2>/dev/null | grep -q "install ok installed" || missing="${missing} ${p}"
  done
  if [ -z "${missing}" ]; then
    log "Debian packages already installed: ${DEB_PACKAGES}"
  else
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
      command -v sudo > /dev/null || { log "need root (or sudo) to install:${missing}"; exit 1; }
      sudo=sudo
    fi
    log "installing Debian packages:${missing}"
    ${sudo} apt-get update -qq
    DEBIAN_FRONTEND=noninteractive ${sudo} apt-get install -y -qq --no-install-recommends ${missing} > /dev/null
  fi
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

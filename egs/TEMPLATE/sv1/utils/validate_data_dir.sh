#!/usr/bin/env bash
# Kaldi's validate_data_dir.sh for speaker verification data dirs (no text, no feats):
#   utils/validate_data_dir.sh [--no-text] [--no-feats] [--no-wav] [--no-spk-sort] data/x
args=()
for a in "$@"; do
  case "$a" in
    --no-text|--no-feats|--no-wav|--non-print) ;;  # we never require text or feats
    *) args+=("$a") ;;
  esac
done
exec "$(dirname "$(readlink -f "$0")")/_upmp_data_dir.sh" validate "${args[@]}"

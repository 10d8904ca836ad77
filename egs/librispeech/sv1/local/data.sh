#!/usr/bin/env bash
# Stage 0 of the LibriSpeech recipe: data/librispeech_{train,valid,test} (Kaldi data dirs) and the
# trials of valid and test, from the corpus tree and the paper's trial lists (upmp.bin.prepare_librispeech).
set -euo pipefail
. ./path.sh
. ./db.sh

librispeech_root=${LIBRISPEECH}
protocol_dir=""     # local copy of the paper's protocol files
protocol_url=""     # base URL of the paper's files (default: its GitHub raw URLs; none: regenerate)
seed=0              # seed of regenerated trials
help_message="Usage: $0 [--librispeech_root DIR] [--protocol_dir DIR] [--protocol_url URL|none] [--seed N]"
. utils/parse_options.sh

python3 -m upmp.bin.prepare_librispeech --root "${librispeech_root}" --out data --seed "${seed}" \
  ${protocol_dir:+--protocol_dir "${protocol_dir}"} ${protocol_url:+--protocol_url "${protocol_url}"}

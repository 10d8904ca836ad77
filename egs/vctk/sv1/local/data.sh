#!/usr/bin/env bash
# Stage 0 of the VCTK recipe: data/vctk_{train,valid,test} (Kaldi data dirs) and the trials of
# valid and test, from the corpus tree and the paper's protocol files (upmp.bin.prepare_vctk).
set -euo pipefail
. ./path.sh
. ./db.sh

vctk_root=${VCTK}
mic=mic1            # mic1 | mic2 (VCTK 0.92)
protocol_dir=""     # local copy of the paper's protocol files
protocol_url=""     # base URL of the paper's files (default: its GitHub raw URLs; none: regenerate)
seed=0              # seed of a regenerated speaker split and trials
help_message="Usage: $0 [--vctk_root DIR] [--mic mic1|mic2] [--protocol_dir DIR] [--protocol_url URL|none] [--seed N]"
. utils/parse_options.sh

python3 -m upmp.bin.prepare_vctk --root "${vctk_root}" --out data --mic "${mic}" --seed "${seed}" \
  ${protocol_dir:+--protocol_dir "${protocol_dir}"} ${protocol_url:+--protocol_url "${protocol_url}"}
